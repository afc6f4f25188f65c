"""nets/fold.py: BatchNormalization (and exact ZeroPadding2D) folded into the convolutions.

Every check compares the folded model with ``model(x, training=False)`` on random inputs after
giving each BN random moving statistics, gamma and beta (with the initial (0, 1, 1, 0)
folding is the identity and any mistake would go unseen).
"""
import numpy as np
import pytest

import keras
from keras import layers

from nets.fold import FoldPlan, fold_batchnorm, plan_folds, same_padding

ATOL = 1e-4


def randomise_bn(model, seed=0):
    """Random non-trivial BN statistics and affine parameters (recursing into nested models)."""
    rng = np.random.default_rng(seed)
    stack = [model]
    while stack:
        for layer in stack.pop().layers:
            if isinstance(layer, keras.Model):
                stack.append(layer)
            elif isinstance(layer, layers.BatchNormalization):
                c = layer.moving_mean.shape[0]
                layer.moving_mean.assign(rng.normal(0, 0.5, c))
                layer.moving_variance.assign(rng.uniform(0.2, 2.0, c))
                if layer.scale:
                    layer.gamma.assign(rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c))
                if layer.center:
                    layer.beta.assign(rng.normal(0, 0.3, c))


def max_diff(a, b):
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(a) == len(b)
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(a, b))


def bn_layers(model):
    return [l.name for l in model.layers if isinstance(l, layers.BatchNormalization)]


def assert_same_outputs(model, folded, x):
    want = model(x, training=False)
    got = folded(x, training=False)
    assert max_diff(want, got) < ATOL
    # the check is not trivial: the BN really changes the outputs
    assert max(float(np.abs(np.asarray(t)).max()) for t in keras.tree.flatten(want)) > 1e-2


def test_same_padding_matches_tensorflow():
    # TF "SAME": the odd extra pixel goes bottom/right
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(8, 7, 2) == (2, 3)
    assert same_padding(8, 1, 2) == (0, 0)
    assert same_padding(8, 3, 1, dilation=2) == (2, 2)
    import tensorflow as tf
    x = tf.random.normal((1, 8, 9, 2))
    for k, s in ((3, 2), (5, 2), (3, 1), (4, 3), (7, 2)):
        w = tf.random.normal((k, k, 2, 3))
        pads = [same_padding(8, k, s), same_padding(9, k, s)]
        ref = tf.nn.conv2d(x, w, s, "SAME")
        explicit = tf.nn.conv2d(tf.pad(x, [[0, 0], pads[0], pads[1], [0, 0]]), w, s, "VALID")
        np.testing.assert_allclose(ref.numpy(), explicit.numpy(), atol=1e-5)


def _handmade():
    """Two inputs, dict outputs, every conv kind, and the cases that must not fold."""
    a = keras.Input((16, 16, 4), name="a")
    b = keras.Input((16, 16, 4), name="b")
    x = layers.Concatenate(name="cat_in")([a, b])                                  # 8 channels
    g = layers.Conv2D(8, 3, padding="same", groups=4, use_bias=True, name="gconv")(x)
    g = layers.BatchNormalization(center=False, name="gconv_bn")(g)
    g = layers.Activation("relu6", name="gconv_relu6")(g)
    d = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(g)
    d = layers.BatchNormalization(scale=False, name="dw_bn")(d)                   # 16 channels
    s = layers.SeparableConv2D(8, 3, padding="same", name="sep")(d)
    s = layers.BatchNormalization(center=False, scale=False, epsilon=1e-2, name="sep_bn")(s)
    t = layers.Conv2DTranspose(6, 3, strides=2, padding="same", use_bias=False, name="tconv")(s)
    t = layers.BatchNormalization(name="tconv_bn")(t)
    t = layers.Activation("relu", name="tconv_relu")(t)
    # exact: "same" pads (0, 1) for a 3x3/2 conv on 16 -> folded into padding="same"
    p = layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad_exact")(s)
    p = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False, name="pdw")(p)
    p = layers.BatchNormalization(name="pdw_bn")(p)
    # not exact: symmetric (1, 1) before a 3x3/2 conv on an even size -> the pad stays
    q = layers.ZeroPadding2D(((1, 1), (1, 1)), name="pad_sym")(s)
    q = layers.Conv2D(8, 3, strides=2, padding="valid", use_bias=False, name="qconv")(q)
    q = layers.BatchNormalization(name="qconv_bn")(q)
    pq = layers.Add(name="add")([p, q])
    # kept: conv with an activation before the BN
    r = layers.Conv2D(8, 1, activation="relu", name="rconv")(pq)
    r = layers.BatchNormalization(name="rconv_bn")(r)
    # kept: conv output used by the BN and by something else
    u = layers.Conv2D(8, 1, use_bias=False, name="uconv")(r)
    ub = layers.BatchNormalization(name="uconv_bn")(u)
    u = layers.Add(name="uadd")([u, ub])
    # kept: BN after a concatenation
    c = layers.Concatenate(name="cat")([u, pq])
    c = layers.BatchNormalization(name="cat_bn")(c)
    # kept: BN output is a model output
    o = layers.Conv2D(5, 1, name="oconv")(c)
    o = layers.BatchNormalization(name="oconv_bn")(o)
    return keras.Model({"a": a, "b": b}, {"t": t, "o": o, "c": c}, name="handmade")


def test_handmade_graph_folds_exactly_what_it_should():
    model = _handmade()
    randomise_bn(model, 1)
    folded, plan = fold_batchnorm(model, return_plan=True)
    assert isinstance(plan, FoldPlan)
    assert sorted(plan.bn_into_conv) == sorted([
        ("gconv", "gconv_bn"), ("dw", "dw_bn"), ("sep", "sep_bn"), ("tconv", "tconv_bn"),
        ("pdw", "pdw_bn"), ("qconv", "qconv_bn")])
    assert plan.pad_into_conv == [("pad_exact", "pdw")]
    assert set(plan.kept) == {"rconv_bn", "uconv_bn", "cat_bn", "oconv_bn"}
    assert "activation" in plan.kept["rconv_bn"]
    assert "used elsewhere" in plan.kept["uconv_bn"]
    assert "Concatenate" in plan.kept["cat_bn"]
    assert "model output" in plan.kept["oconv_bn"]

    names = [l.name for l in model.layers]
    dropped = {bn for _, bn in plan.bn_into_conv} | {"pad_exact"}
    assert sorted(l.name for l in folded.layers) == sorted(n for n in names if n not in dropped)
    assert sorted(bn_layers(folded)) == sorted(plan.kept)
    assert folded.get_layer("gconv").groups == 4 and folded.get_layer("gconv").use_bias
    assert folded.get_layer("dw").use_bias and folded.get_layer("pdw").padding == "same"
    assert folded.get_layer("qconv").padding == "valid"
    assert [t.name for t in folded.inputs] == ["a", "b"]
    assert set(folded.output) == {"t", "o", "c"}

    rng = np.random.default_rng(0)
    x = {k: rng.normal(0, 1, (2, 16, 16, 4)).astype("float32") for k in ("a", "b")}
    assert_same_outputs(model, folded, x)
    # the fold copies: changing the original afterwards does not touch the folded model
    model.get_layer("gconv_bn").moving_mean.assign(np.full(8, 5.0))
    assert max_diff(folded(x), fold_batchnorm(model)(x)) > 1e-2
    # the original layers were not called again
    assert all(len(l._inbound_nodes) == 1 for l in model.layers)


def test_fold_padding_off_keeps_pads():
    model = _handmade()
    folded, plan = fold_batchnorm(model, fold_padding=False, return_plan=True)
    assert plan.pad_into_conv == [] and "pad_exact" in [l.name for l in folded.layers]


def test_shared_layers_are_kept_and_still_shared():
    inp = keras.Input((8, 8, 3), name="x")
    conv = layers.Conv2D(4, 3, padding="same", use_bias=False, name="shared_conv")
    bn = layers.BatchNormalization(name="shared_bn")
    y1 = bn(conv(inp))
    y2 = bn(conv(layers.Rescaling(2.0, name="double")(inp)))
    z = layers.Conv2D(4, 1, name="z")(inp)
    z = layers.BatchNormalization(name="z_bn")(z)
    z = layers.Activation("relu6", name="z_relu6")(z)
    model = keras.Model(inp, [layers.Add(name="sum")([y1, y2]), z])
    randomise_bn(model, 2)
    folded, plan = fold_batchnorm(model, return_plan=True)
    assert plan.bn_into_conv == [("z", "z_bn")]
    assert "more than once" in plan.kept["shared_bn"]
    assert len(folded.get_layer("shared_conv")._inbound_nodes) == 2
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


def test_nested_models_are_flattened():
    inner_in = keras.Input((8, 8, 4), name="inner_in")
    h = layers.Conv2D(6, 3, padding="same", use_bias=False, name="inner_conv")(inner_in)
    h = layers.BatchNormalization(name="inner_bn")(h)
    inner = keras.Model(inner_in, layers.ReLU(name="inner_relu")(h), name="inner")
    seq = keras.Sequential([keras.Input((8, 8, 6)), layers.DepthwiseConv2D(3, padding="same", name="seq_dw"),
                            layers.BatchNormalization(name="seq_bn")], name="seq")
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 1, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = seq(inner(x))
    out = layers.Conv2D(2, 1, name="head")(x)
    model = keras.Model(inp, out)
    randomise_bn(model, 3)
    folded = fold_batchnorm(model)
    assert bn_layers(folded) == []
    assert sorted(l.name for l in folded.layers) == sorted(
        ["image", "stem", "inner_conv", "inner_relu", "seq_dw", "head"])
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


def test_top_level_sequential():
    model = keras.Sequential([keras.Input((8, 8, 3), name="image"),
                              layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv"),
                              layers.BatchNormalization(name="bn"), layers.ReLU(name="relu")], name="seq")
    randomise_bn(model, 6)
    folded = fold_batchnorm(model)
    assert [l.name for l in folded.layers] == ["image", "conv", "relu"] and folded.name == "seq"
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


def test_subclassed_models_raise():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(2, 1)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(TypeError, match="subclassed"):
        fold_batchnorm(Sub())
    inp = keras.Input((4, 4, 3))
    with pytest.raises(TypeError, match="subclassed"):
        fold_batchnorm(keras.Model(inp, Sub()(inp)))


@keras.saving.register_keras_serializable(package="test_fold")
class PlainSubclassBN(layers.BatchNormalization):
    """A subclass that computes the standard BN: must be folded."""


@keras.saving.register_keras_serializable(package="test_fold")
class ScaledSubclassBN(layers.BatchNormalization):
    """A subclass with different inference math: must be left alone."""

    def call(self, inputs, training=None, mask=None):
        return 2.0 * super().call(inputs, training=training, mask=mask)


def test_batchnorm_subclasses():
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    x = PlainSubclassBN(name="c1_bn")(x)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c2")(x)
    x = ScaledSubclassBN(name="c2_bn")(x)
    model = keras.Model(inp, layers.Activation("relu", name="out")(x))
    randomise_bn(model, 4)
    folded, plan = fold_batchnorm(model, return_plan=True)
    assert plan.bn_into_conv == [("c1", "c1_bn")]
    assert "ScaledSubclassBN" in plan.kept["c2_bn"]
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


def test_fused_batchnorm_layers_fold():
    """The project's fused BatchNormalization (nets/layers.py) folds like Keras' BN."""
    from nets.layers import BatchNormalization as fused
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = fused(epsilon=1e-3, name="c1_bn")(x)
    x = layers.Activation("relu6", name="c1_relu6")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
    x = fused(center=False, name="dw_bn")(x)
    x = layers.Activation("relu6", name="dw_relu6")(x)
    model = keras.Model(inp, layers.Conv2D(4, 1, name="head")(x))
    randomise_bn(model, 5)
    folded, plan = fold_batchnorm(model, return_plan=True)
    assert plan.kept == {} and bn_layers(folded) == []
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


@pytest.mark.slow
def test_fused_batchnorm_yolo_body_folds():
    from nets.layers import BatchNormalization
    from nets.yolo import yolo_body
    keras.utils.set_random_seed(0)
    model = yolo_body((64, 64, 3), 2, backbone="mobilenetv2", alpha=0.5)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(l, BatchNormalization) for l in bns)  # the fused one, applications included
    randomise_bn(model, 5)
    folded, plan = fold_batchnorm(model, return_plan=True)
    assert plan.kept == {} and bn_layers(folded) == []
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


# ------------------------------------------------------------------------------ yolo bodies

# (backbone, alpha, input side, checked with a .keras round trip: mobilenetv2 for the
# keras.applications layers, shufflenetv2 for the project's custom ChannelSlice/ChannelShuffle)
FAST = [("mobilenetv2", 0.5, 128, True)]
SLOW = [
    ("mobilenetv1", 0.25, 128, False),
    ("mobilenetv3small", 0.75, 128, False),
    ("ghostnet", 0.5, 128, False),
    ("shufflenetv1", 0.5, 128, False),
    ("shufflenetv2", 0.5, 128, True),
    ("squeezenet", 0.5, 128, False),
    ("cspdarknet53", 0.5, 128, False),
    ("densenet121", 1.0, 64, False),
]
# BNs that cannot fold: DenseNet is pre-activation, so each dense layer's first BN normalises
# the concatenation of the previous ones (or a pool: the stem max-pool, the transitions' average
# pools), the transitions and the final "bn"
# too: there is no conv right before them.
NOT_FOLDABLE_FROM = {"densenet121": ("Concatenate", "MaxPooling2D", "AveragePooling2D")}


def _check_yolo(backbone, alpha, side, round_trip, tmp_path):
    from nets.yolo import yolo_body
    keras.utils.set_random_seed(0)
    model = yolo_body((side, side, 3), 3, backbone=backbone, alpha=alpha)
    randomise_bn(model, 7)
    folded, plan = fold_batchnorm(model, return_plan=True)

    kept_from = NOT_FOLDABLE_FROM.get(backbone)
    if kept_from is None:
        assert plan.kept == {} and bn_layers(folded) == []
    else:
        assert plan.kept and all(any(k in why for k in kept_from) for why in plan.kept.values()), plan.kept
        assert sorted(bn_layers(folded)) == sorted(plan.kept)
    assert len(plan.bn_into_conv) > 0
    assert len(folded.layers) == len(model.layers) - len(plan.bn_into_conv) - len(plan.pad_into_conv)
    if backbone.startswith("mobilenet"):
        assert len(plan.pad_into_conv) == 4  # the explicit pads before the stride-2 depthwise convs
    assert folded.output_names == model.output_names and folded.name == model.name
    assert [t.name for t in folded.inputs] == [t.name for t in model.inputs]
    kept_names = {l.name for l in folded.layers}
    assert kept_names <= {l.name for l in model.layers}

    x = np.random.default_rng(1).uniform(0, 255, (2, side, side, 3)).astype("float32")
    want = model(x, training=False)
    got = folded(x, training=False)
    assert max_diff(want, got) < ATOL

    if round_trip:
        path = tmp_path / f"{backbone}_folded.keras"
        folded.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        assert [l.name for l in reloaded.layers] == [l.name for l in folded.layers]
        assert max_diff(got, reloaded(x, training=False)) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("backbone,alpha,side,round_trip", FAST)
def test_yolo_body_folds(backbone, alpha, side, round_trip, tmp_path):
    _check_yolo(backbone, alpha, side, round_trip, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,alpha,side,round_trip", SLOW)
def test_yolo_body_folds_slow(backbone, alpha, side, round_trip, tmp_path):
    _check_yolo(backbone, alpha, side, round_trip, tmp_path)


def test_plan_folds_builds_nothing():
    model = _handmade()
    n = len(keras.tree.flatten([l._inbound_nodes for l in model.layers]))
    plan = plan_folds(model)
    assert len(plan.bn_into_conv) == 6
    assert len(keras.tree.flatten([l._inbound_nodes for l in model.layers])) == n
