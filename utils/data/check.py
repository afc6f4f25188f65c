"""Dataset statistics and the dataset check behind ``voc_annotation.py check``.

Per-class counts, COCO size buckets and box-size ranges (:func:`dataset_stats`), as text
tables, and :func:`check_dataset`: every problem of a whole VOC root or flat folder pair,
with its file, plus the consistency of the split files; :func:`check_data` does the same for
a COCO or YOLO set (utils/data/formats.py).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from utils.data.voc import (SPLIT_FILES, DatasetError, LoadReport, Log, VocRecord, _class_list, _flat_entries,
                            _load_entries, _roots, _voc_entries, load_voc, normalize_ratios, read_split_file,
                            split_ids)

# COCO's area thresholds (pixels^2) for small / medium / large objects.
COCO_SMALL, COCO_MEDIUM = 32 ** 2, 96 ** 2


def dataset_stats(records: Sequence[VocRecord], class_names: Sequence[str]) -> dict:
    """Images, negatives, boxes and difficult boxes per class, COCO size buckets, w/h ranges."""
    names = list(class_names)
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros((0,), np.int32)
    diff = np.concatenate([r.difficult for r in records]) if records else np.zeros((0,), bool)
    wh = boxes[:, 2:] - boxes[:, :2]
    area = wh.prod(axis=1)

    def size_stats(sel):
        w, h, a = wh[sel, 0], wh[sel, 1], area[sel]
        out = {"boxes": int(sel.sum()), "difficult": int(diff[sel].sum()),
               "small": int((a < COCO_SMALL).sum()), "medium": int(((a >= COCO_SMALL) & (a < COCO_MEDIUM)).sum()),
               "large": int((a >= COCO_MEDIUM).sum())}
        if sel.any():
            out.update({f"{k}_{f.__name__}": float(f(v)) for k, v in (("w", w), ("h", h)) for f in (np.min, np.median, np.max)})
        return out

    per_class = {n: size_stats(labels == i) for i, n in enumerate(names)}
    for i, n in enumerate(names):
        per_class[n]["images"] = int(sum(1 for r in records if np.any(r.labels == i)))
    sizes = np.array([(r.width, r.height) for r in records]) if records else np.zeros((0, 2))
    return {"images": len(records), "negatives": int(sum(1 for r in records if len(r.boxes) == 0)),
            "all": size_stats(np.ones(len(labels), bool)), "per_class": per_class,
            "image_sizes": collections.Counter(map(tuple, sizes.astype(int).tolist()))}


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def format_split_table(splits: Mapping[str, Sequence[VocRecord]], class_names: Sequence[str]) -> str:
    """Images and boxes per class per split, as a text table."""
    rows = []
    for name, recs in splits.items():
        st = dataset_stats(recs, class_names)
        rows.append([name, st["images"], st["negatives"], st["all"]["boxes"]]
                    + [st["per_class"][c]["boxes"] for c in class_names])
    return _table(["split", "images", "negatives", "boxes"] + list(class_names), rows)


def format_stats(stats: dict) -> str:
    """Per-class counts, COCO size buckets (area < 32^2 small, < 96^2 medium) and w/h ranges."""
    rows = []
    for name, s in list(stats["per_class"].items()) + [("all", stats["all"])]:
        wh = (f"{s['w_min']:g}/{s['w_median']:g}/{s['w_max']:g}", f"{s['h_min']:g}/{s['h_median']:g}/{s['h_max']:g}") \
            if s["boxes"] else ("-", "-")
        rows.append([name, s.get("images", stats["images"]), s["boxes"], s["difficult"],
                     s["small"], s["medium"], s["large"], *wh])
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in stats["image_sizes"].most_common(5))
    more = len(stats["image_sizes"]) - 5
    return (f"images: {stats['images']} ({stats['negatives']} without boxes); image sizes: {sizes}"
            + (f" and {more} more" if more > 0 else "") + "\n"
            + _table(["class", "images", "boxes", "difficult", "small", "medium", "large",
                      "w min/med/max", "h min/med/max"], rows))


@dataclasses.dataclass
class CheckResult:
    records: list
    report: LoadReport
    stats: dict
    split_problems: list  # messages about ImageSets/Main files (or other named splits)
    summary_line: str = ""  # the loader's summary line when it is not report's (COCO, YOLO)

    def problems(self) -> list[str]:
        return self.report.messages() + self.split_problems

    def format(self) -> str:
        lines = [self.summary_line or self.report.summary(), format_stats(self.stats)]
        probs = self.problems()
        lines.append(f"{len(probs)} problem(s) found" + (":" if probs else ""))
        lines += [f"  {m}" for m in probs]
        return "\n".join(lines)


def check_dataset(class_names, *, root=None, images_dir=None, annotations_dir=None,
                  check_images: bool = True) -> CheckResult:
    """Scan a whole VOC root (or a flat images + annotations folder pair) for problems.

    Loads every id (no split), collects every problem with its file, computes
    :func:`dataset_stats`, and for a VOC root also checks ImageSets/Main/*.txt: ids listed
    without an annotation, and overlaps between train, val and test.
    """
    names = _class_list(class_names)
    split_problems = []
    if root is not None:
        (root,) = _roots([root])
        report = LoadReport(f"{root} [all]")
        entries = _voc_entries(root, None, None, 0, report)
        known = {e.image_id for e in entries if e.xml_path}
        main = root / "ImageSets" / "Main"
        lists = {s: read_split_file(main / f"{s}.txt") for s in SPLIT_FILES if (main / f"{s}.txt").is_file()}
        for s, ids in lists.items():
            missing = [i for i in ids if i not in known]
            if missing:
                split_problems.append(f"{main / (s + '.txt')}: {len(missing)} id(s) without annotation "
                                      f"(first: {missing[0]})")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if a in lists and b in lists:
                both = sorted(set(lists[a]) & set(lists[b]))
                if both:
                    split_problems.append(f"{main}: {len(both)} id(s) in both {a}.txt and {b}.txt (first: {both[0]})")
        if not lists:
            split_problems.append(f"{main}: no split files (write them with `python voc_annotation.py --root {root}`)")
    elif images_dir is not None and annotations_dir is not None:
        report = LoadReport(f"{images_dir} + {annotations_dir} [all]")
        entries = _flat_entries(images_dir, annotations_dir, None, None, 0, report)
    else:
        raise ValueError("check_dataset: give root=, or images_dir= and annotations_dir=")
    records = _load_entries(entries, names, check_images, report)
    return CheckResult(records, report, dataset_stats(records, names), split_problems)


def check_data(spec, check_images: bool = True) -> CheckResult:
    """:func:`check_dataset` of a dataset in any format (a utils.data.formats.DataSpec, as the
    data options name it): a VOC root or flat pair goes to :func:`check_dataset`; a COCO or
    YOLO set is loaded whole, its problems (each with its file) and summary collected, and
    its named splits (COCO instances_<split>.json, YOLO data.yaml / images/<split>/) checked
    for images in two of train, val and test."""
    from utils.data.formats import named_splits

    if spec.fmt == "voc":
        if spec.flat:
            return check_dataset(spec.class_names, images_dir=spec.images, annotations_dir=spec.paths[0],
                                 check_images=check_images)
        if len(spec.paths) != 1:
            raise DatasetError("check one VOC root at a time")
        return check_dataset(spec.class_names, root=spec.paths[0], check_images=check_images)
    lines = []
    records = spec.load(None, check_images=check_images, log=lines.append)
    report = LoadReport(spec.describe())
    report.notes = [m for m in lines[:-1] if not m.startswith("warning: ")]
    report.problems = [("problem", m[len("warning: "):]) for m in lines[:-1] if m.startswith("warning: ")]
    splits = named_splits(spec.paths[0], spec.fmt)
    split_problems = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(splits.get(a, ())) & set(splits.get(b, ())))
        if both:
            split_problems.append(f"{spec.paths[0]}: {len(both)} image(s) in both the {a} and the {b} split "
                                  f"(first: {both[0]})")
    return CheckResult(records, report, dataset_stats(records, spec.class_names), split_problems,
                       lines[-1] if lines else "")


def write_splits(root, class_names, ratios=(0.8, 0.1, 0.1), seed: int = 0, *, overwrite: bool = False,
                 check_images: bool = True, log: Log = print) -> dict[str, list[str]]:
    """Write ImageSets/Main/{train,val,test,trainval}.txt of a VOC root; returns the id lists.

    Every usable image (annotation + readable image) is split with :func:`split_ids`; the
    problems found are logged and the unusable ids left out. Existing split files are kept
    unless ``overwrite`` (VOC ships official splits; replacing them by accident would make
    results incomparable). Logs a table of images and boxes per class per split.
    """
    names = _class_list(class_names)
    (root,) = _roots([root])
    ratios = normalize_ratios(ratios)
    main = root / "ImageSets" / "Main"
    targets = [main / f"{s}.txt" for s in list(ratios) + (["trainval"] if {"train", "val"} <= set(ratios) else [])]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise DatasetError(f"split files already exist: {', '.join(existing)} (pass --overwrite to replace them)")
    records = load_voc(root, None, names, check_images=check_images, log=log)
    by_id = {r.image_id: r for r in records}
    parts = split_ids(by_id, ratios, seed)
    main.mkdir(parents=True, exist_ok=True)
    for name, ids in parts.items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    if log is not None:
        log(f"wrote {', '.join(str(main / f'{n}.txt') for n in parts)} (ratios {ratios}, seed {seed})")
        log(format_split_table({n: [by_id[i] for i in ids] for n, ids in parts.items()}, names))
    return parts
