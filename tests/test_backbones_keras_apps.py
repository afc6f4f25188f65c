"""keras.applications backbones (nets/backbones/keras_apps.py): taps, shapes, preprocessing,
stable names, the backbone contract and the ImageNet-weights paths (offline error, cached file).
(Their registry entries: tests/test_backbones.py.)"""
import importlib
import functools
import re
import socket
import traceback
import urllib.error
import warnings

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend import config as keras_config
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

import nets.backbones as registry
from _helpers import check_backbone_contract
from nets.backbones import BackboneWeightsError, build_backbone
from nets.backbones import keras_apps as ka

BUILDERS = {
    "mobilenetv1": ka.build_mobilenetv1,
    "mobilenetv2": ka.build_mobilenetv2,
    "mobilenetv3large": ka.build_mobilenetv3large,
    "mobilenetv3small": ka.build_mobilenetv3small,
    "densenet121": ka.build_densenet121,
}

# (C3, C4, C5) channels, computed by hand from the papers' layer tables and each family's
# rounding rule (MobileNetV2/V3: round to a multiple of 8, never below 90%):
#   V1: 256/512/1024 * alpha.  V2: 6 * (32, 96) * alpha rounded, then 1280 (alpha <= 1).
#   V3: block outputs (40, 112, 160) large / (24, 48, 96) small, * alpha rounded.
#   DenseNet121: 64 + 32*6 = 256 -> /2 = 128 + 32*12 = 512; 256 + 32*24 = 1024; 512 + 32*16.
CASES = {
    ("mobilenetv1", 1.0): (256, 512, 1024),
    ("mobilenetv1", 0.5): (128, 256, 512),
    ("mobilenetv2", 1.0): (192, 576, 1280),
    ("mobilenetv2", 0.5): (96, 288, 1280),
    ("mobilenetv3large", 1.0): (40, 112, 160),
    ("mobilenetv3large", 0.75): (32, 88, 120),
    ("mobilenetv3small", 1.0): (24, 48, 96),
    ("mobilenetv3small", 0.75): (24, 40, 72),
    ("densenet121", 1.0): (512, 1024, 1024),
}
AUTO_NAME = re.compile(r"(input_layer|re_lu|activation|add|multiply|rescaling|zero_padding2d|"
                       r"normalization|concatenate)(_\d+)?")


@functools.lru_cache(maxsize=None)
def built(name, alpha, h, w):
    """(inputs, [C3, C4, C5], model) for one backbone, built once per test session."""
    inputs = keras.Input((h, w, 3))
    feats = BUILDERS[name](inputs, alpha, None)
    return inputs, feats, keras.Model(inputs, feats)


@pytest.fixture
def only_this_registry(monkeypatch):
    """Registry look-ups that load only keras_apps, so other families' state cannot matter."""
    monkeypatch.setattr(registry, "_load_all", lambda: importlib.import_module("nets.backbones.keras_apps"))


@pytest.fixture
def offline_keras_cache(tmp_path, monkeypatch):
    """An empty Keras cache and no network: urlretrieve fails as it does with no DNS."""
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(320, 320), (320, 512)], ids=["320x320", "320x512"])
@pytest.mark.parametrize("name,alpha", list(CASES), ids=[f"{n}-{a:g}" for n, a in CASES])
def test_taps_are_strides_8_16_32(name, alpha, hw):
    h, w = hw
    inputs, feats, model = built(name, alpha, h, w)
    channels = CASES[(name, alpha)]
    for feat, stride, c, tap in zip(feats, (8, 16, 32), channels, ka.TAPS[name]):
        assert tuple(feat.shape) == (None, h // stride, w // stride, c)
        # The tap is the documented keras.applications layer, and it is what we return.
        assert model.get_layer(tap).output is feat
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert not [n for n in names if n.startswith(("neck_", "head_", "spp_"))]
    assert not [n for n in names[1:] if AUTO_NAME.fullmatch(n)], "auto-named layer left"
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Lambda)]


@pytest.mark.slow
def test_layer_names_are_the_same_on_every_build():
    def names():
        inputs = keras.Input((64, 64, 3))
        model = keras.Model(inputs, ka.build_mobilenetv3small(inputs))
        return [op.name for op in model.operations[1:]]

    first, second = names(), names()
    assert first == second
    assert "mobilenetv3small_re_lu" in first and "mobilenetv3small_activation_1" in first


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_preprocessing_matches_keras_preprocess_input(name):
    inputs, _, model = built(name, 1.0, 320, 512)
    pre_layer = model.get_layer(f"{name}_{ka.PREPROCESS_SUFFIX}")
    assert pre_layer.input is inputs  # the first thing applied to the caller's images
    pre = keras.Model(inputs, pre_layer.output)
    image = np.random.default_rng(0).uniform(0, 255, (1, 320, 512, 3)).astype("float32")
    if name == "densenet121":
        expected = keras.applications.densenet.preprocess_input(image.copy())
    elif name.startswith("mobilenetv3"):
        expected = image / 127.5 - 1.0  # keras' MobileNetV3 preprocess_input is a no-op
    else:
        expected = keras.applications.mobilenet_v2.preprocess_input(image.copy())
    np.testing.assert_allclose(pre.predict(image, verbose=0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_saved_backbone_reloads_in_safe_mode(tmp_path):
    # MobileNetV3 is the one with keras' own Rescaling, renamed layers and bare ops (x + 3).
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, ka.build_mobilenetv3small(inputs, 0.75))
    path = tmp_path / "mobilenetv3small.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    image = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    for a, b in zip(model.predict(image, verbose=0), loaded.predict(image, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_densenet_normalization_survives_its_config():
    # (A whole DenseNet121 .keras round trip takes ~20 s; its only non-keras-app layer is this.)
    layer = built("densenet121", 1.0, 320, 320)[2].get_layer("densenet121_preprocess")
    clone = keras.layers.Normalization.from_config(layer.get_config())
    image = np.random.default_rng(2).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(clone(image), layer(image), rtol=1e-6)
    expected = keras.applications.densenet.preprocess_input(image.copy())
    np.testing.assert_allclose(clone(image), expected, rtol=1e-5, atol=1e-5)


def test_weight_decay_is_l2_on_every_conv_kernel():
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, ka.build_mobilenetv1(inputs, 0.25, weight_decay=1e-3))
    kernels = [layer.kernel for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    expected = sum(1e-3 * float(np.sum(np.square(k.numpy()))) for k in kernels)
    assert len(model.losses) == len(kernels) == 27  # conv1 + 13 x (depthwise, pointwise)
    np.testing.assert_allclose(float(sum(float(v) for v in model.losses)), expected, rtol=1e-5)
    assert model.get_layer("conv_pw_1").get_config()["kernel_regularizer"] is not None
    assert model.get_layer("conv_dw_1").get_config()["depthwise_regularizer"] is not None


@pytest.mark.slow
def test_backbone_contract():
    # (MobileNetV3-Small's safe reload is checked above; DenseNet121's would take ~20 s)
    _, channels = check_backbone_contract("mobilenetv2", 0.5, (64, 96))
    assert tuple(channels) == CASES[("mobilenetv2", 0.5)]


def test_builders_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"'mobilenetv2'.*multiples of 32.*100x128"):
        ka.build_mobilenetv2(keras.Input((100, 128, 3)))
    with pytest.raises(ValueError, match=r"'densenet121'.*RGB.*\(None, 64, 64, 1\)"):
        ka.build_densenet121(keras.Input((64, 64, 1)))
    with pytest.raises(ValueError, match=r"weights must be None or 'imagenet'"):
        ka.build_mobilenetv1(keras.Input((64, 64, 3)), weights="my.h5")
    with pytest.raises(ValueError, match=r"alpha must be 1.0"):
        ka.build_densenet121(keras.Input((64, 64, 3)), alpha=0.5)


@pytest.mark.parametrize("name,fname", [
    ("mobilenetv2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    ("mobilenetv3small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    ("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
])
def test_offline_imagenet_download_gives_one_clear_error(name, fname, offline_keras_cache,
                                                         only_this_registry):
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(name, keras.Input((64, 96, 3)), weights="imagenet")
    err = info.value
    message = str(err)
    assert f"backbone {name!r}" in message and fname in message
    assert "Name or service not known" in message  # why, from the downloader
    assert "--backbone-weights none" in message and "--backbone-weights PATH" in message
    assert str(offline_keras_cache / "models") in message  # where a copied file would be found
    assert "\n" not in message
    # No chained downloader traceback: raised `from None`.
    assert err.__cause__ is None and err.__suppress_context__
    shown = "".join(traceback.format_exception(err))
    assert "During handling" not in shown and "URLError" not in shown


def _fake_imagenet_file(path, alpha):
    """A legacy-h5 no-top file in the keras.applications layout, with known random weights."""
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=alpha,
                                               input_shape=(224, 224, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    return reference


@pytest.mark.slow
def test_cached_imagenet_weights_load_for_any_input_size(offline_keras_cache):
    models_dir = offline_keras_cache / "models"
    models_dir.mkdir()
    fname = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
    reference = _fake_imagenet_file(models_dir / fname, 0.5)

    inputs = keras.Input((320, 512, 3))  # non-square: the 224 file, no warning, no download
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = ka.build_mobilenetv2(inputs, 0.5, "imagenet")
    assert not [w for w in caught if "non-square" in str(w.message)]
    model = keras.Model(inputs, feats)
    for layer_name in ("Conv1", "block_6_expand", "block_13_depthwise", "Conv_1_bn"):
        got, want = model.get_layer(layer_name).weights, reference.get_layer(layer_name).weights
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.numpy(), w.numpy())

    # A square input of a size keras has its own file for asks for that file instead.
    with pytest.raises(BackboneWeightsError, match=r"kernels_0\.5_160_no_top\.h5"):
        ka.build_mobilenetv2(keras.Input((160, 160, 3)), 0.5, "imagenet")


@pytest.mark.slow
def test_batchnorm_momentum_is_the_projects_and_is_used():
    # MobileNetV2/V3 ship momentum 0.999: moving statistics that lag ~1000 steps, so a model
    # trained from scratch for a few hundred steps evaluated far from how it trained.
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, ka.build_mobilenetv2(inputs, 0.35))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and {bn.momentum for bn in bns} == {0.97}
    assert {bn.get_config()["momentum"] for bn in bns} == {0.97}
    bn = bns[0]
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    batch_mean = np.asarray(keras.Model(inputs, bn.input)(x)).mean(axis=(0, 1, 2))
    model(x, training=True)  # one update from the initial moving mean 0
    np.testing.assert_allclose(np.asarray(bn.moving_mean), (1 - 0.97) * batch_mean, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_mobilenetv2_projected_taps_are_the_block_outputs():
    inputs = keras.Input((128, 128, 3))
    feats = build_backbone("mobilenetv2", inputs, alpha=1.0, taps="projected")
    # stride 8/16/32 linear block outputs: 32, 96, 320 channels (Sandler et al. 2018, Table 2)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 32), (8, 8, 96), (4, 4, 320)]
    expanded = build_backbone("mobilenetv2", keras.Input((128, 128, 3)), alpha=1.0)
    assert [f.shape[-1] for f in expanded] == [192, 576, 1280]
    with pytest.raises(ValueError, match="taps must be one of expanded, projected"):
        build_backbone("mobilenetv2", keras.Input((128, 128, 3)), taps="middle")


@pytest.mark.slow
def test_projected_taps_drop_the_last_conv_and_narrow_the_neck_inputs():
    from nets.yolo import yolo_body
    a = yolo_body((128, 128), 20, "mobilenetv2", taps="expanded")
    b = yolo_body((128, 128), 20, "mobilenetv2", taps="projected")
    names_b = {l.name for l in b.layers}
    assert "Conv_1" in {l.name for l in a.layers} and "Conv_1" not in names_b
    # hand count: Conv_1 (320*1280) + its BN (4*1280) and the three 1x1 convs on the taps
    # (1280->512, 576->256, 192->128) against (320->512, 96->256, 32->128)
    want = 320 * 1280 + 4 * 1280 + (1280 - 320) * 512 + (576 - 96) * 256 + (192 - 32) * 128
    assert a.count_params() - b.count_params() == want
