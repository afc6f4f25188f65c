"""Decode the YOLO heads and run NMS, in the TensorFlow graph.

One implementation for the loss (``decode_head``), training's in-loop evaluation,
eval_map.py, predict.py and exported end-to-end models (``postprocess``, wrapped as the
Keras layer ``nets.postprocess.YoloPostprocess``). The box encoding is the project convention:

    raw head l: (B, gh, gw, 3 * (5 + C)) -> (B, gh, gw, 3, 5 + C) = [tx, ty, tw, th, t_obj, t_cls...]
    cx = (2 * sigmoid(tx) - 0.5 + gx) / gw          cy = (2 * sigmoid(ty) - 0.5 + gy) / gh
    w  = (2 * sigmoid(tw)) ** 2 * anchor_w / W      h  = (2 * sigmoid(th)) ** 2 * anchor_h / H
    obj = sigmoid(t_obj), cls = sigmoid(t_cls), confidence = obj * cls

Outputs are ordered stride 32, 16, 8 and use anchors ``ANCHOR_MASKS[l]`` of the 9 anchors
(network-input pixels, sorted by area).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from utils.boxes import box_diou_tf
from utils.targets import ANCHOR_MASKS

NMS_KINDS = ("iou", "diou")
DEFAULT_PRE_NMS_TOPK = 1000


def decode_head(raw, anchors_wh, input_hw, num_classes):
    """Decode one YOLO head (pure, differentiable, dynamic batch and grid size).

    raw: (B, gh, gw, 3*(5+C)) or (B, gh, gw, 3, 5+C) logits; anchors_wh: the (3, 2) anchors
    of this scale in network-input pixels; input_hw: (H, W) of the network input.
    Returns ``(boxes, obj, cls)``: (B, gh, gw, 3, 4) cxcywh normalised to the network input,
    (B, gh, gw, 3, 1) and (B, gh, gw, 3, C) probabilities. Computed in float32 (also under
    mixed precision).
    """
    num_classes = int(num_classes)
    anchors_wh = tf.reshape(tf.cast(anchors_wh, tf.float32), (1, 1, 1, -1, 2))
    raw = tf.cast(raw, tf.float32)
    shape = tf.shape(raw)
    gh, gw = shape[1], shape[2]
    raw = tf.reshape(raw, (shape[0], gh, gw, tf.shape(anchors_wh)[3], 5 + num_classes))

    gx, gy = tf.meshgrid(tf.range(gw), tf.range(gh))  # each (gh, gw), "xy" indexing
    grid = tf.cast(tf.stack([gx, gy], axis=-1)[None, :, :, None, :], tf.float32)  # (1, gh, gw, 1, 2)
    grid_wh = tf.cast(tf.stack([gw, gh]), tf.float32)
    in_wh = tf.cast(tf.stack([input_hw[1], input_hw[0]]), tf.float32)

    xy = (2.0 * tf.sigmoid(raw[..., 0:2]) - 0.5 + grid) / grid_wh
    wh = tf.square(2.0 * tf.sigmoid(raw[..., 2:4])) * anchors_wh / in_wh
    obj = tf.sigmoid(raw[..., 4:5])
    cls = tf.sigmoid(raw[..., 5:])
    return tf.concat([xy, wh], axis=-1), obj, cls


def check_anchors(anchors):
    anchors = np.asarray(anchors, dtype=np.float32)
    if anchors.shape != (9, 2):
        raise ValueError(f"expected 9 anchors as a (9, 2) array of (w, h) pixels, got shape {anchors.shape}")
    return anchors


def decode_outputs(outputs, anchors, input_hw, num_classes):
    """Decode the 3 heads (strides 32, 16, 8) and flatten them.

    Returns ``(boxes_xyxy, scores)``: (B, N, 4) xyxy in network-input pixels, clipped to the
    input, and (B, N, C) confidences obj * cls; N = 3 * sum(gh * gw).
    """
    anchors = check_anchors(anchors)
    if len(outputs) != len(ANCHOR_MASKS):
        raise ValueError(f"expected {len(ANCHOR_MASKS)} head outputs (strides 32, 16, 8), got {len(outputs)}")
    h, w = float(input_hw[0]), float(input_hw[1])
    boxes, scores = [], []
    for raw, mask in zip(outputs, ANCHOR_MASKS):
        cxcywh, obj, cls = decode_head(raw, anchors[list(mask)], input_hw, num_classes)
        b = tf.shape(cxcywh)[0]
        boxes.append(tf.reshape(cxcywh, (b, -1, 4)))
        scores.append(tf.reshape(obj * cls, (b, -1, int(num_classes))))
    cxcywh = tf.concat(boxes, axis=1)
    scale = tf.constant([w, h, w, h], tf.float32)
    half = cxcywh[..., 2:4] / 2.0
    xyxy = tf.concat([cxcywh[..., 0:2] - half, cxcywh[..., 0:2] + half], axis=-1) * scale
    xyxy = tf.clip_by_value(xyxy, 0.0, scale)  # broadcasts [w, h, w, h]
    return xyxy, tf.concat(scores, axis=1)


def _pre_nms_topk(boxes, scores, topk):
    """Keep the ``topk`` boxes with the highest best-class confidence (mmdet's ``nms_pre``)."""
    if not topk:
        return boxes, scores
    k = tf.minimum(int(topk), tf.shape(scores)[1])
    _, idx = tf.math.top_k(tf.reduce_max(scores, axis=-1), k=k, sorted=False)
    return tf.gather(boxes, idx, batch_dims=1), tf.gather(scores, idx, batch_dims=1)


def _diou_nms(boxes, scores, score_thresh, iou_thresh, max_det):
    """Batched, class-wise greedy DIoU-NMS (Zheng et al. 2020) in TensorFlow.

    Written here because neither tf.image nor keras.ops has a DIoU-NMS op. Each (box, class)
    pair with confidence > score_thresh is a candidate; each step keeps the best remaining
    candidate of every image and drops the candidates of the same class whose DIoU with it is
    > iou_thresh (the same strict comparisons as tf.image's NMS). At most ``max_det`` steps,
    fewer when every image runs out of candidates; the batch is processed in parallel.
    """
    b = tf.shape(scores)[0]
    k = tf.shape(scores)[1]
    c = tf.shape(scores)[2]
    neg = tf.constant(-1.0, tf.float32)  # below any confidence in [0, 1]
    flat = tf.reshape(scores, (b, k * c))
    flat = tf.where(flat > score_thresh, flat, neg)  # pair (box j, class c) at j * C + c
    class_ids = tf.range(c)

    def cond(i, s, *_):
        return tf.logical_and(i < max_det, tf.reduce_any(s > neg))

    def body(i, s, out_boxes, out_scores, out_cls, num_valid):
        best = tf.argmax(s, axis=1, output_type=tf.int32)  # (B,)
        best_score = tf.gather(s, best, batch_dims=1)
        valid = best_score > neg
        best_box = tf.gather(boxes, best // c, batch_dims=1)  # (B, 4)
        best_cls = best % c
        # DIoU against the K boxes (not the K*C pairs), then applied to the best's class only
        _, diou = box_diou_tf(best_box[:, None, :], boxes)  # (B, K)
        # expand_dims and range comparisons instead of bool [..., None] slices and tf.one_hot:
        # the same values, but they convert to TFLite builtins and to ONNX (exported models)
        same_cls = tf.equal(tf.expand_dims(class_ids, 0), tf.expand_dims(best_cls, 1))  # (B, C)
        suppress = tf.logical_and(tf.expand_dims(diou > iou_thresh, 2), tf.expand_dims(same_cls, 1))  # (B, K, C)
        suppress = tf.logical_or(tf.reshape(suppress, (b, k * c)),
                                 tf.equal(tf.expand_dims(tf.range(k * c), 0), tf.expand_dims(best, 1)))
        s = tf.where(suppress, neg, s)
        # write slot i of the images that still had a candidate (the others keep their zeros)
        slot = tf.logical_and(tf.expand_dims(tf.equal(tf.range(max_det), i), 0), tf.expand_dims(valid, 1))
        out_boxes = tf.where(tf.expand_dims(slot, 2), tf.expand_dims(best_box, 1), out_boxes)
        out_scores = tf.where(slot, tf.expand_dims(best_score, 1), out_scores)
        out_cls = tf.where(slot, tf.expand_dims(best_cls, 1), out_cls)
        return i + 1, s, out_boxes, out_scores, out_cls, num_valid + tf.cast(valid, tf.int32)

    init = (tf.constant(0), flat, tf.zeros((b, max_det, 4)), tf.zeros((b, max_det)),
            tf.zeros((b, max_det), tf.int32), tf.zeros((b,), tf.int32))
    _, _, out_boxes, out_scores, out_cls, num_valid = tf.while_loop(cond, body, init)
    return out_boxes, out_scores, out_cls, num_valid


def batched_nms(boxes, scores, score_thresh=0.25, iou_thresh=0.45, max_det=100, kind="iou"):
    """Batched class-wise NMS of shared boxes.

    boxes (B, N, 4) xyxy, scores (B, N, C). Returns padded ``(boxes (B, max_det, 4), scores
    (B, max_det), classes int32 (B, max_det), num_valid int32 (B,))``, best first; padding is
    zeros. ``kind="iou"`` uses tf.image.combined_non_max_suppression, which with one box per
    anchor (q = 1) suppresses within each class only; ``kind="diou"`` uses DIoU-NMS.
    """
    kind = str(kind).lower()
    if kind not in NMS_KINDS:
        raise ValueError(f"unknown NMS kind {kind!r}; valid: {', '.join(NMS_KINDS)}")
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    score_thresh = tf.cast(score_thresh, tf.float32)
    iou_thresh = tf.cast(iou_thresh, tf.float32)
    max_det = tf.cast(max_det, tf.int32)
    if kind == "diou":
        return _diou_nms(boxes, scores, score_thresh, iou_thresh, max_det)
    # Pixel coordinates: clip_boxes=False (its clipping assumes [0, 1] coordinates). IoU is
    # symmetric in x and y, so the xyxy order works for the op's yxyx.
    out = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_output_size_per_class=max_det, max_total_size=max_det,
        iou_threshold=iou_thresh, score_threshold=score_thresh, pad_per_class=False, clip_boxes=False)
    return out.nmsed_boxes, out.nmsed_scores, tf.cast(out.nmsed_classes, tf.int32), out.valid_detections


def postprocess(outputs, anchors, input_hw, num_classes, score_thresh=0.25, iou_thresh=0.45, max_det=100,
                nms="iou", pre_nms_topk=DEFAULT_PRE_NMS_TOPK):
    """Raw heads -> padded detections, batched, graph-safe (tf.function, exported models).

    outputs: the 3 heads (strides 32, 16, 8); anchors (9, 2) pixels; input_hw (H, W).
    Decodes all scales, confidence = obj * cls, keeps the ``pre_nms_topk`` boxes with the
    best confidence (0/None: all), then class-wise NMS (``nms`` = "iou" or "diou").
    Thresholds and ``max_det`` may be Python numbers or scalar tensors.

    Returns ``(boxes (B, max_det, 4) xyxy network-input pixels, scores (B, max_det),
    classes int32 (B, max_det), num_valid int32 (B,))``.
    """
    boxes, scores = decode_outputs(outputs, anchors, input_hw, num_classes)
    boxes, scores = _pre_nms_topk(boxes, scores, pre_nms_topk)
    return batched_nms(boxes, scores, score_thresh, iou_thresh, max_det, kind=nms)
