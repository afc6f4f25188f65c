"""Small building blocks shared by the backbones and the neck, and the project's Keras layers.

``PACKAGE`` is the one serialisation package name of every registered layer of the project.

Custom layers are registered Keras objects with ``get_config`` so that a saved ``.keras``
file reloads with ``safe_mode=True`` (no Lambda layers anywhere in the project).
Block helpers follow the keras-hub style: ``apply_*(x, ..., name=...)`` and every layer they
create gets an explicit, stable name derived from ``name``.
"""
from __future__ import annotations

import keras
from keras import layers, ops

PACKAGE = "yolov4lite"
BN_EPS = 1e-3
BN_MOMENTUM = 0.97


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelShuffle(layers.Layer):
    """ShuffleNet channel shuffle (Zhang et al. 2018, sec. 3.1) on NHWC tensors.

    Reshape channels to (groups, C/groups), transpose to (C/groups, groups), flatten.
    """

    def __init__(self, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels do not split into {self.groups} groups")

    def call(self, x):
        shape = ops.shape(x)
        c = x.shape[-1]
        x = ops.reshape(x, (shape[0], shape[1], shape[2], self.groups, c // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (shape[0], shape[1], shape[2], c))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelSlice(layers.Layer):
    """Channels ``[start:stop]`` of an NHWC tensor (ghost-module trim, ShuffleNetV2 split)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)
        if not 0 <= self.start < self.stop:
            raise ValueError(f"ChannelSlice needs 0 <= start < stop, got {start}:{stop}")

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


# ----------------------------------------------------------------------------- batch norm
_MIN_FUSED_EPSILON = 1.001e-5  # cuDNN's CUDNN_BN_MIN_EPSILON (tf.nn.fused_batch_norm's floor)



@keras.saving.register_keras_serializable(package=PACKAGE)
class TraceableGroupedConv2D(layers.Conv2D):
    """A Conv2D whose grouped convolution traces as one plain TensorFlow ``Conv2D`` op.

    Keras 3 runs a Conv2D with ``groups`` > 1 inside an XLA-compiled tf.function on
    TensorFlow (TF's own CPU kernel lacks grouped convolution). tf2onnx cannot look inside that
    function: it leaves a StatefulPartitionedCall in the graph and writes a file ONNX Runtime
    refuses (ShuffleNetV1's grouped 1x1 convs). Traced as one ``Conv2D`` op whose filter depth
    divides the input's, tf2onnx writes an ONNX ``Conv`` with ``group`` set. Only for
    conversion (utils.inference.export swaps it in for ONNX): TensorFlow does not run it on CPU.
    Same config and weights as the Conv2D it replaces; channels_last only.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1 or keras.backend.backend() != "tensorflow" or self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf
        return tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper(),
                            dilations=self.dilation_rate, data_format="NHWC")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TraceableNormalization(layers.Normalization):
    """A Normalization whose mean and variance trace as graph constants or variables.

    Keras 3's Normalization keeps its mean and variance as eager tensors, whether given (made
    from the config at build) or adapted (computed from the variables by ``finalize_state``); a
    tf.function captures those as extra graph inputs, and tf2onnx writes them as inputs of the
    .onnx file (DenseNet121's ``densenet121_preprocess``: a file with three inputs that no
    detector runtime can feed). Here given values are NumPy constants inside the call (Const
    ops: initializers in ONNX) and adapted ones are read from the layer's variables, which
    tf2onnx freezes. Only for conversion (utils.inference.export swaps it in for ONNX); the same
    config, weights and arithmetic as the Normalization it replaces.
    """

    def call(self, inputs):
        import numpy as np
        dtype = self.compute_dtype
        inputs = ops.cast(inputs, dtype)
        if self.input_mean is None:  # adapted: the variables, not Keras' tensors made from them
            mean = ops.reshape(ops.cast(self.adapt_mean, dtype), self._broadcast_shape)
            std = ops.maximum(ops.sqrt(ops.reshape(ops.cast(self.adapt_variance, dtype), self._broadcast_shape)),
                              keras.backend.epsilon())
        else:
            mean = ops.convert_to_numpy(self.mean).astype(dtype)
            std = np.maximum(np.sqrt(ops.convert_to_numpy(self.variance).astype(dtype)),
                             keras.backend.epsilon()).astype(dtype)
        return ops.add(mean, ops.multiply(inputs, std)) if self.invert else ops.divide(ops.subtract(inputs, mean), std)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizableMish(layers.Layer):
    """Mish, ``x * tanh(softplus(x))``, with every intermediate tensor bounded, for int8 TFLite.

    Keras' "mish" activation reaches TFLite as EXP, ADD, LOG, TANH, MUL: softplus is
    ``log(1 + exp(x))``. Post-training int8 gives each of those tensors one scale from its
    calibrated range, and ``exp(x)`` of a trained network's activations spans e^30 and more:
    every ``exp`` of a moderate x rounds to 0, softplus to 0, and the activation to 0. The int8
    file of the CSPDarknet53 detector trained on BCCD found nothing (test mAP@0.5 0.000 against
    0.871 for the fp32 file, docs/benchmarks.md). Here softplus is ``relu(x) + log(1 +
    exp(-|x|))``, the same function, in which ``exp`` only sees (0, 1] and the log term
    (0, ln 2], and ``-|x|`` is ``x - 2 relu(x)`` (reusing the relu; no NEG/ABS ops). Only for
    conversion (utils.inference.export swaps it in for the int8 file, whose default keeps these
    ops in float32: XNNPACK runs float EXP/LOG, not int8 ones); no weights.
    """

    def call(self, x):
        r = ops.relu(x)
        softplus = ops.add(r, ops.log(ops.add(1.0, ops.exp(ops.subtract(x, ops.multiply(r, 2.0))))))
        return ops.multiply(x, ops.tanh(softplus))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization that runs tf.raw_ops.FusedBatchNormV3 on NHWC inputs.

    Named like Keras' class on purpose: Keras addresses layers in ``.weights.h5`` files by
    their class name (``batch_normalization_N``), so weight files, resume files and backbone
    weights written before this layer existed load into models that use it, and back.
    Registered as ``yolov4lite>BatchNormalization``; every BN of the project is this one.

    Why this exists (issue 12): tf.keras ran BatchNormalization on TensorFlow's fused kernel
    (``FusedBatchNormV3``, one op forward and one ``FusedBatchNormGradV3`` backward). Keras 3's
    BatchNormalization is backend-agnostic: on the TensorFlow backend a training-mode call is
    ``tf.nn.moments`` (mean, squared difference, mean, plus a stop-gradient) followed by
    ``tf.nn.batch_normalization`` (rsqrt, mul, mul, sub, mul, add), and the gradient is the
    autodiff of all of those. This layer is numerically the same layer (same constructor, config,
    weights, moving-average rule and ``trainable=False`` behaviour) but runs the fused kernel.

    Measured: a training step at batch 8, 416x416, real loss, AdamW + EMA, Keras' BN against
    this one in the same run (``python benchmarks/train_step.py --compare-bn``, docs/benchmarks.md):
    mobilenetv1 1.37x, mobilenetv2 1.40x the images/s.
    Where the time goes (tf.profiler op self-time, mobilenetv2 training step): Keras' BN ops
    (Mul, Mean, Sum, SquaredDifference, Tile, Sub, AddV2) take ~25% of op time, the fused
    FusedBatchNormV3 + FusedBatchNormGradV3 ~13%; convolutions (oneDNN) are the rest of the
    bulk; Relu6 + Relu6Grad ~1-2%, Pad < 1%. (Inference is left to nets/fold.py, which removes
    the BN altogether.) oneDNN is not a cause of slowness: with TF_ENABLE_ONEDNN_OPTS=0 the mobilenetv2 step takes
    8.5 s (Keras BN) and 7.4 s (fused) CPU time.

    Semantics kept from Keras 3 BatchNormalization (keras/src/layers/normalization/
    batch_normalization.py):

    - training mode only when ``training`` is true *and* the layer is trainable (a frozen BN
      layer runs in inference mode);
    - ``moving = moving * momentum + batch_stat * (1 - momentum)`` with the *biased* batch
      variance (``tf.nn.moments``). FusedBatchNormV3 returns the Bessel-corrected variance
      (x n/(n-1)) for the running average, so it is multiplied back by (n-1)/n;
    - float16/bfloat16 inputs are normalised in float32 and the output cast to the layer's
      compute dtype (the weights are float32, ``autocast=False``).

    The fused path is taken for 4-D NHWC inputs normalised over the last axis with no mask, on
    the TensorFlow backend, without renorm/synchronized, and epsilon >= 1.001e-5 (cuDNN's floor,
    which ``tf.nn.fused_batch_norm`` would otherwise silently raise); anything else falls back to
    ``super().call`` and is exactly Keras' layer.

    :func:`use_fused_batchnorm` converts a built functional model (keras.applications backbones
    make their own BN layers) into a copy whose BatchNormalization layers are all this
    one, with the same names, configs and weights.
    """

    def _fused_ok(self, inputs, mask) -> bool:
        if mask is not None or keras.backend.backend() != "tensorflow":
            return False
        if self.renorm or self.synchronized or self.epsilon < _MIN_FUSED_EPSILON:
            return False
        ndim = len(inputs.shape)
        if ndim != 4 or self.axis not in (-1, ndim - 1):
            return False
        return keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16", "float32")

    def call(self, inputs, training=None, mask=None):
        # Inference stays Keras' own x * scale + offset. The fused kernel would let oneDNN's
        # remapper fuse Conv2D + FusedBatchNormV3 + activation, but TF 2.21 has no CPU kernel
        # for that fusion with Mish (CSPDarknet53: "Fusion is not implemented:
        # [FusedBatchNorm,Mish]"), and inference runs the folded model anyway (nets/fold.py).
        if not (training and self.trainable) or not self._fused_ok(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, tf.float32)  # as Keras: statistics and normalisation in float32
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        empty = tf.constant([], tf.float32)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel's batch variance is Bessel-corrected (x n/(n-1), n = N*H*W; the
        # CPU kernel uses n/max(n-1, 1)); Keras averages the biased one.
        shape = tf.shape(x)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = variance * (tf.maximum(n - 1.0, 1.0) / tf.maximum(n, 1.0))
        mean = tf.stop_gradient(mean)
        variance = tf.stop_gradient(variance)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def _is_plain_bn(layer) -> bool:
    return (isinstance(layer, keras.layers.BatchNormalization)
            and not isinstance(layer, BatchNormalization))


def fused_clone_function(layer):
    """``clone_function`` for keras.models.clone_model: BatchNormalization layers become
    BatchNormalization (same name and config), every other layer is cloned as Keras
    does by default. Weights are not copied (clone_model never does); see
    :func:`use_fused_batchnorm`.
    """
    if _is_plain_bn(layer):
        return BatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def keras_clone_function(layer):
    """The inverse of :func:`fused_clone_function`: the project's fused BN becomes Keras' own."""
    if isinstance(layer, BatchNormalization):
        return layers.BatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def _all_layers(model):
    """Every layer of ``model`` and of its nested models, inputs excepted (clone_model renames
    unnamed inputs)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def use_keras_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with Keras' own BatchNormalization in place of the fused one: the
    "before" model of benchmarks/latency.py and benchmarks/train_step.py (``--compare-bn``)."""
    return _convert_batchnorm(model, keras_clone_function)


def use_fused_batchnorm(model: keras.Model, input_tensors=None) -> keras.Model:
    """A copy of functional ``model`` whose keras.layers.BatchNormalization layers are all the
    fused :class:`BatchNormalization`.

    Names, configs (momentum, epsilon, trainable, ...), and all weights are kept; nested
    functional/sequential models are converted too. The original model is left unchanged.
    ``input_tensors``: call the copy's layers on these Keras tensors (keras.models.clone_model's
    argument), so that its layers join the caller's graph (a keras.applications backbone
    built on the detector's input).
    """
    return _convert_batchnorm(model, fused_clone_function, input_tensors)


def _convert_batchnorm(model, clone_function, input_tensors=None):
    clone = keras.models.clone_model(model, input_tensors=input_tensors, clone_function=clone_function,
                                     recursive=True)
    src = list(_all_layers(model))
    dst = list(_all_layers(clone))
    if [l.name for l in src] != [l.name for l in dst]:
        raise RuntimeError(f"{model.name}: the batch-norm conversion's clone does not have the model's layers")
    for a, b in zip(src, dst):
        if isinstance(a, keras.Model):
            continue
        if a.weights:
            b.set_weights(a.get_weights())
        b.trainable = a.trainable
    return clone


# ----------------------------------------------------------------------------- blocks

def _regularizer(weight_decay: float):
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def apply_conv_bn(x, filters: int, kernel_size=1, strides=1, activation="relu6", groups=1,
                  weight_decay: float = 0.0, *, name: str, zero_gamma: bool = False):
    """Conv2D (no bias) + BatchNorm + activation (None for linear).

    ``zero_gamma``: start the BN scale at 0, so a residual branch ending here is the identity
    at initialisation (Goyal et al. 2017); use it with ``activation=None``, since relu6 has
    no gradient at exactly 0 and the branch would stay dead.
    """
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", groups=groups,
                      use_bias=False, kernel_regularizer=_regularizer(weight_decay),
                      name=f"{name}_conv")(x)
    x = BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM,
                                  gamma_initializer="zeros" if zero_gamma else "ones", name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def apply_dw_bn(x, kernel_size=3, strides=1, activation="relu6", weight_decay: float = 0.0, *, name: str):
    """DepthwiseConv2D (no bias) + BatchNorm + activation (None for linear)."""
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                               depthwise_regularizer=_regularizer(weight_decay),
                               name=f"{name}_dwconv")(x)
    x = BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_dwbn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_dw{activation}")(x)
    return x


def apply_dwsep(x, filters: int, kernel_size=3, strides=1, activation="relu6",
                weight_decay: float = 0.0, *, name: str):
    """Depthwise-separable conv: depthwise kxk + BN + act, then 1x1 conv + BN + act."""
    x = apply_dw_bn(x, kernel_size, strides, activation, weight_decay, name=name)
    return apply_conv_bn(x, filters, 1, 1, activation, weight_decay=weight_decay, name=f"{name}_pw")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (MobileNet/GhostNet convention)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new
