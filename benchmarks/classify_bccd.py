"""Backbones as classifiers on BCCD crops, and whether crop pretraining helps detection.

    python benchmarks/classify_bccd.py classify                     # every backbone (default alpha), 96 px, 15 epochs
    python benchmarks/classify_bccd.py classify --configs mobilenetv2:0.5 ghostnet:0.5 --epochs 10
    python benchmarks/classify_bccd.py pretrain --configs mobilenetv2:1.0 ghostnet:1.0 --det-epochs 10

``classify``: cuts BCCD's boxes into crops once (python -m utils.crops: 96 px, margin 0.1,
train/val/test folders, in --crops), trains each configuration with classify.py's code at one
equal budget (--epochs, --input-size, --batch-size; no pretrained weights), and evaluates
best.keras on the test crops: top-1 and per-class accuracy, balanced accuracy (RBC is ~85% of
the crops: a model that always says RBC scores 0.85 top-1 and 0.33 balanced), training images/s
(epoch wall time, validation and checkpoints included) and inference images/s (batch 32).
Records the table in docs/benchmarks.md ("BCCD crops: backbones as classifiers").

``pretrain``: for each configuration, train.py on BCCD from scratch for --det-epochs; then
--cls-epochs of crop classification, export-backbone, and train.py from that backbone for the
detection epochs left at the same total wall time (the classification minutes are counted
against the detection epochs, at the scratch run's seconds per epoch). Both best.keras are
evaluated on BCCD test (mAP@0.5, COCO mAP). Records "BCCD: does crop pretraining help
detection?". Options after ``--`` go to every train.py run (e.g. ``-- --anchors
model_data/bccd_anchors.txt``; train.py freezes the backbone for half the epochs when it starts
from backbone weights: ``-- --freeze-epochs 0`` turns that off). Long CPU runs: hours for the
whole set.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BCCD = ROOT.parent / "shared" / "data" / "BCCD"
CLASSES = ROOT / "model_data" / "bccd_classes.txt"


def parse_config(text: str):
    name, _, alpha = text.partition(":")
    return name.lower(), (float(alpha) if alpha else None)


def ensure_crops(crops: pathlib.Path, size: int):
    from utils.crops import make_crops
    if not (crops / "test").is_dir():
        make_crops(BCCD, CLASSES, crops, size=size, margin=0.1, min_size=8)
    return crops


def train_classifier(crops, name, alpha, args, save_dir):
    from utils import classify
    argv = ["--data", str(crops), "--backbone", name, "--input-size", str(args.input_size), "--epochs",
            str(args.epochs if args.mode == "classify" else args.cls_epochs), "--batch-size", str(args.batch_size),
            "--save-dir", str(save_dir), "--exist-ok", "--verbose", "2", "--flip", "both", "--no-tensorboard"]
    if alpha is not None:
        argv += ["--alpha", str(alpha)]
    t0 = time.time()
    summary = classify.train(classify.parse_train_args(argv))
    return summary, time.time() - t0


def classify_row(crops, name, alpha, args):
    from utils import classify
    save_dir = ROOT / "runs" / "bench" / "classify_bccd" / f"{name}_{alpha or 'default'}"
    summary, wall = train_classifier(crops, name, alpha, args, save_dir)
    model, meta = classify.load_classifier(save_dir / "best.keras")
    test = classify.load_image_set(crops, "test", class_names=meta["class_names"], log=None)
    classify.predict_probs(model, test, meta["input_shape"], 32, None)  # warm-up (trace)
    t0 = time.time()
    probs = classify.predict_probs(model, test, meta["input_shape"], 32, None)
    infer_ips = len(test) / (time.time() - t0)
    res = classify.classification_metrics(test.labels, probs, meta["class_names"])
    epochs = len(summary["history"].get("loss", []))
    train_ips = epochs * len(classify.load_image_set(crops, "train", log=None)) / wall
    per_class = " / ".join(f"{pc['accuracy']:.3f}" for pc in res["per_class"])
    return (f"| {name} | {meta['alpha']:g} | {res['top1']:.3f} | {res['balanced_accuracy']:.3f} | {per_class} "
            f"| {train_ips:.0f} | {infer_ips:.0f} | {wall / 60:.1f} |"), meta["class_names"]


def detection_map(save_dir):
    from utils.data.voc import load_voc
    from utils.evaluate import evaluate_records
    from utils.inference.detector import Detector
    det = Detector.from_file(os.path.join(save_dir, "best.keras"))
    res = evaluate_records(det, load_voc(str(BCCD), "test", det.class_names, log=None))
    return res["map"], (res.get("coco") or {}).get("map_50_95", float("nan"))


def train_detector(name, alpha, epochs, save_dir, extra, backbone_weights=None):
    import train
    argv = ["--root", str(BCCD), "--classes", str(CLASSES), "--backbone", name, "--epochs", str(epochs),
            "--input-size", str(416), "--save-dir", str(save_dir), "--exist-ok", "--verbose", "2", *extra]
    if alpha is not None:
        argv += ["--alpha", str(alpha)]
    if backbone_weights:
        argv += ["--backbone-weights", str(backbone_weights)]
    t0 = time.time()
    if train.main(argv) != 0:
        sys.exit(f"train.py failed: {' '.join(argv)}")
    return time.time() - t0


def pretrain_rows(crops, name, alpha, args, extra):
    from utils import classify
    base = ROOT / "runs" / "bench" / "pretrain_bccd" / f"{name}_{alpha or 'default'}"
    scratch_wall = train_detector(name, alpha, args.det_epochs, base / "scratch", extra)
    per_epoch = scratch_wall / args.det_epochs
    _, cls_wall = train_classifier(crops, name, alpha, args, base / "classifier")
    weights = base / "backbone.weights.h5"
    classify.export_backbone(base / "classifier" / "best.keras", weights)
    det_epochs = max(1, args.det_epochs - round(cls_wall / per_epoch))
    pre_wall = train_detector(name, alpha, det_epochs, base / "pretrained", extra, weights)
    rows = []
    for label, folder, epochs, wall in (("from scratch", "scratch", args.det_epochs, scratch_wall),
                                        (f"crop-pretrained ({args.cls_epochs} cls epochs)", "pretrained",
                                         det_epochs, pre_wall + cls_wall)):
        m50, coco = detection_map(base / folder)
        rows.append(f"| {name} | {label} | {epochs} | {wall / 60:.1f} | {m50:.3f} | {coco:.3f} |")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["classify", "pretrain"])
    p.add_argument("--configs", nargs="+", default=None, help="backbone[:alpha] (default: every backbone; "
                                                               "pretrain: mobilenetv2 and ghostnet)")
    p.add_argument("--crops", default=str(ROOT / "runs" / "bench" / "bccd_crops"))
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--input-size", type=int, default=96, help="classifier input side")
    p.add_argument("--epochs", type=int, default=15, help="classification epochs (classify mode)")
    p.add_argument("--cls-epochs", type=int, default=5, help="classification epochs before detection (pretrain)")
    p.add_argument("--det-epochs", type=int, default=10, help="detection epochs of the from-scratch run (pretrain)")
    p.add_argument("--batch-size", type=int, default=32, help="classifier batch")
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(own)
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")
    from nets.backbones import available_backbones
    configs = args.configs or (available_backbones() if args.mode == "classify" else ["mobilenetv2", "ghostnet"])
    crops = ensure_crops(pathlib.Path(args.crops), args.crop_size)
    if args.mode == "classify":
        rows, names = [], None
        for text in configs:
            row, names = classify_row(crops, *parse_config(text), args)
            rows.append(row)
            print(row, flush=True)
        head = [f"BCCD crops ({args.crop_size} px, margin 0.1) at {args.input_size}x{args.input_size}, {args.epochs} "
                f"epochs, batch {args.batch_size}, AdamW + EMA, no pretrained weights; accuracy of best.keras "
                "(val accuracy) on the test crops.", "",
                f"| backbone | alpha | top-1 | balanced | per class ({' / '.join(names)}) | train img/s | "
                "infer img/s | train min |", "|---|---|---|---|---|---|---|---|"]
        title = "BCCD crops: backbones as classifiers"
    else:
        rows = []
        for text in configs:
            rows += pretrain_rows(crops, *parse_config(text), args, extra)
            print("\n".join(rows[-2:]), flush=True)
        head = [f"train.py on BCCD (416 px unless the extra options say otherwise; extra options: {' '.join(extra) or 'none'}): {args.det_epochs} epochs from "
                f"scratch against {args.cls_epochs} classification epochs on the crops ({args.input_size} px) + the "
                "detection epochs left at the same total wall time; mAP of best.keras on BCCD test.", "",
                "| backbone | start | detection epochs | total min | mAP@0.5 | COCO mAP |", "|---|---|---|---|---|---|"]
        title = "BCCD: does crop pretraining help detection?"
    lines = head + rows
    print("\n".join(lines))
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(title, command_line("classify_bccd.py", argv), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
