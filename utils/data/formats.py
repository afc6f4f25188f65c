"""Dataset formats: VOC XML, COCO JSON and YOLO txt behind one loader.

:func:`detect_format` tells the format from a path, :func:`load_records` loads a split of
any of them into the same :class:`~utils.data.voc.VocRecord` objects (utils/data/voc.py,
coco.py, yolo_labels.py do the work and follow voc.py's conventions: bad input is reported
file by file, never fatal, one summary line, DatasetError when nothing is usable), and
:func:`class_names_from` reads the class list a dataset carries. utils/data/convert.py
converts between the formats.

What each format looks like on disk
-----------------------------------
* ``voc``: a root with Annotations/*.xml, JPEGImages/ and ImageSets/Main/<split>.txt; or a
  folder of XML files with ``images=`` the image folder (a flat pair, split by ratio).
* ``coco``: an instances .json file (``images=`` the folder its ``file_name`` entries are
  relative to, else found beside it), or a folder with annotations/*.json and images/.
  In a folder, ``annotations/instances_<split>.json`` (or ``<split>.json``) is a named
  split; the whole set is ``instances.json`` or the only other JSON file there.
* ``yolo``: a data.yaml, or a folder with labels/ (and images/) or a data.yaml.
"""
from __future__ import annotations

import os
import pathlib

from utils.data import coco, voc, yolo_labels
from utils.data.voc import SPLIT_FILES, DatasetError, Log, VocRecord

FORMATS = ("voc", "coco", "yolo")


def _has(folder: pathlib.Path, pattern: str) -> bool:
    return folder.is_dir() and next(folder.glob(pattern), None) is not None


def detect_format(path) -> str:
    """'voc', 'coco' or 'yolo' from the path; DatasetError (a ValueError) naming what was looked for."""
    p = pathlib.Path(path)
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
    else:
        if (p / "Annotations").is_dir() and ((p / "JPEGImages").is_dir() or _has(p / "Annotations", "*.xml")):
            return "voc"
        if _has(p / "annotations", "*.json"):
            return "coco"
        if (p / "labels").is_dir() or any((p / n).is_file() for n in yolo_labels.YAML_NAMES):
            return "yolo"
        if _has(p, "*.xml"):
            return "voc"
    raise DatasetError(
        f"{p}: cannot tell the dataset format; looked for a .json file (COCO), a .yaml/.yml file (YOLO), "
        "or a folder with Annotations/ and JPEGImages/ (VOC), annotations/*.json and images/ (COCO), "
        "labels/ or data.yaml (YOLO), or *.xml files (a flat VOC annotations folder); pass the format")


def _check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
    return fmt


# ----------------------------------------------------------------------------- COCO folders

def _coco_split_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    ann = folder / "annotations"
    out = {}
    for s in SPLIT_FILES:
        for f in (ann / f"instances_{s}.json", ann / f"{s}.json"):
            if f.is_file():
                out[s] = f
                break
    return out


def coco_json(path, split: str | None = None) -> tuple[pathlib.Path, str | None]:
    """The instances file to read for ``split`` and the split left for :func:`coco.load_coco`.

    A .json path is itself (split unchanged). In a folder, a named split file is read whole
    (split None); otherwise the whole-set file (instances.json, or the only JSON that is
    not a split file) is split by ratio. Raises DatasetError when the choice is unclear.
    """
    p = pathlib.Path(path)
    if p.is_file():
        return p, split
    ann = p / "annotations"
    jsons = sorted(ann.glob("*.json")) if ann.is_dir() else []
    if not jsons:
        raise DatasetError(f"{p}: no annotations/*.json (COCO folder layout: annotations/*.json + images/)")
    per_split = _coco_split_files(p)
    if split not in (None, "all"):
        if split in per_split:
            return per_split[split], None
        if per_split:
            raise DatasetError(f"{ann}: split files for {', '.join(per_split)} but none for {split!r} "
                               f"(instances_{split}.json)")
    whole = [f for f in jsons if f not in per_split.values()]
    if (ann / "instances.json").is_file():
        return ann / "instances.json", split
    if len(whole) == 1:
        return whole[0], split
    raise DatasetError(f"{ann}: cannot tell which of {', '.join(f.name for f in jsons)} holds the whole set; "
                       "pass the JSON file itself")


def _coco_images(path: pathlib.Path, images):
    if images is not None:
        return images
    if path.is_dir() and (path / "images").is_dir():
        return path / "images"
    return None  # coco.load_coco looks beside the JSON


# ----------------------------------------------------------------------------- public

def class_names_from(path, fmt: str | None = None) -> list[str]:
    """The class list a dataset carries: COCO categories (by id), YOLO data.yaml names / classes.txt.

    VOC files name their classes per object but not the list (nor its order): DatasetError.
    """
    fmt = _check_format(fmt or detect_format(path))
    if fmt == "coco":
        return coco.coco_class_names(coco_json(path)[0])
    if fmt == "yolo":
        return yolo_labels.yolo_class_names(path)
    raise DatasetError(f"{path}: a VOC dataset does not list its classes (nor their order); "
                       "pass the class list file (--classes FILE)")


def named_splits(path, fmt: str | None = None) -> dict[str, list[str]]:
    """The splits a dataset names itself, as {split: image ids}; {} when it names none.

    VOC: ImageSets/Main/<split>.txt; YOLO: data.yaml entries or images/<split>/; COCO: a
    folder's annotations/instances_<split>.json. Splits made by ratio are not named splits.
    """
    p = pathlib.Path(path)
    fmt = _check_format(fmt or detect_format(p))
    out = {}
    if fmt == "voc":
        for s in SPLIT_FILES:
            f = p / "ImageSets" / "Main" / f"{s}.txt"
            if f.is_file():
                out[s] = list(dict.fromkeys(voc.read_split_file(f)))
    elif fmt == "yolo":
        out = yolo_labels.yolo_splits(p)
    elif p.is_dir():
        for s, f in _coco_split_files(p).items():
            images = coco._read_json(f)["images"]
            out[s] = [os.path.splitext(os.path.basename(im["file_name"]))[0] for im in images
                      if isinstance(im, dict) and isinstance(im.get("file_name"), str)]
    return out


def load_records(path, split: str | None, class_names, *, fmt: str | None = None, images=None,
                 ratios=(0.8, 0.1, 0.1), seed: int = 0, check_images: bool = True,
                 log: Log = print) -> list[VocRecord]:
    """Load one split of a VOC, COCO or YOLO dataset as records (format detected unless ``fmt``).

    ``class_names`` is a list or a class-list file; None takes :func:`class_names_from`
    (COCO, YOLO). ``images``: the image folder of a COCO JSON or of a flat VOC annotations
    folder. ``split`` None / "all" loads everything; splits the dataset does not name are
    made by ratio (``ratios``, ``seed``; see voc.split_ids). See voc.load_voc,
    voc.load_flat, coco.load_coco and yolo_labels.load_yolo.
    """
    p = pathlib.Path(path)
    fmt = _check_format(fmt or detect_format(p))
    names = class_names_from(p, fmt) if class_names is None else class_names
    common = dict(ratios=ratios, seed=seed, check_images=check_images, log=log)
    if fmt == "voc":
        if images is not None or not (p / "Annotations").is_dir():
            if images is None:
                raise DatasetError(f"{p}: not a VOC root (no Annotations/); for a folder of XML files "
                                   "pass the image folder (images=)")
            return voc.load_flat(images, p, split, names, **common)
        return voc.load_voc(p, split, names, **common)
    if fmt == "coco":
        json_path, rest = coco_json(p, split)
        return coco.load_coco(json_path, _coco_images(p, images), rest, names, **common)
    if images is not None:
        raise ValueError("images= is for COCO files and flat VOC folders; a YOLO dataset finds its images itself")
    return yolo_labels.load_yolo(p, split, names, **common)


__all__ = ["FORMATS", "detect_format", "load_records", "class_names_from", "named_splits", "coco_json"]
