"""GhostNet backbone (nets/backbones/ghostnet.py): the paper's Table 1, ghost modules, SE,
parameter count, and the backbone contract."""
import math
import re

import keras
import numpy as np
import pytest

from _helpers import backbone_model, check_backbone_contract, check_finite_forward, layer_names
from nets.backbones import ghostnet
from nets.layers import make_divisible


def expected_channels(alpha):
    """Documented C3/C4/C5 channels: GhostNet 40/112/160."""
    return tuple(make_divisible(c * alpha, 4) for c in (40, 112, 160))


def _model(alpha, shape=(64, 64, 3)):
    return backbone_model(ghostnet.build_ghostnet, shape, alpha=alpha, weights=None)[0]


@pytest.fixture(scope="module")
def ghost_1():
    return _model(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("hw", [(320, 320), (320, 512)])
def test_feature_shapes_are_exact_strides(alpha, hw):
    h, w = hw
    feats = ghostnet.build_ghostnet(keras.Input((h, w, 3)), alpha=alpha, weights=None)
    channels = expected_channels(alpha)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (h // 8, w // 8, channels[0]), (h // 16, w // 16, channels[1]), (h // 32, w // 32, channels[2])]


def test_ghostnet_13_channels():
    feats = ghostnet.build_ghostnet(keras.Input((64, 96, 3)), alpha=1.3, weights=None)
    # 40*1.3=52, 112*1.3=145.6 -> 144, 160*1.3=208 (nearest multiple of 4)
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 12, 52), (4, 6, 144), (2, 3, 208)]


@pytest.mark.parametrize("out,ratio", [(16, 2), (13, 2), (7, 2), (10, 3)])
def test_ghost_module_channels_and_values(out, ratio):
    inputs = keras.Input((8, 8, 5))
    y = ghostnet.apply_ghost_module(inputs, out, ratio=ratio, relu=True, name="ghost_t")
    model = keras.Model(inputs, y)
    init = math.ceil(out / ratio)
    primary = model.get_layer("ghost_t_primary_relu").output
    cheap = model.get_layer("ghost_t_cheap_dwrelu").output
    assert y.shape[-1] == out
    assert primary.shape[-1] == init and cheap.shape[-1] == init * (ratio - 1)
    assert model.get_layer("ghost_t_primary_conv").kernel.shape == (1, 1, 5, init)

    probe = keras.Model(inputs, [primary, cheap, y])
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 5)).astype("float32")
    p, c, got = (keras.ops.convert_to_numpy(t) for t in probe(x, training=False))
    np.testing.assert_allclose(got, np.concatenate([p, c], axis=-1)[..., :out], rtol=1e-6, atol=1e-6)
    assert np.all(p >= 0) and np.all(c >= 0) and p.std() > 0  # ReLU applied, not constant


def test_ghost_module_without_relu_is_linear_output():
    inputs = keras.Input((4, 4, 3))
    y = ghostnet.apply_ghost_module(inputs, 6, relu=False, name="ghost_lin")
    model = keras.Model(inputs, y)
    assert not any(isinstance(layer, keras.layers.Activation) for layer in model.layers)
    x = np.random.default_rng(1).normal(size=(1, 4, 4, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(model(x))
    assert out.min() < 0  # no ReLU clipped the output


def test_ghostnet_se_exactly_where_table_1_puts_it(ghost_1):
    # Paper Table 1, bottlenecks numbered 0..15: SE = 1 in rows with exp 72->40, 120->40,
    # 480->112, 672->112, 672->160 and the 2nd and 4th 960 rows.
    paper_se = {3, 4, 9, 10, 11, 13, 15}
    names = layer_names(ghost_1)
    se_blocks = {int(m.group(1)) for n in names if (m := re.fullmatch(r"ghost_b(\d+)_se_multiply", n))}
    assert se_blocks == paper_se
    assert sum(1 for n in names if re.fullmatch(r"ghost_b\d+_se_pool", n)) == 7
    # SE reduces to make_divisible(c / 4, 4) of the expanded width: 72 -> 20, 960 -> 240.
    assert ghost_1.get_layer("ghost_b3_se_reduce").filters == 20
    assert ghost_1.get_layer("ghost_b15_se_reduce").filters == 240
    # stride-2 depthwise only in the four stride-2 rows; projection shortcut where shape changes
    down = {int(m.group(1)) for n in names if (m := re.fullmatch(r"ghost_b(\d+)_down_dwconv", n))}
    assert down == {1, 3, 5, 11}
    short = {int(m.group(1)) for n in names if (m := re.fullmatch(r"ghost_b(\d+)_shortcut_dwconv", n))}
    assert short == {1, 3, 5, 9, 11}  # stride 2, or 80 -> 112 channels in block 9
    assert ghost_1.get_layer("ghost_b3_down_dwconv").kernel_size == (5, 5)
    assert all(n.startswith("ghost_") for n in names[1:])


def test_ghostnet_param_count_matches_paper(ghost_1):
    trainable = sum(int(np.prod(w.shape)) for w in ghost_1.trainable_weights)
    # Paper: 5.2M params for the classifier. The parts not built here are the 1x1 conv
    # 160->960 + BN, the 1x1 conv 960->1280 (with bias) and the 1280->1000 FC.
    head = 160 * 960 + 2 * 960 + 960 * 1280 + 1280 + 1280 * 1000 + 1000
    print(f"GhostNet 1.0 backbone: {trainable} trainable, {ghost_1.count_params()} total params")
    assert 2.3e6 < trainable < 2.7e6
    assert round((trainable + head) / 1e6, 1) == 5.2


@pytest.mark.slow
def test_tiny_forward_is_finite():
    model = _model(0.5, (64, 96, 3))
    check_finite_forward(model)


@pytest.mark.slow
def test_backbone_contract():
    """Three maps at strides 8/16/32, explicit names, and the whole backbone (ghost modules,
    SE, stride-2 bottlenecks, ChannelSlice) saves and reloads with safe_mode=True."""
    model, channels = check_backbone_contract("ghostnet", 0.5, (64, 96))
    assert tuple(channels) == expected_channels(0.5) == (20, 56, 80)
    assert all(n.startswith("ghost_") for n in layer_names(model)[1:])


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="no downloadable weights"):
        ghostnet.build_ghostnet(keras.Input((64, 64, 3)), 1.0, "imagenet")
    with pytest.raises(ValueError, match="ratio must be >= 2"):
        ghostnet.apply_ghost_module(keras.Input((8, 8, 3)), 4, ratio=1, name="ghost_bad")
