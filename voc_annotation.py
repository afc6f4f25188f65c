"""Write the train/val/test split files of a VOC dataset, or check a dataset for problems.

    python voc_annotation.py --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt \\
        --ratios 0.8 0.1 0.1 --seed 0            # writes ImageSets/Main/{train,val,test,trainval}.txt
    python voc_annotation.py check --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt
    python voc_annotation.py check --images my/images --annotations my/xml --classes my_classes.txt
    python voc_annotation.py check --data my_coco/annotations/instances.json --images my_coco/images
    python voc_annotation.py check --data my_yolo/data.yaml --input-size 416 --anchors model_data/yolo_anchors.txt

A thin front end over utils.data.check (write_splits, check_data); the data options are
utils.data.formats' (check reads VOC, COCO and YOLO; splitting writes VOC split files).

check ends with the teachability findings of utils.data.check.teachability (class names not
in the class list, classes without a box, boxes that fit no anchor at --input-size, images
that lost every box), the same train.py prints on its training split; it exits with 1 when
one is fatal (the data cannot teach anything), 2 on an error.
"""
from __future__ import annotations

import argparse
import sys

from utils.data.check import anchors_command, check_data, teachability, write_splits
from utils.data.formats import add_data_arguments, spec_from_args
from utils.data.voc import DatasetError
from utils.targets import DEFAULT_ANCHORS_PATH, load_anchors, parse_input_hw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=["split", "check"], default="split",
                   help="split (default): write ImageSets/Main split files; check: report statistics and problems")
    add_data_arguments(p)  # check: every format; split: a VOC root
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1], metavar="R",
                   help="train val [test] ratios summing to 1 (default 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files")
    p.add_argument("--input-size", default="416",
                   help="check: the network input size, S or HxW, at which boxes are matched to the anchors "
                        "(default 416)")
    p.add_argument("--anchors", default=DEFAULT_ANCHORS_PATH,
                   help=f"check: the anchors file the boxes are matched to (default {DEFAULT_ANCHORS_PATH})")
    p.add_argument("--no-check-images", action="store_true",
                   help="read image headers only, do not decode images to catch truncated files")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            hw = parse_input_hw(args.input_size)
            anchors = load_anchors(args.anchors)
            spec = spec_from_args(args)
            result = check_data(spec, check_images=not args.no_check_images)
            print(result.format())
            findings = teachability(result.records, spec.class_names, anchors, hw, result.report,
                                    where="the dataset (every split)", command=anchors_command(args, hw),
                                    anchors_path=args.anchors)
            print(findings.format())
            return 1 if findings.fatal else 0
        roots = args.root or ([args.data] if args.data and not args.images else [])
        if len(roots) != 1 or args.classes is None:
            raise DatasetError("splitting needs one VOC root (--root, with Annotations/ and JPEGImages/) and "
                               "--classes")
        write_splits(roots[0], args.classes, args.ratios, args.seed, overwrite=args.overwrite,
                     check_images=not args.no_check_images)
        return 0
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
