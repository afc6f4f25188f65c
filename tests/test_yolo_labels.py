"""utils/data/yolo_labels.py: YOLO txt (ultralytics layout) read into VocRecords, splits, writing."""
import os

import numpy as np
import pytest
import yaml

from _data_helpers import write_jpg
from utils.data.voc import DatasetError, VocRecord, split_ids
from utils.data.yolo_labels import label_path, load_yolo, write_yolo, yolo_class_names

CLASSES = ["cat", "dog"]


def yolo_folder(root, items, sub="", sizes=None):
    """items: id -> label text (None: no label file; images 64x48 unless sizes[id], None there: no image)."""
    for i, text in items.items():
        size = (sizes or {}).get(i, (64, 48))
        if size is not None:
            write_jpg(root / "images" / sub / f"{i}.jpg", *size)
        if text is not None:
            (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
            (root / "labels" / sub / f"{i}.txt").write_text(text)
    return root


def test_label_path_replaces_the_last_images_component(tmp_path):
    assert label_path("/d/images/train/a.b.jpg") == type(label_path("x"))("/d/labels/train/a.b.txt")
    assert str(label_path("/images/x/images/v/im.png")) == "/images/x/labels/v/im.txt"
    assert str(label_path("/d/pics/im.png")) == "/d/pics/im.txt"


def test_load_yolo_hand_computed_boxes_and_negatives(tmp_path):
    root = yolo_folder(tmp_path / "ds", {
        "a": "1 0.5 0.5 0.25 0.5\n\n0 0.125 0.25 0.25 0.5\n",  # [24, 12, 40, 36] and [0, 0, 16, 24]
        "nolabel": None,  # an image without a label file: a negative
        "empty": "",      # an empty label file: a negative
        "wide": "0 0.5 0.5 0.5 0.5\n",
    }, sizes={"wide": (200, 100)})
    log = []
    recs = load_yolo(root, None, CLASSES, log=log.append)
    by_id = {r.image_id: r for r in recs}
    assert [r.image_id for r in recs] == ["a", "empty", "nolabel", "wide"]  # sorted by stem
    a = by_id["a"]
    assert isinstance(a, VocRecord) and a.image_path == str(root / "images" / "a.jpg")
    assert a.annotation_path == str(root / "labels" / "a.txt")
    np.testing.assert_array_equal(a.boxes, [[24, 12, 40, 36], [0, 0, 16, 24]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int32 and a.labels.tolist() == [1, 0]
    assert a.difficult.tolist() == [False, False] and (a.width, a.height) == (64, 48)
    np.testing.assert_array_equal(by_id["wide"].boxes, [[50, 25, 150, 75]])  # pixels from the image header
    for neg in ("nolabel", "empty"):
        assert by_id[neg].boxes.shape == (0, 4) and by_id[neg].labels.shape == (0,)
    assert by_id["nolabel"].annotation_path == ""
    assert log == [f"{root} [all]: loaded 4 images with 3 boxes, 0 boxes dropped, 0 images skipped"]


def test_load_yolo_every_bad_input_named_with_file_and_line(tmp_path):
    bad = "\n".join([
        "5 0.5 0.5 0.1 0.1",       # 1: class out of range
        "0 0.5 0.5 0.1",           # 2: 4 fields
        "0 a 0.5 0.1 0.1",         # 3: not a number
        "0.5 0.5 0.5 0.1 0.1",     # 4: class not an integer
        "0 0.5 0.5 0 0.1",         # 5: zero width
        "0 1.2 0.5 0.2 0.2",       # 6: wholly right of the image
        "0 0.95 0.5 0.2 0.2",      # 7: partly outside: clipped to [54.4, 19.2, 64, 28.8]
        "1 0.5 0.5 0.2 0.2",       # 8: fine: [25.6, 19.2, 38.4, 28.8]
        "0 0.1 0.1 0.2000001 0.2", # 9: 5e-8 past the edge: float noise, clamped silently
        "0 0.1 0.2 0.3 0.4 0.5 0.6 0.7",  # 10: a polygon
    ]) + "\n"
    root = yolo_folder(tmp_path / "ds", {"good": "0 0.5 0.5 0.5 0.5\n", "bad": bad, "lonely": "0 0.5 0.5 0.1 0.1\n",
                                         "corrupt": "0 0.5 0.5 0.1 0.1\n"}, sizes={"lonely": None})
    img = root / "images" / "corrupt.jpg"
    img.write_bytes(img.read_bytes()[:200])
    log = []
    recs = load_yolo(root, None, CLASSES, log=log.append)
    by_id = {r.image_id: r for r in recs}
    assert sorted(by_id) == ["bad", "good"]
    np.testing.assert_allclose(by_id["bad"].boxes, [[54.4, 19.2, 64, 28.8], [25.6, 19.2, 38.4, 28.8],
                                                    [0, 0, 12.8, 9.6]], atol=1e-4)
    assert by_id["bad"].labels.tolist() == [0, 1, 0]

    warns = [m[len("warning: "):] for m in log if m.startswith("warning: ")]
    lbl = root / "labels" / "bad.txt"
    expected = {
        1: "class index 5 is out of range (the class list has 2 names, 0..1)",
        2: "expected 5 fields 'class cx cy w h', got 4",
        3: "'0 a 0.5 0.1 0.1' is not 5 numbers",
        4: "class '0.5' is not an integer index",
        5: "has zero or negative width",
        6: "lies outside the image (0..1)",
        7: "clipped to pixels [54.4, 19.2, 64, 28.8] of the 64x48 image",
        10: "got 8 (segmentation polygons are not read)",
    }
    for line, text in expected.items():
        assert sum(m.startswith(f"{lbl}:{line}: ") and text in m for m in warns) == 1, (line, text)
    assert not any(m.startswith(f"{lbl}:8:") or m.startswith(f"{lbl}:9:") for m in warns)
    assert sum("lonely.txt" in m and "no image lonely" in m for m in warns) == 1
    assert sum("corrupt.jpg" in m and "image skipped" in m for m in warns) == 1
    assert len(warns) == len(expected) + 2
    summary = log[-1]
    assert "loaded 2 images with 4 boxes" in summary and "1 clipped" in summary
    assert "7 boxes dropped (4 malformed line, 1 class out of range, 1 zero-area, 1 outside image)" in summary
    assert "2 images skipped" in summary and "1 missing image" in summary and "1 corrupt image" in summary


def test_load_yolo_no_usable_image_and_missing_things(tmp_path):
    with pytest.raises(DatasetError, match="YOLO dataset not found: .*nowhere"):
        load_yolo(tmp_path / "nowhere", None, CLASSES, log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no images/ folder"):
        load_yolo(tmp_path / "empty", None, CLASSES, log=None)
    root = yolo_folder(tmp_path / "ds", {"a": "0 0.5 0.5 0.1 0.1\n"}, sizes={"a": None})
    (root / "images").mkdir()
    with pytest.raises(DatasetError, match=r"no usable images.*1 missing image"):
        load_yolo(root, None, CLASSES, log=None)
    with pytest.raises(DatasetError, match="no class names"):
        load_yolo(root, None, None, log=None)


def test_folder_without_labels_folder_warns_once(tmp_path):
    root = yolo_folder(tmp_path / "ds", {"a": None, "b": None})
    log = []
    recs = load_yolo(root, None, CLASSES, log=log.append)
    assert len(recs) == 2 and all(len(r.boxes) == 0 for r in recs)
    assert sum("labels folder not found: all 2 image(s)" in m for m in log) == 1


def test_flat_folder_split_is_split_ids_over_stems(tmp_path):
    items = {f"im{i:02d}": "0 0.5 0.5 0.2 0.2\n" for i in range(20)}
    items["orphan"] = None
    root = yolo_folder(tmp_path / "ds", items)
    (root / "labels" / "lonely.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    expected = split_ids(list(items) + ["lonely"], (0.7, 0.2, 0.1), seed=2)
    got, logs = {}, []
    for s in ("train", "val", "test", "trainval"):
        log = []
        got[s] = [r.image_id for r in load_yolo(root, s, CLASSES, ratios=(0.7, 0.2, 0.1), seed=2,
                                                check_images=False, log=log.append)]
        logs.append(log)
    assert got == {s: [i for i in ids if i != "lonely"] for s, ids in expected.items()}
    assert sum("lonely.txt" in m for log in logs[:3] for m in log) == 1  # reported in its own split only
    assert got["val"] == [r.image_id for r in load_yolo(root, "val", CLASSES, ratios=(0.7, 0.2, 0.1), seed=2,
                                                        log=None)]


def test_data_yaml_with_path_folders_txt_list_and_names_dict(tmp_path):
    ds = tmp_path / "datasets" / "cells"
    yolo_folder(ds, {"t1": "0 0.5 0.5 0.5 0.5\n", "t2": "2 0.25 0.25 0.5 0.5\n"}, sub="train")
    yolo_folder(ds, {"v1": "1 0.5 0.5 0.5 0.5\n", "v2": None}, sub="val")
    (ds / "val.txt").write_text("./images/val/v1.jpg\nimages/val/v2.jpg\n\n")
    cfg = tmp_path / "cfg" / "cells.yaml"
    cfg.parent.mkdir()
    cfg.write_text("path: ../datasets/cells\ntrain: images/train\nval: [val.txt]\nnames:\n  0: cat\n  1: Dog\n"
                   "  2: bird\n")
    assert yolo_class_names(cfg) == ["cat", "Dog", "bird"]
    train = load_yolo(cfg, "train", None, log=None)
    assert [r.image_id for r in train] == ["t1", "t2"]
    assert train[1].labels.tolist() == [2] and train[1].annotation_path == str(ds / "labels" / "train" / "t2.txt")
    np.testing.assert_array_equal(train[1].boxes, [[0, 0, 32, 24]])
    val = load_yolo(cfg, "val", None, log=None)
    assert [r.image_id for r in val] == ["v1", "v2"] and val[0].labels.tolist() == [1] and len(val[1].boxes) == 0
    assert sorted(r.image_id for r in load_yolo(cfg, "trainval", None, log=None)) == ["t1", "t2", "v1", "v2"]
    assert len(load_yolo(cfg, None, None, log=None)) == 4
    with pytest.raises(DatasetError, match=r"cells\.yaml: no split 'test' \(has train, val\)"):
        load_yolo(cfg, "test", None, log=None)
    # another class list: indices are mapped by name; names not in the list dropped once per name
    log = []
    recs = load_yolo(cfg, None, ["bird", "cat", "dog"], log=log.append)
    assert {r.image_id: r.labels.tolist() for r in recs} == {"t1": [1], "t2": [0], "v1": [], "v2": []}
    unknown = [m for m in log if "'Dog'" in m]
    assert len(unknown) == 1 and "1 box(es) in 1 file(s) dropped" in unknown[0] and "did you mean 'dog'" in unknown[0]


def test_split_subfolders_and_classes_txt(tmp_path):
    root = tmp_path / "ds"
    yolo_folder(root, {"a": "1 0.5 0.5 0.5 0.5\n"}, sub="train")
    yolo_folder(root, {"b": "0 0.5 0.5 0.5 0.5\n"}, sub="val")
    (root / "labels" / "classes.txt").write_text("cat\ndog\n")
    assert yolo_class_names(root) == ["cat", "dog"]
    assert [r.image_id for r in load_yolo(root, "val", None, log=None)] == ["b"]
    assert [r.image_id for r in load_yolo(root, None, None, log=None)] == ["a", "b"]
    with pytest.raises(DatasetError, match=r"no split 'test' \(has train, val\)"):
        load_yolo(root, "test", None, log=None)


@pytest.mark.parametrize("text, match", [
    ("names: [a, b\n", "malformed YAML"),
    ("- a\n- b\n", "not a YOLO data.yaml"),
    ("names: {0: a, 2: b}\n", "keys must be the class indices 0..1"),
    ("nc: 3\nnames: [a, b]\n", "nc is 3 but 'names' has 2"),
], ids=["malformed", "list", "gap", "nc"])
def test_bad_data_yaml_names_the_file(tmp_path, text, match):
    p = tmp_path / "data.yaml"
    p.write_text(text)
    with pytest.raises(DatasetError, match=rf"data\.yaml: .*{match}"):
        yolo_class_names(p)


def test_write_yolo_files_and_round_trip(tmp_path):
    src = tmp_path / "src"
    write_jpg(src / "x.jpg", 64, 48)
    write_jpg(src / "y.jpg", 64, 48)
    recs = [VocRecord(str(src / "x.jpg"), np.array([[16, 12, 48, 36], [0, 0, 64, 48]], np.float32),
                      np.array([1, 0], np.int32), np.array([True, False]), 64, 48),
            VocRecord(str(src / "y.jpg"), np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool),
                      64, 48)]
    out = tmp_path / "out"
    write_yolo(recs[:1], CLASSES, out, "train")
    y = write_yolo(recs[1:], CLASSES, out, "val", link=True)
    assert (out / "labels" / "train" / "x.txt").read_text() == ("1 0.500000 0.500000 0.500000 0.500000\n"
                                                                "0 0.500000 0.500000 1.000000 1.000000\n")
    assert (out / "labels" / "val" / "y.txt").read_text() == ""  # a negative: an empty label file
    assert yaml.safe_load(y.read_text()) == {"train": "images/train", "val": "images/val",
                                             "names": {0: "cat", 1: "dog"}, "nc": 2}
    assert (out / "images" / "train" / "x.jpg").read_bytes() == (src / "x.jpg").read_bytes()
    assert os.stat(out / "images" / "val" / "y.jpg").st_ino == os.stat(src / "y.jpg").st_ino  # hard link
    back = {r.image_id: r for r in load_yolo(y, None, None, log=None)}
    np.testing.assert_allclose(back["x"].boxes, recs[0].boxes, atol=1e-3)
    assert back["x"].labels.tolist() == [1, 0] and len(back["y"].boxes) == 0
    with pytest.raises(ValueError, match="other class names"):
        write_yolo(recs[:1], ["cat", "dog", "bird"], out, "test")
    write_jpg(tmp_path / "other" / "x.jpg", 32, 32)  # another image with the same name: never overwritten
    other = VocRecord(str(tmp_path / "other" / "x.jpg"), recs[1].boxes, recs[1].labels, recs[1].difficult, 32, 32)
    with pytest.raises(FileExistsError, match="not overwriting"):
        write_yolo([other], CLASSES, out, "train")
    with pytest.raises(ValueError, match="two images with the stem 'x'"):
        write_yolo([recs[0], recs[0]], CLASSES, tmp_path / "dup", "train")


def test_write_yolo_flat_layout_loads_as_a_folder(tmp_path):
    src = tmp_path / "src"
    recs = []
    for i in range(10):
        write_jpg(src / f"im{i}.jpg", 64, 48)
        recs.append(VocRecord(str(src / f"im{i}.jpg"), np.array([[8, 8, 24, 40]], np.float32), np.array([i % 2]),
                              np.zeros(1, bool), 64, 48))
    write_yolo(recs, CLASSES, tmp_path / "flat", None)
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["data.yaml", "images", "labels"]
    every = load_yolo(tmp_path / "flat", None, None, log=None)
    assert [r.image_id for r in every] == [f"im{i}" for i in range(10)]
    np.testing.assert_allclose(np.stack([r.boxes[0] for r in every]), [[8, 8, 24, 40]] * 10, atol=1e-3)
    val = load_yolo(tmp_path / "flat", "val", None, ratios=(0.6, 0.2, 0.2), seed=1, log=None)
    assert [r.image_id for r in val] == split_ids([r.image_id for r in every], (0.6, 0.2, 0.2), 1)["val"]
    with pytest.raises(ValueError, match="cannot mix"):
        write_yolo(recs[:1], CLASSES, tmp_path / "flat", "train")
