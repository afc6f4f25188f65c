"""predict.py end to end (main(argv) in-process) and its library utils/inference/predict.py,
with draw_counts. (Sources and writers alone: tests/test_sources.py; objectness maps:
tests/test_heatmap.py; the VOC XML writer: tests/test_voc.py.)

The detector is a few-layer stand-in for yolo_body with the same input and outputs, saved
with utils.checkpoint.save_detector: a squeezenet yolo_body takes ~15 s to trace on a
shared 2-core CPU, and nothing here depends on the backbone. Its head biases are set so
that a random network gives a predictable handful of boxes.
"""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from _data_helpers import make_source_folder, random_rgb, write_rgb

import predict
from _helpers import tiny_body
from utils.checkpoint import save_detector, update_meta
from utils.inference.detector import Detector
from utils.inference.predict import PredictOptions, detect, mask_classes, parse_class_filter
from utils.targets import load_anchors
from utils.data.images import read_image
from utils.data.voc import parse_voc_xml

ANCHORS = load_anchors()
CLASSES = ["cat", "dog", "bird"]
HW = (96, 128)
KEYS = {"source", "frame", "width", "height", "detections"}
DET_KEYS = {"class_id", "class_name", "score", "box"}


def biased_tiny_body(input_hw, num_classes):
    model = tiny_body(input_hw, num_classes)
    for out in model.outputs:  # scores ~0.25-0.37: "dog" most, "cat" some, "bird" (almost) never
        conv = out._keras_history[0]
        bias = np.zeros((3, 5 + num_classes), np.float32)
        bias[:, 5:] = [0.0, 0.2, -1.0]
        conv.bias.assign(bias.reshape(-1))
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    meta = {"backbone": "tiny", "alpha": 1.0, "class_names": CLASSES, "anchors": ANCHORS.tolist(),
            "input_shape": list(HW)}
    return str(save_detector(biased_tiny_body(HW, len(CLASSES)), path, meta))


@pytest.fixture(scope="module")
def detector(weights):
    return Detector.from_file(weights)



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_source_folder(tmp_path_factory.mktemp("images"))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_with_corrupt_file(weights, folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = predict.main(["--weights", weights, "--source", str(folder), "--save-dir", str(out), "--conf", "0.33",
                       "--count"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "c_corrupt.jpg" in captured.err and "skipped" in captured.err
    assert "2 images" in captured.out and "1 skipped" in captured.out and "counts:" in captured.out
    assert (out / "a.jpg").is_file() and (out / "b.png").is_file() and not (out / "c_corrupt.jpg").exists()
    assert read_image(out / "b.png").shape == (120, 160, 3)
    records = _jsonl(out / "predictions.jsonl")
    assert [r["source"] for r in records] == [str(folder / "a.jpg"), str(folder / "b.png")]  # sorted, corrupt out
    assert all(set(r) == KEYS and r["frame"] == 0 for r in records)
    assert (records[1]["width"], records[1]["height"]) == (160, 120)
    dets = [d for r in records for d in r["detections"]]
    assert dets and all(set(d) == DET_KEYS for d in dets)
    for r in records:
        boxes = np.array([d["box"] for d in r["detections"]]).reshape(-1, 4)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, [0, 2]] <= r["width"])
        assert all(d["score"] > 0.33 and CLASSES[d["class_id"]] == d["class_name"] for d in r["detections"])
    # the counts printed per image agree with the JSON
    n_dog = sum(d["class_name"] == "dog" for d in records[0]["detections"])
    assert f"{folder / 'a.jpg'}: {n_dog} dog" in captured.out


def test_json_matches_detector_and_images_are_drawn(weights, detector, folder, tmp_path):
    out = tmp_path / "run"
    assert predict.main(["--weights", weights, "--source", str(folder / "b.png"), "--save-dir", str(out),
                         "--conf", "0.33", "--max-det", "7"]) == 0
    (record,) = _jsonl(out / "predictions.jsonl")
    want = detector.detect([read_image(folder / "b.png")], score_thresh=0.33, max_det=7)[0]
    assert len(record["detections"]) == len(want["scores"]) > 0
    np.testing.assert_allclose([d["box"] for d in record["detections"]], want["boxes"], atol=0.01)
    np.testing.assert_allclose([d["score"] for d in record["detections"]], want["scores"], atol=1e-5)
    drawn, source = read_image(out / "b.png"), read_image(folder / "b.png")
    assert drawn.shape == source.shape and np.abs(drawn.astype(int) - source).max() > 100  # boxes drawn


def test_video_keeps_fps_and_frame_count(weights, tmp_path):
    src = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (96, 64))
    for i in range(7):
        writer.write(np.full((64, 96, 3), 20 * i, np.uint8))
    writer.release()
    out = tmp_path / "run"
    assert predict.main(["--weights", weights, "--source", str(src), "--save-dir", str(out)]) == 0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened()
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 7 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0, abs=0.01)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    cap.release()
    records = _jsonl(out / "predictions.jsonl")
    assert [r["frame"] for r in records] == list(range(7)) and all(r["source"] == str(src) for r in records)


def test_unreadable_video_is_skipped(weights, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    assert predict.main(["--weights", weights, "--source", str(tmp_path / "broken.mp4"),
                         "--save-dir", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "0 video frames" in captured.out and "1 skipped" in captured.out
    assert not (tmp_path / "run" / "broken.mp4").exists()


def test_save_xml_round_trip(weights, folder, tmp_path):
    out = tmp_path / "run"
    assert predict.main(["--weights", weights, "--source", str(folder / "b.png"), "--save-dir", str(out),
                         "--conf", "0.33", "--save-xml", "--no-save"]) == 0
    assert not (out / "b.png").exists()  # --no-save
    (record,) = _jsonl(out / "predictions.jsonl")
    rec, warnings = parse_voc_xml(out / "Annotations" / "b.xml", CLASSES, image_size=(160, 120))
    assert warnings == [] and rec.image_path == "b.png" and (rec.width, rec.height) == (160, 120)
    assert len(rec.boxes) == len(record["detections"]) > 0
    np.testing.assert_allclose(rec.boxes, [d["box"] for d in record["detections"]], atol=0.5)
    assert rec.labels.tolist() == [d["class_id"] for d in record["detections"]]


def test_crop_and_classes_filter(weights, folder, tmp_path, detector):
    out = tmp_path / "run"
    assert predict.main(["--weights", weights, "--source", str(folder / "b.png"), "--save-dir", str(out),
                         "--conf", "0.05", "--max-det", "4", "--classes", "cat", "2", "--crop"]) == 0
    (record,) = _jsonl(out / "predictions.jsonl")
    assert len(record["detections"]) == 4  # the filter runs before NMS: 4 kept of the allowed classes
    assert {d["class_name"] for d in record["detections"]} <= {"cat", "bird"}
    crops = sorted((out / "crops").rglob("*.jpg"))
    assert len(crops) == 4 and {c.parent.name for c in crops} <= {"cat", "bird"}
    d0 = record["detections"][0]
    crop = read_image(out / "crops" / d0["class_name"] / "b_0.jpg")
    x1, y1, x2, y2 = d0["box"]
    assert crop.shape[:2] == (int(np.ceil(y2)) - int(np.floor(y1)), int(np.ceil(x2)) - int(np.floor(x1)))


def test_class_filter_parsing_and_mask(detector):
    assert parse_class_filter(["dog", "0,bird"], CLASSES) == [0, 1, 2]
    assert parse_class_filter(["2"], CLASSES) == [2]
    with pytest.raises(ValueError, match="'horse' is neither.*0=cat"):
        parse_class_filter(["horse"], CLASSES)
    heads = [np.zeros((1, 2, 2, 3 * 8), np.float32)]
    (masked,) = mask_classes(heads, [1], 3)
    m = masked.numpy().reshape(1, 2, 2, 3, 8)
    assert np.all(m[..., :5] == 0) and np.all(m[..., 6] == 0) and np.all(m[..., [5, 7]] == -1e4)  # cat, bird
    image = random_rgb(5, 100, 140)
    # below max_det and the pre-NMS top-k (756 boxes < 1000), masking == dropping afterwards
    only_dog = detect(detector, [image], PredictOptions(conf=0.33, max_det=300, classes=[1]))[0]
    everything = detect(detector, [image], PredictOptions(conf=0.33, max_det=300))[0]
    assert 0 < len(only_dog["scores"]) < len(everything["scores"]) < 300
    np.testing.assert_allclose(only_dog["boxes"], everything["boxes"][everything["classes"] == 1], atol=1e-3)


def test_fps_mode_prints_split(weights, folder, capsys):
    rc = predict.main(["--weights", weights, "--source", str(folder), "--mode", "fps", "--fps-runs", "5",
                       "--fps-warmup", "1"])
    text = capsys.readouterr().out
    assert rc == 0
    rows = {line.split()[0]: [float(v) for v in line.split()[-2:]] for line in text.splitlines()
            if line.startswith(("pre-processing", "model", "post-processing", "total"))}
    assert set(rows) == {"pre-processing", "model", "post-processing", "total"}
    parts = sum(rows[k][0] for k in ("pre-processing", "model", "post-processing"))
    assert all(v > 0 for r in rows.values() for v in r) and rows["total"][0] == pytest.approx(parts, rel=0.05)
    assert "5 runs" in text and "a.jpg" in text  # the first readable image, sorted


def test_heatmap_mode_png_of_image_size(weights, folder, tmp_path):
    out = tmp_path / "run"
    assert predict.main(["--weights", weights, "--source", str(folder / "b.png"), "--mode", "heatmap",
                         "--save-dir", str(out)]) == 0
    for name in ("b_heatmap.png", "b_heatmap_s32.png", "b_heatmap_s16.png", "b_heatmap_s8.png"):
        assert read_image(out / name).shape == (120, 160, 3)


def test_missing_paths_exit_2(weights, folder, tmp_path, capsys):
    assert predict.main(["--weights", str(tmp_path / "nope.keras"), "--source", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "nope.keras" in err and "not found" in err and "Traceback" not in err
    assert predict.main(["--weights", weights, "--source", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert predict.main(["--weights", weights, "--source", str(tmp_path / "*.jpg")]) == 2
    assert "no file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own errors also exit 2
        predict.main(["--weights", weights, "--source", str(folder), "--conf", "2"])
    assert exc.value.code == 2


def test_input_size_override(weights, folder, detector):
    big = Detector.from_file(weights, input_size="128x160")
    assert big.input_hw == (128, 160) and [tuple(o.shape[1:3]) for o in big.model.outputs] == [(4, 5), (8, 10), (16, 20)]
    for a, b in zip(big.model.get_weights(), detector.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert Detector.from_file(weights, input_size=(96, 128)).model is not None
    with pytest.raises(ValueError, match="multiples of 32"):
        Detector.from_file(weights, input_size=100)


def _low_score_model(path, stored):
    """A one-class tiny model whose every score is ~0.1 (objectness and class ~sqrt(0.1) each),
    saved with ``stored`` as its conf_threshold metadata (or none)."""
    model = tiny_body(HW, 1)
    logit = np.log(0.1 ** 0.5 / (1 - 0.1 ** 0.5))
    for out in model.outputs:
        conv = out._keras_history[0]
        conv.kernel.assign(0.02 * np.asarray(conv.kernel))  # a little spread, all far under 0.25
        bias = np.zeros((3, 6), np.float32)
        bias[:, 4:] = logit
        conv.bias.assign(bias.reshape(-1))
    meta = {"backbone": "tiny", "alpha": 1.0, "class_names": ["cell"], "anchors": ANCHORS.tolist(),
            "input_shape": list(HW)}
    save_detector(model, path, meta)
    if stored is not None:
        update_meta(path, conf_threshold=stored)
    return str(path)


def test_default_conf_is_the_stored_f1_best_score(tmp_path, capsys):
    stored = {"score": 0.05, "source": "F1-best score on the validation split", "f1": 0.4}
    weights = _low_score_model(tmp_path / "low.keras", stored)
    image = str(write_rgb(tmp_path / "img.png", random_rgb(5, 120, 160)))

    def run(name, *extra):
        out = tmp_path / name
        assert predict.main(["--weights", weights, "--source", image, "--save-dir", str(out), *extra]) == 0
        (record,) = _jsonl(out / "predictions.jsonl")
        return [d["score"] for d in record["detections"]], read_image(out / "img.png"), capsys.readouterr().out

    scores, drawn, text = run("stored")
    assert "conf 0.05: the F1-best score on the validation split; --conf overrides" in text.splitlines()
    assert len(scores) > 0 and all(0.05 < s < 0.25 for s in scores)  # a model that scores low still finds
    assert np.abs(drawn.astype(int) - read_image(image)).max() > 100  # and draws its boxes
    scores, drawn, text = run("fixed", "--conf", "0.25")  # --conf overrides, and nothing is said about it
    assert scores == [] and "F1-best" not in text
    np.testing.assert_array_equal(drawn, read_image(image))
    # a model without the stored score: 0.25, said so
    plain = _low_score_model(tmp_path / "plain.keras", None)
    assert predict.main(["--weights", plain, "--source", image, "--save-dir", str(tmp_path / "plain"),
                         "--no-save"]) == 0
    assert any(line.startswith("conf 0.25: the default") for line in capsys.readouterr().out.splitlines())
    assert _jsonl(tmp_path / "plain" / "predictions.jsonl")[0]["detections"] == []


def test_resolve_conf_and_exports_carry_the_stored_score():
    from utils.inference.export import _base_meta
    from utils.inference.predict import resolve_conf

    stored = {"score": 0.21, "source": "F1-best score on the validation split"}
    assert resolve_conf(None, {"conf_threshold": stored}) == (
        0.21, "conf 0.21: the F1-best score on the validation split; --conf overrides")
    assert resolve_conf(0.4, {"conf_threshold": stored})[0] == 0.4
    for bad in (None, {"score": None}, {"score": float("nan")}, {"score": 3}, "x"):  # bad entries: the default
        assert resolve_conf(None, {"conf_threshold": bad})[0] == 0.25
    assert resolve_conf(None, {"conf_threshold": 0.3})[0] == 0.3
    meta = {"class_names": ["cell"], "anchors": ANCHORS.tolist(), "input_shape": list(HW)}
    model = tiny_body(HW, 1)
    assert _base_meta({**meta, "conf_threshold": stored}, model)["conf_threshold"] == stored
    assert "conf_threshold" not in _base_meta(meta, model)


def test_draw_counts_panel_inside_image():
    from utils.draw import class_colors, draw_counts
    image = np.full((60, 80, 3), 200, np.uint8)
    out = draw_counts(image, {1: 3, 0: 0, 2: 5}, CLASSES)
    assert (image == 200).all() and out.shape == image.shape
    colors = class_colors(3)
    for k in (1, 2):  # swatches of the listed classes, none of the class with 0
        assert np.all(out == colors[k], axis=-1).any()
    assert not np.all(out == colors[0], axis=-1).any()
    assert (out[-5:, -5:] == 200).all()  # panel confined to the top-left
    np.testing.assert_array_equal(draw_counts(image, {}), image)


def test_help_subprocess():
    res = subprocess.run([sys.executable, "predict.py", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert res.returncode == 0 and "--weights" in res.stdout and "--mode" in res.stdout
