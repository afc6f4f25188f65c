"""Drawing boxes with class names (and scores) on RGB images, and image grids.

Used by the augmentation visual check (``python -m utils.data.preview``) and by predict.py.
cv2 does the drawing (already a dependency, fast, no figure machinery); colours are fixed
per class so a class keeps its colour across images and runs.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colors(num_classes: int):
    """``num_classes`` distinct, saturated RGB colours (uint8 tuples), stable per index.

    Hues step by the golden ratio so neighbouring class indices get far-apart hues for any
    class count; value alternates slightly so classes 20 apart still differ.
    """
    colors = []
    for i in range(max(int(num_classes), 0)):
        h = (i * 0.618033988749895) % 1.0
        v = 1.0 if i % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, v)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _text_color(rgb):
    """Black or white, whichever reads better on ``rgb`` (ITU-R BT.601 luma)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_detections(image, boxes, labels, scores=None, class_names=None, colors=None,
                    thickness=None, font_scale=None, show_labels=True):
    """Draw xyxy pixel ``boxes`` with class names (and ``scores``) on an RGB image.

    Args:
      image: HxWx3 RGB, uint8 or float in [0, 255]; not modified.
      boxes: (N, 4) xyxy in the image's pixels (clipped to the image for drawing).
      labels: (N,) int class indices.
      scores: optional (N,) confidences, written as "name 0.87".
      class_names: optional list of names; the index is written when absent.
      colors: optional list of RGB tuples per class (default ``class_colors``).
      thickness, font_scale: default scale with the image size.
    Returns:
      A new uint8 RGB image. Label tags are kept inside the image: above the box when there
      is room, otherwise just inside its top edge, shifted left at the right border.
    """
    img = np.ascontiguousarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_detections expects an HxWx3 RGB image, got shape {img.shape}")
    img = img.copy()
    H, W = img.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(boxes):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(labels)} labels")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(scores)} scores")
    n_colors = max(len(class_names) if class_names is not None else 0, int(labels.max()) + 1 if len(labels) else 0)
    colors = list(colors) if colors is not None else class_colors(n_colors)
    short = min(H, W)
    thickness = thickness or max(1, int(round(short / 300)))
    font_scale = font_scale or max(0.35, short / 1000)
    font_thick = max(1, thickness - 1)

    for i, (box, label) in enumerate(zip(boxes, labels)):
        color = tuple(int(c) for c in colors[int(label) % len(colors)]) if colors else (255, 0, 0)
        x1, y1 = int(round(np.clip(box[0], 0, W - 1))), int(round(np.clip(box[1], 0, H - 1)))
        x2, y2 = int(round(np.clip(box[2], 0, W - 1))), int(round(np.clip(box[3], 0, H - 1)))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness)  # axis-aligned: crisp, no AA
        if not show_labels:
            continue
        name = (class_names[label] if class_names is not None and 0 <= label < len(class_names)
                else str(int(label)))
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, font_thick)
        tag_h = th + base + 2
        tw = min(tw + 2, W)
        tx = min(max(x1, 0), W - tw)
        ty = y1 - tag_h if y1 - tag_h >= 0 else min(y1, H - tag_h)  # above the box, else inside
        ty = max(ty, 0)
        cv2.rectangle(img, (tx, ty), (tx + tw, ty + tag_h), color, -1)
        cv2.putText(img, text, (tx + 1, ty + th + 1), _FONT, font_scale, _text_color(color), font_thick,
                    lineType=cv2.LINE_AA)
    return img


def image_grid(images, cols=None, pad=4, pad_value=255):
    """Tile equally sized HxWx3 images into one image, row-major, ``pad`` px apart."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("image_grid: no images")
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("image_grid: images must share one size")
    cols = cols or int(math.ceil(math.sqrt(len(images))))
    rows = int(math.ceil(len(images) / cols))
    grid = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), pad_value, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = np.clip(im, 0, 255).astype(np.uint8)
    return grid


def draw_counts(image, counts, class_names=None, colors=None, font_scale=None, max_lines=None):
    """Draw a per-class count legend ("name: n", one line per class) in the top-left corner.

    Args:
      image: HxWx3 RGB uint8 (or float in [0, 255]); not modified.
      counts: mapping class index -> count (classes with 0 are not listed); listed by
        count, then by index.
      class_names, colors: as in :func:`draw_detections`, so a class keeps its box colour.
      max_lines: the most lines drawn (default: as many as fit); the rest become "+k more".
    Returns:
      A new uint8 RGB image. The legend is a dark panel with white text and a colour swatch
      per class, kept inside the image (text shrinks on small images).
    """
    img = np.ascontiguousarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).copy()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_counts expects an HxWx3 RGB image, got shape {img.shape}")
    items = sorted(((int(k), int(v)) for k, v in dict(counts).items() if int(v) > 0), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return img
    H, W = img.shape[:2]
    n_colors = max(len(class_names) if class_names is not None else 0, max(k for k, _ in items) + 1)
    colors = list(colors) if colors is not None else class_colors(n_colors)
    font_scale = font_scale or max(0.35, min(H, W) / 1000)
    thick = 1
    lines = [((class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)) + f": {v}", k)
             for k, v in items]
    (_, th), base = cv2.getTextSize("Ag", _FONT, font_scale, thick)
    line_h = th + base + 4
    fit = max(1, (H - 4) // line_h)
    limit = min(fit, max_lines or fit)
    if len(lines) > limit:
        rest = len(lines) - (limit - 1)
        lines = lines[:limit - 1] + [(f"+{rest} more", None)]
    swatch = th
    width = max(cv2.getTextSize(t, _FONT, font_scale, thick)[0][0] for t, _ in lines) + swatch + 10
    width, height = min(width, W), min(len(lines) * line_h + 4, H)
    panel = img[:height, :width].astype(np.float32)
    img[:height, :width] = (panel * 0.35).astype(np.uint8)  # darkened: white text reads on any image
    for i, (text, k) in enumerate(lines):
        y = 2 + i * line_h
        if k is not None:
            color = tuple(int(c) for c in colors[k % len(colors)])
            cv2.rectangle(img, (3, y + 2), (3 + swatch, y + 2 + swatch), color, -1)
        cv2.putText(img, text, (swatch + 7, y + th + 2), _FONT, font_scale, (255, 255, 255), thick,
                    lineType=cv2.LINE_AA)
    return img
