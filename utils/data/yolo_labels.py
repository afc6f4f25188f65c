"""YOLO txt datasets (the ultralytics layout), read into and written from voc.py's records.

:func:`load_yolo` reads one split into the same :class:`~utils.data.voc.VocRecord` objects
as :func:`~utils.data.voc.load_voc`; :func:`write_yolo` writes records back (images, label
files, data.yaml). utils/data/formats.py picks the loader from the path, and
utils/data/convert.py converts between VOC, COCO and YOLO txt.

Layouts
-------
* A data.yaml as ultralytics writes it: ``path`` (the dataset root; relative to the yaml's
  folder, which is also the root when ``path`` is absent), ``train`` / ``val`` / ``test``
  entries that are image folders or .txt lists of image paths (relative to the root; paths
  in a list are relative to the list's folder), each a string or a list of them, and
  ``names`` as a list or an {index: name} dict. A folder holding a data.yaml (or data.yml)
  is read through it; a data.yaml without split entries describes the folder it is in.
* A folder with images/ and labels/: with split subfolders (images/train, images/val, ...)
  those are the splits; without them the split is made by ratio with
  :func:`~utils.data.voc.split_ids` over every stem in images/ and labels/ (the same split
  as a flat VOC folder pair). Class names come from ``class_names``, else a data.yaml or a
  classes.txt (labelImg) in the folder or in labels/.
* The label file of an image is found as ultralytics does: the last ``images`` component
  of the image's path replaced by ``labels``, the extension by ``.txt``. Image folders are
  read flat (not recursively), with the extensions of utils/data/images.py.

Conventions
-----------
* One line per object, ``class cx cy w h``, normalised to the image (0..1). Pixel boxes are
  ``x1 = (cx - w/2) * W`` etc. with (W, H) read from the image header: the stored pixel
  frame, no half-pixel or 1-based shift, so VOC -> YOLO -> VOC returns the VOC numbers to
  within float rounding. YOLO txt has no difficult flag: every box loads with
  ``difficult=False``.
* An image without a label file (or with an empty one) is a negative (ultralytics
  convention). A label file without its image is reported and skipped.
* Bad input never stops a load (see utils/data/voc.py), each problem is one message naming
  the label file and line: a malformed line (not 5 fields, not numbers, class not an
  integer), a class index out of range, a zero or negative size, a box wholly outside the
  image (dropped) or partly outside (clipped, with a note). Edge values within 1e-6 of the
  image border (the float noise of a 6-decimal label file) are clamped silently.
* When the class list comes from ``class_names`` and the dataset also names its classes
  (data.yaml ``names`` or classes.txt), indices are mapped BY NAME onto ``class_names``;
  boxes of a name not in the list are dropped and reported once per name (with a "did you
  mean" hint when only the case differs).
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
from typing import Sequence

import numpy as np
import yaml

from utils.data.images import IMAGE_EXTENSIONS, ImageReadError, image_size, verify_image
from utils.data.voc import (SPLIT_ORDER, DatasetError, LoadReport, Log, VocRecord, _class_list, _finish,
                            _index_images, _pick_split, did_you_mean, read_class_names, split_ids)

YAML_NAMES = ("data.yaml", "data.yml")
CLASSES_TXT = "classes.txt"
EDGE_TOLERANCE = 1e-6  # normalised units: float noise of a 6-decimal label file, clamped silently


# ----------------------------------------------------------------------------- data.yaml and class names

def _read_yaml(path: pathlib.Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable data.yaml ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a YOLO data.yaml (top level is a {type(data).__name__}, not a mapping)")
    return data


def _yaml_names(data: dict, path) -> list[str] | None:
    """``names`` as a list (a dict must have the keys 0..n-1); None when absent."""
    names = data.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class indices 0..n-1, got {list(names)}") from None
        if sorted(index) != list(range(len(index))):
            raise DatasetError(f"{path}: 'names' keys must be the class indices 0..{len(index) - 1}, "
                               f"got {sorted(index)}")
        names = [index[i] for i in range(len(index))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    else:
        raise DatasetError(f"{path}: 'names' must be a list or an {{index: name}} mapping")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{path}: nc is {nc} but 'names' has {len(names)} entries")
    try:
        return _class_list(names)
    except ValueError as e:
        raise DatasetError(f"{path}: 'names': {e}") from None


def _find_yaml(path: pathlib.Path) -> pathlib.Path | None:
    if path.is_file():
        return path
    for n in YAML_NAMES:
        if (path / n).is_file():
            return path / n
    return None


def _folder_names(root: pathlib.Path) -> list[str] | None:
    for p in (root / CLASSES_TXT, root / "labels" / CLASSES_TXT):
        if p.is_file():
            return read_class_names(p)
    return None


def _source_names(path: pathlib.Path) -> list[str] | None:
    """The class names the dataset itself gives (data.yaml names, else classes.txt), or None."""
    y = _find_yaml(path)
    if y is not None:
        names = _yaml_names(_read_yaml(y), y)
        if names is not None:
            return names
        path = y.parent
    return _folder_names(path)


def yolo_class_names(path) -> list[str]:
    """Class names of a YOLO dataset: data.yaml ``names``, else classes.txt (folder or labels/)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DatasetError(f"YOLO dataset not found: {path}")
    names = _source_names(path)
    if names is None:
        raise DatasetError(f"{path}: no class names (no 'names' in a data.yaml, no {CLASSES_TXT}); "
                           "pass the class list")
    return names


# ----------------------------------------------------------------------------- finding images and labels

def label_path(image_path) -> pathlib.Path:
    """The label file of an image: last ``images`` path component -> ``labels``, extension -> .txt."""
    p = pathlib.Path(image_path)
    parts = list(p.parent.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return pathlib.Path(*parts, p.stem + ".txt") if parts else pathlib.Path(p.stem + ".txt")


@dataclasses.dataclass
class _Item:
    image_id: str
    image_path: pathlib.Path | None
    label_path: pathlib.Path | None  # None: an image without a label file (a negative)
    listed_in: pathlib.Path | None = None  # the .txt list that names the image, if any


def _index_labels(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    if folder.is_dir():
        with os.scandir(folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() == ".txt" and e.name != CLASSES_TXT and e.is_file():
                    out[stem] = pathlib.Path(e.path)
    return out


def _folder_items(images_dir: pathlib.Path, report: LoadReport, ids=None) -> list[_Item]:
    """Images of one folder and their labels; label files without an image are items too.

    ``ids`` limits the items to those stems (a ratio split); None takes all.
    """
    images = {k: pathlib.Path(v) for k, v in _index_images(images_dir).items()}
    labels_dir = label_path(images_dir / "x.jpg").parent
    labels = _index_labels(labels_dir)
    if images and not labels_dir.is_dir():
        report.add("no labels folder", f"{labels_dir}: labels folder not found: all {len(images)} image(s) of "
                                       f"{images_dir} load as negatives")
    stems = sorted(set(images) | set(labels)) if ids is None else sorted(ids)
    return [_Item(s, images.get(s), labels.get(s) if s in labels else None) for s in stems
            if s in images or s in labels]


def _list_items(list_file: pathlib.Path) -> list[_Item]:
    """Images named in a .txt list (one path a line, relative to the list's folder)."""
    items = []
    for line in list_file.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = pathlib.Path(line)
        p = p if p.is_absolute() else list_file.parent / p
        lbl = label_path(p)
        items.append(_Item(p.stem, p, lbl if lbl.is_file() else None, list_file))
    return items


def _split_sources(data: dict, yaml_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, list[pathlib.Path]]]:
    """(root, {split: [folder or list file]}) of a data.yaml."""
    root = yaml_path.parent
    if data.get("path"):
        p = pathlib.Path(str(data["path"]))
        root = p if p.is_absolute() else pathlib.Path(os.path.normpath(yaml_path.parent / p))
    sources = {}
    for s in SPLIT_ORDER:
        entry = data.get(s)
        if entry in (None, "", []):
            continue
        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        paths = []
        for e in entries:
            p = pathlib.Path(str(e))
            paths.append(p if p.is_absolute() else root / p)
        sources[s] = paths
    return root, sources


def _split_dirs(images_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """images/<split>/ subfolders (any name), when images/ holds no images itself."""
    if not images_dir.is_dir() or _index_images(images_dir):
        return {}
    return {d.name: d for d in sorted(images_dir.iterdir(), key=lambda d: d.name) if d.is_dir()}


def _wanted(split: str | None, available, what: str) -> list[str]:
    available = list(available)
    if split is None or split == "all":
        return available
    if split == "trainval" and "trainval" not in available and {"train", "val"} <= set(available):
        return ["train", "val"]
    if split not in available:
        raise DatasetError(f"{what}: no split {split!r} (has {', '.join(available) or 'none'})")
    return [split]


def yolo_splits(path) -> dict[str, list[str]]:
    """The named splits of a YOLO dataset as {split: image ids}, without reading labels.

    From data.yaml entries or images/<split>/ folders; {} for a folder split by ratio.
    """
    path = pathlib.Path(path)
    y = _find_yaml(path)
    report = LoadReport(str(path))
    out = {}
    if y is not None:
        _, sources = _split_sources(_read_yaml(y), y)
        if sources:
            for s, paths in sources.items():
                items = []
                for p in paths:
                    items += _list_items(p) if p.is_file() else _folder_items(p, report)
                out[s] = sorted({i.image_id for i in items if i.image_path is not None})
            return out
        path = y.parent
    for s, d in _split_dirs(path / "images").items():
        out[s] = sorted(i.image_id for i in _folder_items(d, report) if i.image_path is not None)
    return out


def _items(path: pathlib.Path, split, ratios, seed, report: LoadReport) -> list[_Item]:
    y = _find_yaml(path)
    if y is not None:
        root, sources = _split_sources(_read_yaml(y), y)
        if sources:
            items, seen = [], set()
            for s in _wanted(split, sources, str(y)):
                for p in sources[s]:
                    if p.is_file():
                        found = _list_items(p)
                    elif p.is_dir():
                        found = _folder_items(p, report)
                    else:
                        raise DatasetError(f"{y}: {s} entry {p} is neither an image folder nor a list file")
                    for it in found:  # one image listed by several splits loads once
                        key = os.path.abspath(it.image_path or it.label_path)
                        if key not in seen:
                            seen.add(key)
                            items.append(it)
            return items
        path = y.parent
    images_dir = path / "images"
    if not images_dir.is_dir():
        raise DatasetError(f"{path}: no images/ folder (expected a YOLO data.yaml, or images/ and labels/ "
                           "folders, optionally with split subfolders)")
    subdirs = _split_dirs(images_dir)
    if subdirs:
        items = []
        for s in _wanted(split, subdirs, str(images_dir)):
            items += _folder_items(subdirs[s], report)
        return items
    if split is None or split == "all":
        return _folder_items(images_dir, report)
    every = set(_index_images(images_dir)) | set(_index_labels(path / "labels"))
    ids = _pick_split(split_ids(every, ratios, seed), split, str(path))
    return _folder_items(images_dir, report, ids)


# ----------------------------------------------------------------------------- parsing label files

def _parse_label_file(lbl: pathlib.Path, width: int, height: int, class_map: list, report: LoadReport,
                      unknown: dict) -> tuple[list, list]:
    """Boxes (pixel xyxy) and labels of one label file; problems go to ``report``."""
    boxes, labels = [], []
    text = lbl.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{lbl}:{lineno}"

        def drop(kind, why):
            report.boxes_dropped[kind] += 1
            report.add(kind, f"{where}: {why}; line skipped")

        if len(fields) != 5:
            drop("malformed line", f"expected 5 fields 'class cx cy w h', got {len(fields)}"
                                   + (" (segmentation polygons are not read)" if len(fields) > 6 else ""))
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            drop("malformed line", f"{line.strip()!r} is not 5 numbers")
            continue
        if not all(math.isfinite(v) for v in values):
            drop("malformed line", f"{line.strip()!r} has values that are not finite")
            continue
        cls, cx, cy, w, h = values
        if not cls.is_integer():
            drop("malformed line", f"class {fields[0]!r} is not an integer index")
            continue
        cls = int(cls)
        if not 0 <= cls < len(class_map):
            drop("class out of range", f"class index {cls} is out of range (the class list has "
                                       f"{len(class_map)} names, 0..{len(class_map) - 1})")
            continue
        if w <= 0 or h <= 0:
            drop("zero-area", f"box (cx {cx:g}, cy {cy:g}, w {w:g}, h {h:g}) has zero or negative "
                              f"{'width' if w <= 0 else 'height'}")
            continue
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        x1, y1 = (0.0 if -EDGE_TOLERANCE < v < 0 else v for v in (x1, y1))
        x2, y2 = (1.0 if 1 < v < 1 + EDGE_TOLERANCE else v for v in (x2, y2))
        c1, d1, c2, d2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        if c1 >= c2 or d1 >= d2:
            drop("outside image", f"box (cx {cx:g}, cy {cy:g}, w {w:g}, h {h:g}) lies outside the image (0..1)")
            continue
        px = [c1 * width, d1 * height, c2 * width, d2 * height]
        if (c1, d1, c2, d2) != (x1, y1, x2, y2):
            report.boxes_clipped += 1
            report.add("clipped", f"{where}: box (cx {cx:g}, cy {cy:g}, w {w:g}, h {h:g}) extends outside the "
                                  f"image (0..1); clipped to pixels [{', '.join(f'{v:.4g}' for v in px)}] of the "
                                  f"{width}x{height} image")
        target = class_map[cls]
        if not isinstance(target, int):  # a name that is not in the class list
            entry = unknown.setdefault(target, [0, set(), str(lbl)])
            entry[0] += 1
            entry[1].add(str(lbl))
            report.boxes_dropped["unknown class"] += 1
            continue
        boxes.append(px)
        labels.append(target)
    return boxes, labels


def _class_map(source: list[str] | None, target: list[str]) -> list:
    """Source index -> target index (int), or the source name (str) when it is not in the list."""
    if source is None:
        return list(range(len(target)))
    index = {n: i for i, n in enumerate(target)}
    return [index.get(n, n) for n in source]


# ----------------------------------------------------------------------------- loading

def load_yolo(root_or_yaml, split: str | None, class_names=None, *, ratios=(0.8, 0.1, 0.1), seed: int = 0,
              check_images: bool = True, log: Log = print) -> list[VocRecord]:
    """Load one split of a YOLO txt dataset (a data.yaml, or a folder) as records.

    ``split`` is None / "all" (every split), a split of the data.yaml or of images/<split>/
    ("trainval" = train + val), or, for a folder without split subfolders, "train", "val",
    "test" or "trainval" made by :func:`~utils.data.voc.split_ids` with ``ratios`` and
    ``seed``. ``class_names`` (a list or a class-list file) defaults to the dataset's own
    names (:func:`yolo_class_names`). Problems are logged (module docstring); raises
    DatasetError when the dataset is unusable or no image is.
    """
    path = pathlib.Path(root_or_yaml)
    if not path.exists():
        raise DatasetError(f"YOLO dataset not found: {path}")
    source = _source_names(path)
    if class_names is None:
        if source is None:
            raise DatasetError(f"{path}: no class names (no 'names' in a data.yaml, no {CLASSES_TXT}); "
                               "pass class_names")
        names = source
    else:
        names = _class_list(class_names)
    class_map = _class_map(source, names)
    report = LoadReport(f"{path} [{split or 'all'}]")
    unknown: dict[str, list] = {}
    records = []
    for it in _items(path, split, ratios, seed, report):
        if it.image_path is None:
            report.images_skipped["missing image"] += 1
            report.add("missing image", f"{it.label_path}: no image {it.image_id}{{{','.join(IMAGE_EXTENSIONS)}}} "
                                        f"for this label file; skipped")
            continue
        if it.listed_in is not None and not it.image_path.is_file():
            report.images_skipped["missing image"] += 1
            report.add("missing image", f"{it.listed_in}: listed image {it.image_path} not found; skipped")
            continue
        try:
            width, height = image_size(it.image_path)
            if check_images:
                verify_image(it.image_path)
        except ImageReadError as err:
            report.images_skipped["corrupt image"] += 1
            report.add("corrupt image", f"{err}; image skipped")
            continue
        boxes, labels = [], []
        dropped_before = sum(report.boxes_dropped.values())
        if it.label_path is not None:
            try:
                boxes, labels = _parse_label_file(it.label_path, width, height, class_map, report, unknown)
            except (OSError, UnicodeDecodeError) as err:
                report.images_skipped["unreadable label file"] += 1
                report.add("unreadable label file", f"{it.label_path}: unreadable label file ({err}); image skipped")
                continue
        records.append(VocRecord(str(it.image_path), np.asarray(boxes, np.float32).reshape(-1, 4),
                                 np.asarray(labels, np.int32), np.zeros(len(labels), bool), width, height,
                                 str(it.label_path) if it.label_path is not None else ""))
        if sum(report.boxes_dropped.values()) > dropped_before:
            report.dropped_in[str(it.image_path)] += sum(report.boxes_dropped.values()) - dropped_before
        report.images_loaded += 1
        report.boxes_kept += len(boxes)
    for name, (n, files, first) in unknown.items():
        report.unknown_boxes[name] += n
        report.add("unknown category", f"class {name!r} of the dataset is not in the class list: {n} box(es) in "
                                       f"{len(files)} file(s) dropped (first: {first})"
                                       + did_you_mean(name, names))
    return _finish(records, report, log)


# ----------------------------------------------------------------------------- writing

def place_image(src, dst, link: bool = False) -> str:
    """Copy (shutil.copy2) or hard-link ``src`` to ``dst``; the image is never modified.

    A hard link falls back to a copy across file systems. ``dst`` already being ``src``
    is a no-op; any other existing ``dst`` raises FileExistsError (nothing is overwritten).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            return dst
        raise FileExistsError(f"{dst} exists; not overwriting it with {src}")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    shutil.copy2(src, dst)
    return dst


def yolo_lines(record: VocRecord) -> list[str]:
    """The label lines of one record: ``class cx cy w h`` with 6 decimals, boxes clipped to the image."""
    w, h = float(record.width), float(record.height)
    lines = []
    for (x1, y1, x2, y2), label in zip(np.asarray(record.boxes, np.float64).reshape(-1, 4),
                                       np.asarray(record.labels).reshape(-1)):
        x1, x2 = min(max(x1 / w, 0.0), 1.0), min(max(x2 / w, 0.0), 1.0)
        y1, y2 = min(max(y1 / h, 0.0), 1.0), min(max(y2 / h, 0.0), 1.0)
        if x2 <= x1 or y2 <= y1:
            continue
        lines.append(f"{int(label)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {max(x2 - x1, 1e-6):.6f} "
                     f"{max(y2 - y1, 1e-6):.6f}")
    return lines


def write_yolo(records: Sequence[VocRecord], class_names, out_dir, split_name: str | None = None, *,
               link: bool = False) -> pathlib.Path:
    """Write records as a YOLO dataset: images, label files and data.yaml; returns data.yaml's path.

    ``split_name`` ("train", "val", ...) writes to images/<split>/ and labels/<split>/ and
    adds ``<split>: images/<split>`` to out_dir/data.yaml (kept across calls, one per
    split); None writes images/ and labels/ flat and a data.yaml with ``names`` only (the
    folder layout, split by ratio when loaded). ``names`` is written as {index: name}; no
    ``path`` key, so ultralytics and :func:`load_yolo` take the yaml's folder as the root.
    Images are copied or hard-linked (:func:`place_image`), each negative gets an empty
    label file, and difficult flags are lost (YOLO txt has none). Raises ValueError for
    two images with one file stem in a split or a data.yaml with other class names.
    """
    names = _class_list(class_names)
    out = pathlib.Path(out_dir)
    sub = pathlib.PurePosixPath("images") / split_name if split_name else pathlib.PurePosixPath("images")
    images_dir, labels_dir = out / sub, label_path(out / sub / "x.jpg").parent
    stems = {}
    for r in records:
        s = r.image_id
        if s in stems:
            raise ValueError(f"two images with the stem {s!r} in one YOLO folder: {stems[s]} and {r.image_path}")
        stems[s] = r.image_path
        labels = np.asarray(r.labels).reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"{r.image_path}: label {int(labels.max())} is not an index into the "
                             f"{len(names)} class names")
    yaml_path = out / YAML_NAMES[0]
    data = _read_yaml(yaml_path) if yaml_path.is_file() else {}
    if data.get("names") is not None and _yaml_names(data, yaml_path) != names:
        raise ValueError(f"{yaml_path} lists other class names ({_yaml_names(data, yaml_path)}) than {names}")
    splits_there = [s for s in SPLIT_ORDER if data.get(s)]
    if (split_name is None and splits_there) or (split_name is not None and data and not splits_there):
        raise ValueError(f"{yaml_path}: cannot mix a flat images/ folder with split subfolders")
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for r in records:
        place_image(r.image_path, images_dir / os.path.basename(r.image_path), link)
        lines = yolo_lines(r)
        (labels_dir / f"{r.image_id}.txt").write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    if split_name:
        data[split_name] = str(sub)
    data["names"] = dict(enumerate(names))
    data["nc"] = len(names)
    order = [k for k in SPLIT_ORDER if k in data] + [k for k in data if k not in SPLIT_ORDER]
    text = "# YOLO dataset written by utils.data.yolo_labels.write_yolo\n"
    text += yaml.safe_dump({k: data[k] for k in order}, sort_keys=False, allow_unicode=True)
    yaml_path.write_text(text, encoding="utf-8")
    return yaml_path
