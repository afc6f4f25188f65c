"""yolo_body: YOLOv4-lite = backbone (by name) + SPP + PANet neck + three YOLO heads.

The neck is YOLOv4's, with every 3x3 conv replaced by a depthwise-separable one (the
"lite" part, as in the MobileNet-YOLOv4 family):

    C5 -> 1x1, dwsep3x3, 1x1 -> SPP(13, 9, 5) -> 1x1, dwsep3x3, 1x1 = P5
    P5 -> 1x1 + up x2 ++ 1x1(C4) -> five-conv = P4      (top-down)
    P4 -> 1x1 + up x2 ++ 1x1(C3) -> five-conv = P3
    P3 -> head (stride 8)
    P3 -> dwsep3x3/2 ++ P4 -> five-conv = N4 -> head (stride 16)   (bottom-up)
    N4 -> dwsep3x3/2 ++ P5 -> five-conv = N5 -> head (stride 32)

five-conv = 1x1, dwsep3x3, 1x1, dwsep3x3, 1x1. Neck widths 128/256/512 (x alpha). Heads:
dwsep3x3 then a 1x1 conv (with bias) to anchors_per_scale*(5+C) channels. Outputs are
ordered stride 32, 16, 8 (see utils/targets.py for what the channels mean).

Neck shortcut (``neck_shortcut=True``, the default; beyond the reference design): in each
five-conv block the two (dwsep3x3, 1x1) pairs are residual branches, x + BN(1x1(dwsep(x))),
their last 1x1 linear with its BN scale starting at 0 (Goyal et al. 2017), so at
initialisation each block is its first 1x1 conv. Why: without it the path from a stride-32
head back to the backbone is ~45 conv-BN-ReLU layers with no skip, where batch norm makes
gradients grow layer by layer (Yang et al. 2019): at initialisation the backbone's first conv
got ~10^5 times the gradient norm of the heads (~3x10^3 with the shortcut), and trained from
scratch on the demo set the model learned almost nothing in 300 steps (val mAP@0.5 0.018;
with the shortcut 0.319 at the same budget: benchmarks/recipe_ablation.py). Same parameters
and nearly the same FLOPs; ``neck_shortcut=False`` builds the plain reference neck.
"""
from __future__ import annotations

import keras
from keras import layers

from nets.backbones import build_backbone, check_alpha
from nets.layers import apply_conv_bn, apply_dwsep, make_divisible
from nets.widths import check_neck_width, effective_neck_width

ACTIVATION = "relu6"
OUTPUT_NAMES = ("head_p5_out", "head_p4_out", "head_p3_out")  # strides 32, 16, 8


def neck_widths(alpha: float) -> tuple[int, int, int]:
    """Neck widths for strides 8, 16, 32: 128/256/512 scaled by alpha (min 16, /8)."""
    return tuple(max(16, make_divisible(c * alpha, 8)) for c in (128, 256, 512))


def _five_conv(x, filters, wd, name, shortcut=True):
    x = apply_conv_bn(x, filters, 1, activation=ACTIVATION, weight_decay=wd, name=f"{name}_c1")
    for a, b in (("c2", "c3"), ("c4", "c5")):
        y = apply_dwsep(x, filters * 2, activation=ACTIVATION, weight_decay=wd, name=f"{name}_{a}")
        if shortcut:
            y = apply_conv_bn(y, filters, 1, activation=None, weight_decay=wd, name=f"{name}_{b}", zero_gamma=True)
            x = layers.Add(name=f"{name}_{b}_add")([x, y])
        else:
            x = apply_conv_bn(y, filters, 1, activation=ACTIVATION, weight_decay=wd, name=f"{name}_{b}")
    return x


def _spp(x, name):
    pools = [layers.MaxPooling2D(k, strides=1, padding="same", name=f"{name}_pool{k}")(x) for k in (13, 9, 5)]
    return layers.Concatenate(name=f"{name}_concat")(pools + [x])


def _head(x, filters, out_channels, wd, name):
    x = apply_dwsep(x, filters, activation=ACTIVATION, weight_decay=wd, name=f"{name}_dwsep")
    reg = keras.regularizers.L2(wd) if wd else None
    return layers.Conv2D(out_channels, 1, padding="same", use_bias=True, kernel_regularizer=reg,
                         name=f"{name}_out")(x)


def yolo_body(input_shape, num_classes: int, backbone: str = "mobilenetv2", alpha: float | None = 1.0,
              anchors_per_scale: int = 3, weight_decay: float = 5e-4, backbone_weights=None,
              neck_shortcut: bool = True, neck_width: float | None = None, **backbone_options) -> keras.Model:
    """Build the detector: backbone by name + SPP + PANet neck + three YOLO heads.

    Args:
        input_shape: (H, W) or (H, W, 3); H and W positive multiples of 32, square or not.
        num_classes: number of object classes (>= 1).
        backbone: a registered backbone name (``nets.backbones.available_backbones()``).
        alpha: width multiplier of the backbone and the neck (None: the family's default);
            an alpha the family does not have is a ValueError listing the valid ones.
        anchors_per_scale: anchors per head (3 with the project's 9 anchors).
        weight_decay: L2 on kernels inside the model, for a plain Keras optimizer; train.py
            passes 0 and decays through AdamW/SGD instead (the L2 sum is ~25x the loss).
        backbone_weights: None/"none" (random), "imagenet" (keras.applications families,
            downloaded once) or the path of a backbone ``.weights.h5`` file.
        neck_shortcut: residual five-conv blocks (module docstring; why: from-scratch
            training learned 0.018 mAP@0.5 in 300 steps without it, 0.319 with it).
        neck_width: width multiplier of the neck and heads alone (128/256/512 channels times
            it, :func:`neck_widths`); None: the same as ``alpha``. The neck computes most of
            the FLOPs of every light backbone (76% for shufflenetv1 at 416), so a narrower neck
            on a full-width backbone is the cheapest way to a faster detector.
        **backbone_options: family options, e.g. ``groups`` of shufflenetv1.

    Returns:
        A functional keras.Model named ``yolov4lite_<backbone>`` with one input ("image": RGB
        floats in [0, 255]; each backbone normalises inside the model) and three outputs
        ordered stride 32, 16, 8, each (H/s, W/s, anchors_per_scale * (5 + num_classes)).
    """
    h, w = int(input_shape[0]), int(input_shape[1])
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ValueError(f"input sides must be positive multiples of 32, got {h}x{w}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    alpha = check_alpha(backbone, alpha)
    wd = float(weight_decay)
    out_ch = int(anchors_per_scale) * (5 + int(num_classes))
    c8, c16, c32 = neck_widths(effective_neck_width(
        alpha, None if neck_width is None else check_neck_width(neck_width)))

    inputs = keras.Input((h, w, 3), name="image")
    feat3, feat4, feat5 = build_backbone(backbone, inputs, alpha=alpha, weights=backbone_weights,
                                         **backbone_options)

    # stride 32: 1x1, dwsep, 1x1, SPP, 1x1, dwsep, 1x1
    x = apply_conv_bn(feat5, c32, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c1")
    x = apply_dwsep(x, c32 * 2, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c2")
    x = apply_conv_bn(x, c32, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c3")
    x = _spp(x, "spp")
    x = apply_conv_bn(x, c32, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c4")
    x = apply_dwsep(x, c32 * 2, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c5")
    p5 = apply_conv_bn(x, c32, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p5_c6")

    # top-down path
    up = apply_conv_bn(p5, c16, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p5_up")
    up = layers.UpSampling2D(2, name="neck_p5_upsample")(up)
    lat = apply_conv_bn(feat4, c16, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p4_lateral")
    p4 = _five_conv(layers.Concatenate(name="neck_p4_concat")([lat, up]), c16, wd, "neck_p4", neck_shortcut)

    up = apply_conv_bn(p4, c8, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p4_up")
    up = layers.UpSampling2D(2, name="neck_p4_upsample")(up)
    lat = apply_conv_bn(feat3, c8, 1, activation=ACTIVATION, weight_decay=wd, name="neck_p3_lateral")
    p3 = _five_conv(layers.Concatenate(name="neck_p3_concat")([lat, up]), c8, wd, "neck_p3", neck_shortcut)

    # bottom-up path
    down = apply_dwsep(p3, c16, strides=2, activation=ACTIVATION, weight_decay=wd, name="neck_p3_down")
    n4 = _five_conv(layers.Concatenate(name="neck_n4_concat")([down, p4]), c16, wd, "neck_n4", neck_shortcut)
    down = apply_dwsep(n4, c32, strides=2, activation=ACTIVATION, weight_decay=wd, name="neck_n4_down")
    n5 = _five_conv(layers.Concatenate(name="neck_n5_concat")([down, p5]), c32, wd, "neck_n5", neck_shortcut)

    out3 = _head(p3, c8 * 2, out_ch, wd, "head_p3")
    out4 = _head(n4, c16 * 2, out_ch, wd, "head_p4")
    out5 = _head(n5, c32 * 2, out_ch, wd, "head_p5")
    return keras.Model(inputs, [out5, out4, out3], name=f"yolov4lite_{backbone.lower()}")


def backbone_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that belong to the backbone (everything before the neck)."""
    return [l.name for l in model.layers
            if l.weights and not l.name.startswith(("neck_", "spp_", "head_"))]
