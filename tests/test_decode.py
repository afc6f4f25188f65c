"""utils/decode.py: head decoding, class-wise IoU / DIoU NMS, postprocess.
(The YoloPostprocess layer and end-to-end models: tests/test_postprocess.py.)"""
import math

import numpy as np
import pytest
import tensorflow as tf

from utils.boxes import box_iou
from utils.decode import batched_nms, decode_head, postprocess
from utils.targets import ANCHOR_MASKS
from utils.letterbox import Letterbox, letterbox_boxes, unletterbox_boxes
from utils.targets import load_anchors

ANCHORS = load_anchors()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_decode(raw, anchors_wh, input_hw, c):
    """Independent NumPy decode, written from the convention loop by loop."""
    b, gh, gw, _ = raw.shape
    raw = raw.reshape(b, gh, gw, 3, 5 + c)
    out = np.zeros((b, gh, gw, 3, 4), np.float64)
    for gy in range(gh):
        for gx in range(gw):
            for a in range(3):
                t = raw[:, gy, gx, a]
                out[:, gy, gx, a, 0] = (2 * _sigmoid(t[:, 0]) - 0.5 + gx) / gw
                out[:, gy, gx, a, 1] = (2 * _sigmoid(t[:, 1]) - 0.5 + gy) / gh
                out[:, gy, gx, a, 2] = (2 * _sigmoid(t[:, 2])) ** 2 * anchors_wh[a, 0] / input_hw[1]
                out[:, gy, gx, a, 3] = (2 * _sigmoid(t[:, 3])) ** 2 * anchors_wh[a, 1] / input_hw[0]
    return out, _sigmoid(raw[..., 4:5]), _sigmoid(raw[..., 5:])


def _np_diou(a, b):
    """DIoU of one xyxy box ``a`` against boxes ``b`` (N, 4)."""
    iou = box_iou(a[None], b)[0].astype(np.float64)
    d2 = ((a[0] + a[2]) / 2 - (b[:, 0] + b[:, 2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[:, 1] + b[:, 3]) / 2) ** 2
    c2 = (np.maximum(a[2], b[:, 2]) - np.minimum(a[0], b[:, 0])) ** 2 + \
         (np.maximum(a[3], b[:, 3]) - np.minimum(a[1], b[:, 1])) ** 2
    return iou - d2 / c2


def np_nms(boxes, scores, score_thresh, iou_thresh, max_det, kind="iou"):
    """Reference class-wise greedy NMS for one image: boxes (N, 4), scores (N, C)."""
    kept = []
    for c in range(scores.shape[1]):
        idx = np.where(scores[:, c] > score_thresh)[0]
        idx = idx[np.argsort(-scores[idx, c], kind="stable")]
        while idx.size:
            i = idx[0]
            kept.append((scores[i, c], c, boxes[i]))
            rest = idx[1:]
            sim = _np_diou(boxes[i], boxes[rest]) if kind == "diou" else box_iou(boxes[i][None], boxes[rest])[0]
            idx = rest[sim <= iou_thresh]
    kept.sort(key=lambda t: -t[0])
    kept = kept[:max_det]
    return (np.array([k[2] for k in kept], np.float32).reshape(-1, 4),
            np.array([k[0] for k in kept], np.float32), np.array([k[1] for k in kept], np.int32))


def _random_boxes(rng, b, n, size=200.0):
    xy = rng.uniform(0, size * 0.8, (b, n, 2))
    wh = rng.uniform(size * 0.05, size * 0.4, (b, n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


# ---------------------------------------------------------------- decode_head

def test_decode_head_hand_computed_cell():
    # non-square input 64x96 at stride 32 -> grid 2 x 3; 2 classes; anchors of this scale:
    anchors = np.array([[10, 20], [30, 40], [50, 60]], np.float32)
    raw = np.zeros((1, 2, 3, 3, 7), np.float32)
    # cell gy=1, gx=2, anchor 1: tx=0 -> s=.5; ty=ln3 -> s=.75; tw=0 -> s=.5; th=-ln3 -> s=.25
    raw[0, 1, 2, 1] = [0.0, math.log(3), 0.0, -math.log(3), 0.0, math.log(4), -math.log(4)]
    boxes, obj, cls = decode_head(tf.constant(raw.reshape(1, 2, 3, 21)), anchors, (64, 96), 2)
    assert boxes.shape == (1, 2, 3, 3, 4) and obj.shape == (1, 2, 3, 3, 1) and cls.shape == (1, 2, 3, 3, 2)
    # cx = (2*.5 - .5 + 2) / 3 = 2.5/3;  cy = (2*.75 - .5 + 1) / 2 = 1.0
    # w = (2*.5)^2 * 30 / 96 = .3125;    h = (2*.25)^2 * 40 / 64 = .15625
    np.testing.assert_allclose(boxes[0, 1, 2, 1], [2.5 / 3, 1.0, 0.3125, 0.15625], rtol=1e-6)
    np.testing.assert_allclose(obj[0, 1, 2, 1], [0.5], rtol=1e-6)
    np.testing.assert_allclose(cls[0, 1, 2, 1], [0.8, 0.2], rtol=1e-6)
    # an all-zero cell: centre of the cell, anchor-sized box
    np.testing.assert_allclose(boxes[0, 0, 0, 2], [0.5 / 3, 0.5 / 2, 50 / 96, 60 / 64], rtol=1e-6)


def test_decode_head_matches_numpy_reference_dynamic_shapes():
    rng = np.random.default_rng(0)
    fn = tf.function(lambda r: decode_head(r, ANCHORS[:3], (96, 160), 3),
                     input_signature=[tf.TensorSpec((None, None, None, 24), tf.float32)])
    for b, gh, gw in [(2, 12, 20), (1, 3, 5)]:  # one trace, two batch / grid sizes
        raw = rng.normal(0, 3, (b, gh, gw, 24)).astype(np.float32)
        got = fn(tf.constant(raw))
        want = _np_decode(raw, ANCHORS[:3], (96, 160), 3)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-6)


def test_decode_head_is_differentiable_and_bounded():
    raw = tf.Variable(np.full((1, 2, 2, 18), 50.0, np.float32))  # saturated logits: no inf/NaN
    with tf.GradientTape() as tape:
        boxes, obj, cls = decode_head(raw, ANCHORS[:3], (64, 64), 1)
        loss = tf.reduce_sum(boxes) + tf.reduce_sum(obj) + tf.reduce_sum(cls)
    grad = tape.gradient(loss, raw)
    assert np.all(np.isfinite(boxes.numpy())) and np.all(np.isfinite(grad.numpy()))
    assert np.all(boxes.numpy()[..., 2:] <= 4 * ANCHORS[:3].max() / 64 + 1e-6)


# ---------------------------------------------------------------- letterbox round trip

@pytest.mark.parametrize("src_hw,dst_hw", [((100, 100), (128, 128)), ((480, 640), (320, 320)),
                                           ((375, 500), (256, 416)), ((640, 427), (320, 224))])
def test_letterbox_boxes_round_trip(src_hw, dst_hw):
    rng = np.random.default_rng(1)
    h, w = src_hw
    xy = rng.uniform(0, 0.6, (20, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + rng.uniform(1, 0.4 * min(h, w), (20, 2))], 1).astype(np.float32)
    lb = Letterbox.compute(src_hw, dst_hw)
    net = letterbox_boxes(boxes, lb)
    assert net[:, [0, 2]].min() >= lb.offset[1] - 1e-3 and net[:, [1, 3]].min() >= lb.offset[0] - 1e-3
    np.testing.assert_allclose(unletterbox_boxes(net, lb), boxes, atol=1e-3)


# ---------------------------------------------------------------- NMS

@pytest.mark.parametrize("kind", ["iou", "diou"])
def test_batched_nms_matches_numpy_reference(kind):
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 3, 80)
    scores = rng.uniform(0, 1, (3, 80, 4)).astype(np.float32)
    out = [o.numpy() for o in batched_nms(boxes, scores, 0.3, 0.45, 25, kind=kind)]
    assert out[0].shape == (3, 25, 4) and out[1].shape == (3, 25) and out[2].dtype == np.int32
    for i in range(3):
        ref_boxes, ref_scores, ref_cls = np_nms(boxes[i], scores[i], 0.3, 0.45, 25, kind)
        n = out[3][i]
        assert n == len(ref_scores) and n > 0
        np.testing.assert_allclose(out[1][i, :n], ref_scores, rtol=1e-6)
        np.testing.assert_array_equal(out[2][i, :n], ref_cls)
        np.testing.assert_allclose(out[0][i, :n], ref_boxes, rtol=1e-6)
        assert np.all(out[1][i, n:] == 0) and np.all(out[0][i, n:] == 0)


def test_nms_is_class_wise():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]]], np.float32)  # same box, two classes
    for kind in ("iou", "diou"):
        b, s, c, n = (o.numpy() for o in batched_nms(boxes, scores, 0.1, 0.5, 10, kind=kind))
        assert n[0] == 2, kind  # the class-0 duplicate is suppressed, the class-1 box is not
        np.testing.assert_allclose(s[0, :2], [0.9, 0.8])
        np.testing.assert_array_equal(c[0, :2], [0, 1])


def test_diou_nms_keeps_overlapping_box_with_far_centre():
    # A = [0,0,100,10], B = [40,0,140,10]: inter 600, union 1400, IoU = 3/7 = .4286
    # centres 40 apart: d^2 = 1600; enclosing 140 x 10: c^2 = 19700; DIoU = .4286 - .0812 = .3474
    boxes = np.array([[[0, 0, 100, 10], [40, 0, 140, 10]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    n_iou = batched_nms(boxes, scores, 0.1, 0.4, 10, kind="iou")[3].numpy()[0]
    n_diou = batched_nms(boxes, scores, 0.1, 0.4, 10, kind="diou")[3].numpy()[0]
    assert (n_iou, n_diou) == (1, 2)
    assert abs(_np_diou(boxes[0, 0], boxes[0, 1:])[0] - (3 / 7 - 1600 / 19700)) < 1e-6


def test_nms_with_no_candidate_returns_zero_padding():
    boxes = _random_boxes(np.random.default_rng(3), 2, 10)
    scores = np.full((2, 10, 3), 0.01, np.float32)
    for kind in ("iou", "diou"):
        b, s, c, n = (o.numpy() for o in batched_nms(boxes, scores, 0.5, 0.45, 7, kind=kind))
        assert b.shape == (2, 7, 4) and np.all(n == 0) and np.all(s == 0) and np.all(b == 0)
    with pytest.raises(ValueError, match="unknown NMS kind 'soft'"):
        batched_nms(boxes, scores, kind="soft")


@pytest.mark.parametrize("kind", ["iou", "diou"])
def test_postprocess_matches_numpy_decode_and_nms(kind):
    rng = np.random.default_rng(4)
    hw, c = (64, 96), 3
    outs = [rng.normal(0, 2, (2, hw[0] // s, hw[1] // s, 3 * (5 + c))).astype(np.float32) for s in (32, 16, 8)]
    fn = tf.function(lambda o: postprocess(o, ANCHORS, hw, c, 0.3, 0.5, 40, nms=kind, pre_nms_topk=0))
    got = [o.numpy() for o in fn([tf.constant(o) for o in outs])]
    for i in range(2):
        boxes, scores = [], []
        for raw, mask in zip(outs, ANCHOR_MASKS):
            xywh, obj, cls = _np_decode(raw[i:i + 1], ANCHORS[list(mask)], hw, c)
            boxes.append(xywh.reshape(-1, 4))
            scores.append((obj * cls).reshape(-1, c))
        xywh, scores = np.concatenate(boxes), np.concatenate(scores)
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1) * [96, 64, 96, 64]
        xyxy = np.clip(xyxy, 0, [96, 64, 96, 64]).astype(np.float32)
        ref = np_nms(xyxy, scores.astype(np.float32), 0.3, 0.5, 40, kind)
        n = got[3][i]
        assert n == len(ref[1]) and n > 0
        np.testing.assert_allclose(got[1][i, :n], ref[1], rtol=1e-4)
        np.testing.assert_array_equal(got[2][i, :n], ref[2])
        np.testing.assert_allclose(got[0][i, :n], ref[0], rtol=1e-4, atol=1e-3)
