"""Backbones as image classifiers: classify.py's work (train, eval, predict, export-backbone).

A classifier is any registered backbone (nets.backbones, the detector's registry) with a
head: input -> backbone -> its stride-32 map -> global average pooling -> dropout -> dense
softmax (layers ``cls_pool``, ``cls_dropout``, ``cls_probs``; no Lambda layers). Trained on
an image-folder dataset, its backbone weights start a detector:
``export_backbone`` writes them as the ``.weights.h5`` that ``train.py --backbone-weights``
(``build_backbone(..., weights=PATH)``) loads.

Datasets (``--data DIR``), in one of two layouts:

* ``DIR/<class>/*.jpg``: one folder per class (sub-folders included), split per class into
  train and val by ``val_ratio`` and ``seed`` with utils.data.voc.split_ids (deterministic:
  SHA-1 order of ``"<seed>:<class>/<file>"``; the val part of each class is the same whatever
  else is in the folder);
* ``DIR/train/<class>/``, ``DIR/val/<class>/`` (and ``DIR/test/``): splits of that shape, as
  ``python -m utils.crops`` writes them.

Class names are the class folders with at least one usable image, sorted; a split's folders
are mapped by name onto the training classes (or, for eval, the model's). Bad input never
stops a load where the rest can go on: a non-image file, an unreadable image (every image is
decoded once, JPEGs at 1/8 scale), an empty class folder (the class is left out), images
directly in the dataset folder (no class) each give one message naming the file or folder,
and one summary line follows; fewer than two classes is a :class:`DatasetError`.

Training reuses train.py's machinery (utils.training): ``make_optimizer`` (AdamW / Adam /
SGD, decoupled weight decay on kernels, EMA with a warmed-up momentum), ``scaled_lr``,
``LRSchedule`` (linear warm-up then cosine, set before each step), ``NanGuard``,
``ResumeState`` (model + optimizer + EMA at each epoch end, ``--resume``), Keras'
``SwapEMAWeights``, ``CSVLogger`` and ``TensorBoard``, in trainer.py's order. Images are read
with the project's reader (utils.data.images.read_image), stretched to the input size (the
same :func:`load_image` for training, evaluation and prediction) and augmented in the tf.data
pipeline by Keras layers: a random-resized crop (RandomZoom in, RandomTranslation), RandomFlip,
RandomContrast and RandomBrightness. The sample order of epoch ``e`` is a permutation drawn
from ``(seed, e)``, so a resumed run sees the batches it would have seen (the augmentation's
random draws are not replayed).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import textwrap

import numpy as np

from utils.data.images import READABLE_EXTENSIONS, ImageReadError, read_image, verify_image
from utils.data.voc import DatasetError, split_ids

CLASSIFIER_META = "classifier_meta.json"  # member of a classifier's .keras zip (the detector's is yolo_meta.json)
HEAD_LAYERS = ("cls_pool", "cls_dropout", "cls_probs")
SPLIT_FOLDERS = ("train", "val", "test")
FLIPS = {"horizontal": "horizontal", "vertical": "vertical", "both": "horizontal_and_vertical", "none": None}
DEFAULT_LR = {"sgd": 0.1, "adam": 4e-3, "adamw": 4e-3}  # at --nominal-batch 64
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05}


class ClassifyError(RuntimeError):
    """A problem with a classify run's setup or files, reported as one message."""


# ----------------------------------------------------------------------------- datasets

class ImageSet:
    """Image paths with integer labels into ``class_names``; ``source`` names where they came from."""

    def __init__(self, paths, labels, class_names, source: str):
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, np.int32).reshape(-1)
        self.class_names = list(class_names)
        self.source = source

    def __len__(self):
        return len(self.paths)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def scan_class_folders(folder, log=print) -> dict[str, list[str]]:
    """``{class folder name: usable image paths}`` of ``folder``'s sub-folders, sorted by name.

    Every file is checked (extension, then a decode): a non-image file or an unreadable image
    is one message naming it; a class folder left without images is one message; image files
    directly in ``folder`` (no class) are one message. A summary line follows.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DatasetError(f"dataset folder not found: {folder}")
    log = log or (lambda _m: None)
    problems = collections.Counter()
    loose = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and not _is_hidden(e.name) and e.name.lower().endswith(READABLE_EXTENSIONS))
    if loose:
        log(f"warning: {len(loose)} image file(s) directly in {folder} belong to no class folder; ignored "
            f"(first: {os.path.join(folder, loose[0])})")
        problems["outside class folders"] += len(loose)
    classes = {}
    for name in sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _is_hidden(e.name)):
        files = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, name)):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for fname in sorted(filenames):
                if _is_hidden(fname):
                    continue
                path = os.path.join(dirpath, fname)
                if not fname.lower().endswith(READABLE_EXTENSIONS):
                    log(f"warning: {path}: not an image file (extension not one of "
                        f"{', '.join(READABLE_EXTENSIONS)}); skipped")
                    problems["not images"] += 1
                    continue
                try:
                    verify_image(path)
                except ImageReadError as exc:
                    log(f"warning: {exc}; skipped")
                    problems["unreadable"] += 1
                    continue
                files.append(path)
        if files:
            classes[name] = files
        else:
            log(f"warning: class folder {os.path.join(folder, name)} has no usable images; class left out")
            problems["empty class folders"] += 1
    total = sum(len(v) for v in classes.values())
    text = f"{folder}: {total} images in {len(classes)} class folders ("
    text += ", ".join(f"{k} {len(v)}" for k, v in classes.items()) + ")"
    if problems:
        text += "; skipped: " + ", ".join(f"{v} {k}" for k, v in problems.items())
    log(text)
    return classes


def dataset_layout(data) -> str:
    """"splits" when ``data`` holds a ``train/`` folder of class folders, else "folders"."""
    train = os.path.join(os.fspath(data), "train")
    if os.path.isdir(train) and any(e.is_dir() and not _is_hidden(e.name) for e in os.scandir(train)):
        return "splits"
    return "folders"


def _find_split(data, split: str, val_ratio: float, seed: int, log, found=None):
    """(``{class: paths}``, source text, class-folder parent) of ``split`` of ``data``, or None
    when the dataset has no such split; ``found``: the flat folder's scan when already made."""
    layout = dataset_layout(data)
    if layout == "splits":
        if split == "all":
            raise DatasetError(f"{data} is split into train/ and val/ folders; pick the split train, val or test")
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            if split == "train":
                raise DatasetError(f"{data}: no train/ folder")
            return None
        return scan_class_folders(folder, log), folder, folder
    if split not in ("train", "val", "all"):
        raise DatasetError(f"{data} is one folder of class folders: its splits are train and val "
                           f"(by the val ratio and seed) or all, not {split!r}")
    if split == "val" and not val_ratio:
        return None
    found = scan_class_folders(data, log) if found is None else found
    if split == "all":
        return found, f"{data} [all]", data
    ratios = (1.0 - float(val_ratio), float(val_ratio))
    part = {}
    for name, files in found.items():
        ids = {f"{name}/{os.path.relpath(p, os.path.join(data, name))}": p for p in files}
        part[name] = [ids[i] for i in split_ids(ids, ratios, seed)[split]]
    return part, f"{data} [{split}, val ratio {val_ratio:g}, seed {seed}]", data


def _image_set(found, source: str, parent: str, class_names, log) -> ImageSet:
    if class_names is None:
        class_names = sorted(k for k, v in found.items() if v)
        if len(class_names) < 2:
            raise DatasetError(f"{source}: a classifier needs at least 2 classes with images, found "
                               f"{len(class_names)}" + (f" ({class_names[0]!r})" if class_names else "")
                               + "; the dataset is one sub-folder of images per class")
    index = {n: i for i, n in enumerate(class_names)}
    paths, labels = [], []
    for name, files in found.items():
        if name not in index:
            if log:
                log(f"warning: {os.path.join(parent, name)}: class {name!r} is not one of the {len(class_names)} "
                    f"classes ({', '.join(class_names)}); its {len(files)} images skipped")
            continue
        paths += files
        labels += [index[name]] * len(files)
    if not paths:
        raise DatasetError(f"{source}: no images of the classes {', '.join(class_names)}")
    return ImageSet(paths, labels, class_names, source)


def load_image_set(data, split: str = "train", val_ratio: float = 0.2, seed: int = 0, class_names=None,
                   log=print) -> ImageSet | None:
    """The images of ``split`` ("train", "val", "test" or "all") of the dataset folder ``data``.

    ``class_names`` fixes the classes and their order (the training set's, a model's); folders
    of other names are reported and left out. Without it the classes are the folders with
    images, and fewer than two is a DatasetError. Returns None for a split the dataset does not
    have (a "splits" layout without that folder; val of a flat folder with ``val_ratio`` 0).
    """
    data = os.fspath(data)
    if not os.path.isdir(data):
        raise DatasetError(f"dataset folder not found: {data}")
    found = _find_split(data, split, val_ratio, seed, log)
    return None if found is None else _image_set(*found, class_names, log)


def load_train_val(data, val_ratio: float = 0.2, seed: int = 0, log=print):
    """``(train, val)`` ImageSets of ``data`` (val None when there is none), each folder scanned
    and checked once; val's classes are train's."""
    data = os.fspath(data)
    if not os.path.isdir(data):
        raise DatasetError(f"dataset folder not found: {data}")
    found = None if dataset_layout(data) == "splits" else scan_class_folders(data, log)
    train = _image_set(*_find_split(data, "train", val_ratio, seed, log, found), None, log)
    val = _find_split(data, "val", val_ratio, seed, log, found)
    return train, None if val is None else _image_set(*val, train.class_names, log)


def load_image(path, hw) -> np.ndarray:
    """``path`` read by the project's reader and stretched to ``hw`` (H, W): uint8 (H, W, 3).

    The one pre-processing of training, evaluation and prediction (area when shrinking,
    bilinear when enlarging). Raises ImageReadError naming the file.
    """
    import cv2

    image = read_image(path)
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


class EpochSamples:
    """The tf.data pipeline of an :class:`ImageSet`: ``set_epoch`` (utils.data.dataset.EpochSetter)
    picks the epoch's order, a permutation drawn from ``(seed, epoch)``; unshuffled for
    evaluation. An image that turns unreadable is reported once and replaced by the next one."""

    def __init__(self, image_set: ImageSet, hw, batch_size: int, seed: int = 0, shuffle: bool = True,
                 class_weights=None, log=print):
        self.set, self.hw, self.batch_size = image_set, (int(hw[0]), int(hw[1])), int(batch_size)
        self.seed, self.shuffle, self.log = int(seed), bool(shuffle), log or (lambda _m: None)
        self.class_weights = None if class_weights is None else np.asarray(class_weights, np.float32)
        self.epoch = 0
        self.bad: set[str] = set()
        self._order = None

    def set_epoch(self, epoch: int, total_epochs: int | None = None):
        self.epoch, self._order = int(epoch), None

    @property
    def drop_remainder(self) -> bool:
        """Training batches are whole (one batch of everything when there are fewer images)."""
        return self.shuffle and len(self.set) >= self.batch_size

    def __len__(self):
        n = len(self.set)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_remainder else len(self.set)

    def order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.set)
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                           else np.arange(n))
        return self._order

    def sample(self, i: int):
        order = self.order()
        for k in range(len(order)):
            idx = int(order[(int(i) + k) % len(order)])
            path = self.set.paths[idx]
            try:
                return load_image(path, self.hw), self.set.labels[idx]
            except ImageReadError as exc:
                if path not in self.bad:
                    self.bad.add(path)
                    self.log(f"warning: {exc}; replaced by another image")
        raise DatasetError(f"{self.set.source}: no image could be read")

    def as_tf_dataset(self, augment=None, num_parallel: int = 2):
        """Batches of (float32 images in [0, 255], one-hot labels[, sample weights]); ``augment``
        (a Keras layer) runs on each training batch."""
        import tensorflow as tf

        h, w = self.hw
        num_classes = len(self.set.class_names)

        def load(i):
            image, label = tf.numpy_function(self.sample, [i], [tf.uint8, tf.int32], stateful=True,
                                             name="classify_sample")
            image.set_shape((h, w, 3))
            label.set_shape(())
            return image, label

        weights = None if self.class_weights is None else tf.constant(self.class_weights)

        def to_batch(images, labels):
            x = tf.cast(images, tf.float32)
            if augment is not None:
                x = augment(x, training=True)
            y = tf.one_hot(labels, num_classes)
            return (x, y) if weights is None else (x, y, tf.gather(weights, labels))

        ds = tf.data.Dataset.range(self.num_samples)
        ds = ds.map(load, num_parallel_calls=max(int(num_parallel), 1), deterministic=True)
        ds = ds.batch(self.batch_size, drop_remainder=self.drop_remainder)
        return ds.map(to_batch, num_parallel_calls=1).prefetch(2)


def balanced_class_weights(counts) -> list[float]:
    """n / (C * n_c) per class (1.0 for a class without images): each class weighs the same."""
    counts = np.asarray(counts, float)
    total, present = counts.sum(), max(int((counts > 0).sum()), 1)
    return [float(total / (present * c)) if c > 0 else 1.0 for c in counts]


def make_augmentation(flip: str = "horizontal", zoom: float = 0.25, translate: float = 0.1,
                      contrast: float = 0.2, brightness: float = 0.2, seed: int = 0):
    """The training augmentation as one Keras ``Pipeline`` (tf.data-compatible) or None.

    A random-resized crop is RandomZoom in by up to ``zoom`` of the side then
    RandomTranslation by up to ``translate`` (reflected borders); then RandomFlip (``flip``:
    horizontal, vertical, both or none), RandomContrast and RandomBrightness (value range
    0..255, the backbones' input range).
    """
    import keras

    if flip not in FLIPS:
        raise ValueError(f"unknown flip {flip!r}; valid: {', '.join(FLIPS)}")
    layers = []
    if zoom > 0:
        layers.append(keras.layers.RandomZoom((-float(zoom), 0.0), seed=seed, name="aug_zoom"))
    if translate > 0:
        layers.append(keras.layers.RandomTranslation(translate, translate, seed=seed + 1, name="aug_translate"))
    if FLIPS[flip]:
        layers.append(keras.layers.RandomFlip(FLIPS[flip], seed=seed + 2, name="aug_flip"))
    if contrast > 0:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed + 3, name="aug_contrast"))
    if brightness > 0:
        layers.append(keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=seed + 4,
                                                    name="aug_brightness"))
    return keras.layers.Pipeline(layers, name="augment") if layers else None


# ----------------------------------------------------------------------------- model and files

def build_classifier(backbone: str, alpha, input_size, num_classes: int, dropout: float = 0.2, weights=None,
                     **backbone_options):
    """input -> ``build_backbone`` (its stride-32 map) -> global average pooling -> dropout ->
    dense softmax. ``input_size``: a side or (H, W), 32 or more; ``weights``: as
    build_backbone's (None, "imagenet" for keras.applications families, a backbone
    ``.weights.h5``). Returns a functional keras.Model named ``classifier_<backbone>``."""
    import keras

    from nets.backbones import build_backbone, check_alpha

    hw = _hw(input_size)
    if min(hw) < 32:
        raise ValueError(f"input size must be at least 32 pixels a side, got {hw[0]}x{hw[1]}")
    if int(num_classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    alpha = check_alpha(backbone, alpha)
    inputs = keras.Input((*hw, 3), name="image")
    feats = build_backbone(backbone, inputs, alpha=alpha, weights=weights, **backbone_options)
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_LAYERS[0])(feats[2])
    x = keras.layers.Dropout(float(dropout), name=HEAD_LAYERS[1])(x)
    out = keras.layers.Dense(int(num_classes), activation="softmax", dtype="float32", name=HEAD_LAYERS[2])(x)
    return keras.Model(inputs, out, name=f"classifier_{backbone.lower()}")


def _hw(size) -> tuple[int, int]:
    size = [int(v) for v in (size if isinstance(size, (list, tuple)) else [size])]
    if len(size) not in (1, 2):
        raise ValueError(f"input size is one side or H W, got {size}")
    return (size[0], size[-1])


def save_classifier(model, path, meta: dict) -> str:
    """Save ``model`` as a ``.keras`` file with ``meta`` inside the zip as classifier_meta.json (atomic)."""
    from utils.checkpoint import save_with_meta

    meta = {**meta, "class_names": [str(c) for c in meta["class_names"]], "kind": "classifier"}
    return save_with_meta(model, path, meta, CLASSIFIER_META, "a classifier")


def read_classifier_meta(path) -> dict:
    from utils.checkpoint import read_member

    try:
        meta = read_member(path, CLASSIFIER_META)
    except ValueError as exc:
        raise ClassifyError(str(exc)) from None
    if meta is None:
        raise ClassifyError(f"{path} is not a classifier saved by classify.py (no {CLASSIFIER_META} "
                            "in the file; a detector's best.keras is not a classifier)")
    return meta


def load_classifier(path):
    """``(model, meta)`` of a classifier ``.keras`` file, loaded with ``safe_mode=True``."""
    from utils.checkpoint import load_keras

    meta = read_classifier_meta(path)
    try:
        return load_keras(path, what="classifier"), meta
    except ValueError as exc:
        raise ClassifyError(str(exc)) from None


def export_backbone(weights, out, log=print) -> dict:
    """Write the backbone of the classifier ``weights`` alone as the ``.weights.h5`` ``out``.

    A fresh ``keras.Model(inputs, build_backbone(...))`` of the classifier's backbone, alpha
    and options takes every weight of the classifier's layer of the same name; the file
    (utils.checkpoint.save_weights, atomic; backbone, alpha and source stored as an attribute)
    is then loaded back through ``build_backbone(..., weights=out)``, as train.py
    ``--backbone-weights`` loads it, and compared tensor by tensor. Returns a summary dict.
    """
    import keras

    from nets.backbones import build_backbone
    from utils.checkpoint import save_weights

    model, meta = load_classifier(weights)
    name, alpha, options = meta["backbone"], float(meta["alpha"]), dict(meta.get("backbone_options") or {})
    hw = tuple(meta["input_shape"])

    def fresh(w=None):
        inputs = keras.Input((*hw, 3))
        return keras.Model(inputs, build_backbone(name, inputs, alpha, weights=w, **options), name=f"{name}_backbone")

    backbone = fresh()
    layers = [layer for layer in backbone.layers if layer.weights]
    for layer in layers:
        try:
            source = model.get_layer(layer.name)
        except ValueError:
            raise ClassifyError(f"{weights}: layer {layer.name!r} of backbone {name!r} is not in the classifier") from None
        layer.set_weights(source.get_weights())
    save_weights(backbone, out, meta={"kind": "backbone", "backbone": name, "alpha": alpha, **options,
                                      "source": os.path.abspath(os.fspath(weights))})
    check = fresh(os.fspath(out))
    for a, b in zip(backbone.weights, check.weights):
        if a.shape != b.shape or not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)):
            raise ClassifyError(f"{out}: weight {a.path} did not load back unchanged")
    params = int(sum(np.prod(w.shape) for w in backbone.weights))
    if log:
        log(f"wrote {out}: backbone {name} (alpha {alpha:g}), {len(layers)} layers, {params:,} values; "
            f"start a detector from it with: python train.py --backbone {name} --alpha {alpha:g} "
            f"--backbone-weights {out}")
    return {"path": os.fspath(out), "backbone": name, "alpha": alpha, "layers": len(layers), "values": params}


# ----------------------------------------------------------------------------- metrics

def class_confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(C, C) counts: rows = true class, columns = predicted class."""
    m = np.zeros((int(num_classes), int(num_classes)), np.int64)
    np.add.at(m, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return m


def classification_metrics(labels, probs, class_names, top_k: int = 5) -> dict:
    """Top-1 (and top-``top_k`` when there are more than ``top_k`` classes) accuracy, per-class
    accuracy (recall), balanced accuracy (the mean over the classes that have images) and the
    confusion matrix of the arg-max predictions."""
    labels = np.asarray(labels, int).reshape(-1)
    probs = np.asarray(probs, float).reshape(len(labels), -1)
    names = list(class_names)
    n, c = probs.shape
    pred = probs.argmax(axis=1) if n else np.zeros(0, int)
    cm = class_confusion_matrix(labels, pred, c)
    support, correct = cm.sum(axis=1), np.diag(cm)
    per_class = [{"class_id": i, "class_name": names[i], "images": int(support[i]), "correct": int(correct[i]),
                  "accuracy": float(correct[i] / support[i]) if support[i] else float("nan")} for i in range(c)]
    present = [pc["accuracy"] for pc in per_class if pc["images"]]
    top5 = None
    if c > top_k and n:
        ranks = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        top5 = float(np.mean([lab in row for lab, row in zip(labels, ranks)]))
    return {"images": int(n), "top1": float(correct.sum() / n) if n else float("nan"),
            f"top{top_k}": top5, "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
            "per_class": per_class, "confusion_matrix": cm.tolist(), "class_names": names}


def format_metrics(res: dict) -> str:
    width = max([len("class")] + [len(pc["class_name"]) for pc in res["per_class"]])
    lines = [f"{'class':<{width}}  images  correct  accuracy"]
    for pc in res["per_class"]:
        acc = "-" if not pc["images"] else f"{pc['accuracy']:.3f}"
        lines.append(f"{pc['class_name']:<{width}}  {pc['images']:>6}  {pc['correct']:>7}  {acc:>8}")
    line = f"top-1 accuracy {res['top1']:.4f}, balanced accuracy {res['balanced_accuracy']:.4f}"
    if res.get("top5") is not None:
        line += f", top-5 accuracy {res['top5']:.4f}"
    return "\n".join(lines + [line + f" ({res['images']} images)"])


def plot_confusion_matrix(cm, class_names, path, title: str = "Confusion matrix") -> str:
    """The confusion matrix as a PNG (utils.evaluate.plot_confusion_matrix, the detector's too)."""
    from utils.evaluate import plot_confusion_matrix as plot
    return plot(cm, class_names, path, textwrap.fill(title, 60))


CLASSIFIER_PANELS = ((("loss", "val_loss"), "loss", None),
                     (("accuracy", "val_accuracy", "top5", "val_top5"), "accuracy", (0, 1)))


def plot_classifier_curves(csv_path, png_path) -> None:
    """curves.png of a classifier run: training/validation loss and accuracy per epoch."""
    from utils.training.callbacks import plot_curves
    plot_curves(csv_path, png_path, CLASSIFIER_PANELS)


# ----------------------------------------------------------------------------- running a model

def predict_probs(model, image_set: ImageSet, hw, batch_size: int = 32, log=print) -> np.ndarray:
    """(N, C) class probabilities of ``model`` over ``image_set`` (inference mode)."""
    samples = EpochSamples(image_set, hw, batch_size, shuffle=False, log=log)
    ds = samples.as_tf_dataset().map(lambda x, y: x)
    return np.asarray(model.predict(ds, verbose=0)).reshape(len(image_set), -1)


def _save_dir(save_dir, default):
    from utils.inference.sources import increment_dir

    return str(increment_dir(save_dir, exist_ok=True) if save_dir else increment_dir(default))


def evaluate(weights, data, split: str = "val", val_ratio=None, seed=None, batch_size: int = 32,
             save_dir=None, log=print) -> dict:
    """Accuracy of the classifier ``weights`` on ``split`` of ``data``: prints the per-class table
    and writes results.json and confusion_matrix.png to ``save_dir`` (default
    runs/classify/eval, eval2, ...). A flat folder of class folders is split with the run's own
    ``val_ratio`` and ``seed`` (stored in the model) unless given."""
    model, meta = load_classifier(weights)
    run_data = meta.get("data") or {}
    val_ratio = run_data.get("val_ratio", 0.2) if val_ratio is None else val_ratio
    seed = run_data.get("seed", 0) if seed is None else seed
    image_set = load_image_set(data, split, val_ratio, seed, class_names=meta["class_names"], log=log)
    if image_set is None:
        raise DatasetError(f"{data} has no {split!r} split (no {split}/ folder, or a val ratio of 0)")
    probs = predict_probs(model, image_set, meta["input_shape"], batch_size, log)
    res = classification_metrics(image_set.labels, probs, meta["class_names"])
    res.update(weights=os.fspath(weights), data=image_set.source)
    out = _save_dir(save_dir, os.path.join("runs", "classify", "eval"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    plot_confusion_matrix(res["confusion_matrix"], meta["class_names"], os.path.join(out, "confusion_matrix.png"),
                          f"{os.path.basename(os.fspath(weights))} on {image_set.source}")
    if log:
        log(format_metrics(res))
        log(f"results.json and confusion_matrix.png written to {out}")
    res["save_dir"] = out
    return res


def list_sources(source, log=print) -> list[str]:
    """Image files of ``source``: one file, or a folder's images (sub-folders included, sorted)."""
    source = os.fspath(source)
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"source not found: {source}")
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not _is_hidden(f) and f.lower().endswith(READABLE_EXTENSIONS)]
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(READABLE_EXTENSIONS)}) in {source}")
    return found


def predict(weights, source, top_k: int = 3, batch_size: int = 16, save_dir=None, log=print) -> list[dict]:
    """Top-``top_k`` classes of every image of ``source``, printed (one line an image) and written
    to ``<save_dir>/predictions.json`` (default runs/classify/predict, predict2, ...).
    Unreadable files are reported and skipped."""
    model, meta = load_classifier(weights)
    names, hw = meta["class_names"], meta["input_shape"]
    top_k = max(1, min(int(top_k), len(names)))
    paths, results = list_sources(source, log), []
    for start in range(0, len(paths), batch_size):
        batch, kept = [], []
        for path in paths[start:start + batch_size]:
            try:
                batch.append(load_image(path, hw))
                kept.append(path)
            except ImageReadError as exc:
                if log:
                    log(f"warning: {exc}; skipped")
        if not batch:
            continue
        probs = np.asarray(model.predict_on_batch(np.stack(batch).astype(np.float32)))
        for path, p in zip(kept, probs):
            top = np.argsort(-p, kind="stable")[:top_k]
            results.append({"source": path, "top": [{"class_id": int(i), "class_name": names[int(i)],
                                                     "score": float(p[i])} for i in top]})
            if log:
                log(f"{path}: " + ", ".join(f"{t['class_name']} {t['score']:.3f}" for t in results[-1]["top"]))
    out = _save_dir(save_dir, os.path.join("runs", "classify", "predict"))
    with open(os.path.join(out, "predictions.json"), "w") as f:
        json.dump({"weights": os.fspath(weights), "class_names": names, "predictions": results}, f, indent=2)
    if log:
        log(f"{len(results)} images; predictions.json written to {out}")
    return results


# ----------------------------------------------------------------------------- training

def _checkpoint_callback(meta, save_dir, guard, best: float, log):
    """last.keras every epoch, best.keras when val accuracy improves (every epoch without a
    validation split); place it after SwapEMAWeights(swap_on_epoch=True) so it saves the EMA
    weights. ``callback.best()`` is the best val accuracy so far."""
    import keras

    state = {"best": float(best)}

    def on_epoch_end(epoch, logs=None):
        logs = logs if logs is not None else {}
        if guard.tripped:
            return
        save_classifier(callback.model, os.path.join(save_dir, "last.keras"), meta)
        acc = logs.get("val_accuracy")
        if acc is None or (np.isfinite(acc) and acc > state["best"]):
            state["best"] = float(acc) if acc is not None else state["best"]
            save_classifier(callback.model, os.path.join(save_dir, "best.keras"), meta)
            if acc is not None and log:
                log(f"epoch {epoch + 1}: val accuracy {acc:.4f}, best so far: best.keras written")
        logs["best_val_accuracy"] = state["best"]

    callback = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    callback.best = lambda: state["best"]
    return callback


def _defaults(args):
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.weight_decay is None:
        args.weight_decay = DEFAULT_WEIGHT_DECAY[args.optimizer]
    if args.taps and args.backbone.lower() != "mobilenetv2":
        raise ClassifyError(f"--taps is a mobilenetv2 option; backbone {args.backbone!r} has one set of taps")
    return args


def train(args, log=print) -> dict:
    """Train a classifier as ``args`` (classify.py train's options) say; returns a summary dict."""
    import time

    import keras

    from nets.backbones import BackboneWeightsError, check_alpha
    from utils.data.dataset import EpochSetter
    from utils.training import callbacks as cb
    from utils.training.config import save_yaml
    from utils.training.trainer import make_optimizer, scaled_lr

    args = _defaults(args)
    keras.utils.set_random_seed(args.seed)
    save_dir = args.save_dir
    try:
        state = cb.open_run_state(save_dir, args.resume, args.exist_ok)
    except cb.RunFolderError as exc:
        raise ClassifyError(str(exc)) from None
    alpha = check_alpha(args.backbone, args.alpha)
    hw = _hw(args.input_size)

    train_set, val_set = load_train_val(args.data, args.val_ratio, args.seed, log)
    names = train_set.class_names
    save_yaml({k: v for k, v in vars(args).items() if k not in ("config", "tf_logs")},
              os.path.join(save_dir, "config.yaml"))
    options = {"taps": args.taps} if args.taps else {}
    meta = {"backbone": args.backbone.lower(), "alpha": alpha, "backbone_options": options, "class_names": names,
            "input_shape": list(hw), "data": {"path": os.path.abspath(args.data), "layout": dataset_layout(args.data),
                                              "val_ratio": args.val_ratio, "seed": args.seed}}
    log(f"train: {len(train_set)} images ({', '.join(f'{n} {c}' for n, c in zip(names, train_set.counts()))}), "
        f"val: {len(val_set) if val_set else 0} images, {len(names)} classes, input {hw[0]}x{hw[1]}, "
        f"backbone {args.backbone} (alpha {alpha:g})")
    if val_set is None:
        log("no validation split: best.keras is the last epoch's model")
    try:
        model = build_classifier(args.backbone, alpha, hw, len(names), dropout=args.dropout,
                                 weights=None if args.backbone_weights == "none" else args.backbone_weights, **options)
    except BackboneWeightsError as exc:
        raise ClassifyError(str(exc)) from None

    class_weights = balanced_class_weights(train_set.counts()) if args.class_weight == "balanced" else None
    samples = EpochSamples(train_set, hw, args.batch_size, args.seed, class_weights=class_weights, log=log)
    steps = len(samples) if not args.steps_per_epoch else min(len(samples), args.steps_per_epoch)
    lr = scaled_lr(args.lr, args.optimizer, args.batch_size, args.nominal_batch)
    optimizer = make_optimizer(args, lr)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if len(names) > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                  metrics=metrics, jit_compile=False)
    optimizer.build(model.trainable_variables)  # slots made eagerly: one trace of the train step, not two
    start_epoch = int(state["epoch"]) if state else 0
    if state:
        model.load_weights(os.path.join(save_dir, state["weights"]))
        log(f"resumed from {save_dir} at epoch {start_epoch + 1}")
    log(f"epochs {start_epoch + 1}-{args.epochs}, batch {args.batch_size}, lr {lr:.2e} ({args.optimizer}, weight "
        f"decay {args.weight_decay:g}), {steps} steps/epoch" + (", class weights balanced" if class_weights else ""))

    guard = cb.NanGuard(log)
    checkpoint = _checkpoint_callback(meta, save_dir, guard, float(state.get("best_map", -1.0)) if state else -1.0,
                                      log)
    resume = cb.ResumeState(save_dir, guard, {"kind": "classifier"}, checkpoint.best)  # best_map: best val accuracy
    csv_path = os.path.join(save_dir, "log.csv")
    schedule = dict(total_epochs=args.epochs, base_lr=lr, min_lr=lr * args.min_lr_ratio,
                    warmup_epochs=args.warmup_epochs, kind="cos")
    # trainer.py's order: raw weights saved for resuming before the EMA swap; checkpoints see
    # the EMA weights (validation runs on them too); the resume commit comes last.
    callbacks = [EpochSetter(samples, args.epochs), cb.LRSchedule(steps, **schedule), guard, resume]
    if args.ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks += [checkpoint, keras.callbacks.CSVLogger(csv_path, append=os.path.isfile(csv_path)),
                  keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: plot_classifier_curves(
                      csv_path, os.path.join(save_dir, "curves.png")))]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(save_dir, "tensorboard"), update_freq="epoch"))
    callbacks.append(resume.committer)
    augment = None if not args.augment else make_augmentation(args.flip, args.zoom, args.translate, args.contrast,
                                                              args.brightness, args.seed)
    data = samples.as_tf_dataset(augment, args.workers)
    if args.steps_per_epoch:
        data = data.take(steps)
    val_data = None
    if val_set is not None:
        val_data = EpochSamples(val_set, hw, args.batch_size, shuffle=False, log=log).as_tf_dataset(None, args.workers)
    t0 = time.time()
    history = model.fit(data, epochs=args.epochs, initial_epoch=start_epoch, validation_data=val_data,
                        callbacks=callbacks, shuffle=False, verbose=args.verbose)
    wall = time.time() - t0
    if guard.tripped:
        raise ClassifyError(f"training stopped: non-finite loss at epoch {guard.tripped[0]}, step {guard.tripped[1]}; "
                            f"the last good checkpoint is {os.path.join(save_dir, 'last.keras')}")
    summary = {"save_dir": save_dir, "wall_s": wall, "history": {k: [float(v) for v in vs]
                                                                for k, vs in history.history.items()},
               "best_val_accuracy": checkpoint.best(), "class_names": names,
               "images_per_s": len(history.epoch) * steps * args.batch_size / max(wall, 1e-9)}
    best = os.path.join(save_dir, "best.keras")
    if val_set is not None and os.path.isfile(best):
        model.load_weights(best)
        probs = predict_probs(model, val_set, hw, args.batch_size, log)
        res = classification_metrics(val_set.labels, probs, names)
        with open(os.path.join(save_dir, "results.json"), "w") as f:
            json.dump({**res, "weights": best, "data": val_set.source}, f, indent=2)
        plot_confusion_matrix(res["confusion_matrix"], names, os.path.join(save_dir, "confusion_matrix.png"),
                              f"best.keras on {val_set.source}")
        log(f"\nbest checkpoint {best} on the validation split:\n{format_metrics(res)}")
        summary["final"] = res
    log(f"done in {wall / 60:.1f} min; best.keras, last.keras, log.csv, curves.png in {save_dir}")
    return summary


# ----------------------------------------------------------------------------- command line

def build_train_parser(description=None) -> argparse.ArgumentParser:
    """classify.py train's options (YAML with the same names through --config)."""
    from utils.console import add_tf_logs_argument

    p = argparse.ArgumentParser(prog="classify.py train", description=description)
    p.add_argument("--config", help="YAML file with any of these options (the command line overrides it)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="DIR/<class>/* images, or DIR/train/<class>/ and DIR/val/<class>/")
    d.add_argument("--val-ratio", type=float, default=0.2, help="val part of each class of a flat folder (default 0.2)")
    d.add_argument("--input-size", type=int, nargs="+", default=[224], help="input side, or H W (default 224)")
    d.add_argument("--workers", type=int, default=2, help="parallel image reads (default 2)")
    d.add_argument("--seed", type=int, default=0, help="seed for the split, shuffling, augmentation and init")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="mobilenetv2", help="backbone name (python -m nets.summary lists them)")
    m.add_argument("--alpha", type=float, default=None, help="width multiplier (default: the family's)")
    m.add_argument("--backbone-weights", default="none", help="none | imagenet (keras.applications) | PATH .weights.h5")
    m.add_argument("--taps", choices=["expanded", "projected"], default=None, help="mobilenetv2 only (see README)")
    m.add_argument("--dropout", type=float, default=0.2, help="dropout before the dense layer")
    s = p.add_argument_group("schedule")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default="adamw")
    s.add_argument("--lr", type=float, default=None, help="at --nominal-batch, scaled to the batch like train.py's "
                                                          "(default 4e-3 adam/adamw, 0.1 sgd)")
    s.add_argument("--nominal-batch", type=int, default=64)
    s.add_argument("--min-lr-ratio", type=float, default=0.01, help="final lr as a fraction of the start")
    s.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, then cosine decay")
    s.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta_1")
    s.add_argument("--weight-decay", type=float, default=None, help="decoupled, kernels only (default 0.05 adamw, "
                                                                    "5e-4 sgd)")
    s.add_argument("--clipnorm", type=float, default=10.0, help="per-variable gradient clipping (0 = off)")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="EMA of the weights (checkpoints)")
    s.add_argument("--ema-momentum", type=float, default=0.99, help="reached after a warm-up: min(m, (1+t)/(10+t))")
    s.add_argument("--label-smoothing", type=float, default=0.1)
    s.add_argument("--class-weight", choices=["none", "balanced"], default="none",
                   help="balanced: weigh each class's loss by n / (C * n_class)")
    s.add_argument("--steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick tries)")
    a = p.add_argument_group("augmentation (Keras layers in the tf.data pipeline)")
    a.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    a.add_argument("--flip", choices=list(FLIPS), default="horizontal")
    a.add_argument("--zoom", type=float, default=0.25, help="random-resized crop: zoom in by up to this")
    a.add_argument("--translate", type=float, default=0.1, help="random shift, fraction of the side")
    a.add_argument("--contrast", type=float, default=0.2)
    a.add_argument("--brightness", type=float, default=0.2)
    e = p.add_argument_group("checkpoints and logs")
    e.add_argument("--save-dir", default=os.path.join("runs", "classify", "exp"))
    e.add_argument("--exist-ok", action="store_true", help="overwrite a run in --save-dir")
    e.add_argument("--resume", action="store_true", help="continue the run in --save-dir (its config.yaml)")
    e.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    add_tf_logs_argument(e)
    return p


def parse_train_args(argv) -> argparse.Namespace:
    """classify.py train's options: the YAML of --config, the saved configuration of a
    --resume'd run (the command line still wins), then the optimizer's defaults."""
    from utils.training.config import parse_with_config

    argv = list(argv)
    if "--resume" in argv:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--save-dir", default=os.path.join("runs", "classify", "exp"))
        config = os.path.join(pre.parse_known_args(argv)[0].save_dir, "config.yaml")
        if os.path.isfile(config):
            argv = ["--config", config] + argv
    parser = build_train_parser()
    args = parse_with_config(parser, argv)
    if not args.data:  # required, but it may come from --config
        parser.error("the following arguments are required: --data")
    return _defaults(args)
