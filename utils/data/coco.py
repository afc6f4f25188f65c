"""COCO instances JSON datasets, read into and written from the records of utils/data/voc.py.

:func:`load_coco` reads one instances file (``images``, ``annotations``, ``categories``)
into the same :class:`~utils.data.voc.VocRecord` objects as :func:`~utils.data.voc.load_voc`;
:func:`write_coco` writes records back as an instances file. utils/data/formats.py picks the
loader from the path, utils/data/convert.py converts between VOC, COCO and YOLO txt.

Conventions
-----------
* Categories are mapped onto the class list BY NAME, not by id, so a file whose ids are
  1-based, sparse (COCO's 1..90) or in another order reads into the project's class order.
  Boxes of a category whose name is not in the class list are dropped and reported once per
  name, with a count and a "did you mean" hint when only the case differs.
* ``bbox`` ``[x, y, w, h]`` becomes xyxy ``(x, y, x + w, y + h)`` in the stored pixel frame
  of the image file, with the numbers as written: no half-pixel or 1-based shift is applied
  in either direction, so VOC -> COCO -> VOC gives the VOC values back (the 1-based VOC
  origin and the 0-based COCO origin differ by at most one pixel, which is ignored as in
  most converters). Boxes partly outside the image are clipped with a note; boxes with zero
  or negative width or height, or wholly outside, are dropped.
* The image size is read from the image file header (as for VOC); a ``width``/``height``
  in the JSON that disagrees is reported and the image is trusted.
* ``iscrowd=1`` objects are kept with ``difficult=True`` (training drops them from targets,
  evaluation ignores them, as COCO does); segmentation is ignored. Images without
  annotations are kept as negatives (empty boxes).
* Bad input never stops a load (see utils/data/voc.py): each problem is one message naming
  the JSON file (and the annotation id / image file), the bad box or image is dropped, one
  summary line ends the load, and :class:`~utils.data.voc.DatasetError` is raised when no
  image is usable. Problems that repeat per box (an unknown ``category_id``, an annotation
  of an image id not in ``images``) are folded into one line with a count. A file that is
  not readable JSON, or lacks ``images`` / ``annotations`` / ``categories``, raises
  :class:`~utils.data.voc.DatasetError` naming the file.
* Splits: ``split=None`` (or "all") loads every image; "train" / "val" / "test" /
  "trainval" split the images by file stem with :func:`~utils.data.voc.split_ids`
  (``ratios``, ``seed``), the same deterministic split as a flat VOC folder pair.
"""
from __future__ import annotations

import collections
import json
import math
import os
import pathlib
from typing import Sequence

import numpy as np

from utils.data.images import ImageReadError, image_size, verify_image
from utils.data.voc import (DatasetError, LoadReport, Log, VocRecord, _class_list, _finish, _pick_split, did_you_mean,
                            split_ids)

REQUIRED_KEYS = ("images", "annotations", "categories")


# ----------------------------------------------------------------------------- reading the file

def _read_json(json_path) -> dict:
    """The parsed instances file; DatasetError naming the file when it cannot be used at all."""
    path = pathlib.Path(json_path)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: malformed JSON ({e}); is the file truncated?") from None
    except OSError as e:
        raise DatasetError(f"{path}: unreadable COCO annotation file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO instances file (top level is a {type(data).__name__}, "
                           "not an object with 'images', 'annotations', 'categories')")
    missing = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: not a COCO instances file: no {' / '.join(repr(k) for k in missing)} "
                           f"list (keys found: {sorted(data)})")
    return data


def _categories(data: dict, path, report: LoadReport | None) -> dict[int, str]:
    """category id -> name, in file order; bad or duplicate entries reported and skipped."""
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        name = c.get("name") if isinstance(c, dict) else None
        if not _is_int(cid) or not isinstance(name, str) or not name.strip():
            if report is not None:
                report.add("malformed category", f"{path}: categories[{i}] {c!r} has no integer 'id' and "
                                                 "non-empty 'name'; skipped")
            continue
        if cid in cats:
            if report is not None:
                report.add("duplicate category", f"{path}: category id {cid} is listed twice ({cats[cid]!r} and "
                                                 f"{name!r}); the first is used")
            continue
        cats[int(cid)] = name.strip()
    return cats


def coco_class_names(json_path) -> list[str]:
    """Category names of an instances file, sorted by category id (duplicate names once)."""
    path = pathlib.Path(json_path)
    return _sorted_names(_categories(_read_json(path), path, None), path)


def _sorted_names(cats: dict[int, str], path) -> list[str]:
    if not cats:
        raise DatasetError(f"{path}: no usable categories")
    return list(dict.fromkeys(cats[k] for k in sorted(cats)))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v) -> bool:
    """An image id: an int as COCO writes it, or a string as some exporters do."""
    return _is_int(v) or (isinstance(v, str) and bool(v))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- images folder

def _resolve_images_dir(json_path: pathlib.Path, images, report: LoadReport) -> pathlib.Path:
    """Where ``file_name`` is relative to when no images folder is given.

    Candidates, in order: <json folder>/images, <json folder>/../images (the
    ``annotations/`` + ``images/`` layout written by :func:`write_coco` through
    utils/data/convert.py), the JSON's own folder (Roboflow exports). The first in which
    most of the first 20 listed images exist wins; a note names the choice.
    """
    candidates = [json_path.parent / "images", json_path.parent.parent / "images", json_path.parent]
    candidates = [c for c in dict.fromkeys(candidates) if c.is_dir()]
    names = [im["file_name"] for im in images[:20] if isinstance(im, dict) and isinstance(im.get("file_name"), str)]
    scored = [(sum((c / n).is_file() for n in names), -i, c) for i, c in enumerate(candidates)]
    best = max(scored)[2] if scored else json_path.parent
    report.notes.append(f"{json_path}: image file names resolved relative to {best} (pass images_dir to choose)")
    return best


# ----------------------------------------------------------------------------- loading

def load_coco(json_path, images_dir, split: str | None, class_names, *, ratios=(0.8, 0.1, 0.1), seed: int = 0,
              check_images: bool = True, log: Log = print) -> list[VocRecord]:
    """Load the images of one split of a COCO instances file as records.

    ``images_dir`` is the folder ``file_name`` is relative to (None: found next to the
    JSON, see :func:`_resolve_images_dir`). ``class_names`` is a list or a class-list file;
    None takes the file's categories (:func:`coco_class_names`). ``split`` is None / "all",
    or "train", "val", "test", "trainval" made by :func:`~utils.data.voc.split_ids` over
    the image file stems. ``check_images`` also decodes each image to catch truncated
    files. Problems are logged (module docstring); raises DatasetError when the file is
    unusable or no image is.
    """
    json_path = pathlib.Path(json_path)
    data = _read_json(json_path)
    report = LoadReport(f"{json_path} [{split or 'all'}]")
    cats = _categories(data, json_path, report)
    names = _sorted_names(cats, json_path) if class_names is None else _class_list(class_names)
    class_index = {n: i for i, n in enumerate(names)}
    if images_dir is None:
        base = _resolve_images_dir(json_path, data["images"], report)
    else:
        base = pathlib.Path(images_dir)
        if not base.is_dir():
            raise DatasetError(f"images folder not found: {base} (for {json_path})")

    # images: id -> entry, in file order; bad and duplicate entries reported once
    images: dict = {}
    seen_files: dict[str, int] = {}
    skipped_ids = set()
    for i, im in enumerate(data["images"]):
        iid = im.get("id") if isinstance(im, dict) else None
        fname = im.get("file_name") if isinstance(im, dict) else None
        if not _is_id(iid) or not isinstance(fname, str) or not fname:
            report.images_skipped["malformed entry"] += 1
            report.add("malformed entry", f"{json_path}: images[{i}] has no 'id' and 'file_name'; skipped")
        elif iid in images:
            report.images_skipped["duplicate entry"] += 1
            report.add("duplicate entry", f"{json_path}: image id {iid} is listed twice ({images[iid]['file_name']} "
                                          f"and {fname}); the second entry is skipped")
        elif fname in seen_files:
            report.images_skipped["duplicate entry"] += 1
            report.add("duplicate entry", f"{json_path}: file_name {fname} is listed twice (image ids "
                                          f"{seen_files[fname]} and {iid}); the second entry and its "
                                          "annotations are skipped")
            skipped_ids.add(iid)
        else:
            images[iid] = im
            seen_files[fname] = iid

    # annotations grouped by image id; orphans and malformed entries folded / reported
    by_image: dict = collections.defaultdict(list)
    orphans = []
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not _is_id(a.get("image_id")):
            report.boxes_dropped["malformed annotation"] += 1
            report.add("malformed annotation", f"{json_path}: annotations[{i}] has no 'image_id'; dropped")
        elif a["image_id"] in images:
            by_image[a["image_id"]].append(a)
        elif a["image_id"] not in skipped_ids:  # an image id that is not in 'images'
            orphans.append(a)
    if orphans:
        report.boxes_dropped["unknown image id"] += len(orphans)
        first = orphans[0]
        report.add("unknown image id", f"{json_path}: {len(orphans)} annotation(s) refer to image ids that are not in "
                                       f"'images' (first: annotation id {first.get('id')}, image_id "
                                       f"{first['image_id']}); dropped")

    # the split, by file stem
    stem = {iid: os.path.splitext(os.path.basename(im["file_name"]))[0] for iid, im in images.items()}
    if split is None or split == "all":
        chosen = list(images)
    else:
        keep = set(_pick_split(split_ids(stem.values(), ratios, seed), split, str(json_path)))
        chosen = [iid for iid in images if stem[iid] in keep]

    unknown_cat: dict[int, list] = {}  # category id -> [boxes, first annotation id, first file]
    unknown_name: dict[str, list] = {}  # category name -> [boxes, images, category id]
    records = []
    for iid in chosen:
        im = images[iid]
        fname = im["file_name"]
        path = base / fname
        if not path.is_file():
            report.images_skipped["missing image"] += 1
            report.add("missing image", f"{json_path}: image {fname} (id {iid}) not found at {path}; image skipped")
            continue
        try:
            width, height = image_size(path)
            if check_images:
                verify_image(path)
        except ImageReadError as err:
            report.images_skipped["corrupt image"] += 1
            report.add("corrupt image", f"{err} (listed in {json_path}); image skipped")
            continue
        jw, jh = im.get("width"), im.get("height")
        if _is_number(jw) and _is_number(jh) and (int(jw), int(jh)) != (width, height):
            report.add("size mismatch", f"{json_path}: image {fname} (id {iid}): size in JSON {int(jw)}x{int(jh)} "
                                        f"disagrees with the image {width}x{height} (read from the image header); "
                                        "trusting the image")
        boxes, labels, difficult = [], [], []
        unknown_here = set()
        dropped_before = sum(report.boxes_dropped.values())
        for a in by_image.get(iid, ()):
            what = f"{json_path}: annotation {a.get('id')} ({fname})"
            cid = a.get("category_id")
            if not _is_int(cid) or cid not in cats:
                entry = unknown_cat.setdefault(cid if _is_int(cid) else repr(cid), [0, a.get("id"), fname])
                entry[0] += 1
                report.boxes_dropped["unknown category id"] += 1
                continue
            name = cats[cid]
            if name not in class_index:
                entry = unknown_name.setdefault(name, [0, 0, cid])
                entry[0] += 1
                if name not in unknown_here:
                    entry[1] += 1
                    unknown_here.add(name)
                report.boxes_dropped["unknown class"] += 1
                continue
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                report.boxes_dropped["malformed box"] += 1
                report.add("malformed box", f"{what}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]; "
                                            "box dropped")
                continue
            x, y, w, h = (float(v) for v in bbox)
            coords = f"[{x:g}, {y:g}, {w:g}, {h:g}]"
            if w <= 0 or h <= 0:
                report.boxes_dropped["zero-area"] += 1
                report.add("zero-area", f"{what}: bbox {coords} has zero or negative "
                                        f"{'width' if w <= 0 else 'height'}; box dropped")
                continue
            x1, y1, x2, y2 = x, y, x + w, y + h
            c1, d1, c2, d2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
            if c1 >= c2 or d1 >= d2:
                report.boxes_dropped["outside image"] += 1
                report.add("outside image", f"{what}: bbox {coords} lies outside the {width}x{height} image; "
                                            "box dropped")
                continue
            if (c1, d1, c2, d2) != (x1, y1, x2, y2):
                report.boxes_clipped += 1
                report.add("clipped", f"{what}: bbox {coords} extends outside the {width}x{height} image; "
                                      f"clipped to xyxy [{c1:g}, {d1:g}, {c2:g}, {d2:g}]")
            boxes.append((c1, d1, c2, d2))
            labels.append(class_index[name])
            difficult.append(bool(a.get("iscrowd", 0)))
        records.append(VocRecord(str(path), np.asarray(boxes, np.float32).reshape(-1, 4),
                                 np.asarray(labels, np.int32), np.asarray(difficult, bool), width, height,
                                 str(json_path)))
        if sum(report.boxes_dropped.values()) > dropped_before:
            report.dropped_in[str(path)] += sum(report.boxes_dropped.values()) - dropped_before
        report.images_loaded += 1
        report.boxes_kept += len(boxes)

    for cid, (n, aid, fname) in unknown_cat.items():
        report.add("unknown category id", f"{json_path}: category_id {cid} is not in 'categories': {n} box(es) "
                                          f"dropped (first: annotation id {aid} on {fname})")
    for name, (n, n_images, cid) in unknown_name.items():
        report.unknown_boxes[name] += n
        report.add("unknown category", f"{json_path}: category {name!r} (id {cid}) is not in the class list: "
                                       f"{n} box(es) in {n_images} image(s) dropped"
                                       + did_you_mean(name, class_index))
    return _finish(records, report, log)


# ----------------------------------------------------------------------------- writing

def _num(v: float):
    """A JSON number: an int when whole, else rounded to 1/1000 pixel."""
    v = round(float(v), 3)
    return int(v) if v.is_integer() else v


def coco_dict(records: Sequence[VocRecord], class_names, images_dir_rel=None) -> dict:
    """The instances dict of :func:`write_coco` (ids: images and annotations 1..N in order)."""
    names = _class_list(class_names)
    prefix = None if images_dir_rel in (None, "") else pathlib.PurePosixPath(str(images_dir_rel).replace(os.sep, "/"))
    out = {"info": {"description": "written by utils.data.coco.write_coco"}, "licenses": [],
           "images": [], "annotations": [],
           "categories": [{"id": k + 1, "name": n, "supercategory": "none"} for k, n in enumerate(names)]}
    ann_id = 0
    for img_id, r in enumerate(records, 1):
        base = os.path.basename(r.image_path)
        out["images"].append({"id": img_id, "file_name": str(prefix / base) if prefix else base,
                              "width": int(r.width), "height": int(r.height)})
        labels = np.asarray(r.labels).reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"{r.image_path}: label {int(labels.max())} is not an index into the "
                             f"{len(names)} class names")
        difficult = np.zeros(len(labels), bool) if r.difficult is None else np.asarray(r.difficult, bool).reshape(-1)
        for (x1, y1, x2, y2), label, diff in zip(np.asarray(r.boxes, np.float64).reshape(-1, 4), labels, difficult):
            x1, y1, x2, y2 = (round(float(v), 3) for v in (x1, y1, x2, y2))
            w, h = _num(x2 - x1), _num(y2 - y1)
            ann_id += 1
            out["annotations"].append({"id": ann_id, "image_id": img_id, "category_id": int(label) + 1,
                                       "bbox": [_num(x1), _num(y1), w, h], "area": _num(w * h),
                                       "iscrowd": int(bool(diff)), "segmentation": []})
    return out


def write_coco(records: Sequence[VocRecord], class_names, json_path, images_dir_rel=None) -> str:
    """Write records as a COCO instances JSON; returns the path (folders made as needed).

    Categories get ids 1..N in class-list order, images and annotations ids 1..N in record
    order; ``iscrowd`` is the difficult flag; bbox numbers are whole when the box is, else
    rounded to 1/1000 pixel; ``segmentation`` is empty. ``file_name`` is the image's base
    name, under ``images_dir_rel`` (a relative folder, written with '/') when given. Images
    are not copied (utils/data/convert.py does that).
    """
    data = coco_dict(records, class_names, images_dir_rel)
    json_path = os.fspath(json_path)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")
    return json_path
