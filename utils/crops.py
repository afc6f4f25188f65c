"""Cut a detection dataset's boxes into a class-folder classification set.

    python -m utils.crops --root ../shared/data/BCCD --classes model_data/bccd_classes.txt --out crops/ --size 96

Each box of each requested split of a VOC root (utils.data.voc.load_voc, with its checks and
messages) becomes ``<out>/<split>/<class>/<image-id>_<k>.png`` (``k``: the box's index among the boxes
loaded from its image's annotation; the class name made safe as a folder name), the layout ``classify.py train --data
<out>`` reads (``train/`` and ``val/`` folders of class folders).

A crop is the box grown by ``margin`` times its width (left and right) and height (top and
bottom) of context, clipped to the image, then fitted to ``size`` x ``size``: ``pad`` (the
default) keeps the aspect ratio and pads with the letterbox grey (utils.letterbox), ``stretch``
resizes to the square. Box values are pixel coordinates as everywhere in the project; the crop
takes the pixels the (grown) box touches: floor of the top-left, ceil of the bottom-right.
Difficult boxes and boxes whose shorter side is under ``min_size`` pixels are skipped and
counted in the summary line.
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import shutil
import sys

import cv2
import numpy as np

from utils.data.images import ImageReadError, read_image, save_image
from utils.data.voc import DatasetError, load_voc, read_class_names
from utils.inference.sources import safe_name
from utils.letterbox import letterbox_image

FITS = ("pad", "stretch")
CROP_FORMATS = ("png", "jpg")
CROP_SPLITS = ("train", "val", "test", "trainval", "all")


def crop_region(box, image_hw, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2) of the pixels ``box`` grown by ``margin`` touches, clipped to the image."""
    h, w = int(image_hw[0]), int(image_hw[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * float(margin), (y2 - y1) * float(margin)
    a, b = max(0, int(math.floor(x1 - mx))), max(0, int(math.floor(y1 - my)))
    c, d = min(w, int(math.ceil(x2 + mx))), min(h, int(math.ceil(y2 + my)))
    return a, b, max(c, a + 1), max(d, b + 1)


def crop_box(image: np.ndarray, box, size: int, margin: float = 0.1, fit: str = "pad") -> np.ndarray:
    """The ``size`` x ``size`` uint8 crop of ``box`` (xyxy pixels) in ``image`` (H, W, 3)."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    x1, y1, x2, y2 = crop_region(box, image.shape[:2], margin)
    region = image[y1:y2, x1:x2]
    if fit == "pad":
        return letterbox_image(region, (size, size))[0]
    interp = cv2.INTER_AREA if region.shape[0] * region.shape[1] > size * size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)


def _prepare_split_dir(path: str, overwrite: bool) -> None:
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise DatasetError(f"{path} already holds crops; pass --overwrite to replace that folder, "
                               "or another --out")
        shutil.rmtree(path)


def make_crops(root, class_names, out, size: int = 96, margin: float = 0.1, min_size: float = 8,
               splits=("train", "val", "test"), fit: str = "pad", fmt: str = "png",
               split_ratios=(0.8, 0.1, 0.1), seed: int = 0, keep_difficult: bool = False,
               overwrite: bool = False, log=print) -> dict:
    """Write the crops of every box of ``splits`` of the VOC ``root``; returns a summary dict.

    ``{"counts": {split: {class: crops}}, "skipped": {split: {"difficult": n, "small": n,
    "unreadable": n}}, "out": out}``. A split without a split file is made on the spot from
    ``split_ratios`` and ``seed`` (load_voc says so). An existing, non-empty
    ``<out>/<split>`` folder is an error unless ``overwrite`` (then it is replaced).
    """
    if int(size) < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {size}")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    if fmt not in CROP_FORMATS:
        raise ValueError(f"unknown crop format {fmt!r}; valid: {', '.join(CROP_FORMATS)}")
    if margin < 0:
        raise ValueError(f"--margin must be >= 0, got {margin}")
    names = read_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else list(class_names)
    out = os.fspath(out)
    for split in splits:
        if split not in CROP_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(CROP_SPLITS)}")
        _prepare_split_dir(os.path.join(out, split), overwrite)
    log = log or (lambda _msg: None)
    counts, skipped = {}, {}
    for split in splits:
        records = load_voc(root, split, names, ratios=split_ratios, seed=seed, log=log)
        count, skip = collections.Counter(), collections.Counter()
        for rec in records:
            try:
                image = read_image(rec.image_path)
            except ImageReadError as exc:
                log(f"warning: {exc}; its {len(rec.boxes)} boxes skipped")
                skip["unreadable"] += len(rec.boxes)
                continue
            for k, (box, label, diff) in enumerate(zip(rec.boxes, rec.labels, rec.difficult)):
                if diff and not keep_difficult:
                    skip["difficult"] += 1
                    continue
                if min(box[2] - box[0], box[3] - box[1]) < min_size:
                    skip["small"] += 1
                    continue
                name = names[int(label)]
                path = os.path.join(out, split, safe_name(name), f"{rec.image_id}_{k}.{fmt}")
                save_image(path, crop_box(image, box, int(size), margin, fit))
                count[name] += 1
        counts[split] = {n: count[n] for n in names}
        skipped[split] = {k: skip[k] for k in ("difficult", "small", "unreadable")}
        per_class = ", ".join(f"{n} {count[n]}" for n in names)
        log(f"{split}: {sum(count.values())} crops ({per_class}) in {os.path.join(out, split)}; skipped "
            f"{skip['difficult']} difficult, {skip['small']} under {min_size:g} px"
            + (f", {skip['unreadable']} in unreadable images" if skip["unreadable"] else ""))
    return {"counts": counts, "skipped": skipped, "out": out}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.crops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, nargs="+", help="VOC root(s): Annotations/, JPEGImages/, ImageSets/Main/")
    p.add_argument("--classes", required=True, help="class list file (one name a line)")
    p.add_argument("--out", required=True, help="output folder: <out>/<split>/<class>/<image-id>_<k>.<format>")
    p.add_argument("--size", type=int, default=96, help="crop side in pixels (default 96)")
    p.add_argument("--margin", type=float, default=0.1, help="context added on each side, as a fraction of the box side")
    p.add_argument("--min-size", type=float, default=8, help="skip boxes whose shorter side is under this (pixels)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=CROP_SPLITS,
                   help="splits to cut (default train val test; 'all' = every image)")
    p.add_argument("--fit", choices=FITS, default="pad", help="pad: keep the aspect, grey padding; stretch: resize")
    p.add_argument("--format", choices=CROP_FORMATS, default="png", help="crop file format (default png, lossless)")
    p.add_argument("--split-ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1],
                   help="train/val/test ratios for a split without a split file (default 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of a split made on the spot")
    p.add_argument("--keep-difficult", action="store_true", help="crop difficult boxes too")
    p.add_argument("--overwrite", action="store_true", help="replace existing <out>/<split> folders")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_crops(args.root, args.classes, args.out, size=args.size, margin=args.margin, min_size=args.min_size,
                   splits=args.splits, fit=args.fit, fmt=args.format, split_ratios=args.split_ratios,
                   seed=args.seed, keep_difficult=args.keep_difficult, overwrite=args.overwrite)
    except (DatasetError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
