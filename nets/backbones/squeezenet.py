"""SqueezeNet v1.1 backbone, written from the paper (not in keras.applications).

Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer: "SqueezeNet: AlexNet-level accuracy with
50x fewer parameters and <0.5MB model size", 2016, https://arxiv.org/abs/1602.07360; the v1.1
layout is the one in the authors' repo (forresti/SqueezeNet, SqueezeNet_v1.1):

    conv1 3x3/2 64, maxpool 3x3/2, fire2 (16, 64, 64), fire3, maxpool 3x3/2,
    fire4 (32, 128, 128), fire5, maxpool 3x3/2, fire6 (48, 192, 192), fire7,
    fire8 (64, 256, 256), fire9                      (fire = squeeze, expand 1x1, expand 3x3)

Changes and additions beyond the paper, all for use as a detector backbone:

- BatchNorm after every conv (conv without bias -> BN -> ReLU). The original has none; the
  detector is trained from scratch here and does not train reliably without it.
- v1.1 ends at stride 16, so a stride-32 stage is added: maxpool 3x3/2, fire10 and fire11,
  both (80, 320, 320), i.e. 640 output channels.
- Convs and pools use padding="same", so every stride is exact for inputs whose sides are
  multiples of 32 (the original uses valid padding and ceil-mode pools).
- ``bypass=True`` adds the paper's simple bypass (sec. 6): an identity shortcut (Add) around
  every fire module whose input and output channels match, i.e. fire3, fire5, fire7, fire9
  and, by the same rule, the added fire11.
- ``alpha`` scales every channel count (conv1 and all squeeze/expand convs), rounded to a
  multiple of 8.

Returned maps ``[C3, C4, C5]`` (channels at alpha 1; half at 0.5):
fire5 output (stride 8, 256 ch), fire9 output (stride 16, 512 ch), fire11 output (stride 32,
640 ch).
"""
from __future__ import annotations

from keras import layers

from nets.backbones import register
from nets.layers import apply_conv_bn, make_divisible

PREFIX = "squeeze"
PAPER = ("Iandola et al., SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and "
         "<0.5MB model size, 2016 (v1.1 layout; BN and a stride-32 stage added)")
ALPHAS = (0.5, 1.0)

# (name, squeeze, expand1x1, expand3x3); "pool" is a 3x3/2 max pool.
SQUEEZENET_LAYOUT = (
    "pool",
    ("fire2", 16, 64, 64), ("fire3", 16, 64, 64),
    "pool",
    ("fire4", 32, 128, 128), ("fire5", 32, 128, 128),   # -> C3, stride 8
    "pool",
    ("fire6", 48, 192, 192), ("fire7", 48, 192, 192),
    ("fire8", 64, 256, 256), ("fire9", 64, 256, 256),   # -> C4, stride 16
    "pool",                                             # added: stride-32 stage
    ("fire10", 80, 320, 320), ("fire11", 80, 320, 320),  # -> C5, stride 32
)
TAPS = ("fire5", "fire9", "fire11")


def _channels(c: int, alpha: float) -> int:
    return make_divisible(c * alpha, 8)


def apply_fire(x, squeeze: int, expand1x1: int, expand3x3: int, bypass: bool = False,
               weight_decay: float = 0.0, *, name: str):
    """Fire module (paper sec. 3.2) with BN: squeeze 1x1 + ReLU, [expand 1x1, expand 3x3] + ReLU, concat.

    With ``bypass`` and equal input/output channels, the input is added to the output
    (``{name}_bypass``, paper sec. 6 simple bypass).
    """
    s = apply_conv_bn(x, squeeze, 1, activation="relu", weight_decay=weight_decay,
                      name=f"{name}_squeeze")
    e1 = apply_conv_bn(s, expand1x1, 1, activation="relu", weight_decay=weight_decay,
                       name=f"{name}_expand1x1")
    e3 = apply_conv_bn(s, expand3x3, 3, activation="relu", weight_decay=weight_decay,
                       name=f"{name}_expand3x3")
    y = layers.Concatenate(name=f"{name}_concat")([e1, e3])
    if bypass and x.shape[-1] == y.shape[-1]:
        y = layers.Add(name=f"{name}_bypass")([x, y])
    return y


def build_squeezenet(inputs, alpha: float = 1.0, weights=None, *, bypass: bool = False,
                     weight_decay: float = 0.0):
    """SqueezeNet v1.1 (+BN, +stride-32 stage) maps ``[C3, C4, C5]`` of ``inputs`` (RGB in [0, 255]).

    C3 = fire5 (stride 8), C4 = fire9 (stride 16), C5 = fire11 (stride 32, added stage);
    256/512/640 channels at alpha 1, 128/256/320 at alpha 0.5. ``bypass=True`` is the
    simple-bypass variant. ``weights`` must be None (the registry loads local files itself).
    """
    if weights is not None:
        raise ValueError(f"squeezenet has no downloadable weights; got weights={weights!r}")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{PREFIX}_rescale")(inputs)
    x = apply_conv_bn(x, _channels(64, alpha), 3, 2, activation="relu",
                      weight_decay=weight_decay, name=f"{PREFIX}_conv1")
    feats, pools = [], 0
    for item in SQUEEZENET_LAYOUT:
        if item == "pool":
            pools += 1
            x = layers.MaxPooling2D(3, 2, padding="same", name=f"{PREFIX}_pool{pools}")(x)
            continue
        fire, sq, e1, e3 = item
        x = apply_fire(x, _channels(sq, alpha), _channels(e1, alpha), _channels(e3, alpha),
                       bypass, weight_decay, name=f"{PREFIX}_{fire}")
        if fire in TAPS:
            feats.append(x)
    return feats


def build_squeezenet_bypass(inputs, alpha: float = 1.0, weights=None, **options):
    """``build_squeezenet`` with the simple bypass (registered as ``squeezenet_bypass``)."""
    if "bypass" in options:
        raise ValueError("squeezenet_bypass always has the bypass; use 'squeezenet' for none")
    return build_squeezenet(inputs, alpha, weights, bypass=True, **options)


register("squeezenet", build_squeezenet, ALPHAS, 1.0, keras_applications=False, paper=PAPER, rank=40)
register("squeezenet_bypass", build_squeezenet_bypass, ALPHAS, 1.0, keras_applications=False,
         paper=PAPER + "; simple bypass (sec. 6)", rank=40)
