"""eval_map.py end to end: a saved tiny detector on a small synthetic VOC root."""
import json

import numpy as np
import pytest

import eval_map
from _helpers import tiny_body
from utils.targets import load_anchors

checkpoint = pytest.importorskip("utils.checkpoint")
demo_data = pytest.importorskip("utils.data.demo_data")

ANCHORS = load_anchors()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalmap")
    root = demo_data.make_demo_dataset(tmp / "demo", num_images=20, image_size=(160, 128), seed=1)
    classes = list(demo_data.DEMO_CLASSES)
    weights = str(tmp / "tiny.keras")
    meta = {"backbone": "tiny", "alpha": 1.0, "class_names": classes, "anchors": ANCHORS.tolist(),
            "input_shape": [96, 128]}
    checkpoint.save_detector(tiny_body((96, 128), len(classes)), weights, meta)
    return root, weights, tmp


def test_eval_map_writes_table_json_and_plots(setup, capsys):
    root, weights, tmp = setup
    out = tmp / "out"
    rc = eval_map.main(["--weights", weights, "--root", str(root), "--split", "trainval", "--batch-size", "4",
                        "--save-dir", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "circle" in text and "mAP@0.5" in text and "COCO mAP@[.5:.95]" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["class_names"] == list(demo_data.DEMO_CLASSES)
    assert doc["settings"]["score_thresh"] == 0.001 and doc["settings"]["max_det"] == 300
    assert 0.0 <= doc["coco"]["map_50_95"] <= doc["coco"]["map_50"] <= 1.0  # pycocotools' -1 for 300 dets
    assert doc["num_images"] == len((root / "ImageSets/Main/trainval.txt").read_text().split())
    assert all((out / f).is_file() for f in ("pr_curves.png", "ap_per_class.png", "confusion_matrix.png"))


def test_eval_map_errors_name_the_problem(setup, capsys, tmp_path):
    root, weights, _ = setup
    assert eval_map.main(["--weights", str(tmp_path / "nope.keras"), "--root", str(root)]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert eval_map.main(["--weights", weights, "--root", str(tmp_path / "noroot")]) == 2
    assert f"dataset root not found: {tmp_path / 'noroot'}" in capsys.readouterr().err
    classes = tmp_path / "two.txt"
    classes.write_text("a\nb\n")
    assert eval_map.main(["--weights", weights, "--root", str(root), "--classes", str(classes)]) == 2
    assert "lists 2 classes but" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_map.main(["--weights", weights, "--root", str(root), "--images", str(root)])
    assert "either --root, or --images" in capsys.readouterr().err
