"""Write the train/val/test split files of a VOC dataset, or check a dataset for problems.

    python voc_annotation.py --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt \\
        --ratios 0.8 0.1 0.1 --seed 0            # writes ImageSets/Main/{train,val,test,trainval}.txt
    python voc_annotation.py check --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt
    python voc_annotation.py check --images my/images --annotations my/xml --classes my_classes.txt
    python voc_annotation.py check --data my_coco/annotations/instances.json --images my_coco/images
    python voc_annotation.py check --data my_yolo/data.yaml

A thin front end over utils.data.check (write_splits, check_data); the data options are
utils.data.formats' (check reads VOC, COCO and YOLO; splitting writes VOC split files).
"""
from __future__ import annotations

import argparse
import sys

from utils.data.check import check_data, write_splits
from utils.data.formats import add_data_arguments, spec_from_args
from utils.data.voc import DatasetError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=["split", "check"], default="split",
                   help="split (default): write ImageSets/Main split files; check: report statistics and problems")
    add_data_arguments(p)  # check: every format; split: a VOC root
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1], metavar="R",
                   help="train val [test] ratios summing to 1 (default 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files")
    p.add_argument("--no-check-images", action="store_true",
                   help="read image headers only, do not decode images to catch truncated files")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            result = check_data(spec_from_args(args), check_images=not args.no_check_images)
            print(result.format())
            return 0
        roots = args.root or ([args.data] if args.data and not args.images else [])
        if len(roots) != 1 or args.classes is None:
            raise DatasetError("splitting needs one VOC root (--root, with Annotations/ and JPEGImages/) and "
                               "--classes")
        write_splits(roots[0], args.classes, args.ratios, args.seed, overwrite=args.overwrite,
                     check_images=not args.no_check_images)
        return 0
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
