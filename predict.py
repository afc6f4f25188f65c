"""Run a trained detector on images, folders, globs, videos or a webcam.

    python predict.py --weights runs/train/exp/best.keras --source photo.jpg
    python predict.py --weights best.keras --source data/images --save-xml --crop --count
    python predict.py --weights best.keras --source "data/**/*.png" --classes cat dog --conf 0.4
    python predict.py --weights best.keras --source clip.mp4            # annotated clip.mp4, same fps
    python predict.py --weights best.keras --source 0 --show            # webcam 0 (Ctrl-C or q to stop)
    python predict.py --weights best.keras --source photo.jpg --mode fps --fps-runs 100
    python predict.py --weights best.keras --source photo.jpg --mode heatmap

Writes to --save-dir (default runs/predict/exp, then exp2, exp3, ...): annotated images and
videos, predictions.jsonl (one JSON object per image or frame: source, frame, width,
height, detections [{class_id, class_name, score, box [x1, y1, x2, y2] source pixels}]),
and on request Annotations/<name>.xml (VOC) and crops/<class>/. The work is done by
utils.inference.predict and utils.inference.sources.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.console import add_tf_logs_argument


MODES = ("predict", "fps", "heatmap")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Detect objects with a trained detector (.keras from train.py) in images, folders, globs, "
                    "videos or a webcam; or time it (--mode fps), or show where it looks (--mode heatmap).")
    p.add_argument("--weights", required=True, help="detector .keras file written by train.py (carries its "
                                                     "classes, anchors and input size)")
    p.add_argument("--source", required=True,
                   help="an image, a folder (its images and videos, sorted), a glob in quotes ('imgs/*.jpg', "
                        "'**' recurses), a video file, or a webcam index (0)")
    p.add_argument("--mode", choices=MODES, default="predict",
                   help="predict (default); fps: time pre-processing, model and post-processing on the first "
                        "image; heatmap: per-scale objectness over the image as PNG")
    p.add_argument("--conf", type=float, default=None,
                   help="score threshold, objectness x class (default: the F1-best score that train.py stored in "
                        "the model, measured on the validation split; 0.25 for a model without one)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=100, help="most detections per image (default 100)")
    p.add_argument("--nms", choices=("iou", "diou"), default="iou", help="NMS kind (default iou)")
    p.add_argument("--input-size", help="run the model at another input size, S or HxW, multiples of 32 "
                                        "(default: the size it was trained at)")
    p.add_argument("--classes", nargs="+", help="keep only these classes (names or ids; applied before NMS)")
    p.add_argument("--crop", action="store_true", help="also save each detected object as crops/<class>/<name>_<k>.jpg")
    p.add_argument("--count", action="store_true", help="draw per-class counts on the images and print them")
    p.add_argument("--save-xml", action="store_true",
                   help="also write Annotations/<name>.xml (VOC) per image, to seed annotation tools")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images and videos")
    p.add_argument("--no-json", action="store_true", help="do not write predictions.jsonl")
    p.add_argument("--save-dir", help="output folder (default runs/predict/exp, or runs/heatmap/exp; a number is "
                                      "added when it exists)")
    p.add_argument("--exist-ok", action="store_true", help="write into --save-dir even if it exists")
    p.add_argument("--show", action="store_true", help="show the results in a window (when a display exists)")
    p.add_argument("--fps-runs", type=int, default=50, help="timed runs in fps mode (default 50)")
    p.add_argument("--fps-warmup", type=int, default=5, help="untimed runs first in fps mode (default 5)")
    add_tf_logs_argument(p)
    return p


def check_args(parser, args):
    if args.conf is not None and not 0.0 <= args.conf <= 1.0:
        parser.error(f"--conf must be in [0, 1], got {args.conf:g}")
    if not 0.0 < args.iou <= 1.0:
        parser.error(f"--iou must be in (0, 1], got {args.iou:g}")
    for name in ("max_det", "fps_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.fps_warmup < 0:
        parser.error("--fps-warmup must be >= 0")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    from utils.console import start
    start(args.tf_logs)

    from utils.inference.detector import Detector
    from utils.inference.predict import (PredictOptions, first_image, format_latency_table, measure_latency,
                                         parse_class_filter, resolve_conf, run_heatmap, run_predict)
    from utils.inference.sources import increment_dir, resolve_source

    try:
        items = resolve_source(args.source)
        detector = Detector.from_file(args.weights, input_size=args.input_size)
        conf, conf_line = resolve_conf(args.conf, detector.meta)
        if args.conf is None and args.mode != "heatmap":
            print(conf_line)  # where the threshold comes from: the model's F1-best score or the default
        options = PredictOptions(conf=conf, iou=args.iou, max_det=args.max_det, nms=args.nms,
                                 classes=parse_class_filter(args.classes, detector.class_names) if args.classes else None,
                                 save_images=not args.no_save, save_json=not args.no_json, save_xml=args.save_xml,
                                 save_crops=args.crop, count=args.count, show=args.show)
        if args.mode == "fps":
            path, image = first_image(items)
            times = measure_latency(detector, image, args.fps_runs, args.fps_warmup, options)
            title = (f"fps mode: {detector.backbone} alpha {detector.alpha}, input {detector.input_hw[0]}x"
                     f"{detector.input_hw[1]}, {detector.num_classes} classes, nms {args.nms}, image "
                     f"{image.shape[1]}x{image.shape[0]} ({path}), batch 1, {args.fps_runs} runs after "
                     f"{args.fps_warmup} warm-up")
            print(format_latency_table(times, title))
            return 0
        default_dir = os.path.join("runs", "heatmap" if args.mode == "heatmap" else "predict", "exp")
        save_dir = increment_dir(args.save_dir or default_dir, exist_ok=args.exist_ok)
        if args.mode == "heatmap":
            summary = run_heatmap(detector, items, save_dir, show=args.show)
        else:
            summary = run_predict(detector, items, save_dir, options)
    except (FileNotFoundError, ValueError, OSError) as exc:  # missing paths, bad files: one clear line
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.mode}: {summary.line(detections=args.mode == 'predict')}")
    print(f"results in {save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
