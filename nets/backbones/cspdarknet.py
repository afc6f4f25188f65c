"""CSPDarknet53, the YOLOv4 backbone: the heavy reference the lite backbones are compared to.

Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection", 2020
(arXiv:2004.10934), built on Wang et al., "CSPNet: A New Backbone that can Enhance Learning
Capability of CNN", CVPRW 2020. Layout follows the darknet ``yolov4.cfg``: a 3x3 conv (32)
and five CSP stages with (1, 2, 8, 8, 4) residual blocks; every conv is Conv + BN + Mish
(Keras' built-in "mish" activation, which serialises by name).

Downsampling uses "same" padding (TensorFlow pads bottom/right) instead of darknet's
top/left zero padding; with no pretrained darknet weights to import this is only a
half-pixel alignment convention.
"""
from __future__ import annotations

from keras import layers

from nets.backbones import register
from nets.layers import apply_conv_bn

PREFIX = "csp"
STEM_CHANNELS = 32
STAGE_CHANNELS = (64, 128, 256, 512, 1024)
STAGE_BLOCKS = (1, 2, 8, 8, 4)
ALPHAS = (0.5, 1.0)


def apply_csp_stage(x, filters: int, blocks: int, narrow: bool = True, weight_decay: float = 0.0, *, name: str):
    """One CSP stage: 3x3/2 downsample, two 1x1 branches, residual blocks on one, concat, 1x1.

    ``narrow=False`` keeps both branches at full width (YOLOv4's first stage); otherwise they
    take half of ``filters``. A residual block is 1x1 (filters/2) then 3x3 (branch width), added
    to its input.
    """
    branch = filters // 2 if narrow else filters

    def conv(t, f, k, s, n):
        return apply_conv_bn(t, f, k, s, "mish", weight_decay=weight_decay, name=f"{name}_{n}")

    x = conv(x, filters, 3, 2, "down")
    shortcut = conv(x, branch, 1, 1, "short")
    main = conv(x, branch, 1, 1, "main")
    for i in range(1, blocks + 1):
        y = conv(main, filters // 2, 1, 1, f"block{i}_conv1")
        y = conv(y, branch, 3, 1, f"block{i}_conv2")
        main = layers.Add(name=f"{name}_block{i}_add")([main, y])
    main = conv(main, branch, 1, 1, "trans")
    x = layers.Concatenate(name=f"{name}_concat")([main, shortcut])
    return conv(x, filters, 1, 1, "out")


def build_cspdarknet53(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """CSPDarknet53 -> [C3, C4, C5] = outputs of the 256-, 512- and 1024-channel stages.

    ``alpha`` 0.5 halves every width (C3/C4/C5 = 128/256/512). Layer names start with
    ``csp_``; the taps are ``csp_stage{3,4,5}_out_mish``.
    """
    if weights is not None:
        raise ValueError("cspdarknet53 has no downloadable weights; pass weights=None")
    if not any(abs(float(alpha) - a) < 1e-9 for a in ALPHAS):
        raise ValueError(f"cspdarknet53 alpha must be one of {ALPHAS}, got {alpha!r}")
    x = layers.Rescaling(1.0 / 255.0, name=f"{PREFIX}_rescale")(inputs)  # darknet feeds [0, 1]
    x = apply_conv_bn(x, int(STEM_CHANNELS * alpha), 3, 1, "mish", weight_decay=weight_decay,
                      name=f"{PREFIX}_stem")
    feats = []
    for stage, (filters, blocks) in enumerate(zip(STAGE_CHANNELS, STAGE_BLOCKS), start=1):
        x = apply_csp_stage(x, int(filters * alpha), blocks, narrow=stage > 1,
                            weight_decay=weight_decay, name=f"{PREFIX}_stage{stage}")
        if stage >= 3:
            feats.append(x)
    return feats


register("cspdarknet53", build_cspdarknet53, ALPHAS, 1.0, keras_applications=False,
         paper="Bochkovskiy et al., YOLOv4, 2020 (arXiv:2004.10934); Wang et al., CSPNet, CVPRW 2020", rank=90)
