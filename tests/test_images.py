"""utils/data/images.py: the one image reader (modes, 16 bit, EXIF, errors) and the header /
decode checks image_size, verify_image and exif_orientation."""
import re

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from _data_helpers import write_jpg
from utils.data.images import (ALPHA_BACKGROUND, IMAGE_EXTENSIONS, READABLE_EXTENSIONS, ImageReadError,
                               exif_orientation, image_size, read_image, verify_image)


def test_read_image_grayscale_and_rgb(tmp_path):
    g = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], g) for c in range(3))
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_image(str(tmp_path / "c.png")), rgb)
    assert np.array_equal(read_image(str(tmp_path / "c.png").encode()), rgb)  # bytes, as tf.numpy_function hands it


def test_read_image_rgba_composited_over_grey(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[0, :, 3] = (255, 0, 128)
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png").astype(int)
    assert out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (200, 100, 0)  # opaque: the colour
    assert tuple(out[0, 1]) == (128, 128, 128)  # transparent: grey 128
    expected = [round((c * 128 + 128 * 127) / 255) for c in (200, 100, 0)]  # alpha 128 blend
    assert np.abs(out[0, 2] - expected).max() <= 1


def test_read_image_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    pal = [10, 20, 30, 200, 0, 0, 0, 0, 250] + [0] * (256 * 3 - 9)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 0, 0) and tuple(out[1, 0]) == (0, 0, 250)
    im.save(tmp_path / "pt.png", transparency=1)
    out = read_image(tmp_path / "pt.png")
    assert tuple(out[0, 1]) == (128, 128, 128) and tuple(out[0, 0]) == (10, 20, 30)


def test_read_image_16bit_scaled_to_8bit(tmp_path):
    v = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[..., 0], np.round(v / 257.0).astype(np.uint8))
    rgb16 = np.random.default_rng(1).integers(0, 65536, (3, 5, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    out = read_image(tmp_path / "c16.png").astype(int)
    assert out.shape == (3, 5, 3) and np.abs(out - rgb16 / 257.0).max() <= 1.0


def test_read_image_cmyk(tmp_path):
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.tif")  # pure red in CMYK
    out = read_image(tmp_path / "c.tif")
    assert out.shape == (3, 4, 3) and tuple(out[0, 0]) == (255, 0, 0)


def test_read_image_ignores_exif_orientation(tmp_path):
    """A 40x20 JPEG tagged orientation 6 (rotate 90): we keep the STORED frame (20, 40)."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "exif6.jpg"
    Image.fromarray(img).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:  # the tag is there and would rotate if applied
        assert ImageOps.exif_transpose(im).size == (20, 40)
    assert cv2.imread(str(path)).shape[:2] == (40, 20)  # why the project does not use cv2 defaults
    out = read_image(path)
    assert out.shape == (20, 40, 3)
    assert out[10, 5, 0] > 200 and out[10, 35, 0] < 50  # red stays on the left: not rotated
    assert image_size(path) == (40, 20)


def test_read_image_errors_name_the_file(tmp_path):
    write_jpg(tmp_path / "ok.jpg", 128, 96)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"trunc\.jpg.*truncated"):
        read_image(tmp_path / "trunc.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.jpg.*not a readable image"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(ImageReadError, match=r"missing\.jpg.*not found"):
        read_image(tmp_path / "missing.jpg")
    assert issubclass(ImageReadError, ValueError)


def test_read_image_1bit_la_and_float_modes(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))  # 1-bit -> 0 / 255, grey
    la = np.zeros((1, 2, 2), np.uint8)
    la[0, 0] = (60, 255)  # opaque: its grey value
    la[0, 1] = (60, 0)    # transparent: the background grey
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out[0, 0].tolist() == [60] * 3 and out[0, 1].tolist() == [ALPHA_BACKGROUND] * 3
    f = np.array([[0.0, 0.5, 1.0]], np.float32)  # float images in [0, 1] are scaled to [0, 255]
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])


def test_image_size_reads_the_header_only(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.jpg", quality=95)
    assert image_size(tmp_path / "a.jpg") == (70, 30)  # (width, height)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert image_size(tmp_path / "cut.jpg") == (70, 30)  # the header is intact: no decode, no error
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match=r"junk\.png: not a readable image"):
        image_size(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match=r"nope\.jpg: image file not found"):
        image_size(tmp_path / "nope.jpg")


def test_verify_image_catches_what_the_header_does_not(tmp_path):
    rng = np.random.default_rng(0)  # noise: a JPEG with plenty of entropy-coded data to cut
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    assert verify_image(tmp_path / "ok.jpg") is None and verify_image(str(tmp_path / "ok.png")) is None
    for name in ("ok.jpg", "ok.png"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ImageReadError, match=re.escape(f"cut_{name}: corrupt or truncated")):
            verify_image(cut)
        with pytest.raises(ImageReadError, match="truncated"):
            read_image(cut)  # the reader agrees
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match=r"text\.jpg: not a readable image"):
        verify_image(tmp_path / "text.jpg")
    with pytest.raises(ImageReadError, match=r"gone\.png: image file not found"):
        verify_image(tmp_path / "gone.png")


def test_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (8, 4)).save(tmp_path / "o8.jpg", exif=exif.tobytes())
    write_jpg(tmp_path / "plain.jpg", 8, 4)
    assert exif_orientation(tmp_path / "o8.jpg") == 8
    assert exif_orientation(tmp_path / "plain.jpg") == 1  # no tag: the identity
    assert exif_orientation(tmp_path / "missing.jpg") == 1  # only enriches warnings: never raises


def test_extension_lists():
    assert set(IMAGE_EXTENSIONS) <= set(READABLE_EXTENSIONS)
    assert all(e == e.lower() and e.startswith(".") for e in READABLE_EXTENSIONS)
    assert {".webp", ".tif", ".tiff"} <= set(READABLE_EXTENSIONS) - set(IMAGE_EXTENSIONS)
