"""Saving and loading detectors: ``.keras`` files that carry their own metadata, and
``.weights.h5`` files checked against the model they are loaded into.

A detector's metadata (backbone, alpha, class names, anchors, input size) travels inside the
``.keras`` zip as ``yolo_meta.json``, so predict.py and eval_map.py need no other flag.
Keras ignores members of the archive it does not know, and the model itself still loads with
``keras.saving.load_model(path, safe_mode=True)``.

Every write is atomic: the file is written beside its destination and renamed over it, so a
kill never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile

import h5py
import keras
import numpy as np

META_NAME = "yolo_meta.json"
REQUIRED_META = ("backbone", "alpha", "class_names", "anchors", "input_shape")


class WeightsMismatchError(ValueError):
    """A weights file that belongs to another model."""


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix or _suffix(base), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _suffix(name):
    # Keras picks the format from the ending, so the temporary file keeps the real one.
    for end in (".weights.h5", ".keras", ".h5", ".json"):
        if name.endswith(end):
            return end
    return ".tmp"


def _normalise_meta(meta: dict, model: keras.Model) -> dict:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"detector metadata lacks {', '.join(missing)}")
    meta = dict(meta)
    meta["anchors"] = np.asarray(meta["anchors"], dtype=float).reshape(-1, 2).tolist()
    meta["input_shape"] = [int(v) for v in meta["input_shape"][:2]]
    meta["class_names"] = [str(c) for c in meta["class_names"]]
    meta["num_classes"] = len(meta["class_names"])
    out_ch = int(model.outputs[0].shape[-1])
    aps = int(meta.get("anchors_per_scale", 3))
    if out_ch != aps * (5 + meta["num_classes"]):
        raise ValueError(f"model heads have {out_ch} channels but the metadata names "
                         f"{meta['num_classes']} classes with {aps} anchors per scale")
    meta["anchors_per_scale"] = aps
    return meta


def save_with_meta(model: keras.Model, path, meta: dict, member: str = META_NAME, what: str = "a detector") -> str:
    """Save ``model`` as a ``.keras`` file with ``meta`` as the JSON zip member ``member`` (atomic):
    the one writer of detector (:func:`save_detector`) and classifier (utils.classify) files."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"{what} is saved as a .keras file, got {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(member, json.dumps(meta, indent=2))
    return path


def read_member(path, member: str = META_NAME):
    """The JSON zip member ``member`` of a ``.keras`` file; None when the file has none.
    A missing or corrupt file is an error naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(member)) if member in zf.namelist() else None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a valid .keras file (corrupt or truncated zip: {exc})") from None


def save_detector(model: keras.Model, path, meta: dict) -> str:
    """Save ``model`` as a ``.keras`` file with ``meta`` inside it (atomic)."""
    return save_with_meta(model, path, _normalise_meta(meta, model))


def read_meta(path) -> dict:
    """The metadata stored in a ``.keras`` file by :func:`save_detector`."""
    meta = read_member(path)
    if meta is None:
        raise ValueError(f"{path} is a Keras model without detector metadata "
                         f"({META_NAME}); save it with utils.checkpoint.save_detector")
    return meta


def update_meta(path, **entries) -> dict:
    """Set ``entries`` in the metadata of the ``.keras`` file ``path`` without touching the
    model (e.g. ``conf_threshold`` after training); an entry given as None is removed.

    The archive is copied member by member, with the new ``yolo_meta.json``, beside ``path``
    and renamed over it (atomic). Returns the new metadata.
    """
    path = os.fspath(path)
    meta = read_meta(path)
    for key, value in entries.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    text = json.dumps(meta, indent=2)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                if info.filename != META_NAME:
                    dst.writestr(info, src.read(info))
            dst.writestr(META_NAME, text)
    return meta


def load_detector(path, compile: bool = False):
    """Load a ``.keras`` detector saved by :func:`save_detector`; returns ``(model, meta)``.

    Loads with ``safe_mode=True``: no Lambda layers or pickled code are accepted.
    """
    meta = read_meta(path)
    return load_keras(path, compile), meta


def load_keras(path, compile: bool = False, what: str = "model"):
    """``keras.saving.load_model`` with ``safe_mode=True`` and the project's layers registered;
    any failure is a ValueError naming the file and the cause (detectors and classifiers)."""
    import nets.layers  # noqa: F401  registers the custom layers
    import nets.postprocess  # noqa: F401  registers YoloPostprocess (end-to-end models)
    try:
        return keras.saving.load_model(os.fspath(path), compile=compile, safe_mode=True)
    except Exception as exc:  # keras raises many types; name the file and the cause
        raise ValueError(f"could not load {what} {path}: {exc}") from exc


# ---------------------------------------------------------------- .weights.h5

def _h5_keys(model: keras.Model):
    """(layer, key) pairs as Keras names layers inside a ``.weights.h5`` file.

    Keras addresses layers in weight files by class name plus a counter in model.layers
    order, not by layer.name; we mirror that rule to compare shapes before loading, which
    Keras' own loader cannot report per layer.
    """
    from keras.src.utils.naming import to_snake_case

    used: dict[str, int] = {}
    for layer in model.layers:
        base = to_snake_case(layer.__class__.__name__)
        n = used.get(base, 0)
        used[base] = n + 1
        yield layer, base if n == 0 else f"{base}_{n}"


def save_weights(model: keras.Model, path, meta: dict | None = None) -> str:
    """Atomic ``model.save_weights``; ``meta`` (e.g. num_classes) is stored as an attribute."""
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"weights are saved as a .weights.h5 file, got {path}")
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
        if meta is not None:
            with h5py.File(tmp, "a") as f:
                f.attrs[META_NAME] = json.dumps(meta)
    return path


def _num_classes_from_heads(out_channels: int, anchors_per_scale: int = 3):
    n = out_channels / anchors_per_scale - 5
    return int(n) if n == int(n) and n >= 1 else None


def load_weights(model: keras.Model, path, skip_mismatch: bool = False, anchors_per_scale: int = 3):
    """Load a ``.weights.h5`` file into ``model``, checking every layer's shapes first.

    A file built for another class count raises :class:`WeightsMismatchError` naming both
    counts. With ``skip_mismatch=True`` the layers whose shapes differ are left as they are
    and their names are returned (the usual fine-tuning case: new heads, same body).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsMismatchError(f"{path} is not a readable .weights.h5 file ({exc})") from None
    with f:
        if "layers" not in f:
            raise WeightsMismatchError(f"{path} is not a Keras 3 weights file (no 'layers' group)")
        matched, mismatched, missing = [], [], []
        for layer, key in _h5_keys(model):
            if not layer.weights:
                continue
            grp = f.get(f"layers/{key}/vars")
            if grp is None:
                missing.append(layer.name)
                continue
            arrays = [grp[str(i)][()] for i in range(len(grp))]
            want = [tuple(v.shape) for v in layer.weights]
            got = [a.shape for a in arrays]
            if want == got:
                matched.append((layer, arrays))
            else:
                mismatched.append((layer, want, got))

        head_names = {o._keras_history[0].name for o in model.outputs}
        bad = [m[0].name for m in mismatched] + missing
        if bad and not skip_mismatch:
            heads = [m for m in mismatched if m[0].name in head_names]
            if heads and len(heads) == len(bad):
                mine = _num_classes_from_heads(heads[0][1][0][-1], anchors_per_scale)
                theirs = _num_classes_from_heads(heads[0][2][0][-1], anchors_per_scale)
                raise WeightsMismatchError(
                    f"{path} was trained for {theirs} classes but this model has {mine} classes; "
                    "pass skip_mismatch=True (train.py --weights does) to load everything but the heads")
            first = mismatched[0] if mismatched else None
            detail = (f"layer {first[0].name}: file has {first[2]}, model has {first[1]}"
                      if first else f"layer {missing[0]} is not in the file")
            raise WeightsMismatchError(
                f"{path} holds weights for another model ({len(bad)} of "
                f"{len(matched) + len(bad)} layers differ; first: {detail})")
        for layer, arrays in matched:
            layer.set_weights(arrays)
        return bad
