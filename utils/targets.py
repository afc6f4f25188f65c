"""YOLO training targets, and THE box-encoding convention of the project.

THE BOX-ENCODING CONVENTION (fixed by the lead; targets, loss and decoder all follow it):

- Network input: RGB float32 in [0, 255], letterboxed with utils/letterbox.py (grey 128
  padding) to (H, W), both multiples of 32 (square or not). The model normalises internally
  (each backbone has its own Rescaling layer); never divide by 255 outside the model.
- Boxes in records: float32 xyxy in source-image pixels (VocRecord.boxes). In the
  network-input frame: the same after utils.letterbox.letterbox_boxes.
- Anchors: 9 (w, h) pairs in network-input pixels, sorted by area
  (model_data/yolo_anchors.txt, comma separated). Anchor masks per output: output 0 =
  stride 32 uses anchors [6,7,8], output 1 = stride 16 uses [3,4,5], output 2 = stride 8
  uses [0,1,2]. ANCHOR_MASKS = [[6,7,8],[3,4,5],[0,1,2]], STRIDES = [32,16,8].
- Model outputs: list of 3 tensors ordered stride 32, 16, 8; each (B, H/s, W/s, 3*(5+C)),
  reshaped to (B, gh, gw, 3, 5+C) with last axis [tx, ty, tw, th, t_obj, t_cls_0..t_cls_{C-1}]
  (raw logits).
- Decode (one TF function shared by loss and decoder, in utils/decode.py:
  ``decode_head(raw, anchors_wh, input_hw, num_classes)``; anchors_wh = the 3 anchors of that
  scale, (3,2) pixels)::

      grid (gx, gy) = cell indices; gw, gh = grid width/height
      cx = (2*sigmoid(tx) - 0.5 + gx) / gw ;  cy = (2*sigmoid(ty) - 0.5 + gy) / gh
      w  = (2*sigmoid(tw))**2 * anchor_w / W ;  h = (2*sigmoid(th))**2 * anchor_h / H
      obj = sigmoid(t_obj), cls = sigmoid(t_cls)   (confidence = obj * cls)

  i.e. boxes come out as cxcywh normalised to the network input (0..1). (Bounded YOLOv4
  "grid sensitive" xy and bounded wh: no exp overflow, so no NaN from the box branch.)
- Targets y_true per output l: float32 (gh, gw, 3, 5+C) per image (batched:
  (B, gh, gw, 3, 5+C)): [cx, cy, w, h] normalised to the network input like the decode,
  obj = 1 on assigned (cell, anchor), class one-hot (no smoothing; the loss applies label
  smoothing). Zeros elsewhere.
- Assignment (YOLOv4 multi-anchor rule): for each box (network-input pixels), shape-IoU
  (utils.boxes.wh_iou) with all 9 anchors; the best anchor is always assigned, plus every
  other anchor with shape-IoU > iou_thresh (default 0.213, darknet's iou_thresh). The cell
  is the one containing the box centre at that anchor's scale:
  gx = min(floor(cx_px / stride), gw-1).
- Neighbour cells (YOLOv5; on by default, ``neighbor_cells=False`` gives YOLOv4's centre cell
  only): each (box, anchor) is also assigned to the horizontal neighbour nearest the centre
  (left if frac(cx / stride) < 0.5, right if > 0.5) and to the vertical one likewise, when
  that neighbour lies inside the grid (centre more than one cell from that edge). The
  decode's xy range (-0.5, 1.5) reaches a centre in either neighbour. Three times the
  positives: trained from scratch on the demo set this lifted val mAP@0.5 from 0.319 to 0.457
  at the same 300 steps (benchmarks/recipe_ablation.py).
- Conflicts (two candidates for one cell+anchor): a centre cell beats a neighbour cell; then
  the box with the higher shape-IoU to that anchor wins; ties: the earlier box in the list wins.
  Difficult boxes are not in training targets.
- Besides y_true, a training batch carries the padded true boxes ``gt_boxes``
  (B, max_boxes, 4) cxcywh normalised (zeros for padding) so the loss can compute the
  ignore mask against ALL true boxes of the image.

Implementation notes: this module is the one place ANCHOR_MASKS, STRIDES and the anchor-file
reader live. ``build_targets`` works on one image in NumPy (it runs inside the input
pipeline's workers, after all geometric augmentation); difficult boxes are removed before it
is called (utils/data/augment.py drops them by default), so every box given here is a training box.
Degenerate boxes (width or height <= 0) are ignored. ``gt_boxes`` keeps the first
``max_boxes`` boxes in the order given; y_true always holds every box.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from utils.boxes import wh_iou, xyxy_to_cxcywh

ANCHOR_MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
STRIDES = [32, 16, 8]
TARGET_KEYS = ("y32", "y16", "y8")  # the batch dict's keys of the three target grids, in STRIDES order
NUM_ANCHORS = 9
DEFAULT_IOU_THRESH = 0.213
DEFAULT_ANCHORS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "model_data", "yolo_anchors.txt")


def load_anchors(path=DEFAULT_ANCHORS_PATH) -> np.ndarray:
    """Read an anchor file (``w,h,  w,h, ...`` in network-input pixels) -> (9, 2) float32.

    Anchors not sorted by area are sorted (with a warning): the anchor masks assume it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise OSError(f"cannot read anchor file {path}: {e}") from e
    parts = [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
    try:
        values = np.array([float(p) for p in parts], dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"anchor file {path}: expected comma-separated numbers 'w,h, w,h, ...' ({e})") from e
    if values.size != 2 * NUM_ANCHORS:
        raise ValueError(f"anchor file {path}: expected {NUM_ANCHORS} (w, h) pairs = {2 * NUM_ANCHORS} "
                         f"numbers, found {values.size}")
    anchors = values.reshape(NUM_ANCHORS, 2)
    if not np.all(np.isfinite(anchors)) or np.any(anchors <= 0):
        raise ValueError(f"anchor file {path}: anchor widths and heights must be positive, got {anchors.tolist()}")
    area = anchors[:, 0] * anchors[:, 1]
    order = np.argsort(area, kind="stable")
    if np.any(order != np.arange(NUM_ANCHORS)):
        warnings.warn(f"anchor file {path}: anchors are not sorted by area; sorting them "
                      f"(the masks {ANCHOR_MASKS} assume ascending area)", stacklevel=2)
        anchors = anchors[order]
    return anchors


def parse_input_hw(value):
    """416, "416", "320x416", (320, 416) -> (H, W); both positive multiples of 32."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            hw = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"input size must be S or HxW, got {value!r}") from None
    elif isinstance(value, (int, np.integer)):
        hw = (int(value),)
    else:
        hw = tuple(int(v) for v in value)
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) <= 0 or hw[0] % 32 or hw[1] % 32:
        raise ValueError(f"input size (H, W) must be positive multiples of 32, got {value!r}")
    return hw


def grid_shapes(input_hw):
    """(gh, gw) of each output, ordered like STRIDES (32, 16, 8)."""
    H, W = parse_input_hw(input_hw)
    return [(H // s, W // s) for s in STRIDES]


def empty_targets(input_hw, num_classes, max_boxes=100):
    """All-zero (y_true list, gt_boxes) for an image with no boxes."""
    y_true = [np.zeros((gh, gw, 3, 5 + num_classes), np.float32) for gh, gw in grid_shapes(input_hw)]
    return y_true, np.zeros((max_boxes, 4), np.float32)


def build_targets(boxes_xyxy_net, labels, input_hw, anchors, num_classes,
                  iou_thresh=DEFAULT_IOU_THRESH, max_boxes=100, neighbor_cells=True):
    """Encode one image's boxes per the convention above.

    Args:
      boxes_xyxy_net: (N, 4) xyxy in network-input pixels (after letterbox/augmentation).
      labels: (N,) int class indices in [0, num_classes).
      input_hw: (H, W) network input, multiples of 32.
      anchors: (9, 2) anchor (w, h) in network-input pixels, sorted by area.
      neighbor_cells: also assign, for every (box, anchor), the horizontal and the vertical
        neighbour cell nearest the box centre (YOLOv5; see the convention above).
    Returns:
      (y_true, gt_boxes): y_true a list of 3 float32 arrays (gh, gw, 3, 5+C) ordered stride
      32, 16, 8; gt_boxes float32 (max_boxes, 4) cxcywh normalised, zero padded.
    """
    H, W = int(input_hw[0]), int(input_hw[1])
    y_true, gt_boxes = empty_targets((H, W), num_classes, max_boxes)
    boxes = np.asarray(boxes_xyxy_net, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(boxes) != len(labels):
        raise ValueError(f"build_targets: {len(boxes)} boxes but {len(labels)} labels")
    anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 2)
    if anchors.shape != (NUM_ANCHORS, 2):
        raise ValueError(f"build_targets: expected {NUM_ANCHORS} anchors, got shape {anchors.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"build_targets: labels must be in [0, {num_classes}), got {np.unique(labels).tolist()}")

    cxcywh = xyxy_to_cxcywh(boxes)
    keep = (cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)
    cxcywh, labels = cxcywh[keep], labels[keep]
    n = len(cxcywh)
    if n == 0:
        return y_true, gt_boxes

    norm = cxcywh / np.array([W, H, W, H], np.float32)
    m = min(n, max_boxes)
    gt_boxes[:m] = norm[:m]

    ious = wh_iou(cxcywh[:, 2:4], anchors)  # (n, 9)
    assigned = ious > iou_thresh
    assigned[np.arange(n), np.argmax(ious, axis=1)] = True  # best anchor always (ties: lowest index)

    box_idx, anchor_idx = np.nonzero(assigned)
    for level, (mask, stride) in enumerate(zip(ANCHOR_MASKS, STRIDES)):
        sel = np.isin(anchor_idx, mask)
        if not np.any(sel):
            continue
        b, k = box_idx[sel], anchor_idx[sel]
        a = np.searchsorted(mask, k)  # position of the anchor inside this level's (sorted) mask
        gh, gw = H // stride, W // stride
        cx, cy = cxcywh[b, 0] / stride, cxcywh[b, 1] / stride  # centre in grid units
        gx = np.clip(np.floor(cx), 0, gw - 1).astype(np.int64)
        gy = np.clip(np.floor(cy), 0, gh - 1).astype(np.int64)
        rank = np.zeros(len(b), np.int64)  # 0 = the centre cell, 1 = a neighbour
        if neighbor_cells:
            # YOLOv5's rule: the horizontal and the vertical neighbour nearest the centre,
            # where that neighbour is inside the grid (centre more than 1 cell from the edge)
            fx, fy = cx - np.floor(cx), cy - np.floor(cy)
            nx = np.where(fx < 0.5, -1, 1) * ((fx < 0.5) & (cx > 1) | (fx > 0.5) & (gw - cx > 1))
            ny = np.where(fy < 0.5, -1, 1) * ((fy < 0.5) & (cy > 1) | (fy > 0.5) & (gh - cy > 1))
            sx, sy = nx != 0, ny != 0
            b = np.concatenate([b, b[sx], b[sy]])
            k = np.concatenate([k, k[sx], k[sy]])
            a = np.concatenate([a, a[sx], a[sy]])
            # (the clip only matters for centres outside the image on a 1-cell grid: such a
            # neighbour lands on the centre cell, which then keeps the centre's entry)
            gx = np.concatenate([gx, np.clip(gx[sx] + nx[sx], 0, gw - 1), gx[sy]])
            gy = np.concatenate([gy, gy[sx], np.clip(gy[sy] + ny[sy], 0, gh - 1)])
            rank = np.concatenate([rank, np.ones(sx.sum() + sy.sum(), np.int64)])
        # Conflicts: sort by (centre before neighbour, shape-IoU descending, box index
        # ascending); the first entry per (cell, anchor) key wins.
        order = np.lexsort((b, -ious[b, k], rank))
        key = ((gy * gw + gx) * 3 + a)[order]
        _, first = np.unique(key, return_index=True)
        win = order[first]
        b, a, gx, gy = b[win], a[win], gx[win], gy[win]
        out = y_true[level]
        out[gy, gx, a, 0:4] = norm[b]
        out[gy, gx, a, 4] = 1.0
        out[gy, gx, a, 5 + labels[b]] = 1.0
    return y_true, gt_boxes
