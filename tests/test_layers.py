"""nets/layers.py: ChannelShuffle / ChannelSlice against NumPy, their configs, the
conv-BN block helpers and make_divisible."""
import keras
import numpy as np
import pytest

from nets import layers as nl
from nets.layers import BN_EPS, BN_MOMENTUM, apply_conv_bn, apply_dw_bn, apply_dwsep, make_divisible

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- custom layers

@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle_matches_numpy_and_round_trips(groups):
    x = RNG.normal(size=(2, 3, 4, 12)).astype("float32")
    layer = nl.ChannelShuffle(groups, name="shuf")
    ref = x.reshape(2, 3, 4, groups, 12 // groups).transpose(0, 1, 2, 4, 3).reshape(2, 3, 4, 12)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), ref)
    clone = nl.ChannelShuffle.from_config(layer.get_config())
    assert clone.groups == groups and clone.name == "shuf"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), ref)


def test_channel_shuffle_hand_case_and_inverse():
    # 6 channels in 2 groups (a0 a1 a2 | b0 b1 b2) -> a0 b0 a1 b1 a2 b2
    x = np.arange(6, dtype="float32").reshape(1, 1, 1, 6)
    out = keras.ops.convert_to_numpy(nl.ChannelShuffle(2)(x))
    assert out.ravel().tolist() == [0, 3, 1, 4, 2, 5]
    # shuffling with g and then with C/g groups puts every channel back
    y = RNG.normal(size=(1, 2, 2, 12)).astype("float32")
    back = nl.ChannelShuffle(4)(nl.ChannelShuffle(3)(y))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back), y)


def test_channel_shuffle_needs_divisible_channels():
    with pytest.raises(ValueError, match="shuf_bad: 10 channels do not split into 3 groups"):
        nl.ChannelShuffle(3, name="shuf_bad")(keras.Input((4, 4, 10)))


def test_channel_slice_value_and_config_round_trip():
    x = RNG.normal(size=(1, 2, 2, 10)).astype("float32")
    layer = nl.ChannelSlice(5, 10, name="half")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x[..., 5:10])
    clone = nl.ChannelSlice.from_config(layer.get_config())
    assert (clone.start, clone.stop, clone.name) == (5, 10, "half")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), x[..., 5:10])


def test_channel_slice_shape_and_bad_bounds():
    assert nl.ChannelSlice(2, 7)(keras.Input((3, 5, 9))).shape == (None, 3, 5, 5)
    for start, stop in [(3, 3), (5, 2), (-1, 4)]:
        with pytest.raises(ValueError, match=rf"0 <= start < stop, got {start}:{stop}"):
            nl.ChannelSlice(start, stop)


@pytest.mark.parametrize("layer", [nl.ChannelShuffle(4, name="s"), nl.ChannelSlice(1, 3, name="c")],
                         ids=["shuffle", "slice"])
def test_layers_serialize_under_the_package_name(layer):
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == f"{nl.PACKAGE}>{type(layer).__name__}"
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


# --------------------------------------------------------------------------- block helpers

def test_conv_bn_is_conv_then_bn_then_relu6_by_hand():
    inputs = keras.Input((3, 4, 2))
    model = keras.Model(inputs, apply_conv_bn(inputs, 3, 1, name="blk"))
    assert [layer.name for layer in model.layers[1:]] == ["blk_conv", "blk_bn", "blk_relu6"]
    conv, bn = model.get_layer("blk_conv"), model.get_layer("blk_bn")
    assert not conv.use_bias and bn.epsilon == BN_EPS and bn.momentum == BN_MOMENTUM
    kernel = np.array([[4.0, -1.0, 0.5], [2.0, 1.0, -3.0]], np.float32)
    conv.kernel.assign(kernel[None, None])
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(1, 3, 4, 2)
    # a fresh BN in inference: mean 0, variance 1, gamma 1, beta 0
    want = np.clip(x @ kernel / np.sqrt(1.0 + BN_EPS), 0.0, 6.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), want, rtol=1e-5, atol=1e-5)
    assert want.max() == 6.0 and want.min() == 0.0  # both ends of relu6 are exercised


@pytest.mark.parametrize("training", [False, True])
def test_zero_gamma_makes_the_block_output_zero(training):
    inputs = keras.Input((6, 6, 4))
    zero = keras.Model(inputs, apply_conv_bn(inputs, 8, 3, activation=None, name="z", zero_gamma=True))
    plain = keras.Model(inputs, apply_conv_bn(inputs, 8, 3, activation=None, name="p"))
    x = RNG.normal(size=(2, 6, 6, 4)).astype("float32")
    assert np.all(zero.get_layer("z_bn").gamma.numpy() == 0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(zero(x, training=training)), 0.0)
    assert np.abs(keras.ops.convert_to_numpy(plain(x, training=training))).max() > 0.1
    assert len(zero.layers) == 3  # activation=None: no activation layer


def test_dw_and_dwsep_names_shapes_and_weight_decay():
    inputs = keras.Input((8, 8, 5))
    y = apply_dwsep(inputs, 7, 3, strides=2, weight_decay=1e-4, name="sep")
    model = keras.Model(inputs, y)
    assert [layer.name for layer in model.layers[1:]] == [
        "sep_dwconv", "sep_dwbn", "sep_dwrelu6", "sep_pw_conv", "sep_pw_bn", "sep_pw_relu6"]
    assert tuple(y.shape) == (None, 4, 4, 7)
    assert model.get_layer("sep_dwconv").strides == (2, 2)
    assert len(model.losses) == 2  # one L2 term per kernel (depthwise, pointwise)
    expected = 1e-4 * sum(float(np.sum(np.square(k.numpy())))
                          for k in (model.get_layer("sep_dwconv").kernel, model.get_layer("sep_pw_conv").kernel))
    np.testing.assert_allclose(float(sum(float(v) for v in model.losses)), expected, rtol=1e-5)
    dw = apply_dw_bn(keras.Input((4, 4, 3)), activation="relu", name="d")
    assert dw._keras_history[0].name == "d_dwrelu" and dw.shape[-1] == 3
    no_decay = keras.Model(inputs, apply_conv_bn(inputs, 4, name="nd"))
    assert no_decay.losses == []


# --------------------------------------------------------------------------- make_divisible

@pytest.mark.parametrize("value,divisor,min_value,expected", [
    (16, 8, None, 16),      # already a multiple
    (20, 8, None, 24),      # halfway rounds up: int(20 + 4) // 8 * 8
    (35, 8, None, 32),      # below halfway rounds down (32 >= 0.9 * 35)
    (19.9, 8, None, 24),    # rounds down to 16, but 16 < 0.9 * 19.9: one more step
    (10, 8, None, 16),      # 8 would lose more than 10%: one more step
    (3, 8, None, 8),        # never below the divisor
    (4, 8, 16, 16),         # ... or below min_value
    (145.6, 4, None, 144),  # GhostNet 1.3x: 112 * 1.3
    (52, 4, None, 52),
    (11.2, 8, None, 16),    # MobileNetV2 0.35x stem: 32 * 0.35
])
def test_make_divisible_hand_cases(value, divisor, min_value, expected):
    assert make_divisible(value, divisor, min_value) == expected


def test_make_divisible_agrees_with_keras_mobilenet_rule():
    from keras.src.applications.mobilenet_v2 import _make_divisible as keras_rule
    for divisor in (4, 8):
        for value in np.arange(1.0, 200.0, 0.35):
            got = make_divisible(float(value), divisor)
            assert got == keras_rule(float(value), divisor), (value, divisor)
            assert got % divisor == 0 and got >= 0.9 * value
