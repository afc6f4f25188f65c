"""SqueezeNet v1.1 backbone with and without the simple bypass (nets/backbones/squeezenet.py)."""
import re

import keras
import numpy as np
import pytest

from _helpers import backbone_model, check_backbone_contract, check_finite_forward, layer_names
from nets.backbones import squeezenet
from nets.layers import make_divisible

BUILDERS = {
    "squeezenet": squeezenet.build_squeezenet,
    "squeezenet_bypass": squeezenet.build_squeezenet_bypass,
}


def expected_channels(alpha):
    """Documented C3/C4/C5 channels: SqueezeNet fire5/fire9/fire11 256/512/640."""
    return tuple(make_divisible(c * alpha, 8) for c in (256, 512, 640))


def _model(name, alpha, shape=(64, 64, 3)):
    return backbone_model(BUILDERS[name], shape, alpha=alpha, weights=None)[0]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("hw", [(320, 320), (320, 512)])
def test_feature_shapes_are_exact_strides(name, alpha, hw):
    h, w = hw
    feats = BUILDERS[name](keras.Input((h, w, 3)), alpha=alpha, weights=None)
    channels = expected_channels(alpha)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (h // 8, w // 8, channels[0]), (h // 16, w // 16, channels[1]), (h // 32, w // 32, channels[2])]


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
    plain, bypass = layer_names(plain_model)[1:], layer_names(bypass_model)[1:]  # [0]: input
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


def test_tiny_forward_is_finite():
    model = _model("squeezenet_bypass", 0.5, (64, 96, 3))
    check_finite_forward(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_backbone_contract(name):
    """Three maps at strides 8/16/32, explicit names, and a safe_mode=True reload of the whole
    backbone (with the bypass Adds in squeezenet_bypass)."""
    model, channels = check_backbone_contract(name, 0.5, (64, 96))
    assert tuple(channels) == expected_channels(0.5) == (128, 256, 320)
    assert all(n.startswith("squeeze_") for n in layer_names(model)[1:])


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="no downloadable weights"):
        squeezenet.build_squeezenet(keras.Input((64, 64, 3)), 1.0, "imagenet")
    with pytest.raises(ValueError, match="always has the bypass"):
        squeezenet.build_squeezenet_bypass(keras.Input((64, 64, 3)), 1.0, None, bypass=False)
