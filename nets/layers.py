"""Small building blocks shared by the backbones and the neck.

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
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM,
                                  gamma_initializer="zeros" if zero_gamma else "ones", name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def apply_dw_bn(x, kernel_size=3, strides=1, activation="relu6", weight_decay: float = 0.0, *, name: str):
    """DepthwiseConv2D (no bias) + BatchNorm + activation (None for linear)."""
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                               depthwise_regularizer=_regularizer(weight_decay),
                               name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_dwbn")(x)
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
