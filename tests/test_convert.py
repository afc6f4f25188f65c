"""utils/data/convert.py: VOC <-> COCO <-> YOLO conversion keeps images, boxes (within 1 px), classes, splits."""
import json
import os
import pathlib

import numpy as np
import pytest

from _data_helpers import make_root, voc_xml, write_jpg
from utils.data.convert import convert, main
from utils.data.demo_data import make_demo_dataset
from utils.data.formats import load_records
from utils.data.voc import load_voc, read_class_names

CLASSES = ["cat", "dog"]


def assert_same_records(a, b, tol=1.0):
    """Same image ids, same labels in the same order, every box within ``tol`` pixels."""
    a = {r.image_id: r for r in a}
    b = {r.image_id: r for r in b}
    assert sorted(a) == sorted(b)
    for i in a:
        assert a[i].labels.tolist() == b[i].labels.tolist(), i
        assert a[i].boxes.shape == b[i].boxes.shape, i
        if len(a[i].boxes):
            assert np.abs(a[i].boxes - b[i].boxes).max() <= tol, i
        assert (a[i].width, a[i].height) == (b[i].width, b[i].height), i


def split_files(root):
    return {p.name: p.read_text() for p in sorted((root / "ImageSets" / "Main").glob("*.txt"))}


def test_round_trip_voc_coco_yolo_voc(tmp_path, capsys):
    src = make_demo_dataset(tmp_path / "demo", num_images=12, seed=0)
    classes = str(src / "demo_classes.txt")
    assert main(["--from", "voc", "--to", "coco", "--src", str(src), "--out", str(tmp_path / "coco"),
                 "--classes", classes]) == 0
    assert main(["--to", "yolo", "--src", str(tmp_path / "coco"), "--out", str(tmp_path / "yolo")]) == 0
    assert main(["--to", "voc", "--src", str(tmp_path / "yolo" / "data.yaml"), "--out", str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 images with 36 boxes as coco" in out and "as voc to" in out

    original = load_voc(src, None, classes, log=None)
    assert sum(len(r.boxes) for r in original) == 36
    assert_same_records(original, load_voc(tmp_path / "back", None, classes, log=None))
    assert read_class_names(tmp_path / "back" / "classes.txt") == read_class_names(classes)
    assert split_files(tmp_path / "back") == split_files(src)  # train / val / test / trainval kept
    for s in ("train", "val", "test"):  # every intermediate format keeps the splits
        want = sorted(r.image_id for r in load_voc(src, s, classes, log=None))
        for fmt in ("coco", "yolo"):
            assert sorted(r.image_id for r in load_records(tmp_path / fmt, s, classes, log=None)) == want, (fmt, s)
    for r in original:  # images copied byte for byte
        name = os.path.basename(r.image_path)
        assert (tmp_path / "back" / "JPEGImages" / name).read_bytes() == pathlib.Path(r.image_path).read_bytes()


def test_difficult_and_clipped_boxes(tmp_path, capsys):
    src = make_root(tmp_path / "voc", {
        "a": voc_xml([("dog", (3, 4, 30, 40), 1), ("cat", (50, 20, 80, 60), 0)]),  # clipped to the 64x48 image
        "b": voc_xml([]),
    }, split=None)
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    convert(src, tmp_path / "coco", "coco", class_names=tmp_path / "c.txt", log=None)
    data = json.loads((tmp_path / "coco" / "annotations" / "instances.json").read_text())
    assert [a["bbox"] for a in data["annotations"]] == [[3, 4, 27, 36], [50, 20, 14, 28]]
    assert [a["iscrowd"] for a in data["annotations"]] == [1, 0]
    assert not (tmp_path / "coco" / "annotations" / "instances_train.json").exists()  # the source names no split
    coco = load_records(tmp_path / "coco", None, CLASSES, log=None)
    assert {r.image_id: r.difficult.tolist() for r in coco} == {"a": [True, False], "b": []}
    convert(tmp_path / "coco", tmp_path / "yolo", "yolo", log=print)
    assert "1 difficult box(es) written as ordinary boxes" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "yolo" / "labels").iterdir()) == ["a.txt", "b.txt"]  # flat layout
    yolo = load_records(tmp_path / "yolo", None, None, log=None)
    assert_same_records(coco, yolo, tol=1e-3)
    assert {r.image_id: r.difficult.tolist() for r in yolo} == {"a": [False, False], "b": []}


def test_hard_links_and_the_output_folder(tmp_path, capsys):
    src = make_root(tmp_path / "voc", {"a": voc_xml([("cat", (1, 1, 9, 9), 0)])})
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    args = ["--to", "yolo", "--src", str(src), "--classes", str(tmp_path / "c.txt")]
    assert main(args + ["--out", str(tmp_path / "y"), "--link"]) == 0
    assert os.stat(tmp_path / "y" / "images" / "train" / "a.jpg").st_ino == os.stat(src / "JPEGImages" / "a.jpg").st_ino
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "y")]) == 2  # not empty: nothing overwritten
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["--to", "coco", "--src", str(src), "--out", str(tmp_path / "z")]) == 2
    assert "--classes" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_duplicate_image_ids_are_refused(tmp_path, capsys):
    for sub in ("a", "b"):
        write_jpg(tmp_path / "imgs" / sub / "x.jpg")
    js = tmp_path / "two.json"
    js.write_text(json.dumps({"images": [{"id": 1, "file_name": "a/x.jpg"}, {"id": 2, "file_name": "b/x.jpg"}],
                              "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    assert main(["--to", "voc", "--src", str(js), "--images", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "two images with the id 'x'" in capsys.readouterr().err


def test_bccd_to_coco_and_yolo(bccd_root, tmp_path):
    classes = pathlib.Path(__file__).parents[1] / "model_data" / "bccd_classes.txt"
    original = load_voc(bccd_root, None, classes, check_images=False, log=None)
    assert len(original) == 364
    for fmt in ("coco", "yolo"):
        convert(bccd_root, tmp_path / fmt, fmt, class_names=classes, link=True, check_images=False, log=None)
        back = load_records(tmp_path / fmt, None, classes, check_images=False, log=None)
        assert_same_records(original, back)
        for s in ("train", "val", "test"):
            assert sorted(r.image_id for r in load_records(tmp_path / fmt, s, classes, check_images=False, log=None)) \
                == sorted((bccd_root / "ImageSets" / "Main" / f"{s}.txt").read_text().split()), (fmt, s)
