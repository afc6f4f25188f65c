"""nets/postprocess.py: the YoloPostprocess layer (decode + NMS of utils.decode as a
registered Keras layer) and end_to_end_model (yolo body + that layer as one model)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from _helpers import tiny_body
from nets.layers import PACKAGE
from nets.postprocess import YoloPostprocess, end_to_end_model
from utils.decode import postprocess
from utils.targets import load_anchors

ANCHORS = load_anchors()


def test_yolo_postprocess_config_round_trip():
    layer = YoloPostprocess(ANCHORS, (96, 128), 5, score_thresh=0.1, iou_thresh=0.6, max_det=50,
                            nms="diou", pre_nms_topk=300, name="post")
    config = layer.get_config()
    clone = YoloPostprocess.from_config(config)
    assert clone.get_config() == config
    assert (clone.nms, clone.max_det, clone.input_hw, clone.num_classes) == ("diou", 50, (96, 128), 5)
    np.testing.assert_allclose(clone.anchors, ANCHORS)
    with pytest.raises(ValueError, match="9 anchors"):
        YoloPostprocess(ANCHORS[:6], (96, 128), 5)


def test_end_to_end_model_saves_and_reloads_safely(tmp_path):
    body = tiny_body((64, 96), 2, seed=None)
    model = end_to_end_model(body, ANCHORS, 2, score_thresh=0.2, max_det=20, nms="diou")
    images = np.random.default_rng(5).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    want = model(images)
    assert want["boxes"].shape == (2, 20, 4) and want["classes"].dtype == tf.int32
    path = str(tmp_path / "e2e.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    got = loaded(images)
    for key in ("boxes", "scores", "classes", "num_valid"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-4)
    assert loaded.get_layer("yolo_postprocess").get_config()["nms"] == "diou"


@pytest.mark.slow
def test_end_to_end_model_exports_as_savedmodel(tmp_path):
    model = end_to_end_model(tiny_body((64, 96), 2, seed=None), ANCHORS, 2, score_thresh=0.2, max_det=10,
                             nms="diou")
    model.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    images = np.random.default_rng(6).uniform(0, 255, (3, 64, 96, 3)).astype(np.float32)
    got, want = served.serve(images), model(images)
    assert got["boxes"].shape == (3, 10, 4) and got["classes"].dtype == tf.int32
    for key in ("boxes", "scores", "classes", "num_valid"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-4)


def test_end_to_end_model_is_the_body_then_postprocess():
    hw = (64, 96)  # non-square: the layer takes (H, W) from the body's input
    body = tiny_body(hw, 2, seed=3)
    model = end_to_end_model(body, ANCHORS, 2, score_thresh=0.2, iou_thresh=0.5, max_det=15, nms="diou")
    assert model.name == "tiny_body_end2end" and model.inputs[0].shape[1:] == (64, 96, 3)
    layer = model.get_layer("yolo_postprocess")
    assert layer.input_hw == hw and not layer.trainable and layer.weights == []
    assert model.count_params() == body.count_params()
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {
        "boxes": (None, 15, 4), "scores": (None, 15), "classes": (None, 15), "num_valid": (None,)}
    images = np.random.default_rng(7).uniform(0, 255, (2, *hw, 3)).astype(np.float32)
    got = model(images)
    want = postprocess(body(images), ANCHORS, hw, 2, 0.2, 0.5, 15, nms="diou")
    assert int(want[3].numpy().min()) > 0  # some boxes survive: the comparison means something
    for key, w in zip(("boxes", "scores", "classes", "num_valid"), want):
        np.testing.assert_allclose(got[key].numpy(), w.numpy(), rtol=1e-6, atol=1e-5)
    assert got["classes"].dtype == tf.int32 and got["num_valid"].dtype == tf.int32
    assert end_to_end_model(body, ANCHORS, 2, name="mine").name == "mine"


def test_yolo_postprocess_arguments_are_normalised_and_checked():
    layer = YoloPostprocess(ANCHORS.tolist(), [96, 128], 3.0, score_thresh="0.3", nms="DIoU", pre_nms_topk=None)
    assert (layer.nms, layer.pre_nms_topk, layer.num_classes, layer.score_thresh) == ("diou", 0, 3, 0.3)
    assert layer.input_hw == (96, 128) and not layer.trainable
    with pytest.raises(ValueError, match="unknown NMS kind 'soft'"):
        YoloPostprocess(ANCHORS, (96, 128), 3, nms="soft")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == f"{PACKAGE}>YoloPostprocess"
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert clone.get_config() == layer.get_config()
