"""CSPDarknet53, the YOLOv4 backbone (nets/backbones/cspdarknet.py): the darknet layout by a
hand parameter count, Mish everywhere, half width, safe reload and the backbone contract."""
import numpy as np
import pytest

import keras
from keras import layers

from _helpers import backbone_model as _build
from _helpers import check_backbone_contract, check_pyramid as _check_pyramid
from nets.backbones import cspdarknet

RNG = np.random.default_rng(0)


def _csp_param_count(alpha=1.0):
    """Hand count: conv kxk (no bias) + BN (4 per channel) per Conv-BN-Mish."""
    def cbm(cin, cout, k):
        return k * k * cin * cout + 4 * cout
    stem = int(32 * alpha)
    total, cin = cbm(3, stem, 3), stem
    for i, (f, n) in enumerate(zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4))):
        f = int(f * alpha)
        b = f if i == 0 else f // 2
        total += cbm(cin, f, 3) + 2 * cbm(f, b, 1)
        total += n * (cbm(b, f // 2, 1) + cbm(f // 2, b, 3))
        total += cbm(b, b, 1) + cbm(2 * b, f, 1)
        cin = f
    return total


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(320, 320, 3), (320, 512, 3)])
def test_cspdarknet53_pyramid_and_size(shape):
    model, feats = _build(cspdarknet.build_cspdarknet53, shape)
    _check_pyramid(feats, shape, (256, 512, 1024))
    n = model.count_params()
    assert 25_000_000 < n < 28_000_000  # YOLOv4 paper's CSPDarknet53 is ~26.6M (26,652,512 here)
    assert n == _csp_param_count(1.0)
    acts = [layer for layer in model.layers if isinstance(layer, layers.Activation)]
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert len(convs) == 72 and len(acts) == len(convs)  # 1 + 5*5 + 2*(1+2+8+8+4)
    assert all(layer.get_config()["activation"] == "mish" for layer in acts)
    assert [f._keras_history[0].name for f in feats] == [
        "csp_stage3_out_mish", "csp_stage4_out_mish", "csp_stage5_out_mish"]


def test_cspdarknet53_half_width_and_bad_alpha():
    inp = keras.Input((64, 96, 3))
    feats = cspdarknet.build_cspdarknet53(inp, alpha=0.5)
    _check_pyramid(feats, (64, 96), (128, 256, 512))
    assert keras.Model(inp, feats).count_params() == _csp_param_count(0.5)
    with pytest.raises(ValueError, match=r"alpha must be one of \(0.5, 1.0\), got 0.75"):
        cspdarknet.build_cspdarknet53(keras.Input((64, 64, 3)), alpha=0.75)


def test_csp_stage_with_mish_saves_and_loads_safely(tmp_path):
    inp = keras.Input((16, 16, 3))
    out = cspdarknet.apply_csp_stage(inp, 8, 1, name="csp_stage1")
    model = keras.Model(inp, out)
    path = tmp_path / "csp.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = RNG.uniform(size=(1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert loaded.get_layer("csp_stage1_out_mish").get_config()["activation"] == "mish"


@pytest.mark.slow
def test_forward_pass_is_finite():
    model, _ = _build(cspdarknet.build_cspdarknet53, (64, 96, 3))
    x = RNG.uniform(0, 255, size=(2, 64, 96, 3)).astype("float32")
    outs = [keras.ops.convert_to_numpy(o) for o in model(x, training=False)]
    assert [o.shape[1:3] for o in outs] == [(8, 12), (4, 6), (2, 3)]
    assert all(np.isfinite(o).all() and np.abs(o).max() > 0 for o in outs)


def test_csp_stage_block_is_residual_and_first_stage_is_wide():
    model, _ = _build(cspdarknet.build_cspdarknet53, (64, 64, 3), alpha=0.5)
    # YOLOv4's first stage keeps both branches at full width; later stages halve them
    assert model.get_layer("csp_stage1_main_conv").filters == 32
    assert model.get_layer("csp_stage2_main_conv").filters == 32  # 64 // 2
    add = model.get_layer("csp_stage2_block1_add")
    assert add.input[0] is model.get_layer("csp_stage2_main_mish").output
    assert add.input[1] is model.get_layer("csp_stage2_block1_conv2_mish").output
    concat = model.get_layer("csp_stage3_concat")
    assert concat.input[0] is model.get_layer("csp_stage3_trans_mish").output
    assert concat.input[1] is model.get_layer("csp_stage3_short_mish").output
    assert model.get_layer("csp_stage3_down_conv").strides == (2, 2)
    rescale = model.get_layer("csp_rescale")  # darknet feeds [0, 1]
    assert rescale.scale == pytest.approx(1 / 255) and rescale.offset == 0


@pytest.mark.slow
def test_backbone_contract():
    model, channels = check_backbone_contract("cspdarknet53", 0.5, (64, 96))
    assert tuple(channels) == (128, 256, 512)
    assert all(layer.name.startswith("csp_") for layer in model.layers[1:])


def test_no_downloadable_weights():
    with pytest.raises(ValueError, match="no downloadable weights"):
        cspdarknet.build_cspdarknet53(keras.Input((64, 64, 3)), weights="imagenet")
