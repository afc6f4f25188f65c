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

from utils.data.voc import (SPLIT_FILES, DatasetError, LoadReport, Log, ReportLog, VocRecord, _class_list,
                            _flat_entries, _load_entries, _roots, _voc_entries, load_voc, normalize_ratios,
                            nearest_class, read_split_file, split_ids)

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
    log = ReportLog()  # keeps the load's own report (its counts feed the teachability check)
    records = spec.load(None, check_images=check_images, log=log)
    lines = log.lines
    report = log.reports[-1] if log.reports else LoadReport(spec.describe())
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


# ----------------------------------------------------------------------------- teachability

# Thresholds of :func:`teachability`.
ANCHOR_IOU_MIN = 0.25  # a box whose best anchor shape IoU is under this fits no anchor
ANCHOR_WARN_SHARE = 0.10  # warn when more than this share of the boxes fits no anchor
UNKNOWN_FATAL_SHARE = 0.5  # fatal when more than this share of the boxes is dropped as unknown classes
DEFAULT_ANCHORS_OUT = "model_data/my_anchors.txt"


@dataclasses.dataclass
class Finding:
    """One teachability finding: ``fatal`` (the data cannot teach anything) or a warning."""
    fatal: bool
    kind: str  # unknown class, unknown majority, no box, class without box, anchor fit, all boxes dropped
    message: str

    def line(self) -> str:
        return f"{'fatal' if self.fatal else 'warning'}: {self.message}"


@dataclasses.dataclass
class Findings:
    """The findings of :func:`teachability` about ``where`` (e.g. "the training split")."""
    items: list
    where: str = "the training split"

    @property
    def fatal(self) -> list:
        return [f for f in self.items if f.fatal]

    @property
    def warnings(self) -> list:
        return [f for f in self.items if not f.fatal]

    def lines(self) -> list[str]:
        return [f.line() for f in self.items]

    def format(self) -> str:
        """A heading line, then one line per finding (fatal ones first)."""
        if not self.items:
            return f"teachability of {self.where}: no finding"
        head = f"teachability of {self.where}: {len(self.fatal)} fatal, {len(self.warnings)} warning(s)"
        if self.fatal:
            head += " — the data cannot teach anything as it is"
        return "\n".join([head] + [f"  {f.line()}" for f in self.fatal + self.warnings])


def anchor_fit(records: Sequence[VocRecord], anchors, input_hw) -> dict:
    """How the non-difficult boxes fit the anchors at ``input_hw``: boxes letterboxed to the
    input as utils.data.anchors.box_shapes does, shape IoU (utils.boxes.wh_iou) with the best
    anchor. Returns {"boxes", "poor" (best IoU < ANCHOR_IOU_MIN), "smaller", "larger" (of the
    poor ones: smaller / larger in area than their best anchor), "share", "mean_best_iou"}."""
    from utils.boxes import wh_iou
    from utils.data.anchors import box_shapes

    wh = box_shapes(records, tuple(input_hw))
    anchors = np.asarray(anchors, np.float32).reshape(-1, 2)
    if not len(wh):
        return {"boxes": 0, "poor": 0, "smaller": 0, "larger": 0, "share": 0.0, "mean_best_iou": float("nan")}
    iou = wh_iou(wh, anchors)
    best = iou.max(axis=1)
    poor = best < ANCHOR_IOU_MIN
    smaller = poor & (wh.prod(axis=1) < anchors[iou.argmax(axis=1)].prod(axis=1))
    return {"boxes": int(len(wh)), "poor": int(poor.sum()), "smaller": int(smaller.sum()),
            "larger": int((poor & ~smaller).sum()), "share": float(poor.mean()), "mean_best_iou": float(best.mean())}


def anchors_command(args=None, input_hw=(416, 416), *, split: str | None = None, out: str = DEFAULT_ANCHORS_OUT) -> str:
    """The ``python -m utils.data.anchors`` command that fits anchors to the dataset the data
    options of ``args`` (utils.data.formats.add_data_arguments) name, at ``input_hw``; with
    ``split`` (and args.split_ratios / args.seed when not the defaults) for a training split."""
    import shlex

    def opt(name):
        return getattr(args, name, None) if args is not None else None

    parts = ["python", "-m", "utils.data.anchors"]
    if opt("root"):
        parts += ["--root", *map(str, opt("root"))]
    for name in ("data", "format", "images", "annotations", "classes"):
        if opt(name):
            parts += [f"--{name}", str(opt(name))]
    if not any(opt(n) for n in ("root", "data", "images", "annotations")):
        parts += ["--data", "PATH"]
    if split not in (None, "train"):
        parts += ["--split", split]
    ratios = opt("split_ratios")
    if split is not None and ratios and any(abs(float(a) - b) > 1e-9 for a, b in zip(ratios, (0.8, 0.1, 0.1))):
        parts += ["--split-ratios", *(f"{float(r):g}" for r in ratios)]
    if split is not None and opt("seed"):
        parts += ["--seed", str(opt("seed"))]
    h, w = (int(v) for v in input_hw)
    parts += ["--input-size", str(h) if h == w else f"{h}x{w}", "--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def _names(names: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def teachability(train_records: Sequence[VocRecord], class_names, anchors, input_hw,
                 load_report: LoadReport | None = None, *, where: str = "the training split",
                 command: str | None = None, anchors_path: str | None = None,
                 anchors_out: str = DEFAULT_ANCHORS_OUT) -> Findings:
    """Why a model trained on ``train_records`` would find nothing, before it trains.

    Findings, one line each: class names of the annotations not in the class list, with the
    nearest class-list name and the boxes dropped (needs ``load_report``, the LoadReport of
    the load that made the records, e.g. through utils.data.voc.ReportLog); classes of the
    class list without a (non-difficult) box; the share of boxes that fit no anchor at
    ``input_hw`` (best shape IoU < ANCHOR_IOU_MIN, see :func:`anchor_fit`) with ``command``,
    the utils.data.anchors command that writes anchors fitted to the data to ``anchors_out``
    (:func:`anchors_command`; ``anchors_path`` names the anchors checked);
    images whose boxes were all dropped. Fatal: no usable box at all; a class without a box;
    more than UNKNOWN_FATAL_SHARE of the boxes dropped as unknown classes. The rest warn.
    """
    names = _class_list(class_names)
    items: list[Finding] = []
    labels = [np.asarray(r.labels).reshape(-1) for r in train_records]
    usable = [lab[~np.asarray(r.difficult, bool).reshape(-1)] if r.difficult is not None and len(r.difficult)
              else lab for r, lab in zip(train_records, labels)]
    all_labels = np.concatenate(usable) if usable else np.zeros(0, np.int64)
    per_class = np.bincount(all_labels.astype(np.int64), minlength=len(names)) if len(all_labels) \
        else np.zeros(len(names), np.int64)
    n_difficult = sum(len(lab) for lab in labels) - len(all_labels)

    # class names not in the class list (counts from the load's report)
    unknown = collections.Counter()
    dropped_total = 0
    if load_report is not None:
        unknown.update(load_report.unknown_boxes)
        for name, (boxes, _, _) in load_report.unknown.items():
            unknown[name] = max(unknown[name], boxes)
        dropped_total = sum(load_report.boxes_dropped.values())
    annotated = sum(len(lab) for lab in labels) + dropped_total
    for name, n in unknown.most_common():
        hint = nearest_class(name, names)
        items.append(Finding(False, "unknown class",
                             f"class name {name!r} in the annotations is not in the class list: {n} box(es) dropped"
                             + (f"; did you mean {hint!r}? (rename it in the annotations or the class list)"
                                if hint else "; add it to the class list if the model should learn it")))
    n_unknown = sum(unknown.values())
    if annotated and n_unknown / annotated > UNKNOWN_FATAL_SHARE:
        items.append(Finding(True, "unknown majority",
                             f"most boxes of {where} are dropped as classes not in the class list: {n_unknown} of "
                             f"{annotated} ({100 * n_unknown / annotated:.0f}%)"))

    # no box at all, classes without a box
    if not len(all_labels):
        why = []
        if dropped_total:
            why.append(f"{dropped_total} box(es) dropped")
        if n_difficult:
            why.append(f"{n_difficult} difficult box(es), which training leaves out")
        items.append(Finding(True, "no box", f"no usable box in {where} ({len(train_records)} image(s)"
                             + (": " + ", ".join(why) if why else "") + "): the model would learn that there "
                             "is never anything to find"))
    else:
        missing = [n for n, c in zip(names, per_class) if c == 0]
        if missing:
            items.append(Finding(True, "class without box",
                                 f"{len(missing)} class(es) of the class list have no box in {where}: "
                                 f"{_names(missing)} (the model cannot learn them; fix the class list or the "
                                 "annotations)"))

    # boxes that fit no anchor
    if anchors is not None and len(all_labels):
        fit = anchor_fit(train_records, anchors, input_hw)
        if fit["boxes"] and fit["share"] > ANCHOR_WARN_SHARE:
            h, w = (int(v) for v in input_hw)
            sides = ", ".join(s for s in (f"{fit['smaller']} smaller" if fit["smaller"] else "",
                                          f"{fit['larger']} larger" if fit["larger"] else "") if s)
            src = f" of {anchors_path}" if anchors_path else ""
            cmd = command or anchors_command(None, input_hw, out=anchors_out)
            items.append(Finding(False, "anchor fit",
                                 f"{100 * fit['share']:.0f}% of the boxes ({fit['poor']} of {fit['boxes']}; {sides}) "
                                 f"fit no anchor{src} at {h}x{w} (best anchor shape IoU < {ANCHOR_IOU_MIN:g}); fit "
                                 f"anchors to the data: {cmd} and train with --anchors {anchors_out}"))

    # images whose boxes were all dropped
    if load_report is not None and load_report.dropped_in:
        kept = {r.image_path: len(lab) for r, lab in zip(train_records, labels)}
        lost = [p for p in load_report.dropped_in if kept.get(p) == 0]
        if lost:
            items.append(Finding(False, "all boxes dropped",
                                 f"{len(lost)} image(s) lost every box to the problems above and train as images "
                                 f"with nothing to find (first: {lost[0]})"))
    return Findings(items, where)
