"""Detector: images in, detections in source-image pixels out.

    images (uint8 RGB, any sizes) --letterbox (NumPy/cv2)--> (B, H, W, 3) uint8
        --ONE tf.function: cast to float [0, 255], model, decode, NMS--> padded tensors
        --unletterbox (NumPy)--> per image {"boxes", "scores", "classes"}

The model and the post-processing are also compiled separately (``forward`` and
``postprocess``) so that ``detect_timed`` can report where the time goes (predict.py's fps
mode). Thresholds are tensor arguments of the compiled functions: changing them does not
retrace; the NMS kind and ``pre_nms_topk`` are Python values (one trace each).

The network may also be an exported model: ``Detector.from_file`` takes a ``.keras`` file, a
SavedModel folder, a ``.tflite`` or an ``.onnx`` file (raw-heads exports of utils/inference/export.py);
a non-Keras runtime (utils/inference/runtime.py) replaces the model in ``forward`` and the decode + NMS
stay the same compiled ``postprocess``.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from utils.decode import DEFAULT_PRE_NMS_TOPK, NMS_KINDS, postprocess
from utils.letterbox import letterbox_image, unletterbox_boxes
from utils.inference.runtime import REQUIRED_META, KerasRuntime, Runtime, open_model



class Detector:
    """A yolo body plus its metadata, ready to detect. Usually made by :meth:`from_file`.

    Args:
        model: a keras.Model (the yolo body, raw heads) or a raw-heads runtime of
            utils.inference.runtime (what ``open_model`` returns for any file).
        meta: dict with ``class_names``, ``anchors`` (9, 2) network-input pixels,
            ``input_shape`` (H, W[, 3]) and, for information, ``backbone`` and ``alpha``.
        score_thresh, iou_thresh, max_det, nms, pre_nms_topk: the defaults of :meth:`detect`.
        fold: run a Keras model with its batch norms folded into the convolutions before
            them (nets/fold.py: outputs within 1e-6, the call 1.2-1.3x faster); the model
            passed in is left as it is (see :meth:`sync_weights` when it keeps training).

    ``detect(images)`` takes uint8 RGB images of any sizes and returns, per image, a dict of
    ``boxes`` (xyxy, source-image pixels), ``scores`` and ``classes``. Raises ValueError when
    the model and the metadata disagree (classes, input size, anchors).
    """

    def __init__(self, model, meta: dict, score_thresh: float = 0.25, iou_thresh: float = 0.45,
                 max_det: int = 100, nms: str = "iou", pre_nms_topk: int = DEFAULT_PRE_NMS_TOPK,
                 fold: bool = True):
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"detector metadata lacks {', '.join(missing)}")
        self._source, self._fold_plan = None, None
        if isinstance(model, KerasRuntime):
            # open_model folded it already (its default); keep the link for sync_weights
            if fold and model.fold_plan is not None:
                self._source, self._fold_plan = model.model, model.fold_plan
                model = model.inference_model
            elif fold:
                model = _fold(self, model.model)
            else:
                model = model.model
        elif fold and not isinstance(model, Runtime):
            model = _fold(self, model)
        self.runtime = model if isinstance(model, Runtime) else None
        if self.runtime is not None and self.runtime.end_to_end:
            raise ValueError(f"{self.runtime.path} is an end-to-end export (NMS inside, thresholds fixed at export); "
                             "the Detector runs decode + NMS itself: use the raw-heads export of the same model "
                             "(the file without _e2e), or run this one with utils.inference.runtime.open_model")
        self.model = model
        self.meta = dict(meta)
        self.class_names = [str(c) for c in meta["class_names"]]
        self.num_classes = len(self.class_names)
        self.anchors = np.asarray(meta["anchors"], np.float32).reshape(-1, 2)
        self.input_hw = (int(meta["input_shape"][0]), int(meta["input_shape"][1]))
        self.backbone = meta.get("backbone")
        self.alpha = meta.get("alpha")
        if self.anchors.shape != (9, 2):
            raise ValueError(f"detector metadata holds {self.anchors.shape[0]} anchors; 9 are needed")
        if self.runtime is not None:
            model_hw, self._head_shapes = self.runtime.input_hw, [tuple(s) for s in self.runtime.output_shapes]
        else:
            model_hw, self._head_shapes = tuple(model.inputs[0].shape[1:3]), [tuple(o.shape[1:]) for o in model.outputs]
        if None not in model_hw and model_hw != self.input_hw:
            raise ValueError(f"model input is {model_hw[0]}x{model_hw[1]} but the metadata says "
                             f"{self.input_hw[0]}x{self.input_hw[1]}")
        out_ch = int(self._head_shapes[0][-1])
        if len(self._head_shapes) != 3 or out_ch != 3 * (5 + self.num_classes):
            raise ValueError(f"model has {len(self._head_shapes)} outputs with {out_ch} channels; a detector for "
                             f"{self.num_classes} classes needs 3 outputs with {3 * (5 + self.num_classes)}")
        self.defaults = dict(score_thresh=float(score_thresh), iou_thresh=float(iou_thresh),
                             max_det=int(max_det), nms=self._check_nms(nms))
        self.pre_nms_topk = int(pre_nms_topk or 0)
        image_spec = tf.TensorSpec((None, *self.input_hw, 3), tf.uint8)
        self._forward = tf.function(self._forward_impl, input_signature=[image_spec])
        self._compiled = {}  # nms kind -> (fused, post) tf.functions

    def sync_weights(self) -> None:
        """Take the current weights of the Keras model this Detector was made from.

        A Detector folds a Keras model's batch norms into a copy (``fold=True``); training
        changes the original, so train.py's in-loop evaluation calls this before each
        evaluation. The copy's graph is kept: nothing is traced again. A no-op otherwise.
        """
        if self._source is not None:
            from nets.fold import refold_weights
            refold_weights(self._source, self.model, self._fold_plan)

    @classmethod
    def from_file(cls, path, num_threads: int | None = None, input_size=None, **kwargs) -> "Detector":
        """A ready Detector for any detector file.

        Args:
            path: a ``.keras`` file written by train.py, or a raw-heads export of export.py (a
                SavedModel folder, ``.tflite`` or ``.onnx``); opened by
                ``utils.inference.runtime.open_model``.
            num_threads: CPU threads of LiteRT and ONNX Runtime (default: all cores).
            input_size: run a ``.keras`` model at another input size (multiples of 32).
            **kwargs: the defaults of :meth:`detect` (score_thresh, iou_thresh, max_det, nms,
                pre_nms_topk).

        Returns:
            A Detector; errors name the file (see ``open_model``).
        """
        runtime = open_model(path, num_threads=num_threads, input_size=input_size, fold=kwargs.pop("fold", True))
        return cls(runtime, runtime.meta, **kwargs)

    # ------------------------------------------------------------------ compiled parts

    @staticmethod
    def _check_nms(nms):
        nms = str(nms).lower()
        if nms not in NMS_KINDS:
            raise ValueError(f"unknown NMS kind {nms!r}; valid: {', '.join(NMS_KINDS)}")
        return nms

    def _forward_impl(self, images):
        heads = self.model(tf.cast(images, tf.float32), training=False)
        return [tf.cast(h, tf.float32) for h in heads]  # float16 under mixed precision

    def _functions(self, nms):
        if nms not in self._compiled:
            def post(outputs, score_thresh, iou_thresh, max_det):
                return postprocess(outputs, self.anchors, self.input_hw, self.num_classes, score_thresh,
                                   iou_thresh, max_det, nms=nms, pre_nms_topk=self.pre_nms_topk)

            def fused(images, score_thresh, iou_thresh, max_det):
                return post(self._forward_impl(images), score_thresh, iou_thresh, max_det)

            scalars = [tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.int32)]
            head_specs = [tf.TensorSpec((None, *shape), tf.float32) for shape in self._head_shapes]
            self._compiled[nms] = (
                tf.function(fused, input_signature=[tf.TensorSpec((None, *self.input_hw, 3), tf.uint8), *scalars]),
                tf.function(post, input_signature=[head_specs, *scalars]))
        return self._compiled[nms]

    def _options(self, score_thresh, iou_thresh, max_det, nms):
        d = self.defaults
        return (tf.constant(d["score_thresh"] if score_thresh is None else score_thresh, tf.float32),
                tf.constant(d["iou_thresh"] if iou_thresh is None else iou_thresh, tf.float32),
                tf.constant(d["max_det"] if max_det is None else max_det, tf.int32),
                self._check_nms(d["nms"] if nms is None else nms))

    # ------------------------------------------------------------------ steps

    def preprocess(self, images):
        """Letterbox a list of uint8 RGB images -> ((B, H, W, 3) uint8 batch, [Letterbox])."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("detect() takes a list of images; wrap a single image in a list")
        batch, boxes = [], []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected a uint8 HxWx3 RGB array, got {image.dtype} "
                                 f"{image.shape} (read files with utils.data.images.read_image)")
            canvas, lb = letterbox_image(image, self.input_hw)
            batch.append(canvas)
            boxes.append(lb)
        if not batch:
            return np.zeros((0, *self.input_hw, 3), np.uint8), []
        return np.stack(batch), boxes

    def infer(self, batch, score_thresh=None, iou_thresh=None, max_det=None, nms=None):
        """Letterboxed uint8 batch -> padded NumPy (boxes, scores, classes, num_valid), network pixels."""
        s, i, m, kind = self._options(score_thresh, iou_thresh, max_det, nms)
        fused, post = self._functions(kind)
        if self.runtime is not None:  # the network runs outside TensorFlow: two steps
            return tuple(t.numpy() for t in post(self.forward(batch), s, i, m))
        return tuple(t.numpy() for t in fused(tf.convert_to_tensor(batch, tf.uint8), s, i, m))

    def forward(self, batch):
        """The model alone: letterboxed uint8 batch -> the 3 raw heads (tensors)."""
        if self.runtime is not None:
            return [tf.convert_to_tensor(h, tf.float32) for h in self.runtime(np.asarray(batch, np.uint8))]
        return self._forward(tf.convert_to_tensor(batch, tf.uint8))

    def postprocess(self, heads, score_thresh=None, iou_thresh=None, max_det=None, nms=None):
        """Decode + NMS alone: raw heads -> padded NumPy (boxes, scores, classes, num_valid)."""
        s, i, m, kind = self._options(score_thresh, iou_thresh, max_det, nms)
        _, post = self._functions(kind)
        return tuple(t.numpy() for t in post(list(heads), s, i, m))

    @staticmethod
    def finish(padded, letterboxes):
        """Padded network-pixel detections -> per image dicts in source-image pixels.

        Boxes are clipped to the image; a box that lies wholly in the letterbox padding
        (zero width or height after clipping) is dropped.
        """
        boxes, scores, classes, num_valid = padded
        results = []
        for k, lb in enumerate(letterboxes):
            n = int(num_valid[k])
            b = unletterbox_boxes(boxes[k, :n], lb)
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            results.append({"boxes": b[keep].astype(np.float32),
                            "scores": scores[k, :n][keep].astype(np.float32),
                            "classes": classes[k, :n][keep].astype(np.int64)})
        return results

    # ------------------------------------------------------------------ public

    def detect(self, images, score_thresh=None, iou_thresh=None, max_det=None, nms=None, batch_size=None):
        """Detect objects in a list of uint8 HxWx3 RGB images.

        Returns one dict per image: ``boxes`` (N, 4) float32 xyxy source pixels, ``scores``
        (N,) float32, ``classes`` (N,) int64, best first. Arguments left None take the
        defaults given to the constructor. ``batch_size`` None runs the list as one batch.
        """
        images = list(images) if not isinstance(images, np.ndarray) or images.ndim == 4 else images
        step = batch_size or max(1, len(images))
        results = []
        for start in range(0, len(images), step):
            batch, lbs = self.preprocess(images[start:start + step])
            results += self.finish(self.infer(batch, score_thresh, iou_thresh, max_det, nms), lbs)
        return results

    def detect_timed(self, images, score_thresh=None, iou_thresh=None, max_det=None, nms=None):
        """``detect`` on one batch with the time of each step (seconds).

        Returns ``(results, {"preprocess": s, "model": s, "postprocess": s, "total": s})``:
        letterboxing; the model's forward pass (waited for); decode + NMS + unletterbox.
        Call once first to exclude tracing from the numbers.
        """
        t0 = time.perf_counter()
        batch, lbs = self.preprocess(images)
        t1 = time.perf_counter()
        heads = self.forward(batch)
        for h in heads:  # wait for the device: reading one element forces the computation
            h[:1, :1, :1, :1].numpy()
        t2 = time.perf_counter()
        results = self.finish(self.postprocess(heads, score_thresh, iou_thresh, max_det, nms), lbs)
        t3 = time.perf_counter()
        return results, {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}


def _fold(detector: Detector, model):
    """The model with its batch norms folded into the convolutions (the same outputs, a faster
    call); the detector keeps the original for :meth:`Detector.sync_weights`."""
    from nets.fold import fold_batchnorm
    detector._source = model
    folded, detector._fold_plan = fold_batchnorm(model, return_plan=True)
    return folded
