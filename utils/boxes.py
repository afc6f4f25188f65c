"""Box math, written once. NumPy versions for data/eval; TensorFlow versions live beside them
where the graph needs them (loss, in-graph NMS).

Box formats: ``xyxy`` = [x1, y1, x2, y2]; ``cxcywh`` = [cx, cy, w, h]. Pixel units unless a
function says otherwise.
"""
from __future__ import annotations

import numpy as np


def xyxy_to_cxcywh(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    return np.concatenate([boxes[..., 0:2] + wh / 2, wh], axis=-1)


def cxcywh_to_xyxy(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[..., 2:4] / 2
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def box_area(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a, b):
    """Pairwise IoU of xyxy boxes: a (N, 4), b (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def wh_iou(wh_a, wh_b):
    """Shape IoU of boxes that share a centre: wh_a (N, 2), wh_b (M, 2) -> (N, M).

    The YOLO anchor-matching and k-means distance (1 - wh_iou).
    """
    wh_a = np.asarray(wh_a, dtype=np.float32).reshape(-1, 2)
    wh_b = np.asarray(wh_b, dtype=np.float32).reshape(-1, 2)
    inter = np.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * np.minimum(wh_a[:, None, 1], wh_b[None, :, 1])
    union = wh_a.prod(1)[:, None] + wh_b.prod(1)[None, :] - inter
    return (inter / np.maximum(union, 1e-12)).astype(np.float32)


def box_diou_tf(a, b, eps: float = 1e-9):
    """Element-wise (broadcasting) IoU and DIoU of xyxy boxes, TensorFlow, differentiable.

    Returns ``(iou, diou)`` with the shape of the broadcast leading axes. DIoU (Zheng et al.
    2020) = IoU - d^2 / c^2, d = distance between the centres, c = diagonal of the smallest
    box enclosing both. Used by DIoU-NMS (utils/decode.py); tf.image has no DIoU op.
    """
    import tensorflow as tf

    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    ax1, ay1, ax2, ay2 = tf.unstack(a, 4, axis=-1)
    bx1, by1, bx2, by2 = tf.unstack(b, 4, axis=-1)
    iw = tf.maximum(tf.minimum(ax2, bx2) - tf.maximum(ax1, bx1), 0.0)
    ih = tf.maximum(tf.minimum(ay2, by2) - tf.maximum(ay1, by1), 0.0)
    inter = iw * ih
    area_a = tf.maximum(ax2 - ax1, 0.0) * tf.maximum(ay2 - ay1, 0.0)
    area_b = tf.maximum(bx2 - bx1, 0.0) * tf.maximum(by2 - by1, 0.0)
    iou = inter / tf.maximum(area_a + area_b - inter, eps)
    centre_d2 = ((ax1 + ax2 - bx1 - bx2) ** 2 + (ay1 + ay2 - by1 - by2) ** 2) / 4.0
    diag2 = (tf.maximum(ax2, bx2) - tf.minimum(ax1, bx1)) ** 2 + (tf.maximum(ay2, by2) - tf.minimum(ay1, by1)) ** 2
    return iou, iou - centre_d2 / tf.maximum(diag2, eps)


# --------------------------------------------------------------------------------------
# Graph (Keras ops / TensorFlow) box math, used by the loss. cxcywh, any leading shape, any
# consistent unit (the loss uses input-normalised boxes). Keras is imported inside the
# functions so that NumPy-only users of this module (data, metrics) do not load it.
# keras.utils.bounding_boxes.compute_ciou exists, but it has no stop-gradient on the CIoU
# alpha (the paper's implementation treats alpha as a constant) and converts formats on
# every call; tests/test_loss.py checks that the values below agree with it.
# --------------------------------------------------------------------------------------
_TF_EPS = 1e-9  # a floor for denominators (not added to them: exact values for real boxes)


def _tf_corners(boxes):
    xy, half = boxes[..., 0:2], boxes[..., 2:4] / 2
    return xy - half, xy + half


def bbox_iou_pairwise(a, b):
    """IoU of every box in a (..., N, 4) with every box in b (..., M, 4), cxcywh -> (..., N, M).

    Zero-size boxes (padding rows) get IoU 0; never NaN.
    """
    from keras import ops
    a_lo, a_hi = _tf_corners(a[..., :, None, :])
    b_lo, b_hi = _tf_corners(b[..., None, :, :])
    wh = ops.maximum(ops.minimum(a_hi, b_hi) - ops.maximum(a_lo, b_lo), 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = ops.prod(a_hi - a_lo, axis=-1)
    area_b = ops.prod(b_hi - b_lo, axis=-1)
    return inter / ops.maximum(area_a + area_b - inter, _TF_EPS)


def bbox_ciou(b1, b2):
    """Complete IoU (Zheng et al., AAAI 2020) of b1 and b2, cxcywh, shapes (..., 4) -> (...).

    CIoU = IoU - rho^2 / c^2 - alpha * v, with rho the centre distance, c the diagonal of the
    smallest enclosing box, v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2 and
    alpha = v / (1 - IoU + v) held constant (stop_gradient), as in the authors' code.
    Denominators are floored at 1e-9, so zero-size boxes give finite values and gradients.
    """
    import math

    from keras import ops
    x1, y1, w1, h1 = ops.unstack(b1, 4, axis=-1)
    x2, y2, w2, h2 = ops.unstack(b2, 4, axis=-1)
    l1, r1, t1, d1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    l2, r2, t2, d2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (ops.maximum(ops.minimum(r1, r2) - ops.maximum(l1, l2), 0.0)
             * ops.maximum(ops.minimum(d1, d2) - ops.maximum(t1, t2), 0.0))
    area1, area2 = (r1 - l1) * (d1 - t1), (r2 - l2) * (d2 - t2)  # like inter: IoU(b, b) == 1 exactly
    iou = inter / ops.maximum(area1 + area2 - inter, _TF_EPS)
    c2 = ops.maximum((ops.maximum(r1, r2) - ops.minimum(l1, l2)) ** 2
                     + (ops.maximum(d1, d2) - ops.minimum(t1, t2)) ** 2, _TF_EPS)
    rho2 = (x1 - x2) ** 2 + (y1 - y2) ** 2
    v = (4.0 / math.pi ** 2) * (ops.arctan(w2 / ops.maximum(h2, _TF_EPS))
                                - ops.arctan(w1 / ops.maximum(h1, _TF_EPS))) ** 2
    alpha = ops.stop_gradient(v / ops.maximum(v - iou + 1.0, _TF_EPS))
    return iou - (rho2 / c2 + alpha * v)
