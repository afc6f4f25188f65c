"""Shared helpers of the data tests: tiny VOC roots written into tmp_path.

Kept apart from _helpers.py, which imports Keras (and TensorFlow, seconds of start-up) that
the data-pipeline tests do not need.
"""
import pathlib

import cv2
import numpy as np
from PIL import Image


def voc_xml(objects=(), size=(64, 48), filename="x.jpg") -> str:
    """objects: (name, (xmin, ymin, xmax, ymax), difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    sz = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    return f"<annotation><filename>{filename}</filename>{sz}{objs}</annotation>"


def write_jpg(path, w=64, h=48, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, quality=95)


def make_root(root: pathlib.Path, items: dict, split="train", image_sizes=None):
    """items: id -> xml text (None: no XML); images written 64x48 unless image_sizes[id] (None: no image)."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, xml in items.items():
        if xml is not None:
            (root / "Annotations" / f"{i}.xml").write_text(xml)
        size = (image_sizes or {}).get(i, (64, 48))
        if size is not None:
            write_jpg(root / "JPEGImages" / f"{i}.jpg", *size)
    if split:
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
    return root


def random_rgb(seed, h, w):
    """A seeded (h, w, 3) uint8 RGB noise image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb(path, rgb):
    """Write an RGB array with OpenCV (BGR on disk); returns the path."""
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def make_source_folder(d):
    """A predict.py source folder: b.png (120x160), a.jpg (90x70), a corrupt JPEG, a text file."""
    write_rgb(d / "b.png", random_rgb(1, 120, 160))
    write_rgb(d / "a.jpg", random_rgb(2, 90, 70))
    (d / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("ignored")
    return d


def demo_copies(base, num_images=24, seed=0):
    """The demo set (a VOC root with train/val/test split files) and its COCO and YOLO copies made
    by utils.data.convert: {"voc", "coco", "yolo": paths, "classes": the class-list file}."""
    from utils.data.convert import convert
    from utils.data.demo_data import make_demo_dataset

    base = pathlib.Path(base)
    voc = make_demo_dataset(base / "voc", num_images=num_images, seed=seed)
    classes = voc / "demo_classes.txt"
    for fmt in ("coco", "yolo"):
        convert(voc, base / fmt, fmt, class_names=classes, link=True, check_images=False, log=None)
    return {"voc": voc, "coco": base / "coco", "yolo": base / "yolo", "classes": classes}


def flat_set(base, n=20, classes=("cat", "dog")):
    """A flat pair of folders (images/ + xml/) of ``n`` images with one box each: split on the spot."""
    base = pathlib.Path(base)
    for i in range(n):
        write_jpg(base / "images" / f"im{i:02d}.jpg", 96, 64)
        (base / "xml").mkdir(parents=True, exist_ok=True)
        (base / "xml" / f"im{i:02d}.xml").write_text(
            voc_xml([(classes[i % len(classes)], (4 + i, 6, 40 + i, 50), 0)], size=(96, 64)))
    return base / "images", base / "xml"
