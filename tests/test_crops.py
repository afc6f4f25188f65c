"""utils/crops.py: boxes of a VOC dataset cut into class folders (sizes, pixels, skips, BCCD counts)."""
import collections
import pathlib

import numpy as np
import pytest
from PIL import Image

from _data_helpers import make_root, voc_xml
from utils.crops import crop_box, crop_region, main, make_crops
from utils.data.images import read_image
from utils.data.voc import DatasetError, load_voc, read_class_names

RED, BLUE, BG = (230, 20, 20), (20, 30, 220), (40, 120, 40)
CLASSES = ["cat", "dog"]


def _png(path, boxes_colours, size=(64, 48)):
    """A background-coloured PNG with solid rectangles [x1, x2) x [y1, y2) (lossless, exact pixels)."""
    rgb = np.empty((size[1], size[0], 3), np.uint8)
    rgb[:] = BG
    for (x1, y1, x2, y2), colour in boxes_colours:
        rgb[y1:y2, x1:x2] = colour
    Image.fromarray(rgb).save(path)


@pytest.fixture
def voc_root(tmp_path):
    """im1 (train): a red cat, a blue dog, a difficult dog, a 4x4 cat; im2 (val): a blue dog."""
    im1 = [("cat", (4, 6, 24, 30), 0), ("dog", (30, 10, 60, 40), 0), ("dog", (40, 2, 50, 8), 1),
           ("cat", (0, 40, 4, 44), 0)]
    im2 = [("dog", (10, 10, 40, 30), 0)]
    root = make_root(tmp_path / "voc", {"im1": voc_xml(im1, filename="im1.png"),
                                        "im2": voc_xml(im2, filename="im2.png")},
                     split="train", image_sizes={"im1": None, "im2": None})
    (root / "ImageSets" / "Main" / "train.txt").write_text("im1\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("im2\n")
    _png(root / "JPEGImages" / "im1.png", [((4, 6, 24, 30), RED), ((30, 10, 60, 40), BLUE)])
    _png(root / "JPEGImages" / "im2.png", [((10, 10, 40, 30), BLUE)])
    return root


def test_crop_region_adds_the_margin_and_clips_to_the_image():
    assert crop_region((10, 20, 30, 60), (100, 100), 0.1) == (8, 16, 32, 64)
    assert crop_region((10.5, 20.2, 29.5, 59.9), (100, 100), 0.0) == (10, 20, 30, 60)  # floor / ceil
    x1, y1, x2, y2 = crop_region((2, 70, 40, 80), (80, 100), 0.25)  # h 80, w 100
    assert (x1, y1, x2, y2) == (0, 67, 50, 80)


def test_crop_box_pad_keeps_the_aspect_and_stretch_fills_the_square():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:] = BG
    image[6:30, 4:24] = RED  # 20 wide, 24 high
    pad = crop_box(image, (4, 6, 24, 30), 24, margin=0.0, fit="pad")
    assert pad.shape == (24, 24, 3) and pad.dtype == np.uint8
    assert (pad[:, 4:20] == RED).all()  # 20x24 fitted into 24x24: 20 px wide, centred
    assert (pad[:, :2] == 128).all() and (pad[:, -2:] == 128).all()  # letterbox grey bars
    stretch = crop_box(image, (4, 6, 24, 30), 16, margin=0.0, fit="stretch")
    assert stretch.shape == (16, 16, 3) and (stretch == RED).all()
    context = crop_box(image, (4, 6, 24, 30), 32, margin=0.5, fit="stretch")
    assert (context[0, 0] == BG).all() and (context[16, 16] == RED).all()
    with pytest.raises(ValueError, match="unknown fit 'crop'"):
        crop_box(image, (4, 6, 24, 30), 16, fit="crop")


def test_crops_land_in_class_folders_with_size_and_pixels(voc_root, tmp_path):
    out = tmp_path / "crops"
    messages = []
    res = make_crops(voc_root, CLASSES, out, size=20, margin=0.0, min_size=8, splits=("train", "val"),
                     fit="stretch", log=messages.append)
    assert res["counts"] == {"train": {"cat": 1, "dog": 1}, "val": {"cat": 0, "dog": 1}}
    assert res["skipped"]["train"] == {"difficult": 1, "small": 1, "unreadable": 0}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert files == ["train/cat/im1_0.png", "train/dog/im1_1.png", "val/dog/im2_0.png"]
    for name, colour in (("train/cat/im1_0.png", RED), ("train/dog/im1_1.png", BLUE), ("val/dog/im2_0.png", BLUE)):
        crop = read_image(out / name)
        assert crop.shape == (20, 20, 3)
        assert (crop == colour).all(), name
    assert "train: 2 crops (cat 1, dog 1)" in "\n".join(messages)
    assert "skipped 1 difficult, 1 under 8 px" in "\n".join(messages)

    # existing crops are not mixed with new ones: an error, or replaced with --overwrite
    with pytest.raises(DatasetError, match=r"already holds crops; pass --overwrite"):
        make_crops(voc_root, CLASSES, out, size=20, splits=("train",), log=None)
    res = make_crops(voc_root, CLASSES, out, size=12, margin=0.1, min_size=2, splits=("train",), fmt="jpg",
                     keep_difficult=True, overwrite=True, log=None)
    assert res["counts"]["train"] == {"cat": 2, "dog": 2}
    assert sorted(str(p.relative_to(out / "train")) for p in (out / "train").rglob("*.*")) == [
        "cat/im1_0.jpg", "cat/im1_3.jpg", "dog/im1_1.jpg", "dog/im1_2.jpg"]
    assert read_image(out / "train" / "cat" / "im1_3.jpg").shape == (12, 12, 3)


def test_command_line(voc_root, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    assert main(["--root", str(voc_root), "--classes", str(classes), "--out", str(tmp_path / "c"),
                 "--size", "16", "--splits", "train"]) == 0
    assert (tmp_path / "c" / "train" / "cat" / "im1_0.png").is_file()
    assert "train: 2 crops" in capsys.readouterr().out
    assert main(["--root", str(tmp_path / "nowhere"), "--classes", str(classes), "--out", str(tmp_path / "d")]) == 2
    assert "dataset root not found" in capsys.readouterr().err


def test_bccd_crops_match_the_annotations(bccd_root, tmp_path):
    names = read_class_names(pathlib.Path(__file__).resolve().parents[1] / "model_data" / "bccd_classes.txt")
    res = make_crops(bccd_root, names, tmp_path / "bccd", size=24, min_size=8, log=None)
    totals = collections.Counter()
    for split in ("train", "val", "test"):
        expected = collections.Counter()
        for rec in load_voc(bccd_root, split, names, log=None):
            sides = np.minimum(rec.boxes[:, 2] - rec.boxes[:, 0], rec.boxes[:, 3] - rec.boxes[:, 1])
            for label in rec.labels[(sides >= 8) & ~rec.difficult]:
                expected[names[label]] += 1
        assert res["counts"][split] == {n: expected[n] for n in names}
        for n in names:
            assert len(list((tmp_path / "bccd" / split / n).glob("*.png"))) == expected[n]
        totals.update(expected)
    # the figures: about 4,150 RBC, 370 WBC and 360 platelets
    assert totals["RBC"] > 4000 and 300 < totals["WBC"] < 450 and 300 < totals["Platelets"] < 450
