"""utils/inference/export.py, utils/inference/runtime.py, export.py: every format exports, reloads and agrees with Keras.

One yolo_body (mobilenetv2 alpha 0.5, 128x128, BN statistics from the demo images so its
outputs are O(1)) is exported once per module as SavedModel, TFLite fp32 and int8, and ONNX;
fp16, full-integer int8 and the end-to-end variants use a few-layer stand-in body (same input and outputs)
because each conversion of yolo_body takes 10-20 s on the CI machine, and neither the float16
storage nor the post-processing graph depends on the body. Tolerances: float32 formats 1e-4
(max abs diff of the raw logits, |logits| ~ 1); fp16 (weights stored as float16, ~3
significant digits) 1e-2 x max |logit|; int8 only correlates (256 levels per tensor); the
default int8 file keeps its output convolutions in float32, the full-integer one does not.
"""
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest

import export as export_cli
from _helpers import tiny_body
from utils.checkpoint import save_detector
from utils.decode import postprocess
from utils.inference.export import (FORMATS, ExportError, artifact_name, calibration_dataset, export_model,
                          format_results, set_batchnorm_stats)
from utils.inference.detector import Detector
from utils.inference.runtime import RuntimeLoadError, open_model, meta_path
from utils.targets import load_anchors
from utils.data.voc import read_class_names


pytestmark = pytest.mark.slow  # training runs / exports: pytest -m 'not slow' skips them

HW = (128, 128)
ANCHORS = load_anchors()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small synthetic VOC set (the CI clone has no VOCdevkit/demo)."""
    from utils.data.demo_data import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_images=40, seed=0)


@pytest.fixture(scope="module")
def classes(demo):
    return read_class_names(demo / "demo_classes.txt")


@pytest.fixture(scope="module")
def calib(demo, classes):
    return calibration_dataset(demo, "train", 6, HW, classes)


@pytest.fixture(scope="module")
def images(calib):
    return np.concatenate([calib[i][0] for i in range(len(calib))]).astype(np.uint8)


def _meta(classes, backbone="mobilenetv2", alpha=0.5):
    return {"class_names": classes, "anchors": ANCHORS.tolist(), "input_shape": list(HW), "backbone": backbone,
            "alpha": alpha}


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, classes, calib, images):
    from nets.yolo import yolo_body

    keras.utils.set_random_seed(0)
    body = set_batchnorm_stats(yolo_body(HW, len(classes), backbone="mobilenetv2", alpha=0.5), images)
    out = tmp_path_factory.mktemp("yolo_export")
    results = export_model(body, _meta(classes), out, ["saved_model", "tflite-fp32", "tflite-int8", "onnx"], stem="m",
                           calibration=calib, log=lambda *a: None)
    return body, {r.format: r for r in results}


@pytest.fixture(scope="module")
def runtimes(yolo):
    """Each yolo export loaded once (loading a SavedModel takes seconds)."""
    return {fmt: open_model(r.path) for fmt, r in yolo[1].items()}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, classes, calib):
    body = tiny_body(HW, len(classes), activation="relu")
    out = tmp_path_factory.mktemp("e2e_export")
    results = export_model(body, _meta(classes, "tiny", 1.0), out, ["saved_model", "tflite-fp32", "tflite-fp16", "onnx"],
                           stem="t",
                           end_to_end=True, calibration=calib, nms="diou", score_thresh=0.2, max_det=30,
                           log=lambda *a: None)
    return body, {(r.format, r.variant): r for r in results}


@pytest.fixture(scope="module")
def noise():
    """Noise images: no flat letterbox padding, so no tied scores whose order implementations may swap."""
    return np.random.default_rng(7).integers(0, 256, (3, *HW, 3)).astype(np.uint8)


def _heads(model, images):
    return [np.asarray(h) for h in model(images.astype(np.float32), training=False)]


# ----------------------------------------------------------------------------- raw heads

@pytest.mark.parametrize("fmt", ["saved_model", "tflite-fp32", "onnx"])
def test_float32_exports_give_the_keras_heads(yolo, runtimes, images, fmt):
    body, results = yolo
    rt = runtimes[fmt]
    want = _heads(body, images)
    got = rt(images)
    assert [g.shape for g in got] == [w.shape for w in want] == [(6, 4, 4, 27), (6, 8, 8, 27), (6, 16, 16, 27)]
    assert max(np.abs(w).max() for w in want) > 0.5  # O(1) logits: the comparison means something
    assert max(np.abs(g - w).max() for g, w in zip(got, want)) < 1e-4
    assert rt.input_dtype == np.float32 and results[fmt].check["max_abs_diff"] < 1e-4


def test_fp16_stores_float16_weights_and_is_within_half_precision(e2e, images):
    body, results = e2e
    rt = open_model(results[("tflite-fp16", "raw")].path)
    assert any(d["dtype"] == np.float16 for d in rt.interpreter.get_tensor_details())
    assert rt.input_dtype == np.float32
    want, got = _heads(body, images), rt(images)
    scale = max(np.abs(w).max() for w in want)
    diff = max(np.abs(g - w).max() for g, w in zip(got, want))
    assert scale > 0.2 and 0 < diff < 1e-2 * scale  # not bit-identical (float16 weights), but close
    assert results[("tflite-fp16", "raw")].bytes < results[("tflite-fp32", "raw")].bytes


def _weight_dtypes(path, out_channels):
    """dtypes of a .tflite file's 1x1 conv weights with ``out_channels`` filters (OHWI), and its int8 conv weights."""
    details = open_model(path).interpreter.get_tensor_details()
    conv = [d for d in details if len(d["shape"]) == 4 and d["shape"][0] > 1]  # activations are (1, H, W, C)
    heads = [d["dtype"] for d in conv if d["shape"][0] == out_channels and tuple(d["shape"][1:3]) == (1, 1)]
    return heads, [d for d in conv if d["dtype"] == np.int8]


def test_int8_default_keeps_the_output_convs_in_float_and_follows_the_float_model(yolo, images, classes):
    body, results = yolo
    path = results["tflite-int8"].path
    meta = json.loads(pathlib.Path(meta_path(path)).read_text())
    assert meta["input"]["dtype"] == "float32" and "quantization" not in meta["input"]
    assert all(o["dtype"] == "float32" and "quantization" not in o for o in meta["outputs"])
    assert meta["quantization"]["heads"].startswith("float32") and meta["quantization"]["calibration_images"] == 6
    heads, int8_weights = _weight_dtypes(path, 27)
    assert heads == [np.float32] * 3  # the three 1x1, 27-filter output convs stay float ...
    assert len(int8_weights) > 50     # ... and the body's convs are int8
    assert results["tflite-int8"].bytes < 0.35 * results["tflite-fp32"].bytes
    want, got = _heads(body, images), open_model(path)(images)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.95
    # detections: the int8 file's best boxes are (mostly) the float model's best boxes
    det_f = Detector(body, _meta(classes), score_thresh=0.0, max_det=10)
    det_q = Detector.from_file(path, score_thresh=0.0, max_det=10)
    from utils.boxes import box_iou
    pf, pq = det_f.infer(images), det_q.infer(images)
    overlap = [box_iou(pf[0][k], pq[0][k]).max(axis=1) for k in range(len(images))]
    assert np.mean(np.concatenate(overlap) > 0.5) > 0.6


def test_full_int8_takes_uint8_and_float_heads_are_closer_to_float(tmp_path, classes, calib, images):
    body = tiny_body(HW, len(classes), activation="relu")
    kw = dict(stem="t", calibration=calib, log=lambda *a: None)
    full, = export_model(body, _meta(classes, "tiny", 1.0), tmp_path / "full", ["tflite-int8"], int8_heads="int8", **kw)
    mixed, = export_model(body, _meta(classes, "tiny", 1.0), tmp_path / "mixed", ["tflite-int8"], **kw)
    meta = json.loads(pathlib.Path(full.meta_path).read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["quantization"]["heads"].startswith("int8")
    scale, zero = meta["input"]["quantization"]
    assert abs(scale - 1.0) < 1e-3 and zero == 0  # [0, 255] pixels are the uint8 values themselves
    assert all(o["dtype"] == "int8" and len(o["quantization"]) == 2 for o in meta["outputs"])
    assert _weight_dtypes(full.path, 27)[0] == [np.int8] * 3
    want = _heads(body, images)
    errors = {}
    for name, r in (("full", full), ("mixed", mixed)):
        got = open_model(r.path)(images)  # dequantized by the runtime: float32 either way
        assert all(g.dtype == np.float32 and np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.95 for g, w in zip(got, want))
        errors[name] = np.mean([np.abs(g - w).mean() for g, w in zip(got, want)])
    # same calibration, so the same scales everywhere else: only the heads' rounding differs
    assert errors["mixed"] < errors["full"]
    with pytest.raises(ExportError, match="unknown int8 head mode 'int4'"):
        export_model(body, _meta(classes), tmp_path / "x", ["tflite-int8"], int8_heads="int4", **kw)


def test_int8_file_of_a_mish_network_follows_the_float_model(tmp_path, classes, calib, images):
    """Keras' Mish reaches TFLite as log(1 + exp(x)): with a trained network's large activations
    the int8 EXP range rounds every moderate exp to 0 and the file outputs a constant (the
    CSPDarknet53 detector's int8 file scored 0.000 mAP). The exporter swaps in QuantizableMish
    for the int8 files only (the same function, against NumPy), kept float32 in the default
    file and int8 in the full-integer one; both follow the float model."""
    from keras import layers

    import utils.inference.export as export
    from nets.layers import QuantizableMish
    x = np.linspace(-80, 80, 3201).astype(np.float32)
    exact = x.astype(np.float64) * np.tanh(np.logaddexp(0.0, x.astype(np.float64)))
    np.testing.assert_allclose(np.asarray(QuantizableMish()(x)), exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(keras.activations.mish(x)), exact, rtol=1e-5, atol=1e-6)

    keras.utils.set_random_seed(5)
    inp = keras.Input((*HW, 3), name="image")
    h = layers.Rescaling(1 / 255.0, name="rescale")(inp)
    outs = []
    for i, stride in enumerate((8, 16, 32)):
        # a wide initialiser: activations of tens to hundreds, as in a trained CSPDarknet53
        h = layers.Conv2D(8, 3, strides=8 if i == 0 else 2, padding="same", name=f"down{stride}",
                          kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(h)
        h = layers.Activation("mish", name=f"down{stride}_mish")(h)
        outs.append(layers.Conv2D(3 * (5 + len(classes)), 1, name=f"head{stride}")(h))
    body = keras.Model(inp, outs[::-1], name="mish_body")
    swapped = export.int8_quantizable(body)
    assert [type(swapped.get_layer(f"down{s}_mish")) for s in (8, 16, 32)] == [QuantizableMish] * 3
    assert swapped.get_layer("down8") is body.get_layer("down8")
    relu_body = tiny_body(HW, len(classes), activation="relu")
    assert export.int8_quantizable(relu_body) is relu_body

    want = _heads(body, images)
    kw = dict(stem="m", calibration=calib, log=lambda *a: None)
    fp32, int8 = export_model(body, _meta(classes, "mish", 1.0), tmp_path / "q", ["tflite-fp32", "tflite-int8"], **kw)
    full, = export_model(body, _meta(classes, "mish", 1.0), tmp_path / "f", ["tflite-int8"], int8_heads="int8", **kw)
    def op_dtypes(path):
        """{op name: set of its output dtypes} of a .tflite file."""
        interp = open_model(path).interpreter
        found = {}
        for d in interp._get_ops_details():
            found.setdefault(d["op_name"], set()).update(interp._get_tensor_details(t, 0)["dtype"] for t in d["outputs"])
        return found

    ops = {r.path: op_dtypes(r.path) for r in (fp32, int8, full)}
    assert "RELU" not in ops[fp32.path]  # the float file keeps Keras' Mish
    # default int8: QuantizableMish's ops in float32 beside int8 convolutions; full-integer: all int8
    assert ops[int8.path]["RELU"] == ops[int8.path]["EXP"] == ops[int8.path]["LOG"] == {np.float32}
    assert np.int8 in ops[int8.path]["CONV_2D"]
    assert ops[full.path]["RELU"] == ops[full.path]["EXP"] == ops[full.path]["LOG"] == {np.int8}
    for r, mode in ((int8, "kept float32"), (full, "int8")):
        assert mode in json.loads(pathlib.Path(r.meta_path).read_text())["exporter"]["activations_rewritten"]
        for g, w in zip(open_model(r.path)(images), want):
            assert np.std(g) > 0.1 * np.std(w) and np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.95
    # (Keras' own Mish is not converted here for contrast: with activations this large its EXP
    # calibrates to inf and TF 2.21's quantizer crashes the process)


def test_in_layer_scope_matches_a_layer_and_its_tensorflow_suffix_only():
    from utils.inference.export import _in_layer_scope
    layers_ = ({"s1_mish", "activation"}, {"s1_mish_2", "activation_1", "conv"})
    assert _in_layer_scope("functional_1/s1_mish_1/Softplus", *layers_)       # TF's scope suffix
    assert _in_layer_scope("functional_1/s1_mish/Tanh", *layers_)
    assert not _in_layer_scope("functional_1/s1_mish_2/Tanh", *layers_)       # another layer's own name
    assert not _in_layer_scope("functional_1/activation_1/Relu", *layers_)
    assert not _in_layer_scope("functional_1/conv_1/convolution;functional_1/s1_mish_1/Relu", *layers_)  # fused: first
    assert not _in_layer_scope("s1_mish", *layers_)                            # the op's own name is not a scope
    assert not _in_layer_scope("functional_1/s1_mish_1/Softplus", set(), set())


def test_detector_from_file_runs_every_raw_export_like_keras(yolo, runtimes, classes, images):
    body, results = yolo
    keras_det = Detector(body, _meta(classes), score_thresh=0.05, max_det=20)
    want = keras_det.infer(images)
    for fmt in ("saved_model", "tflite-fp32", "onnx"):
        if fmt == "saved_model":  # already loaded: the Detector takes a runtime as its model
            det = Detector(runtimes[fmt], runtimes[fmt].meta, score_thresh=0.05, max_det=20)
        else:
            det = Detector.from_file(results[fmt].path, score_thresh=0.05, max_det=20)
        assert det.class_names == classes and det.input_hw == HW and det.backbone == "mobilenetv2"
        got = det.infer(images)
        np.testing.assert_array_equal(got[3], want[3])
        np.testing.assert_allclose(got[0], want[0], atol=1e-2)
        np.testing.assert_array_equal(got[2], want[2])
        heads = det.forward(images)  # the timed path of predict.py's fps mode
        assert [tuple(h.shape) for h in heads] == [(6, 4, 4, 27), (6, 8, 8, 27), (6, 16, 16, 27)]


def test_metadata_describes_the_artifact(yolo, classes):
    _, results = yolo
    for fmt, r in results.items():
        meta = json.loads(pathlib.Path(meta_path(r.path)).read_text())
        assert meta["class_names"] == classes and meta["input_shape"] == list(HW)
        np.testing.assert_allclose(meta["anchors"], ANCHORS)
        assert meta["preprocessing"]["pad_value"] == 128 and meta["preprocessing"]["color"] == "RGB"
        assert meta["variant"] == "raw" and meta["postprocess"] is None
        assert [o["stride"] for o in meta["outputs"]] == [32, 16, 8]
        assert [o["shape"][1:] for o in meta["outputs"]] == [[4, 4, 27], [8, 8, 27], [16, 16, 27]]
        assert meta["format"] == {"saved_model": "saved_model", "onnx": "onnx"}.get(fmt, "tflite")
        assert meta["bytes"] == r.bytes and len(meta["sha256"]) == 64
        assert meta["batchnorm_folded"] is True  # the folded network is what is written
    assert json.loads(pathlib.Path(meta_path(results["onnx"].path)).read_text())["exporter"]["onnx_opset"] >= 13
    table = format_results(list(results.values()))
    assert "tflite-int8" in table and "max |diff|" in table and "(|ref|" in table


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("fmt", ["saved_model", "tflite-fp32", "onnx"])
def test_end_to_end_exports_match_python_postprocessing(e2e, noise, fmt):
    images = noise
    body, results = e2e
    r = results[(fmt, "end_to_end")]
    assert os.path.basename(r.path) == artifact_name("t", fmt, "end_to_end")
    got = open_model(r.path)(images)
    want = [t.numpy() for t in postprocess(body(images.astype(np.float32)), ANCHORS, HW, 4, 0.2, 0.45, 30,
                                           nms="diou")]
    np.testing.assert_array_equal(got["num_valid"], want[3])
    assert want[3].min() > 0
    for k, n in enumerate(want[3]):
        np.testing.assert_allclose(got["boxes"][k, :n], want[0][k, :n], atol=1e-3)
        np.testing.assert_allclose(got["scores"][k, :n], want[1][k, :n], atol=1e-5)
        np.testing.assert_array_equal(got["classes"][k, :n], want[2][k, :n])
    meta = json.loads(pathlib.Path(meta_path(r.path)).read_text())
    assert meta["variant"] == "end_to_end" and meta["postprocess"]["nms"] == "diou"
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "num_valid"]
    with pytest.raises(ValueError, match="end-to-end export .* use the raw-heads export"):
        Detector.from_file(r.path)


def test_iou_nms_end_to_end_in_onnx_but_not_in_tflite(tmp_path, classes, noise):
    images = noise
    body = tiny_body(HW, len(classes), activation="relu")
    results = export_model(body, _meta(classes, "tiny", 1.0), tmp_path, ["tflite-fp32", "onnx"], stem="t",
                           end_to_end=True, nms="iou", score_thresh=0.2, max_det=30, log=lambda *a: None)
    by = {(r.format, r.variant): r for r in results}
    skipped = by[("tflite-fp32", "end_to_end")]
    assert skipped.path == "" and "Flex" in skipped.note
    assert not (tmp_path / "t_e2e_fp32.tflite").exists()
    raw_meta = json.loads((tmp_path / "t_fp32.tflite.json").read_text())
    assert "Flex" in raw_meta["end_to_end_note"]  # the raw file says why it has no end-to-end twin
    got = open_model(by[("onnx", "end_to_end")].path)(images)
    want = [t.numpy() for t in postprocess(body(images.astype(np.float32)), ANCHORS, HW, 4, 0.2, 0.45, 30)]
    np.testing.assert_array_equal(got["num_valid"], want[3])
    assert want[3].min() > 0
    for k, n in enumerate(want[3]):
        np.testing.assert_allclose(got["boxes"][k, :n], want[0][k, :n], atol=1e-3)
        np.testing.assert_array_equal(got["classes"][k, :n], want[2][k, :n])


# ----------------------------------------------------------------------------- errors

def test_corrupt_or_mismatched_files_name_the_file(e2e, tmp_path, classes):
    _, results = e2e
    src = results[("tflite-fp32", "raw")].path
    bad = tmp_path / "cut.tflite"
    data = pathlib.Path(src).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    shutil.copy(meta_path(src), meta_path(bad))
    with pytest.raises(RuntimeLoadError, match=f"{bad}: .* bytes but {len(data)} were written at export"):
        open_model(bad)
    meta = json.loads(pathlib.Path(meta_path(bad)).read_text())
    del meta["sha256"], meta["bytes"]
    pathlib.Path(meta_path(bad)).write_text(json.dumps(meta))
    with pytest.raises(RuntimeLoadError, match=f"{bad}: not a readable TFLite model"):
        open_model(bad)

    # an .onnx of another model (2 classes) beside the metadata of the 4-class one
    other = export_model(tiny_body(HW, 2, activation="relu"), _meta(["a", "b"], "tiny", 1.0), tmp_path / "other",
                         ["onnx"], stem="o", log=lambda *a: None)[0].path
    swapped = tmp_path / "swapped.onnx"
    shutil.copy(other, swapped)
    shutil.copy(meta_path(results[("onnx", "raw")].path), meta_path(swapped))
    with pytest.raises(RuntimeLoadError, match=f"{swapped}: .* or an export of another model"):
        open_model(swapped)
    meta = json.loads(pathlib.Path(meta_path(swapped)).read_text())
    del meta["sha256"], meta["bytes"]
    pathlib.Path(meta_path(swapped)).write_text(json.dumps(meta))
    with pytest.raises(RuntimeLoadError, match=f"{swapped}: outputs have 21 channels .* 4 classes"):
        Detector.from_file(swapped)

    os.remove(meta_path(swapped))
    with pytest.raises(RuntimeLoadError, match=f"{swapped}: its metadata file .*swapped.onnx.json is missing"):
        open_model(swapped)
    with pytest.raises(FileNotFoundError, match="nowhere.tflite"):
        Detector.from_file(tmp_path / "nowhere.tflite")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(RuntimeLoadError, match="unsupported model file"):
        open_model(tmp_path / "model.pt")


def test_export_arguments_are_checked(classes):
    body = tiny_body(HW, len(classes), activation="relu")
    with pytest.raises(ExportError, match="unknown export format.*tflite-int4"):
        export_model(body, _meta(classes), "unused", ["tflite-int4"])
    with pytest.raises(ExportError, match="tflite-int8 needs calibration images"):
        export_model(body, _meta(classes), "unused", ["tflite-int8"])
    with pytest.raises(ExportError, match="unknown NMS kind 'soft'"):
        export_model(body, _meta(classes), "unused", ["onnx"], nms="soft")
    with pytest.raises(ExportError, match="calibration root not found"):
        calibration_dataset("/no/such/root", "train", 4, HW, classes)


def test_calibration_images_are_letterboxed_training_images(demo, calib, classes):
    from utils.letterbox import letterbox_image
    from utils.data.images import read_image

    assert len(calib) == 6
    image = read_image(calib.records[0].image_path)
    want, _ = letterbox_image(image, HW)
    np.testing.assert_array_equal(calib[0][0][0], want)
    train_ids = (demo / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert len(calibration_dataset(demo, "train", 10**6, HW, classes)) == len(train_ids)  # all of them


# ----------------------------------------------------------------------------- CLI

def test_cli_exports_a_saved_detector(tmp_path, classes, demo, capsys):
    weights = save_detector(tiny_body(HW, len(classes), activation="relu"), tmp_path / "tiny.keras",
                            _meta(classes, "tiny", 1.0))
    out = tmp_path / "exp"
    assert export_cli.main(["--weights", weights, "--formats", "onnx", "--out-dir", str(out)]) == 0
    assert (out / "tiny.onnx").is_file() and (out / "tiny.onnx.json").is_file()
    assert "max |diff|" in capsys.readouterr().out
    meta = json.loads((out / "tiny.onnx.json").read_text())
    assert meta["source"]["weights"] == weights and meta["check"]["max_abs_diff"] < 1e-4
    assert export_cli.main(["--weights", str(tmp_path / "none.keras"), "--formats", "onnx"]) == 2
    assert "export.py: error: model file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_cli.main(["--weights", weights, "--formats", "tflite-int8"])
    assert "needs --calib-root" in capsys.readouterr().err
    assert tuple(export_cli.FORMATS) == FORMATS
    assert export_cli.main(["--weights", weights, "--formats", "tflite-int8", "--int8-heads", "int8", "--out-dir",
                            str(out), "--calib-root", str(demo), "--calib-images", "3"]) == 0
    meta = json.loads((out / "tiny_int8.tflite.json").read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["source"]["calibration"]["images"] == 3


def test_predict_and_eval_map_take_exported_files(demo, e2e, classes, tmp_path, capsys):
    import eval_map
    import predict
    from utils.data.images import read_image

    body, results = e2e
    tflite, saved = results[("tflite-fp32", "raw")].path, results[("saved_model", "raw")].path
    image_path = demo / "JPEGImages" / "demo_00000.jpg"
    want = Detector(body, _meta(classes, "tiny", 1.0)).detect([read_image(image_path)], score_thresh=0.2)[0]
    for path in (tflite, saved):  # predict.py's loader: by suffix, and a SavedModel folder
        got = Detector.from_file(path, score_thresh=0.2).detect([read_image(image_path)])[0]
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-2)
    with pytest.raises(ValueError, match="runs at the input size it was exported at"):
        Detector.from_file(tflite, input_size=160)
    out = tmp_path / "pred"
    assert predict.main(["--weights", tflite, "--source", str(image_path), "--save-dir", str(out), "--conf", "0.2",
                         "--no-save"]) == 0
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([d["box"] for d in record["detections"]], want["boxes"], atol=1e-2)
    assert eval_map.main(["--weights", results[("onnx", "raw")].path, "--root", str(demo), "--split", "val",
                          "--save-dir", str(tmp_path / "eval"), "--no-coco"]) == 0
    assert "mAP@0.5" in capsys.readouterr().out


def test_accuracy_check_flags_an_export_that_loses_map(monkeypatch):
    """check_accuracy evaluates the Keras file and each raw export with eval_map.py's code and
    flags a drop beyond max_drop points; end-to-end variants and files not written are left out."""
    from utils.inference import export as ex
    maps = {"m.keras": 0.80, "m_fp32.tflite": 0.80, "m_int8.tflite": 0.795, "m.onnx": 0.70}
    monkeypatch.setattr(Detector, "from_file", classmethod(lambda cls, path: path))
    monkeypatch.setattr("utils.evaluate.evaluate_records", lambda det, records, **k: {"map": maps[det]})
    results = [ex.ExportResult(fmt, "raw", path, 1, 0.0, {}) for fmt, path in
               [("tflite-fp32", "m_fp32.tflite"), ("tflite-int8", "m_int8.tflite"), ("onnx", "m.onnx")]]
    results += [ex.ExportResult("onnx", "end_to_end", "m_e2e.onnx", 1, 0.0, {}),
                ex.ExportResult("tflite-int8", "end_to_end", "", 0, 0.0, {}, "not written")]
    checks = ex.check_accuracy("m.keras", results, records=["r"], max_drop=1.0, log=None)
    assert [(c.name, c.flagged) for c in checks] == [("keras", False), ("tflite-fp32", False),
                                                     ("tflite-int8", False), ("onnx", True)]
    assert [round(c.drop_points, 6) for c in checks] == [0.0, 0.0, 0.5, 10.0]
    assert ex.check_accuracy("m.keras", results, ["r"], max_drop=0.4, log=None)[2].flagged
    table = ex.format_accuracy(checks, 1.0)
    assert "onnx" in table and "-10.00p  FLAGGED: more than 1 points under the Keras model" in table
    with pytest.raises(ExportError, match="needs validation images"):
        ex.check_accuracy("m.keras", results, [], log=None)


def test_cli_checks_the_exports_on_the_training_runs_validation_split(tmp_path, classes, demo, capsys):
    """A run folder (best.keras + config.yaml as train.py leaves them): export.py evaluates the
    ONNX file on the run's validation split; --strict fails when the drop limit is exceeded."""
    from utils.training.config import parse_train_args, save_yaml
    run = tmp_path / "run"
    weights = save_detector(tiny_body(HW, len(classes), activation="relu"), run / "best.keras",
                            _meta(classes, "tiny", 1.0))
    args = parse_train_args(["--root", str(demo), "--classes", str(demo / "demo_classes.txt"), "--seed", "3"])
    save_yaml({k: v for k, v in vars(args).items() if k not in ("config", "tf_logs")}, run / "config.yaml")
    out = tmp_path / "exp"
    assert export_cli.main(["--weights", weights, "--formats", "onnx", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    from utils.data.voc import load_voc
    assert f"accuracy on {len(load_voc(demo, 'val', classes, log=None))} validation images (the training run [val])" \
        in text
    keras_line = next(l for l in text.splitlines() if l.startswith("keras "))
    onnx_line = [l for l in text.splitlines() if l.startswith("onnx ")][-1]
    assert keras_line.split()[1] == onnx_line.split()[1] and "+0.00p" in onnx_line  # same mAP, no flag
    assert export_cli.main(["--weights", weights, "--formats", "onnx", "--out-dir", str(out), "--strict",
                            "--max-map-drop", "-1"]) == 3
    captured = capsys.readouterr()
    assert "FLAGGED" in captured.out and "onnx lose more than -1 points of mAP@0.5 (--strict)" in captured.err
    lone = save_detector(tiny_body(HW, len(classes), activation="relu"), tmp_path / "lone.keras",
                         _meta(classes, "tiny", 1.0))
    assert export_cli.main(["--weights", lone, "--formats", "onnx", "--out-dir", str(out)]) == 0
    assert "no accuracy check: give --val-data" in capsys.readouterr().out
    assert export_cli.main(["--weights", lone, "--formats", "onnx", "--out-dir", str(out), "--val-data",
                            str(demo), "--val-split", "test"]) == 0
    assert f"accuracy on {len(load_voc(demo, 'test', classes, log=None))} validation images ({demo} [test])" \
        in capsys.readouterr().out
    # --val-data takes every format (utils.data.formats), with the model's class names
    from utils.data.convert import convert
    for fmt in ("coco", "yolo"):
        convert(demo, tmp_path / fmt, fmt, class_names=classes, link=True, check_images=False, log=None)
        assert export_cli.main(["--weights", lone, "--formats", "onnx", "--out-dir", str(out), "--val-data",
                                str(tmp_path / fmt), "--val-split", "test"]) == 0, fmt
        assert (f"accuracy on {len(load_voc(demo, 'test', classes, log=None))} validation images "
                f"({tmp_path / fmt} [test])") in capsys.readouterr().out, fmt


def test_calibration_from_coco_and_yolo_copies_is_the_voc_one(demo, calib, classes, tmp_path):
    """--calib-data takes every format: the same seeded choice of the same training images."""
    from utils.data.convert import convert

    for fmt in ("coco", "yolo"):
        convert(demo, tmp_path / fmt, fmt, class_names=classes, link=True, check_images=False, log=None)
        got = calibration_dataset(tmp_path / fmt, "train", 6, HW, classes)
        assert [r.image_id for r in got.records] == [r.image_id for r in calib.records], fmt
        np.testing.assert_array_equal(got[0][0], calib[0][0])
    # a COCO file with its image folder; a split it does not name is made with the model's recorded seed
    js, images = tmp_path / "coco" / "annotations" / "instances.json", tmp_path / "coco" / "images"
    rec = {"split": "made on the spot", "split_ratios": [0.5, 0.25, 0.25], "seed": 3}
    got = calibration_dataset(js, "train", 10**6, HW, classes, fmt="coco", images=images, record=rec)
    from utils.data.voc import split_ids
    want = split_ids([p.stem for p in images.iterdir()], (0.5, 0.25, 0.25), 3)["train"]
    assert sorted(r.image_id for r in got.records) == want
    argv = ["--weights", save_detector(tiny_body(HW, len(classes), activation="relu"), tmp_path / "t.keras",
                                       _meta(classes, "tiny", 1.0)),
            "--formats", "tflite-int8", "--out-dir", str(tmp_path / "exp"), "--calib-images", "3", "--no-map-check"]
    assert export_cli.main(argv + ["--calib-data", str(js), "--calib-image-dir", str(images)]) == 0
    assert json.loads((tmp_path / "exp" / "t_int8.tflite.json").read_text())["source"]["calibration"]["images"] == 3


def test_grouped_convolutions_convert_to_onnx(tmp_path):
    """Keras runs a grouped Conv2D inside an XLA function that tf2onnx cannot convert (it wrote an
    invalid file for ShuffleNetV1); the exporter traces it as one Conv2D op: ONNX Conv with group."""
    import onnx
    import onnxruntime as ort
    from keras import layers

    from utils.inference.export import _write_onnx, onnx_traceable
    keras.utils.set_random_seed(3)
    x = keras.Input((16, 16, 12))
    g = layers.Conv2D(6, 3, padding="same", groups=3, use_bias=True, name="gconv")(x)
    y = layers.Conv2D(4, 1, strides=2, groups=2, name="gconv_s2")(layers.ReLU(name="relu")(g))
    model = keras.Model(x, [g, y], name="grouped")
    plain = keras.Model(x, layers.Conv2D(4, 1, name="plain")(x))
    assert onnx_traceable(plain) is plain
    clone = onnx_traceable(model)
    assert clone.get_layer("relu") is model.get_layer("relu")  # shared, not copied
    for name in ("gconv", "gconv_s2"):
        for a, b in zip(clone.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    path = str(tmp_path / "g.onnx")
    info = _write_onnx(model, path)
    assert info["onnx_opset"] == next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
    groups = sorted(a.i for n in onnx.load(path).graph.node if n.op_type == "Conv" for a in n.attribute
                    if a.name == "group")
    assert groups == [2, 3]
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 12)).astype(np.float32)
    session = ort.InferenceSession(path)
    got = session.run(None, {session.get_inputs()[0].name: images})
    want = [np.asarray(t) for t in model(images)]
    for a, b in zip(sorted(got, key=np.shape), sorted(want, key=np.shape)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_normalization_converts_to_onnx_with_one_input(tmp_path, monkeypatch):
    """Keras' Normalization (DenseNet121's preprocessing: a given mean and variance) traces its
    mean and variance as graph inputs; the exporter swaps in TraceableNormalization (given,
    inverted and adapted layers alike), and a graph that still comes out with extra inputs is
    refused, not written."""
    import onnx
    import onnxruntime as ort
    from keras import layers

    import utils.inference.export as export
    from nets.layers import TraceableNormalization
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(0)
    mean, variance = [120.0, 110.0, 100.0], [58.0 ** 2, 57.0 ** 2, 56.0 ** 2]
    adapted = layers.Normalization(name="adapted")
    adapted.adapt(rng.normal(2.0, 3.0, size=(64, 3)).astype(np.float32))
    x = keras.Input((8, 8, 3), name="image")
    n = layers.Normalization(mean=mean, variance=variance, name="norm")(x)
    back = layers.Normalization(mean=5.0, variance=4.0, invert=True, axis=None, name="back")(n)
    model = keras.Model(x, layers.Conv2D(4, 3, name="conv")(adapted(back)), name="normed")
    clone = export.onnx_traceable(model)
    assert all(isinstance(clone.get_layer(k), TraceableNormalization) for k in ("norm", "back", "adapted"))
    assert clone.get_layer("conv") is model.get_layer("conv")
    images = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    # against NumPy: (x - mean) / std, then inverted: x * 2 + 5, then the adapted statistics
    by_hand = (images - np.array(mean, np.float32)) / np.sqrt(np.array(variance, np.float32)) * 2.0 + 5.0
    a_mean, a_var = (np.asarray(w).reshape(-1) for w in adapted.get_weights()[:2])
    by_hand = (by_hand - a_mean) / np.sqrt(a_var)
    cut = lambda m: keras.Model(m.input, m.get_layer("adapted").output)  # noqa: E731
    np.testing.assert_allclose(np.asarray(cut(model)(images)), by_hand, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(cut(clone)(images)), by_hand, rtol=1e-5, atol=1e-4)
    path = str(tmp_path / "n.onnx")
    export._write_onnx(model, path)
    graph = onnx.load(path).graph
    assert [t.name for t in graph.input if t.name not in {i.name for i in graph.initializer}] == ["image"]
    got = ort.InferenceSession(path).run(None, {"image": images})[0]
    np.testing.assert_allclose(got, np.asarray(model(images)), rtol=1e-4, atol=1e-4)
    # without the swap, the constants come out as inputs: refused, and no file is left
    monkeypatch.setattr(export, "onnx_traceable", lambda m: m)
    with pytest.raises(export.ExportError, match=r"bad\.onnx: ONNX conversion gave \d+ inputs .* for a model with 1: "
                                                 r"a layer's constants"):
        export._write_onnx(model, str(tmp_path / "bad.onnx"))
    assert not (tmp_path / "bad.onnx").exists()
