"""utils/classify.py and classify.py: class-folder datasets and their bad input, metrics against
hand-computed cases, the classifier model, export-backbone into the detector, and (slow) a tiny
training run end to end with resume, eval and predict."""
import ast
import csv
import json
import os
import pathlib

import keras
import numpy as np
import pytest
from PIL import Image

from utils import classify as C
from utils.data.voc import DatasetError

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def write_class_folders(base, per_class=12, size=40, seed=0, colours=COLOURS):
    """A class-folder set of noisy solid colours: base/<colour>/<i>.png."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = np.clip(np.array(colour) + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(base / name / f"{i:02d}.png")
    return base


# ----------------------------------------------------------------------------- metrics

def test_metrics_against_hand_computed_cases():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 1, 0, 1, 1, 0]
    probs = np.eye(3)[preds] * 0.8 + 0.1
    res = C.classification_metrics(labels, probs, ["a", "b", "c"])
    assert res["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert res["top1"] == pytest.approx(4 / 6)
    assert [pc["accuracy"] for pc in res["per_class"]] == pytest.approx([2 / 3, 1.0, 0.0])
    assert [pc["images"] for pc in res["per_class"]] == [3, 2, 1]
    assert res["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert res["top5"] is None  # 3 classes: no top-5
    text = C.format_metrics(res)
    assert "top-1 accuracy 0.6667, balanced accuracy 0.5556 (6 images)" in text

    # a class without images is left out of the balanced accuracy; top-5 with 7 classes
    probs = np.array([[.30, .25, .20, .10, .08, .05, .02],   # true 6: 7th -> top-5 miss
                      [.02, .05, .08, .10, .20, .25, .30],   # true 0: 7th -> miss
                      [.30, .25, .20, .10, .08, .05, .02],   # true 4: 5th -> top-5 hit
                      [.30, .25, .20, .10, .08, .05, .02]])  # true 0: top-1 hit
    res = C.classification_metrics([6, 0, 4, 0], probs, list("abcdefg"))
    assert res["top1"] == pytest.approx(0.25) and res["top5"] == pytest.approx(0.5)
    assert np.isnan(res["per_class"][1]["accuracy"])
    assert res["balanced_accuracy"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert C.class_confusion_matrix([1, 1], [0, 1], 2).tolist() == [[0, 0], [1, 1]]


def test_confusion_matrix_png(tmp_path):
    path = C.plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", "a title")
    assert Image.open(path).size[0] > 100


# ----------------------------------------------------------------------------- datasets

def test_bad_inputs_are_named_and_the_rest_goes_on(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3, colours={"a": (200, 0, 0), "b": (0, 0, 200)})
    (data / "a" / "notes.txt").write_text("not an image")
    (data / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "empty").mkdir()
    (data / "only_text").mkdir()
    (data / "only_text" / "readme.md").write_text("x")
    Image.new("RGB", (8, 8)).save(data / "loose.png")
    (data / "a" / ".DS_Store").write_bytes(b"\0")  # hidden files are not reported
    messages = []
    train, val = C.load_train_val(data, val_ratio=1 / 3, seed=0, log=messages.append)
    text = "\n".join(messages)
    assert f"{data / 'a' / 'notes.txt'}: not an image file" in text
    assert f"{data / 'b' / 'broken.jpg'}" in text and "skipped" in text
    assert f"class folder {data / 'empty'} has no usable images; class left out" in text
    assert f"class folder {data / 'only_text'} has no usable images" in text
    assert f"1 image file(s) directly in {data} belong to no class folder" in text
    assert ".DS_Store" not in text
    assert messages[-1].startswith(f"{data}: 6 images in 2 class folders (a 3, b 3); skipped: ")
    assert train.class_names == val.class_names == ["a", "b"]
    assert (len(train), len(val)) == (4, 2) and val.counts() == [1, 1]
    assert not set(train.paths) & set(val.paths)

    single = write_class_folders(tmp_path / "one", per_class=2, colours={"only": (1, 2, 3)})
    with pytest.raises(DatasetError, match=r"needs at least 2 classes with images, found 1 \('only'\)"):
        C.load_train_val(single, log=None)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        C.load_train_val(tmp_path / "nowhere", log=None)


def test_split_folders_and_the_flat_split(tmp_path):
    flat = write_class_folders(tmp_path / "flat", per_class=10, size=8)
    a_train, a_val = C.load_train_val(flat, 0.2, seed=3, log=None)
    b_train, b_val = C.load_train_val(flat, 0.2, seed=3, log=None)
    assert a_val.paths == b_val.paths and a_val.counts() == [2, 2, 2]  # deterministic, per class
    assert sorted(a_train.paths + a_val.paths) == sorted(str(p) for p in flat.rglob("*.png"))
    assert C.load_train_val(flat, 0.2, seed=4, log=None)[1].paths != a_val.paths
    assert C.load_train_val(flat, 0.0, log=None)[1] is None
    assert len(C.load_image_set(flat, "all", log=None)) == 30
    with pytest.raises(DatasetError, match="its splits are train and val"):
        C.load_image_set(flat, "test", log=None)

    split = tmp_path / "split"
    write_class_folders(split / "train", per_class=2, size=8)
    write_class_folders(split / "val", per_class=1, size=8, colours={"red": (1, 1, 1), "pink": (9, 9, 9)})
    assert C.dataset_layout(split) == "splits" and C.dataset_layout(flat) == "folders"
    messages = []
    train, val = C.load_train_val(split, log=messages.append)
    assert train.class_names == ["blue", "green", "red"] and val.counts() == [0, 0, 1]
    assert any("class 'pink' is not one of the 3 classes" in m for m in messages)
    assert C.load_image_set(split, "test", log=None) is None


def test_epoch_order_is_a_function_of_seed_and_epoch(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=5, size=8)
    image_set = C.load_image_set(data, "all", log=None)
    samples = C.EpochSamples(image_set, (16, 16), batch_size=4, seed=1)
    assert len(samples) == 3 and samples.num_samples == 12  # whole batches
    first = samples.order().copy()
    samples.set_epoch(1)
    second = samples.order().copy()
    samples.set_epoch(0)
    assert (samples.order() == first).all() and (first != second).any()
    assert sorted(first) == list(range(15))
    image, label = samples.sample(0)
    assert image.shape == (16, 16, 3) and label == image_set.labels[first[0]]
    # an image that turns unreadable is reported once and replaced
    messages = []
    samples = C.EpochSamples(image_set, (16, 16), 4, seed=1, log=messages.append)
    pathlib.Path(image_set.paths[samples.order()[0]]).write_bytes(b"gone")
    assert samples.sample(0)[1] == image_set.labels[samples.order()[1]]
    samples.sample(0)
    assert len(messages) == 1 and "replaced by another image" in messages[0]
    assert C.balanced_class_weights([10, 30, 0]) == pytest.approx([2.0, 2 / 3, 1.0])


def test_augmentation_runs_in_tf_data(tmp_path):
    import tensorflow as tf
    data = write_class_folders(tmp_path / "d", per_class=2, size=24)
    samples = C.EpochSamples(C.load_image_set(data, "all", log=None), (32, 32), batch_size=3, seed=0)
    ds = samples.as_tf_dataset(C.make_augmentation("both", seed=0))
    batches = list(ds)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (3, 32, 32, 3) and x.dtype == tf.float32 and y.shape == (3, 3)
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
    plain = list(C.EpochSamples(samples.set, (32, 32), 3, seed=0).as_tf_dataset(None))[0][0]
    assert not np.allclose(x.numpy(), plain.numpy())
    assert C.make_augmentation("none", 0, 0, 0, 0) is None
    with pytest.raises(ValueError, match="unknown flip 'diagonal'"):
        C.make_augmentation("diagonal")


# ----------------------------------------------------------------------------- model and export

def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.random(w.shape) + 0.5).astype(w.dtype) if "variance" in w.path
                       else rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.weights])


def test_classifier_model_and_its_file(tmp_path):
    model = C.build_classifier("squeezenet", 0.5, 32, 4, dropout=0.3)
    assert model.output.shape == (None, 4) and model.input.shape == (None, 32, 32, 3)
    names = [layer.name for layer in model.layers]
    assert names[-3:] == list(C.HEAD_LAYERS)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Lambda)]
    assert model.get_layer("cls_dropout").rate == pytest.approx(0.3)
    meta = {"backbone": "squeezenet", "alpha": 0.5, "class_names": list("abcd"), "input_shape": [32, 32]}
    path = C.save_classifier(model, tmp_path / "c.keras", meta)
    loaded, got = C.load_classifier(path)
    assert got["class_names"] == list("abcd") and got["kind"] == "classifier"
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        C.build_classifier("squeezenet", 0.5, 32, 1)
    with pytest.raises(ValueError, match="alpha 0.3 is not valid for backbone 'squeezenet'"):
        C.build_classifier("squeezenet", 0.3, 32, 2)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(C.ClassifyError, match="not a valid .keras file"):
        C.load_classifier(tmp_path / "junk.keras")


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the mismatched files below
def test_export_backbone_loads_every_weight_into_the_detector(tmp_path):
    from nets.yolo import backbone_layer_names, yolo_body

    model = C.build_classifier("squeezenet", 0.5, 64, 3)
    _randomise(model)
    meta = {"backbone": "squeezenet", "alpha": 0.5, "class_names": ["x", "y", "z"], "input_shape": [64, 64]}
    weights = C.save_classifier(model, tmp_path / "best.keras", meta)
    out = tmp_path / "backbone.weights.h5"
    summary = C.export_backbone(weights, out, log=None)
    assert summary["backbone"] == "squeezenet" and summary["layers"] > 20

    body = yolo_body((64, 64), 2, backbone="squeezenet", alpha=0.5, backbone_weights=str(out))
    compared = 0
    for name in backbone_layer_names(body):
        got, want = body.get_layer(name).get_weights(), model.get_layer(name).get_weights()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
            compared += 1
    assert compared == sum(len(model.get_layer(n).weights) for n in backbone_layer_names(body))
    assert len(backbone_layer_names(body)) == summary["layers"]
    head = set(backbone_layer_names(body)) ^ {l.name for l in model.layers if l.weights}
    assert head == {"cls_probs"}  # every weighted classifier layer but the dense head went over

    # a file of another backbone or alpha is an error naming the file and the model
    with pytest.raises(ValueError, match=r"could not load backbone weights .*backbone\.weights\.h5 into "
                                         r"'mobilenetv2' \(alpha 0\.5\)"):
        yolo_body((64, 64), 2, backbone="mobilenetv2", alpha=0.5, backbone_weights=str(out))
    with pytest.raises(ValueError, match=r"into 'squeezenet' \(alpha 1\)"):
        yolo_body((64, 64), 2, backbone="squeezenet", alpha=1.0, backbone_weights=str(out))
    with pytest.raises(ValueError, match=r"weights are saved as a \.weights\.h5 file"):
        C.export_backbone(weights, tmp_path / "backbone.h5", log=None)


def test_a_detector_file_is_not_a_classifier(tmp_path):
    from utils.checkpoint import save_detector

    from _helpers import tiny_body
    body = tiny_body((64, 64), 2)
    path = save_detector(body, tmp_path / "det.keras", {"backbone": "tiny", "alpha": 1.0, "class_names": ["a", "b"],
                                                         "anchors": np.ones((9, 2)), "input_shape": [64, 64]})
    with pytest.raises(C.ClassifyError, match=r"det\.keras is not a classifier saved by classify\.py"):
        C.export_backbone(path, tmp_path / "b.weights.h5", log=None)


# ----------------------------------------------------------------------------- command line

def test_classify_cli_is_thin_and_checks_its_arguments(capsys):
    import classify
    text = (ROOT / "classify.py").read_text()
    assert len(text.splitlines()) < 200
    assert not [n for n in ast.parse(text).body if isinstance(n, ast.ClassDef)]
    assert classify.main(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err
    assert classify.main([]) == 2
    with pytest.raises(SystemExit):
        classify.main(["train", "--epochs", "3"])  # no --data
    assert "the following arguments are required: --data" in capsys.readouterr().err
    args = C.parse_train_args(["--data", "d", "--optimizer", "sgd"])
    assert (args.lr, args.weight_decay, args.input_size) == (0.1, 5e-4, [224])
    with pytest.raises(C.ClassifyError, match="--taps is a mobilenetv2 option"):
        C.parse_train_args(["--data", "d", "--backbone", "ghostnet", "--taps", "projected"])


# ----------------------------------------------------------------------------- training (slow)

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("classify")
    data = write_class_folders(base / "data", per_class=12, size=40)
    save_dir = base / "run"
    argv = ["--data", str(data), "--backbone", "squeezenet", "--alpha", "0.5", "--input-size", "64",
            "--epochs", "4", "--batch-size", "10", "--lr", "0.02", "--warmup-epochs", "0.5", "--zoom", "0.1",
            "--save-dir", str(save_dir), "--verbose", "0", "--workers", "1"]
    summary = C.train(C.parse_train_args(argv), log=lambda m: None)
    return {"data": data, "save_dir": save_dir, "summary": summary, "argv": argv}


@pytest.mark.slow
def test_training_runs_end_to_end_and_lowers_the_loss(trained):
    save_dir = trained["save_dir"]
    for name in ("best.keras", "last.keras", "log.csv", "curves.png", "config.yaml", "resume.json",
                 "results.json", "confusion_matrix.png", "tensorboard"):
        assert (save_dir / name).exists(), name
    with open(save_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    losses = [float(r["loss"]) for r in rows]
    assert min(losses[-2:]) < losses[0], losses
    assert {"accuracy", "val_accuracy", "val_loss", "lr", "best_val_accuracy"} <= set(rows[0])
    lrs = [float(r["lr"]) for r in rows]  # after a half-epoch warm-up: cosine decay
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * lrs[0]
    state = json.loads((save_dir / "resume.json").read_text())
    assert state["epoch"] == 4 and state["kind"] == "classifier"
    meta = C.read_classifier_meta(save_dir / "best.keras")
    assert meta["class_names"] == ["blue", "green", "red"] and meta["data"]["val_ratio"] == 0.2
    assert trained["summary"]["final"]["images"] == 6  # 2 of 12 per class held out (0.2, largest remainder)


@pytest.mark.slow
def test_resume_eval_and_predict(trained, tmp_path):
    save_dir, data = trained["save_dir"], trained["data"]
    messages = []
    args = C.parse_train_args(["--resume", "--save-dir", str(save_dir), "--epochs", "5"])
    assert args.data == str(data) and args.backbone == "squeezenet"  # from the run's config.yaml
    C.train(args, log=messages.append)
    assert any(m.startswith(f"resumed from {save_dir} at epoch 5") for m in messages)
    with open(save_dir / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4]

    lines = []
    res = C.evaluate(save_dir / "best.keras", data, save_dir=tmp_path / "eval", log=lines.append)
    assert res["images"] == 6 and [pc["images"] for pc in res["per_class"]] == [2, 2, 2]
    assert np.array(res["confusion_matrix"]).sum() == 6
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["top1"] == pytest.approx(res["top1"])
    assert "\ntop-1 accuracy " in "\n".join(lines)

    (tmp_path / "src").mkdir()
    Image.new("RGB", (50, 30), COLOURS["red"]).save(tmp_path / "src" / "r.jpg")
    (tmp_path / "src" / "bad.png").write_bytes(b"nope")
    lines = []
    preds = C.predict(save_dir / "best.keras", tmp_path / "src", top_k=2, save_dir=tmp_path / "pred",
                      log=lines.append)
    assert [p["source"] for p in preds] == [str(tmp_path / "src" / "r.jpg")]
    assert len(preds[0]["top"]) == 2 and preds[0]["top"][0]["score"] >= preds[0]["top"][1]["score"]
    assert any("bad.png" in line and "skipped" in line for line in lines)
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert saved["predictions"] == preds and saved["class_names"] == ["blue", "green", "red"]
