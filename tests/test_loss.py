"""Tests for nets/loss.py (YOLOv4 loss, YoloTrainer, head bias prior) and the graph box math
in utils/boxes.py (bbox_ciou, bbox_iou_pairwise)."""
import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets.loss import YoloLoss, YoloTrainer, init_head_biases
from utils.boxes import bbox_ciou, bbox_iou_pairwise, box_iou, cxcywh_to_xyxy

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANCHORS = np.array((ROOT / "model_data" / "yolo_anchors.txt").read_text().replace(",", " ").split(),
                   np.float32).reshape(9, 2)
MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
STRIDES = (32, 16, 8)
KEYS = ("y32", "y16", "y8")
BIG = 20.0  # |logit| of a "certain" prediction: softplus(-20) ~ 2e-9


# ----------------------------------------------------------------------------- references
def ciou_np(b1, b2):
    """CIoU in float64 NumPy straight from Zheng et al. 2020 (cxcywh)."""
    b1, b2 = np.asarray(b1, np.float64), np.asarray(b2, np.float64)
    lo1, hi1 = b1[..., :2] - b1[..., 2:] / 2, b1[..., :2] + b1[..., 2:] / 2
    lo2, hi2 = b2[..., :2] - b2[..., 2:] / 2, b2[..., :2] + b2[..., 2:] / 2
    inter = np.prod(np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0, None), -1)
    union = np.prod(b1[..., 2:], -1) + np.prod(b2[..., 2:], -1) - inter
    iou = inter / union
    c2 = np.sum((np.maximum(hi1, hi2) - np.minimum(lo1, lo2)) ** 2, -1)
    rho2 = np.sum((b1[..., :2] - b2[..., :2]) ** 2, -1)
    v = _v(b1, b2)
    alpha = v / (1 - iou + v)
    return iou - rho2 / c2 - alpha * v, alpha


def _v(b1, b2):
    b1, b2 = np.asarray(b1, np.float64), np.asarray(b2, np.float64)
    return 4 / math.pi ** 2 * (np.arctan(b2[..., 2] / b2[..., 3]) - np.arctan(b1[..., 2] / b1[..., 3])) ** 2


def random_boxes(rng, n):
    return np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.5, (n, 2))], 1).astype(np.float32)


def logit(p):
    return np.log(p / (1 - p))


def encode_box(box, gx, gy, grid_hw, anchor_wh, input_hw):
    """Inverse of the convention's decode: logits (tx, ty, tw, th) that decode exactly to box."""
    gh, gw = grid_hw
    sx = (box[0] * gw - gx + 0.5) / 2
    sy = (box[1] * gh - gy + 0.5) / 2
    sw = np.sqrt(box[2] * input_hw[1] / anchor_wh[0]) / 2
    sh = np.sqrt(box[3] * input_hw[0] / anchor_wh[1]) / 2
    return logit(np.array([sx, sy, sw, sh], np.float64))


def make_case(input_hw, num_classes, objects, batch=1, neg_logit=-BIG):
    """Targets and 'perfect' raw outputs for objects = [(image, scale, anchor_slot, box, cls)].

    The box centre decides the cell. Negatives get obj logit ``neg_logit`` and box logits 0.
    Returns (y_true dict, list of raw arrays (B, gh, gw, 3*(5+C)), list of positives).
    """
    c = num_classes
    h, w = input_hw
    y = {k: np.zeros((batch, h // s, w // s, 3, 5 + c), np.float32) for k, s in zip(KEYS, STRIDES)}
    raw = [np.zeros((batch, h // s, w // s, 3, 5 + c), np.float32) for s in STRIDES]
    for r in raw:
        r[..., 4] = neg_logit
        r[..., 5:] = -BIG
    gt = np.zeros((batch, 100, 4), np.float32)
    count = [0] * batch
    pos = []
    for img, l, a, box, cls in objects:
        s = STRIDES[l]
        gh, gw = h // s, w // s
        gx, gy = int(box[0] * gw), int(box[1] * gh)
        y[KEYS[l]][img, gy, gx, a, :4] = box
        y[KEYS[l]][img, gy, gx, a, 4] = 1
        y[KEYS[l]][img, gy, gx, a, 5 + cls] = 1
        raw[l][img, gy, gx, a, :4] = encode_box(box, gx, gy, (gh, gw), ANCHORS[MASKS[l][a]], input_hw)
        raw[l][img, gy, gx, a, 4] = BIG
        raw[l][img, gy, gx, a, 5 + cls] = BIG
        gt[img, count[img]] = box
        count[img] += 1
        pos.append((img, l, gy, gx, a))
    y["gt_boxes"] = gt
    raw = [r.reshape(r.shape[0], r.shape[1], r.shape[2], -1) for r in raw]
    return y, raw, pos


def as_tf(y, raw):
    return ({k: tf.constant(v) for k, v in y.items()}, [tf.constant(r) for r in raw])


def value(terms):
    return {k: float(v) for k, v in terms.items()}


# ----------------------------------------------------------------------------- box math
def test_ciou_of_identical_boxes_is_one():
    b = tf.constant(random_boxes(np.random.default_rng(0), 50))
    np.testing.assert_allclose(bbox_ciou(b, b).numpy(), 1.0, atol=1e-6)


def test_ciou_matches_numpy_reference_and_keras():
    rng = np.random.default_rng(1)
    b1, b2 = random_boxes(rng, 500), random_boxes(rng, 500)
    b2[:100] = b1[:100] + rng.normal(0, 0.02, (100, 4)).astype(np.float32)  # overlapping pairs too
    b2[:100, 2:] = np.abs(b2[:100, 2:]) + 0.01
    got = bbox_ciou(tf.constant(b1), tf.constant(b2)).numpy()
    ref, _ = ciou_np(b1, b2)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    k = keras.utils.bounding_boxes.compute_ciou(cxcywh_to_xyxy(b1), cxcywh_to_xyxy(b2), "xyxy")
    np.testing.assert_allclose(got, np.asarray(k), atol=1e-4)  # Keras adds 1e-7 to h and union
    assert (got[:100] > got[100:].mean()).mean() > 0.9  # overlapping pairs score higher


def test_ciou_gradient_treats_alpha_as_constant():
    rng = np.random.default_rng(2)
    b1, b2 = random_boxes(rng, 20), random_boxes(rng, 20)
    b2[:, :2] = b1[:, :2] + 0.05  # overlapping, so v and IoU both matter
    x = tf.Variable(b1)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(bbox_ciou(x, tf.constant(b2)))
    grad = tape.gradient(total, x).numpy()
    _, alpha0 = ciou_np(b1, b2)

    def frozen(b):  # CIoU with alpha held at its value at b1: IoU - rho^2/c^2 - alpha0 * v
        ciou, alpha = ciou_np(b, b2)
        return ciou + alpha * _v(b, b2) - alpha0 * _v(b, b2)

    def numeric_grad(f):
        num, h = np.zeros((20, 4)), 1e-6
        for j in range(4):
            d = np.zeros((20, 4))
            d[:, j] = h
            num[:, j] = (f(b1 + d) - f(b1 - d)) / (2 * h)
        return num

    np.testing.assert_allclose(grad, numeric_grad(frozen), atol=2e-3, rtol=2e-3)
    full = numeric_grad(lambda b: ciou_np(b, b2)[0])  # alpha differentiated: not what we want
    assert np.abs(full - grad).max() > 1e-2


def test_pairwise_iou_matches_numpy_and_padding_is_zero():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    b[4] = 0  # padding row
    got = bbox_iou_pairwise(tf.constant(a[None]), tf.constant(b[None])).numpy()[0]
    np.testing.assert_allclose(got, box_iou(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)), atol=1e-6)
    assert np.all(got[:, 4] == 0) and np.all(np.isfinite(got))


# ----------------------------------------------------------------------------- loss values
HW, C = (128, 96), 3  # non-square on purpose: grids 4x3, 8x6, 16x12
OBJECTS = [(0, 0, 2, [0.5, 0.45, 0.6, 0.7], 1), (0, 1, 0, [0.3, 0.3, 0.2, 0.25], 0),
           (0, 2, 1, [0.71, 0.2, 0.12, 0.06], 2), (1, 2, 0, [0.1, 0.85, 0.05, 0.08], 2)]


def test_perfect_prediction_is_near_zero_and_beats_shifted_ones():
    y, raw, pos = make_case(HW, C, OBJECTS, batch=2)
    loss = YoloLoss(ANCHORS, C, HW)
    perfect = value(loss(*as_tf(y, raw)))
    assert perfect["total"] < 1e-5, perfect
    for what, channel, delta in (("box", 0, 0.7), ("box", 3, -0.7), ("obj", 4, -BIG), ("cls", 5, BIG)):
        moved = [r.copy() for r in raw]
        img, l, gy, gx, a = pos[0]
        moved[l][img, gy, gx, a * (5 + C) + channel] += delta
        worse = value(loss(*as_tf(y, moved)))
        assert worse[what] > 100 * perfect[what] + 1e-6, (what, worse, perfect)
        assert worse["total"] > perfect["total"]


def test_empty_image_obj_term_is_hand_computed():
    y, raw, _ = make_case(HW, C, [], batch=2, neg_logit=0.0)
    loss = YoloLoss(ANCHORS, C, HW)
    got = value(loss(*as_tf(y, raw)))
    # every cell: BCE(0, logit 0) = ln 2, mean over cells per scale, weighted by balance
    expected_obj = loss.obj_weight * math.log(2) * sum(loss.balance)
    assert got["box"] == 0 and got["cls"] == 0
    assert got["obj"] == pytest.approx(expected_obj, rel=1e-5)
    assert loss.obj_weight == pytest.approx(HW[0] * HW[1] / 640 ** 2)  # YOLOv5 scaling
    focal = value(YoloLoss(ANCHORS, C, HW, focal_gamma=2.0, focal_alpha=0.25)(*as_tf(y, raw)))
    assert focal["obj"] == pytest.approx(expected_obj * 0.5 ** 2 * 0.75, rel=1e-5)


def test_negatives_above_ignore_thresh_do_not_count():
    # one object at stride 8; a neighbouring anchor slot of the same cell predicts the same
    # box confidently (obj logit +BIG) although it is a negative: ignored at thresh 0.5.
    box = [0.5, 0.5, 0.1, 0.12]
    y, raw, pos = make_case(HW, C, [(0, 2, 1, box, 0)])
    _, l, gy, gx, _ = pos[0]
    gh, gw = HW[0] // 8, HW[1] // 8
    slot = 2 * (5 + C)
    raw[l][0, gy, gx, slot:slot + 4] = encode_box(box, gx, gy, (gh, gw), ANCHORS[MASKS[l][2]], HW)
    raw[l][0, gy, gx, slot + 4] = BIG
    base = YoloLoss(ANCHORS, C, HW, ignore_thresh=0.5)
    never = YoloLoss(ANCHORS, C, HW, ignore_thresh=1.0)
    ignored = value(base(*as_tf(y, raw)))
    counted = value(never(*as_tf(y, raw)))
    assert ignored["obj"] < 1e-6
    bce = BIG + math.log1p(math.exp(-BIG))  # BCE(target 0, logit BIG)
    expected = never.obj_weight * never.balance[l] * bce / (gh * gw * 3)
    assert counted["obj"] == pytest.approx(expected, rel=1e-4)
    # a confident negative far from every box is never ignored
    far = [r.copy() for r in raw]
    far[0][0, 0, 0, 4] = BIG
    assert value(base(*as_tf(y, far)))["obj"] > 1e-3


def test_label_smoothing_targets_and_cls_term():
    eps = 0.1
    loss = YoloLoss(ANCHORS, C, HW, label_smoothing=eps)
    onehot = np.eye(C, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loss.smooth_labels(onehot)),
                               onehot * (1 - eps) + eps / 2, atol=1e-7)
    assert np.asarray(loss.smooth_labels(onehot)).max() == pytest.approx(0.95)
    y, raw, _ = make_case(HW, C, OBJECTS[:1])
    got = value(loss(*as_tf(y, raw)))
    # the one positive: true class logit +BIG (target 0.95), others -BIG (target 0.05)
    sp = lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0)  # softplus
    bce_true = sp(BIG) - 0.95 * BIG
    bce_other = sp(-BIG) - 0.05 * -BIG
    expected = loss.cls_weight * (bce_true + (C - 1) * bce_other) / C
    assert got["cls"] == pytest.approx(expected, rel=1e-5)
    assert value(YoloLoss(ANCHORS, C, HW)(*as_tf(y, raw)))["cls"] < 1e-6


def test_iou_aware_objectness_target():
    y, raw, pos = make_case(HW, C, OBJECTS[:1])
    img, l, gy, gx, a = pos[0]
    raw[l][img, gy, gx, a * (5 + C) + 0] += 1.0  # worse box: CIoU < 1
    plain = value(YoloLoss(ANCHORS, C, HW, obj_target="one")(*as_tf(y, raw)))
    aware = value(YoloLoss(ANCHORS, C, HW)(*as_tf(y, raw)))  # "iou" is the default
    assert aware["obj"] > plain["obj"] + 1e-3  # target < 1 against a +BIG logit


@pytest.mark.parametrize("options", [{}, {"obj_target": "iou", "focal_gamma": 1.5, "label_smoothing": 0.1,
                                          "box_area_weight": True}])
def test_gradients_finite_for_empty_crowded_and_extreme_logits(options):
    rng = np.random.default_rng(4)
    loss = YoloLoss(ANCHORS, C, HW, **options)
    objects = [(0, int(rng.integers(3)), int(rng.integers(3)),
                list(np.r_[rng.uniform(0.05, 0.95, 2), rng.uniform(0.02, 0.5, 2)]), int(rng.integers(C)))
               for _ in range(60)]
    empty_y, _, _ = make_case(HW, C, [], batch=1)
    crowded_y, _, _ = make_case(HW, C, objects, batch=1)
    y = {k: np.concatenate([empty_y[k], crowded_y[k]]) for k in empty_y}
    for raw in ([rng.choice([-50.0, 50.0], (2, HW[0] // s, HW[1] // s, 3 * (5 + C))).astype(np.float32)
                 for s in STRIDES],
                [rng.normal(0, 3, (2, HW[0] // s, HW[1] // s, 3 * (5 + C))).astype(np.float32)
                 for s in STRIDES]):
        yt, raws = as_tf(y, raw)
        variables = [tf.Variable(r) for r in raws]
        with tf.GradientTape() as tape:
            terms = loss(yt, variables)
        grads = tape.gradient(terms["total"], variables)
        assert all(np.isfinite(float(v)) for v in terms.values())
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
        assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_bad_targets_are_reported():
    y, raw, _ = make_case(HW, C, [])
    del y["gt_boxes"]
    with pytest.raises(KeyError, match="gt_boxes"):
        YoloLoss(ANCHORS, C, HW)(*as_tf(y, raw))
    with pytest.raises(ValueError, match="9"):
        YoloLoss(ANCHORS[:6], C, HW)
    with pytest.raises(ValueError, match="obj_target"):
        YoloLoss(ANCHORS, C, HW, obj_target="soft")


# ----------------------------------------------------------------------------- Keras training
def tiny_body(input_hw=(64, 64), num_classes=C, weight_decay=1e-4):
    """A 3-output functional model with the body's output contract (no BatchNorm)."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inp = keras.Input((*input_hw, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp)
    feats = []
    for i, s in enumerate((2, 2, 2, 2, 2)):
        x = keras.layers.Conv2D(8, 3, strides=s, padding="same", activation="relu",
                                kernel_regularizer=reg, name=f"stem{i}")(x)
        feats.append(x)
    outs = [keras.layers.Conv2D(3 * (5 + num_classes), 1, name=f"head_{n}_out")(f)
            for n, f in zip(("p5", "p4", "p3"), (feats[4], feats[3], feats[2]))]
    return keras.Model(inp, outs, name="tiny")


def tiny_data(n=4, input_hw=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    objects = [(i, int(rng.integers(3)), int(rng.integers(3)),
                list(np.r_[rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.4, 2)]), int(rng.integers(C)))
               for i in range(n) for _ in range(2)]
    y, _, _ = make_case(input_hw, C, objects, batch=n)
    x = rng.uniform(0, 255, (n, *input_hw, 3)).astype(np.float32)
    return x, y


def reference_terms(body, x, y):
    """YoloLoss terms (eager, single device) and the weight decay of ``body`` on one batch."""
    yt = {k: tf.constant(v) for k, v in y.items()}
    terms = value(YoloLoss(ANCHORS, C, body.input_shape[1:3])(yt, body(x)))
    return terms, float(sum(body.losses))


@pytest.mark.slow
def test_trainer_fit_and_validation_report_the_loss_terms():
    keras.utils.set_random_seed(0)
    body = tiny_body()
    trainer = YoloTrainer(body, ANCHORS, C)
    # lr 0: the weights stay put, so the logged means can be checked against eager values
    trainer.compile(optimizer=keras.optimizers.Adam(0.0))
    x, y = tiny_data(n=4)
    xv, yv = tiny_data(n=2, seed=5)
    refs = [reference_terms(body, x[i:i + 2], {k: v[i:i + 2] for k, v in y.items()}) for i in (0, 2)]
    val_ref, reg = reference_terms(body, xv, yv)
    assert reg > 0
    hist = trainer.fit(x, y, batch_size=2, epochs=1, shuffle=False, validation_data=(xv, yv),
                       verbose=0).history
    for key in ("box", "obj", "cls"):
        assert hist[f"{key}_loss"][0] == pytest.approx(np.mean([r[0][key] for r in refs]), rel=1e-4)
        assert hist[f"val_{key}_loss"][0] == pytest.approx(val_ref[key], rel=1e-4)
        assert val_ref[key] > 0
    # loss = box + obj + cls + weight decay of the body
    assert hist["loss"][0] == pytest.approx(np.mean([r[0]["total"] for r in refs]) + reg, rel=1e-4)
    assert hist["val_loss"][0] == pytest.approx(val_ref["total"] + reg, rel=1e-4)
    # and with a learning rate (a variable: no retrace) the detection terms go down
    trainer.optimizer.learning_rate.assign(1e-2)
    before = reference_terms(body, x, y)[0]
    tiled = {k: np.tile(v, (10,) + (1,) * (v.ndim - 1)) for k, v in y.items()}
    trainer.fit(np.tile(x, (10, 1, 1, 1)), tiled, batch_size=2, epochs=1, verbose=0)  # 20 steps
    after = reference_terms(body, x, y)[0]
    for key, factor in (("box", 0.99), ("obj", 0.5), ("cls", 0.5)):  # box: random pixels, slow
        assert after[key] < factor * before[key], (key, before, after)


@pytest.mark.slow
def test_loss_and_gradients_compile_with_xla():
    """Keras turns XLA on by default on a GPU (jit_compile="auto"): the loss must compile."""
    x, y = tiny_data(n=2)
    rng = np.random.default_rng(6)
    raws = [tf.Variable(rng.normal(0, 2, (2, 64 // s, 64 // s, 3 * (5 + C))).astype(np.float32))
            for s in STRIDES]
    yt = {k: tf.constant(v) for k, v in y.items()}
    loss = YoloLoss(ANCHORS, C, (64, 64))

    def step():
        with tf.GradientTape() as tape:
            total = loss(yt, raws)["total"]
        return total, tape.gradient(total, raws)

    xla_total, xla_grads = tf.function(step, jit_compile=True)()
    total, grads = step()
    assert float(xla_total) == pytest.approx(float(total), rel=1e-5)
    for a, b in zip(xla_grads, grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7)


def test_trainer_save_writes_a_loadable_body(tmp_path):
    body = tiny_body()
    trainer = YoloTrainer(body, ANCHORS, C)
    path = tmp_path / "det.keras"
    trainer.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.name == "tiny" and len(loaded.outputs) == 3
    x, _ = tiny_data(n=1)
    for a, b in zip(loaded(x), body(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_trainer_rejects_non_dict_targets():
    trainer = YoloTrainer(tiny_body(), ANCHORS, C)
    trainer.compile(optimizer="adam")
    x, _ = tiny_data(n=2)
    with pytest.raises(TypeError, match="dict"):
        trainer.fit(x, np.zeros((2, 1)), epochs=1, verbose=0)


_MIRRORED_SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from tests.test_loss import ANCHORS, C, YoloLoss, tiny_body, tiny_data, value
from nets.loss import YoloTrainer

x, y = tiny_data(n=4, seed=1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    body = tiny_body()
    trainer = YoloTrainer(body, ANCHORS, C)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
# single-device reference, eager: one SGD step on the whole batch
w0 = [w.numpy() for w in body.trainable_weights]
with tf.GradientTape() as tape:
    terms = YoloLoss(ANCHORS, C, (64, 64))({k: tf.constant(v) for k, v in y.items()}, body(x))
    total = terms["total"] + tf.add_n(body.losses)
grads = tape.gradient(total, body.trainable_weights)
expected = [w - 0.1 * g.numpy() for w, g in zip(w0, grads)]
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # global batch 4 = 2 per replica
hist = trainer.fit(ds, epochs=1, verbose=0).history
diff = max(float(np.abs(w.numpy() - e).max()) for w, e in zip(body.trainable_weights, expected))
step = max(float(np.abs(e - w).max()) for e, w in zip(expected, w0))
ref = {**value(terms), "loss": float(total)}
print(json.dumps({"diff": diff, "step": step, "hist": hist, "ref": ref}))
"""


@pytest.mark.slow
def test_mirrored_strategy_gradients_equal_single_device():
    """One SGD step of YoloTrainer.fit on 2 CPU replicas equals one eager single-device step."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT, str(ROOT)], capture_output=True,
                         text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["step"] > 1e-4 and res["diff"] < 1e-6, res
    for key in ("box", "obj", "cls"):
        assert res["hist"][f"{key}_loss"][0] == pytest.approx(res["ref"][key], rel=1e-4), res
    assert res["hist"]["loss"][0] == pytest.approx(res["ref"]["loss"], rel=1e-4), res


# ----------------------------------------------------------------------------- bias prior
def test_init_head_biases_sets_the_yolov5_prior():
    body = tiny_body(input_hw=(64, 96))
    init_head_biases(body, C, anchors=ANCHORS)
    for name, s in (("head_p5_out", 32), ("head_p4_out", 16), ("head_p3_out", 8)):
        bias = body.get_layer(name).bias.numpy().reshape(3, 5 + C)
        np.testing.assert_allclose(bias[:, :4], 0)
        np.testing.assert_allclose(bias[:, 4], math.log(8 / ((64 / s) * (96 / s))), rtol=1e-6)
        np.testing.assert_allclose(bias[:, 5:], math.log(0.6 / (C - 0.99)), rtol=1e-6)
    # outputs are ordered stride 32, 16, 8: with zero features the stride-8 output is the bias
    out = body(np.zeros((1, 64, 96, 3), np.float32))[2].numpy().reshape(-1, 5 + C)
    assert out[:, 4].mean() == pytest.approx(math.log(8 / (8 * 12)), abs=1e-6)


def test_init_head_biases_rejects_outputs_without_conv():
    inp = keras.Input((64, 64, 3), name="image")
    x = keras.layers.Conv2D(24, 1, name="c")(inp)
    outs = [keras.layers.Activation("linear", name=f"a{i}")(x) for i in range(3)]
    with pytest.raises(ValueError, match="Conv2D"):
        init_head_biases(keras.Model(inp, outs), C)


@pytest.mark.slow
def test_init_head_biases_on_the_real_body():
    from nets.yolo import OUTPUT_NAMES, yolo_body

    body = yolo_body((128, 128), C, backbone="mobilenetv1", alpha=0.25)
    init_head_biases(body, C)
    for name, s in zip(OUTPUT_NAMES, STRIDES):
        bias = body.get_layer(name).bias.numpy().reshape(3, 5 + C)
        np.testing.assert_allclose(bias[:, 4], math.log(8 / (128 / s) ** 2), rtol=1e-6)
        np.testing.assert_allclose(bias[:, 5:], math.log(0.6 / (C - 0.99)), rtol=1e-6)
