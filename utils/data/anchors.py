"""Anchor boxes for a dataset: k-means on box shapes with the 1 - IoU distance.

    python -m utils.data.anchors --root VOCdevkit/VOC2007 --split train --classes model_data/voc_classes.txt \\
        --input-size 416 --out model_data/my_anchors.txt --seed 0
    python -m utils.data.anchors --data my_yolo/data.yaml --input-size 416 --out model_data/my_anchors.txt

The data options are utils.data.formats' (VOC, COCO, YOLO), as train.py's.

Box shapes are taken in the network-input frame (each image letterboxed to the input size,
as validation and prediction see it), difficult boxes left out as in training. The distance
is 1 - shape IoU (utils.boxes.wh_iou, the same IoU the target assignment uses), so large
boxes do not dominate the clustering as they would with a Euclidean distance; that is why
scikit-learn's KMeans (Euclidean only) is not used. Centres are updated with the median
(as in the YOLOv2/v3 anchor scripts), initialised k-means++ style, best of ``n_init``
restarts by mean best IoU; everything is drawn from one seeded Generator.
The file written has the model_data/yolo_anchors.txt format: 9 "w,h" integer pairs sorted by
area, which utils.targets.load_anchors reads.
"""
from __future__ import annotations

import argparse

import numpy as np

from utils.boxes import wh_iou
from utils.letterbox import Letterbox
from utils.targets import DEFAULT_ANCHORS_PATH, NUM_ANCHORS, load_anchors, parse_input_hw


def box_shapes(records, input_hw, include_difficult=False):
    """(N, 2) float32 widths and heights of the records' boxes after letterboxing to input_hw."""
    out = []
    for r in records:
        boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        if not include_difficult and r.difficult is not None and len(r.difficult):
            boxes = boxes[~np.asarray(r.difficult, bool).reshape(-1)]
        sx, sy = Letterbox.compute((r.height, r.width), input_hw).scale_xy
        wh = (boxes[:, 2:4] - boxes[:, 0:2]) * np.array([sx, sy], np.float32)
        out.append(wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)


def mean_best_iou(wh, anchors):
    """Mean over boxes of the shape IoU with their best anchor."""
    return float(wh_iou(wh, anchors).max(axis=1).mean())


def _init_centres(wh, k, rng):
    """k-means++ seeding with the 1 - IoU distance."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1.0 - wh_iou(wh, np.array(centres)).max(axis=1)
        p = d ** 2
        total = p.sum()
        idx = rng.integers(len(wh)) if total <= 0 else rng.choice(len(wh), p=p / total)
        centres.append(wh[idx])
    return np.array(centres, np.float32)


def kmeans_anchors(wh, k=NUM_ANCHORS, seed=0, n_init=5, max_iter=300):
    """Cluster (N, 2) box shapes into ``k`` anchors; returns (k, 2) float32 sorted by area."""
    wh = np.asarray(wh, np.float32).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(np.unique(wh, axis=0)) < k:
        raise ValueError(f"k-means needs at least {k} distinct box shapes, got {len(np.unique(wh, axis=0))} "
                         f"(from {len(wh)} boxes)")
    rng = np.random.default_rng(seed)
    best, best_score = None, -1.0
    for _ in range(n_init):
        centres = _init_centres(wh, k, rng)
        assign = None
        for _ in range(max_iter):
            iou = wh_iou(wh, centres)
            new_assign = iou.argmax(axis=1)
            if assign is not None and np.array_equal(new_assign, assign):
                break
            assign = new_assign
            for j in range(k):
                members = wh[assign == j]
                if len(members):
                    centres[j] = np.median(members, axis=0)
                else:  # empty cluster: restart it on the worst-fitted box
                    centres[j] = wh[iou.max(axis=1).argmin()]
        score = mean_best_iou(wh, centres)
        if score > best_score:
            best, best_score = centres.copy(), score
    return best[np.argsort(best.prod(axis=1), kind="stable")].astype(np.float32)


def round_anchors(anchors):
    """Integer pixels (at least 1), sorted by area after rounding: what the file holds."""
    a = np.maximum(np.rint(np.asarray(anchors, np.float64)), 1).reshape(-1, 2)
    return a[np.argsort(a.prod(axis=1), kind="stable")].astype(np.float32)


def format_anchors(anchors):
    """'w,h,  w,h, ...' with integer pixels (the model_data/yolo_anchors.txt format)."""
    return ",  ".join(f"{int(w)},{int(h)}" for w, h in round_anchors(anchors))


def save_anchors(path, anchors):
    """Write ``anchors`` (rounded, sorted by area); returns the anchors as written."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(format_anchors(anchors) + "\n")
    return round_anchors(anchors)


def main(argv=None):
    """Compute anchors for a dataset split and write them in the yolo_anchors.txt format."""
    from utils.data.formats import add_data_arguments, records_from_args

    p = argparse.ArgumentParser(prog="python -m utils.data.anchors", description=main.__doc__)
    add_data_arguments(p, split_ratios=[0.8, 0.1, 0.1])
    p.add_argument("--split", default="train", help="split whose boxes are clustered (default train; 'all')")
    p.add_argument("--input-size", default="416", help="S or HxW, multiples of 32")
    p.add_argument("--out", required=True, help="anchor file to write")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of k-means and of a split made on the spot (as train.py's)")
    p.add_argument("--n-init", type=int, default=5, help="k-means restarts (best kept)")
    args = p.parse_args(argv)

    input_hw = parse_input_hw(args.input_size)
    try:
        records, _ = records_from_args(args, args.split, check_images=False)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    wh = box_shapes(records, input_hw)
    anchors = save_anchors(args.out, kmeans_anchors(wh, NUM_ANCHORS, args.seed, args.n_init))
    default = load_anchors(DEFAULT_ANCHORS_PATH)
    print(f"{len(wh)} boxes from {len(records)} images at {input_hw[0]}x{input_hw[1]}")
    print(f"anchors: {format_anchors(anchors)}  -> {args.out}")
    print(f"mean best IoU: {mean_best_iou(wh, anchors):.4f} (these anchors), "
          f"{mean_best_iou(wh, default):.4f} (default {DEFAULT_ANCHORS_PATH})")
    return anchors


if __name__ == "__main__":
    main()
