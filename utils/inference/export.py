"""Export a ``.keras`` detector for deployment: SavedModel, TFLite (fp32, fp16, int8), ONNX.

    export_detector("runs/train/exp/best.keras", "runs/export/exp",
                    ["saved_model", "tflite-fp32", "tflite-fp16", "tflite-int8", "onnx"],
                    end_to_end=True, calib_root="../shared/data/BCCD", calib_split="train")

Each artifact gets a metadata JSON beside it (``<artifact>.json``, see utils/inference/runtime.py,
which loads every format back): class names, anchors, input size and pre-processing
(letterbox with grey 128, RGB, [0, 255]), input dtype and quantization, output names,
layout and order, variant, NMS settings, size and sha256, and the parity measured right
after export against the Keras model on the same images.

Variants:
  raw         the yolo body: 3 heads, stride 32, 16, 8, (B, H/s, W/s, 3*(5+C)) logits;
              decode + NMS run outside (utils/decode.postprocess, the Detector).
  end_to_end  body + utils.decode.YoloPostprocess in the graph: outputs ``boxes`` (B, max_det,
              4) xyxy network-input pixels, ``scores`` (B, max_det), ``classes`` int32,
              ``num_valid`` int32 (B,). Thresholds and NMS kind are fixed at export.

What each format carries (TF 2.21, tf2onnx 1.17, LiteRT 2.x; checked by tests/test_export.py):
  SavedModel   everything (both NMS kinds).
  ONNX         both NMS kinds: tf2onnx maps CombinedNonMaxSuppression to ONNX
               NonMaxSuppression, and the DIoU while_loop to an ONNX Loop. Grouped Conv2D
               (ShuffleNetV1) through onnx_traceable: ONNX Conv with group; Normalization
               (DenseNet121's preprocessing) with its mean and variance as initializers.
  TFLite fp32/fp16   DIoU-NMS only: its while_loop converts to builtin ops (WHILE, GATHER,
               SELECT_V2, ...). IoU-NMS is tf.image.combined_non_max_suppression, which is no
               TFLite builtin; it needs SELECT_TF_OPS (the Flex delegate), which the Python
               LiteRT runtimes (ai_edge_litert, tf.lite.Interpreter of TF 2.21) do not link, so
               such a file would not run here: that variant is not written.
  TFLite int8  raw heads only: the post-training quantizer fails on the DIoU loop (it tries
               to quantize the loop body: 'tfl.unpack op requires the same element type'),
               and quantized box/score arithmetic would change the detections anyway.
               Mish (CSPDarknet53): Keras' Mish lowers to log(1 + exp(x)), whose int8 EXP
               rounds to zero. The int8 file gets QuantizableMish (int8_quantizable), whose
               intermediates are bounded; the default file keeps its ops in float32
               (selective quantization, like the heads; XNNPACK runs them in float), the
               full-integer one quantizes them.
When an end-to-end variant cannot be written, the raw one is, and its metadata and the
summary say why. End-to-end exports default to DIoU-NMS so that every format carries it.

Quantization: fp16 = weights stored as float16 (float32 input and compute); int8 =
post-training quantization calibrated on letterboxed training images (the project's
ValDataset pre-processing), int8 weights (per channel) and activations, in two modes
(``int8_heads``):
  "float" (default)  the three output convolutions stay float32 (:func:`_int8_float_heads`):
              float32 [0, 255] input, float32 heads; within 1 point of the float model's mAP.
  "int8"      full-integer, for integer-only accelerators: **uint8 input** (the model takes
              [0, 255] pixels, so the input scale is 1 and zero point 0: the letterboxed uint8
              canvas is fed as it is) and **int8 outputs** (the runtime dequantizes them with
              the scale and zero point recorded in the file and in the metadata).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
import shutil
import tempfile
import time
import warnings

import numpy as np

from utils.checkpoint import atomic_path
from utils.inference.runtime import E2E_OUTPUTS, file_digest, litert_interpreter, meta_path, open_model
from utils.targets import ANCHOR_MASKS, STRIDES

FORMATS = ("saved_model", "tflite-fp32", "tflite-fp16", "tflite-int8", "onnx")
DEFAULT_FORMATS = ("saved_model", "tflite-fp32", "tflite-fp16", "onnx")
E2E_NMS_DEFAULT = "diou"
INT8_HEADS = ("float", "int8")  # int8 TFLite: output convs in float32 (default) or quantized too
CHECK_IMAGES = 4
RAW_LAYOUT = ("(B, H/s, W/s, A*(5+C)) float32 logits; reshape to (B, H/s, W/s, A, 5+C) = "
              "[tx, ty, tw, th, t_obj, t_cls...]; cx = (2*sigmoid(tx) - 0.5 + gx)/gw, "
              "cy = (2*sigmoid(ty) - 0.5 + gy)/gh, w = (2*sigmoid(tw))^2 * anchor_w/W, "
              "h = (2*sigmoid(th))^2 * anchor_h/H, confidence = sigmoid(t_obj) * sigmoid(t_cls) "
              "(utils/decode.py)")


class ExportError(ValueError):
    """An export that cannot be made: bad arguments, missing calibration data, a converter failure."""


@dataclasses.dataclass
class ExportResult:
    format: str            # one of FORMATS
    variant: str           # "raw" or "end_to_end"
    path: str              # the artifact (file or SavedModel folder)
    bytes: int
    seconds: float         # conversion time
    check: dict            # parity against the Keras model (see _parity)
    note: str = ""         # why a requested variant was not written, etc.

    @property
    def meta_path(self) -> str:
        return meta_path(self.path)


# ----------------------------------------------------------------------------- names

def artifact_name(stem: str, fmt: str, variant: str = "raw") -> str:
    """File (or folder) name of one export: best_saved_model, best_fp16.tflite, best_e2e.onnx, ..."""
    e2e = "_e2e" if variant == "end_to_end" else ""
    if fmt == "saved_model":
        return f"{stem}{e2e}_saved_model"
    if fmt.startswith("tflite-"):
        return f"{stem}{e2e}_{fmt.split('-', 1)[1]}.tflite"
    if fmt == "onnx":
        return f"{stem}{e2e}.onnx"
    raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def _e2e_unsupported(fmt: str, nms: str) -> str:
    """Why ``fmt`` cannot carry the end-to-end graph with ``nms`` ('' when it can)."""
    if fmt == "tflite-int8":
        return ("int8 TFLite is exported with raw heads only: the post-training quantizer fails on the "
                "DIoU-NMS while_loop (it quantizes the loop body) and quantized decode/NMS arithmetic would change "
                "the detections; run decode + NMS outside (utils/decode.postprocess, the Detector)")
    if fmt.startswith("tflite") and nms == "iou":
        return ("IoU-NMS (tf.image.combined_non_max_suppression) is no TFLite builtin and needs the Flex delegate "
                "(SELECT_TF_OPS), which the Python LiteRT runtimes do not link; export with --nms diou for an "
                "end-to-end TFLite model")
    return ""


# ----------------------------------------------------------------------------- calibration

def calibration_dataset(root, split, count: int, input_hw, class_names, seed: int = 0, *, fmt=None, images=None,
                        record=None):
    """Letterboxed calibration images from one split of a dataset in any format (a VOC root, a
    COCO .json or folder with ``images`` its image folder, a YOLO data.yaml or folder; ``fmt``
    detected when None; utils.data.formats): :func:`calibration_from_records` over its
    records. A split the files do not name is made with the training run's ratios and seed
    (``record``: the model's ``data`` metadata), else 0.8/0.1/0.1 and 0."""
    from utils.data.formats import data_spec, split_settings

    if not os.path.exists(root):
        raise ExportError(f"calibration root not found: {root}")
    spec = data_spec(data=root, fmt=fmt, images=images, class_names=class_names, log=None)
    ratios, split_seed = split_settings(record, log=None)
    records = spec.load(split, ratios, split_seed, check_images=False, log=None)
    return calibration_from_records(records, count, input_hw, seed)


def calibration_from_records(records, count: int, input_hw, seed: int = 0):
    """A utils.data.dataset.ValDataset (batch 1) over a seeded choice of ``count`` records: the
    images go through the project's validation pre-processing (letterbox, grey 128)."""
    from utils.data.dataset import ValDataset

    count = int(count)
    if count < 1:
        raise ExportError(f"--calib-images must be >= 1, got {count}")
    if not records:
        raise ExportError("no images to calibrate int8 with")
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    return ValDataset([records[i] for i in sorted(order)], input_hw=input_hw, batch_size=1)


def _image_batches(images):
    """Yield (1, H, W, 3) float32 batches from a ValDataset-like sequence or an (N, H, W, 3) array."""
    if isinstance(images, np.ndarray):
        for im in images:
            yield im[None].astype(np.float32)
        return
    for i in range(len(images)):
        batch = images[i]
        batch = batch[0] if isinstance(batch, tuple) else batch
        for im in np.asarray(batch):
            yield im[None].astype(np.float32)


def _pin_input_range(batches):
    """Set two pixels of the first calibration image to 0 and 255.

    The converter takes the uint8 input's scale from the calibration minimum and maximum;
    pinning them to [0, 255] makes it scale 1, zero point 0, so the letterboxed uint8 canvas
    is fed unchanged (images whose brightest pixel is 253 would otherwise give 253/255).
    """
    for i, batch in enumerate(batches):
        if i == 0:
            batch = batch.copy()
            batch[0, 0, 0, :], batch[0, 0, 1, :] = 0.0, 255.0
        yield batch


def _check_batch(calibration, input_hw, count=CHECK_IMAGES):
    """The images parity is measured on: the first calibration images, else seeded noise."""
    if calibration is not None:
        ims = []
        for b in _image_batches(calibration):
            ims.append(b[0])
            if len(ims) == count:
                break
        if ims:
            return np.stack(ims)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, *input_hw, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- writers

def _write_saved_model(model, path):
    """``model.export(format="tf_saved_model")`` into a fresh folder, swapped in when complete."""
    path = os.fspath(path).rstrip("/\\")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        model.export(os.path.join(tmp, "m"), format="tf_saved_model", verbose=False)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.replace(path, os.path.join(old, "m"))
            shutil.rmtree(old, ignore_errors=True)
        os.replace(os.path.join(tmp, "m"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _tflite_bytes(saved_model_dir, precision: str, calibration=None, int8_heads: str = "float",
                  keep_float=None, report: dict | None = None) -> bytes:
    """Convert the SavedModel's serving signature to TFLite at ``precision`` (fp32, fp16, int8).

    Converted from the one SavedModel rather than with ``model.export(format="litert")``,
    which writes and reloads a fresh SavedModel on every call (~10-20 s each for yolo_body).
    ``int8_heads`` (int8 only): "float" keeps the three output convolutions in float32
    (:func:`_int8_float_heads`); "int8" quantizes everything (uint8 input, int8 outputs).
    ``keep_float``: in the "float" int8 mode, a predicate on TFLite tensor names whose tensors
    stay float32 too (:func:`_int8_float_heads`); ``report`` (a dict) gets ``float_tensors``,
    how many it matched.
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None:
            raise ExportError("tflite-int8 needs calibration images (--calib-root)")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([b] for b in _pin_input_range(_image_batches(calibration)))
        if int8_heads == "float":
            return _guard(lambda: _int8_float_heads(conv, keep_float, report), saved_model_dir, "int8 (float heads)")
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.int8
    elif precision != "fp32":
        raise ExportError(f"unknown TFLite precision {precision!r}")
    return _guard(conv.convert, saved_model_dir, precision)


def _guard(convert, saved_model_dir, what) -> bytes:
    try:
        return convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError/RuntimeError
        raise ExportError(f"TFLite {what} conversion of {saved_model_dir} failed: {type(exc).__name__}: "
                          f"{str(exc).strip()[-800:]}") from None


def _in_layer_scope(tensor_name: str, names, others) -> bool:
    """Whether a TFLite tensor belongs to one of the layers ``names``: a scope segment of its name
    (the first of a fused ``a;b`` name) is the layer's name, or that name with TensorFlow's
    ``_<n>`` suffix when the segment is not itself the name of one of the ``others`` layers."""
    for seg in tensor_name.split(";")[0].split("/")[:-1]:
        if seg in names:
            return True
        base = re.fullmatch(r"(.+)_\d+", seg)
        if base and base.group(1) in names and seg not in others:
            return True
    return False


def _int8_float_heads(conv, keep_float=None, report: dict | None = None) -> bytes:
    """int8 everywhere except the three output convolutions (and ``keep_float``'s tensors), which stay float32.

    Why: a raw head tensor carries box offsets (|t| ~ 1, where 0.05 is a few percent of a box
    side) and objectness/class logits (far negative on background) in one int8 tensor with one
    scale: on the BCCD model 0.096, 0.107 and 0.60 per step for strides 8, 16, 32 (the stride-32
    head's calibrated range reaches -134), so the boxes lose their precision there. On BCCD
    test (benchmarks/export_map.py, README) full-integer int8 was 1.96 points of mAP@0.5 below
    the float model, float heads 0.54 (COCO mAP: 5.0 and 0.55 points below); on a second
    trained model -1.03 and +0.64 points.
    The output convs are 1x1 with A*(5+C) filters, <1% of the FLOPs: the speed is int8's.

    TFLite's selective quantization is the library way: QuantizationDebugger calibrates once
    and re-quantizes with ``denylisted_nodes`` (op output tensor names), here the model's
    output tensors, i.e. the ops that produce them. The model then takes float32 [0, 255]
    input (quantized by its first op) and returns float32 heads.

    ``keep_float(tensor_name)`` picks more op outputs to keep float32: export_model's picks
    every tensor in the name scope of a Mish activation (:func:`mish_layers`; TFLite names a
    tensor ``<model>/<layer>_<n>/<op>``, :func:`_in_layer_scope`). Why: XNNPACK takes float
    EXP/LOG into its one partition, not int8 ones. Measured together (three rounds) on a 6-conv
    network at 160x160, 2 cores shared with a test run (docs/benchmarks.md, "heavy
    references"): int8 with ReLU 7.4-7.8 ms; QuantizableMish kept float 15.7-18.4 ms;
    QuantizableMish in int8 43.7-75.0 ms (each correlates 0.9998-0.9999 with the float model);
    Keras' Mish kept float 12.9-13.4 ms, but its float EXP overflows to inf on activations
    above ~88, and on such a network (the test's) the quantizer crashed the process (TF 2.21).
    """
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the debugger runs tf.lite.Interpreter, which warns it is deprecated
        debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=conv.representative_dataset)
        calibrated = litert_interpreter()(model_content=debugger.calibrated_model)
        outputs = [d["name"] for d in calibrated.get_output_details()]
        picked = [] if keep_float is None else [
            name for op in calibrated._get_ops_details() for t in op["outputs"]
            if keep_float(name := calibrated._get_tensor_details(t, 0)["name"])]
        if report is not None:
            report["float_tensors"] = len(picked)
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=outputs + picked)
        return debugger.get_nondebug_quantized_model()


def _swap_layers(model, replacement):
    """``model`` with each of its own layers for which ``replacement(layer)`` gives a new layer
    swapped for it (same name, same weights); every other layer is shared with ``model``, not
    copied. ``model`` itself when nothing is swapped. Only the model's own layers are looked
    at, not those inside a nested model (the project's models are flat)."""
    import keras

    swaps = {layer.name: new for layer in model.layers if (new := replacement(layer)) is not None}
    if not swaps:
        return model
    clone = keras.models.clone_model(model, clone_function=lambda layer: swaps.get(layer.name, layer))
    for name in swaps:
        clone.get_layer(name).set_weights(model.get_layer(name).get_weights())
    # Keras exports only a model that has been called; a symbolic call is enough (a swapped-in
    # layer need not run on this device: TensorFlow cannot run a TraceableGroupedConv2D on CPU)
    clone(keras.tree.map_structure(lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype), model.input))
    return clone


def onnx_traceable(model):
    """``model`` with the layers tf2onnx cannot convert as they are swapped for equivalents it
    can (nets/layers.py says why for each): every grouped Conv2D as a TraceableGroupedConv2D,
    every Normalization as a TraceableNormalization (:func:`_swap_layers`; _write_onnx refuses
    what would still not convert)."""
    from keras import layers

    from nets.layers import TraceableGroupedConv2D, TraceableNormalization

    def replacement(layer):
        if isinstance(layer, (TraceableGroupedConv2D, TraceableNormalization)):
            return None
        if isinstance(layer, layers.Conv2D) and layer.groups > 1:
            return TraceableGroupedConv2D.from_config(layer.get_config())
        if isinstance(layer, layers.Normalization):
            return TraceableNormalization.from_config(layer.get_config())
        return None
    return _swap_layers(model, replacement)


def mish_layers(model) -> list[str]:
    """Names of ``model``'s own Mish ``Activation`` layers (the project's blocks put every
    activation in one; a layer's own ``activation="mish"`` argument is not looked at)."""
    from keras import layers

    return [layer.name for layer in model.layers
            if isinstance(layer, layers.Activation) and getattr(layer.activation, "__name__", "") == "mish"]


def int8_quantizable(model):
    """``model`` with every Mish activation (:func:`mish_layers`) as a QuantizableMish
    (nets/layers.py: Keras' Mish quantizes to zeros), for the int8 TFLite file; ``model``
    itself when it has none."""
    from nets.layers import QuantizableMish

    names = set(mish_layers(model))

    def replacement(layer):
        return QuantizableMish(name=layer.name, dtype=layer.dtype_policy) if layer.name in names else None
    return _swap_layers(model, replacement)


def _onnx_nodes(graph):
    """Every node of an ONNX graph, those of its subgraphs (Loop, If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_nodes(sub)


def _write_onnx(model, path) -> dict:
    """``model.export(format="onnx")`` (tf2onnx under Keras) to ``path``, atomically; a graph
    tf2onnx could not convert completely is an ExportError, not a file ONNX Runtime refuses.
    Returns the file's metadata: tf2onnx version and ONNX opset."""
    try:
        import onnx
        import tf2onnx
    except ImportError as exc:
        raise ExportError(f"ONNX export needs tf2onnx and onnx (pip install tf2onnx onnx): {exc}") from None
    with atomic_path(path, suffix=".onnx") as tmp:
        try:
            onnx_traceable(model).export(tmp, format="onnx", verbose=False)
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
            raise ExportError(f"{path}: ONNX conversion failed: {type(exc).__name__}: {str(exc).strip()[-800:]}") from None
        proto = onnx.load(tmp, load_external_data=False)
        # tf2onnx logs an op it cannot convert and writes it as is
        unconverted = sorted({n.op_type for n in _onnx_nodes(proto.graph)
                              if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})
        if unconverted:
            raise ExportError(f"{path}: ONNX conversion left TensorFlow ops tf2onnx cannot convert: {', '.join(unconverted)}")
        # a tensor the graph captured (not a variable) comes out as one more input
        stored = {t.name for t in proto.graph.initializer}
        inputs = [t.name for t in proto.graph.input if t.name not in stored]
        if len(inputs) != len(model.inputs):
            why = ": a layer's constants were captured as inputs" if len(inputs) > len(model.inputs) else ""
            raise ExportError(f"{path}: ONNX conversion gave {len(inputs)} inputs ({', '.join(inputs)}) for a model with "
                              f"{len(model.inputs)}{why}")
    return {"tf2onnx": tf2onnx.__version__,
            "onnx_opset": int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))}


# ----------------------------------------------------------------------------- metadata

def _base_meta(meta: dict, model) -> dict:
    import keras
    import tensorflow as tf

    hw = [int(v) for v in meta["input_shape"][:2]]
    class_names = [str(c) for c in meta["class_names"]]
    aps = int(meta.get("anchors_per_scale", 3))
    # the F1-best score stored at the end of training: predict.py's default --conf for the export too
    conf = {"conf_threshold": meta["conf_threshold"]} if meta.get("conf_threshold") else {}
    return {
        "class_names": class_names, "num_classes": len(class_names),
        "anchors": np.asarray(meta["anchors"], float).reshape(-1, 2).tolist(),
        "anchor_masks": ANCHOR_MASKS, "strides": STRIDES, "anchors_per_scale": aps,
        "input_shape": hw, "backbone": meta.get("backbone"), "alpha": meta.get("alpha"),
        **({"neck_width": meta["neck_width"]} if meta.get("neck_width") is not None else {}),
        **({"data": meta["data"]} if meta.get("data") else {}),  # the training run's dataset and split (eval_map.py)
        "model_name": model.name,
        "preprocessing": {"resize": "letterbox (aspect kept, centred, utils/letterbox.py)", "pad_value": 128,
                          "color": "RGB", "range": [0, 255], "layout": "NHWC",
                          "normalisation": "inside the model (each backbone's Rescaling layer); do not divide by 255",
                          "postprocess_boxes": "unletterbox: x_src = (x_net - dx) * w / nw, y likewise"},
        "exporter": {"tensorflow": tf.__version__, "keras": keras.__version__},
        **conf,
    }


def _io_meta(rt, variant: str, postprocess: dict | None) -> dict:
    """Input and output description read back from the written artifact through its runtime."""
    hw = rt.input_hw
    inp = {"name": getattr(rt, "_input_name", "image"), "shape": [None, hw[0], hw[1], 3],
           "dtype": np.dtype(rt.input_dtype).name}
    if np.dtype(rt.input_dtype) == np.uint8:
        inp["quantization"] = list(rt.meta.get("input", {}).get("quantization", [1.0, 0]))
        inp["note"] = "feed the letterboxed uint8 canvas (quantized = round(x / scale) + zero_point)"
    if variant == "raw":
        names = getattr(rt, "_names", None) or ["output_0", "output_1", "output_2"]
        outs = []
        for name, (gh, gw, ch), stride, mask in zip(names, rt.output_shapes, STRIDES, ANCHOR_MASKS):
            o = {"name": name, "stride": stride, "shape": [None, gh, gw, ch], "anchor_indices": mask}
            q = getattr(rt, "_quant", {}).get(name)
            if q and q[0]:
                o["dtype"], o["quantization"] = "int8", [float(q[0]), int(q[1])]
                o["note"] = "dequantize: (q - zero_point) * scale"
            else:
                o["dtype"] = "float32"
            outs.append(o)
        return {"input": inp, "outputs": outs, "output_order": "stride 32, 16, 8 (coarsest grid first)",
                "output_layout": RAW_LAYOUT, "postprocess": None}
    m = postprocess["max_det"]
    outs = [{"name": "boxes", "shape": [None, m, 4], "dtype": "float32",
             "meaning": "xyxy in network-input pixels (unletterbox to the source image)"},
            {"name": "scores", "shape": [None, m], "dtype": "float32", "meaning": "objectness * class probability"},
            {"name": "classes", "shape": [None, m], "dtype": "int32", "meaning": "class index into class_names"},
            {"name": "num_valid", "shape": [None], "dtype": "int32",
             "meaning": "detections per image; rows past it are zero padding"}]
    return {"input": inp, "outputs": outs, "output_order": ", ".join(E2E_OUTPUTS),
            "output_layout": "padded detections, best first", "postprocess": postprocess}


def _write_json(path, data):
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)


# ----------------------------------------------------------------------------- parity

def _parity(rt, reference, images, variant) -> dict:
    """The artifact's outputs against the Keras model's on the same images."""
    got = rt(images)
    if variant == "raw":
        diffs = [float(np.max(np.abs(g - r))) for g, r in zip(got, reference)]
        scale = max(float(np.max(np.abs(r))) for r in reference)
        return {"images": int(len(images)), "max_abs_diff": max(diffs), "max_abs_ref": scale,
                "per_output": diffs}
    from utils.boxes import box_iou

    n_got, n_ref = np.asarray(got["num_valid"]), np.asarray(reference["num_valid"])
    box_diff, matched, total = 0.0, 0, 0
    for k in range(len(images)):
        n, nr, ng = min(int(n_got[k]), int(n_ref[k])), int(n_ref[k]), int(n_got[k])
        if n:  # in rank order; near-equal scores may swap ranks, hence also the matching below
            box_diff = max(box_diff, float(np.max(np.abs(got["boxes"][k, :n] - reference["boxes"][k, :n]))))
        if nr and ng:
            iou = box_iou(reference["boxes"][k, :nr], got["boxes"][k, :ng])
            iou = np.where(reference["classes"][k, :nr, None] == got["classes"][k, None, :ng], iou, 0.0)
            matched += int(np.sum(iou.max(axis=1) >= 0.9))
        total += nr
    return {"images": int(len(images)), "same_num_valid": bool(np.array_equal(n_got, n_ref)),
            "num_valid": n_got.tolist(), "max_box_diff_px": box_diff,
            "matched": matched / total if total else 1.0}


def _reference(model, images):
    out = model(images, training=False)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return [np.asarray(o, np.float32) for o in out]


# ----------------------------------------------------------------------------- main entry points

def export_model(model, meta: dict, out_dir, formats=DEFAULT_FORMATS, stem: str = "model", end_to_end=False,
                 calibration=None, nms: str = E2E_NMS_DEFAULT, score_thresh: float = 0.25,
                 iou_thresh: float = 0.45, max_det: int = 100, pre_nms_topk: int | None = None,
                 source: dict | None = None, int8_heads: str = "float", fold: bool = True,
                 log=print) -> list[ExportResult]:
    """Export a yolo body (keras.Model, raw heads) in ``formats`` into ``out_dir``.

    Args:
        model: the yolo body (three raw heads; an end-to-end model is refused).
        meta: class_names, anchors, input_shape (+ backbone, alpha), as ``open_model`` gives.
        out_dir: folder for the artifacts and their ``<artifact>.json`` metadata.
        formats: any of FORMATS (saved_model, tflite-fp32, tflite-fp16, tflite-int8, onnx).
        stem: file name stem of the artifacts.
        end_to_end: also write body + YoloPostprocess (``nms``, ``score_thresh``,
            ``iou_thresh``, ``max_det``, ``pre_nms_topk``) per format where the format can
            carry it (module docstring).
        calibration: letterboxed images for int8 (a ValDataset from
            :func:`calibration_dataset` or an (N, H, W, 3) array); its first images also
            serve the parity check.
        source: provenance recorded in the metadata (weights file, sha256, calibration).
        int8_heads: "float" (default) keeps the output convolutions of the int8 TFLite file
            in float32 (1.4 to 1.7 points of mAP better on BCCD), "int8" makes it
            full-integer (see :func:`_int8_float_heads`).
        fold: write the network with its batch norms folded into the convolutions
            (nets/fold.py); the parity check still compares against ``model`` as given.
        log: where progress lines go (``print``; None for silence).

    Returns:
        One ExportResult per artifact (format, variant, path, bytes, seconds, parity check).

    Raises:
        ExportError naming the format or option that cannot be honoured.
    """
    from nets.postprocess import end_to_end_model
    from utils.decode import DEFAULT_PRE_NMS_TOPK, NMS_KINDS

    log = log or (lambda *a: None)
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format(s) {', '.join(bad) or '(none given)'}; valid: {', '.join(FORMATS)}")
    if isinstance(model.output, dict) or len(model.outputs) != 3:
        raise ExportError("export takes the yolo body (3 raw heads); the end-to-end graph is added with end_to_end=True")
    nms = str(nms).lower()
    if nms not in NMS_KINDS:
        raise ExportError(f"unknown NMS kind {nms!r}; valid: {', '.join(NMS_KINDS)}")
    if "tflite-int8" in formats and calibration is None:
        raise ExportError("tflite-int8 needs calibration images: pass --calib-root (a VOC root) and --calib-split")
    if int8_heads not in INT8_HEADS:
        raise ExportError(f"unknown int8 head mode {int8_heads!r}; valid: {', '.join(INT8_HEADS)}")
    os.makedirs(out_dir, exist_ok=True)
    base = _base_meta(meta, model)
    hw = tuple(base["input_shape"])
    model_hw = tuple(int(v) for v in model.inputs[0].shape[1:3])
    if model_hw != hw:
        raise ExportError(f"model input is {model_hw[0]}x{model_hw[1]} but the metadata says {hw[0]}x{hw[1]}")
    images = _check_batch(calibration, hw)
    post = {"nms": nms, "score_thresh": float(score_thresh), "iou_thresh": float(iou_thresh),
            "max_det": int(max_det),
            "pre_nms_topk": int(DEFAULT_PRE_NMS_TOPK if pre_nms_topk is None else pre_nms_topk)}

    if fold:
        from nets.fold import fold_batchnorm
        written = fold_batchnorm(model)  # what is exported; ``model`` stays the parity reference
        base["batchnorm_folded"] = True
    else:
        written = model
    variants = {"raw": (model, written)}
    if end_to_end:
        variants["end_to_end"] = tuple(end_to_end_model(m, base["anchors"], base["num_classes"], **post)
                                       for m in (model, written))
    results = []
    with tempfile.TemporaryDirectory(prefix="yolo_export_") as scratch:
        for variant, (original, net) in variants.items():
            todo = []
            for fmt in formats:
                why = _e2e_unsupported(fmt, nms) if variant == "end_to_end" else ""
                if why:
                    log(f"{fmt}: no end-to-end variant: {why}")
                    results.append(ExportResult(fmt, variant, "", 0, 0.0, {}, why))
                else:
                    todo.append(fmt)
            reference = _reference(original, images)
            if net is not original:
                net(images[:1], training=False)  # Keras' ONNX export wants a model that has been called
            # Mish in the int8 file: QuantizableMish, kept float32 by default, int8 in the full-integer file
            int8_net = int8_quantizable(net) if "tflite-int8" in todo else net
            rewritten, keep_float = int8_net is not net, None
            if rewritten and int8_heads == "float":
                mish = set(mish_layers(net))
                others = {layer.name for layer in net.layers} - mish
                keep_float = functools.partial(_in_layer_scope, names=mish, others=others)
            saved_model, sm_seconds = None, 0.0
            if any(f == "saved_model" or (f.startswith("tflite") and not (f == "tflite-int8" and rewritten))
                   for f in todo):
                # one SavedModel per variant: the deliverable and the TFLite converter's input
                target = (os.path.join(out_dir, artifact_name(stem, "saved_model", variant)) if "saved_model" in todo
                          else os.path.join(scratch, f"{variant}_saved_model"))
                t0 = time.perf_counter()
                saved_model = _write_saved_model(net, target)
                sm_seconds = time.perf_counter() - t0
            for fmt in todo:
                path = os.path.join(out_dir, artifact_name(stem, fmt, variant))
                t0 = time.perf_counter()
                extra = {}
                if fmt.startswith("tflite"):
                    source_dir, report, own = saved_model, {}, fmt == "tflite-int8" and rewritten
                    if own:
                        # its own SavedModel: the int8 file gets the quantizable Mish, the others Keras' own
                        source_dir = _write_saved_model(int8_net, os.path.join(scratch, f"{variant}_int8_saved_model"))
                    data = _tflite_bytes(source_dir, fmt.split("-", 1)[1], calibration, int8_heads, keep_float, report)
                    if own:
                        kept = report.get("float_tensors", 0)
                        if keep_float and not kept:  # TensorFlow named the tensors otherwise: int8 after all
                            log("tflite-int8: no tensor of the Mish layers found to keep in float32; they are int8 "
                                "(correct, but slower: XNNPACK has no int8 EXP/LOG)")
                        extra = {"activations_rewritten": "mish as QuantizableMish (bounded intermediates; same function)"
                                                          + (f", kept float32 ({kept} tensors)" if kept else ", int8")}
                    with atomic_path(path, suffix=".tflite") as tmp:
                        with open(tmp, "wb") as f:
                            f.write(data)
                elif fmt == "onnx":
                    extra = _write_onnx(net, path)
                seconds = sm_seconds if fmt == "saved_model" else time.perf_counter() - t0
                quant = _int8_meta(int8_heads, calibration) if fmt == "tflite-int8" else None
                results.append(_describe(path, fmt, variant, seconds, base, extra, source, reference, images,
                                         post if variant == "end_to_end" else None,
                                         _e2e_unsupported(fmt, nms) if variant == "raw" and end_to_end else "", quant))
                log(f"{fmt} ({variant}): {path} ({results[-1].bytes / 1e6:.1f} MB, {seconds:.1f} s)")
    return results


def _int8_meta(int8_heads, calibration) -> dict:
    """How an int8 file was quantized, for its metadata."""
    n = len(calibration) if hasattr(calibration, "__len__") else None
    common = {"scheme": "post-training, TFLite converter", "weights": "int8 per output channel",
              "activations": "int8 per tensor", "calibration_images": n}
    if int8_heads == "float":
        return {**common, "heads": "float32 (the three output convolutions are not quantized)",
                "input": "float32 [0, 255], quantized inside the model", "outputs": "float32"}
    return {**common, "heads": "int8 (full-integer model)", "input": "uint8 [0, 255]",
            "outputs": "int8 (dequantize with each output's scale and zero point)"}


def _describe(path, fmt, variant, seconds, base, extra, source, reference, images, post, e2e_note, quant=None):
    """Write the artifact's metadata JSON (read back through its runtime) and measure parity."""
    digest, size = file_digest(path)
    kind = "saved_model" if fmt == "saved_model" else fmt.split("-")[0]
    m = {**base, "format": kind, "precision": fmt.split("-", 1)[1] if "-" in fmt else "fp32",
         "variant": variant, "file": os.path.basename(path), "bytes": size, "sha256": digest,
         "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "source": source or {}}
    m["exporter"] = {**m["exporter"], **extra}
    if e2e_note:
        m["end_to_end_note"] = e2e_note
    if quant:
        m["quantization"] = quant
    _write_json(meta_path(path), m)
    rt = open_model(path)  # read the artifact back: its own input/output description and parity
    m.update(_io_meta(rt, variant, post))
    m["check"] = {"reference": "the keras model on the same images (calibration images when given, else noise)",
                  **_parity(rt, reference, images, variant)}
    _write_json(meta_path(path), m)
    return ExportResult(fmt, variant, path, size, seconds, m["check"],
                        "raw heads only (see end_to_end_note)" if e2e_note else "")


def export_detector(weights, out_dir, formats=DEFAULT_FORMATS, end_to_end=False, calib_root=None,
                    calib_split="train", calib_images: int = 200, calib_seed: int = 0, stem=None,
                    int8_heads: str = "float", calibration=None, log=print, calib_format=None, calib_image_dir=None,
                    **postprocess) -> list[ExportResult]:
    """Open a ``.keras`` detector (``utils.inference.runtime.open_model``) and :func:`export_model` it.

    Args:
        weights: the ``.keras`` file train.py wrote (best.keras).
        out_dir, formats, end_to_end, stem, int8_heads, log: as in :func:`export_model`.
        calib_root, calib_split, calib_images, calib_seed: the dataset (any format: see
            :func:`calibration_dataset`), split and number of images (a seeded choice) that
            calibrate int8 and serve the parity check; calib_format, calib_image_dir: its
            format (detected when None) and the image folder of a COCO .json.
        calibration: letterboxed calibration images already made (e.g.
            :func:`calibration_from_records` over a training split), instead of calib_root.
        **postprocess: nms, score_thresh, iou_thresh, max_det, pre_nms_topk of the
            end-to-end variant.

    Returns:
        The ExportResults of :func:`export_model`.
    """
    weights = os.fspath(weights)
    runtime = open_model(weights, fold=False)  # export_model folds what it writes
    if runtime.format != "keras":
        raise ExportError(f"{weights}: a {runtime.format} export; export.py starts from the .keras file train.py wrote")
    model, meta = runtime.model, runtime.meta
    if isinstance(model.output, dict):
        raise ExportError(f"{weights} is an end-to-end model; export the yolo body (train.py's best.keras)")
    log = log or (lambda *a: None)
    if calib_root and calibration is None:
        hw = tuple(int(v) for v in meta["input_shape"][:2])
        calibration = calibration_dataset(calib_root, calib_split, calib_images, hw, meta["class_names"], calib_seed,
                                          fmt=calib_format, images=calib_image_dir, record=meta.get("data"))
        log(f"calibration: {len(calibration)} letterboxed images from {calib_root} [{calib_split}]")
    digest, _ = file_digest(weights)
    source = {"weights": weights, "sha256": digest,
              "calibration": ({"root": os.fspath(calib_root), "split": calib_split, "images": len(calibration),
                               "seed": calib_seed} if calib_root and calibration is not None else
                              {"images": len(calibration)} if calibration is not None else None)}
    stem = stem or os.path.splitext(os.path.basename(weights))[0]
    return export_model(model, meta, out_dir, formats, stem=stem, end_to_end=end_to_end, calibration=calibration,
                        source=source, int8_heads=int8_heads, log=log, **postprocess)


@dataclasses.dataclass
class AccuracyCheck:
    """mAP@0.5 of one file on a validation split, and its drop from the Keras model's."""
    name: str              # "keras" or "<format> <variant>"
    path: str
    map50: float
    drop_points: float     # 100 * (keras mAP - this mAP); 0 for the Keras model
    flagged: bool          # drop_points > max_drop


def check_accuracy(weights, results, records, max_drop: float = 1.0, batch_size: int = 8,
                   log=print) -> list[AccuracyCheck]:
    """Evaluate the Keras model ``weights`` and every raw-heads export of ``results`` on
    ``records`` (eval_map.py's code, each file through its own runtime) and flag each export
    whose mAP@0.5 is more than ``max_drop`` points under the Keras model's.

    Output parity says an export computes the same numbers on a few images; this says it
    still finds the objects: an int8 file that finds nothing is caught at export, not on
    the device. End-to-end variants are left out (their thresholds are fixed at export, so
    their mAP is not comparable).
    """
    from utils.evaluate import evaluate_records
    from utils.inference.detector import Detector

    log = log or (lambda *a: None)
    if not records:
        raise ExportError("the accuracy check needs validation images; none were given")
    keras_map = evaluate_records(Detector.from_file(weights), records, batch_size=batch_size, coco=False)["map"]
    checks = [AccuracyCheck("keras", os.fspath(weights), float(keras_map), 0.0, False)]
    for r in results:
        if not r.path or r.variant != "raw":
            continue
        m = evaluate_records(Detector.from_file(r.path), records, batch_size=batch_size, coco=False)["map"]
        drop = 100.0 * (keras_map - m)
        checks.append(AccuracyCheck(r.format, r.path, float(m), drop, drop > max_drop))
        log(f"{r.format}: mAP@0.5 {m:.4f} on {len(records)} validation images ({-drop:+.2f} points vs keras)")
    return checks


def format_accuracy(checks, max_drop: float) -> str:
    """The accuracy table of :func:`check_accuracy`, a FLAGGED mark on each export over the limit."""
    lines = [f"{'file':16s} {'mAP@0.5':>8s} {'vs keras':>9s}"]
    for c in checks:
        mark = f"  FLAGGED: more than {max_drop:g} points under the Keras model" if c.flagged else ""
        lines.append(f"{c.name:16s} {c.map50:8.4f} {0.0 - c.drop_points:+8.2f}p{mark}")  # no "-0.00"
    return "\n".join(lines)


def set_batchnorm_stats(model, images, min_variance: float = 0.1):
    """Give a random-weight model O(1) activations: BatchNorm statistics from ``images``.

    A freshly initialised yolo_body's outputs shrink to ~1e-7 through its many layers, which
    makes any export look exact. One training-mode pass with momentum 0 sets every BN's moving
    mean/variance to the batch statistics (each layer already sees normalised inputs); the
    variance floor keeps near-dead channels from amplifying rounding noise. For tests and
    benchmarks of untrained models; trained models have their own statistics.
    """
    import keras

    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    model(np.asarray(images, np.float32), training=True)
    for l, momentum in zip(bns, saved):
        l.momentum = momentum
        l.moving_variance.assign(np.maximum(np.asarray(l.moving_variance), min_variance))
    return model


def format_results(results) -> str:
    """A readable table of the exports: format, variant, size, time, parity, file."""
    rows = [("format", "variant", "MB", "s", "parity vs keras", "file")]
    for r in results:
        if not r.path:
            rows.append((r.format, r.variant, "-", "-", "not written", r.note.split(":")[0]))
            continue
        if r.variant == "raw":
            par = f"max |diff| {r.check['max_abs_diff']:.2e} (|ref| {r.check['max_abs_ref']:.1f})"
        else:
            par = (f"{'same' if r.check['same_num_valid'] else 'other'} counts, "
                   f"{100 * r.check['matched']:.0f}% matched (IoU>=0.9), rank-wise {r.check['max_box_diff_px']:.1e} px")
        rows.append((r.format, r.variant, f"{r.bytes / 1e6:.1f}", f"{r.seconds:.1f}", par, r.path))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
