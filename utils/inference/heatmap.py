"""Objectness heatmaps: where each output scale of a detector "sees" objects.

For each head (strides 32, 16, 8) the objectness sigmoid(t_obj) is taken per cell and
anchor (via utils.decode.decode_head, the one decoder), the max over the cell's anchors is
kept, the (gh, gw) grid is resized to the network input, the letterbox padding is cut away
and what is left is resized to the source image. The maps are therefore in source pixels
and can be laid over the image.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.decode import decode_head
from utils.targets import ANCHOR_MASKS, STRIDES
from utils.letterbox import Letterbox


def objectness_maps(heads, anchors, input_hw, num_classes, letterboxes):
    """Per-image, per-scale objectness maps in source-image pixels.

    heads: the 3 raw outputs (B, gh, gw, 3 * (5 + C)), ordered stride 32, 16, 8;
    letterboxes: one :class:`~utils.letterbox.Letterbox` per image of the batch.
    Returns a list (per image) of dicts {stride: (h, w) float32 in [0, 1]}.
    """
    anchors = np.asarray(anchors, np.float32).reshape(-1, 2)
    H, W = int(input_hw[0]), int(input_hw[1])
    grids = []
    for raw, mask in zip(heads, ANCHOR_MASKS):
        _, obj, _ = decode_head(raw, anchors[list(mask)], (H, W), num_classes)
        grids.append(np.asarray(obj)[..., 0].max(axis=-1))  # (B, gh, gw): best anchor per cell
    out = []
    for b, lb in enumerate(letterboxes):
        maps = {}
        for stride, grid in zip(STRIDES, grids):
            maps[stride] = _to_source(grid[b].astype(np.float32), lb)
        out.append(maps)
    return out


def _to_source(grid: np.ndarray, lb: Letterbox) -> np.ndarray:
    """(gh, gw) cell values -> network input (bilinear) -> crop the letterbox -> source size."""
    H, W = lb.dst_hw
    full = cv2.resize(grid, (W, H), interpolation=cv2.INTER_LINEAR)
    (nh, nw), (dy, dx) = lb.new_hw, lb.offset
    inner = full[dy:dy + nh, dx:dx + nw]
    h, w = lb.src_hw
    return np.clip(cv2.resize(inner, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def combine_maps(maps: dict) -> np.ndarray:
    """The pixel-wise max over the scales' maps."""
    return np.max(np.stack(list(maps.values())), axis=0)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map (JET colour map, absolute scale: 0 blue, 1 red) over an RGB image.

    The scale is absolute, not stretched to the map's range, so heatmaps of different
    images and scales compare.
    """
    image = np.asarray(image, np.uint8)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} does not match the image {image.shape[:2]}")
    colored = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
