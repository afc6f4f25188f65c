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
* The three scales are flattened into one (B, N, 5+C) tensor after decoding, so CIoU, the
  ignore IoU and the BCEs are built once (half the graph of a per-scale loop; faster
  tracing); per-cell weight vectors carry the per-scale normalisers and balance.
* Scale against weight decay: these terms are per-image means of order 0.1; an L2
  kernel regulariser of 5e-4 on a few million weights adds a few units (see YoloTrainer).
"""
from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from utils.boxes import bbox_ciou, bbox_iou_pairwise
from utils.decode import decode_head
from utils.targets import ANCHOR_MASKS, STRIDES, TARGET_KEYS

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
    ``label_smoothing`` eps (class targets y*(1-eps) + eps/2), ``obj_target`` "iou" (the default, IoU-aware as YOLOv5: positives target the detached CIoU
    clamped to >= 0) or "one" (positives target 1, YOLOv3/v4). With "one" a positive whose box
    has collapsed (sigmoid-saturated w or h gets no gradient back) keeps a high score; in the
    over-fitting test such a degenerate box ranked first and held mAP@0.5 at 0.83, against 1.0
    with "iou" (tests/test_learns.py),
    ``focal_gamma`` (0 = plain BCE; > 0 = focal loss on objectness, Lin et al. 2017) with
    ``focal_alpha`` (None = no alpha weighting), ``box_area_weight`` (the (2 - w*h) factor).
    """

    def __init__(self, anchors, num_classes: int, input_hw: Sequence[int], *,
                 balance: Sequence[float] = DEFAULT_BALANCE, box_weight: float = 0.05,
                 obj_weight: float | None = None, cls_weight: float | None = None,
                 ignore_thresh: float = 0.5, label_smoothing: float = 0.0, obj_target: str = "iou",
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
        raws = [ops.cast(r, "float32") for r in y_pred]
        yts = [ops.cast(y_true[k], "float32") for k in TARGET_KEYS]
        batch = ops.shape(raws[0])[0]
        n_pos_local = ops.stack([ops.sum(yt[..., 4]) for yt in yts])
        # one all-reduce for all counts: [batch, N_pos per scale]
        counts = _global_sum(ops.concatenate([ops.reshape(ops.cast(batch, "float32"), (1,)), n_pos_local]))
        global_b, n_pos = counts[0], ops.maximum(counts[1:], 1.0)

        # Decode each scale, then flatten the three scales to (B, N, .) so that every term is
        # computed once; per-cell weights carry the per-scale normalisers and balance.
        boxes, raw_flat, yt_flat, w_pos, w_obj = [], [], [], [], []
        for l, (raw, yt) in enumerate(zip(raws, yts)):
            anchors_wh = self.anchors[list(ANCHOR_MASKS[l])]
            pred_box, _, _ = decode_head(raw, anchors_wh, self.input_hw, c)
            boxes.append(ops.reshape(pred_box, (batch, -1, 4)))
            raw_flat.append(ops.reshape(raw, (batch, -1, 5 + c)))
            yt_flat.append(ops.reshape(yt, (batch, -1, 5 + c)))
            cells = ops.shape(raw_flat[-1])[1]  # gh * gw * 3
            w_pos.append(ops.full((cells,), 1.0) / n_pos[l])
            w_obj.append(ops.full((cells,), self.balance[l]) / (ops.cast(cells, "float32") * global_b))
        pred_box = ops.concatenate(boxes, axis=1)  # (B, N, 4)
        raw = ops.concatenate(raw_flat, axis=1)  # (B, N, 5 + C)
        yt = ops.concatenate(yt_flat, axis=1)
        w_pos, w_obj = ops.concatenate(w_pos), ops.concatenate(w_obj)  # (N,)
        pos = yt[..., 4] > 0.5  # (B, N)

        # box: CIoU on positives; elsewhere a harmless dummy box keeps values finite.
        dummy = ops.convert_to_tensor([0.5, 0.5, 0.25, 0.25], "float32")
        true_box = ops.where(pos[..., None], yt[..., 0:4], dummy)
        ciou = bbox_ciou(pred_box, true_box)
        box_term = 1.0 - ciou
        if self.box_area_weight:
            box_term = box_term * (2.0 - true_box[..., 2] * true_box[..., 3])
        box = ops.sum(ops.where(pos, box_term, 0.0) * w_pos)

        # objectness, with negatives that already overlap a true box (any scale) left out
        gt = ops.cast(y_true["gt_boxes"], "float32")
        iou = bbox_iou_pairwise(ops.stop_gradient(pred_box), gt)  # (B, N, M)
        iou = ops.where(((gt[..., 2] * gt[..., 3]) > 0)[:, None, :], iou, 0.0)
        ignore = ops.logical_and(ops.logical_not(pos), ops.max(iou, axis=-1) > self.ignore_thresh)
        if self.obj_target == "iou":
            pos_target = ops.stop_gradient(ops.maximum(ciou, 0.0))
        else:
            pos_target = ops.ones_like(ciou)
        obj_bce = self._obj_bce(ops.where(pos, pos_target, 0.0), raw[..., 4])
        obj = ops.sum(ops.where(ignore, 0.0, obj_bce) * w_obj)

        # classes on positives
        cls_bce = ops.binary_crossentropy(self.smooth_labels(yt[..., 5:]), raw[..., 5:], from_logits=True)
        cls = ops.sum(ops.where(pos[..., None], cls_bce, 0.0) * w_pos[:, None]) / c

        box, obj, cls = self.box_weight * box, self.obj_weight * obj, self.cls_weight * cls
        return {"total": box + obj + cls, "box": box, "obj": obj, "cls": cls}


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


# Keras does the same scaling for its compiled losses (keras.src.losses.loss
# scale/unscale_loss_for_distribution; not public API): each replica returns its share of
# the global mean, and its trackers get that share x replicas (the replica's own mean).
def _share_for_distribution(value):
    return value / float(_replicas()) if _replicas() > 1 else value


def _unscale_for_distribution(value):
    return value * float(_replicas()) if _replicas() > 1 else value


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
        if self.losses:  # weight decay of the body: the same on every replica, so a share
            reg = ops.sum(ops.stack([ops.sum(ops.cast(l, "float32")) for l in self.losses]))
            total = total + _share_for_distribution(reg)
        batch = ops.shape(y_pred[0])[0]
        for tracker, key in ((self.box_tracker, "box"), (self.obj_tracker, "obj"),
                             (self.cls_tracker, "cls")):
            tracker.update_state(_unscale_for_distribution(terms[key]), sample_weight=batch)
        return total

    # -- MultiWorkerMirroredStrategy: two Keras 3.15 (TF backend) steps fail under it as they are.
    # 1. fit() reduces the first distributed batch with strategy.reduce("MEAN", axis=None) only to
    #    learn its shapes for a symbolic build, and that reduce raises "Attempt to convert a value
    #    (PerReplica...)" with one replica per worker: the shapes are taken from this worker's
    #    first replica instead (the same shapes; nothing else differs from Keras' method).
    # 2. The step's logs are reduced with strategy.reduce("MEAN", v, axis=0), which fails on
    #    scalars ("Invalid reduction dimension 0"): the logs leave the step as 1-vectors, and
    #    the mean over axis 0 gives the scalar back.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if not _multi_worker(strategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        return _vector_logs(super().train_step(data), self.distribute_strategy)

    def test_step(self, data):
        return _vector_logs(super().test_step(data), self.distribute_strategy)

    def save(self, filepath, *args, **kwargs):
        """Save the detector (the body), not the wrapper: the file loads without this class."""
        return self.body.save(filepath, *args, **kwargs)


def _multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _vector_logs(logs, strategy):
    """Scalar logs as 1-vectors under MultiWorkerMirroredStrategy (see YoloTrainer)."""
    if not _multi_worker(strategy):
        return logs
    return {k: tf.reshape(v, (1,)) if len(getattr(v, "shape", (0,))) == 0 else v for k, v in logs.items()}


def init_head_biases(body: keras.Model, num_classes: int, input_hw=None, anchors=None,
                     objects_per_image: float = 8.0) -> None:
    """YOLOv5's prior for the output biases (ultralytics ``_initialize_biases``; the RetinaNet
    "prior" initialisation, Lin et al. 2017 sec. 3.3): training starts from a low objectness.

    For each output (stride s, grid gh x gw), the conv that produces it gets objectness bias
    log(objects_per_image / (gh * gw)) on every anchor slot (YOLOv5: log(8 / (640 / s)^2))
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
