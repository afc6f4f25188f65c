"""Training and validation input pipelines: records -> augmented, encoded batches.

Batches are ``(images, targets)``: images float32 (B, H, W, 3) in [0, 255] (the model
normalises), targets ``{"y32": (B, H/32, W/32, 3, 5+C), "y16": ..., "y8": ...,
"gt_boxes": (B, max_boxes, 4)}`` per utils/targets.py. Validation batches hold letterboxed
images only (or, with ``with_targets=True``, the same targets dict without augmentation,
for a validation loss).

Each batch is made by plain Python/NumPy code (``TrainDataset.batch``); it is served
through a tf.data pipeline (``as_tf_dataset``: Dataset.range -> ``tf.numpy_function`` per
sample with ``num_parallel`` calls, in order -> batch -> prefetch). Why tf.data over a
keras.utils.PyDataset (the class is one too, so both paths give identical batches):
measured with ``python benchmarks/data_throughput.py --compare --rounds 3`` (BCCD train,
416x416, batch 8, mosaic+mixup on, 2 CPU cores shared with other jobs; docs/benchmarks.md):
tf.data x2 and PyDataset with 2 threads are equal within noise (40-42 images/s with a load
average of 5-7; 88 vs 74 images/s in a quieter moment, when one serial worker gave 44);
PyDataset with 2 processes is the slowest every time (18-31 images/s: each float32 batch
is pickled through a pipe). The per-sample work releases the GIL in PIL/cv2, so threads
scale; tf.data also keeps the order without the enqueuer, and its prefetch runs beside the
training step in TensorFlow's own threads.

Randomness: the order of epoch e is a permutation drawn from (seed, e); sample i of epoch e
is augmented with a Generator drawn from (seed, e, i) (utils.data.augment.sample_rng), so batches
do not depend on worker count, scheduling or resumption. The trainer calls
``set_epoch(epoch, total_epochs)`` before each epoch (``EpochSetter`` callback does it from
Keras' on_epoch_begin, which runs before fit creates the epoch's iterator); mosaic/mixup
are on for the first ``mosaic_fraction`` of the epochs, or forced with ``set_special``.

An image that cannot be read at training time (corrupt, truncated, deleted) does not stop
the epoch: a warning names the file once and another record, drawn from the same
Generator, takes its place.
"""
from __future__ import annotations

import math
import warnings

import keras
import numpy as np

from utils.data.augment import AugmentConfig, Augmenter, letterbox_sample, sample_rng
from utils.targets import DEFAULT_IOU_THRESH, STRIDES, TARGET_KEYS, build_targets, load_anchors, parse_input_hw
from utils.data.images import ImageReadError, read_image



def _anchors(value):
    """None (default file), a path, or a (9, 2) array -> (9, 2) float32 anchors."""
    if value is None:
        return load_anchors()
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return load_anchors(value)
    return np.asarray(value, np.float32).reshape(9, 2)


def records_from_args(roots, split, classes_path):
    """(records, class_names) for the CLIs: utils.data.voc.load_voc over ``roots``."""
    from utils.data.voc import load_voc, read_class_names
    class_names = read_class_names(classes_path)
    return load_voc(roots, split, class_names), class_names


class RecordLoader:
    """Reads a record's image and its training boxes; substitutes unreadable images.

    ``load(i, rng)`` -> (image uint8 HxWx3 RGB, boxes float32 (N, 4) xyxy source pixels,
    labels int32 (N,)). Difficult boxes are dropped unless ``include_difficult``.
    """

    def __init__(self, records, include_difficult=False, reader=None, max_substitutes=20):
        if not len(records):
            raise ValueError("no records to load")
        self.records = list(records)
        self.include_difficult = include_difficult
        self.reader = reader or read_image
        self.max_substitutes = max_substitutes
        self.bad = set()  # record indices found unreadable in this process

    def boxes_labels(self, i):
        r = self.records[i]
        boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(r.labels).reshape(-1).astype(np.int32)
        if not self.include_difficult and r.difficult is not None and len(r.difficult):
            keep = ~np.asarray(r.difficult, bool).reshape(-1)
            boxes, labels = boxes[keep], labels[keep]
        return boxes, labels

    def load(self, i, rng):
        tried = []
        for _ in range(self.max_substitutes + 1):
            if i not in self.bad:
                path = self.records[i].image_path
                try:
                    image = self.reader(path)
                    return (image, *self.boxes_labels(i))
                except (ImageReadError, OSError) as e:
                    self.bad.add(i)
                    warnings.warn(f"skipping unreadable training image {path}: {e} "
                                  "(another image is used in its place)", RuntimeWarning, stacklevel=2)
            tried.append(self.records[i].image_path)
            i = int(rng.integers(0, len(self.records)))
        raise RuntimeError(f"{len(tried)} images in a row could not be read, e.g. {tried[:3]}; "
                           "check the dataset (python voc_annotation.py check)")


class TrainDataset(keras.utils.PyDataset):
    """Augmented training batches; see the module docstring.

    Args:
      records: VocRecord list (utils.data.voc.load_voc).
      num_classes: C.
      input_hw: network input (H, W) or S or "HxW", multiples of 32.
      batch_size: B.
      anchors: (9, 2) anchors or a path (default model_data/yolo_anchors.txt).
      seed: the seed of shuffling and augmentation.
      augment: AugmentConfig (defaults: YOLOv4 jitter/scale/HSV, mosaic 0.5, mixup 0.5,
        mosaic_fraction 0.7); ``augment=False`` gives letterbox only (no randomness but
        the shuffle).
      neighbor_cells: YOLOv5 neighbour-cell assignment in the targets (utils.targets; default on).
      num_parallel: parallel samples for ``as_tf_dataset`` (default 2) and PyDataset
        workers when used as one (set ``workers``/``use_multiprocessing`` via kwargs).
    """

    def __init__(self, records, num_classes, input_hw=416, batch_size=8, anchors=None, seed=0,
                 augment=None, max_boxes=100, iou_thresh=DEFAULT_IOU_THRESH, shuffle=True,
                 drop_remainder=False, num_parallel=2, reader=None, neighbor_cells=True, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        self.input_hw = parse_input_hw(input_hw)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.anchors = _anchors(anchors)
        self.seed = int(seed)
        self.do_augment = augment is not False
        config = augment if isinstance(augment, AugmentConfig) else AugmentConfig()
        self.augmenter = Augmenter(self.input_hw, config)
        self.loader = RecordLoader(records, include_difficult=config.include_difficult, reader=reader)
        self.records = self.loader.records
        self.max_boxes = int(max_boxes)
        self.iou_thresh = float(iou_thresh)
        self.neighbor_cells = bool(neighbor_cells)
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.num_parallel = int(num_parallel)
        self.epoch = 0
        self._order_cache = (None, None)

    # -- epoch / switch control (the trainer's handles) ---------------------------------
    def set_epoch(self, epoch, total_epochs=None):
        """Select epoch ``epoch`` (shuffle order, augmentation draws, mosaic schedule)."""
        self.epoch = int(epoch)
        self.augmenter.set_epoch(epoch, total_epochs)

    def set_special(self, enabled):
        """Force mosaic/mixup on/off (True/False); None follows the epoch schedule."""
        self.augmenter.set_special(enabled)

    # -- sizes ----------------------------------------------------------------------------
    @property
    def num_samples(self):
        n = len(self.records)
        return (n // self.batch_size) * self.batch_size if self.drop_remainder else n

    def __len__(self):
        return self.num_samples // self.batch_size if self.drop_remainder else math.ceil(self.num_samples / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    # -- samples --------------------------------------------------------------------------
    def order(self, epoch=None):
        """Record indices of ``epoch`` in training order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._order_cache[0] != epoch:
            n = len(self.records)
            order = (np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch, 2 ** 31]))
                     .permutation(n) if self.shuffle else np.arange(n))
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def sample(self, position):
        """(image uint8 (H, W, 3), boxes xyxy network px, labels) of position ``position`` of
        the current epoch."""
        epoch = self.epoch
        record = int(self.order(epoch)[position])
        rng = sample_rng(self.seed, epoch, position)
        if not self.do_augment:
            image, boxes, labels = self.loader.load(record, rng)
            image, boxes, labels, _ = letterbox_sample(image, boxes, labels, self.input_hw)
            return image, boxes, labels
        return self.augmenter.train_sample(record, self.loader.load, len(self.records), rng)

    def example(self, position):
        """(image uint8, y32, y16, y8, gt_boxes) of one sample."""
        image, boxes, labels = self.sample(position)
        y_true, gt = build_targets(boxes, labels, self.input_hw, self.anchors, self.num_classes,
                                   self.iou_thresh, self.max_boxes, self.neighbor_cells)
        return (image, *y_true, gt)

    def batch(self, index):
        """Batch ``index`` of the current epoch as NumPy: (images float32, targets dict)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, self.num_samples)
        parts = list(zip(*[self.example(p) for p in range(lo, hi)]))
        images = np.stack(parts[0]).astype(np.float32)
        targets = {k: np.stack(v) for k, v in zip(TARGET_KEYS + ("gt_boxes",), parts[1:])}
        return images, targets

    __getitem__ = batch  # keras.utils.PyDataset protocol

    def as_tf_dataset(self, num_parallel=None, shard=(0, 1), replica_batch=None):
        """The tf.data pipeline: one parallel numpy_function per sample, batched, prefetched.

        A fresh iterator (Keras makes one per epoch) reads ``self.epoch`` when it runs, so
        ``set_epoch`` before the epoch (EpochSetter) is all the trainer does.

        ``shard=(p, P)`` with ``replica_batch`` b: input pipeline p of P (one per worker under
        tf.distribute) reads only its part of each global batch of ``batch_size`` B, the
        positions [kB + p*B/P, kB + (p+1)*B/P), in batches of b for its replicas in turn.
        Every sample is read by exactly one pipeline, and the replicas of all pipelines
        together see the same global batches, in the same order, as one pipeline would.
        """
        import tensorflow as tf
        H, W = self.input_hw
        C5 = 5 + self.num_classes
        shapes = [(H, W, 3)] + [(H // s, W // s, 3, C5) for s in STRIDES] + [(self.max_boxes, 4)]
        dtypes = [tf.uint8] + [tf.float32] * 4

        def make(i):
            return self.example(int(i))

        def load(i):
            out = tf.numpy_function(make, [i], dtypes, stateful=True, name="yolo_train_sample")
            for t, s in zip(out, shapes):
                t.set_shape(s)
            return tuple(out)

        def to_batch(image, y32, y16, y8, gt):
            return tf.cast(image, tf.float32), {**dict(zip(TARGET_KEYS, (y32, y16, y8))), "gt_boxes": gt}

        n_par = num_parallel or self.num_parallel
        index, count = (int(v) for v in shard)
        batch = int(replica_batch or self.batch_size)
        ds = tf.data.Dataset.range(self.num_samples)
        if count > 1:
            part = self.batch_size // count
            if part * count != self.batch_size or part % batch:
                raise ValueError(f"a batch of {self.batch_size} does not split into {count} input pipelines "
                                 f"of replica batches of {batch}")
            # whole global batches only (every pipeline runs the same number of steps)
            ds = ds.take(self.num_samples // self.batch_size * self.batch_size)
            ds = ds.filter(lambda i: (i % self.batch_size) // part == index)
        ds = ds.map(load, num_parallel_calls=n_par, deterministic=True)
        ds = ds.batch(batch, drop_remainder=self.drop_remainder or count > 1)
        ds = ds.map(to_batch, num_parallel_calls=1)
        return ds.prefetch(2)


class ValDataset(keras.utils.PyDataset):
    """Letterboxed validation images in record order (no randomness).

    Yields images float32 (B, H, W, 3), or ``(images, targets)`` with ``with_targets=True``
    (difficult boxes left out of the targets, as in training). ``letterboxes`` gives each
    record's utils.letterbox.Letterbox to map predictions back to source pixels.
    """

    def __init__(self, records, num_classes=None, input_hw=416, batch_size=8, anchors=None,
                 with_targets=False, max_boxes=100, iou_thresh=DEFAULT_IOU_THRESH, reader=None,
                 include_difficult=False, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        self.input_hw = parse_input_hw(input_hw)
        self.batch_size = int(batch_size)
        self.with_targets = with_targets
        if with_targets and num_classes is None:
            raise ValueError("ValDataset(with_targets=True) needs num_classes")
        self.num_classes = num_classes
        self.anchors = _anchors(anchors) if with_targets else None
        self.loader = RecordLoader(records, include_difficult=include_difficult, reader=reader)
        self.records = self.loader.records
        self.max_boxes, self.iou_thresh = int(max_boxes), float(iou_thresh)

    def __len__(self):
        return math.ceil(len(self.records) / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    def letterboxes(self):
        from utils.letterbox import Letterbox
        return [Letterbox.compute((r.height, r.width), self.input_hw) for r in self.records]

    def example(self, i):
        """Validation images are not substituted: an unreadable one raises ImageReadError."""
        image = self.loader.reader(self.records[i].image_path)
        boxes, labels = self.loader.boxes_labels(i)
        return letterbox_sample(image, boxes, labels, self.input_hw)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, len(self.records))
        examples = [self.example(i) for i in range(lo, hi)]
        images = np.stack([e[0] for e in examples]).astype(np.float32)
        if not self.with_targets:
            return (images,)
        encoded = [build_targets(e[1], e[2], self.input_hw, self.anchors, self.num_classes,
                                 self.iou_thresh, self.max_boxes) for e in examples]
        targets = {k: np.stack([y[l] for y, _ in encoded]) for l, k in enumerate(TARGET_KEYS)}
        targets["gt_boxes"] = np.stack([gt for _, gt in encoded])
        return images, targets


class EpochSetter(keras.callbacks.Callback):
    """Calls ``dataset.set_epoch(epoch, total_epochs)`` at each epoch's start (resume-safe:
    Keras passes the absolute epoch, initial_epoch included)."""

    def __init__(self, dataset, total_epochs):
        super().__init__()
        self.dataset = dataset
        self.total_epochs = int(total_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch, self.total_epochs)
