"""utils/data/voc.py: class lists, VOC XML parsing and writing, loading, splits.
(The image reader: tests/test_images.py; statistics, checks and split files: tests/test_check.py.)"""
import os
import pathlib
import time
import xml.etree.ElementTree as StdET

import numpy as np
import pytest
from PIL import Image

from _data_helpers import make_root, voc_xml, write_jpg
from utils.data.images import ImageReadError, read_image
from utils.data.voc import (AnnotationError, DatasetError, load_flat, load_voc, parse_voc_xml, read_class_names,
                            split_ids, write_voc_xml)

CLASSES = ["cat", "dog"]


# ----------------------------------------------------------------------------- helpers

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


def test_xml_writer_edge_cases(tmp_path):
    boxes = [[0.2, 0.4, 0.6, 0.7], [10.4, 5.5, 39.9, 30.0], [38.8, 29.0, 40.0, 30.0]]  # sub-pixel, normal, corner
    path = write_voc_xml(tmp_path / "x.xml", tmp_path / "a&b.jpg", 40, 30, boxes, [0, 2, 1], ["c<1>", "d", "e"])
    rec, warnings = parse_voc_xml(path, ["c<1>", "d", "e"])
    assert warnings == [] and rec.image_path == "a&b.jpg" and rec.labels.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(rec.boxes, [[0, 0, 1, 1], [10, 6, 40, 30], [39, 29, 40, 30]])


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
