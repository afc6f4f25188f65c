"""A PNG grid of augmented training samples (what the model is fed), with boxes and class names.

    python -m utils.data.preview --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt --out samples.png
    python -m utils.data.preview --data my_coco/annotations/instances.json --images my_coco/images --out samples.png

Its own module because it needs both the dataset (utils/data/dataset.py) and the augmenter
the dataset imports; kept out of utils/data/augment.py so that the two never import each other.
"""
from __future__ import annotations

import argparse

from utils.data.dataset import TrainDataset
from utils.data.formats import add_data_arguments, records_from_args
from utils.data.images import save_image
from utils.draw import draw_detections, image_grid


def main(argv=None):
    """Write a PNG grid of augmented training samples with their boxes and class names."""
    p = argparse.ArgumentParser(prog="python -m utils.data.preview", description=main.__doc__)
    add_data_arguments(p, split_ratios=[0.8, 0.1, 0.1])
    p.add_argument("--split", default="train", help="split to sample (default train; 'all')")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--input-size", default="416", help="S or HxW, multiples of 32")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation and of a split made on the spot")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--special", choices=["on", "off", "schedule"], default="on",
                   help="mosaic/mixup forced on, off, or per the epoch schedule")
    args = p.parse_args(argv)

    try:
        records, class_names = records_from_args(args, args.split)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    ds = TrainDataset(records, num_classes=len(class_names), input_hw=args.input_size, batch_size=1,
                      seed=args.seed)
    ds.set_epoch(args.epoch)
    ds.set_special({"on": True, "off": False, "schedule": None}[args.special])
    tiles = []
    for i in range(min(args.num, len(ds.records))):
        image, boxes, labels = ds.sample(i)
        tiles.append(draw_detections(image, boxes, labels, class_names=class_names))
    grid = image_grid(tiles)
    try:
        save_image(args.out, grid)
    except OSError as exc:
        raise SystemExit(f"could not write {args.out}: {exc}") from None
    print(f"wrote {args.out}: {len(tiles)} augmented samples of {len(ds.records)} records "
          f"({ds.input_hw[0]}x{ds.input_hw[1]}, mosaic/mixup {'on' if ds.augmenter.special_enabled else 'off'})")


if __name__ == "__main__":
    main()
