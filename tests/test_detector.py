"""utils/inference/detector.py: the Detector (letterbox -> one compiled model + NMS -> source pixels)."""
import numpy as np
import pytest
import tensorflow as tf

from _helpers import tiny_body
from utils.decode import postprocess
from utils.letterbox import Letterbox, letterbox_image, unletterbox_boxes
from utils.inference.detector import Detector
from utils.targets import load_anchors

ANCHORS = load_anchors()
HW = (96, 128)
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def detector():
    meta = {"class_names": CLASSES, "anchors": ANCHORS, "input_shape": HW, "backbone": "tiny", "alpha": 1.0}
    return Detector(tiny_body(HW, 3), meta, score_thresh=0.2, max_det=30)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 200), (300, 90), (96, 128)]]


def test_detect_matches_model_postprocess_unletterbox(detector):
    images = _images()
    got = detector.detect(images, nms="iou")
    assert len(got) == 3
    for image, det in zip(images, got):
        canvas, lb = letterbox_image(image, HW)
        heads = detector.model(canvas[None].astype(np.float32))
        b, s, c, n = (t.numpy() for t in postprocess(heads, ANCHORS, HW, 3, 0.2, 0.45, 30))
        want = unletterbox_boxes(b[0, :n[0]], lb)
        keep = (want[:, 2] > want[:, 0]) & (want[:, 3] > want[:, 1])
        assert det["boxes"].dtype == np.float32 and det["boxes"].shape == (keep.sum(), 4) and keep.sum() > 0
        np.testing.assert_allclose(det["boxes"], want[keep], rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(det["scores"], s[0, :n[0]][keep], rtol=1e-5)
        np.testing.assert_array_equal(det["classes"], c[0, :n[0]][keep])
        h, w = image.shape[:2]
        assert det["boxes"][:, [0, 2]].max() <= w and det["boxes"][:, [1, 3]].max() <= h
        assert np.all(np.diff(det["scores"]) <= 0)


def test_detect_timed_gives_same_results_and_split_times(detector):
    images = _images(1)
    want = detector.detect(images, score_thresh=0.3, nms="diou")
    got, times = detector.detect_timed(images, score_thresh=0.3, nms="diou")
    assert set(times) == {"preprocess", "model", "postprocess", "total"}
    assert all(v >= 0 for v in times.values())
    assert times["total"] >= times["model"] + times["postprocess"] - 1e-6
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["boxes"], w["boxes"], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(g["classes"], w["classes"])


def test_thresholds_do_not_retrace_and_batching_is_consistent(detector):
    images = _images(2)
    detector.detect(images, score_thresh=0.2)
    fused, _ = detector._functions("iou")
    traces = fused.experimental_get_tracing_count()
    few = detector.detect(images, score_thresh=0.5, iou_thresh=0.3, max_det=5)
    assert fused.experimental_get_tracing_count() == traces
    assert all(len(d["scores"]) <= 5 and np.all(d["scores"] > 0.5) for d in few)
    one_by_one = detector.detect(images, score_thresh=0.5, iou_thresh=0.3, max_det=5, batch_size=1)
    for a, b in zip(few, one_by_one):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5)
    assert detector.detect([]) == []


def test_finish_maps_back_to_source_pixels_by_hand():
    # source 100x200 (h, w) into 128x128: scale .64 -> 128x64 at dy = 32, dx = 0
    lb = Letterbox.compute((100, 200), (128, 128))
    assert lb.offset == (32, 0) and lb.new_hw == (64, 128)
    boxes = np.zeros((1, 4, 4), np.float32)
    boxes[0, 0] = [64, 48, 96, 64]    # -> [100, 25, 150, 50]
    boxes[0, 1] = [10, 2, 20, 10]     # wholly in the top padding: dropped
    padded = (boxes, np.array([[0.9, 0.8, 0, 0]], np.float32), np.array([[2, 1, 0, 0]], np.int32),
              np.array([2], np.int32))
    (det,) = Detector.finish(padded, [lb])
    np.testing.assert_allclose(det["boxes"], [[100, 25, 150, 50]], atol=1e-4)
    np.testing.assert_allclose(det["scores"], [0.9])
    assert det["classes"].tolist() == [2]


def test_bad_inputs_have_clear_errors(detector):
    meta = {"class_names": CLASSES + ["extra"], "anchors": ANCHORS, "input_shape": HW}
    with pytest.raises(ValueError, match="4 classes needs 3 outputs with 27"):
        Detector(detector.model, meta)
    with pytest.raises(ValueError, match="input is 96x128 but the metadata says 128x128"):
        Detector(detector.model, {**meta, "class_names": CLASSES, "input_shape": (128, 128)})
    with pytest.raises(ValueError, match="lacks anchors"):
        Detector(detector.model, {"class_names": CLASSES, "input_shape": HW})
    with pytest.raises(ValueError, match=r"image 1: expected a uint8 HxWx3 RGB array, got float32"):
        detector.detect([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="unknown NMS kind 'fast'"):
        detector.detect(_images(), nms="fast")


@pytest.mark.slow
def test_real_yolo_body_detector_and_end_to_end_model_agree():
    # (loading through Detector.from_file is covered by tests/test_eval_map.py)
    yolo = pytest.importorskip("nets.yolo")
    from nets.postprocess import end_to_end_model

    body = yolo.yolo_body((128, 128), 3, backbone="mobilenetv1", alpha=0.25)
    meta = {"class_names": CLASSES, "anchors": ANCHORS.tolist(), "input_shape": [128, 128],
            "backbone": "mobilenetv1", "alpha": 0.25}
    det = Detector(body, meta, score_thresh=0.05, max_det=20)
    assert det.class_names == CLASSES and det.backbone == "mobilenetv1"
    images = _images(3)
    batch, lbs = det.preprocess(images)
    padded = det.infer(batch)
    # the same body + YoloPostprocess as one model (saving it: tests/test_postprocess.py) agrees
    out = end_to_end_model(body, ANCHORS, 3, score_thresh=0.05, max_det=20)(batch.astype(np.float32))
    np.testing.assert_array_equal(out["num_valid"].numpy(), padded[3])
    np.testing.assert_allclose(out["scores"].numpy(), padded[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["boxes"].numpy(), padded[0], rtol=1e-4, atol=1e-2)
    assert len(det.finish(padded, lbs)) == 3


def _conv_bn_body(hw, num_classes):
    """A tiny body whose heads follow conv + fused BN + relu6 blocks (something to fold)."""
    import keras

    from nets.layers import apply_conv_bn
    keras.utils.set_random_seed(1)
    inp = keras.Input((*hw, 3), name="image")
    x, outs = inp, []
    for i, s in enumerate((8, 16, 32)):
        x = apply_conv_bn(x, 8, 3, strides=8 if i == 0 else 2, name=f"b{s}")
        outs.append(keras.layers.Conv2D(3 * (5 + num_classes), 1, name=f"head{s}")(x))
    return keras.Model(inp, outs[::-1])


def _set_bn_stats(model, seed):
    import keras
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def test_detector_runs_the_folded_model_and_follows_training_with_sync_weights():
    import keras
    body = _conv_bn_body(HW, 3)
    _set_bn_stats(body, 0)
    meta = {"class_names": CLASSES, "anchors": ANCHORS, "input_shape": HW}
    det = Detector(body, meta, score_thresh=0.0, max_det=10)
    assert not [l for l in det.model.layers if isinstance(l, keras.layers.BatchNormalization)]
    batch = np.random.default_rng(3).integers(0, 256, (2, *HW, 3)).astype(np.uint8)
    want = [np.asarray(h) for h in body(batch.astype(np.float32), training=False)]
    for got, ref in zip(det.forward(batch), want):
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)
    _set_bn_stats(body, 1)  # "an epoch of training" changes the original only
    want = [np.asarray(h) for h in body(batch.astype(np.float32), training=False)]
    assert max(float(np.abs(np.asarray(g) - r).max()) for g, r in zip(det.forward(batch), want)) > 1e-2
    det.sync_weights()
    for got, ref in zip(det.forward(batch), want):
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)
    unfolded = Detector(body, meta, fold=False)
    assert unfolded.model is body
