"""nets.layers.BatchNormalization (fused) is numerically keras.layers.BatchNormalization."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from nets.layers import BatchNormalization as FusedBatchNormalization  # the project's fused BN
from nets.layers import fused_clone_function, use_fused_batchnorm

ATOL = 1e-5
C = 8
# (momentum, epsilon, center, scale)
CONFIGS = [
    (0.97, 1e-3, True, True),
    (0.99, 1e-3, True, True),
    (0.97, 2e-5, False, True),
    (0.99, 1e-2, True, False),
    (0.97, 1e-3, False, False),
]


@pytest.fixture(autouse=True)
def _clear():
    yield
    keras.backend.clear_session()


def _inputs(seed, shape=(4, 6, 5, C)):
    rng = np.random.default_rng(seed)
    # per-channel offsets and scales, so mean/variance differ from channel to channel
    return (rng.normal(size=shape) * rng.uniform(0.5, 3.0, shape[-1])
            + rng.uniform(-2, 2, shape[-1])).astype("float32")


def _pair(input_shape=(None, None, None, C), seed=0, **kwargs):
    """A Keras BN and a FusedBatchNormalization, same config, same random weights."""
    ref = keras.layers.BatchNormalization(**kwargs)
    fused = FusedBatchNormalization(**kwargs)
    ref.build(input_shape)
    fused.build(input_shape)
    rng = np.random.default_rng(seed)
    weights = []
    for w in ref.weights:
        if w.path.endswith("moving_variance") or w.path.endswith("gamma"):
            weights.append(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        else:
            weights.append(rng.normal(size=w.shape).astype("float32"))
    ref.set_weights(weights)
    fused.set_weights(weights)
    return ref, fused


def _np(a):
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def _close(a, b, atol=ATOL, rtol=1e-5):
    np.testing.assert_allclose(_np(a), _np(b), atol=atol, rtol=rtol)


def _op_types(layer, shape, training):
    fn = tf.function(lambda x: layer(x, training=training))
    graph = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("momentum,epsilon,center,scale", CONFIGS)
def test_outputs_moving_stats_and_gradients_match_keras(momentum, epsilon, center, scale):
    ref, fused = _pair(momentum=momentum, epsilon=epsilon, center=center, scale=scale)
    assert fused.get_config() == {**ref.get_config(), "name": fused.name}

    x = _inputs(1)
    _close(fused(x, training=False), ref(x, training=False))
    for step in range(4):  # several training steps: outputs and the moving statistics
        xs = _inputs(10 + step)
        _close(fused(xs, training=True), ref(xs, training=True))
        _close(fused.moving_mean, ref.moving_mean)
        _close(fused.moving_variance, ref.moving_variance)
    assert not np.allclose(ref.moving_mean.numpy(), _pair()[0].moving_mean.numpy())
    _close(fused(x, training=False), ref(x, training=False))  # inference with updated stats

    for training in (True, False):
        grads = []
        for layer in (ref, fused):
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                # a non-uniform upstream gradient, so that d/dx is not trivially ~0
                loss = tf.reduce_sum(tf.square(layer(xt, training=training)) * tf.cos(xt))
            grads.append(tape.gradient(loss, [xt] + layer.trainable_weights))
        assert len(grads[1]) == 1 + int(center) + int(scale)
        for g_ref, g_fused in zip(*grads):
            _close(g_fused, g_ref, atol=1e-4, rtol=1e-4)


def test_fused_kernel_is_used_in_training_only():
    ref, fused = _pair()
    assert "FusedBatchNormV3" in _op_types(fused, (None, None, None, C), True)
    assert "FusedBatchNormV3" not in _op_types(ref, (None, None, None, C), True)
    # inference is Keras' own formula (the fused kernel + Mish has no CPU fusion kernel)
    assert "FusedBatchNormV3" not in _op_types(fused, (None, None, None, C), False)


def test_conv_bn_mish_runs_in_a_graph_in_inference_mode():
    """TF's remapper fuses Conv2D + FusedBatchNormV3 + Mish, which has no CPU kernel in TF 2.21."""
    from nets.layers import apply_conv_bn
    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, apply_conv_bn(inp, 8, 3, activation="mish", name="c"))
    x = _inputs(7, (1, 16, 16, 3))
    for training in (False, True):
        out = tf.function(lambda t, tr=training: model(t, training=tr))(x)
        assert np.isfinite(np.asarray(out)).all()


def test_dynamic_shapes_and_single_element_batch():
    ref, fused = _pair()
    fn_ref = tf.function(lambda x: ref(x, training=True))
    fn_fused = tf.function(lambda x: fused(x, training=True))
    spec = tf.TensorSpec((None, None, None, C), tf.float32)
    fn_ref, fn_fused = fn_ref.get_concrete_function(spec), fn_fused.get_concrete_function(spec)
    for shape in [(2, 3, 4, C), (1, 1, 1, C), (3, 7, 2, C)]:  # n = N*H*W = 1 included
        x = _inputs(3, shape)
        _close(fn_fused(x), fn_ref(x))
        _close(fused.moving_variance, ref.moving_variance)
        _close(fused.moving_mean, ref.moving_mean)


@pytest.mark.parametrize("axis,shape", [(1, (2, C, 4, 3)), (-1, (4, 5, C)), (-1, (6, C)),
                                        (2, (2, 3, C, 4))])
def test_fallback_to_keras_for_other_axis_or_rank(axis, shape):
    ref, fused = _pair(input_shape=shape, axis=axis)
    x = _inputs(5, shape)
    for training in (True, False):
        np.testing.assert_array_equal(fused(x, training=training), ref(x, training=training))
        assert "FusedBatchNormV3" not in _op_types(fused, shape, training)
    np.testing.assert_array_equal(fused.moving_variance.numpy(), ref.moving_variance.numpy())


def test_tiny_epsilon_falls_back_to_keras():
    ref, fused = _pair(epsilon=1e-6)
    assert "FusedBatchNormV3" not in _op_types(fused, (None, None, None, C), True)
    x = _inputs(6)
    np.testing.assert_array_equal(fused(x, training=True), ref(x, training=True))


def test_frozen_layer_runs_in_inference_mode():
    ref, fused = _pair(momentum=0.97)
    ref.trainable = False
    fused.trainable = False
    before = [w.numpy().copy() for w in fused.weights]
    x = _inputs(7)
    out = fused(x, training=True)
    _close(out, fused(x, training=False))
    _close(out, ref(x, training=True))
    for w, b in zip(fused.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_mixed_precision_float16_inputs():
    ref, fused = _pair(dtype="mixed_float16")
    x = tf.constant(_inputs(8), tf.float16)
    for training in (True, False):
        out_ref, out_fused = ref(x, training=training), fused(x, training=training)
        assert out_fused.dtype == tf.float16 == out_ref.dtype
        _close(tf.cast(out_fused, tf.float32), tf.cast(out_ref, tf.float32), atol=1e-2, rtol=1e-2)
    assert fused.moving_mean.dtype == "float32"
    _close(fused.moving_mean, ref.moving_mean, atol=1e-3)
    _close(fused.moving_variance, ref.moving_variance, atol=1e-3)


def _small_model(bn=keras.layers.BatchNormalization):
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(C, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = bn(momentum=0.97, name="c1_bn")(x)
    x = keras.layers.Activation("relu6", name="c1_relu6")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = bn(epsilon=1e-3, momentum=0.99, center=False, name="dw_bn")(y)
    x = keras.ops.add(x, y)  # a bare keras op (no layer), as keras.applications make
    frozen = bn(name="frozen_bn")
    frozen.trainable = False
    x = frozen(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, out, name="small")
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.weights])
    return model


def test_keras_file_round_trip_safe_mode(tmp_path):
    model = _small_model(FusedBatchNormalization)
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    path = tmp_path / "fused.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    bns = [l for l in loaded.layers if isinstance(l, FusedBatchNormalization)]
    assert [l.name for l in bns] == ["c1_bn", "dw_bn", "frozen_bn"]
    assert not bns[2].trainable and bns[0].momentum == 0.97 and not bns[1].center
    assert keras.saving.get_registered_name(FusedBatchNormalization) == \
        "yolov4lite>BatchNormalization"
    _close(loaded(x, training=False), model(x, training=False))
    _close(loaded(x, training=True), model(x, training=True))


def test_clone_conversion_keeps_names_configs_weights_and_outputs():
    model = _small_model()
    fused = use_fused_batchnorm(model)
    assert all(type(l) is keras.layers.BatchNormalization
               for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    pairs = list(zip(model.layers, fused.layers))
    assert [a.name for a, _ in pairs] == [b.name for _, b in pairs]
    n_bn = 0
    for a, b in pairs:
        if isinstance(a, keras.layers.BatchNormalization):
            n_bn += 1
            assert type(b) is FusedBatchNormalization
            assert b.get_config() == a.get_config()
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert n_bn == 3

    x = np.random.default_rng(2).uniform(0, 1, (3, 16, 16, 3)).astype("float32")
    _close(fused(x, training=False), model(x, training=False))
    _close(fused(x, training=True), model(x, training=True), atol=1e-4)
    for a, b in pairs:  # same moving statistics after the training-mode call
        if isinstance(a, keras.layers.BatchNormalization):
            _close(b.moving_mean, a.moving_mean)
            _close(b.moving_variance, a.moving_variance)


def test_clone_function_and_nested_models():
    inner = _small_model()
    inputs = keras.Input((16, 16, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="top")(inner(inputs)), name="outer")
    clone = keras.models.clone_model(outer, clone_function=fused_clone_function, recursive=True)
    assert sum(isinstance(l, FusedBatchNormalization) for l in clone.get_layer("small").layers) == 3
    fused = use_fused_batchnorm(outer)
    x = np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    _close(fused(x, training=False), outer(x, training=False))
