"""utils/boxes.py: format conversions, areas, IoU / DIoU / CIoU against hand-computed cases and
a loop-by-loop NumPy reference; the TensorFlow versions agree with the NumPy ones."""
import math

import numpy as np
import pytest
import tensorflow as tf

from utils.boxes import (bbox_ciou, bbox_iou_pairwise, box_area, box_diou_tf, box_iou, cxcywh_to_xyxy, wh_iou,
                         xyxy_to_cxcywh)


def random_xyxy(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def iou_ref(a, b):
    """Scalar IoU of two xyxy boxes, written out in float64."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / union if union > 0 else 0.0


def diou_ref(a, b):
    d2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return iou_ref(a, b) - d2 / c2


# ----------------------------------------------------------------------------- formats

def test_xyxy_cxcywh_hand_cases():
    np.testing.assert_array_equal(xyxy_to_cxcywh([10, 20, 30, 60]), [20, 40, 20, 40])
    np.testing.assert_array_equal(cxcywh_to_xyxy([20, 40, 20, 40]), [10, 20, 30, 60])
    np.testing.assert_array_equal(xyxy_to_cxcywh([[0, 0, 1, 3], [-2, -2, 2, 0]]), [[0.5, 1.5, 1, 3], [0, -1, 4, 2]])
    assert xyxy_to_cxcywh([1, 2, 3, 4]).dtype == np.float32


def test_conversions_round_trip_with_leading_axes_and_extra_columns_are_dropped():
    rng = np.random.default_rng(0)
    boxes = random_xyxy(rng, 24).reshape(2, 3, 4, 4)
    c = xyxy_to_cxcywh(boxes)
    assert c.shape == boxes.shape
    np.testing.assert_allclose(cxcywh_to_xyxy(c), boxes, atol=1e-4)
    np.testing.assert_allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(c)), c, atol=1e-4)
    # a class column after the box is not carried into the output
    with_cls = np.concatenate([boxes[0, 0], np.ones((4, 1), np.float32)], 1)
    assert xyxy_to_cxcywh(with_cls).shape == (4, 4)


def test_box_area_hand_cases_and_inverted_boxes_are_zero():
    np.testing.assert_array_equal(box_area([[0, 0, 2, 3], [1, 1, 1, 5], [5, 5, 4, 7], [0, 0, -1, -1]]), [6, 0, 0, 0])
    assert box_area(np.zeros((2, 3, 4))).shape == (2, 3)


# ----------------------------------------------------------------------------- IoU

@pytest.mark.parametrize("a,b,want", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),          # corner overlap: 1 / (4 + 4 - 1)
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16),         # contained
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),            # identical
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0),            # touching edges
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),            # disjoint
    ([0, 0, 4, 2], [2, 0, 6, 2], 4 / 12),         # half overlap along x
])
def test_box_iou_hand_cases(a, b, want):
    assert box_iou(a, b)[0, 0] == pytest.approx(want, abs=1e-7)
    assert box_iou(b, a)[0, 0] == pytest.approx(want, abs=1e-7)


def test_box_iou_matches_numpy_reference_pairwise():
    rng = np.random.default_rng(1)
    a, b = random_xyxy(rng, 13), random_xyxy(rng, 9)
    b[:3] = a[:3] + rng.normal(0, 2, (3, 4)).astype(np.float32)  # some real overlaps
    got = box_iou(a, b)
    assert got.shape == (13, 9) and got.dtype == np.float32
    want = np.array([[iou_ref(x, y) for y in b.astype(np.float64)] for x in a.astype(np.float64)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (got[:3, :3].diagonal() > 0).all() and got.min() >= 0 and got.max() <= 1


def test_box_iou_of_zero_size_boxes_is_zero_not_nan():
    z = np.zeros((2, 4), np.float32)
    got = box_iou(z, np.concatenate([z, [[0, 0, 1, 1]]]))
    assert np.all(got == 0) and np.all(np.isfinite(got))
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_wh_iou_hand_case_and_equals_iou_of_centred_boxes():
    # (2, 3) vs (4, 1): intersection 2 x 1 = 2, union 6 + 4 - 2 = 8
    assert wh_iou([[2, 3]], [[4, 1]])[0, 0] == pytest.approx(0.25)
    assert wh_iou([[5, 7]], [[5, 7]])[0, 0] == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    wa, wb = rng.uniform(1, 50, (6, 2)), rng.uniform(1, 50, (4, 2))
    centred = lambda wh: np.concatenate([-wh / 2, wh / 2], 1)  # noqa: E731
    np.testing.assert_allclose(wh_iou(wa, wb), box_iou(centred(wa), centred(wb)), atol=1e-6)
    np.testing.assert_allclose(wh_iou(wa, wb), wh_iou(wb, wa).T, atol=1e-7)


# ----------------------------------------------------------------------------- DIoU (TF)

def test_diou_hand_cases():
    # unit squares two apart: IoU 0; centres 2 apart (d^2 = 4); enclosing box 3 x 1 (c^2 = 10)
    iou, diou = box_diou_tf([0, 0, 1, 1], [2, 0, 3, 1])
    assert float(iou) == pytest.approx(0.0) and float(diou) == pytest.approx(-0.4)
    # concentric: no centre penalty, DIoU == IoU
    iou, diou = box_diou_tf([0, 0, 4, 4], [1, 1, 3, 3])
    assert float(iou) == pytest.approx(0.25) and float(diou) == pytest.approx(0.25)
    iou, diou = box_diou_tf([1, 2, 3, 5], [1, 2, 3, 5])
    assert float(iou) == pytest.approx(1.0) and float(diou) == pytest.approx(1.0)


def test_diou_broadcasts_and_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = random_xyxy(rng, 7), random_xyxy(rng, 5)
    iou, diou = box_diou_tf(a[:, None, :], b[None, :, :])
    assert iou.shape == (7, 5) and diou.shape == (7, 5)
    np.testing.assert_allclose(iou.numpy(), box_iou(a, b), atol=1e-6)
    want = np.array([[diou_ref(x, y) for y in b.astype(np.float64)] for x in a.astype(np.float64)])
    np.testing.assert_allclose(diou.numpy(), want, atol=1e-5)
    assert np.all(diou.numpy() <= iou.numpy() + 1e-7) and np.all(diou.numpy() >= -1 - 1e-6)


# ----------------------------------------------------------------------------- CIoU / pairwise (Keras ops)

def test_ciou_hand_cases():
    # same shape (v = 0), shifted by 1: IoU 2 / 6; rho^2 = 1; enclosing box 3 x 2, c^2 = 13
    got = float(bbox_ciou(tf.constant([0.0, 0, 2, 2]), tf.constant([1.0, 0, 2, 2])))
    assert got == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)
    # concentric 2x1 and 1x2: IoU 1 / 3, no centre term, aspect term alpha * v
    v = 4 / math.pi ** 2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    alpha = v / (1 - 1 / 3 + v)
    got = float(bbox_ciou(tf.constant([5.0, 5, 2, 1]), tf.constant([5.0, 5, 1, 2])))
    assert got == pytest.approx(1 / 3 - alpha * v, abs=1e-6)


def test_ciou_equals_diou_for_equal_aspect_ratios():
    rng = np.random.default_rng(4)
    c1 = np.concatenate([rng.uniform(0, 1, (50, 2)), rng.uniform(0.05, 0.5, (50, 2))], 1).astype(np.float32)
    c2 = c1.copy()
    c2[:, :2] += rng.normal(0, 0.1, (50, 2)).astype(np.float32)
    c2[:, 2:] *= rng.uniform(0.5, 2, (50, 1)).astype(np.float32)  # same aspect, other size
    ciou = bbox_ciou(tf.constant(c1), tf.constant(c2)).numpy()
    _, diou = box_diou_tf(cxcywh_to_xyxy(c1), cxcywh_to_xyxy(c2))
    np.testing.assert_allclose(ciou, diou.numpy(), atol=1e-5)


def test_pairwise_iou_with_batch_axis_matches_box_iou():
    rng = np.random.default_rng(5)
    a = xyxy_to_cxcywh(random_xyxy(rng, 2 * 6)).reshape(2, 6, 4)
    b = xyxy_to_cxcywh(random_xyxy(rng, 2 * 4)).reshape(2, 4, 4)
    b[1, :2] = a[1, :2]  # identical pairs
    got = bbox_iou_pairwise(tf.constant(a), tf.constant(b)).numpy()
    assert got.shape == (2, 6, 4)
    for i in range(2):
        np.testing.assert_allclose(got[i], box_iou(cxcywh_to_xyxy(a[i]), cxcywh_to_xyxy(b[i])), atol=1e-6)
    np.testing.assert_allclose(got[1, [0, 1], [0, 1]], 1.0, atol=1e-6)
    zero = bbox_iou_pairwise(tf.zeros((1, 2, 4)), tf.zeros((1, 3, 4))).numpy()
    assert np.all(zero == 0)
