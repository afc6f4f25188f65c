"""A small synthetic VOC dataset of coloured shapes, for the offline demo and for tests.

    python -m utils.data.demo_data --out VOCdevkit/demo --num-images 300 --seed 0

Writes the exact VOC layout (Annotations/, JPEGImages/, ImageSets/Main/{train,val,test,
trainval}.txt) plus demo_classes.txt (the same list as model_data/demo_classes.txt) and
demo_manifest.json, written last, which marks the folder complete: a second call with the
same arguments reuses it. Four classes with distinct shapes AND colours (red circle, green
square, blue triangle, yellow star; shapes are stretched to aspect 3:4..4:3 and the polygons
rotated) on muted textured backgrounds (noise, gradients, stripes, blobs), 0 to 6 objects an
image (about 8 % negatives), object sizes from 12 px to about half the short side, objects
partly occluded by objects of other classes (each keeps at least 55 % of its pixels; objects
of one class never touch, so same-colour shapes never merge) or cut by the border, image sides
240..480 px unless ``image_size`` fixes them.

Boxes are the extents of the *visible* pixels of each shape, written as VOC 1-based inclusive
pixels (xmin = first column + 1, xmax = last column + 1), as labelImg and the VOC devkit
write them. Deterministic: image i depends only on (seed, i), so the same arguments give the
same bytes, and a smaller dataset is a prefix of a larger one with the same seed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

from utils.data.voc import split_ids

DEMO_CLASSES = ("circle", "square", "triangle", "star")
# RGB, saturated, far from the muted backgrounds (which stay within ~45 of grey).
DEMO_COLOURS = {"circle": (225, 40, 40), "square": (40, 185, 60), "triangle": (45, 85, 235), "star": (245, 205, 30)}
DEMO_RATIOS = {"train": 0.7, "val": 0.2, "test": 0.1}
SIZE_RANGE = (240, 480)
MIN_VISIBLE = 0.55
_VERSION = 1


def _noise(rng: np.random.Generator, shape, amplitude) -> np.ndarray:
    """Uniform noise in [-amplitude, amplitude], float32 (uint8 draws: ~8x faster than normal)."""
    return rng.integers(0, 256, size=shape, dtype=np.uint8).astype(np.float32) * np.float32(amplitude / 127.5) \
        - np.float32(amplitude)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted (low-saturation) texture, float32 (h, w, 3)."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-18, 18, size=3).astype(np.float32)
    kind = rng.integers(4)
    ang = rng.uniform(0, np.pi)
    along = (np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(ang))
             + np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(ang)))
    if kind == 0:  # blurred noise
        noise = _noise(rng, (h, w), rng.uniform(25, 50))
        lum = cv2.GaussianBlur(noise, (0, 0), rng.uniform(1.0, 3.0))
    elif kind == 1:  # linear gradient
        lum = (along / max(float(along.max()), 1.0) - 0.5) * np.float32(rng.uniform(40, 90))
    elif kind == 2:  # stripes
        lum = np.sin(along * np.float32(2 * np.pi / rng.uniform(8, 40))) * np.float32(rng.uniform(15, 35))
    else:  # large soft blobs
        small = rng.normal(0, 25, size=(rng.integers(3, 8), rng.integers(3, 8))).astype(np.float32)
        lum = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    # muted: every channel is base + lum + a small tint, so saturation stays below ~36
    return (lum[..., None] + np.float32(base)) + tint


def _polygon(cls: str, cx, cy, w, h, theta) -> np.ndarray:
    if cls == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
        theta = 0.0  # an ellipse stays axis-aligned
    elif cls == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif cls == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), -np.sin(t)], 1)
    else:  # star
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(t), -r * np.sin(t)], 1)
    pts = pts * [w / 2, h / 2]
    c, s = math.cos(theta), math.sin(theta)
    pts = pts @ np.array([[c, s], [-s, c]])
    return np.round(pts + [cx, cy]).astype(np.int32)


def render_sample(seed: int, index: int, image_size=None):
    """Image ``index`` of the dataset with ``seed``: (uint8 RGB (H, W, 3), objects).

    ``objects`` is a list of dicts {name, box (VOC 1-based xmin, ymin, xmax, ymax),
    truncated}. ``image_size`` is (width, height), or None for sides in SIZE_RANGE.
    """
    rng = np.random.default_rng([seed, index])
    if image_size is None:
        w, h = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    else:
        w, h = int(image_size[0]), int(image_size[1])
    img = _background(rng, h, w)
    n_obj = 0 if rng.random() < 0.08 else int(rng.choice([1, 1, 2, 2, 3, 3, 4, 4, 5, 6]))
    inst = np.zeros((h, w), np.int32)  # instance id per pixel, 0 = background
    full, visible, names, truncated, rois = [0], [0], [None], [False], [None]
    max_side = 0.5 * min(w, h)
    for _ in range(n_obj):
        for _attempt in range(25):
            name = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
            size = math.exp(rng.uniform(math.log(12), math.log(max_side)))
            aspect = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))
            bw, bh = size * math.sqrt(aspect), size / math.sqrt(aspect)
            if rng.random() < 0.15:  # may be cut by the border
                cx, cy = rng.uniform(-bw / 6, w + bw / 6), rng.uniform(-bh / 6, h + bh / 6)
            else:
                cx, cy = rng.uniform(bw / 2, max(bw / 2, w - bw / 2)), rng.uniform(bh / 2, max(bh / 2, h - bh / 2))
            theta = rng.uniform(-0.35, 0.35) if name == "square" else rng.uniform(-np.pi, np.pi)
            poly = _polygon(name, cx, cy, bw, bh, theta)
            (px0, py0), (px1, py1) = poly.min(0), poly.max(0)
            whole = np.zeros((py1 - py0 + 1, px1 - px0 + 1), np.uint8)  # the shape, uncut
            cv2.fillPoly(whole, [poly - [px0, py0]], 1, lineType=cv2.LINE_8)
            x0, y0, x1, y1 = max(px0, 0), max(py0, 0), min(px1, w - 1), min(py1, h - 1)
            if x0 > x1 or y0 > y1:
                continue
            mask = whole[y0 - py0:y1 - py0 + 1, x0 - px0:x1 - px0 + 1] > 0  # the part inside the image
            area = int(mask.sum())
            if area < 40 or area < 0.65 * whole.sum():  # keep the in-image part a clear majority
                continue
            if any(names[j] == name and x0 <= r[1].stop + 2 and r[1].start <= x1 + 2
                   and y0 <= r[0].stop + 2 and r[0].start <= y1 + 2 for j, r in enumerate(rois) if j):
                continue  # same colour touching would merge into one blob: keep same-class apart
            roi = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            covered = np.bincount(inst[roi][mask], minlength=len(full))
            if any(visible[j] - covered[j] < MIN_VISIBLE * full[j] for j in range(1, len(full))):
                continue
            for j in range(1, len(full)):
                visible[j] -= int(covered[j])
            inst[roi][mask] = len(full)
            full.append(area)
            visible.append(area)
            names.append(name)
            truncated.append(area < whole.sum())
            rois.append(roi)
            colour = np.array(DEMO_COLOURS[name], np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
            img[roi][mask] = colour
            break
    img += _noise(rng, img.shape, rng.uniform(4, 9))
    np.clip(img, 0, 255, out=img)
    img = (img + 0.5).astype(np.uint8)
    objects = []
    for k in range(1, len(full)):
        ys, xs = np.nonzero(inst[rois[k]] == k)
        if len(xs) == 0:
            continue
        ox, oy = rois[k][1].start, rois[k][0].start
        objects.append({"name": names[k], "truncated": bool(truncated[k]),
                        "box": (int(xs.min()) + ox + 1, int(ys.min()) + oy + 1,
                                int(xs.max()) + ox + 1, int(ys.max()) + oy + 1)})
    return img, objects


def _xml(image_id: str, w: int, h: int, objects) -> str:
    parts = [f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             f"\t<source>\n\t\t<database>synthetic shapes (utils/data/demo_data.py)</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
             f"\t<segmented>0</segmented>\n"]
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        parts.append(f"\t<object>\n\t\t<name>{o['name']}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>{int(o['truncated'])}</truncated>\n\t\t<difficult>0</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _manifest(num_images, image_size, seed) -> dict:
    return {"generator": "utils.data.demo_data", "version": _VERSION, "num_images": int(num_images), "seed": int(seed),
            "image_size": None if image_size is None else [int(v) for v in image_size],
            "classes": list(DEMO_CLASSES), "ratios": DEMO_RATIOS}


def _is_complete(out: pathlib.Path, manifest: dict) -> bool:
    try:
        found = json.loads((out / "demo_manifest.json").read_text())
    except (OSError, ValueError):
        return False
    n = manifest["num_images"]
    return (found == manifest and len(list((out / "Annotations").glob("*.xml"))) == n
            and len(list((out / "JPEGImages").glob("*.jpg"))) == n)


def _write(out: pathlib.Path, num_images, image_size, seed, manifest):
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / d).mkdir(parents=True, exist_ok=True)
    ids = [f"demo_{i:05d}" for i in range(num_images)]
    for i, image_id in enumerate(ids):
        img, objects = render_sample(seed, i, image_size)
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {image_id}")
        (out / "JPEGImages" / f"{image_id}.jpg").write_bytes(buf.tobytes())
        (out / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, img.shape[1], img.shape[0], objects))
    for name, part in split_ids(ids, DEMO_RATIOS, seed).items():
        (out / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in part))
    (out / "demo_classes.txt").write_text("".join(f"{c}\n" for c in DEMO_CLASSES))
    (out / "demo_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks completion


def make_demo_dataset(out_dir="VOCdevkit/demo", num_images: int = 300, image_size=None, seed: int = 0) -> pathlib.Path:
    """Write (or reuse) the synthetic demo dataset at ``out_dir``; returns its path.

    ``image_size`` is (width, height) for fixed-size images, or None for varied sides in
    SIZE_RANGE. The dataset is built in a temporary sibling folder and moved into place, so
    an interrupted or concurrent run never leaves a half-written dataset that looks complete.
    A folder holding a complete demo dataset with the same arguments is reused; one holding a
    demo dataset with other arguments is replaced; any other non-empty folder is an error.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 32):
        raise ValueError(f"image_size must be (width, height) with sides >= 32, got {image_size}")
    out = pathlib.Path(out_dir)
    manifest = _manifest(num_images, image_size, seed)
    if _is_complete(out, manifest):
        return out
    if out.exists() and any(out.iterdir()) and not (out / "demo_manifest.json").exists():
        raise FileExistsError(f"{out} exists and is not a demo dataset (no demo_manifest.json); "
                              "refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write(tmp, num_images, image_size, seed, manifest)
        if out.exists():  # an old demo dataset with other arguments, or an empty folder
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_complete(out, manifest):  # a concurrent run won the race with other arguments
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the synthetic shapes VOC dataset used by `train.py --demo`.")
    p.add_argument("--out", default="VOCdevkit/demo", help="output VOC root (default VOCdevkit/demo)")
    p.add_argument("--num-images", type=int, default=300)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="fixed image size (default: sides vary in 240..480)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = make_demo_dataset(a.out, a.num_images, a.image_size, a.seed)
    counts = {s: len((out / "ImageSets" / "Main" / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    print(f"demo dataset at {out}: {a.num_images} images ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
          f"classes {', '.join(DEMO_CLASSES)} (list in {out / 'demo_classes.txt'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
