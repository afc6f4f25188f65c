"""utils/data/check.py: dataset statistics, the dataset check and the split files it writes,
and their front end voc_annotation.py."""
import os

import numpy as np
import pytest

import voc_annotation
from _data_helpers import make_root, voc_xml
from utils.data.check import (COCO_MEDIUM, COCO_SMALL, check_dataset, dataset_stats, format_split_table,
                              format_stats, write_splits)
from utils.data.voc import DatasetError, VocRecord

CLASSES = ["cat", "dog"]


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
    # 'dog' has no box: the teachability findings close the check, which exits with 1
    assert voc_annotation.main(["check", "--root", str(root), "--classes", str(classes)]) == 1
    out = capsys.readouterr().out
    assert "0 problem(s) found" in out
    assert "fatal: 1 class(es) of the class list have no box in the dataset (every split): 'dog'" in out
    assert out.index("0 problem(s) found") < out.index("teachability of the dataset")  # after the usual output
    classes.write_text("cat\n")
    assert voc_annotation.main(["check", "--images", str(root / "JPEGImages"), "--annotations",
                                str(root / "Annotations"), "--classes", str(classes)]) == 0
    out = capsys.readouterr().out
    assert "loaded 10 images with 10 boxes" in out and "teachability of the dataset (every split): no finding" in out
    assert voc_annotation.main(["--root", str(tmp_path / "missing"), "--classes", str(classes)]) == 2
    err = capsys.readouterr().err
    assert "dataset root not found" in err and str(tmp_path / "missing") in err
    assert voc_annotation.main(["check", "--root", str(root), "--classes", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- statistics by hand

def _record(i, boxes, labels, difficult=None, size=(200, 100)):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32)
    difficult = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool)
    return VocRecord(image_path=f"{i}.jpg", width=size[0], height=size[1], boxes=boxes,
                     labels=labels, difficult=difficult)


def test_dataset_stats_by_hand():
    records = [
        _record("a", [[0, 0, 10, 20], [0, 0, 31, 33]], [0, 1], [False, True]),  # areas 200, 1023
        _record("b", [[5, 5, 105, 101]], [0], size=(640, 480)),                 # area 9600
        _record("c", [], []),                                                    # a negative
    ]
    st = dataset_stats(records, CLASSES)
    assert (st["images"], st["negatives"]) == (3, 1)
    # COCO buckets: small < 32^2 = 1024 <= medium < 96^2 = 9216 <= large
    assert (COCO_SMALL, COCO_MEDIUM) == (1024, 9216)
    assert (st["all"]["small"], st["all"]["medium"], st["all"]["large"]) == (2, 0, 1)
    assert st["all"]["boxes"] == 3 and st["all"]["difficult"] == 1
    assert (st["all"]["w_min"], st["all"]["w_median"], st["all"]["w_max"]) == (10, 31, 100)
    assert (st["all"]["h_min"], st["all"]["h_median"], st["all"]["h_max"]) == (20, 33, 96)
    cat, dog = st["per_class"]["cat"], st["per_class"]["dog"]
    assert (cat["boxes"], cat["images"], cat["small"], cat["large"]) == (2, 2, 1, 1)
    assert (dog["boxes"], dog["images"], dog["difficult"], dog["w_median"]) == (1, 1, 1, 31)
    assert st["image_sizes"] == {(200, 100): 2, (640, 480): 1}
    text = format_stats(st)
    assert text.startswith("images: 3 (1 without boxes); image sizes: 200x100 (2), 640x480 (1)\n")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:]}
    assert rows["cat"] == ["2", "2", "0", "1", "0", "1", "10/55/100", "20/58/96"]
    assert rows["all"] == ["3", "3", "1", "2", "0", "1", "10/31/100", "20/33/96"]


def test_dataset_stats_of_a_class_without_boxes():
    st = dataset_stats([_record("a", [[0, 0, 4, 4]], [1])], CLASSES)
    assert st["per_class"]["cat"] == {"boxes": 0, "difficult": 0, "small": 0, "medium": 0, "large": 0, "images": 0}
    cat_row = [line for line in format_stats(st).splitlines() if line.startswith("cat")][0]
    assert cat_row.split()[-2:] == ["-", "-"]


def test_split_table_counts_per_split():
    splits = {"train": [_record("a", [[0, 0, 4, 4], [1, 1, 5, 5]], [0, 1]), _record("b", [], [])],
              "val": [_record("c", [[0, 0, 4, 4]], [1])]}
    lines = format_split_table(splits, CLASSES).splitlines()
    assert lines[0].split() == ["split", "images", "negatives", "boxes", "cat", "dog"]
    assert lines[2].split() == ["train", "2", "1", "2", "1", "1"]
    assert lines[3].split() == ["val", "1", "0", "1", "0", "1"]


# ----------------------------------------------------------------------------- checks and split files

def test_check_dataset_of_a_flat_folder_pair_and_bad_arguments(tmp_path):
    root = make_root(tmp_path / "V", {"a": voc_xml([("dog", (1, 1, 9, 9), 0)]),
                                      "b": voc_xml([("bird", (1, 1, 9, 9), 0)])}, split=None)
    res = check_dataset(CLASSES, images_dir=root / "JPEGImages", annotations_dir=root / "Annotations")
    assert res.stats["images"] == 2 and res.stats["per_class"]["dog"]["boxes"] == 1
    assert res.split_problems == []  # a flat pair has no split files to check
    assert any("'bird'" in p for p in res.problems())
    with pytest.raises(ValueError, match="give root=, or images_dir= and annotations_dir="):
        check_dataset(CLASSES, images_dir=root / "JPEGImages")
    no_splits = check_dataset(CLASSES, root=root)
    assert any("no split files" in p for p in no_splits.problems())


def test_write_splits_disjoint_complete_and_kept_unless_overwritten(tmp_path):
    ids = [f"im{i:02d}" for i in range(20)]
    root = make_root(tmp_path / "V", {i: voc_xml([("cat", (1, 1, 9, 9), 0)]) for i in ids}, split=None)
    log = []
    parts = write_splits(root, CLASSES, (0.6, 0.2, 0.2), seed=5, check_images=False, log=log.append)
    main = root / "ImageSets" / "Main"
    files = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "test", "trainval")}
    assert files == parts
    assert [len(files[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(files["train"] + files["val"] + files["test"]) == ids
    assert set(files["trainval"]) == set(files["train"]) | set(files["val"])
    assert log[-2].startswith("wrote ") and log[-1].splitlines()[2].split()[:2] == ["train", "12"]
    before = (main / "train.txt").read_text()
    with pytest.raises(DatasetError, match=r"split files already exist: .*train\.txt.*--overwrite"):
        write_splits(root, CLASSES, (0.6, 0.2, 0.2), seed=6, log=None)
    assert (main / "train.txt").read_text() == before
    other = write_splits(root, CLASSES, (0.6, 0.2, 0.2), seed=6, overwrite=True, log=None)
    assert other != parts and sorted(sum((other[s] for s in ("train", "val", "test")), [])) == ids
    assert check_dataset(CLASSES, root=root).split_problems == []


def test_write_splits_leaves_unusable_ids_out(tmp_path):
    root = make_root(tmp_path / "V", {"good": voc_xml([("cat", (1, 1, 9, 9), 0)]), "noimage": voc_xml([]),
                                      "broken": "<annotation>"}, split=None, image_sizes={"noimage": None})
    parts = write_splits(root, CLASSES, (0.5, 0.5), seed=0, log=None)
    assert sorted(parts) == ["train", "trainval", "val"]  # no test ratio: no test.txt
    assert parts["trainval"] == ["good"] and not (root / "ImageSets" / "Main" / "test.txt").exists()


def test_check_of_coco_and_yolo_sets(tmp_path, capsys):
    from _data_helpers import demo_copies
    from utils.data import formats
    from utils.data.check import check_data

    d = demo_copies(tmp_path, num_images=12, seed=0)
    want = check_dataset(d["classes"], root=d["voc"])
    for fmt in ("coco", "yolo"):
        assert voc_annotation.main(["check", "--data", str(d[fmt])]) == 0  # the class list from the dataset
        out = capsys.readouterr().out
        assert "classes: 4 from the dataset" in out and "loaded 12 images with" in out, fmt
        assert "0 problem(s) found" in out, fmt
        res = check_data(formats.data_spec(data=d[fmt], log=None))
        assert res.stats["images"] == 12 and res.stats["all"].keys() == want.stats["all"].keys(), fmt
        for k, v in want.stats["all"].items():
            assert res.stats["all"][k] == pytest.approx(v, abs=1e-3), (fmt, k)  # YOLO: normalised floats
    # a bad label line and a YOLO image in two splits, each named with its file
    label = sorted((d["yolo"] / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    val_image = sorted((d["yolo"] / "images" / "val").iterdir())[0]
    os.link(val_image, d["yolo"] / "images" / "train" / val_image.name)
    res = check_data(formats.data_spec(data=d["yolo"], log=None))
    probs = res.problems()
    assert any(str(label) in p and "class index 7 is out of range" in p for p in probs)
    assert any(f"1 image(s) in both the train and the val split (first: {val_image.stem})" in p for p in probs)
    assert "problem(s) found:" in res.format() and res.format().startswith(f"{d['yolo']} [all]: loaded")
    # check still takes the VOC options; splitting takes one VOC root as --root or --data
    assert voc_annotation.main(["check", "--data", str(d["voc"]), "--classes", str(d["classes"])]) == 0
    assert "0 problem(s) found" in capsys.readouterr().out
    assert voc_annotation.main(["check", "--data", str(d["voc"])]) == 2
    assert "pass the class list file (--classes FILE)" in capsys.readouterr().err
    assert voc_annotation.main(["--data", str(d["coco"])]) == 2
    assert "splitting needs one VOC root" in capsys.readouterr().err


# ----------------------------------------------------------------------------- teachability

from utils.data.check import anchor_fit, anchors_command, nearest_class, teachability  # noqa: E402
from utils.data.voc import ReportLog, load_voc  # noqa: E402
from utils.targets import DEFAULT_ANCHORS_PATH, load_anchors  # noqa: E402

HW = (416, 416)


def _teach(root, classes, split="train", **kw):
    """teachability of a VOC root's split, the report kept as train.py keeps it."""
    log = ReportLog()
    records = load_voc(root, split, classes, check_images=False, log=log)
    return teachability(records, classes, load_anchors(), HW, log.reports[-1], **kw), records


def _blood(tmp_path, name="rbc", n=6, size=(640, 480), box=(100, 100, 160, 150)):
    return make_root(tmp_path / "B", {f"b{k}": voc_xml([(name, box, 0)], size=size) for k in range(n)},
                     image_sizes={f"b{k}": size for k in range(n)})


def test_nearest_class_case_then_difflib():
    names = ["RBC", "WBC", "Platelets"]
    assert nearest_class("rbc", names) == "RBC"
    assert nearest_class("platelet", names) == "Platelets"
    assert nearest_class("dog", names) is None


def test_unknown_class_names_are_fatal_with_the_nearest_name(tmp_path):
    root = _blood(tmp_path, "rbc")
    f, records = _teach(root, ["RBC"])
    assert sum(len(r.boxes) for r in records) == 0 and len(f.fatal) == 2
    text = f.format()
    assert "class name 'rbc' in the annotations is not in the class list: 6 box(es) dropped; did you mean 'RBC'?" \
        in text
    assert "fatal: most boxes of the training split are dropped as classes not in the class list: 6 of 6 (100%)" \
        in text
    assert "fatal: no usable box in the training split (6 image(s): 6 box(es) dropped)" in text
    assert "6 image(s) lost every box" in text  # a warning: they train as images with nothing to find
    # a minority of unknown boxes only warns
    for k in range(6):
        objects = [("RBC", (100, 100, 160, 150), 0), ("RBC", (200, 100, 260, 150), 0)]
        (root / "Annotations" / f"b{k}.xml").write_text(
            voc_xml(objects + [("rbc", (10, 10, 60, 60), 0)] * (k == 0), size=(640, 480)))
    f, _ = _teach(root, ["RBC"])
    assert not f.fatal and [w.kind for w in f.warnings] == ["unknown class"]
    assert "1 box(es) dropped; did you mean 'RBC'?" in f.warnings[0].message


def test_unknown_class_names_in_coco_and_yolo_copies(tmp_path, capsys):
    """The same finding from every format: the loaders' reports carry the per-class counts."""
    from utils.data.convert import convert

    root = _blood(tmp_path, "rbc")
    classes = tmp_path / "upper.txt"
    classes.write_text("RBC\n")
    for fmt in ("coco", "yolo"):
        convert(root, tmp_path / fmt, fmt, class_names=["rbc"], link=True, check_images=False, log=None)
        assert voc_annotation.main(["check", "--data", str(tmp_path / fmt), "--classes", str(classes)]) == 1, fmt
        out = capsys.readouterr().out
        assert "class name 'rbc' in the annotations is not in the class list: 6 box(es) dropped; " \
               "did you mean 'RBC'?" in out, fmt
        assert "fatal: no usable box in the dataset (every split)" in out, fmt
        assert "6 image(s) lost every box" in out, fmt
    assert voc_annotation.main(["check", "--root", str(root), "--classes", str(classes)]) == 1
    assert "did you mean 'RBC'?" in capsys.readouterr().out


def test_a_class_without_a_training_box_is_fatal(tmp_path):
    root = make_root(tmp_path / "V", {f"i{k}": voc_xml([("cat", (2, 2, 40, 40), 0)]) for k in range(4)})
    f, _ = _teach(root, ["cat", "dog"])
    assert [x.kind for x in f.fatal] == ["class without box"]
    assert "have no box in the training split: 'dog'" in f.fatal[0].line()
    # difficult boxes do not teach: a class with difficult boxes only has no usable box
    (root / "Annotations" / "i0.xml").write_text(voc_xml([("cat", (2, 2, 40, 40), 0), ("dog", (2, 2, 40, 40), 1)]))
    f, _ = _teach(root, ["cat", "dog"])
    assert [x.kind for x in f.fatal] == ["class without box"]


def test_tiny_boxes_warn_with_the_share_and_the_anchors_command(tmp_path):
    import argparse

    root = _blood(tmp_path, "RBC", n=4, box=(100, 100, 102, 102))  # 2x2 px in 640x480: 1.3 px at 416
    args = argparse.Namespace(root=[str(root)], data=None, format=None, images=None, annotations=None,
                              classes="my classes.txt", split_ratios=[0.7, 0.2, 0.1], seed=3)
    cmd = anchors_command(args, HW, split="train")
    assert cmd == (f"python -m utils.data.anchors --root {root} --classes 'my classes.txt' --split-ratios 0.7 0.2 "
                   "0.1 --seed 3 --input-size 416 --out model_data/my_anchors.txt")
    f, records = _teach(root, ["RBC"], command=cmd, anchors_path=DEFAULT_ANCHORS_PATH)
    assert not f.fatal and [w.kind for w in f.warnings] == ["anchor fit"]
    line = f.warnings[0].line()
    assert line.startswith("warning: 100% of the boxes (4 of 4; 4 smaller) fit no anchor of "
                           f"{DEFAULT_ANCHORS_PATH} at 416x416 (best anchor shape IoU < 0.25)")
    assert line.endswith(f"{cmd} and train with --anchors model_data/my_anchors.txt")
    fit = anchor_fit(records, load_anchors(), HW)
    assert (fit["boxes"], fit["poor"], fit["smaller"], fit["larger"]) == (4, 4, 4, 0)
    # boxes larger than every anchor at a small input: 600x450 of 640x480 at 416 vs a tiny anchor set
    tiny = np.array([[2, 2]] * 9, np.float32)
    big = teachability(records[:0] + [VocRecord("x.jpg", np.array([[0, 0, 600, 450]], np.float32),
                                                np.array([0], np.int32), np.zeros(1, bool), 640, 480)],
                       ["RBC"], tiny, HW)
    assert "(1 of 1; 1 larger)" in big.warnings[0].message
    assert anchors_command(None, (320, 416)).endswith(
        "--data PATH --input-size 320x416 --out model_data/my_anchors.txt")


def test_a_clean_set_has_no_finding(tmp_path):
    root = _blood(tmp_path, "RBC", n=4)
    f, _ = _teach(root, ["RBC"])
    assert f.items == [] and f.format() == "teachability of the training split: no finding"


def test_images_that_lose_every_box_are_named(tmp_path):
    root = make_root(tmp_path / "V", {"good": voc_xml([("cat", (2, 2, 40, 40), 0)]),
                                      "flat": voc_xml([("cat", (5, 5, 5, 30), 0)]),  # zero-area: dropped
                                      "empty": voc_xml([])})  # a negative by intent: not a finding
    f, _ = _teach(root, ["cat"])
    assert [w.kind for w in f.warnings] == ["all boxes dropped"] and not f.fatal
    assert "1 image(s) lost every box" in f.warnings[0].message and "flat.jpg" in f.warnings[0].message
