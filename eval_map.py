"""Evaluate a trained detector on a VOC-layout dataset: VOC mAP, COCO mAP, P/R/F1, plots.

    python eval_map.py --weights runs/train/exp/best.keras --root VOCdevkit/VOC2007 --split test
    python eval_map.py --weights best.keras --images data/images --annotations data/xml --split all
    python eval_map.py --weights best.keras --data coco/annotations/instances.json --images coco/images
    python eval_map.py --weights runs/train/exp/best.keras    # the training run's own test split

Prints a per-class table, P/R/F1 at --prf-conf and at the F1-best score (printed), and
writes results.json, pr_curves.png, ap_per_class.png and confusion_matrix.png to
--save-dir. The work is done by utils.evaluate.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.console import add_tf_logs_argument
from utils.data.formats import add_data_arguments, data_options_problem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="VOC / COCO mAP of a detector. mAP is computed, as is standard, from every detection "
                    "down to a very low score (--conf 0.001) with many detections per image "
                    "(--max-det 300): do not raise --conf to compare mAP with published numbers. "
                    "Precision, recall, F1 and the confusion matrix are taken at --prf-conf; P/R/F1 of all "
                    "classes pooled are also printed at the F1-best score (the score where that F1 is highest).")
    p.add_argument("--weights", required=True, help="detector .keras file written by train.py")
    data = p.add_argument_group("data (--data, --root, or --images with --annotations; default: the training "
                                "run's own dataset and split, recorded in the model)")
    add_data_arguments(data, split_ratios=None, classes_help="the class names stored in the model")
    data.add_argument("--split", default="test",
                      help="split to evaluate (default test; 'all' for every image). A split the dataset's files "
                           "do not name is made on the spot with the training run's ratios and seed (recorded "
                           "in the model; else 0.8/0.1/0.1 and 0)")
    data.add_argument("--seed", type=int, default=None,
                      help="seed of a split made on the spot (default: the training run's, from the model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--conf", type=float, default=0.001,
                   help="score threshold of the detections used for mAP (default 0.001: low, as is standard)")
    p.add_argument("--iou-nms", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    p.add_argument("--nms", choices=("iou", "diou"), default="iou", help="NMS kind (default iou)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300: high, as is standard)")
    p.add_argument("--match-iou", type=float, default=0.5, help="IoU for a true positive in VOC mAP (default 0.5)")
    p.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP instead of all-point AP")
    p.add_argument("--no-coco", action="store_true", help="skip COCO-style mAP@[.5:.95] (pycocotools)")
    p.add_argument("--prf-conf", type=float, default=0.5,
                   help="score threshold for precision / recall / F1 and the confusion matrix (default 0.5)")
    p.add_argument("--workers", type=int, default=2, help="image reading threads (default 2)")
    p.add_argument("--save-dir", help="output folder (default runs/eval/<weights file name>)")
    add_tf_logs_argument(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if data_options_problem(args):
        parser.error(data_options_problem(args))
    for name in ("batch_size", "max_det", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    from utils.console import start
    start(args.tf_logs)

    from utils.evaluate import evaluate_records, format_table, write_report
    from utils.inference.detector import Detector
    from utils.data.formats import model_split_records
    from utils.data.voc import read_class_names

    try:
        detector = Detector.from_file(args.weights)
        class_names = detector.class_names
        if args.classes:
            class_names = read_class_names(args.classes)
            if len(class_names) != detector.num_classes:
                raise ValueError(f"{args.classes} lists {len(class_names)} classes but {args.weights} "
                                 f"predicts {detector.num_classes} ({', '.join(detector.class_names)})")
        records = model_split_records(args, args.split, class_names, detector.meta.get("data"))
        results = evaluate_records(detector, records, batch_size=args.batch_size, score_thresh=args.conf,
                                   iou_thresh=args.iou_nms, max_det=args.max_det, nms=args.nms, use_07=args.voc07,
                                   coco=not args.no_coco, match_iou=args.match_iou, prf_score_thresh=args.prf_conf,
                                   workers=args.workers, progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:  # missing paths, bad files: one clear line
        print(f"eval_map.py: error: {exc}", file=sys.stderr)
        return 2
    save_dir = args.save_dir or os.path.join(
        "runs", "eval", os.path.splitext(os.path.basename(args.weights))[0])
    print(format_table(results, class_names))
    paths = write_report(results, save_dir, class_names)
    print(f"results written to {save_dir}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
