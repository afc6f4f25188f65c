"""Accuracy of the exports: mAP on BCCD test of a trained model and of its TFLite/ONNX exports.

    python benchmarks/export_map.py                                   # runs/bench/bccd/best.keras
    python benchmarks/export_map.py --weights runs/train/exp/best.keras --formats tflite-int8 --int8-heads float

Exports ``--weights`` (a .keras from train.py, e.g. the one benchmarks/train_bccd.py leaves)
with utils.inference.export.export_detector (int8 calibrated on --calib-images letterboxed BCCD train
images, once per --int8-heads mode: "float" keeps the output convolutions in float32, "int8"
is the full-integer model), then evaluates the Keras model and every export on BCCD test with eval_map.py's code
(utils.evaluate.evaluate_records through Detector.from_file, the same path as
``eval_map.py --weights FILE``). Prints mAP@0.5, COCO mAP@[.5:.95] and per-class AP@0.5 per
format, and the difference to the Keras model in mAP points; records them in
docs/benchmarks.md (section "Export accuracy"). Issue goal: int8 within 1.0 point of float.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BCCD = ROOT.parent / "shared" / "data" / "BCCD"
SECTION = "Export accuracy"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "runs" / "bench" / "bccd" / "best.keras"))
    p.add_argument("--formats", nargs="+", default=["tflite-fp32", "tflite-int8", "onnx"])
    p.add_argument("--calib-images", type=int, default=200)
    p.add_argument("--int8-heads", nargs="+", choices=("float", "int8"), default=["float", "int8"],
                   help="int8 head modes to export and evaluate (default both)")
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")
    if not os.path.isfile(args.weights):
        sys.exit(f"{args.weights}: no such model; train one first (python benchmarks/train_bccd.py)")

    from utils.evaluate import evaluate_records
    from utils.inference.export import export_detector
    from utils.inference.detector import Detector
    from utils.data.voc import load_voc

    rows = []  # (format, mAP@0.5, COCO mAP, per-class AP@0.5, file size); the Keras model first
    with tempfile.TemporaryDirectory() as tmp:
        paths = [("keras", args.weights)]
        others = [f for f in args.formats if f != "tflite-int8"]
        jobs = [(others, "float", "")] if others else []
        if "tflite-int8" in args.formats:
            jobs += [(["tflite-int8"], mode, f"-{mode}heads") for mode in args.int8_heads]
        for formats, mode, suffix in jobs:
            out = os.path.join(tmp, mode + suffix)
            results = export_detector(args.weights, out, formats=formats, calib_root=str(BCCD), calib_split="train",
                                      calib_images=args.calib_images, int8_heads=mode, log=lambda *a: None)
            paths += [(r.format + suffix, r.path) for r in results if r.variant == "raw"]
        names = test = None
        for fmt, path in paths:
            det = Detector.from_file(path)
            if test is None:  # every export carries the Keras model's class list
                names = det.class_names
                test = load_voc(str(BCCD), "test", names, log=None)
            res = evaluate_records(det, test)
            rows.append((fmt, res["map"], res["coco"]["map_50_95"], [c["ap"] for c in res["per_class"]],
                         os.path.getsize(path) if os.path.isfile(path) else None))
    keras_map = rows[0][1]
    lines = [f"{'format':22s} {'mAP@0.5':>8s} {'vs keras':>9s} {'mAP@.5:.95':>10s} "
             + " ".join(f"{n:>9s}" for n in names) + f" {'size MB':>8s}"]
    for fmt, m50, coco, per_class, size in rows:
        lines.append(f"{fmt:22s} {m50:8.4f} {100 * (m50 - keras_map):+8.2f}p {coco:10.4f} "
                     + " ".join(f"{ap:9.4f}" for ap in per_class)
                     + f" {size / 1e6 if size else float('nan'):8.1f}")
    print("\n".join(lines))
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(SECTION, command_line("export_map.py", argv if argv is not None else sys.argv[1:]),
               f"Model: {os.path.relpath(args.weights, ROOT)}; BCCD test (72 images), eval_map.py's code "
               f"(score >= 0.001, IoU-NMS 0.5, max 300 detections); int8 calibrated on {args.calib_images} "
               "letterboxed BCCD train images; tflite-int8-floatheads = int8 with the three output convolutions "
               "in float32 (export.py's default), tflite-int8-int8heads = full-integer. 'vs keras' is the mAP@0.5 "
               "difference in points.", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
