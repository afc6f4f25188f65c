"""Shared helpers of the data tests: tiny VOC roots written into tmp_path.

Kept apart from _helpers.py, which imports Keras (and TensorFlow, seconds of start-up) that
the data-pipeline tests do not need.
"""
import pathlib

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
