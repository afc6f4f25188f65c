"""Letterbox resize (aspect kept, grey padding) and its exact inverse for boxes.

The one implementation used by training (validation pre-processing), prediction and
evaluation. Given a source image of size (h, w) and a network input of size (H, W):

    scale = min(W / w, H / h);  nw = round(w * scale);  nh = round(h * scale)
    dx = (W - nw) // 2;         dy = (H - nh) // 2
    x_net = x_src * (nw / w) + dx,   y_net = y_src * (nh / h) + dy

The per-axis factors nw / w and nh / h (not the rounded-away ``scale``) make the box
transform agree with the pixels actually drawn, and ``unletterbox_boxes`` inverts it exactly.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

PAD_VALUE = 128


@dataclasses.dataclass(frozen=True)
class Letterbox:
    src_hw: tuple  # (h, w) of the source image
    dst_hw: tuple  # (H, W) of the network input
    new_hw: tuple  # (nh, nw) of the resized image inside the canvas
    offset: tuple  # (dy, dx) of the resized image inside the canvas

    @property
    def scale_xy(self):
        return (self.new_hw[1] / self.src_hw[1], self.new_hw[0] / self.src_hw[0])

    @classmethod
    def compute(cls, src_hw, dst_hw) -> "Letterbox":
        h, w = int(src_hw[0]), int(src_hw[1])
        H, W = int(dst_hw[0]), int(dst_hw[1])
        if min(h, w, H, W) <= 0:
            raise ValueError(f"letterbox needs positive sizes, got source {src_hw} and target {dst_hw}")
        scale = min(W / w, H / h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        return cls((h, w), (H, W), (nh, nw), ((H - nh) // 2, (W - nw) // 2))


def letterbox_image(image: np.ndarray, dst_hw, pad_value: int = PAD_VALUE):
    """Resize ``image`` (HxWxC uint8) into a (H, W) canvas; returns (canvas, Letterbox)."""
    lb = Letterbox.compute(image.shape[:2], dst_hw)
    (nh, nw), (dy, dx) = lb.new_hw, lb.offset
    interp = cv2.INTER_AREA if nw < image.shape[1] else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != image.shape[:2] else image
    canvas = np.full((lb.dst_hw[0], lb.dst_hw[1], image.shape[2]), pad_value, dtype=image.dtype)
    canvas[dy:dy + nh, dx:dx + nw] = resized.reshape(nh, nw, image.shape[2])  # cv2 drops a 1-channel axis
    return canvas, lb


def letterbox_boxes(boxes, lb: Letterbox):
    """Source-pixel xyxy boxes -> network-input pixels."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    sx, sy = lb.scale_xy
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * sx + lb.offset[1]
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * sy + lb.offset[0]
    return boxes


def unletterbox_boxes(boxes, lb: Letterbox, clip: bool = True):
    """Network-input pixel xyxy boxes -> source-image pixels (exact inverse of letterbox_boxes)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    sx, sy = lb.scale_xy
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - lb.offset[1]) / sx
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - lb.offset[0]) / sy
    if clip:
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, lb.src_hw[1])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, lb.src_hw[0])
    return boxes
