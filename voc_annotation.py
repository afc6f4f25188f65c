"""Write the train/val/test split files of a VOC dataset, or check a dataset for problems.

    python voc_annotation.py --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt \\
        --ratios 0.8 0.1 0.1 --seed 0            # writes ImageSets/Main/{train,val,test,trainval}.txt
    python voc_annotation.py check --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt
    python voc_annotation.py check --images my/images --annotations my/xml --classes my_classes.txt

A thin front end over utils.data.check (write_splits, check_dataset).
"""
from __future__ import annotations

import argparse
import sys

from utils.data.check import check_dataset, write_splits
from utils.data.voc import DatasetError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=["split", "check"], default="split",
                   help="split (default): write ImageSets/Main split files; check: report statistics and problems")
    p.add_argument("--root", help="VOC root (Annotations/, JPEGImages/, ImageSets/Main/)")
    p.add_argument("--images", help="check only: flat folder of images (with --annotations)")
    p.add_argument("--annotations", help="check only: flat folder of VOC XML files matched to images by stem")
    p.add_argument("--classes", required=True, help="class list, one name per line")
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
            if args.root is None and (args.images is None or args.annotations is None):
                raise DatasetError("check needs --root, or both --images and --annotations")
            result = check_dataset(args.classes, root=args.root, images_dir=args.images,
                                   annotations_dir=args.annotations, check_images=not args.no_check_images)
            print(result.format())
            return 0
        if args.root is None:
            raise DatasetError("splitting needs --root (a VOC root with Annotations/ and JPEGImages/)")
        write_splits(args.root, args.classes, args.ratios, args.seed, overwrite=args.overwrite,
                     check_images=not args.no_check_images)
        return 0
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
