"""ShuffleNetV1 and ShuffleNetV2 backbones, written from their papers.

* ShuffleNetV1: Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional
  Neural Network for Mobile Devices", CVPR 2018 (Table 1, Fig. 2).
* ShuffleNetV2: Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient
  CNN Architecture Design", ECCV 2018 (Table 5, Fig. 3).

keras.applications has neither, so they are written here. Both return the outputs of stages
2, 3 and 4 (strides 8, 16, 32); the classifier head (and V2's conv5) is left out.

Grouped 1x1 convolutions use ``keras.layers.Conv2D(groups=g)``: under TensorFlow 2.21 it runs
on CPU, forward and backward (also under XLA), and matches a per-group NumPy reference
(checked in tests/test_backbones_shufflenet.py), so no slice-and-concatenate emulation
is needed.
"""
from __future__ import annotations

from keras import layers

from nets.backbones import register
from nets.layers import ChannelShuffle, ChannelSlice, apply_conv_bn, apply_dw_bn

STAGE_REPEATS = (4, 8, 4)  # units in stages 2, 3, 4 (both papers)
STEM_CHANNELS = 24  # conv1 of both papers

# ShuffleNetV1 Table 1: output channels of stages 2, 3, 4 for 1x, by number of groups g.
V1_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
V1_SCALES = (0.5, 1.0, 1.5, 2.0)

# ShuffleNetV2 Table 5: output channels of stages 2, 3, 4 by scale.
V2_CHANNELS = {
    0.5: (48, 96, 192),
    1.0: (116, 232, 464),
    1.5: (176, 352, 704),
    2.0: (244, 488, 976),
}


def _stem(inputs, prefix: str, weight_decay: float):
    """[0, 255] RGB -> [-1, 1], conv1 3x3/2 (24) + BN + ReLU, maxpool 3x3/2 (stride 4)."""
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{prefix}_rescale")(inputs)
    x = apply_conv_bn(x, STEM_CHANNELS, 3, 2, "relu", weight_decay=weight_decay, name=f"{prefix}_conv1")
    return layers.MaxPooling2D(3, 2, padding="same", name=f"{prefix}_pool1")(x)


# --------------------------------------------------------------------------- ShuffleNetV1

def shufflenet_v1_channels(groups: int = 3, scale: float = 1.0) -> tuple[int, int, int]:
    """Output channels of stages 2-4 for ``groups`` and ``scale`` (Table 1 times scale).

    The bottleneck is a quarter of a unit's output and is split into ``groups``, so stage 2 is
    rounded to the nearest multiple of ``4 * groups`` (exact for every Table 1 entry and most
    scales; e.g. g=2 at 0.5x gives 104 instead of 100); stages 3 and 4 double it, as in Table 1.
    """
    if groups not in V1_CHANNELS:
        raise ValueError(f"ShuffleNetV1 groups must be one of {sorted(V1_CHANNELS)}, got {groups!r}")
    if not any(abs(float(scale) - s) < 1e-9 for s in V1_SCALES):
        raise ValueError(f"ShuffleNetV1 scale must be one of {V1_SCALES}, got {scale!r}")
    unit = 4 * groups
    c2 = max(unit, int(V1_CHANNELS[groups][0] * float(scale) / unit + 0.5) * unit)  # half rounds up
    return c2, 2 * c2, 4 * c2


def apply_shufflev1_unit(x, out_channels: int, strides: int, groups: int, group_first: bool = True,
                         weight_decay: float = 0.0, *, name: str):
    """One ShuffleNetV1 unit (Fig. 2b for stride 1, Fig. 2c for stride 2).

    1x1 group conv (bottleneck = out/4) + BN + ReLU -> channel shuffle -> 3x3 depthwise
    (stride s) + BN -> 1x1 group conv + BN; stride 1 adds the identity, stride 2 concatenates a
    3x3/2 average pool of the input (so the branch outputs out - in channels); then ReLU.
    ``group_first=False`` makes the first 1x1 ungrouped (stage 2's first unit, paper sec. 3.3).
    """
    in_channels = x.shape[-1]
    bottleneck = out_channels // 4
    branch_out = out_channels - in_channels if strides == 2 else out_channels
    if strides == 1 and in_channels != out_channels:
        raise ValueError(f"{name}: a stride-1 unit needs in == out channels, got {in_channels} -> {out_channels}")
    g1 = groups if group_first else 1
    y = apply_conv_bn(x, bottleneck, 1, 1, "relu", groups=g1, weight_decay=weight_decay, name=f"{name}_gconv1")
    if g1 > 1:
        # After an ungrouped conv a fixed channel permutation changes nothing the conv could
        # not learn, so the shuffle is only inserted after a grouped conv.
        y = ChannelShuffle(groups, name=f"{name}_shuffle")(y)
    y = apply_dw_bn(y, 3, strides, None, weight_decay=weight_decay, name=name)
    y = apply_conv_bn(y, branch_out, 1, 1, None, groups=groups, weight_decay=weight_decay, name=f"{name}_gconv2")
    if strides == 1:
        y = layers.Add(name=f"{name}_add")([x, y])
    else:
        shortcut = layers.AveragePooling2D(3, 2, padding="same", name=f"{name}_avgpool")(x)
        y = layers.Concatenate(name=f"{name}_concat")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_relu")(y)


def build_shufflenetv1(inputs, alpha: float = 1.0, weights=None, *, groups: int = 3, weight_decay: float = 0.0):
    """ShuffleNetV1 ``alpha``x with ``groups`` groups -> [C3, C4, C5] (stages 2, 3, 4).

    Layer names start with ``shufflev1_``; the taps are ``shufflev1_stage{2,3,4}_unit{n}_relu``.
    """
    if weights is not None:
        raise ValueError("shufflenetv1 has no downloadable weights; pass weights=None")
    channels = shufflenet_v1_channels(groups, alpha)
    x = _stem(inputs, "shufflev1", weight_decay)
    feats = []
    for stage, (out_c, repeats) in enumerate(zip(channels, STAGE_REPEATS), start=2):
        for unit in range(1, repeats + 1):
            x = apply_shufflev1_unit(
                x, out_c, 2 if unit == 1 else 1, groups,
                group_first=not (stage == 2 and unit == 1), weight_decay=weight_decay,
                name=f"shufflev1_stage{stage}_unit{unit}")
        feats.append(x)
    return feats


# --------------------------------------------------------------------------- ShuffleNetV2

def shufflenet_v2_channels(scale: float = 1.0) -> tuple[int, int, int]:
    """Output channels of stages 2-4 at ``scale`` (Table 5)."""
    for key, value in V2_CHANNELS.items():
        if abs(float(scale) - key) < 1e-9:
            return value
    raise ValueError(f"ShuffleNetV2 scale must be one of {tuple(V2_CHANNELS)}, got {scale!r}")


def apply_shufflev2_unit(x, out_channels: int, strides: int, weight_decay: float = 0.0, *, name: str):
    """One ShuffleNetV2 unit (Fig. 3c for stride 1, Fig. 3d for stride 2).

    Stride 1: channel split; the first half passes unchanged, the second goes through
    1x1 conv BN ReLU, 3x3 dw BN, 1x1 conv BN ReLU. Stride 2: no split; the left branch is
    3x3 dw/2 BN, 1x1 conv BN ReLU and the right branch 1x1, 3x3 dw/2, 1x1, each giving out/2
    channels. Both: concatenate, then channel shuffle with 2 groups.
    """
    in_channels = x.shape[-1]
    half = out_channels // 2
    if strides == 1:
        if in_channels != out_channels or in_channels % 2:
            raise ValueError(f"{name}: a stride-1 unit needs in == out (even) channels, "
                             f"got {in_channels} -> {out_channels}")
        left = ChannelSlice(0, half, name=f"{name}_split_left")(x)
        right = ChannelSlice(half, in_channels, name=f"{name}_split_right")(x)
    else:
        left = apply_dw_bn(x, 3, strides, None, weight_decay=weight_decay, name=f"{name}_left")
        left = apply_conv_bn(left, half, 1, 1, "relu", weight_decay=weight_decay, name=f"{name}_left_pw")
        right = x
    right = apply_conv_bn(right, half, 1, 1, "relu", weight_decay=weight_decay, name=f"{name}_right_pw1")
    right = apply_dw_bn(right, 3, strides, None, weight_decay=weight_decay, name=f"{name}_right")
    right = apply_conv_bn(right, half, 1, 1, "relu", weight_decay=weight_decay, name=f"{name}_right_pw2")
    y = layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(y)


def build_shufflenetv2(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """ShuffleNetV2 ``alpha``x -> [C3, C4, C5] (stages 2, 3, 4; conv5 omitted).

    Layer names start with ``shufflev2_``; the taps are ``shufflev2_stage{2,3,4}_unit{n}_shuffle``.
    """
    if weights is not None:
        raise ValueError("shufflenetv2 has no downloadable weights; pass weights=None")
    channels = shufflenet_v2_channels(alpha)
    x = _stem(inputs, "shufflev2", weight_decay)
    feats = []
    for stage, (out_c, repeats) in enumerate(zip(channels, STAGE_REPEATS), start=2):
        for unit in range(1, repeats + 1):
            x = apply_shufflev2_unit(x, out_c, 2 if unit == 1 else 1, weight_decay=weight_decay,
                                     name=f"shufflev2_stage{stage}_unit{unit}")
        feats.append(x)
    return feats


register("shufflenetv1", build_shufflenetv1, V1_SCALES, 1.0, keras_applications=False,
         paper="Zhang et al., ShuffleNet, CVPR 2018 (arXiv:1707.01083)", rank=30)
register("shufflenetv2", build_shufflenetv2, tuple(V2_CHANNELS), 1.0, keras_applications=False,
         paper="Ma et al., ShuffleNet V2, ECCV 2018 (arXiv:1807.11164)", rank=30)
