"""utils/data/voc.py: class lists, the image reader, VOC XML parsing, loading, splits, checks."""
import os
import pathlib
import time
import xml.etree.ElementTree as StdET

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import voc_annotation
from utils.data.check import check_dataset, dataset_stats, write_splits
from utils.data.images import ImageReadError, image_size, read_image
from utils.data.voc import AnnotationError, DatasetError, load_flat, load_voc, parse_voc_xml, read_class_names, split_ids

CLASSES = ["cat", "dog"]


# ----------------------------------------------------------------------------- helpers

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


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename></annotation>"""


# ----------------------------------------------------------------------------- class names

def test_read_class_names_ignores_blanks_and_comments(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("# my classes\ncat\n\n  dog  \n# end\n")
    assert read_class_names(p) == ["cat", "dog"]


def test_read_class_names_duplicate_and_missing_name_the_file(tmp_path):
    p = tmp_path / "dup.txt"
    p.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"dup\.txt.*'cat'.*lines 1 and 3"):
        read_class_names(p)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_class_names(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        read_class_names(tmp_path / "empty.txt")


# ----------------------------------------------------------------------------- read_image

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


# ----------------------------------------------------------------------------- parse_voc_xml

def test_parse_voc_xml_boxes_labels_difficult(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(voc_xml([("dog", (1, 2, 30, 40), 0), ("cat", (5.5, 6, 20, 21), 1)]))
    rec, warns = parse_voc_xml(p, CLASSES)
    assert warns == []
    np.testing.assert_array_equal(rec.boxes, np.array([[1, 2, 30, 40], [5.5, 6, 20, 21]], np.float32))
    assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int32
    assert rec.labels.tolist() == [1, 0] and rec.difficult.tolist() == [False, True]
    assert (rec.width, rec.height) == (64, 48)


def test_parse_voc_xml_bad_boxes_dropped_or_clipped_with_warnings(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text(voc_xml([
        ("cat", (10, 10, 10, 20), 0),     # zero width
        ("cat", (10, 30, 20, 25), 0),     # ymin > ymax
        ("cat", (70, 5, 90, 20), 0),      # wholly right of the 64-wide image
        ("cat", (-5, 40, 20, 60), 0),     # partly outside: clipped to [0, 40, 20, 48]
        ("bird", (1, 1, 5, 5), 0),        # unknown class
        ("Dog", (1, 1, 5, 5), 0),         # unknown, with a case hint
        ("dog", (1, 1, 9, 9), 0),         # fine
    ]))
    rec, warns = parse_voc_xml(p, CLASSES)
    np.testing.assert_array_equal(rec.boxes, np.array([[0, 40, 20, 48], [1, 1, 9, 9]], np.float32))
    assert rec.labels.tolist() == [0, 1]
    assert len(warns) == 6 and all(str(p) in w for w in warns)
    text = "\n".join(warns)
    assert "xmin 10 >= xmax 10" in text and "ymin 30 >= ymax 25" in text
    assert "outside the 64x48 image; box dropped" in text
    assert "clipped to [0, 40, 20, 48]" in text
    assert "'bird' is not in the class list" in text and "did you mean 'dog'" in text


def test_parse_voc_xml_size_mismatch_trusts_the_image(tmp_path):
    p = tmp_path / "s.xml"
    p.write_text(voc_xml([("cat", (50, 10, 70, 20), 0)], size=(100, 100)))
    rec, warns = parse_voc_xml(p, CLASSES, image_size=(60, 30))
    assert (rec.width, rec.height) == (60, 30)
    assert len(warns) == 2
    assert "100x100 disagrees with the image 60x30" in warns[0] and "trusting the image" in warns[0]
    np.testing.assert_array_equal(rec.boxes, [[50, 10, 60, 20]])  # clipped to the real image


def test_parse_voc_xml_empty_object_list_is_a_valid_negative(tmp_path):
    p = tmp_path / "neg.xml"
    p.write_text(voc_xml([]))
    rec, warns = parse_voc_xml(p, CLASSES)
    assert warns == [] and rec.boxes.shape == (0, 4) and rec.labels.shape == (0,) and rec.difficult.shape == (0,)


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_parse_voc_xml_rejects_hostile_xml(tmp_path, text):
    p = tmp_path / "evil.xml"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=r"hostile XML rejected: .*evil\.xml"):
        parse_voc_xml(p, CLASSES)


def test_parse_voc_xml_malformed(tmp_path):
    p = tmp_path / "broken.xml"
    p.write_text("<annotation><object><name>cat</name></annotation>")
    with pytest.raises(AnnotationError, match=r"malformed XML: .*broken\.xml"):
        parse_voc_xml(p, CLASSES)
    q = tmp_path / "other.xml"
    q.write_text("<html></html>")
    with pytest.raises(AnnotationError, match=r"other\.xml.*<html>"):
        parse_voc_xml(q, CLASSES)


# ----------------------------------------------------------------------------- load_voc

def test_load_voc_every_bad_input_warned_once_and_counted(tmp_path):
    root = tmp_path / "VOC"
    items = {
        "good": voc_xml([("cat", (1, 1, 20, 20), 0), ("dog", (5, 5, 30, 30), 1)]),
        "zero": voc_xml([("cat", (10, 10, 10, 10), 0), ("dog", (1, 1, 9, 9), 0)]),
        "outside": voc_xml([("cat", (100, 100, 120, 120), 0), ("dog", (50, 40, 80, 60), 0)]),
        "unknown": voc_xml([("bird", (1, 1, 9, 9), 0), ("bird", (2, 2, 9, 9), 0)]),
        "noimage": voc_xml([("cat", (1, 1, 9, 9), 0)]),
        "noxml": None,
        "corrupt": voc_xml([("cat", (1, 1, 9, 9), 0)]),
        "malformed": "<annotation><object>",
        "hostile": BILLION_LAUGHS,
        "mismatch": voc_xml([("cat", (1, 1, 9, 9), 0)], size=(640, 480)),
        "negative": voc_xml([]),
    }
    make_root(root, items, image_sizes={"noimage": None})
    data = (root / "JPEGImages" / "corrupt.jpg").read_bytes()
    (root / "JPEGImages" / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    log = []
    recs = load_voc(root, "train", CLASSES, log=log.append)
    by_id = {r.image_id: r for r in recs}
    assert sorted(by_id) == ["good", "mismatch", "negative", "outside", "unknown", "zero"]
    assert by_id["good"].difficult.tolist() == [False, True]  # difficult kept, flagged
    assert by_id["zero"].labels.tolist() == [1]
    np.testing.assert_array_equal(by_id["outside"].boxes, [[50, 40, 64, 48]])
    assert len(by_id["unknown"].boxes) == 0 and len(by_id["negative"].boxes) == 0

    warnings_ = [m for m in log if m.startswith("warning: ")]
    for name in ("zero.xml", "outside.xml", "noimage.xml", "noxml.jpg", "corrupt.jpg", "malformed.xml",
                 "hostile.xml", "mismatch.xml"):
        assert sum(name in m for m in warnings_) >= 1, name
    assert not any("good.xml" in m or "negative.xml" in m for m in warnings_)
    assert sum("'bird'" in m for m in warnings_) == 1  # unknown class: one line per class name
    assert any("2 box(es) in 1 file(s)" in m for m in warnings_)
    assert len(warnings_) == len(set(warnings_))  # each once
    summary = log[-1]
    assert "loaded 6 images with 5 boxes" in summary  # good 2, zero 1, outside 1, mismatch 1
    assert "4 boxes dropped" in summary and "2 unknown class" in summary and "1 zero-area" in summary
    assert "1 outside image" in summary and "1 clipped" in summary
    assert "5 images skipped" in summary
    for kind in ("1 missing image", "1 missing annotation", "1 corrupt image", "1 malformed XML", "1 hostile XML"):
        assert kind in summary


def test_load_voc_without_image_check_reads_headers_only(tmp_path):
    root = make_root(tmp_path / "V", {"a": voc_xml([("cat", (1, 1, 9, 9), 0)])})
    img = root / "JPEGImages" / "a.jpg"
    write_jpg(img, 256, 192)
    img.write_bytes(img.read_bytes()[:-400])
    with pytest.raises(DatasetError, match="1 corrupt image"):
        load_voc(root, "train", CLASSES, log=None)  # verified: the truncated image is skipped
    recs = load_voc(root, "train", CLASSES, check_images=False, log=None)  # header only: kept
    assert len(recs) == 1 and (recs[0].width, recs[0].height) == (256, 192)
    with pytest.raises(ImageReadError, match="a.jpg"):
        read_image(recs[0].image_path)


def test_load_voc_zero_usable_images_is_an_error(tmp_path):
    root = make_root(tmp_path / "V", {"a": "<annotation>", "b": voc_xml([("cat", (1, 1, 9, 9), 0)])},
                     image_sizes={"b": None})
    with pytest.raises(DatasetError, match=r"no usable images.*2 skipped"):
        load_voc(root, "train", CLASSES, log=None)
    empty = make_root(tmp_path / "E", {})
    with pytest.raises(DatasetError, match="no usable images"):
        load_voc(empty, "train", CLASSES, log=None)


def test_load_voc_missing_paths_are_named(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found: .*nowhere"):
        load_voc(tmp_path / "nowhere", "train", CLASSES, log=None)
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetError, match=r"half: no Annotations/"):
        load_voc(tmp_path / "half", "train", CLASSES, log=None)
    root = make_root(tmp_path / "V", {"a": voc_xml([])}, split=None)
    with pytest.raises(DatasetError, match=r"split file not found: .*ImageSets/Main/val\.txt"):
        load_voc(root, "val", CLASSES, log=None)


def test_load_voc_split_on_the_spot_is_deterministic(tmp_path):
    ids = [f"im{i:03d}" for i in range(40)]
    root = make_root(tmp_path / "V", {i: voc_xml([("cat", (1, 1, 9, 9), 0)]) for i in ids}, split=None)
    ratio = {"train": 0.7, "val": 0.2, "test": 0.1}
    log = []
    parts = {s: [r.image_id for r in load_voc(root, s, CLASSES, ratio=ratio, seed=3, check_images=False,
                                              log=log.append)] for s in ratio}
    assert any("made on the spot" in m and "train.txt not found" in m for m in log)
    assert [len(parts[s]) for s in ratio] == [28, 8, 4]
    assert sorted(sum(parts.values(), [])) == ids  # disjoint and complete
    again = [r.image_id for r in load_voc(root, "val", CLASSES, ratio=ratio, seed=3, log=None)]
    assert again == parts["val"]
    other = [r.image_id for r in load_voc(root, "val", CLASSES, ratio=ratio, seed=4, log=None)]
    assert other != parts["val"]
    trainval = {r.image_id for r in load_voc(root, "trainval", CLASSES, ratio=ratio, seed=3, log=None)}
    assert trainval == set(parts["train"]) | set(parts["val"])


def test_split_ids_counts_and_order_independence():
    ids = [f"x{i}" for i in range(10)]
    parts = split_ids(ids, (0.7, 0.2, 0.1), seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [7, 2, 1]
    assert split_ids(list(reversed(ids)), (0.7, 0.2, 0.1), seed=0) == parts  # listing order does not matter
    assert [len(v) for v in split_ids(ids[:7], (0.5, 0.5), 0).values()] == [4, 3, 7]  # largest remainder, trainval
    with pytest.raises(ValueError, match="sum to 1"):
        split_ids(ids, (0.5, 0.2), 0)


def test_load_voc_combines_roots(tmp_path):
    a = make_root(tmp_path / "A", {"a1": voc_xml([("cat", (1, 1, 9, 9), 0)]), "a2": voc_xml([])})
    b = make_root(tmp_path / "B", {"b1": voc_xml([("dog", (1, 1, 9, 9), 0)])})
    log = []
    recs = load_voc([a, b], "train", CLASSES, log=log.append)
    assert [r.image_id for r in recs] == ["a1", "a2", "b1"]
    assert recs[2].image_path == str(b / "JPEGImages" / "b1.jpg") and recs[2].labels.tolist() == [1]
    assert log[-1].startswith(f"{a}+{b} [train]: loaded 3 images with 2 boxes")


def test_load_voc_finds_png_and_bmp_images(tmp_path):
    root = make_root(tmp_path / "V", {"p": voc_xml([]), "b": voc_xml([])}, image_sizes={"p": None, "b": None})
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "p.PNG")
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "b.bmp")
    recs = load_voc(root, "train", CLASSES, log=None)
    assert sorted(os.path.basename(r.image_path) for r in recs) == ["b.bmp", "p.PNG"]


# ----------------------------------------------------------------------------- load_flat

def test_load_flat_matches_by_stem_and_splits(tmp_path):
    imgs, anns = tmp_path / "images", tmp_path / "xml"
    imgs.mkdir(), anns.mkdir()
    for i in range(20):
        write_jpg(imgs / f"f{i:02d}.jpg")
        (anns / f"f{i:02d}.xml").write_text(voc_xml([("dog", (1, 1, 9, 9), 0)]))
    write_jpg(imgs / "orphan.jpg")
    (anns / "lonely.xml").write_text(voc_xml([]))
    log = []
    every = load_flat(imgs, anns, None, CLASSES, log=log.append)
    assert len(every) == 20
    assert sum("orphan.jpg" in m and "no annotation" in m for m in log) == 1
    assert sum("lonely.xml" in m and "no image" in m for m in log) == 1
    parts = {s: [r.image_id for r in load_flat(imgs, anns, s, CLASSES, ratios=(0.6, 0.2, 0.2), seed=1,
                                               check_images=False, log=None)] for s in ("train", "val", "test")}
    ids = sum(parts.values(), [])
    assert len(ids) == len(set(ids)) and set(ids) == {r.image_id for r in every}
    assert parts == {s: [r.image_id for r in load_flat(imgs, anns, s, CLASSES, ratios={"train": .6, "val": .2,
                                                                                       "test": .2}, seed=1,
                                                       log=None)] for s in ("train", "val", "test")}
    with pytest.raises(DatasetError, match="images folder not found: .*nope"):
        load_flat(tmp_path / "nope", anns, "train", CLASSES, log=None)


# ----------------------------------------------------------------------------- real data

def _bccd_counts(root, ids, names):
    """Independent count with the standard-library parser: boxes per class, minus zero-area."""
    counts = dict.fromkeys(names, 0)
    for i in ids:
        for obj in StdET.parse(root / "Annotations" / f"{i}.xml").getroot().iter("object"):
            b = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            if b[0] < b[2] and b[1] < b[3]:
                counts[obj.find("name").text] += 1
    return counts


def test_bccd_train_split(bccd_root):
    names = read_class_names(pathlib.Path(__file__).parents[1] / "model_data" / "bccd_classes.txt")
    log = []
    t0 = time.perf_counter()
    recs = load_voc(bccd_root, "train", names, log=log.append)
    elapsed = time.perf_counter() - t0
    assert len(recs) == 205
    warns = [m for m in log if m.startswith("warning: ")]
    assert len(warns) == 1 and "BloodImage_00343.xml" in warns[0] and "zero" in warns[0]
    ids = (bccd_root / "ImageSets" / "Main" / "train.txt").read_text().split()
    expected = _bccd_counts(bccd_root, ids, names)
    got = {n: int(sum((r.labels == i).sum() for r in recs)) for i, n in enumerate(names)}
    assert got == expected
    assert "loaded 205 images" in log[-1] and "1 box dropped (1 zero-area)" in log[-1]
    assert elapsed < 10  # ~0.3 s on an idle core; generous for a shared CI machine


def test_bccd_trainval_drops_exactly_the_two_zero_area_boxes(bccd_root):
    names = ["RBC", "WBC", "Platelets"]
    log = []
    recs = load_voc(bccd_root, "trainval", names, check_images=False, log=log.append)
    assert len(recs) == 292
    warns = [m for m in log if m.startswith("warning: ")]
    assert sorted(pathlib.Path(w.split(": ")[1]).name for w in warns) == ["BloodImage_00338.xml",
                                                                           "BloodImage_00343.xml"]
    by_id = {r.image_id: r for r in recs}
    for i in ("BloodImage_00338", "BloodImage_00343"):  # the rest of those images' boxes stay
        n_xml = len(StdET.parse(bccd_root / "Annotations" / f"{i}.xml").getroot().findall("object"))
        assert len(by_id[i].boxes) == n_xml - 1


def test_bccd_combined_with_another_root(bccd_root, tmp_path):
    other = make_root(tmp_path / "X", {"x1": voc_xml([("WBC", (1, 1, 30, 30), 0)])}, split="val")
    recs = load_voc([bccd_root, other], "val", ["RBC", "WBC", "Platelets"], check_images=False, log=None)
    assert len(recs) == 87 + 1 and recs[-1].image_id == "x1"


def _link_bccd(bccd_root, tmp_path):
    root = tmp_path / "BCCD"
    root.mkdir()
    for d in ("Annotations", "JPEGImages"):
        os.symlink(bccd_root / d, root / d)
    return root


def test_write_splits_on_bccd_union_and_disjoint(bccd_root, tmp_path):
    root = _link_bccd(bccd_root, tmp_path)
    log = []
    parts = write_splits(root, ["RBC", "WBC", "Platelets"], (0.8, 0.1, 0.1), seed=0, check_images=False,
                         log=log.append)
    main = root / "ImageSets" / "Main"
    files = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "test", "trainval")}
    assert files == parts
    all_ids = sorted(p.stem for p in (bccd_root / "Annotations").glob("*.xml"))
    assert sorted(files["train"] + files["val"] + files["test"]) == all_ids
    assert not (set(files["train"]) & set(files["val"]) or set(files["train"]) & set(files["test"])
                or set(files["val"]) & set(files["test"]))
    assert files["trainval"] == sorted(files["train"] + files["val"])
    assert [len(files[s]) for s in ("train", "val", "test")] == [291, 37, 36]  # 364 * ratios, largest remainder
    table = log[-1]
    assert table.splitlines()[0].split() == ["split", "images", "negatives", "boxes", "RBC", "WBC", "Platelets"]
    with pytest.raises(DatasetError, match="already exist.*--overwrite"):
        write_splits(root, ["RBC", "WBC", "Platelets"], log=None)
    again = write_splits(root, ["RBC", "WBC", "Platelets"], (0.8, 0.1, 0.1), seed=0, overwrite=True,
                         check_images=False, log=None)
    assert again == parts


# ----------------------------------------------------------------------------- check + CLI

def test_check_dataset_stats_and_split_problems(tmp_path):
    root = make_root(tmp_path / "V", {
        "a": voc_xml([("cat", (0, 0, 20, 20), 0), ("dog", (0, 0, 40, 40), 1)], size=(200, 200)),
        "b": voc_xml([("cat", (0, 0, 100, 100), 0), ("cat", (5, 5, 5, 9), 0)], size=(200, 200)),
        "c": voc_xml([], size=(200, 200)),
    }, image_sizes={k: (200, 200) for k in "abc"})
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\nghost\n")
    res = check_dataset(CLASSES, root=root)
    st = res.stats
    assert st["images"] == 3 and st["negatives"] == 1
    assert st["per_class"]["cat"]["boxes"] == 2 and st["per_class"]["dog"]["difficult"] == 1
    # areas 400 (small < 32^2), 1600 (medium), 10000 (large >= 96^2)
    assert (st["all"]["small"], st["all"]["medium"], st["all"]["large"]) == (1, 1, 1)
    assert (st["all"]["w_min"], st["all"]["w_median"], st["all"]["w_max"]) == (20, 40, 100)
    probs = res.problems()
    assert any("b.xml" in p and "zero" in p for p in probs)
    assert any("val.txt" in p and "ghost" in p for p in probs)
    assert any("both train.txt and val.txt" in p for p in probs)
    text = res.format()
    assert "3 problem(s) found" in text and "w min/med/max" in text
    assert dataset_stats([], CLASSES)["images"] == 0


def test_voc_annotation_cli(tmp_path, capsys):
    root = make_root(tmp_path / "V", {f"i{k}": voc_xml([("cat", (1, 1, 9, 9), 0)]) for k in range(10)}, split=None)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    assert voc_annotation.main(["--root", str(root), "--classes", str(classes), "--ratios", "0.6", "0.2", "0.2",
                                "--seed", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["train"][1:3] == ["6", "0"] and rows["test"][1] == "2" and rows["trainval"][1] == "8"
    assert voc_annotation.main(["check", "--root", str(root), "--classes", str(classes)]) == 0
    assert "0 problem(s) found" in capsys.readouterr().out
    assert voc_annotation.main(["check", "--images", str(root / "JPEGImages"), "--annotations",
                                str(root / "Annotations"), "--classes", str(classes)]) == 0
    assert "loaded 10 images with 10 boxes" in capsys.readouterr().out
    assert voc_annotation.main(["--root", str(tmp_path / "missing"), "--classes", str(classes)]) == 2
    err = capsys.readouterr().err
    assert "dataset root not found" in err and str(tmp_path / "missing") in err
    assert voc_annotation.main(["check", "--root", str(root), "--classes", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err
