"""ShuffleNetV1 and ShuffleNetV2 backbones (nets/backbones/shufflenet.py): the papers' tables,
unit wiring, grouped convolutions on CPU, safe reload and the backbone contract.
(The ChannelShuffle / ChannelSlice layers they use: tests/test_layers.py.)"""
import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import layers

from _helpers import backbone_model as _build
from _helpers import check_backbone_contract, check_pyramid as _check_pyramid
from nets.backbones import shufflenet

RNG = np.random.default_rng(0)

# Channels of stages 2-4 copied from the papers' tables (independent of the module's copy).
V1_TABLE = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
            4: (272, 544, 1088), 8: (384, 768, 1536)}  # ShuffleNetV1 Table 1, 1x
V2_TABLE = {0.5: (48, 96, 192), 1.0: (116, 232, 464),
            1.5: (176, 352, 704), 2.0: (244, 488, 976)}  # ShuffleNetV2 Table 5


def test_grouped_conv2d_runs_on_cpu_forward_and_gradient():
    """The V1 builder relies on Conv2D(groups=g) on CPU: check it against a per-group NumPy conv."""
    x = RNG.normal(size=(2, 4, 4, 12)).astype("float32")
    conv = layers.Conv2D(6, 1, groups=3, use_bias=False)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        y = conv(xt)
        loss = tf.reduce_sum(y * y)
    grad = tape.gradient(loss, conv.kernel).numpy()
    w = conv.kernel.numpy()[0, 0]  # (12 / 3, 6)
    ref = np.concatenate([x[..., 4 * g:4 * g + 4] @ w[:, 2 * g:2 * g + 2] for g in range(3)], axis=-1)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    ref_grad = np.stack([np.einsum("bhwi,bhwo->io", x[..., 4 * g:4 * g + 4], 2 * ref[..., 2 * g:2 * g + 2])
                         for g in range(3)], axis=1).reshape(4, 6)
    # group g owns kernel columns 2g, 2g+1: stacking (i, g, o) and flattening gives column 2g+o
    np.testing.assert_allclose(grad[0, 0], ref_grad, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- ShuffleNetV1

@pytest.mark.parametrize("groups,alpha,shape", [
    (3, 1.0, (320, 320, 3)),
    (8, 0.5, (320, 512, 3)),
])
def test_shufflenet_v1_pyramid_matches_table1(groups, alpha, shape):
    _, feats = _build(shufflenet.build_shufflenetv1, shape, alpha=alpha, groups=groups)
    _check_pyramid(feats, shape, [int(c * alpha) for c in V1_TABLE[groups]])


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.0])
def test_shufflenet_v1_channels_divisible_and_close_to_table(groups, alpha):
    c = shufflenet.shufflenet_v1_channels(groups, alpha)
    assert c[1] == 2 * c[0] and c[2] == 4 * c[0]
    assert c[0] % (4 * groups) == 0  # bottleneck out/4 splits into groups
    assert abs(c[0] - V1_TABLE[groups][0] * alpha) <= 2 * groups  # nearest multiple of 4g


def test_shufflenet_v1_units_follow_the_paper():
    model, _ = _build(shufflenet.build_shufflenetv1, (64, 64, 3), groups=3)
    # stride-2 unit: concat of a 3x3/2 average pool of the unit input and the residual branch
    concat = model.get_layer("shufflev1_stage3_unit1_concat")
    pool = model.get_layer("shufflev1_stage3_unit1_avgpool")
    assert isinstance(concat, layers.Concatenate) and isinstance(pool, layers.AveragePooling2D)
    assert pool.pool_size == (3, 3) and pool.strides == (2, 2)
    assert pool.input is model.get_layer("shufflev1_stage2_unit4_relu").output
    assert concat.input[0] is pool.output
    assert concat.input[1] is model.get_layer("shufflev1_stage3_unit1_gconv2_bn").output
    assert concat.output.shape[-1] == 480 and pool.output.shape[-1] == 240  # branch gives out - in
    # stride-1 unit: identity add, then ReLU
    add = model.get_layer("shufflev1_stage3_unit2_add")
    assert isinstance(add, layers.Add)
    assert add.input[0] is model.get_layer("shufflev1_stage3_unit1_relu").output
    # grouped 1x1 convs, except the first of stage 2 (24 input channels); shuffle after a grouped one
    assert model.get_layer("shufflev1_stage2_unit1_gconv1_conv").groups == 1
    assert model.get_layer("shufflev1_stage2_unit1_gconv2_conv").groups == 3
    assert model.get_layer("shufflev1_stage3_unit2_gconv1_conv").groups == 3
    assert model.get_layer("shufflev1_stage3_unit2_shuffle").groups == 3
    dw = model.get_layer("shufflev1_stage3_unit2_dwconv")
    assert dw.kernel_size == (3, 3) and dw.strides == (1, 1)
    assert model.get_layer("shufflev1_stage3_unit1_dwconv").strides == (2, 2)
    names = [layer.name for layer in model.layers]
    assert all(n.startswith("shufflev1_") for n in names[1:])
    assert len(names) == len(set(names))


def test_shufflenet_v1_rejects_bad_groups_and_scale():
    with pytest.raises(ValueError, match=r"groups must be one of \[1, 2, 3, 4, 8\], got 5"):
        shufflenet.shufflenet_v1_channels(5, 1.0)
    with pytest.raises(ValueError, match="scale must be one of"):
        shufflenet.shufflenet_v1_channels(3, 0.75)


# --------------------------------------------------------------------------- ShuffleNetV2

@pytest.mark.parametrize("alpha,shape", [(1.0, (320, 320, 3)), (0.5, (320, 512, 3))])
def test_shufflenet_v2_pyramid_matches_table5(alpha, shape):
    _, feats = _build(shufflenet.build_shufflenetv2, shape, alpha=alpha)
    _check_pyramid(feats, shape, V2_TABLE[alpha])


def test_shufflenet_v2_units_split_halves_and_shuffle():
    model, _ = _build(shufflenet.build_shufflenetv2, (64, 64, 3), alpha=1.0)
    left = model.get_layer("shufflev2_stage3_unit2_split_left")
    right = model.get_layer("shufflev2_stage3_unit2_split_right")
    assert (left.start, left.stop, right.start, right.stop) == (0, 116, 116, 232)
    unit_in = model.get_layer("shufflev2_stage3_unit1_shuffle").output
    assert left.input is unit_in and right.input is unit_in
    concat = model.get_layer("shufflev2_stage3_unit2_concat")
    assert concat.input[0] is left.output  # the identity half passes unchanged
    assert concat.input[1] is model.get_layer("shufflev2_stage3_unit2_right_pw2_relu").output
    assert model.get_layer("shufflev2_stage3_unit2_shuffle").groups == 2
    # stride-2 unit: no split, both branches see the whole input and halve the spatial size
    layer_names = {layer.name for layer in model.layers}
    assert "shufflev2_stage3_unit1_split_left" not in layer_names
    assert model.get_layer("shufflev2_stage3_unit1_left_dwconv").strides == (2, 2)
    assert model.get_layer("shufflev2_stage3_unit1_right_dwconv").strides == (2, 2)
    stage2_out = model.get_layer("shufflev2_stage2_unit4_shuffle").output
    assert model.get_layer("shufflev2_stage3_unit1_left_dwconv").input is stage2_out
    assert model.get_layer("shufflev2_stage3_unit1_right_pw1_conv").input is stage2_out
    assert all(n.startswith("shufflev2_") for n in [layer.name for layer in model.layers][1:])


def test_shufflenet_v2_rejects_bad_scale():
    with pytest.raises(ValueError, match=r"scale must be one of \(0.5, 1.0, 1.5, 2.0\), got 0.75"):
        shufflenet.shufflenet_v2_channels(0.75)


# --------------------------------------------------------------------------- both

@pytest.mark.parametrize("fn,kw", [
    (shufflenet.build_shufflenetv1, {"groups": 2, "alpha": 0.5}),
    (shufflenet.build_shufflenetv2, {"alpha": 0.5}),
])
def test_forward_pass_is_finite(fn, kw):
    model, _ = _build(fn, (64, 96, 3), **kw)
    x = RNG.uniform(0, 255, size=(2, 64, 96, 3)).astype("float32")
    outs = [keras.ops.convert_to_numpy(o) for o in model(x, training=False)]
    assert [o.shape[1:3] for o in outs] == [(8, 12), (4, 6), (2, 3)]
    assert all(np.isfinite(o).all() and np.abs(o).max() > 0 for o in outs)


@pytest.mark.parametrize("version", [1, 2])
def test_shufflenet_units_save_and_load_safely(version, tmp_path):
    """A stride-2 and a stride-1 unit hold every layer type of the nets (grouped conv, shuffle, slice)."""
    inp = keras.Input((16, 16, 24))
    if version == 1:
        x = shufflenet.apply_shufflev1_unit(inp, 48, 2, groups=3, name="shufflev1_stage3_unit1")
        x = shufflenet.apply_shufflev1_unit(x, 48, 1, groups=3, name="shufflev1_stage3_unit2")
    else:
        x = shufflenet.apply_shufflev2_unit(inp, 48, 2, name="shufflev2_stage3_unit1")
        x = shufflenet.apply_shufflev2_unit(x, 48, 1, name="shufflev2_stage3_unit2")
    model = keras.Model(inp, x)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = RNG.normal(size=(1, 16, 16, 24)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,options,channels", [
    ("shufflenetv1", {"groups": 8}, (192, 384, 768)),  # Table 1, g = 8, 0.5x
    ("shufflenetv2", {}, V2_TABLE[0.5]),
])
@pytest.mark.slow
def test_backbone_contract(name, options, channels):
    model, got = check_backbone_contract(name, 0.5, (64, 96), **options)
    assert tuple(got) == channels
    prefix = "shufflev1_" if name == "shufflenetv1" else "shufflev2_"
    assert all(layer.name.startswith(prefix) for layer in model.layers[1:])
