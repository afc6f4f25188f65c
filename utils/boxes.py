"""Box math, written once. NumPy versions for data/eval; TensorFlow versions live beside them
where the graph needs them (loss, in-graph NMS).

Box formats: ``xyxy`` = [x1, y1, x2, y2]; ``cxcywh`` = [cx, cy, w, h]. Pixel units unless a
function says otherwise.
"""
from __future__ import annotations

import numpy as np


def xyxy_to_cxcywh(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    return np.concatenate([boxes[..., 0:2] + wh / 2, wh], axis=-1)


def cxcywh_to_xyxy(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[..., 2:4] / 2
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def box_area(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a, b):
    """Pairwise IoU of xyxy boxes: a (N, 4), b (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def wh_iou(wh_a, wh_b):
    """Shape IoU of boxes that share a centre: wh_a (N, 2), wh_b (M, 2) -> (N, M).

    The YOLO anchor-matching and k-means distance (1 - wh_iou).
    """
    wh_a = np.asarray(wh_a, dtype=np.float32).reshape(-1, 2)
    wh_b = np.asarray(wh_b, dtype=np.float32).reshape(-1, 2)
    inter = np.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * np.minimum(wh_a[:, None, 1], wh_b[None, :, 1])
    union = wh_a.prod(1)[:, None] + wh_b.prod(1)[None, :] - inter
    return (inter / np.maximum(union, 1e-12)).astype(np.float32)
