"""Backbones from keras.applications: MobileNetV1/V2/V3 (large, small) and DenseNet121.

We take these from keras.applications rather than writing them: the library has the
reference architectures and, above all, their ImageNet weights. Each builder

- applies the normalisation the ImageNet weights expect, as a named Keras layer
  (``<name>_preprocess``: Rescaling / Normalization with fixed constants, or MobileNetV3's
  own ``include_preprocessing`` Rescaling), so ``inputs`` are RGB floats in [0, 255] and the
  pre-processing is saved with the model (no Lambda);
- builds the application with ``include_top=False, input_tensor=...`` so its layers live in
  the caller's graph, and returns ``model.get_layer(tap).output`` for the three taps in
  ``TAPS`` (strides 8, 16, 32);
- renames the application's few auto-named, weightless layers/ops (``re_lu_7``,
  ``activation_3``, ``add_2``, ``zero_padding2d`` ...) to ``<name>_<kind>[_k]``, so every
  layer name is stable from one build to the next and can never collide with the neck
  (``neck_``/``head_``/``spp_``). The documented keras.applications names (the taps included)
  are kept.

ImageNet weights (``weights="imagenet"``) come through keras' downloader into the Keras cache
(``$KERAS_HOME/models``, default ``~/.keras/models``). keras.applications stores no-top weights
trained at a few square sizes: MobileNetV1 128/160/192/224, MobileNetV2 96/128/160/192/224,
MobileNetV3 224 only; DenseNet121 has one file. When the input is square and one of those
sizes, keras picks that file, otherwise the 224x224 one. Convolution weights do not depend
on the input size, so any size with sides a multiple of 32, square or not, fine-tunes from
them: keras' generic "input_shape is undefined or non-square" warning is therefore silenced
and the file choice logged at INFO level. Every registered alpha has ImageNet weights. When
the download fails (no network, bad cached file) a single :class:`BackboneWeightsError`
says which file, why, and how to go on.
"""
from __future__ import annotations

import logging
import re
import warnings

import keras
from keras import layers
# The exact rule keras uses to auto-name unnamed ops (snake_case of the class name); only
# used to recognise such names, so that we rename exactly those.
from keras.src.utils.naming import to_snake_case

from nets.backbones import BackboneWeightsError, register
from nets.layers import BN_MOMENTUM, use_fused_batchnorm

__all__ = [
    "TAPS", "PREPROCESS_SUFFIX", "BackboneWeightsError",
    "build_mobilenetv1", "build_mobilenetv2", "build_mobilenetv3large",
    "build_mobilenetv3small", "build_densenet121",
]

log = logging.getLogger(__name__)

PREPROCESS_SUFFIX = "preprocess"

# Pyramid taps (C3, C4, C5 at strides 8, 16, 32), by documented keras.applications names.
TAPS = {
    # Last layer at each stride: the ReLU6 output of the last pointwise conv before the
    # next stride-2 depthwise (256/512/1024 channels at alpha 1). The Keras YOLOv4 MobileNet
    # bodies (keras-YOLOv3-model-set, bubbliiiing's mobilenet-yolov4-lite) tap the same.
    "mobilenetv1": ("conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"),
    # Last layer at each stride: the expansion ReLU6 of the block that downsamples next
    # (192/576 channels), then the final 1x1 conv's ReLU6 (1280). These are the taps of
    # keras-YOLOv3-model-set's YOLOv4(-lite) MobileNetV2 body and of the Keras
    # SSD/DeepLab/U-Net MobileNetV2 encoders. (bubbliiiing's PyTorch version taps the
    # narrower block outputs 32/96/320 instead.)
    "mobilenetv2": ("block_6_expand_relu", "block_13_expand_relu", "out_relu"),
    # taps="projected": the linear outputs of the last block at each stride (32/96/320
    # channels), as bubbliiiing's mobilenet-yolov4 (tf2 and PyTorch) tap them; the final
    # 1x1 conv to 1280 channels is then not part of the detector. See build_mobilenetv2.
    "mobilenetv2_projected": ("block_5_add", "block_12_add", "block_16_project_BN"),
    # Output of the last inverted-residual block at each stride (40/112/160 channels), as
    # in bubbliiiing's mobilenet-yolov4-lite for MobileNetV3. The literal last layers at
    # strides 8 and 16 are the next block's expansion hard-swish, which keras leaves
    # unnamed ("activation_N": not a documented, stable name), and at stride 32 the 960-ch
    # final conv, 6x wider than the block output for little gain in a detector neck.
    "mobilenetv3large": ("expanded_conv_5_add", "expanded_conv_11_add", "expanded_conv_14_add"),
    # Same rule for the small model: last block output at each stride (24/48/96 channels).
    "mobilenetv3small": ("expanded_conv_2_add", "expanded_conv_7_add", "expanded_conv_10_add"),
    # DenseNet is pre-activation: a dense block's concat is un-normalised, and the
    # transition that follows applies BN+ReLU before halving channels and pooling. So the
    # last normalised full-width map at each stride is the transition's ReLU (512, 1024)
    # and, at stride 32, the final BN+ReLU "relu" (1024). keras-YOLOv3-model-set's
    # DenseNet YOLO body taps the same three layers.
    "densenet121": ("pool3_relu", "pool4_relu", "relu"),
}

_PAPERS = {
    "mobilenetv1": "Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks for "
                   "Mobile Vision Applications, arXiv:1704.04861",
    "mobilenetv2": "Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
                   "arXiv:1801.04381",
    "mobilenetv3large": "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244",
    "mobilenetv3small": "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244",
    "densenet121": "Huang et al. 2017, Densely Connected Convolutional Networks, arXiv:1608.06993",
}

# Square input sizes for which keras.applications has ImageNet no-top weights (else 224).
_IMAGENET_SIZES = {
    "mobilenetv1": (128, 160, 192, 224),
    "mobilenetv2": (96, 128, 160, 192, 224),
    "mobilenetv3large": (224,),
    "mobilenetv3small": (224,),
}

_HOW_TO_GO_ON = ("To go on, use no pretrained weights (--backbone-weights none), or pass a local "
                 "backbone weights file (--backbone-weights PATH)")


# --------------------------------------------------------------------------- checks

def _check_inputs(name: str, inputs) -> None:
    shape = getattr(inputs, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"backbone {name!r} needs a Keras tensor of RGB images (batch, H, W, 3); "
                         f"got shape {shape}")
    bad = [side for side in shape[1:3] if side is not None and side % 32]
    if bad:
        raise ValueError(f"backbone {name!r}: input sides must be multiples of 32 so that the "
                         f"stride-8/16/32 maps are exactly H/8.., H/32; got {shape[1]}x{shape[2]}")


def _check_weights(name: str, weights):
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet"
    raise ValueError(f"backbone {name!r}: weights must be None or 'imagenet', got {weights!r}; "
                     "load a local weights file through "
                     "nets.backbones.build_backbone(weights=PATH)")


# --------------------------------------------------------------------------- helpers

def _download_failure(exc: BaseException):
    """``(fname, origin, cache_dir)`` when ``exc`` came out of keras' downloader, else None.

    keras.utils.get_file raises a bare ``Exception("URL fetch failure ...")`` offline (or a
    ValueError for a corrupted file), so the type cannot tell us; the traceback can.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "get_file":
            loc = frame.f_locals
            return loc.get("fname"), loc.get("origin"), loc.get("datadir")
        tb = tb.tb_next
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _build_application(name: str, app_fn, weights, **kwargs) -> keras.Model:
    """``app_fn(include_top=False, weights=weights, **kwargs)`` with one clear download error."""
    try:
        with warnings.catch_warnings():
            # Documented behaviour (module docstring): other sizes load the 224 weights.
            warnings.filterwarnings("ignore", message=r"`input_shape` is undefined or non-square")
            return app_fn(include_top=False, weights=weights, **kwargs)
    except Exception as exc:  # the downloader raises bare Exception; re-raise anything else
        failure = _download_failure(exc) if weights == "imagenet" else None
        if failure is None:
            raise
        fname, origin, cache_dir = failure
        fname = fname or "its ImageNet weights file"
        cause = _one_line(exc)
        where = f" from {origin}" if origin and origin not in cause else ""
        cache = (f", or copy {fname} (from a machine with network access) into {cache_dir}"
                 if cache_dir else "")
        alpha = kwargs.get("alpha", 1.0)
        raise BackboneWeightsError(
            f"backbone {name!r} (alpha {alpha:g}): could not download the ImageNet weights "
            f"file {fname}{where}: {cause}. {_HOW_TO_GO_ON}{cache}.") from None


def _auto_name_pattern(op) -> re.Pattern:
    # Keras names an unnamed op snake_case(class name), plus "_N" after the first one.
    return re.compile(re.escape(to_snake_case(type(op).__name__)) + r"(_\d+)?")


def _stabilise_names(model: keras.Model, inputs, name: str) -> None:
    """Rename the application's auto-named, weightless ops to ``<name>_<kind>[_k]``.

    Auto names come from a session-wide counter (``re_lu_37`` after other models were
    built), so they change between builds; renamed in graph order they do not. Ops upstream
    of ``inputs`` (the caller's) are left alone.
    """
    sources = keras.utils.get_source_inputs(inputs)
    upstream = set()  # the caller's InputLayer is skipped below in any case
    if not any(src is inputs for src in sources):
        upstream = {id(op) for op in keras.Model(sources, inputs).operations}
    counts: dict[str, int] = {}
    for op in model.operations:
        if id(op) in upstream or isinstance(op, layers.InputLayer) or getattr(op, "weights", None):
            continue
        if not _auto_name_pattern(op).fullmatch(op.name):
            continue
        kind = to_snake_case(type(op).__name__)
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        op.name = f"{name}_{kind}" if k == 0 else f"{name}_{kind}_{k}"


def _apply_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """L2 on the application's conv kernels (keras.applications has no regularizer option).

    Set on the variables (what ``model.losses`` reads) and on the layer attributes (what
    ``get_config`` saves), so a saved model reloads with the same penalty.
    """
    if not weight_decay:
        return
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            layer.depthwise_regularizer = keras.regularizers.L2(weight_decay)
            layer.kernel.regularizer = layer.depthwise_regularizer
        elif isinstance(layer, layers.Conv2D):
            layer.kernel_regularizer = keras.regularizers.L2(weight_decay)
            layer.kernel.regularizer = layer.kernel_regularizer


def _log_weights_choice(name: str, inputs, weights) -> None:
    sizes = _IMAGENET_SIZES.get(name)
    if weights != "imagenet" or sizes is None:
        return
    h, w = inputs.shape[1], inputs.shape[2]
    used = h if (h == w and h in sizes) else 224
    log.info("%s: loading the ImageNet weights trained at %dx%d for a %sx%s input", name, used,
             used, h, w)


def _set_bn_momentum(model: keras.Model) -> None:
    """Give the application's BatchNormalization layers the project's momentum (0.97).

    MobileNetV2/V3 use 0.999, a moving-average horizon of ~1000 steps: trained from scratch
    for a few hundred steps, their moving statistics are still mostly the initial (0, 1), so
    the model evaluates (inference-mode BN) far worse than it trains; one of the causes of
    from-scratch runs scoring mAP@0.5 ~0.001 (README, "Training from scratch"). 0.97 is what every other
    layer of the detector uses (YOLOv5's BN momentum 0.03). The attribute is read in call()
    and saved by get_config, so a reloaded model keeps it.
    """
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM


def _finish(name: str, model: keras.Model, inputs, weight_decay: float, taps: str | None = None):
    _stabilise_names(model, inputs, name)
    _apply_weight_decay(model, weight_decay)
    _set_bn_momentum(model)
    model = _fused_batchnorm(model, inputs)
    return [model.get_layer(tap).output for tap in TAPS[taps or name]]


def _fused_batchnorm(model: keras.Model, inputs) -> keras.Model:
    """The application with the project's fused BatchNormalization (nets/layers.py): the same
    layers, names and weights, on TensorFlow's fused kernel (a training step ~1.4x faster).

    Only when the application starts at the caller's ``inputs`` (the detector's Input): a
    copy that started further up would duplicate the caller's own layers.
    """
    if [id(t) for t in model.inputs] != [id(t) for t in keras.utils.get_source_inputs(inputs)] \
            or not any(t is inputs for t in model.inputs):
        log.info("%s: keeping Keras' BatchNormalization (backbone not built on an Input)", model.name)
        return model
    return use_fused_batchnorm(model, input_tensors=list(model.inputs))


def _rescale_to_unit_range(name: str, inputs):
    # keras.applications.mobilenet(_v2).preprocess_input, mode "tf": x / 127.5 - 1.
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_{PREPROCESS_SUFFIX}")(inputs)


# --------------------------------------------------------------------------- builders

def build_mobilenetv1(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """MobileNetV1 (keras.applications.MobileNet) -> [C3, C4, C5]."""
    name = "mobilenetv1"
    _check_inputs(name, inputs)
    weights = _check_weights(name, weights)
    x = _rescale_to_unit_range(name, inputs)
    _log_weights_choice(name, inputs, weights)
    # input_shape picks the matching-size ImageNet file for square 128..224 inputs.
    model = _build_application(name, keras.applications.MobileNet, weights,
                               input_tensor=x, input_shape=tuple(inputs.shape[1:]), alpha=alpha)
    return _finish(name, model, inputs, weight_decay)


MOBILENETV2_TAPS = ("expanded", "projected")


def build_mobilenetv2(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0,
                      taps: str = "expanded"):
    """MobileNetV2 (keras.applications.MobileNetV2) -> [C3, C4, C5].

    ``taps``: "expanded" taps the expansion ReLU6 of the block that downsamples next and the
    final 1x1 conv (192/576/1280 channels at alpha 1); "projected" taps the linear block
    outputs (32/96/320), 1.05 M parameters and 0.58 GFLOPs (at 416) fewer in the detector.
    """
    name = "mobilenetv2"
    if taps not in MOBILENETV2_TAPS:
        raise ValueError(f"mobilenetv2 taps must be one of {', '.join(MOBILENETV2_TAPS)}, got {taps!r}")
    _check_inputs(name, inputs)
    weights = _check_weights(name, weights)
    x = _rescale_to_unit_range(name, inputs)
    _log_weights_choice(name, inputs, weights)
    # input_shape picks the matching-size ImageNet file for square 96..224 inputs. Only for
    # square inputs: MobileNetV2's input_shape-vs-input_tensor check compares the tensor's H
    # with input_shape's W, so it would reject a non-square input (which gets 224 anyway).
    square = inputs.shape[1] == inputs.shape[2]
    model = _build_application(name, keras.applications.MobileNetV2, weights, input_tensor=x,
                               input_shape=tuple(inputs.shape[1:]) if square else None,
                               alpha=alpha)
    return _finish(name, model, inputs, weight_decay, None if taps == "expanded" else f"{name}_{taps}")


def _build_mobilenetv3(name: str, app_fn, inputs, alpha, weights, weight_decay):
    _check_inputs(name, inputs)
    weights = _check_weights(name, weights)
    _log_weights_choice(name, inputs, weights)
    # include_preprocessing: the application's own Rescaling(1/127.5, offset=-1) first.
    model = _build_application(name, app_fn, weights, input_tensor=inputs, alpha=alpha,
                               include_preprocessing=True)
    rescaling = [layer for layer in model.layers if isinstance(layer, layers.Rescaling)]
    if len(rescaling) != 1:
        raise RuntimeError(f"{name}: expected one preprocessing Rescaling layer in "
                           f"keras.applications, found {len(rescaling)}")
    rescaling[0].name = f"{name}_{PREPROCESS_SUFFIX}"
    return _finish(name, model, inputs, weight_decay)


def build_mobilenetv3large(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """MobileNetV3-Large (keras.applications.MobileNetV3Large) -> [C3, C4, C5]."""
    return _build_mobilenetv3("mobilenetv3large", keras.applications.MobileNetV3Large, inputs,
                              alpha, weights, weight_decay)


def build_mobilenetv3small(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """MobileNetV3-Small (keras.applications.MobileNetV3Small) -> [C3, C4, C5]."""
    return _build_mobilenetv3("mobilenetv3small", keras.applications.MobileNetV3Small, inputs,
                              alpha, weights, weight_decay)


# keras.applications.densenet.preprocess_input, mode "torch": (x / 255 - mean) / std, as
# one Normalization: mean and variance in [0, 255] units.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def build_densenet121(inputs, alpha: float = 1.0, weights=None, *, weight_decay: float = 0.0):
    """DenseNet121 (keras.applications.DenseNet121) -> [C3, C4, C5]. Only alpha 1.0."""
    name = "densenet121"
    if abs(float(alpha) - 1.0) > 1e-9:
        raise ValueError(f"backbone {name!r} has no width multiplier: alpha must be 1.0, "
                         f"got {alpha:g}")
    _check_inputs(name, inputs)
    weights = _check_weights(name, weights)
    x = layers.Normalization(mean=[255.0 * m for m in _TORCH_MEAN],
                             variance=[(255.0 * s) ** 2 for s in _TORCH_STD],
                             name=f"{name}_{PREPROCESS_SUFFIX}")(inputs)
    model = _build_application(name, keras.applications.DenseNet121, weights, input_tensor=x)
    return _finish(name, model, inputs, weight_decay)


register("mobilenetv1", build_mobilenetv1, (0.25, 0.5, 0.75, 1.0), 1.0, keras_applications=True,
         paper=_PAPERS["mobilenetv1"], rank=10)
register("mobilenetv2", build_mobilenetv2, (0.5, 0.75, 1.0, 1.3), 1.0, keras_applications=True,
         paper=_PAPERS["mobilenetv2"], rank=10)
register("mobilenetv3large", build_mobilenetv3large, (0.75, 1.0), 1.0, keras_applications=True,
         paper=_PAPERS["mobilenetv3large"], rank=10)
register("mobilenetv3small", build_mobilenetv3small, (0.75, 1.0), 1.0, keras_applications=True,
         paper=_PAPERS["mobilenetv3small"], rank=10)
register("densenet121", build_densenet121, (1.0,), 1.0, keras_applications=True,
         paper=_PAPERS["densenet121"], rank=10)
