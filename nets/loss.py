"""YOLOv4 loss (CIoU box, objectness, class) and the Keras training wrapper.

Everything follows the box-encoding convention of utils/targets.py / utils/decode.py:
outputs ordered stride 32, 16, 8; y_true per scale (B, gh, gw, 3, 5+C) holding
[cx, cy, w, h] normalised to the network input, obj 1 on assigned (cell, anchor), one-hot
classes; ``gt_boxes`` (B, max_boxes, 4) cxcywh normalised, zero rows = padding. Predicted
boxes come from ``utils.decode.decode_head`` (the one decode shared with inference).

Loss, per scale l (all sums over the whole batch, all replicas):

    box_l = sum_pos (1 - CIoU(pred, true)) [* (2 - w*h) if box_area_weight] / N_pos_l
    obj_l = sum_cells BCE(t_obj, target) over cells not ignored / (B * gh * gw * 3)
    cls_l = sum_pos sum_c BCE(t_cls, smoothed one-hot) / (N_pos_l * C)
    total = box_weight * sum_l box_l + obj_weight * sum_l balance_l * obj_l
            + cls_weight * sum_l cls_l          (+ the body's regularisation losses)

* Ignored negatives: a cell that is not a positive and whose predicted box has IoU >
  ``ignore_thresh`` with ANY true box of its image (``gt_boxes``) is left out of obj (YOLOv3/v4).
* balance = (0.4, 1.0, 4.0) for strides (32, 16, 8): YOLOv5's [4.0, 1.0, 0.4] for P3, P4, P5
  in our output order. obj is a mean over cells, so the fine scale (16x the cells of the
  coarse one) would otherwise give each of its cells 16x less gradient.
* Defaults are YOLOv5's hyp.scratch-low (box 0.05, obj 1.0, cls 0.5) with YOLOv5's
  dataset scaling: obj x (H*W / 640^2) (obj is a per-cell mean, so this keeps the per-cell
  gradient independent of the input size) and cls x C / 80. Unlike YOLOv5 the total is NOT
  multiplied by the batch size: it is a per-image mean (scale SGD learning rates
  accordingly; Adam does not care).
* (2 - w*h) box weighting (YOLOv3/darknet) is off by default: it was made for MSE on
  coordinates; CIoU is already scale invariant, and YOLOv5 dropped it.
* Distribution: each replica returns its local sums divided by the GLOBAL batch size /
  GLOBAL positive counts (all-reduced), so the sum over replicas (what tf.distribute does
  with gradients) equals the single-device loss exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from utils.boxes import bbox_ciou, bbox_iou_pairwise
from utils.dataset import TARGET_KEYS  # ("y32", "y16", "y8"): the batch dict's keys
from utils.decode import decode_head
from utils.targets import ANCHOR_MASKS, STRIDES
DEFAULT_BALANCE = (0.4, 1.0, 4.0)  # strides 32, 16, 8


def _global_sum(x):
    """Sum of ``x`` over all replicas when called inside a tf.distribute replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


class YoloLoss:
    """The YOLOv4 loss. Call ``loss(y_true, y_pred)`` -> dict(total, box, obj, cls).

    ``y_true``: dict with "y32", "y16", "y8" and "gt_boxes" (see the module docstring);
    ``y_pred``: the body's three raw outputs (stride 32, 16, 8). The returned terms are the
    weighted contributions (total = box + obj + cls), scalars, per image. Stateless: safe
    inside tf.function / model.fit / tf.distribute.

    Options: ``balance`` (obj weights per output), ``box_weight``, ``obj_weight``,
    ``cls_weight`` (None = YOLOv5-scaled defaults, see module docstring), ``ignore_thresh``,
    ``label_smoothing`` eps (class targets y*(1-eps) + eps/2), ``obj_target`` "one" (positives
    target 1) or "iou" (IoU-aware: the detached CIoU clamped to >= 0, as YOLOv5),
    ``focal_gamma`` (0 = plain BCE; > 0 = focal loss on objectness, Lin et al. 2017) with
    ``focal_alpha`` (None = no alpha weighting), ``box_area_weight`` (the (2 - w*h) factor).
    """

    def __init__(self, anchors, num_classes: int, input_hw: Sequence[int], *,
                 balance: Sequence[float] = DEFAULT_BALANCE, box_weight: float = 0.05,
                 obj_weight: float | None = None, cls_weight: float | None = None,
                 ignore_thresh: float = 0.5, label_smoothing: float = 0.0, obj_target: str = "one",
                 focal_gamma: float = 0.0, focal_alpha: float | None = 0.25,
                 box_area_weight: bool = False):
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.shape != (9, 2):
            raise ValueError(f"anchors must be 9 (w, h) pairs, got shape {anchors.shape}")
        self.anchors = anchors
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        if len(balance) != 3:
            raise ValueError(f"balance needs 3 weights (strides 32, 16, 8), got {balance}")
        self.balance = tuple(float(b) for b in balance)
        self.box_weight = float(box_weight)
        h, w = self.input_hw
        self.obj_weight = float(obj_weight) if obj_weight is not None else 1.0 * h * w / 640.0 ** 2
        self.cls_weight = (float(cls_weight) if cls_weight is not None
                           else 0.5 * self.num_classes / 80.0)
        self.ignore_thresh = float(ignore_thresh)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if obj_target not in ("one", "iou"):
            raise ValueError(f"obj_target must be 'one' or 'iou', got {obj_target!r}")
        self.obj_target = obj_target
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.focal_gamma = float(focal_gamma)
        self.focal_alpha = None if focal_alpha is None else float(focal_alpha)
        self.box_area_weight = bool(box_area_weight)

    def get_config(self) -> dict:
        return {"balance": self.balance, "box_weight": self.box_weight,
                "obj_weight": self.obj_weight, "cls_weight": self.cls_weight,
                "ignore_thresh": self.ignore_thresh, "label_smoothing": self.label_smoothing,
                "obj_target": self.obj_target, "focal_gamma": self.focal_gamma,
                "focal_alpha": self.focal_alpha, "box_area_weight": self.box_area_weight}

    def smooth_labels(self, onehot):
        """Class targets with label smoothing: y * (1 - eps) + eps / 2 (binary BCE targets)."""
        eps = self.label_smoothing
        return onehot * (1.0 - eps) + eps / 2.0 if eps else onehot

    def _obj_bce(self, target, logits):
        bce = ops.binary_crossentropy(target, logits, from_logits=True)
        if self.focal_gamma > 0:  # YOLOv5 FocalLoss: BCE * alpha_t * (1 - p_t)^gamma
            p = ops.sigmoid(logits)
            p_t = target * p + (1.0 - target) * (1.0 - p)
            bce = bce * ops.power(ops.maximum(1.0 - p_t, 1e-7), self.focal_gamma)
            if self.focal_alpha is not None:
                a = self.focal_alpha
                bce = bce * (target * a + (1.0 - target) * (1.0 - a))
        return bce

    def __call__(self, y_true: dict, y_pred) -> dict:
        missing = [k for k in (*TARGET_KEYS, "gt_boxes") if k not in y_true]
        if missing:
            raise KeyError(f"YoloLoss: y_true lacks {missing}; it needs {list(TARGET_KEYS)} and 'gt_boxes'")
        if len(y_pred) != 3:
            raise ValueError(f"YoloLoss: expected 3 outputs (strides 32, 16, 8), got {len(y_pred)}")
        c = self.num_classes
        gt = ops.cast(y_true["gt_boxes"], "float32")
        gt_valid = (gt[..., 2] * gt[..., 3]) > 0  # (B, M)

        raws = [ops.cast(r, "float32") for r in y_pred]
        yts = [ops.cast(y_true[k], "float32") for k in TARGET_KEYS]
        local_b = ops.cast(ops.shape(raws[0])[0], "float32")
        n_pos_local = ops.stack([ops.sum(yt[..., 4]) for yt in yts])
        # one all-reduce for all counts: [batch, N_pos per scale]
        counts = _global_sum(ops.concatenate([ops.reshape(local_b, (1,)), n_pos_local]))
        global_b, n_pos = counts[0], ops.maximum(counts[1:], 1.0)

        box_total = obj_total = cls_total = ops.zeros((), "float32")
        for l, (raw, yt) in enumerate(zip(raws, yts)):
            shape = ops.shape(raw)
            b, gh, gw = shape[0], shape[1], shape[2]
            raw = ops.reshape(raw, (b, gh, gw, 3, 5 + c))
            anchors_wh = self.anchors[list(ANCHOR_MASKS[l])]
            pred_box, _, _ = decode_head(raw, anchors_wh, self.input_hw, c)
            pred_box = ops.reshape(pred_box, (b, gh, gw, 3, 4))
            pos = yt[..., 4] > 0.5  # (B, gh, gw, 3)

            # box: CIoU on positives; elsewhere a harmless dummy box keeps values finite.
            dummy = ops.convert_to_tensor([0.5, 0.5, 0.25, 0.25], "float32")
            true_box = ops.where(pos[..., None], yt[..., 0:4], dummy)
            ciou = bbox_ciou(pred_box, true_box)
            box_term = 1.0 - ciou
            if self.box_area_weight:
                box_term = box_term * (2.0 - true_box[..., 2] * true_box[..., 3])
            box_l = ops.sum(ops.where(pos, box_term, 0.0)) / n_pos[l]

            # objectness, with negatives that already overlap a true box left out
            flat_pred = ops.reshape(ops.stop_gradient(pred_box), (b, -1, 4))
            iou = bbox_iou_pairwise(flat_pred, gt)  # (B, gh*gw*3, M)
            iou = ops.where(gt_valid[:, None, :], iou, 0.0)
            best = ops.reshape(ops.max(iou, axis=-1), (b, gh, gw, 3))
            ignore = ops.logical_and(ops.logical_not(pos), best > self.ignore_thresh)
            if self.obj_target == "iou":
                pos_target = ops.stop_gradient(ops.maximum(ciou, 0.0))
            else:
                pos_target = ops.ones_like(ciou)
            tobj = ops.where(pos, pos_target, 0.0)
            obj_bce = self._obj_bce(tobj, raw[..., 4])
            cells = ops.cast(gh * gw * 3, "float32") * global_b
            obj_l = ops.sum(ops.where(ignore, 0.0, obj_bce)) / cells

            # classes on positives
            cls_bce = ops.binary_crossentropy(self.smooth_labels(yt[..., 5:]), raw[..., 5:],
                                              from_logits=True)
            cls_l = ops.sum(ops.where(pos[..., None], cls_bce, 0.0)) / (n_pos[l] * c)

            box_total = box_total + box_l
            obj_total = obj_total + self.balance[l] * obj_l
            cls_total = cls_total + cls_l

        box = self.box_weight * box_total
        obj = self.obj_weight * obj_total
        cls = self.cls_weight * cls_total
        return {"total": box + obj + cls, "box": box, "obj": obj, "cls": cls}


def _unscale_for_distribution(value):
    # A replica's value is its share of the global mean; x replicas gives the replica's own
    # mean, which is what Keras feeds its own loss tracker (keras.src.losses.loss does the
    # same; it is not public API).
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * float(replicas) if replicas > 1 else value


class YoloTrainer(keras.Model):
    """Training wrapper: ``YoloTrainer(body, anchors, num_classes, input_hw=None, **loss_options)``.

    ``call`` runs the body; ``compute_loss`` applies :class:`YoloLoss` to the dict targets
    plus the body's regularisation losses and feeds the Mean trackers ``box_loss``,
    ``obj_loss`` and ``cls_loss``, which ``fit``/``evaluate`` report beside ``loss``.
    ``compile(optimizer)`` takes no loss. ``save(path.keras)`` writes the BODY only (what
    ModelCheckpoint(save_weights_only=False) then stores), so checkpoints load without this
    class; ``save_weights``/``load_weights`` keep Keras's behaviour (trainer + optimizer
    state, what BackupAndRestore needs).
    """

    def __init__(self, body: keras.Model, anchors, num_classes: int, input_hw=None, **loss_options):
        super().__init__(name=f"{body.name}_trainer")
        self.body = body
        if input_hw is None:
            input_hw = body.input_shape[1:3]
            if None in tuple(input_hw):
                raise ValueError("YoloTrainer: the body has no static input size; pass input_hw")
        self.yolo_loss = YoloLoss(anchors, num_classes, input_hw, **loss_options)
        self.box_tracker = keras.metrics.Mean(name="box_loss")
        self.obj_tracker = keras.metrics.Mean(name="obj_loss")
        self.cls_tracker = keras.metrics.Mean(name="cls_loss")

    def call(self, inputs, training=False):
        return self.body(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, dict):
            raise TypeError("YoloTrainer expects targets as a dict with y32, y16, y8, gt_boxes; "
                            f"got {type(y).__name__}")
        terms = self.yolo_loss(y, y_pred)
        total = terms["total"]
        for reg in self.losses:  # weight decay of the body; scaled per replica by Keras
            total = total + self._aggregate_additional_loss(reg)
        batch = ops.shape(y_pred[0])[0]
        for tracker, key in ((self.box_tracker, "box"), (self.obj_tracker, "obj"),
                             (self.cls_tracker, "cls")):
            tracker.update_state(_unscale_for_distribution(terms[key]), sample_weight=batch)
        return total

    def save(self, filepath, *args, **kwargs):
        """Save the detector (the body), not the wrapper: the file loads without this class."""
        return self.body.save(filepath, *args, **kwargs)


def init_head_biases(body: keras.Model, num_classes: int, input_hw=None, anchors=None,
                     objects_per_image: float = 8.0) -> None:
    """YOLOv5 prior for the output biases (Redmon/Jocher; Lin et al. 2017 sec. 4.1 "prior").

    For each output (stride s, grid gh x gw), the conv that produces it gets objectness bias
    log(objects_per_image / (gh * gw)) (about 8 objects per image spread over the cells)
    and class bias log(0.6 / (C - 0.99)); box biases are set to 0. ``input_hw`` defaults to
    the body's input size; ``anchors`` (the 9 pairs) only fixes anchors per scale (default
    3). Works in place; raises if an output is not produced by a Conv2D with a bias.
    """
    c = int(num_classes)
    anchors_per_scale = 3 if anchors is None else len(anchors) // 3
    if input_hw is None:
        input_hw = body.input_shape[1:3]
    h, w = int(input_hw[0]), int(input_hw[1])
    for out, stride in zip(body.outputs, STRIDES):
        layer = out._keras_history[0]
        if not isinstance(layer, keras.layers.Conv2D) or not layer.use_bias:
            raise ValueError(f"init_head_biases: output {out.name!r} is not made by a Conv2D "
                             f"with a bias (got {type(layer).__name__} {layer.name!r})")
        channels = int(layer.bias.shape[0])
        if channels != anchors_per_scale * (5 + c):
            raise ValueError(f"init_head_biases: {layer.name} has {channels} channels, expected "
                             f"{anchors_per_scale} x (5 + {c})")
        bias = np.zeros((anchors_per_scale, 5 + c), np.float32)
        bias[:, 4] = math.log(objects_per_image / ((h / stride) * (w / stride)))
        bias[:, 5:] = math.log(0.6 / (c - 0.99))
        layer.bias.assign(bias.reshape(-1))
