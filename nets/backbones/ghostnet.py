"""GhostNet backbone, written from the paper (not in keras.applications).

Han, Wang, Tian, Guo, Xu, Xu: "GhostNet: More Features from Cheap Operations", CVPR 2020,
https://arxiv.org/abs/1911.11907, with the details the paper leaves out (kernel sizes, SE
reduction, channel rounding) taken from the authors' code, huawei-noah/ghostnet
(``ghostnet_pytorch/ghostnet.py``).

The builder returns the outputs of the last bottleneck at strides 8, 16 and 32:

    C3 = bottleneck 5  (stride  8), make_divisible(40 * alpha, 4) channels
    C4 = bottleneck 12 (stride 16), make_divisible(112 * alpha, 4) channels
    C5 = bottleneck 16 (stride 32), make_divisible(160 * alpha, 4) channels

The classifier head (1x1 conv to 960, global pool, 1x1 conv to 1280, FC) is omitted: the
detector's neck takes the three maps above.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from nets.backbones import register
from nets.layers import (BN_EPS, BN_MOMENTUM, BatchNormalization, ChannelSlice, _regularizer, apply_conv_bn,
                         apply_dw_bn, make_divisible)

PREFIX = "ghost"
PAPER = "Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020"
ALPHAS = (0.5, 1.0, 1.3)

# Table 1 of the paper, one row per ghost bottleneck: (kernel, expansion, out, SE, stride).
# The kernel column is not printed in Table 1; it is taken from the authors' code (3 or 5,
# the MobileNetV3-Large pattern the paper follows).
GHOSTNET_CONFIG = (
    (3, 16, 16, False, 1),
    (3, 48, 24, False, 2),
    (3, 72, 24, False, 1),
    (5, 72, 40, True, 2),
    (5, 120, 40, True, 1),    # -> C3, stride 8
    (3, 240, 80, False, 2),
    (3, 200, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 480, 112, True, 1),
    (3, 672, 112, True, 1),   # -> C4, stride 16
    (5, 672, 160, True, 2),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),   # -> C5, stride 32
)
# 0-based indices of the bottlenecks whose outputs are C3, C4, C5.
TAP_BLOCKS = (4, 10, 15)


def apply_ghost_module(x, out_channels: int, ratio: int = 2, dw_kernel: int = 3, relu: bool = True,
                       weight_decay: float = 0.0, *, name: str):
    """Ghost module (paper sec. 3.1, Fig. 2b): ``out_channels`` maps from a few "intrinsic" ones.

    A primary 1x1 conv + BN (+ ReLU) gives ``init = ceil(out_channels / ratio)`` maps; a cheap
    ``dw_kernel`` depthwise conv + BN (+ ReLU) with depth multiplier ``ratio - 1`` makes
    ``init * (ratio - 1)`` "ghost" maps from them; both are concatenated and the first
    ``out_channels`` channels kept (one too many when ``out_channels`` is odd).
    Layer names: ``{name}_primary_*``, ``{name}_cheap_*``, ``{name}_concat``, ``{name}_slice``.
    """
    if ratio < 2:
        raise ValueError(f"{name}: ghost module ratio must be >= 2, got {ratio}")
    act = "relu" if relu else None
    init_channels = math.ceil(out_channels / ratio)
    primary = apply_conv_bn(x, init_channels, 1, activation=act, weight_decay=weight_decay,
                            name=f"{name}_primary")
    if ratio == 2:
        cheap = apply_dw_bn(primary, dw_kernel, activation=act, weight_decay=weight_decay,
                            name=f"{name}_cheap")
    else:  # apply_dw_bn has no depth multiplier; same layers and names, multiplier ratio - 1
        cheap = layers.DepthwiseConv2D(dw_kernel, padding="same", depth_multiplier=ratio - 1,
                                       use_bias=False,
                                       depthwise_regularizer=_regularizer(weight_decay),
                                       name=f"{name}_cheap_dwconv")(primary)
        cheap = BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_cheap_dwbn")(cheap)
        if act:
            cheap = layers.Activation(act, name=f"{name}_cheap_dw{act}")(cheap)
    out = layers.Concatenate(name=f"{name}_concat")([primary, cheap])
    return ChannelSlice(0, out_channels, name=f"{name}_slice")(out)


def apply_squeeze_excite(x, weight_decay: float = 0.0, *, name: str):
    """SE as in the GhostNet code: avg pool, 1x1 to make_divisible(c/4, 4) + ReLU, 1x1 + hard sigmoid."""
    channels = x.shape[-1]
    reduced = make_divisible(channels * 0.25, 4)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = layers.Conv2D(reduced, 1, kernel_regularizer=_regularizer(weight_decay),
                      name=f"{name}_reduce")(s)
    s = layers.Activation("relu", name=f"{name}_relu")(s)
    s = layers.Conv2D(channels, 1, kernel_regularizer=_regularizer(weight_decay),
                      name=f"{name}_expand")(s)
    # keras' hard_sigmoid is relu6(x + 3) / 6, the gate of the official code.
    s = layers.Activation("hard_sigmoid", name=f"{name}_hsigmoid")(s)
    return layers.Multiply(name=f"{name}_multiply")([x, s])


def apply_ghost_bottleneck(x, hidden: int, out_channels: int, kernel: int, stride: int, se: bool,
                           weight_decay: float = 0.0, *, name: str):
    """Ghost bottleneck (paper Fig. 3).

    ghost module (ReLU) -> [depthwise kxk stride 2 + BN, stride 2 only] -> [SE] -> ghost module
    (linear), plus the input, or a depthwise kxk/stride + BN + 1x1 conv + BN projection of it
    when the shape changes. Layer names ``{name}_ghost1_*``, ``_down_*``, ``_se_*``,
    ``_ghost2_*``, ``_shortcut_*``, ``_add``.
    """
    in_channels = x.shape[-1]
    y = apply_ghost_module(x, hidden, relu=True, weight_decay=weight_decay, name=f"{name}_ghost1")
    if stride > 1:
        y = apply_dw_bn(y, kernel, stride, activation=None, weight_decay=weight_decay,
                        name=f"{name}_down")
    if se:
        y = apply_squeeze_excite(y, weight_decay, name=f"{name}_se")
    y = apply_ghost_module(y, out_channels, relu=False, weight_decay=weight_decay,
                           name=f"{name}_ghost2")
    if in_channels == out_channels and stride == 1:
        shortcut = x
    else:
        shortcut = apply_dw_bn(x, kernel, stride, activation=None, weight_decay=weight_decay,
                               name=f"{name}_shortcut")
        shortcut = apply_conv_bn(shortcut, out_channels, 1, activation=None,
                                 weight_decay=weight_decay, name=f"{name}_shortcut_pw")
    return layers.Add(name=f"{name}_add")([y, shortcut])


def build_ghostnet(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """GhostNet feature maps ``[C3, C4, C5]`` (strides 8, 16, 32) of ``inputs`` (RGB in [0, 255]).

    Channels are ``make_divisible(c * alpha, 4)`` for C3, C4, C5 = 40, 112, 160 at alpha 1
    (20/56/80 at 0.5, 52/144/208 at 1.3). The 960-channel 1x1 conv and the classifier head of
    the paper are not built. ``weights`` must be None (no published Keras weights; the
    registry loads local weight files itself).
    """
    if weights is not None:
        raise ValueError(f"ghostnet has no downloadable weights; got weights={weights!r}")
    # The official code normalises with ImageNet mean/std; [-1, 1] is the same scale and
    # needs no constants (training here is from scratch).
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{PREFIX}_rescale")(inputs)
    x = apply_conv_bn(x, make_divisible(16 * alpha, 4), 3, 2, activation="relu",
                      weight_decay=weight_decay, name=f"{PREFIX}_stem")
    feats = []
    for i, (kernel, expansion, out, se, stride) in enumerate(GHOSTNET_CONFIG):
        x = apply_ghost_bottleneck(x, make_divisible(expansion * alpha, 4),
                                   make_divisible(out * alpha, 4), kernel, stride, se,
                                   weight_decay, name=f"{PREFIX}_b{i}")
        if i in TAP_BLOCKS:
            feats.append(x)
    return feats


register("ghostnet", build_ghostnet, ALPHAS, 1.0, keras_applications=False, paper=PAPER, rank=20)
