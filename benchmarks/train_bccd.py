"""Accuracy benchmark: train from scratch on BCCD train, evaluate on BCCD test.

    python benchmarks/train_bccd.py                       # mobilenetv2 alpha 1.0, 416x416, 30 epochs
    python benchmarks/train_bccd.py -- --anchors model_data/bccd_anchors.txt --eval-every 5   # as recorded
    python benchmarks/train_bccd.py --epochs 5 --input-size 320 -- --optimizer sgd   # extra train.py options after --

Trains with train.py's own code (no ImageNet weights), evaluates best.keras on the test
split with eval_map.py's code, measures the images/s of a bare training step at batch 8,
prints everything and records it in docs/benchmarks.md (section "BCCD from scratch").
The run folder (--save-dir, default runs/bench/bccd) keeps train.py's resume state: a run
that was stopped continues with ``-- --resume``. Its best.keras is what
benchmarks/export_map.py exports and evaluates.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BCCD = ROOT.parent / "shared" / "data" / "BCCD"
SECTION = "BCCD from scratch"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--input-size", type=int, default=416)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--save-dir", default=str(ROOT / "runs" / "bench" / "bccd"))
    p.add_argument("--evaluate-only", action="store_true",
                   help="skip training: evaluate the finished run in --save-dir (wall time from its files' times)")
    p.add_argument("--note", default="", help="a sentence recorded with the figures (e.g. which commit trained)")
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--section", default=SECTION,
                   help=f"the docs/benchmarks.md section to record into (default {SECTION!r}; e.g. an ablation's own)")
    args = p.parse_args(own)
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")

    import train
    from utils.evaluate import evaluate_records, format_table
    from utils.inference.detector import Detector
    from utils.data.voc import load_voc

    hw = (args.input_size, args.input_size)
    if args.evaluate_only:
        # config.yaml is written when the run starts, log.csv after its last epoch
        wall = (os.path.getmtime(os.path.join(args.save_dir, "log.csv"))
                - os.path.getmtime(os.path.join(args.save_dir, "config.yaml")))
    else:
        t0 = time.time()
        rc = train.main(["--root", str(BCCD), "--classes", str(ROOT / "model_data" / "bccd_classes.txt"),
                         "--input-size", str(args.input_size), "--backbone", args.backbone, "--alpha", str(args.alpha),
                         "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                         "--save-dir", args.save_dir, "--exist-ok", "--verbose", "2", *extra])
        wall = time.time() - t0
        if rc != 0:
            sys.exit(f"training failed (exit {rc})")
    with open(os.path.join(args.save_dir, "log.csv")) as f:
        log_rows = list(csv.DictReader(f))
    epochs_done = len(log_rows)
    in_loop = [(int(r["epoch"]) + 1, float(r["val_map50"])) for r in log_rows
               if r.get("val_map50") not in (None, "", "nan")]
    det = Detector.from_file(os.path.join(args.save_dir, "best.keras"))
    test = load_voc(str(BCCD), "test", det.class_names, log=None)
    res = evaluate_records(det, test)
    from benchmarks.train_step import step_throughput
    ips, _ = step_throughput(args.backbone, args.alpha, args.input_size, args.batch_size)["after"]
    lines = [f"{args.backbone} alpha {args.alpha:g}, {hw[0]}x{hw[1]}, {epochs_done} epochs from scratch "
             f"(no ImageNet weights), batch {args.batch_size}, extra options: {' '.join(extra) or 'none'}",
             f"BCCD test ({len(test)} images): mAP@0.5 = {res['map']:.4f}, "
             f"COCO mAP@[.5:.95] = {res['coco']['map_50_95']:.4f}" if res.get("coco") else f"mAP@0.5 = {res['map']:.4f}",
             "", *format_table(res, det.class_names).splitlines(), "",
             f"wall time {wall / 60:.1f} min for training incl. in-loop evaluation: {wall / max(epochs_done, 1):.1f} s/epoch",
             f"bare training step at batch {args.batch_size}: {ips:.1f} images/s"]
    if in_loop:
        lines.insert(-2, "in-loop val mAP@0.5 (EMA weights) by epoch: "
                         + ", ".join(f"{e}: {m:.3f}" for e, m in in_loop))
    if args.evaluate_only:
        lines.insert(0, f"(--evaluate-only: the run in {os.path.relpath(args.save_dir, ROOT)} was trained earlier "
                        "by the same command without --evaluate-only)")
    if args.note:
        lines.insert(0, args.note)
    print("\n".join(lines))
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(args.section, command_line("train_bccd.py", argv), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
