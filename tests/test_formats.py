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
