"""Convert a detection dataset between VOC XML, COCO JSON and YOLO txt.

    python -m utils.data.convert --from coco --to voc --src PATH --out DIR [--classes FILE] [--images DIR]
    python -m utils.data.convert --to yolo --src VOCdevkit/VOC2007 --out yolo_voc --classes model_data/voc_classes.txt

The source is read into records (utils/data/formats.py: every image, split None, bad
input reported as the loaders do) and written whole into ``--out``, which must be new or
empty. ``--from`` is detected when omitted. The class list is ``--classes`` (needed for
a VOC source, whose files do not list their classes), else the COCO categories or the YOLO
names; it sets the label order of the output.

What is written
---------------
* voc: Annotations/<id>.xml (whole pixels, utils.data.voc.write_voc_xml), JPEGImages/,
  ImageSets/Main/<split>.txt for the splits the source names, and classes.txt.
* coco: images/ and annotations/instances.json with every image, plus
  annotations/instances_<split>.json for the splits the source names.
* yolo: images/<split>/ and labels/<split>/ with a data.yaml listing them when the
  source's named splits (train / val / test) cover every image once; otherwise images/
  and labels/ flat with a data.yaml holding the names only (split by ratio when loaded).
  YOLO txt has no difficult flag: difficult boxes become ordinary ones (a note says how
  many).

"trainval" is added where train and val are named. Images are copied (shutil.copy2) or,
with ``--link``, hard-linked, never re-encoded or modified. Image ids (file stems) must be
unique, since every format keys images by them. A round trip VOC -> COCO -> YOLO -> VOC
returns every box to within one pixel (VOC is written in whole pixels) and every class.
Exit status 0 on success, 2 on an unusable source or output folder (message on stderr).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Sequence

from utils.data import formats
from utils.data.coco import write_coco
from utils.data.voc import SPLIT_ORDER, DatasetError, Log, VocRecord, _class_list, write_voc_xml
from utils.data.yolo_labels import place_image, write_yolo


def _splits(src, fmt: str, records: Sequence[VocRecord]) -> dict[str, list[str]]:
    """The source's named splits restricted to the loaded images, with trainval added."""
    loaded = {r.image_id for r in records}
    out = {s: [i for i in ids if i in loaded] for s, ids in formats.named_splits(src, fmt).items()}
    if "train" in out and "val" in out and "trainval" not in out:
        out["trainval"] = sorted(set(out["train"]) | set(out["val"]))
    return out


def _check_unique(records: Sequence[VocRecord]):
    seen = {}
    for r in records:
        if r.image_id in seen:
            raise ValueError(f"two images with the id {r.image_id!r}: {seen[r.image_id]} and {r.image_path}; "
                             "image ids (file stems) must be unique to convert")
        seen[r.image_id] = r.image_path


def _write_voc(records, names, out: pathlib.Path, splits, link):
    for r in records:
        image = place_image(r.image_path, out / "JPEGImages" / os.path.basename(r.image_path), link)
        write_voc_xml(out / "Annotations" / f"{r.image_id}.xml", image, r.width, r.height, r.boxes, r.labels,
                      names, r.difficult)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for s, ids in splits.items():
        (out / "ImageSets" / "Main" / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def _write_coco(records, names, out: pathlib.Path, splits, link):
    for r in records:
        place_image(r.image_path, out / "images" / os.path.basename(r.image_path), link)
    write_coco(records, names, out / "annotations" / "instances.json")
    for s, ids in splits.items():
        keep = set(ids)
        write_coco([r for r in records if r.image_id in keep], names, out / "annotations" / f"instances_{s}.json")


def _write_yolo(records, names, out: pathlib.Path, splits, link, log: Log) -> bool:
    """Returns True when written with split subfolders."""
    parts = {s: splits[s] for s in SPLIT_ORDER if s in splits}
    listed = [i for ids in parts.values() for i in ids]
    partition = bool(parts) and len(listed) == len(set(listed)) == len(records)
    if partition:
        by_id = {r.image_id: r for r in records}
        for s, ids in parts.items():
            write_yolo([by_id[i] for i in ids], names, out, s, link=link)
    else:
        write_yolo(records, names, out, None, link=link)
        if splits and log:
            log(f"note: the source's splits ({', '.join(splits)}) do not cover every image exactly once; "
                "written without splits (YOLO folder layout, split by ratio when loaded)")
    n_difficult = sum(int(r.difficult.sum()) for r in records)
    if n_difficult and log:
        log(f"note: {n_difficult} difficult box(es) written as ordinary boxes (YOLO txt has no difficult flag)")
    return partition


def convert(src, out, to: str, *, fmt: str | None = None, class_names=None, images=None, link: bool = False,
            check_images: bool = True, log: Log = print) -> list[VocRecord]:
    """Convert the dataset at ``src`` (format ``fmt``, detected when None) to format ``to`` in ``out``.

    ``class_names``: a list or class-list file (None: the source's own list; required for
    VOC). ``images``: the image folder of a COCO JSON or flat VOC annotations folder.
    Returns the records that were read. Raises DatasetError / ValueError for an unusable
    source, FileExistsError when ``out`` is not empty.
    """
    fmt = fmt or formats.detect_format(src)
    for f in (fmt, to):
        if f not in formats.FORMATS:
            raise ValueError(f"unknown dataset format {f!r}; one of {', '.join(formats.FORMATS)}")
    names = formats.class_names_from(src, fmt) if class_names is None else _class_list(class_names)
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} exists and is not empty; give a new folder")
    records = formats.load_records(src, None, names, fmt=fmt, images=images, check_images=check_images, log=log)
    _check_unique(records)
    splits = _splits(src, fmt, records)
    out.mkdir(parents=True, exist_ok=True)
    if to == "voc":
        _write_voc(records, names, out, splits, link)
    elif to == "coco":
        _write_coco(records, names, out, splits, link)
    elif not _write_yolo(records, names, out, splits, link, log):
        splits = {}
    if log:
        n_boxes = sum(len(r.boxes) for r in records)
        parts = f" (splits: {', '.join(f'{s} {len(ids)}' for s, ids in splits.items())})" if splits else ""
        log(f"wrote {len(records)} images with {n_boxes} boxes as {to} to {out}{parts}")
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.data.convert",
                                description="Convert a detection dataset between VOC XML, COCO JSON and YOLO txt.")
    p.add_argument("--from", dest="fmt", choices=formats.FORMATS, default=None,
                   help="source format (default: detected from --src)")
    p.add_argument("--to", required=True, choices=formats.FORMATS, help="output format")
    p.add_argument("--src", required=True, help="source: VOC root, COCO .json or folder, YOLO data.yaml or folder")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--classes", default=None,
                   help="class list file, one name a line (required for a VOC source; default: the source's list)")
    p.add_argument("--images", default=None, help="image folder of a COCO .json or of a flat VOC annotations folder")
    p.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    p.add_argument("--no-check", action="store_true", help="read image headers only (skip the full decode check)")
    a = p.parse_args(argv)
    try:
        convert(a.src, a.out, a.to, fmt=a.fmt, class_names=a.classes, images=a.images, link=a.link,
                check_images=not a.no_check)
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
