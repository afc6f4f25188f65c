"""Inference runs behind predict.py: detect over a
source (images, folders, globs, videos, webcams), and the fps and heatmap modes.

    run_predict(detector, items, save_dir, options)   -> RunSummary
    run_heatmap(detector, items, save_dir)            -> RunSummary
    measure_latency(detector, image, runs)            -> per-step times; format_latency_table

Every detection goes through the Detector's own steps (preprocess -> forward ->
postprocess -> finish, utils/inference/detector.py), the same steps fps mode times, so what is
measured is what predict mode runs. A class filter (--classes) is applied to the raw heads
before NMS: the logits of the other classes are pushed to -1e4 (probability 0, below any
threshold), so the kept classes get their full --max-det and NMS never sees the others.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import statistics
import sys
from typing import Callable

import numpy as np

from utils.data.images import save_image
from utils.inference.sources import Display, JsonLinesWriter, OutputNames, SourceItem, VideoReadError, VideoReader, VideoWriter, detection_record, iter_images, save_crops, save_voc_prediction

_DROP_LOGIT = -1e4  # sigmoid(-1e4) == 0.0 in float32


# ----------------------------------------------------------------------------- classes

def parse_class_filter(values, class_names) -> list[int]:
    """``--classes`` values (names or indices, also comma-separated) -> sorted class ids.

    Raises ValueError naming an unknown class and listing the valid ones.
    """
    ids = set()
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part in class_names:
                ids.add(class_names.index(part))
            elif part.lstrip("-").isdigit() and 0 <= int(part) < len(class_names):
                ids.add(int(part))
            else:
                shown = ", ".join(f"{i}={n}" for i, n in enumerate(class_names[:30]))
                more = " ..." if len(class_names) > 30 else ""
                raise ValueError(f"--classes: {part!r} is neither a class name nor an id of this model "
                                 f"({shown}{more})")
    return sorted(ids)


def mask_classes(heads, keep_ids, num_classes: int, anchors_per_scale: int = 3):
    """Raw heads with the class logits of every class not in ``keep_ids`` set to -1e4."""
    import tensorflow as tf
    keep = np.zeros(num_classes, bool)
    keep[list(keep_ids)] = True
    per_anchor = np.concatenate([np.zeros(5, np.float32), np.where(keep, 0.0, _DROP_LOGIT).astype(np.float32)])
    bias = tf.constant(np.tile(per_anchor, anchors_per_scale))
    return [tf.cast(h, tf.float32) + bias for h in heads]


# ----------------------------------------------------------------------------- threshold

DEFAULT_CONF = 0.25


def resolve_conf(conf, meta) -> tuple[float, str]:
    """predict.py's score threshold and the line that says where it comes from.

    ``conf`` given (--conf): it is used. Otherwise the model's stored F1-best score
    (``meta["conf_threshold"]``, written at the end of training, copied into exports) when
    there is a valid one, else 0.25. Returns ``(threshold, line)``.
    """
    if conf is not None:
        return float(conf), f"conf {float(conf):g}: from --conf"
    stored = (meta or {}).get("conf_threshold")
    if isinstance(stored, dict):
        score, source = stored.get("score"), stored.get("source") or "stored threshold"
    else:
        score, source = stored, "stored threshold"
    try:
        score = float(score)
    except (TypeError, ValueError):
        score = None
    if score is not None and 0.0 < score <= 1.0:
        return score, f"conf {score:.3g}: the {source}; --conf overrides"
    return DEFAULT_CONF, (f"conf {DEFAULT_CONF:g}: the default (the model stores no F1-best score; "
                          "eval_map.py prints it); --conf overrides")


# ----------------------------------------------------------------------------- detection

@dataclasses.dataclass
class PredictOptions:
    """What run_predict does; the fields mirror predict.py's options."""
    conf: float = DEFAULT_CONF  # predict.py passes resolve_conf's: the model's F1-best score by default
    iou: float = 0.45
    max_det: int = 100
    nms: str = "iou"
    classes: list | None = None  # class ids to keep (None: all)
    save_images: bool = True  # annotated images / videos
    save_json: bool = True  # predictions.jsonl
    save_xml: bool = False  # Annotations/<stem>.xml per image
    save_crops: bool = False  # crops/<class>/<stem>_<k>.jpg
    count: bool = False  # per-class counts drawn and printed
    show: bool = False


def detect(detector, images, options: PredictOptions):
    """Detections (source pixels) for a list of RGB uint8 images with the run's options."""
    batch, letterboxes = detector.preprocess(images)
    heads = detector.forward(batch)
    if options.classes is not None:
        heads = mask_classes(heads, options.classes, detector.num_classes)
    padded = detector.postprocess(heads, options.conf, options.iou, options.max_det, options.nms)
    return detector.finish(padded, letterboxes)


@dataclasses.dataclass
class RunSummary:
    images: int = 0
    frames: int = 0  # video / webcam frames
    detections: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # messages naming the files
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # class id -> n
    outputs: list = dataclasses.field(default_factory=list)  # annotated images / videos written
    crops: int = 0
    xml: int = 0
    jsonl: str | None = None

    def line(self, detections: bool = True) -> str:
        """"N images, N video frames, N detections, N skipped (first problems)"."""
        text = (f"{self.images} image{'s' if self.images != 1 else ''}, {self.frames} video frame"
                f"{'s' if self.frames != 1 else ''}, "
                + (f"{self.detections} detection{'s' if self.detections != 1 else ''}, " if detections else "")
                + f"{len(self.skipped)} skipped")
        if self.skipped:
            text += " (" + "; ".join(self.skipped[:5]) + (f"; +{len(self.skipped) - 5} more" if len(self.skipped) > 5 else "") + ")"
        return text


def _bar(total, desc, unit):
    from tqdm import tqdm
    return tqdm(total=total or None, desc=desc, unit=unit, disable=None, file=sys.stderr, leave=False)


def _say(message: str, log=None):
    """Report a line without breaking an active progress bar (stderr, or ``log``'s stream)."""
    from tqdm import tqdm
    if log is None or log is print:
        tqdm.write(message, file=sys.stderr if log is None else sys.stdout)
    else:
        log(message)


def format_counts(counts, class_names) -> str:
    items = sorted(((int(k), int(v)) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{v} {class_names[k] if 0 <= k < len(class_names) else k}" for k, v in items) or "nothing"


class _Renderer:
    """Per-frame outputs of predict mode: JSON line, XML, crops, counts, the drawn picture."""

    def __init__(self, detector, save_dir, options: PredictOptions, summary: RunSummary, log):
        from utils.draw import class_colors
        self.detector, self.options, self.summary, self.log = detector, options, summary, log
        self.save_dir = os.fspath(save_dir)
        self.names = detector.class_names
        self.colors = class_colors(len(self.names))
        self.json = JsonLinesWriter(os.path.join(self.save_dir, "predictions.jsonl")) if options.save_json else None

    def __call__(self, image, source, frame, stem, is_image):
        from utils.draw import draw_counts, draw_detections
        o, s = self.options, self.summary
        det = detect(self.detector, [image], o)[0]
        s.detections += len(det["scores"])
        frame_counts = collections.Counter(int(c) for c in det["classes"])
        s.counts.update(frame_counts)
        if self.json is not None:
            self.json.write(detection_record(source, frame, image.shape[1], image.shape[0], det, self.names))
        if o.save_xml and is_image:
            save_voc_prediction(os.path.join(self.save_dir, "Annotations", f"{stem}.xml"), source, det,
                                image.shape[:2], self.names)
            s.xml += 1
        if o.save_crops:
            crop_stem = stem if is_image else f"{stem}_{frame:06d}"
            s.crops += len(save_crops(image, det, self.names, os.path.join(self.save_dir, "crops"), crop_stem))
        if o.count and is_image and self.log is not None:
            _say(f"{source}: {format_counts(frame_counts, self.names)}", self.log)
        if not (o.save_images or o.show):
            return None
        drawn = draw_detections(image, det["boxes"], det["classes"], det["scores"], self.names, self.colors)
        if o.count:
            drawn = draw_counts(drawn, frame_counts, self.names, self.colors)
        return drawn

    def close(self):
        if self.json is not None:
            self.json.close()
            if self.json.lines:
                self.summary.jsonl = self.json.path


def _run(items, save_dir, render, summary, show, image_suffix=None, save_videos=False):
    """The loop shared by predict and heatmap modes: images first, then videos and webcams.

    ``render(image, source, frame, stem, is_image)`` returns the picture to show and save
    (or None); images are saved as ``<stem><image_suffix(path)>`` when ``image_suffix`` is
    given, videos as ``<stem>.mp4`` when ``save_videos``.
    """
    names = OutputNames()
    display = Display(show, log=_say)
    images = [it for it in items if it.kind == "image"]
    try:
        bar = _bar(len(images), "images", "img") if len(images) > 1 else None
        for item, image, error in iter_images(images):
            if bar is not None:
                bar.update(1)
            if image is None:
                _say(f"skipped {error}")
                summary.skipped.append(error)
                continue
            stem = names.stem(item.path)
            picture = render(image, item.path, 0, stem, True)
            summary.images += 1
            if picture is None:
                continue
            if image_suffix is not None:
                summary.outputs.append(save_image(os.path.join(save_dir, stem + image_suffix(item.path)), picture))
            if not display.show("predict.py", picture, wait_ms=0):
                return summary
        if bar is not None:
            bar.close()
        for item in (it for it in items if it.kind != "image"):
            if not _run_video(item, render, summary, names, save_dir if save_videos else None, display):
                break
    finally:
        display.close()
    return summary


def _run_video(item, render, summary, names, save_dir, display) -> bool:
    """One video or webcam; returns False when the user asked to stop."""
    webcam = item.kind == "webcam"
    try:
        reader = VideoReader(item.path, webcam=webcam)
    except VideoReadError as exc:
        _say(f"skipped {exc}")
        summary.skipped.append(str(exc))
        return True
    stem = names.stem(f"webcam{item.path}" if webcam else item.path)
    if not reader.fps_known:
        _say(f"warning: {reader.name}: frame rate unknown, writing {reader.fps:g} fps")
    writer = VideoWriter(os.path.join(save_dir, stem + ".mp4"), reader.fps) if save_dir else None
    bar = _bar(reader.frame_count, os.path.basename(reader.name), "frame")
    keep_going = True
    try:
        with reader:
            for index, frame in enumerate(reader):
                picture = render(frame, reader.name if webcam else item.path, index, stem, False)
                summary.frames += 1
                bar.update(1)
                if picture is None:
                    continue
                if writer is not None:
                    writer.write(picture)
                if not display.show(reader.name, picture, wait_ms=1):
                    keep_going = False
                    break
    except KeyboardInterrupt:  # a webcam runs until interrupted: keep what was written
        _say(f"{reader.name}: interrupted")
        keep_going = False
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            if writer.frames:
                summary.outputs.append(writer.path)
    return keep_going


def _same_suffix(path):
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff") else ".jpg"


def run_predict(detector, items: list[SourceItem], save_dir, options: PredictOptions = None,
                log: Callable[[str], None] | None = print) -> RunSummary:
    """Detect over ``items`` (from utils.inference.sources.resolve_source) and write the outputs.

    Into ``save_dir``: annotated images (same name and format as the source) and videos
    (``<name>.mp4``, the source's fps), ``predictions.jsonl`` (one line per image or frame),
    with options ``Annotations/<name>.xml`` (images) and ``crops/<class>/<name>_<k>.jpg``.
    Unreadable files are reported by name (on stderr) and skipped. With ``options.count``
    the per-class counts are drawn, and logged per image and in total.
    """
    options = options or PredictOptions()
    summary = RunSummary()
    renderer = _Renderer(detector, save_dir, options, summary, log)
    try:
        _run(items, os.fspath(save_dir), renderer, summary, options.show,
             _same_suffix if options.save_images else None, save_videos=options.save_images)
    finally:
        renderer.close()
    if options.count and log is not None:
        log(f"counts: {format_counts(summary.counts, detector.class_names)}")
    return summary


# ----------------------------------------------------------------------------- heatmap

def run_heatmap(detector, items: list[SourceItem], save_dir, show: bool = False, alpha: float = 0.5) -> RunSummary:
    """Objectness heatmaps (utils/inference/heatmap.py) of each image, laid over it, as PNG files.

    Per image: ``<name>_heatmap.png`` (max over the scales) and ``<name>_heatmap_s32.png``,
    ``_s16``, ``_s8`` (one per output scale), each the size of the image. Videos and
    webcams get ``<name>.mp4`` of the combined map.
    """
    from utils.inference.heatmap import combine_maps, objectness_maps, overlay_heatmap
    summary = RunSummary()
    save_dir = os.fspath(save_dir)

    def render(image, source, frame, stem, is_image):
        batch, letterboxes = detector.preprocess([image])
        heads = detector.forward(batch)
        maps = objectness_maps(heads, detector.anchors, detector.input_hw, detector.num_classes, letterboxes)[0]
        combined = overlay_heatmap(image, combine_maps(maps), alpha)
        if is_image:
            for stride, heat in maps.items():
                summary.outputs.append(save_image(os.path.join(save_dir, f"{stem}_heatmap_s{stride}.png"),
                                                  overlay_heatmap(image, heat, alpha)))
            summary.outputs.append(save_image(os.path.join(save_dir, f"{stem}_heatmap.png"), combined))
        return combined

    return _run(items, save_dir, render, summary, show, image_suffix=None, save_videos=True)


# ----------------------------------------------------------------------------- fps

LATENCY_STEPS = (("preprocess", "pre-processing"), ("model", "model"), ("postprocess", "post-processing"),
                 ("total", "total"))


def measure_latency(detector, image: np.ndarray, runs: int = 50, warmup: int = 5, options: PredictOptions = None):
    """Time ``runs`` detections of one image, split into pre-processing (letterbox), model
    (forward pass, waited for) and post-processing (decode + NMS + unletterbox), with
    Detector.detect_timed. ``warmup`` untimed runs first (tracing, caches). A class filter
    in ``options`` is not applied here (predict mode adds it as one add per head).

    Returns {"preprocess": [s, ...], "model": [...], "postprocess": [...], "total": [...]}.
    """
    options = options or PredictOptions()
    if runs < 1:
        raise ValueError(f"the number of timed runs must be >= 1, got {runs}")
    times = {k: [] for k, _ in LATENCY_STEPS}
    for i in range(int(warmup) + int(runs)):
        _, t = detector.detect_timed([image], options.conf, options.iou, options.max_det, options.nms)
        if i >= warmup:
            for k in times:
                times[k].append(t[k])
    return times


def format_latency_table(times: dict, title: str = "") -> str:
    """Mean and median per step in milliseconds, and the frame rate they imply."""
    rows = [f"{'step':<16}{'mean ms':>10}{'median ms':>11}"]
    for key, label in LATENCY_STEPS:
        values = times[key]
        rows.append(f"{label:<16}{1000 * statistics.fmean(values):>10.2f}{1000 * statistics.median(values):>11.2f}")
    total_mean, total_median = statistics.fmean(times["total"]), statistics.median(times["total"])
    rows.append(f"{len(times['total'])} runs: {1 / total_mean:.1f} FPS from the mean total, "
                f"{1 / total_median:.1f} FPS from the median")
    return "\n".join(([title] if title else []) + rows)


def first_image(items: list[SourceItem]):
    """(path, RGB image) of the first readable image or video frame among ``items``.

    Raises ValueError when none can be read (each problem named)."""
    problems = []
    for item in items:
        if item.kind == "image":
            for _, image, error in iter_images([item]):
                if image is not None:
                    return item.path, image
                problems.append(error)
        else:
            try:
                with VideoReader(item.path, webcam=item.kind == "webcam") as reader:
                    for frame in reader:
                        return reader.name, frame
                problems.append(f"{reader.name}: no frame could be read")
            except VideoReadError as exc:
                problems.append(str(exc))
    raise ValueError("no readable image in the source: " + "; ".join(problems[:3]))
