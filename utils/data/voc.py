"""VOC-layout datasets: records of (image path, boxes, labels, difficult flags).

Everything before augmentation lives here: class lists, VOC XML parsing and writing, and
loading a split of one or several VOC roots (or of a flat folder pair). Images are read by
utils/data/images.py; statistics, the split writer and the dataset check are in
utils/data/check.py.

Conventions
-----------
* Boxes are float32 xyxy in the *stored* pixel frame of the image file, with the VOC values
  as written (1-based inclusive pixels for files from labelImg / the VOC devkit). EXIF
  orientation is never applied, neither by :func:`read_image` nor by the size check, so
  pixels and boxes always agree. (``cv2.imread`` with ``IMREAD_COLOR`` *does* rotate by EXIF;
  that is one reason the project reads images with PIL, which does not unless asked.)
* Difficult objects are kept with ``difficult=True``; the training pipeline drops them from
  targets, evaluation ignores them as VOC does.
* Bad input never stops a load: each problem becomes one message naming the file and the
  problem, the bad box or image is dropped, the rest goes on, and ONE summary line is logged
  at the end. Messages go through the ``log`` callable (default ``print``; pass
  ``messages.append`` to capture them, ``None`` to silence), once per problem per load.
  Boxes of a class that is not in the class list are reported once per class name (with a
  count and the first file) rather than once per box, so training on a subset of the VOC
  classes stays readable. A load that ends with zero usable images raises
  :class:`DatasetError`.
* Splits made on the spot (and by ``voc_annotation.py``) are deterministic: ids are ordered by
  SHA-1 of ``"<seed>:<id>"`` and cut in the order train, val, test with the largest-remainder
  rounding of ``n * ratio``. The order depends only on the seed and the id itself, not on the
  file system, the NumPy version or the other ids.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Callable, Iterable, Mapping, Sequence
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from utils.data.images import IMAGE_EXTENSIONS, ImageReadError, exif_orientation, image_size, verify_image

SPLIT_ORDER = ("train", "val", "test")
SPLIT_FILES = ("train", "val", "test", "trainval")

Log = Callable[[str], None] | None


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing folder, no usable image, bad split)."""


class AnnotationError(ValueError):
    """A VOC XML file that cannot be used at all (malformed, hostile, not a VOC annotation)."""


@dataclasses.dataclass
class VocRecord:
    """One image and its objects.

    ``boxes`` is float32 (N, 4) xyxy in the stored pixel frame of the image file (EXIF
    orientation is not applied), with the VOC values as written (xmin, ymin, xmax, ymax);
    ``labels`` int32 (N,) indices into the class list; ``difficult`` bool (N,).
    """
    image_path: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int
    annotation_path: str = ""

    @property
    def image_id(self) -> str:
        return os.path.splitext(os.path.basename(self.image_path))[0]


# ----------------------------------------------------------------------------- class names

def read_class_names(path) -> list[str]:
    """Class names, one per line; blank lines and lines starting with '#' are ignored.

    Raises FileNotFoundError / ValueError naming the file (missing, empty, duplicate name).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    names, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ValueError(f"{path}: duplicate class name {name!r} on lines {seen[name]} and {lineno}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


def _class_list(class_names) -> list[str]:
    if isinstance(class_names, (str, os.PathLike)):
        return read_class_names(class_names)
    names = [str(n) for n in class_names]
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"duplicate class names: {dup}")
    if not names:
        raise ValueError("empty class list")
    return names


def nearest_class(name: str, class_names: Sequence[str]) -> str | None:
    """The class-list name ``name`` most likely means: the same name in another case, else the
    closest by difflib (ratio >= 0.6, case-insensitive); None when none is close."""
    import difflib

    same = [c for c in class_names if c.lower() == str(name).lower()]
    if same:
        return same[0]
    lowered = {c.lower(): c for c in class_names}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def did_you_mean(name: str, class_names) -> str:
    """`` (did you mean 'RBC'?)`` for a class name that is not in the list, or ``""``."""
    hint = nearest_class(name, list(class_names))
    return f" (did you mean {hint!r}?)" if hint else ""


# ----------------------------------------------------------------------------- XML

@dataclasses.dataclass
class _Parsed:
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int
    filename: str
    problems: list  # (kind, message)
    unknown: list  # class names not in the list, one entry per dropped box


def _text(node, tag):
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _parse(xml_path: str, class_index: Mapping[str, int], image_size=None) -> _Parsed:
    try:
        tree = SafeET.parse(xml_path, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise AnnotationError(
            f"hostile XML rejected: {xml_path}: {type(e).__name__} ({e}); DTDs, entity "
            "declarations and external references are not allowed in annotations") from None
    except ParseError as e:
        raise AnnotationError(f"malformed XML: {xml_path}: {e}") from None
    except OSError as e:
        raise AnnotationError(f"unreadable annotation: {xml_path}: {e}") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise AnnotationError(f"malformed XML: {xml_path}: root element is <{root.tag}>, not <annotation>")

    problems = []

    def problem(kind, text):
        problems.append((kind, f"{xml_path}: {text}"))

    xml_w = xml_h = None
    try:
        xml_w, xml_h = int(float(_text(root, "size/width"))), int(float(_text(root, "size/height")))
    except (TypeError, ValueError):
        pass
    if image_size is not None:
        width, height = int(image_size[0]), int(image_size[1])
        if xml_w and xml_h and (xml_w, xml_h) != (width, height):
            problem("size mismatch", f"size in XML {xml_w}x{xml_h} disagrees with the image {width}x{height} "
                                     "(read from the image header); trusting the image")
    elif xml_w and xml_h and xml_w > 0 and xml_h > 0:
        width, height = xml_w, xml_h
    else:
        width = height = 0
        problem("no size", "no image size in the XML and none given: boxes not checked against the image")

    boxes, labels, difficult, unknown = [], [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = _text(obj, "name") or ""
        what = f"object {i} ({name or 'no name'})"
        if name not in class_index:
            unknown.append(name)
            problem("unknown class", f"{what}: class {name!r} is not in the class list; box dropped"
                    + did_you_mean(name, class_index))
            continue
        try:
            x1, y1, x2, y2 = (float(_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise ValueError("not finite")
        except (TypeError, ValueError):
            problem("malformed box", f"{what}: missing or non-numeric <bndbox> values; box dropped")
            continue
        coords = f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if x1 >= x2 or y1 >= y2:
            why = f"xmin {x1:g} >= xmax {x2:g}" if x1 >= x2 else f"ymin {y1:g} >= ymax {y2:g}"
            problem("zero-area", f"{what}: box {coords} has {why} (zero or negative area); box dropped")
            continue
        if width and height:
            c1, d1, c2, d2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
            if c1 >= c2 or d1 >= d2:
                problem("outside image", f"{what}: box {coords} lies outside the {width}x{height} image; box dropped")
                continue
            if (c1, d1, c2, d2) != (x1, y1, x2, y2):
                problem("clipped", f"{what}: box {coords} extends outside the {width}x{height} image; "
                                   f"clipped to [{c1:g}, {d1:g}, {c2:g}, {d2:g}]")
                x1, y1, x2, y2 = c1, d1, c2, d2
        try:
            diff = bool(int(float(_text(obj, "difficult") or 0)))
        except ValueError:
            diff = (_text(obj, "difficult") or "").lower() == "true"
        boxes.append((x1, y1, x2, y2))
        labels.append(class_index[name])
        difficult.append(diff)
    return _Parsed(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32),
                   np.asarray(difficult, bool), width, height, _text(root, "filename") or "", problems, unknown)


def parse_voc_xml(xml_path, class_names, image_size=None) -> tuple[VocRecord, list[str]]:
    """Parse one VOC XML file with defusedxml; returns (record, warnings).

    ``image_size`` is (width, height) of the real image (PIL order); when given it is
    trusted over the XML's <size>, and a disagreement is a warning. The record's
    ``image_path`` is the XML's <filename> (the loaders replace it with the real path).
    Boxes that are zero-area, wholly outside the image, malformed or of an unknown class
    are dropped, boxes partly outside are clipped, each with a warning naming the file.
    Raises :class:`AnnotationError` for malformed XML and for hostile XML
    ("hostile XML rejected: ...": DTDs, entity expansion, external entities).
    """
    names = _class_list(class_names)
    p = _parse(os.fspath(xml_path), {n: i for i, n in enumerate(names)}, image_size)
    rec = VocRecord(p.filename, p.boxes, p.labels, p.difficult, p.width, p.height, os.fspath(xml_path))
    return rec, [m for _, m in p.problems]


# ----------------------------------------------------------------------------- splits

def normalize_ratios(ratios) -> dict[str, float]:
    """(0.8, 0.1, 0.1) or {"train": .8, ...} -> ordered dict; they must sum to 1."""
    if isinstance(ratios, Mapping):
        items = [(str(k), float(v)) for k, v in ratios.items()]
    else:
        vals = [float(v) for v in ratios]
        if not 1 <= len(vals) <= 3:
            raise ValueError(f"ratios: give 1 to 3 values (train, val, test), got {len(vals)}")
        items = list(zip(SPLIT_ORDER, vals))
    if any(not math.isfinite(v) or v < 0 for _, v in items):
        raise ValueError(f"ratios must be finite and >= 0, got {dict(items)}")
    if abs(sum(v for _, v in items) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {dict(items)} (sum {sum(v for _, v in items):g})")
    if "trainval" in dict(items):
        raise ValueError("ratios: 'trainval' is train + val, not a ratio of its own")
    order = {k: i for i, k in enumerate(SPLIT_ORDER)}
    return dict(sorted(items, key=lambda kv: order.get(kv[0], len(order))))


def split_ids(ids: Iterable[str], ratios, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic split of ids by ratio; returns {name: sorted ids} plus 'trainval'.

    Ids are ordered by SHA-1 of ``"<seed>:<id>"`` and cut in the order train, val, test;
    part sizes are ``n * ratio`` rounded by largest remainder, so they sum to n.
    """
    ratios = normalize_ratios(ratios)
    ids = sorted(set(ids))
    n = len(ids)
    exact = [n * r for r in ratios.values()]
    counts = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    ordered = sorted(ids, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    out, start = {}, 0
    for name, c in zip(ratios, counts):
        out[name] = sorted(ordered[start:start + c])
        start += c
    if "train" in out and "val" in out:
        out["trainval"] = sorted(out["train"] + out["val"])
    return out


def _pick_split(parts: dict[str, list[str]], split: str, what: str) -> list[str]:
    if split not in parts:
        raise DatasetError(f"{what}: split {split!r} is not one of the ratio parts {sorted(parts)}")
    return parts[split]


# ----------------------------------------------------------------------------- loading

@dataclasses.dataclass
class LoadReport:
    """What a load found: problems (kind, message) in order, and counts for the summary."""
    source: str
    problems: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    images_loaded: int = 0
    boxes_kept: int = 0
    boxes_clipped: int = 0
    images_skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    boxes_dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unknown: dict = dataclasses.field(default_factory=dict)  # class -> [boxes, files, first file]
    # every format (the teachability check, utils.data.check.teachability, reads these two):
    unknown_boxes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # class -> boxes
    dropped_in: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # image -> boxes dropped

    def add(self, kind: str, message: str):
        self.problems.append((kind, message))

    def messages(self) -> list[str]:
        """One line per problem; unknown classes folded into one line per class name."""
        out = [m for k, m in self.problems if k != "unknown class"]
        for name, (boxes, files, first) in self.unknown.items():
            out.append(f"class {name!r} is not in the class list: {boxes} box(es) in {files} file(s) dropped "
                       f"(first: {first})")
        return out

    def summary(self) -> str:
        def counted(counter):
            return ", ".join(f"{v} {k}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))
        nd, ns = sum(self.boxes_dropped.values()), sum(self.images_skipped.values())
        text = f"{self.source}: loaded {self.images_loaded} images with {self.boxes_kept} boxes"
        text += f", {nd} box{'es' if nd != 1 else ''} dropped" + (f" ({counted(self.boxes_dropped)})" if nd else "")
        if self.boxes_clipped:
            text += f", {self.boxes_clipped} clipped"
        text += f", {ns} image{'s' if ns != 1 else ''} skipped" + (f" ({counted(self.images_skipped)})" if ns else "")
        return text


@dataclasses.dataclass
class _Entry:
    image_id: str
    xml_path: str | None
    image_path: str | None
    xml_dir: pathlib.Path  # where the annotation was looked for
    image_dir: pathlib.Path  # where the image was looked for


def _index_images(folder: pathlib.Path) -> dict[str, str]:
    """stem -> image path, preferring IMAGE_EXTENSIONS order when a stem has several files."""
    found: dict[str, tuple[int, str]] = {}
    if folder.is_dir():
        with os.scandir(folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                ext = ext.lower()
                if ext in IMAGE_EXTENSIONS and e.is_file():
                    rank = IMAGE_EXTENSIONS.index(ext)
                    if stem not in found or rank < found[stem][0]:
                        found[stem] = (rank, e.path)
    return {k: v for k, (_, v) in found.items()}


def _index_xml(folder: pathlib.Path) -> dict[str, str]:
    out = {}
    if folder.is_dir():
        with os.scandir(folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() == ".xml" and e.is_file():
                    out[stem] = e.path
    return out


def _load_entries(entries: Sequence[_Entry], class_names: list[str], check_images: bool,
                  report: LoadReport) -> list[VocRecord]:
    class_index = {n: i for i, n in enumerate(class_names)}
    records = []
    for e in entries:
        if e.xml_path is None:
            report.images_skipped["missing annotation"] += 1
            report.add("missing annotation", f"{e.image_path or e.image_dir / e.image_id}: no annotation "
                                             f"{e.xml_path or e.xml_dir / (e.image_id + '.xml')}; image skipped")
            continue
        if e.image_path is None:
            report.images_skipped["missing image"] += 1
            report.add("missing image", f"{e.xml_path}: no image {e.image_id}{{{','.join(IMAGE_EXTENSIONS)}}} "
                                        f"in {e.image_dir}; annotation skipped")
            continue
        try:
            size = image_size(e.image_path)
            if check_images:
                verify_image(e.image_path)
        except ImageReadError as err:
            report.images_skipped["corrupt image"] += 1
            report.add("corrupt image", f"{err}; image skipped")
            continue
        try:
            p = _parse(e.xml_path, class_index, size)
        except AnnotationError as err:
            kind = "hostile XML" if str(err).startswith("hostile") else "malformed XML"
            report.images_skipped[kind] += 1
            report.add(kind, f"{err}; image skipped")
            continue
        for kind, msg in p.problems:
            if kind == "size mismatch":
                o = exif_orientation(e.image_path)
                if o != 1:
                    msg += (f" (the image has EXIF orientation {o}; boxes are read in the stored pixel frame, "
                            "EXIF rotation is not applied)")
            elif kind == "clipped":
                report.boxes_clipped += 1
            elif kind in ("zero-area", "outside image", "malformed box", "unknown class"):
                report.boxes_dropped[kind] += 1
            report.add(kind, msg)
        for name in dict.fromkeys(p.unknown):
            entry = report.unknown.setdefault(name, [0, 0, e.xml_path])
            entry[0] += p.unknown.count(name)
            entry[1] += 1
        report.unknown_boxes.update(p.unknown)
        dropped = sum(1 for kind, _ in p.problems if kind in ("zero-area", "outside image", "malformed box",
                                                               "unknown class"))
        if dropped:
            report.dropped_in[e.image_path] += dropped
        records.append(VocRecord(e.image_path, p.boxes, p.labels, p.difficult, p.width, p.height, e.xml_path))
        report.images_loaded += 1
        report.boxes_kept += len(p.boxes)
    return records


class ReportLog:
    """A ``log`` callable that also keeps the :class:`LoadReport` of every load it is given to
    (``reports``, in order) and the lines logged (``lines``); ``log`` (default None: silent)
    receives the lines as a plain log would. Lets a caller read a load's counts (e.g. the boxes
    dropped per unknown class) without parsing its messages."""

    def __init__(self, log: Log = None):
        self.log, self.reports, self.lines = log, [], []

    def __call__(self, message: str):
        self.lines.append(message)
        if self.log is not None:
            self.log(message)


def _emit(report: LoadReport, log: Log):
    if isinstance(log, ReportLog):
        log.reports.append(report)
    if log is None:
        return
    for note in report.notes:
        log(note)
    for m in report.messages():
        log(f"warning: {m}")
    log(report.summary())


def _finish(records, report: LoadReport, log: Log) -> list[VocRecord]:
    _emit(report, log)
    if not records:
        skipped = sum(report.images_skipped.values())
        detail = f": {skipped} skipped ({', '.join(f'{v} {k}' for k, v in report.images_skipped.items())})" \
            if skipped else " (the split lists no images)"
        raise DatasetError(f"{report.source}: no usable images{detail}")
    return records


def _roots(roots) -> list[pathlib.Path]:
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = [pathlib.Path(r) for r in roots]
    if not roots:
        raise DatasetError("no dataset root given")
    for r in roots:
        if not r.is_dir():
            raise DatasetError(f"dataset root not found: {r}")
        if not (r / "Annotations").is_dir():
            raise DatasetError(f"{r}: no Annotations/ folder (expected the VOC layout "
                               "Annotations/, JPEGImages/, ImageSets/Main/)")
        if not (r / "JPEGImages").is_dir():
            raise DatasetError(f"{r}: no JPEGImages/ folder (expected the VOC layout "
                               "Annotations/, JPEGImages/, ImageSets/Main/)")
    return roots


def read_split_file(path) -> list[str]:
    """Ids of an ImageSets/Main/<split>.txt (first token per line; blank lines ignored)."""
    ids = []
    for line in pathlib.Path(path).read_text(encoding="utf-8-sig").splitlines():
        tok = line.split()
        if tok:
            ids.append(tok[0])
    return ids


def _voc_entries(root: pathlib.Path, split: str | None, ratios, seed: int, report: LoadReport) -> list[_Entry]:
    xmls = _index_xml(root / "Annotations")
    images = _index_images(root / "JPEGImages")
    if split is None or split == "all":
        ids = sorted(set(xmls) | set(images))
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if split_file.is_file():
            listed = read_split_file(split_file)
            ids = list(dict.fromkeys(listed))
            if len(ids) != len(listed):
                dups = [k for k, c in collections.Counter(listed).items() if c > 1]
                report.add("duplicate id", f"{split_file}: {len(dups)} id(s) listed more than once "
                                           f"(first: {dups[0]}); each used once")
        elif ratios is not None:
            ratios = normalize_ratios(ratios)
            every = sorted(set(xmls) | set(images))
            ids = _pick_split(split_ids(every, ratios, seed), split, str(split_file))
            report.notes.append(
                f"{split_file} not found: split {split!r} made on the spot from {len(every)} ids with ratios "
                f"{ratios} and seed {seed} ({len(ids)} ids; ordered by SHA-1 of '<seed>:<id>'; not written — "
                f"run voc_annotation.py to write split files)")
        else:
            raise DatasetError(f"split file not found: {split_file} (write the split files with "
                               "`python voc_annotation.py --root ...`, or pass ratio= to split on the spot)")
    return [_Entry(i, xmls.get(i), images.get(i), root / "Annotations", root / "JPEGImages") for i in ids]


def load_voc(roots, split: str | None, class_names, *, ratio=None, ratios=None, seed: int = 0,
             check_images: bool = True, log: Log = print) -> list[VocRecord]:
    """Load one split of one or several VOC roots (VOC2007 + VOC2012 combine) as records.

    Each root holds Annotations/<id>.xml, JPEGImages/<id>.{jpg,jpeg,png,bmp} and
    ImageSets/Main/<split>.txt. When the split file is missing, the split is made on the
    spot from ``ratio`` (e.g. {"train": .7, "val": .2, "test": .1}; ``ratios`` is an alias)
    and ``seed`` (see :func:`split_ids`), and a note says so. ``split=None`` (or "all")
    loads every id found. Image sizes come from the file headers; ``check_images`` also
    decodes each image (JPEG at 1/8 scale) to catch truncated files. Problems are logged
    (see the module docstring); raises :class:`DatasetError` when no image is usable.
    """
    names = _class_list(class_names)
    roots = _roots(roots)
    ratios = ratios if ratio is None else ratio
    source = "+".join(str(r) for r in roots) + f" [{split or 'all'}]"
    report = LoadReport(source)
    entries = []
    for r in roots:
        entries += _voc_entries(r, split, ratios, seed, report)
    return _finish(_load_entries(entries, names, check_images, report), report, log)


def _flat_entries(images_dir, annotations_dir, split, ratios, seed, report) -> list[_Entry]:
    images_dir, annotations_dir = pathlib.Path(images_dir), pathlib.Path(annotations_dir)
    for d, what in ((images_dir, "images"), (annotations_dir, "annotations")):
        if not d.is_dir():
            raise DatasetError(f"{what} folder not found: {d}")
    xmls, images = _index_xml(annotations_dir), _index_images(images_dir)
    every = sorted(set(xmls) | set(images))
    if split is None or split == "all":
        ids = every
    else:
        ids = _pick_split(split_ids(every, ratios, seed), split, f"{images_dir} + {annotations_dir}")
    return [_Entry(i, xmls.get(i), images.get(i), annotations_dir, images_dir) for i in ids]


def load_flat(images_dir, annotations_dir, split: str | None, class_names, *, ratios=(0.8, 0.1, 0.1),
              seed: int = 0, check_images: bool = True, log: Log = print) -> list[VocRecord]:
    """Load one folder of images + one folder of VOC XML, matched by file stem, split by ratio.

    The split is made over every stem found in either folder (see :func:`split_ids`), so each
    unmatched file belongs to exactly one split and is reported once. An image without an
    annotation is skipped with a warning (VOC convention: an image is a negative only when
    its XML says so, with an empty object list); an annotation without an image likewise.
    ``split`` is "train", "val", "test", "trainval" or None / "all".
    """
    names = _class_list(class_names)
    report = LoadReport(f"{images_dir} + {annotations_dir} [{split or 'all'}]")
    entries = _flat_entries(images_dir, annotations_dir, split, ratios, seed, report)
    return _finish(_load_entries(entries, names, check_images, report), report, log)


# ----------------------------------------------------------------------------- writing

def voc_xml_string(image_path, width: int, height: int, boxes, labels, class_names, difficult=None) -> str:
    """A VOC annotation (the labelImg / VOC devkit layout) for one image, as text.

    ``boxes`` are xyxy pixels in the stored frame (the convention of :class:`VocRecord`);
    they are written as whole pixels: rounded, clipped to the image, and widened to one
    pixel where rounding would collapse them, so :func:`parse_voc_xml` reads every box back
    (within 0.5 px of the input for boxes wider than a pixel). Built with the standard
    library's ElementTree, which escapes class and file names; reading goes through
    defusedxml as always.
    """
    from xml.etree import ElementTree as ET  # writing only: nothing untrusted is parsed here

    names = _class_list(class_names)
    width, height = int(width), int(height)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(boxes):
        raise ValueError(f"voc_xml_string: {len(boxes)} boxes but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"voc_xml_string: label {int(labels.max() if labels.max() >= len(names) else labels.min())} "
                         f"is not an index into the {len(names)} class names")
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    path = os.fspath(image_path)

    def sub(parent, tag, text=None):
        node = ET.SubElement(parent, tag)
        if text is not None:
            node.text = str(text)
        return node

    root = ET.Element("annotation")
    sub(root, "folder", os.path.basename(os.path.dirname(os.path.abspath(path))))
    sub(root, "filename", os.path.basename(path))
    sub(root, "path", os.path.abspath(path))
    sub(sub(root, "source"), "database", "Unknown")
    size = sub(root, "size")
    sub(size, "width", width)
    sub(size, "height", height)
    sub(size, "depth", 3)
    sub(root, "segmented", 0)
    for box, label, diff in zip(boxes, labels, difficult):
        x1, x2 = _whole_pixels(box[0], box[2], width)
        y1, y2 = _whole_pixels(box[1], box[3], height)
        obj = sub(root, "object")
        sub(obj, "name", names[int(label)])
        sub(obj, "pose", "Unspecified")
        sub(obj, "truncated", int(x1 == 0 or y1 == 0 or x2 == width or y2 == height))
        sub(obj, "difficult", int(bool(diff)))
        bnd = sub(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
            sub(bnd, tag, v)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _whole_pixels(lo: float, hi: float, side: int) -> tuple[int, int]:
    """Round [lo, hi] to integers inside [0, side] with hi > lo (one pixel at least)."""
    a = int(min(max(round(float(lo)), 0), max(side - 1, 0)))
    b = int(min(max(round(float(hi)), a + 1), side))
    return a, max(b, a + 1)


def write_voc_xml(xml_path, image_path, width: int, height: int, boxes, labels, class_names,
                  difficult=None) -> str:
    """Write :func:`voc_xml_string` to ``xml_path`` (folders made as needed); returns the path."""
    xml_path = os.fspath(xml_path)
    os.makedirs(os.path.dirname(os.path.abspath(xml_path)), exist_ok=True)
    text = voc_xml_string(image_path, width, height, boxes, labels, class_names, difficult)
    with open(xml_path, "w", encoding="utf-8") as f:
        f.write(text)
    return xml_path
