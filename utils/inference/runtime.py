"""Run a detector from any of its files: ``.keras``, SavedModel folder, ``.tflite``, ``.onnx``.

    rt = open_model("runs/export/exp/best_int8.tflite", num_threads=2)
    heads = rt(batch)        # letterboxed (B, H, W, 3) uint8 or float [0, 255] RGB
                             # -> raw variant: [stride 32, stride 16, stride 8] float32 arrays
                             # -> end-to-end variant: {"boxes", "scores", "classes", "num_valid"}
    rt.meta                  # class names, anchors, input size, ... (the metadata JSON)

Exported files carry their metadata in a JSON file beside them, named after the artifact
plus ``.json`` (``best_fp32.tflite.json``, ``best_saved_model.json`` for the folder), written
by utils/inference/export.py. ``.keras`` files carry it inside (utils/checkpoint.py). A runtime only
runs the network: decoding and NMS stay in the one place, utils/decode.py (Detector in
utils/inference/detector.py takes a runtime in place of a Keras model).

Loading checks the artifact against its metadata and names the file in every error: a
missing or unreadable metadata file, a size or sha256 that differs from the one recorded at
export (truncated, corrupt or swapped file), a file the runtime cannot parse, outputs whose
grids or channels do not fit the recorded input size and classes.

Runtimes: TensorFlow for ``.keras`` (one compiled tf.function, no XLA: XLA makes the
depthwise convolutions far slower on CPU) and SavedModels; LiteRT (``ai_edge_litert``, the
successor of tf.lite.Interpreter, which TF 2.21 still ships but marks deprecated; used as a
fallback) with its default XNNPACK delegate for ``.tflite``; ONNX Runtime (CPU) for ``.onnx``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings

import numpy as np

from utils.targets import STRIDES, parse_input_hw

META_SUFFIX = ".json"
FORMATS = ("keras", "saved_model", "tflite", "onnx")
VARIANTS = ("raw", "end_to_end")
E2E_OUTPUTS = ("boxes", "scores", "classes", "num_valid")
REQUIRED_META = ("class_names", "anchors", "input_shape")


class RuntimeLoadError(ValueError):
    """A model file that cannot be run: corrupt, mismatched with its metadata, or unsupported."""


# ----------------------------------------------------------------------------- metadata files

def meta_path(path) -> str:
    """The metadata JSON of an exported artifact: ``<artifact>.json`` beside it."""
    return os.fspath(path).rstrip("/\\") + META_SUFFIX


def file_digest(path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file, or of a folder's files (sorted relative paths)."""
    path = os.fspath(path)
    h = hashlib.sha256()
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    size = 0
    for f in files:
        if os.path.isdir(path):
            h.update(os.path.relpath(f, path).replace(os.sep, "/").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def read_export_meta(path) -> dict:
    """The metadata JSON beside an exported artifact; RuntimeLoadError names what is wrong."""
    mpath = meta_path(path)
    if not os.path.isfile(mpath):
        raise RuntimeLoadError(f"{path}: its metadata file {mpath} is missing; exports are written together "
                               "with it by export.py (python export.py --weights best.keras ...)")
    try:
        with open(mpath, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeLoadError(f"{mpath}: unreadable metadata of {path} ({exc})") from None
    if not isinstance(meta, dict):
        raise RuntimeLoadError(f"{mpath}: metadata of {path} is not a JSON object")
    missing = [k for k in (*REQUIRED_META, "format", "variant") if k not in meta]
    if missing:
        raise RuntimeLoadError(f"{mpath}: metadata of {path} lacks {', '.join(missing)}")
    if meta["variant"] not in VARIANTS:
        raise RuntimeLoadError(f"{mpath}: unknown variant {meta['variant']!r}; valid: {', '.join(VARIANTS)}")
    return meta


def check_digest(path, meta: dict) -> None:
    """Compare the artifact's size and sha256 with those recorded at export (when recorded)."""
    if "sha256" not in meta:
        return
    digest, size = file_digest(path)
    want = int(meta.get("bytes", size))
    if size != want or digest != meta["sha256"]:
        what = (f"{size} bytes but {want} were written at export" if size != want
                else "contents differ from the export it describes (sha256 mismatch)")
        raise RuntimeLoadError(
            f"{path}: {what}: a truncated or corrupt file, or an export of another model, beside the metadata "
            f"{meta_path(path)}; export it again (or delete the sha256 field from the JSON if you changed the "
            "file on purpose)")


# ----------------------------------------------------------------------------- runtimes

class Runtime:
    """Base of all runtimes: ``__call__(batch)`` runs the network on a letterboxed batch.

    Attributes: ``path``, ``meta`` (dict), ``format`` (one of FORMATS), ``variant`` ("raw"
    or "end_to_end"), ``input_hw``, ``input_dtype`` (np.float32 or np.uint8), ``class_names``,
    ``num_classes``, ``output_shapes`` (raw: the 3 heads' (gh, gw, channels), stride 32 first).
    """

    format = "?"

    def __init__(self, path, meta: dict):
        self.path = os.fspath(path)
        self.meta = dict(meta)
        self.variant = self.meta.get("variant", "raw")
        self.input_hw = (int(self.meta["input_shape"][0]), int(self.meta["input_shape"][1]))
        self.class_names = [str(c) for c in self.meta["class_names"]]
        self.num_classes = len(self.class_names)
        self.input_dtype = np.dtype(self.meta.get("input", {}).get("dtype", "float32"))

    @property
    def end_to_end(self) -> bool:
        return self.variant == "end_to_end"

    @property
    def output_shapes(self):
        ch = int(self.meta.get("anchors_per_scale", 3)) * (5 + self.num_classes)
        return [(self.input_hw[0] // s, self.input_hw[1] // s, ch) for s in STRIDES]

    def prepare(self, batch) -> np.ndarray:
        """A (B, H, W, 3) uint8 or float [0, 255] batch as the artifact's input dtype."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_hw, 3):
            raise ValueError(f"{self.path}: expected a (B, {self.input_hw[0]}, {self.input_hw[1]}, 3) letterboxed "
                             f"batch, got shape {batch.shape}")
        if self.input_dtype == np.uint8:
            scale, zero = self.meta.get("input", {}).get("quantization", (1.0, 0)) or (1.0, 0)
            if batch.dtype != np.uint8 or abs(scale - 1.0) > 1e-3 or zero != 0:
                batch = np.clip(np.round(batch.astype(np.float32) / scale + zero), 0, 255).astype(np.uint8)
            return batch
        return batch.astype(np.float32, copy=False)

    def __call__(self, batch):
        raise NotImplementedError

    def check_outputs(self, shapes):
        """Raise RuntimeLoadError when the artifact's raw output shapes do not fit the metadata."""
        want = self.output_shapes
        got = [tuple(int(v) if v is not None and int(v) > 0 else None for v in s[-3:]) for s in shapes]
        if len(got) != len(want):
            raise RuntimeLoadError(f"{self.path}: {len(got)} outputs; a raw-heads detector has {len(want)} "
                                   f"(strides {', '.join(map(str, STRIDES))})")
        for g, w, s in zip(got, want, STRIDES):
            if g[2] is not None and g[2] != w[2]:
                raise RuntimeLoadError(
                    f"{self.path}: outputs have {g[2]} channels but its metadata ({meta_path(self.path)}) names "
                    f"{self.num_classes} classes ({w[2]} channels): a file of another model")
            if None not in g[:2] and g[:2] != w[:2]:
                raise RuntimeLoadError(
                    f"{self.path}: stride-{s} output grid is {g[0]}x{g[1]} but the metadata input size "
                    f"{self.input_hw[0]}x{self.input_hw[1]} needs {w[0]}x{w[1]}: a file of another model")


    def set_output_names(self, shapes_by_name: dict) -> None:
        """Pick the output order from ``{name: shape}``: the end-to-end names, or the raw heads
        sorted stride 32, 16, 8 and checked against the metadata."""
        if self.end_to_end:
            missing = [k for k in E2E_OUTPUTS if k not in shapes_by_name]
            if missing:
                raise RuntimeLoadError(f"{self.path}: metadata says end-to-end but the outputs lack {', '.join(missing)}")
            self._names = list(E2E_OUTPUTS)
        else:
            self._names = _order_by_stride(list(shapes_by_name), lambda k: shapes_by_name[k])
            self.check_outputs([shapes_by_name[k] for k in self._names])


def _order_by_stride(arrays_or_shapes, shape_of=lambda a: a.shape):
    """Raw outputs sorted stride 32, 16, 8 (coarsest grid first), whatever order the file lists them in."""
    return sorted(arrays_or_shapes, key=lambda a: int(np.prod([v or 0 for v in shape_of(a)[-3:-1]])))


class KerasRuntime(Runtime):
    """A ``.keras`` detector (utils.checkpoint.load_detector) as a compiled tf.function (no XLA).

    ``model`` is the network as saved (for export, fine-tuning); ``inference_model`` is what
    runs: with ``fold=True`` (the default) the same network with every batch norm folded into
    the convolution before it (nets/fold.py; outputs within 1e-6, the call 1.2-1.3x faster).
    """

    format = "keras"

    def __init__(self, path, model=None, meta=None, input_size=None, fold: bool = True):
        import tensorflow as tf

        if model is None:
            from utils.checkpoint import load_detector
            model, meta = load_detector(path)
        if input_size is not None:
            model, meta = with_input_size(model, meta, input_size)
        meta = {"variant": "end_to_end" if isinstance(model.output, dict) else "raw", **meta}
        super().__init__(path, meta)
        self.model = model
        self.fold_plan = None
        if fold:
            from nets.fold import fold_batchnorm
            self.inference_model, self.fold_plan = fold_batchnorm(model, return_plan=True)
        else:
            self.inference_model = model
        net = self.inference_model
        spec = tf.TensorSpec((None, *self.input_hw, 3), tf.float32)
        self._fn = tf.function(lambda x: net(x, training=False), input_signature=[spec], jit_compile=False)
        if not self.end_to_end:
            self.check_outputs([tuple(o.shape) for o in model.outputs])

    def __call__(self, batch):
        out = self._fn(self.prepare(batch))
        if isinstance(out, dict):
            return {k: v.numpy() for k, v in out.items()}
        return [o.numpy().astype(np.float32, copy=False) for o in out]


class SavedModelRuntime(Runtime):
    """A SavedModel folder written by ``keras.Model.export`` (endpoint ``serve``)."""

    format = "saved_model"

    def __init__(self, path, meta):
        import tensorflow as tf

        super().__init__(path, meta)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise RuntimeLoadError(f"{path}: not a SavedModel folder (no saved_model.pb)")
        try:
            self._loaded = tf.saved_model.load(path)
            self._fn = self._loaded.serve
        except Exception as exc:  # noqa: BLE001 - TF raises many types for a bad folder; name it
            raise RuntimeLoadError(f"{path}: cannot load the SavedModel ({type(exc).__name__}: {exc})") from None
        if not self.end_to_end:
            specs = self._fn.concrete_functions[0].structured_outputs
            self.check_outputs([tuple(s.shape) for s in specs])

    def __call__(self, batch):
        out = self._fn(self.prepare(batch))
        if isinstance(out, dict):
            return {k: v.numpy() for k, v in out.items()}
        return [o.numpy() for o in _order_by_stride(list(out))]


def litert_interpreter():
    """LiteRT's Interpreter class: ai_edge_litert when installed, else TF's (deprecated) tf.lite one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteRuntime(Runtime):
    """A ``.tflite`` file through LiteRT's interpreter and its default XNNPACK delegate.

    Quantized inputs are quantized here with the file's own (scale, zero point) and quantized
    outputs dequantized, so callers always pass [0, 255] images and get float32 heads.
    """

    format = "tflite"

    def __init__(self, path, meta, num_threads=None):
        super().__init__(path, meta)
        Interpreter = litert_interpreter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
                self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads or os.cpu_count())
            self._runner = self.interpreter.get_signature_runner()
            inputs = self._runner.get_input_details()
            outputs = self._runner.get_output_details()
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError for bad files
            raise RuntimeLoadError(f"{path}: not a readable TFLite model ({type(exc).__name__}: "
                                   f"{str(exc).strip()[:300]})") from None
        if len(inputs) != 1:
            raise RuntimeLoadError(f"{path}: the model has {len(inputs)} inputs; a detector has one image input")
        (self._input_name, detail), = inputs.items()
        self.input_dtype = np.dtype(detail["dtype"])
        scale, zero = detail.get("quantization", (0.0, 0))
        if self.input_dtype == np.uint8:
            self.meta.setdefault("input", {})["quantization"] = [float(scale) or 1.0, int(zero)]
        self._quant = {k: d.get("quantization", (0.0, 0)) for k, d in outputs.items()}
        self.set_output_names({k: tuple(d["shape"]) for k, d in outputs.items()})

    def _dequantize(self, name, value):
        scale, zero = self._quant.get(name, (0.0, 0))
        if scale and value.dtype in (np.int8, np.uint8, np.int16):
            return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
        return value

    def __call__(self, batch):
        out = self._runner(**{self._input_name: self.prepare(batch)})
        if self.end_to_end:
            return {k: out[k] for k in self._names}
        return [self._dequantize(k, out[k]) for k in self._names]


class OnnxRuntime(Runtime):
    """An ``.onnx`` file through ONNX Runtime's CPU execution provider."""

    format = "onnx"

    def __init__(self, path, meta, num_threads=None):
        super().__init__(path, meta)
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeLoadError(f"{path}: running .onnx files needs onnxruntime (pip install onnxruntime)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads or os.cpu_count())
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                                   f"{str(exc).strip()[:300]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeLoadError(f"{path}: the model has {len(inputs)} inputs; a detector has one image input")
        self._input_name = inputs[0].name
        self.input_dtype = np.dtype(np.uint8 if "uint8" in inputs[0].type else np.float32)
        outputs = {o.name: tuple(v if isinstance(v, int) else None for v in o.shape)
                   for o in self.session.get_outputs()}
        self.set_output_names(outputs)

    def __call__(self, batch):
        out = self.session.run(self._names, {self._input_name: self.prepare(batch)})
        if self.end_to_end:
            return dict(zip(self._names, out))
        return [np.asarray(o, np.float32) for o in out]


def detect_format(path) -> str:
    """``keras``, ``saved_model``, ``tflite`` or ``onnx`` from the path; ValueError otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "saved_model"
    low = path.lower()
    for suffix, fmt in ((".keras", "keras"), (".tflite", "tflite"), (".onnx", "onnx")):
        if low.endswith(suffix):
            return fmt
    raise RuntimeLoadError(f"{path}: unsupported model file; supported: .keras, a SavedModel folder, .tflite, .onnx")


def open_model(path, num_threads: int | None = None, input_size=None, fold: bool = True) -> Runtime:
    """Open any detector file: the one model opener of the project.

    Args:
        path: a ``.keras`` file written by train.py (utils.checkpoint.save_detector), or an
            export of export.py: a SavedModel folder, a ``.tflite`` or an ``.onnx`` file, each
            with its metadata JSON beside it.
        num_threads: CPU threads of LiteRT and ONNX Runtime (default: all cores).
        input_size: run a ``.keras`` model at another input size (an int or (H, W),
            multiples of 32; the graph is rebuilt, see :func:`with_input_size`). Exports run at
            the size they were exported at: another size is an error.
        fold: run a ``.keras`` model with its batch norms folded into the convolutions
            (``rt.inference_model``; ``rt.model`` stays the network as saved).

    Returns:
        A :class:`Runtime`: ``rt(batch)`` runs the network on a letterboxed batch, ``rt.meta``
        is the detector's metadata (class names, anchors, input size, ...), and for a
        ``.keras`` file ``rt.model`` is the Keras model. Detector, predict.py, eval_map.py,
        export.py, train.py's ``--weights`` and the benchmarks all open files through here.

    Raises:
        FileNotFoundError for a missing path; RuntimeLoadError (a ValueError) naming the file
        for anything else (see the module docstring).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = detect_format(path)
    if fmt == "keras":
        return KerasRuntime(path, input_size=input_size, fold=fold)
    meta = read_export_meta(path)
    if meta["format"] != fmt:
        raise RuntimeLoadError(f"{path}: a {fmt} file, but its metadata {meta_path(path)} describes a "
                               f"{meta['format']} export")
    if input_size is not None and parse_input_hw(input_size) != tuple(int(v) for v in meta["input_shape"][:2]):
        raise RuntimeLoadError(f"{path}: an exported model runs at the input size it was exported at "
                               f"({meta['input_shape'][0]}x{meta['input_shape'][1]}); leave --input-size out")
    check_digest(path, meta)
    if fmt == "saved_model":
        return SavedModelRuntime(path, meta)
    if fmt == "tflite":
        return TFLiteRuntime(path, meta, num_threads=num_threads)
    return OnnxRuntime(path, meta, num_threads=num_threads)


def with_input_size(model, meta: dict, input_size):
    """The same network at another input size: ``(model, meta)`` with the new ``input_shape``.

    The detector is fully convolutional, so its weights fit any input whose sides are
    multiples of 32: the functional graph is cloned onto a new Input
    (keras.models.clone_model) and the weights are copied. A model whose graph cannot be
    rebuilt at that size (a layer fixed to a shape) raises ValueError saying so.
    """
    import keras

    hw = parse_input_hw(input_size)
    old = tuple(int(v) for v in meta["input_shape"][:2])
    if hw == old:
        return model, meta
    try:
        inputs = keras.Input((*hw, 3), name=model.inputs[0].name.split(":")[0] or "image")
        clone = keras.models.clone_model(model, input_tensors=inputs)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot rebuild": say which
        raise ValueError(f"this model cannot run at {hw[0]}x{hw[1]} (it was saved at {old[0]}x{old[1]}): "
                         f"{type(exc).__name__}: {exc}; leave --input-size out") from None
    want = [(hw[0] // s, hw[1] // s) for s in STRIDES]
    got = [tuple(int(v) for v in o.shape[1:3]) for o in clone.outputs]
    if got != want:
        raise ValueError(f"this model cannot run at {hw[0]}x{hw[1]}: its outputs would be {got}, "
                         f"not the grids {want} of strides 32, 16, 8; leave --input-size out")
    return clone, {**meta, "input_shape": [hw[0], hw[1]]}
