"""The one image reader of the project, and the image-file checks built on it.

Used by both flows: the data pipeline (utils/data/voc.py, dataset.py), evaluation and
inference (utils/inference/sources.py). Every function raises :class:`ImageReadError`
naming the file and the problem.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # what dataset loaders look for (the VOC set)
# read_image (PIL) reads these too; predict.py takes them as sources
READABLE_EXTENSIONS = IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")
ALPHA_BACKGROUND = 128  # RGBA images are composited over the letterbox grey


class ImageReadError(ValueError):
    """An image file that cannot be read (missing, corrupt, truncated, unsupported)."""


def read_image(path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB: the one image reader of the project.

    PIL is used (and not ``cv2.imread``) because it raises on truncated files, where OpenCV
    silently returns a grey-filled image, and because it does not apply EXIF orientation:
    the array is in the stored pixel frame, the frame the boxes are in. Modes: grayscale and
    1-bit are replicated to 3 channels; RGBA / LA / palette-with-transparency are
    composited over grey 128 (the letterbox padding value); palette is expanded; 16-bit
    ('I;16', 'I') is scaled to 8 bit by round(v * 255 / 65535); CMYK / YCbCr / LAB / HSV are
    converted by PIL. Raises :class:`ImageReadError` naming the file and the problem.
    """
    if isinstance(path, bytes):  # tf.numpy_function hands strings over as bytes
        path = path.decode("utf-8")
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb8(im, path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated/corrupt data
        raise ImageReadError(f"{path}: corrupt or truncated image ({e})") from None


def _to_rgb8(im: Image.Image, path: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        g = ((v * 255 + 32767) // 65535).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=-1)
    elif mode == "F":
        v = np.asarray(im, dtype=np.float32)
        v = v * 255.0 if np.nanmax(v) <= 1.0 else v
        g = np.clip(np.nan_to_num(v), 0, 255).round().astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=-1)
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        a = rgba[..., 3:4]
        arr = ((rgba[..., :3] * a + ALPHA_BACKGROUND * (255 - a) + 127) // 255).astype(np.uint8)
    else:  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        try:
            arr = np.asarray(im.convert("RGB"))
        except ValueError as e:
            raise ImageReadError(f"{path}: unsupported image mode {mode!r} ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageReadError(f"{path}: could not convert mode {mode!r} to 8-bit RGB (got {arr.shape} {arr.dtype})")
    return np.ascontiguousarray(arr)


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header only (PIL opens lazily, no decode).

    The stored frame: EXIF orientation is not applied. Raises :class:`ImageReadError`.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def verify_image(path) -> None:
    """Check that an image decodes completely; raise :class:`ImageReadError` if not.

    JPEGs are decoded in PIL's draft mode (libjpeg DCT scaling to about 1/8 size), which
    still reads every entropy-coded byte, so truncation is caught at a fraction of the cost
    of a full decode; other formats are decoded fully.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: corrupt or truncated image ({e})") from None


def exif_orientation(path) -> int:
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - only used to enrich a warning
        return 1


def save_image(path, rgb: np.ndarray) -> str:
    """Write an RGB image; the format follows the extension. Raises OSError naming the file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        ok = cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    except cv2.error as exc:  # an extension cv2 has no writer for raises instead of returning False
        raise OSError(f"{path}: could not write the image ({str(exc).strip().splitlines()[-1]})") from None
    if not ok:
        raise OSError(f"{path}: could not write the image")
    return path
