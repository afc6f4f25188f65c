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


# ----------------------------------------------------------------------------- the run's own split, other formats

@pytest.fixture
def seen(monkeypatch):
    """The records eval_map.py evaluates on, call by call."""
    from utils import evaluate
    calls = []
    real = evaluate.evaluate_records
    monkeypatch.setattr(evaluate, "evaluate_records",
                        lambda det, recs, **kw: calls.append(recs) or real(det, recs, **kw))
    return calls


def test_a_split_made_on_the_spot_is_the_training_runs_not_seed_0(tmp_path, capsys, seen):
    """A run trained on a flat folder pair with --seed 3: eval_map.py evaluates on that run's test
    images (from the model's metadata), not on a split made again with seed 0, which holds
    images the run trained on."""
    from _data_helpers import flat_set
    from utils.data import formats
    from utils.data.voc import split_ids

    images, xml = flat_set(tmp_path / "flat", 20, classes=("cat", "dog"))
    spec = formats.data_spec(images=images, annotations=xml, class_names=["cat", "dog"], log=None)
    data = spec.record((0.8, 0.1, 0.1), 3)
    weights = str(tmp_path / "seed3.keras")
    meta = {"backbone": "tiny", "alpha": 1.0, "class_names": ["cat", "dog"], "anchors": ANCHORS.tolist(),
            "input_shape": [64, 96], "data": data}
    checkpoint.save_detector(tiny_body((64, 96), 2), weights, meta)
    ids = [f"im{i:02d}" for i in range(20)]
    run_test, seed0_test = split_ids(ids, (0.8, 0.1, 0.1), 3)["test"], split_ids(ids, (0.8, 0.1, 0.1), 0)["test"]
    assert set(seed0_test) & set(split_ids(ids, (0.8, 0.1, 0.1), 3)["train"])  # the old rule: trained-on images
    common = ["--weights", weights, "--no-coco", "--batch-size", "4", "--save-dir", str(tmp_path / "out")]

    assert eval_map.main(common) == 0  # no data option: the run's own dataset and test split
    out = capsys.readouterr().out
    assert sorted(r.image_id for r in seen[-1]) == run_test
    assert "data: the test split of the training run's dataset" in out and "seed 3" in out
    flat = ["--images", str(images), "--annotations", str(xml)]
    assert eval_map.main(common + flat) == 0  # the same set named: the run's ratios and seed, not 0
    assert sorted(r.image_id for r in seen[-1]) == run_test and "warning" not in capsys.readouterr().out
    assert eval_map.main(common + flat + ["--seed", "0"]) == 0  # explicit: obeyed, with a warning
    out = capsys.readouterr().out
    assert sorted(r.image_id for r in seen[-1]) == seed0_test
    assert "warning: the model was trained on a split made on the spot with ratios 0.8/0.1/0.1 and seed 3" in out
    assert eval_map.main(common + flat + ["--split-ratios", "0.5", "0.25", "0.25"]) == 0
    assert len(seen[-1]) == 5 and "may hold images it trained on" in capsys.readouterr().out

    bare = str(tmp_path / "bare.keras")  # a model that records no dataset
    checkpoint.save_detector(tiny_body((64, 96), 2), bare, {k: v for k, v in meta.items() if k != "data"})
    assert eval_map.main(["--weights", bare]) == 2
    assert "does not record the one it was trained on: pass --data PATH" in capsys.readouterr().err


def test_eval_map_on_a_coco_copy(tmp_path, capsys, seen):
    from _data_helpers import demo_copies

    d = demo_copies(tmp_path, num_images=24, seed=0)
    weights = str(tmp_path / "tiny.keras")
    classes = list(demo_data.DEMO_CLASSES)
    checkpoint.save_detector(tiny_body((96, 128), len(classes)), weights,
                             {"backbone": "tiny", "alpha": 1.0, "class_names": classes, "anchors": ANCHORS.tolist(),
                              "input_shape": [96, 128]})
    test_ids = sorted((d["voc"] / "ImageSets/Main/test.txt").read_text().split())
    for data in (["--data", str(d["coco"])],
                 ["--data", str(d["coco"] / "annotations" / "instances_test.json"), "--images",
                  str(d["coco"] / "images"), "--split", "all"],
                 ["--data", str(d["yolo"] / "data.yaml"), "--format", "yolo"]):
        assert eval_map.main(["--weights", weights, "--no-coco", "--save-dir", str(tmp_path / "out"), *data]) == 0
        assert sorted(r.image_id for r in seen[-1]) == test_ids, data
        doc = json.loads((tmp_path / "out" / "results.json").read_text())
        assert doc["num_images"] == len(test_ids) and doc["class_names"] == classes
    assert "mAP@0.5" in capsys.readouterr().out
