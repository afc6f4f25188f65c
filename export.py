"""Export a trained detector for deployment: SavedModel, TFLite fp32/fp16/int8, ONNX.

    python export.py --weights runs/train/exp/best.keras --formats saved_model tflite-fp32 onnx
    python export.py --weights runs/train/exp/best.keras \\
        --formats saved_model tflite-fp32 tflite-fp16 tflite-int8 onnx --end-to-end \\
        --calib-root ../shared/data/BCCD --calib-split train --calib-images 200 --out-dir runs/export/exp
    python export.py --weights best.keras --formats tflite-int8 --calib-data my_yolo/data.yaml

Writes each artifact and its metadata JSON (<artifact>.json) to --out-dir, then prints a
table with sizes, conversion times and the parity measured against the Keras model.
predict.py and eval_map.py take the raw-heads files as --weights. The work is done by
utils/inference/export.py (formats, variants, quantization) and utils/inference/runtime.py (loading them back).
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.console import add_tf_logs_argument
from utils.data.formats import add_data_arguments


FORMATS = ("saved_model", "tflite-fp32", "tflite-fp16", "tflite-int8", "onnx")  # utils.inference.export.FORMATS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a .keras detector (train.py's best.keras) to SavedModel, TFLite "
                                            "(fp32, fp16, int8) and ONNX, each with a metadata JSON beside it.")
    p.add_argument("--weights", required=True, help="detector .keras file written by train.py")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=["saved_model", "tflite-fp32", "tflite-fp16", "onnx"],
                   help="what to write (default: saved_model tflite-fp32 tflite-fp16 onnx; tflite-int8 needs "
                        "--calib-data)")
    p.add_argument("--out-dir", help="output folder (default runs/export/<weights name>)")
    p.add_argument("--name", help="file name stem (default: the weights file's, e.g. best -> best_fp16.tflite)")
    p.add_argument("--end-to-end", action="store_true",
                   help="also write <name>_e2e_* variants with decode + NMS inside (outputs boxes, scores, classes, "
                        "num_valid) where the format can carry them (not tflite-int8; TFLite needs --nms diou)")
    p.add_argument("--nms", choices=("iou", "diou"), default="diou",
                   help="NMS of the end-to-end variants (default diou: the only kind TFLite builtins can run)")
    p.add_argument("--conf", type=float, default=0.25, help="end-to-end score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="end-to-end NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=100, help="end-to-end detections per image (default 100)")
    c = p.add_argument_group("int8 calibration data (any format: the data options of train.py with calib- in "
                             "front; --calib-root is --calib-data)")
    add_data_arguments(c, prefix="calib-", aliases=("--calib-root",), images_flag="--calib-image-dir",
                       voc_options=False, classes=False)
    c.add_argument("--calib-split", default="train", help="split of --calib-data (default train)")
    c.add_argument("--calib-images", type=int, default=200, help="calibration images, a seeded choice (default 200)")
    c.add_argument("--calib-seed", type=int, default=0, help="seed of that choice (default 0)")
    p.add_argument("--int8-heads", choices=("float", "int8"), default="float",
                   help="tflite-int8: keep the three output convolutions in float32 (default; float input and "
                        "outputs; 1.4-1.7 points of mAP@0.5 better on BCCD) or quantize them too (int8: a "
                        "full-integer model with uint8 input, for integer-only accelerators)")
    a = p.add_argument_group("accuracy check (every export's mAP@0.5 beside the Keras model's; the validation "
                             "images: --val-data in any format, as train.py's --data, with the model's class "
                             "names; default: the split of the training run whose config.yaml is beside --weights)")
    add_data_arguments(a, prefix="val-", voc_options=False, classes=False)
    a.add_argument("--val-split", default="val", help="split to evaluate on (default val)")
    a.add_argument("--max-map-drop", type=float, default=1.0,
                   help="flag an export whose mAP@0.5 is more than this many points under the Keras model's "
                        "(default 1.0)")
    a.add_argument("--strict", action="store_true", help="fail (exit code 3) when an export is flagged")
    a.add_argument("--no-map-check", action="store_true", help="skip the accuracy check")
    add_tf_logs_argument(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.conf <= 1.0:
        parser.error(f"--conf must be in [0, 1], got {args.conf:g}")
    if not 0.0 < args.iou <= 1.0:
        parser.error(f"--iou must be in (0, 1], got {args.iou:g}")
    if args.max_det < 1 or args.calib_images < 1:
        parser.error("--max-det and --calib-images must be >= 1")
    if "tflite-int8" in args.formats and not args.calib_data:
        parser.error("tflite-int8 needs --calib-root / --calib-data (a dataset of images like the ones the model "
                     "will see: VOC, COCO or YOLO)")
    from utils.console import start
    start(args.tf_logs)

    from utils.inference.export import ExportError, export_detector, format_results

    out_dir = args.out_dir or os.path.join("runs", "export", os.path.splitext(os.path.basename(args.weights))[0])
    try:
        results = export_detector(args.weights, out_dir, args.formats, end_to_end=args.end_to_end,
                                  calib_root=args.calib_data, calib_split=args.calib_split,
                                  calib_format=args.calib_format, calib_image_dir=args.calib_image_dir,
                                  calib_images=args.calib_images, calib_seed=args.calib_seed, stem=args.name,
                                  int8_heads=args.int8_heads,
                                  nms=args.nms, score_thresh=args.conf, iou_thresh=args.iou, max_det=args.max_det)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    for r in results:
        if r.note:
            print(f"note: {r.format} {r.variant}: {r.note}")
    print(f"exports and their metadata (<file>.json) written to {out_dir}")
    if args.no_map_check:
        return 0
    from utils.inference.export import check_accuracy, format_accuracy
    from utils.training.trainer import run_records
    try:
        if args.val_data:
            from utils.checkpoint import read_meta
            from utils.data.formats import model_split_records
            meta = read_meta(args.weights)
            # any format; a split the files do not name is made with the model's recorded ratios and seed
            data = argparse.Namespace(data=args.val_data, format=args.val_format, images=args.val_images)
            records = model_split_records(data, args.val_split, meta["class_names"], meta.get("data"), log=None)
        else:
            try:
                records = run_records(args.weights, args.val_split)
            except (FileNotFoundError, ValueError, SystemExit) as exc:  # the run's data is not here
                print(f"note: no accuracy check: the training run's validation data cannot be read here ({exc}); "
                      "give --val-data")
                return 0
        if records is None:
            print("note: no accuracy check: give --val-data (no config.yaml of a training run beside "
                  f"{args.weights})")
            return 0
        checks = check_accuracy(args.weights, results, records, args.max_map_drop, log=None)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        print(f"export.py: error: accuracy check: {exc}", file=sys.stderr)
        return 2
    print(f"\naccuracy on {len(records)} validation images ({args.val_data or 'the training run'} "
          f"[{args.val_split}]):\n" + format_accuracy(checks, args.max_map_drop))
    flagged = [c.name for c in checks if c.flagged]
    if flagged and args.strict:
        print(f"export.py: error: {', '.join(flagged)} lose more than {args.max_map_drop:g} points of mAP@0.5 "
              "(--strict)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
