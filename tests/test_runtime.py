"""utils/inference/runtime.py: open_model's checks and errors (with tiny files, no export),
the Keras runtime, input-size rebuilds, file digests and input quantization.

Exporting and running real SavedModel / TFLite / ONNX files (and the errors that need a
real artifact: a truncated .tflite, an .onnx of another model): tests/test_export.py.
"""
import hashlib
import json
import re

import keras
import numpy as np
import pytest

from _helpers import tiny_body
from utils.checkpoint import save_detector
from utils.inference.runtime import (KerasRuntime, Runtime, RuntimeLoadError, check_digest, detect_format,
                                     file_digest, meta_path, open_model)
from utils.targets import load_anchors

ANCHORS = load_anchors()
CLASSES = ["cat", "dog", "bird"]
HW = (96, 128)


def _meta(**extra):
    return {"class_names": CLASSES, "anchors": ANCHORS.tolist(), "input_shape": list(HW), **extra}


@pytest.fixture(scope="module")
def body():
    return tiny_body(HW, len(CLASSES), seed=1, activation="relu")


@pytest.fixture(scope="module")
def keras_file(body, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    return save_detector(body, path, _meta(backbone="tiny", alpha=1.0))


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (2, *HW, 3), dtype=np.uint8)


def _export(tmp_path, name="m.tflite", data=b"not really a flatbuffer", meta=None):
    """An "exported" artifact of junk bytes and, unless ``meta`` is False, its metadata JSON."""
    path = tmp_path / name
    path.write_bytes(data)
    if meta is not False:
        meta = _meta(format="tflite", variant="raw") if meta is None else meta
        (tmp_path / f"{name}.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def _raises(exc, text):
    return pytest.raises(exc, match=re.escape(text))


# ----------------------------------------------------------------------------- paths and formats

@pytest.mark.parametrize("name", ["nope.keras", "nope.tflite", "nope.onnx", "nope_saved_model", "nope.pt"])
def test_missing_path_is_file_not_found_naming_it(tmp_path, name):
    with _raises(FileNotFoundError, f"model file not found: {tmp_path / name}"):
        open_model(tmp_path / name)


def test_detect_format_by_suffix_or_folder(tmp_path):
    assert detect_format("runs/a/best.keras") == "keras"
    assert detect_format("B_INT8.TFLITE") == "tflite"
    assert detect_format(tmp_path / "m.onnx") == "onnx"  # need not exist
    (tmp_path / "odd.tflite").mkdir()
    assert detect_format(tmp_path / "odd.tflite") == "saved_model"  # a folder is a SavedModel whatever its name
    for name in ("m.pt", "m.h5", "m.weights.h5", "keras", "m.keras.bak"):
        with _raises(RuntimeLoadError, f"{name}: unsupported model file; supported: .keras, a SavedModel "
                                       "folder, .tflite, .onnx"):
            detect_format(name)
    assert issubclass(RuntimeLoadError, ValueError)


def test_unknown_suffix_is_refused_by_open_model(tmp_path):
    path = _export(tmp_path, "m.pt")
    with _raises(RuntimeLoadError, f"{path}: unsupported model file"):
        open_model(path)


def test_meta_path_is_beside_the_artifact():
    assert meta_path("runs/x/best_fp32.tflite") == "runs/x/best_fp32.tflite.json"
    assert meta_path("runs/x/best_saved_model/") == "runs/x/best_saved_model.json"


# ----------------------------------------------------------------------------- metadata

def test_missing_metadata_is_named(tmp_path):
    path = _export(tmp_path, meta=False)
    with _raises(RuntimeLoadError, f"{path}: its metadata file {path}.json is missing"):
        open_model(path)


@pytest.mark.parametrize("text,message", [
    ("{not json", "unreadable metadata of"),
    ("", "unreadable metadata of"),
    ("[1, 2]", "is not a JSON object"),
    (json.dumps({"class_names": ["a"], "format": "tflite"}), "lacks anchors, input_shape, variant"),
    (json.dumps(_meta(format="tflite")), "lacks variant"),
    (json.dumps(_meta(format="tflite", variant="fancy")), "unknown variant 'fancy'; valid: raw, end_to_end"),
])
def test_bad_metadata_is_named(tmp_path, text, message):
    path = _export(tmp_path, meta=text)
    with pytest.raises(RuntimeLoadError, match=re.escape(f"{path}.json: ") + ".*" + re.escape(message)):
        open_model(path)


def test_metadata_of_another_format_is_refused(tmp_path):
    path = _export(tmp_path, "m.onnx", meta=_meta(format="tflite", variant="raw"))
    with _raises(RuntimeLoadError, f"{path}: a onnx file, but its metadata {path}.json describes a tflite export"):
        open_model(path)


def test_saved_model_folder_without_its_graph(tmp_path):
    folder = tmp_path / "m_saved_model"
    folder.mkdir()
    (folder / "variables").mkdir()
    (tmp_path / "m_saved_model.json").write_text(json.dumps(_meta(format="saved_model", variant="raw")))
    with _raises(RuntimeLoadError, f"{folder}: not a SavedModel folder (no saved_model.pb)"):
        open_model(folder)


# ----------------------------------------------------------------------------- digests

def test_size_and_sha256_mismatches_name_the_file(tmp_path):
    data = b"0123456789" * 7
    right = hashlib.sha256(data).hexdigest()
    path = _export(tmp_path, data=data, meta=_meta(format="tflite", variant="raw", bytes=len(data) + 5, sha256=right))
    with _raises(RuntimeLoadError, f"{path}: 70 bytes but 75 were written at export: a truncated or corrupt "
                                   "file, or an export of another model"):
        open_model(path)
    wrong = hashlib.sha256(data + b"!").hexdigest()
    path = _export(tmp_path, data=data, meta=_meta(format="tflite", variant="raw", bytes=len(data), sha256=wrong))
    with _raises(RuntimeLoadError, f"{path}: contents differ from the export it describes (sha256 mismatch)"):
        open_model(path)
    check_digest(path, {"bytes": len(data), "sha256": right})  # the recorded digest: no error
    check_digest(path, {"bytes": 1})  # nothing recorded to compare with: no check


def test_input_size_is_refused_for_an_export(tmp_path):
    wrong = "0" * 64
    path = _export(tmp_path, meta=_meta(format="tflite", variant="raw", sha256=wrong))
    for size in (160, (128, 128), "96x160"):
        with _raises(RuntimeLoadError, f"{path}: an exported model runs at the input size it was exported at "
                                       "(96x128); leave --input-size out"):
            open_model(path, input_size=size)
    for size in (None, (96, 128), "96x128"):  # its own size passes on to the next check
        with _raises(RuntimeLoadError, "sha256 mismatch"):
            open_model(path, input_size=size)


def test_file_digest_of_a_file_by_hand(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert file_digest(tmp_path / "f.bin") == (hashlib.sha256(b"abc").hexdigest(), 3)
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(str(tmp_path / "empty")) == (hashlib.sha256(b"").hexdigest(), 0)


def _folder(root, files):
    for rel, data in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_file_digest_of_a_folder_is_order_independent_and_sees_names(tmp_path):
    files = [("saved_model.pb", b"graph"), ("variables/variables.index", b"idx"),
             ("variables/variables.data-00000-of-00001", b"weights"), ("fingerprint.pb", b"fp")]
    a = file_digest(_folder(tmp_path / "a", files))
    b = file_digest(_folder(tmp_path / "b", files[::-1]))  # written in the other order
    assert a == b and a[1] == len(b"graph" + b"idx" + b"weights" + b"fp")
    # by hand: relative paths sorted, each followed by NUL and its bytes
    ordered = sorted(files)
    want = hashlib.sha256(b"".join(rel.encode() + b"\0" + data for rel, data in ordered)).hexdigest()
    assert a[0] == want
    renamed = file_digest(_folder(tmp_path / "c", [("saved_model2.pb", b"graph")] + files[1:]))
    assert renamed[0] != a[0] and renamed[1] == a[1]
    moved = file_digest(_folder(tmp_path / "d", [("saved_model.pb", b"grap"), ("variables/variables.index", b"hidx")]
                                + files[2:]))
    assert moved[0] != a[0] and moved[1] == a[1]  # same bytes in the same order, split differently


# ----------------------------------------------------------------------------- the Keras runtime

def test_open_model_on_a_keras_file_runs_the_model(keras_file, body, batch):
    rt = open_model(keras_file)
    assert isinstance(rt, KerasRuntime) and rt.format == "keras" and rt.path == keras_file
    assert rt.variant == "raw" and not rt.end_to_end
    assert rt.input_hw == HW and rt.class_names == CLASSES and rt.num_classes == 3
    assert rt.input_dtype == np.float32 and rt.meta["backbone"] == "tiny"
    assert rt.output_shapes == [(3, 4, 24), (6, 8, 24), (12, 16, 24)]  # 96/32 x 128/32, 3 * (5 + 3)
    got = rt(batch)
    want = [keras.ops.convert_to_numpy(t) for t in body(batch.astype(np.float32), training=False)]
    assert [g.shape for g in got] == [(2, 3, 4, 24), (2, 6, 8, 24), (2, 12, 16, 24)]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    for g, f in zip(got, rt(batch.astype(np.float32))):  # uint8 or float [0, 255]: the same
        np.testing.assert_array_equal(g, f)
    with _raises(ValueError, f"{keras_file}: expected a (B, 96, 128, 3) letterboxed batch, got shape (1, 64, 64, 3)"):
        rt(np.zeros((1, 64, 64, 3), np.uint8))


def test_input_size_rebuilds_the_keras_model(keras_file, body, batch):
    rt = open_model(keras_file, input_size=(128, 160))
    assert rt.input_hw == (128, 160) and rt.meta["input_shape"] == [128, 160]
    assert rt.output_shapes == [(4, 5, 24), (8, 10, 24), (16, 20, 24)]
    for a, b in zip(rt.model.get_weights(), body.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the same function: on the small image placed top-left of a larger canvas, every
    # stride-8 cell (a 3x3 / 8 conv, no padding at these sizes) and every stride-16 cell but
    # the last row and column (those see the small input's bottom/right padding) agree
    canvas = np.zeros((2, 128, 160, 3), np.uint8)
    canvas[:, :96, :128] = batch
    big, small = rt(canvas), open_model(keras_file)(batch)
    assert [g.shape[1:3] for g in big] == [(4, 5), (8, 10), (16, 20)]
    np.testing.assert_allclose(big[2][:, :12, :16], small[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(big[1][:, :5, :7], small[1][:, :5, :7], rtol=1e-5, atol=1e-5)
    assert open_model(keras_file, input_size="160").input_hw == (160, 160)
    with pytest.raises(ValueError, match="multiples of 32"):
        open_model(keras_file, input_size=100)


def test_a_corrupt_keras_file_is_named(tmp_path):
    bad = tmp_path / "cut.keras"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not a valid .keras file")):
        open_model(bad)


# ----------------------------------------------------------------------------- Runtime base

def _runtime(**meta):
    return Runtime("m.tflite", {**_meta(), "input_shape": [2, 3], **meta})


def test_prepare_quantizes_uint8_inputs_with_scale_and_zero_point():
    rt = _runtime(input={"dtype": "uint8", "quantization": [0.5, 10]})
    assert rt.input_dtype == np.uint8
    batch = np.array([0.0, 3.2, 100.0, 200.0, 250.0, -30.0], np.float32).reshape(1, 2, 1, 3).repeat(3, axis=2)
    got = rt.prepare(batch)
    # q = clip(round(x / 0.5 + 10), 0, 255): 10, 16.4 -> 16, 210, 410 -> 255, 510 -> 255, -50 -> 0
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[0, :, 0], [[10, 16, 210], [255, 255, 0]])
    as_uint8 = rt.prepare(np.full((1, 2, 3, 3), 100, np.uint8))  # uint8 pixels are quantized too
    assert as_uint8.dtype == np.uint8 and np.all(as_uint8 == 210)


def test_prepare_with_identity_quantization_and_float_inputs():
    rt = _runtime(input={"dtype": "uint8", "quantization": [1.0, 0]})
    pixels = np.arange(18, dtype=np.uint8).reshape(1, 2, 3, 3)
    assert rt.prepare(pixels) is pixels  # [0, 255] pixels are the uint8 values themselves
    floats = np.array([12.4, 12.6, 300.0, -1.0, 0.5, 254.5], np.float32).reshape(1, 2, 1, 3).repeat(3, axis=2)
    np.testing.assert_array_equal(rt.prepare(floats)[0, :, 0], [[12, 13, 255], [0, 0, 254]])  # half to even
    assert _runtime(input={"dtype": "uint8", "quantization": None}).prepare(pixels) is pixels
    fp = _runtime()
    out = fp.prepare(pixels)
    assert fp.input_dtype == np.float32 and out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels)


def test_check_outputs_names_what_does_not_fit():
    rt = Runtime("m.onnx", _meta())
    rt.check_outputs([(1, 3, 4, 24), (1, 6, 8, 24), (1, 12, 16, 24)])
    rt.check_outputs([(None, None, None, 24), (-1, -1, -1, 24), (1, 12, 16, None)])  # unknown dims pass
    with _raises(RuntimeLoadError, "m.onnx: 2 outputs; a raw-heads detector has 3 (strides 32, 16, 8)"):
        rt.check_outputs([(1, 3, 4, 24), (1, 6, 8, 24)])
    with _raises(RuntimeLoadError, "m.onnx: outputs have 21 channels but its metadata (m.onnx.json) names 3 "
                                   "classes (24 channels): a file of another model"):
        rt.check_outputs([(1, 3, 4, 21), (1, 6, 8, 21), (1, 12, 16, 21)])
    with _raises(RuntimeLoadError, "m.onnx: stride-16 output grid is 5x8 but the metadata input size 96x128 "
                                   "needs 6x8"):
        rt.check_outputs([(1, 3, 4, 24), (1, 5, 8, 24), (1, 12, 16, 24)])


def test_output_names_are_ordered_by_stride_or_taken_by_name():
    rt = Runtime("m.tflite", _meta())
    rt.set_output_names({"s8": (1, 12, 16, 24), "s32": (1, 3, 4, 24), "s16": (1, 6, 8, 24)})
    assert rt._names == ["s32", "s16", "s8"]
    e2e = Runtime("m.tflite", _meta(variant="end_to_end"))
    assert e2e.end_to_end
    e2e.set_output_names({"num_valid": (1,), "classes": (1, 9), "scores": (1, 9), "boxes": (1, 9, 4)})
    assert e2e._names == ["boxes", "scores", "classes", "num_valid"]
    with _raises(RuntimeLoadError, "m.tflite: metadata says end-to-end but the outputs lack scores, num_valid"):
        e2e.set_output_names({"boxes": (1, 9, 4), "classes": (1, 9)})
