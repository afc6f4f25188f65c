"""utils/data/formats.py: telling VOC / COCO / YOLO apart, one loader for all, class lists, named splits."""
import json

import numpy as np
import pytest

from _data_helpers import make_root, voc_xml, write_jpg
from utils.data import formats
from utils.data.coco import load_coco, write_coco
from utils.data.formats import FORMATS, class_names_from, detect_format, load_records, named_splits
from utils.data.voc import DatasetError, load_flat, load_voc, split_ids
from utils.data.yolo_labels import load_yolo, write_yolo

CLASSES = ["cat", "dog"]


@pytest.fixture
def three(tmp_path):
    """The same two images as a VOC root, a COCO folder (with split files) and a YOLO dataset."""
    voc = make_root(tmp_path / "voc", {"a": voc_xml([("dog", (4, 6, 30, 40), 0), ("cat", (1, 1, 9, 9), 0)]),
                                       "b": voc_xml([])}, split="train")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    recs = load_voc(voc, None, CLASSES, log=None)
    coco = tmp_path / "coco"
    for r in recs:
        write_jpg(coco / "images" / f"{r.image_id}.jpg")
    write_coco(recs, CLASSES, coco / "annotations" / "instances.json")
    write_coco(recs[:1], CLASSES, coco / "annotations" / "instances_train.json")
    write_coco(recs[1:], CLASSES, coco / "annotations" / "instances_val.json")
    yolo = tmp_path / "yolo"
    write_yolo(recs[:1], CLASSES, yolo, "train")
    write_yolo(recs[1:], CLASSES, yolo, "val")
    return {"voc": voc, "coco": coco, "yolo": yolo, "records": recs}


def test_detect_format(three, tmp_path):
    assert FORMATS == ("voc", "coco", "yolo")
    assert detect_format(three["voc"]) == "voc"
    assert detect_format(three["coco"]) == "coco"
    assert detect_format(three["coco"] / "annotations" / "instances.json") == "coco"
    assert detect_format(three["yolo"]) == "yolo"
    assert detect_format(three["yolo"] / "data.yaml") == "yolo"
    (tmp_path / "only_labels" / "labels").mkdir(parents=True)
    assert detect_format(tmp_path / "only_labels") == "yolo"
    assert detect_format(three["voc"] / "Annotations") == "voc"  # a flat folder of XML files


def test_detect_format_says_what_it_looked_for(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"stuff: cannot tell the dataset format; looked for a \.json file \(COCO\), "
                                         r"a \.yaml/\.yml file \(YOLO\).*Annotations/.*annotations/\*\.json.*labels/"):
        detect_format(tmp_path / "stuff")
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(tmp_path / "stuff" / "notes.txt")
    with pytest.raises(ValueError, match="dataset not found: .*nope"):
        detect_format(tmp_path / "nope")


def test_load_records_dispatches_to_the_loaders(three):
    def ids_boxes(recs):
        return {r.image_id: (r.labels.tolist(), r.boxes.tolist()) for r in recs}

    expected = ids_boxes(three["records"])
    for fmt in FORMATS:
        got = load_records(three[fmt], None, CLASSES, log=None)
        assert sorted(ids_boxes(got)) == sorted(expected), fmt
        for i, (labels, boxes) in ids_boxes(got).items():
            assert labels == expected[i][0] and np.allclose(boxes, expected[i][1], atol=1e-3), (fmt, i)
    # the same records as calling the loader directly
    direct = load_coco(three["coco"] / "annotations" / "instances.json", three["coco"] / "images", None, CLASSES,
                       log=None)
    assert ids_boxes(load_records(three["coco"] / "annotations" / "instances.json", None, CLASSES, log=None)) \
        == ids_boxes(direct)
    assert ids_boxes(load_records(three["yolo"], "val", CLASSES, log=None)) \
        == ids_boxes(load_yolo(three["yolo"], "val", CLASSES, log=None))
    # named splits: VOC split files, COCO split JSONs, YOLO data.yaml entries
    for fmt in FORMATS:
        assert [r.image_id for r in load_records(three[fmt], "train", CLASSES, log=None)] == ["a"], fmt
        assert [r.image_id for r in load_records(three[fmt], "val", CLASSES, log=None)] == ["b"], fmt
        assert named_splits(three[fmt])["train"] == ["a"], fmt


def test_load_records_format_override_and_flat_voc(three, tmp_path):
    flat = load_records(three["voc"] / "Annotations", None, CLASSES, images=three["voc"] / "JPEGImages", log=None)
    assert [r.image_id for r in flat] == [r.image_id for r in load_flat(three["voc"] / "JPEGImages",
                                                                        three["voc"] / "Annotations", None, CLASSES,
                                                                        log=None)]
    with pytest.raises(ValueError, match="unknown dataset format 'kitti'"):
        load_records(three["voc"], None, CLASSES, fmt="kitti", log=None)
    with pytest.raises(ValueError, match="images= is for COCO"):
        load_records(three["yolo"], None, CLASSES, images=tmp_path, log=None)


def test_load_records_ratio_split_for_a_single_coco_file(three):
    js = three["coco"] / "annotations" / "instances.json"
    parts = {s: [r.image_id for r in load_records(js, s, CLASSES, ratios=(0.5, 0.5), seed=3, log=None)]
             for s in ("train", "val")}
    want = split_ids(["a", "b"], (0.5, 0.5), 3)
    assert parts == {"train": want["train"], "val": want["val"]}


def test_coco_folder_split_choice(three):
    with pytest.raises(DatasetError, match=r"split files for .*train.*val.* but none for 'test'"):
        load_records(three["coco"], "test", CLASSES, log=None)
    (three["coco"] / "annotations" / "instances.json").rename(three["coco"] / "annotations" / "all.json")
    (three["coco"] / "annotations" / "extra.json").write_text(json.dumps({}))
    with pytest.raises(DatasetError, match="cannot tell which of all.json, extra.json"):
        load_records(three["coco"], None, CLASSES, log=None)


def test_class_names_from(three):
    assert class_names_from(three["coco"]) == CLASSES
    assert class_names_from(three["yolo"]) == CLASSES
    assert class_names_from(three["yolo"] / "data.yaml", "yolo") == CLASSES
    with pytest.raises(DatasetError, match=r"VOC dataset does not list its classes.*--classes"):
        class_names_from(three["voc"])
    with pytest.raises(DatasetError, match="VOC dataset does not list"):
        load_records(three["voc"], None, None, log=None)
    recs = load_records(three["yolo"], None, None, log=None)  # the YOLO names are used
    assert sorted(r.image_id for r in recs) == ["a", "b"]
    assert formats.coco_json(three["coco"], "val")[0].name == "instances_val.json"


# ----------------------------------------------------------------------------- the CLIs' data options

def _parse(argv, **kw):
    import argparse
    p = argparse.ArgumentParser()
    formats.add_data_arguments(p, **kw)
    return p, p.parse_args(argv)


def test_data_options_parse_and_combinations(tmp_path):
    _, a = _parse(["--root", "A", "B", "--root", "C"])
    assert a.root == ["A", "B", "C"] and a.data is None and a.format is None and a.classes is None
    p, _ = _parse([])
    p.set_defaults(root=["from_yaml"])  # a --config value is replaced, not extended
    assert p.parse_args(["--root", "X"]).root == ["X"] and p.parse_args([]).root == ["from_yaml"]
    _, a = _parse(["--calib-root", "D", "--calib-image-dir", "I", "--calib-format", "coco"], prefix="calib-",
                  aliases=("--calib-root",), images_flag="--calib-image-dir", voc_options=False, classes=False)
    assert (a.calib_data, a.calib_image_dir, a.calib_format) == ("D", "I", "coco") and not hasattr(a, "root")
    _, a = _parse(["--split-ratios", "0.5", "0.25", "0.25"], split_ratios=None)
    assert a.split_ratios == [0.5, 0.25, 0.25]
    problems = {
        ("--root", "A", "--images", "I"): "give either --root, or --images with --annotations",
        ("--root", "A", "--data", "D"): "give either --root (VOC roots) or --data",
        ("--annotations", "X"): "--images and --annotations go together",
        ("--images", "I"): "--images needs --annotations",
        ("--root", "A", "--format", "coco"): "--root names VOC roots",
    }
    for argv, want in problems.items():
        got = formats.data_options_problem(_parse(list(argv))[1])
        assert got and got.startswith(want), (argv, got)
    for ok in (["--data", "D"], ["--data", "D", "--images", "I"], ["--images", "I", "--annotations", "X"], []):
        assert formats.data_options_problem(_parse(ok)[1]) is None, ok
    assert not formats.has_data_options(_parse([])[1]) and formats.has_data_options(_parse(["--data", "D"])[1])


def test_class_list_from_option_dataset_default_or_error(three, tmp_path):
    lines = []
    spec = formats.data_spec(data=three["coco"], log=lines.append)
    assert (spec.fmt, spec.class_names) == ("coco", CLASSES) and spec.classes_source.startswith("COCO categories")
    assert len(lines) == 1 and lines[0].startswith("classes: 2 from the dataset (COCO categories of")
    assert "cat, dog" in lines[0] and "--classes FILE overrides" in lines[0]
    spec = formats.data_spec(data=three["yolo"] / "data.yaml", log=lines.append)
    assert spec.class_names == CLASSES and "YOLO names" in lines[-1]
    other = tmp_path / "other.txt"
    other.write_text("dog\ncat\n")
    lines.clear()
    spec = formats.data_spec(data=three["coco"], classes=other, log=lines.append)
    assert spec.class_names == ["dog", "cat"] and lines == [] and spec.classes_source == f"file {other}"
    # mapped by name onto the given order
    (a,) = [r for r in spec.load(None, log=None) if r.image_id == "a"]
    assert sorted(a.labels.tolist()) == [0, 1]
    assert formats.data_spec(roots=[three["voc"]], default_classes=other, log=None).class_names == ["dog", "cat"]
    with pytest.raises(DatasetError, match="VOC dataset does not list its classes.*--classes"):
        formats.data_spec(roots=[three["voc"]], log=None)
    with pytest.raises(DatasetError, match="no dataset given: pass --data PATH"):
        formats.data_spec(log=None)
    flat = formats.data_spec(images=three["voc"] / "JPEGImages", annotations=three["voc"] / "Annotations",
                             class_names=CLASSES)
    assert flat.flat and flat.named_splits() == set() and len(flat.load(None, log=None)) == 2


def test_records_from_args_every_format_and_named_splits(three):
    for fmt in FORMATS:
        extra = ["--classes", str(three["voc"] / "c.txt")] if fmt == "voc" else []
        if fmt == "voc":
            (three["voc"] / "c.txt").write_text("cat\ndog\n")
        _, a = _parse(["--data", str(three[fmt]), *extra])
        recs, names = formats.records_from_args(a, "train", log=None)
        assert names == CLASSES and [r.image_id for r in recs] == ["a"], fmt
        spec = formats.spec_from_args(a, log=None)
        assert spec.from_files("train") and spec.from_files("all") and not spec.from_files("test"), fmt
    _, a = _parse(["--root", str(three["voc"]), "--classes", str(three["voc"] / "c.txt")])
    assert formats.spec_from_args(a, log=None).named_splits() == {"train", "val"}


def test_split_settings_prefer_given_then_recorded_then_defaults():
    rec = {"split": formats.MADE_ON_THE_SPOT, "split_ratios": [0.7, 0.2, 0.1], "seed": 3}
    log = []
    assert formats.split_settings(None, log=log.append) == (formats.DEFAULT_RATIOS, 0)
    assert formats.split_settings(rec, log=log.append) == ((0.7, 0.2, 0.1), 3) and log == []
    assert formats.split_settings(rec, None, 3, log=log.append) == ((0.7, 0.2, 0.1), 3) and log == []
    assert formats.split_settings(rec, None, 0, log=log.append) == ((0.7, 0.2, 0.1), 0)
    assert len(log) == 1 and "trained on a split made on the spot with ratios 0.7/0.2/0.1 and seed 3" in log[0]
    assert formats.split_settings(rec, [0.8, 0.1, 0.1], None, log=log.append) == ((0.8, 0.1, 0.1), 3)
    assert len(log) == 2 and "may hold images it trained on" in log[1]
    # a run whose splits came from files: no warning (its ratios and seed made nothing)
    assert formats.split_settings({**rec, "split": formats.FROM_FILES}, None, 0, log=log.append)[1] == 0
    assert len(log) == 2


def test_recorded_split_round_trip(tmp_path):
    from _data_helpers import flat_set

    images, xml = flat_set(tmp_path / "flat", 20)
    spec = formats.data_spec(images=images, annotations=xml, class_names=CLASSES, log=None)
    rec = json.loads(json.dumps(spec.record((0.6, 0.2, 0.2), 3)))  # as it travels in yolo_meta.json
    ids = [f"im{i:02d}" for i in range(20)]
    assert rec["test_ids"] == split_ids(ids, (0.6, 0.2, 0.2), 3)["test"] and len(rec["test_ids"]) == 4
    assert rec["test_ids"] != split_ids(ids, (0.6, 0.2, 0.2), 0)["test"]  # seed 0 would be another split
    assert (rec["format"], rec["seed"], rec["split_ratios"], rec["split"]) == ("voc", 3, [0.6, 0.2, 0.2],
                                                                              formats.MADE_ON_THE_SPOT)
    assert rec["splits"] == {s: formats.MADE_ON_THE_SPOT for s in ("train", "val", "test")}
    assert rec["paths"] == [str(xml.resolve())] and rec["images"] == str(images.resolve()) and rec["classes"] == "given"
    lines = []
    got = formats.recorded_records(rec, "test", CLASSES, log=lines.append)
    assert sorted(r.image_id for r in got) == rec["test_ids"]
    assert "the test split of the training run's dataset" in lines[0] and "seed 3" in lines[0]
    # images added since training move the cut points: the recorded test images are still used
    for i in range(20, 26):
        write_jpg(images / f"im{i:02d}.jpg", 96, 64)
        (xml / f"im{i:02d}.xml").write_text(voc_xml([("cat", (4, 6, 40, 50), 0)], size=(96, 64)))
    assert split_ids(ids + [f"im{i:02d}" for i in range(20, 26)], (0.6, 0.2, 0.2), 3)["test"] != rec["test_ids"]
    lines.clear()
    got = formats.recorded_records(rec, "test", CLASSES, log=lines.append)
    assert sorted(r.image_id for r in got) == rec["test_ids"]
    assert any("the dataset changed since training" in m for m in lines)
    # model_split_records: no data options -> the recorded split; none recorded -> an error naming the options
    _, a = _parse([], split_ratios=None)
    assert sorted(r.image_id for r in formats.model_split_records(a, "test", CLASSES, rec, log=None)) \
        == rec["test_ids"]
    with pytest.raises(DatasetError, match="does not record the one it was trained on: pass --data PATH"):
        formats.model_split_records(a, "test", CLASSES, None, log=None)
    # named splits come from files
    voc = make_root(tmp_path / "voc", {"a": voc_xml([("cat", (1, 1, 9, 9), 0)])}, split="test")
    rec2 = formats.data_spec(roots=[voc], class_names=CLASSES, log=None).record((0.8, 0.1, 0.1), 0)
    assert rec2["splits"] == {"train": formats.MADE_ON_THE_SPOT, "val": formats.MADE_ON_THE_SPOT,
                              "test": formats.FROM_FILES} and rec2["test_ids"] == ["a"]
