"""GhostNet and SqueezeNet backbones (nets/backbones/ghostnet.py, squeezenet.py)."""
import math
import re

import keras
import numpy as np
import pytest

from nets import backbones
from nets.backbones import ghostnet, squeezenet
from nets.layers import make_divisible

BUILDERS = {
    "ghostnet": ghostnet.build_ghostnet,
    "squeezenet": squeezenet.build_squeezenet,
    "squeezenet_bypass": squeezenet.build_squeezenet_bypass,
}


def expected_channels(name, alpha):
    """Documented C3/C4/C5 channels: GhostNet 40/112/160, SqueezeNet fire5/fire9/fire11 256/512/640."""
    if name == "ghostnet":
        return tuple(make_divisible(c * alpha, 4) for c in (40, 112, 160))
    return tuple(make_divisible(c * alpha, 8) for c in (256, 512, 640))


def _model(name, alpha, shape=(64, 64, 3)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, BUILDERS[name](inputs, alpha=alpha, weights=None), name=name)


def _layer_names(model):
    return [layer.name for layer in model.layers]


@pytest.fixture(scope="module")
def ghost_1():
    return _model("ghostnet", 1.0)


@pytest.mark.parametrize("name,alphas", [("ghostnet", (0.5, 1.0, 1.3)),
                                         ("squeezenet", (0.5, 1.0)),
                                         ("squeezenet_bypass", (0.5, 1.0))])
def test_registered_with_paper_alphas(name, alphas):
    spec = backbones._REGISTRY[name]  # the modules register on import (imported above)
    assert spec.builder is BUILDERS[name]
    assert spec.alphas == alphas and spec.default_alpha == 1.0
    assert not spec.keras_applications and spec.paper


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("hw", [(320, 320), (320, 512)])
def test_feature_shapes_are_exact_strides(name, alpha, hw):
    h, w = hw
    feats = BUILDERS[name](keras.Input((h, w, 3)), alpha=alpha, weights=None)
    channels = expected_channels(name, alpha)
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
    names = _layer_names(ghost_1)
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


def test_squeezenet_v11_param_count_matches_reference():
    model = _model("squeezenet", 1.0)
    # The published SqueezeNet v1.1 has 1,235,496 params (torchvision squeezenet1_1), of
    # which the 512->1000 classifier conv holds 513,000. Its convs have biases where ours
    # have BN: count our conv kernels up to fire9 plus one bias per output channel.
    original = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and not re.match(r"squeeze_fire1[01]_", layer.name):
            original += int(np.prod(layer.kernel.shape)) + layer.filters
    assert original == 1_235_496 - 513_000


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_squeezenet_bypass_adds_only_in_bypass_variant(alpha):
    plain_model, bypass_model = _model("squeezenet", alpha), _model("squeezenet_bypass", alpha)
    plain, bypass = _layer_names(plain_model)[1:], _layer_names(bypass_model)[1:]  # [0]: input
    assert not any("bypass" in n for n in plain)
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain_model.layers)
    adds = [layer.name for layer in bypass_model.layers if isinstance(layer, keras.layers.Add)]
    # paper sec. 6: around fire3, 5, 7, 9 (in == out channels); fire11 of the added stage too
    assert sorted(adds) == sorted(f"squeeze_fire{i}_bypass" for i in (3, 5, 7, 9, 11))
    assert set(plain) <= set(bypass)
    assert all(n.startswith("squeeze_") for n in bypass)


def test_squeezenet_fire_channels():
    model = _model("squeezenet", 0.5)
    assert model.get_layer("squeeze_conv1_conv").filters == 32
    assert model.get_layer("squeeze_fire2_squeeze_conv").filters == 8
    assert model.get_layer("squeeze_fire9_expand3x3_conv").kernel_size == (3, 3)
    assert model.get_layer("squeeze_fire9_concat").output.shape[-1] == 256  # (128 + 128)
    assert model.get_layer("squeeze_fire10_squeeze_conv").filters == 40


@pytest.mark.parametrize("name,alpha", [("ghostnet", 0.5), ("squeezenet_bypass", 0.5)])
def test_tiny_forward_is_finite(name, alpha):
    model = _model(name, alpha, (64, 96, 3))
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 64, 96, 3)).astype("float32")
    for training in (False, True):
        outs = [keras.ops.convert_to_numpy(o) for o in model(x, training=training)]
        assert [o.shape[1:3] for o in outs] == [(8, 12), (4, 6), (2, 3)]
        assert all(np.isfinite(o).all() and o.std() > 0 for o in outs)


def test_saved_model_reloads_in_safe_mode(tmp_path):
    inputs = keras.Input((64, 64, 3))
    y = ghostnet.apply_ghost_bottleneck(inputs, 24, 12, 5, 2, True, name="ghost_x")
    feats = squeezenet.build_squeezenet(inputs, alpha=0.5, weights=None, bypass=True)
    model = keras.Model(inputs, [y, *feats])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(3).uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-5)


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="no downloadable weights"):
        ghostnet.build_ghostnet(keras.Input((64, 64, 3)), 1.0, "imagenet")
    with pytest.raises(ValueError, match="no downloadable weights"):
        squeezenet.build_squeezenet(keras.Input((64, 64, 3)), 1.0, "imagenet")
    with pytest.raises(ValueError, match="always has the bypass"):
        squeezenet.build_squeezenet_bypass(keras.Input((64, 64, 3)), 1.0, None, bypass=False)
    with pytest.raises(ValueError, match="ratio must be >= 2"):
        ghostnet.apply_ghost_module(keras.Input((8, 8, 3)), 4, ratio=1, name="ghost_bad")
