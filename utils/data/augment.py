"""Training augmentation (YOLOv4 style) and validation letterboxing, in NumPy/cv2.

Per training sample (``Augmenter.train_sample``):

* single image ("get_random_data" of the classic YOLOv4 Keras/PyTorch ports): random aspect
  jitter (new_ar = ar * U(1-j, 1+j) / U(1-j, 1+j)), random scale of the canvas
  (``scale``, default 0.25-2), random placement on a grey (128) canvas of the network size
  (parts may fall outside: cropped), horizontal flip, HSV gain jitter;
* mosaic (probability ``mosaic_prob``): 4 images, each jittered/scaled/flipped, fill the
  four quadrants around a random cut point, then HSV jitter;
* mixup (probability ``mixup_prob``, only after a mosaic, as in the YOLOv4 ports): the
  mosaic is blended with a single-image sample of another record (ratio ~ Beta(32, 32),
  as in ultralytics), boxes concatenated.

Mosaic and mixup are the "special" augmentations: they run during the first
``mosaic_fraction`` of the epochs only (``Augmenter.set_epoch``), or as forced by
``Augmenter.set_special(True/False)``. Boxes follow the pixels exactly (same affine map as
the resize), are clipped to the canvas (to their quadrant in a mosaic) and dropped when
under ``min_box_px`` wide/high or when less than ``min_area_frac`` of their area survives
the clipping.

Determinism: every random draw comes from the ``numpy.random.Generator`` passed in; the
dataset derives it from (seed, epoch, index) with ``sample_rng``, so a sample does not
depend on the worker count or the order in which samples are made.

Why NumPy/cv2 and not Keras preprocessing layers (keras.layers.RandomFlip/RandomTranslation/
RandomZoom/RandomHue/MixUp accept {"images", "bounding_boxes"} in Keras 3.15, checked):
  - speed, measured on this machine (416x416, 2 shared CPU cores): keras RandomFlip 15 ms per
    eager call (2.5 ms/image batched in a tf.function) vs cv2.flip 0.05 ms; RandomHue +
    RandomSaturation 15 ms/image batched in graph vs 1.3 ms for the cv2 LUT HSV jitter below;
    RandomTranslation/RandomZoom 18/23 ms eager vs 1.3 ms for one cv2.resize that does
    scale, aspect jitter and placement in a single resampling;
  - the targets (utils/targets.py) are built in NumPy after all geometric augmentation, so a
    geometric Keras layer would have to run before them, per sample, in NumPy land anyway;
  - no Keras layer does mosaic with boxes; keras.layers.MixUp mixes within a batch and (3.15)
    concatenates the labels on the batch axis (boxes (8,4,4) with labels (16,2) in our
    check), which does not fit per-sample targets;
  - Keras layers draw from their own SeedGenerator state, so a sample would depend on call
    order, breaking the (seed, epoch, index) determinism above.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from utils.boxes import box_area
from utils.letterbox import PAD_VALUE, letterbox_boxes, letterbox_image


@dataclasses.dataclass
class AugmentConfig:
    jitter: float = 0.3                 # aspect-ratio jitter
    scale: tuple = (0.25, 2.0)          # single image: size of the long side relative to the canvas
    mosaic_scale: tuple = (0.4, 1.0)    # mosaic tiles: same, per tile
    mosaic_cut: tuple = (0.3, 0.7)      # mosaic cut point, fraction of W and H
    flip: float = 0.5                   # horizontal flip probability
    hue: float = 0.1                    # HSV gains: channel * U(1-g, 1+g) (hue wraps)
    sat: float = 0.7
    val: float = 0.4
    mosaic_prob: float = 0.5
    mixup_prob: float = 0.5             # applied to a mosaic sample with this probability
    mixup_beta: float = 32.0            # blend ratio ~ Beta(b, b)
    mosaic_fraction: float = 0.7        # special augmentations during this fraction of epochs
    min_box_px: float = 2.0             # drop boxes narrower/shorter than this after clipping
    min_area_frac: float = 0.1          # drop boxes keeping less than this fraction after clipping
    include_difficult: bool = False     # difficult boxes are not training targets by default


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator of one sample: a pure function of (seed, epoch, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


# ----------------------------------------------------------------------------- box helpers

def filter_boxes(boxes, labels, region, min_px=2.0, min_area_frac=0.1):
    """Clip transformed xyxy ``boxes`` to ``region`` (x0, y0, x1, y1); drop tiny ones.

    A box is dropped when, after clipping, it is under ``min_px`` wide or high, or keeps less
    than ``min_area_frac`` of its area before clipping. Returns (boxes float32, labels int32).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int32)
    x0, y0, x1, y1 = region
    before = box_area(boxes)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], x0, x1)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], y0, y1)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_px) & (h >= min_px) & (w * h >= min_area_frac * before)
    return clipped[keep], labels[keep]


def hflip(image, boxes):
    """Mirror an image left-right and its xyxy pixel boxes with it."""
    w = image.shape[1]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return cv2.flip(image, 1), boxes


def hsv_jitter(image, gains):
    """Multiply hue/saturation/value of an RGB uint8 image by ``gains`` (3,), hue wrapping.

    The LUT form of the YOLOv4/v5 ports: one colour conversion each way plus three lookups.
    """
    gains = np.asarray(gains, dtype=np.float64)
    if np.all(gains == 1.0):
        return image  # the uint8 HSV round trip is lossy; skip it when nothing changes
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = np.mod(x * gains[0], 180).astype(np.uint8)  # OpenCV uint8 hue is 0..179
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _random_hsv(image, rng, cfg):
    gains = rng.uniform(-1, 1, 3) * np.array([cfg.hue, cfg.sat, cfg.val]) + 1
    return hsv_jitter(image, gains)


def _random_size(iw, ih, target_hw, scale_range, jitter, rng):
    """New (nw, nh) with aspect jitter; the long side is ``scale`` times the target's."""
    H, W = target_hw
    new_ar = (iw / ih) * rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    scale = rng.uniform(*scale_range)
    if new_ar < 1:
        nh = int(scale * H)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * W)
        nh = int(nw / new_ar)
    return max(nw, 1), max(nh, 1)


def _paste(canvas, image, nw, nh, dx, dy, region):
    """Resize ``image`` to (nw, nh), put its top-left at (dx, dy) on ``canvas``, draw only
    inside ``region`` (x0, y0, x1, y1). Box map: x' = x * nw / iw + dx (cv2.resize maps pixel
    edges to pixel edges, so this is exact for the drawn pixels)."""
    x0, y0, x1, y1 = region
    cx0, cy0 = max(dx, x0), max(dy, y0)
    cx1, cy1 = min(dx + nw, x1), min(dy + nh, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    ih, iw = image.shape[:2]
    # INTER_LINEAR even when shrinking (as ultralytics does under augmentation): INTER_AREA
    # at non-integer factors measured 6-10x slower here (5.8 vs 0.65 ms for 640x480->300x230).
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (iw, ih) else image
    canvas[cy0:cy1, cx0:cx1] = resized[cy0 - dy:cy1 - dy, cx0 - dx:cx1 - dx]


def _scale_boxes(boxes, iw, ih, nw, nh, dx, dy):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * (nw / iw) + dx
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * (nh / ih) + dy
    return boxes


# --------------------------------------------------------------------------- augmentations

def random_single(image, boxes, labels, input_hw, rng, cfg: AugmentConfig = None):
    """YOLOv4 get_random_data: jitter + scale + placement, flip, HSV. Boxes in source pixels
    in, network-input pixels out. Returns (uint8 HxWx3, boxes (N,4) float32, labels int32)."""
    cfg = cfg or AugmentConfig()
    H, W = int(input_hw[0]), int(input_hw[1])
    ih, iw = image.shape[:2]
    nw, nh = _random_size(iw, ih, (H, W), cfg.scale, cfg.jitter, rng)
    dx = int(rng.uniform(min(0, W - nw), max(0, W - nw)))
    dy = int(rng.uniform(min(0, H - nh), max(0, H - nh)))
    canvas = np.full((H, W, 3), PAD_VALUE, np.uint8)
    _paste(canvas, image, nw, nh, dx, dy, (0, 0, W, H))
    boxes = _scale_boxes(boxes, iw, ih, nw, nh, dx, dy)
    if rng.random() < cfg.flip:
        canvas, boxes = hflip(canvas, boxes)
    boxes, labels = filter_boxes(boxes, labels, (0, 0, W, H), cfg.min_box_px, cfg.min_area_frac)
    return _random_hsv(canvas, rng, cfg), boxes, labels


def mosaic(samples, input_hw, rng, cfg: AugmentConfig = None):
    """Mosaic of 4 (image, boxes, labels) samples (boxes in source pixels).

    A cut point (cut_x, cut_y) splits the canvas into quadrants: top-left, bottom-left,
    bottom-right, top-right get samples 0..3. Each tile is flipped with probability
    ``flip``, aspect-jittered, scaled (``mosaic_scale``) and placed with its corner on the
    cut point; only its quadrant is drawn and its boxes are clipped to that quadrant.
    HSV jitter is applied to the whole mosaic.
    """
    cfg = cfg or AugmentConfig()
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    H, W = int(input_hw[0]), int(input_hw[1])
    cut_x = int(W * rng.uniform(*cfg.mosaic_cut))
    cut_y = int(H * rng.uniform(*cfg.mosaic_cut))
    regions = [(0, 0, cut_x, cut_y), (0, cut_y, cut_x, H), (cut_x, cut_y, W, H), (cut_x, 0, W, cut_y)]
    canvas = np.full((H, W, 3), PAD_VALUE, np.uint8)
    out_boxes, out_labels = [], []
    for k, ((image, boxes, labels), region) in enumerate(zip(samples, regions)):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if rng.random() < cfg.flip:
            image, boxes = hflip(image, boxes)
        ih, iw = image.shape[:2]
        nw, nh = _random_size(iw, ih, (H, W), cfg.mosaic_scale, cfg.jitter, rng)
        dx = cut_x - nw if k in (0, 1) else cut_x
        dy = cut_y - nh if k in (0, 3) else cut_y
        _paste(canvas, image, nw, nh, dx, dy, region)
        b, lab = filter_boxes(_scale_boxes(boxes, iw, ih, nw, nh, dx, dy), labels, region,
                              cfg.min_box_px, cfg.min_area_frac)
        out_boxes.append(b)
        out_labels.append(lab)
    return _random_hsv(canvas, rng, cfg), np.concatenate(out_boxes), np.concatenate(out_labels)


def mixup(a, b, ratio):
    """Blend two (image uint8, boxes, labels) samples of one size: ratio*a + (1-ratio)*b;
    boxes and labels concatenated (a's first)."""
    img_a, boxes_a, labels_a = a
    img_b, boxes_b, labels_b = b
    if img_a.shape != img_b.shape:
        raise ValueError(f"mixup needs images of one shape, got {img_a.shape} and {img_b.shape}")
    image = cv2.addWeighted(img_a, float(ratio), img_b, 1.0 - float(ratio), 0.0)  # uint8, rounded
    boxes = np.concatenate([np.asarray(boxes_a, np.float32).reshape(-1, 4), np.asarray(boxes_b, np.float32).reshape(-1, 4)])
    labels = np.concatenate([np.asarray(labels_a).reshape(-1), np.asarray(labels_b).reshape(-1)]).astype(np.int32)
    return image, boxes, labels


def letterbox_sample(image, boxes, labels, input_hw):
    """Validation pre-processing: utils/letterbox only. Returns (canvas, boxes, labels, Letterbox)."""
    canvas, lb = letterbox_image(image, input_hw)
    return canvas, letterbox_boxes(boxes, lb), np.asarray(labels).reshape(-1).astype(np.int32), lb


class Augmenter:
    """Per-sample training augmentation with the mosaic/mixup epoch switch.

    ``load(record_index, rng) -> (image uint8 RGB, boxes xyxy source px, labels)`` is given by
    the caller (utils/data/dataset.py's RecordLoader: reads the file, drops difficult boxes,
    substitutes unreadable images). The switch state is plain attributes so a resumed run
    restores it with ``set_epoch(initial_epoch, total_epochs)``.
    """

    def __init__(self, input_hw, config: AugmentConfig = None):
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.config = config or AugmentConfig()
        self.epoch = 0
        self.total_epochs = None
        self._forced = None

    def set_epoch(self, epoch, total_epochs=None):
        self.epoch = int(epoch)
        if total_epochs is not None:
            self.total_epochs = int(total_epochs)

    def set_special(self, enabled):
        """Force mosaic/mixup on (True) or off (False); None returns to the epoch schedule."""
        self._forced = None if enabled is None else bool(enabled)

    @property
    def special_enabled(self) -> bool:
        """Whether mosaic/mixup may run now: forced, else epoch < mosaic_fraction * total."""
        if self._forced is not None:
            return self._forced
        if self.total_epochs is None:
            return True
        return self.epoch < self.config.mosaic_fraction * self.total_epochs

    def train_sample(self, index, load, num_records, rng):
        cfg, hw = self.config, self.input_hw
        if self.special_enabled and cfg.mosaic_prob > 0 and rng.random() < cfg.mosaic_prob:
            others = rng.integers(0, num_records, 3)
            tiles = [load(int(i), rng) for i in [index, *others]]
            sample = mosaic(tiles, hw, rng, cfg)
            if cfg.mixup_prob > 0 and rng.random() < cfg.mixup_prob:
                j = int(rng.integers(0, num_records))
                other = random_single(*load(j, rng), hw, rng, cfg)
                sample = mixup(sample, other, float(rng.beta(cfg.mixup_beta, cfg.mixup_beta)))
            return sample
        return random_single(*load(index, rng), hw, rng, cfg)
