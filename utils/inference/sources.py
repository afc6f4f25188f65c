"""Inputs and outputs of inference: sources (images, folders, globs, videos, webcams), the
run folder, and the writers (annotated images and videos, JSON lines, VOC XML, crops).

No model code here: utils/inference/predict.py runs the detector and calls these. Images are read
with utils.data.images.read_image (the project's one image reader); video frames with OpenCV's
VideoCapture (BGR, converted to RGB here). Everything in and out of these functions is RGB.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import pathlib
import re
import sys

import cv2
import numpy as np

from utils.data.images import READABLE_EXTENSIONS, ImageReadError, read_image, save_image
from utils.data.voc import write_voc_xml

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
DEFAULT_VIDEO_FPS = 30.0
_GLOB_CHARS = re.compile(r"[*?\[]")


class VideoReadError(ImageReadError):
    """A video file or camera that cannot be opened."""


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """One input: ``kind`` is "image", "video" or "webcam" (``path`` is then the index)."""
    path: str
    kind: str


def _kind_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in READABLE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def resolve_source(source) -> list[SourceItem]:
    """What ``--source`` names, as a list of items in processing order.

    * an integer ("0") -> that webcam;
    * a folder -> its images and videos (by extension, case-insensitive), sorted by name;
      other files are ignored; sub-folders are not searched;
    * a pattern with ``*``, ``?`` or ``[`` -> the matching images and videos, sorted
      (``**`` recurses);
    * a file -> an image or a video by its extension; any other extension is read as an
      image (an unreadable one is reported and skipped when it is read).

    Raises FileNotFoundError naming the source when it does not exist or matches nothing,
    ValueError when a folder or pattern holds no image or video.
    """
    spec = os.fspath(source) if not isinstance(source, int) else str(source)
    if re.fullmatch(r"\d+", spec.strip()) and not os.path.exists(spec):
        return [SourceItem(spec.strip(), "webcam")]
    if os.path.isdir(spec):
        files = sorted(str(p) for p in pathlib.Path(spec).iterdir() if p.is_file())
        items = [SourceItem(f, k) for f in files if (k := _kind_of(f))]
        if not items:
            raise ValueError(f"source folder {spec} holds no images or videos "
                             f"(extensions: {', '.join(READABLE_EXTENSIONS + VIDEO_EXTENSIONS)})")
        return items
    if os.path.isfile(spec):
        return [SourceItem(spec, _kind_of(spec) or "image")]
    if _GLOB_CHARS.search(spec):
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"source not found: no file matches {spec}")
        items = [SourceItem(f, k) for f in matches if (k := _kind_of(f))]
        if not items:
            raise ValueError(f"source pattern {spec} matches {len(matches)} file(s) but no images or videos")
        return items
    raise FileNotFoundError(f"source not found: {spec}")


# ----------------------------------------------------------------------------- video

class VideoReader:
    """Frames of a video file or webcam as uint8 RGB arrays (``with`` closes it).

    ``fps`` falls back to 30 when the container does not say (``fps_known`` is then False);
    ``frame_count`` is 0 when unknown (webcams, some streams).
    """

    def __init__(self, source: str, webcam: bool = False):
        self.name = f"webcam {source}" if webcam else os.fspath(source)
        self.cap = cv2.VideoCapture(int(source) if webcam else os.fspath(source))
        if not self.cap.isOpened():
            self.cap.release()
            what = "camera could not be opened" if webcam else "not a readable video (cannot open it)"
            raise VideoReadError(f"{self.name}: {what}")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps_known = math.isfinite(fps) and fps > 0
        self.fps = fps if self.fps_known else DEFAULT_VIDEO_FPS
        self.frame_count = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)

    def __iter__(self):
        while True:
            ok, frame = self.cap.read()
            if not ok or frame is None:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self):
        self.cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoWriter:
    """An .mp4 (MPEG-4 Part 2, fourcc ``mp4v``) written frame by frame from RGB arrays.

    OpenCV's VideoWriter is used because it ships with the cv2 wheel (no ffmpeg binary to
    find); the size is fixed by the first frame. Raises OSError naming the file when the
    writer cannot be opened.
    """

    def __init__(self, path, fps: float):
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.writer = None
        self.frames = 0

    def write(self, rgb: np.ndarray):
        if self.writer is None:
            h, w = rgb.shape[:2]
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: cannot open a video writer (mp4v, {w}x{h} at {self.fps:g} fps)")
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- images

def iter_images(items):
    """(item, image or None, error message or None) for the image items, read one by one."""
    for item in items:
        try:
            yield item, read_image(item.path), None
        except ImageReadError as exc:
            yield item, None, str(exc)


# ----------------------------------------------------------------------------- run folder

def increment_dir(path, exist_ok: bool = False) -> pathlib.Path:
    """``path`` itself if it is free (or ``exist_ok``), else the first free ``path2``, ``path3``...

    The folder is created. The scheme is ultralytics' (runs/predict/exp, exp2, ...).
    """
    path = pathlib.Path(path)
    if not exist_ok and path.exists():
        n = 2
        while (path.parent / f"{path.name}{n}").exists():
            n += 1
        path = path.parent / f"{path.name}{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class OutputNames:
    """Unique output stems for the sources of one run (``a/x.jpg`` and ``b/x.jpg`` ->
    ``x``, ``x_2``), so nothing is overwritten within a run."""

    def __init__(self):
        self.used: set[str] = set()

    def stem(self, source_path: str) -> str:
        base = os.path.splitext(os.path.basename(os.fspath(source_path)))[0] or "image"
        stem, n = base, 2
        while stem in self.used:
            stem, n = f"{base}_{n}", n + 1
        self.used.add(stem)
        return stem


def safe_name(text: str) -> str:
    """A class name as a folder name (path separators and odd characters become ``_``)."""
    return re.sub(r"[^\w.+-]+", "_", str(text)).strip("._") or "_"


# ----------------------------------------------------------------------------- records and writers

def detection_record(source, frame: int, width: int, height: int, det: dict, class_names) -> dict:
    """One JSON-lines record: the image (or frame) and its detections in source pixels."""
    dets = []
    for box, score, cls in zip(det["boxes"], det["scores"], det["classes"]):
        c = int(cls)
        dets.append({"class_id": c,
                     "class_name": class_names[c] if 0 <= c < len(class_names) else str(c),
                     "score": round(float(score), 5),
                     "box": [round(float(v), 2) for v in box]})
    return {"source": os.fspath(source), "frame": int(frame), "width": int(width), "height": int(height),
            "detections": dets}


class JsonLinesWriter:
    """Append one JSON object per line to a file (opened on the first record)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.file = None
        self.lines = 0

    def write(self, record: dict):
        if self.file is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.file = open(self.path, "w", encoding="utf-8")
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()  # a killed run keeps every finished line
        self.lines += 1

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def save_crops(image: np.ndarray, det: dict, class_names, crops_dir, stem: str) -> list[str]:
    """Save each detection as its own image: ``crops_dir/<class>/<stem>_<k>.jpg``.

    The crop is the source image's pixels that the box touches (floor of the top-left,
    ceil of the bottom-right), without drawing. Boxes narrower than a pixel are skipped.
    """
    h, w = image.shape[:2]
    paths = []
    for k, (box, cls) in enumerate(zip(det["boxes"], det["classes"])):
        x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
        x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            continue
        c = int(cls)
        name = safe_name(class_names[c] if 0 <= c < len(class_names) else str(c))
        paths.append(save_image(os.path.join(os.fspath(crops_dir), name, f"{stem}_{k}.jpg"), image[y1:y2, x1:x2]))
    return paths


def save_voc_prediction(xml_path, image_path, det: dict, image_hw, class_names) -> str:
    """The detections of one image as a VOC annotation (to seed labelling tools)."""
    return write_voc_xml(xml_path, image_path, image_hw[1], image_hw[0], det["boxes"], det["classes"], class_names)


# ----------------------------------------------------------------------------- display

def display_available() -> tuple[bool, str]:
    """(True, "") when cv2.imshow can open a window here, else (False, why)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    try:
        cv2.namedWindow("predict.py probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("predict.py probe")
    except cv2.error:
        return False, "this OpenCV build has no GUI support (opencv-python-headless)"
    return True, ""


class Display:
    """cv2.imshow when a display exists; otherwise one warning and nothing more."""

    def __init__(self, enabled: bool, log=print):
        self.enabled = False
        if enabled:
            self.enabled, why = display_available()
            if not self.enabled:
                log(f"warning: --show ignored: {why}")

    def show(self, title: str, rgb: np.ndarray, wait_ms: int = 1) -> bool:
        """Show a frame; returns False when the user pressed q or Esc."""
        if not self.enabled:
            return True
        cv2.imshow(title, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(wait_ms) & 0xFF) not in (ord("q"), 27)

    def close(self):
        if self.enabled:
            cv2.destroyAllWindows()
