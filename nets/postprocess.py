"""Decode + NMS as a Keras layer: yolo body + ``YoloPostprocess`` = an end-to-end detector.

The computation is ``utils.decode.postprocess`` (the one decode + NMS of the project); this
module only wraps it as a registered, serializable layer, so end-to-end models save to
``.keras`` files that load with ``safe_mode=True`` and export with ``model.export``.
"""
from __future__ import annotations

import keras

from nets.layers import PACKAGE
from utils.decode import DEFAULT_PRE_NMS_TOPK, NMS_KINDS, check_anchors, postprocess


@keras.saving.register_keras_serializable(package=PACKAGE)
class YoloPostprocess(keras.layers.Layer):
    """``postprocess`` as a layer: yolo body + this layer = a saveable end-to-end detector.

    Input: the list of 3 raw heads. Output: dict ``boxes`` (B, max_det, 4) xyxy network-input
    pixels, ``scores`` (B, max_det), ``classes`` int32 (B, max_det), ``num_valid`` int32 (B,).
    """

    def __init__(self, anchors, input_hw, num_classes, score_thresh=0.25, iou_thresh=0.45, max_det=100,
                 nms="iou", pre_nms_topk=DEFAULT_PRE_NMS_TOPK, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.anchors = check_anchors(anchors).tolist()
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.num_classes = int(num_classes)
        self.score_thresh = float(score_thresh)
        self.iou_thresh = float(iou_thresh)
        self.max_det = int(max_det)
        self.nms = str(nms).lower()
        if self.nms not in NMS_KINDS:
            raise ValueError(f"unknown NMS kind {nms!r}; valid: {', '.join(NMS_KINDS)}")
        self.pre_nms_topk = int(pre_nms_topk or 0)

    def call(self, outputs):
        boxes, scores, classes, num_valid = postprocess(
            list(outputs), self.anchors, self.input_hw, self.num_classes, self.score_thresh,
            self.iou_thresh, self.max_det, self.nms, self.pre_nms_topk)
        return {"boxes": boxes, "scores": scores, "classes": classes, "num_valid": num_valid}

    def compute_output_spec(self, outputs):
        batch = outputs[0].shape[0]
        return {"boxes": keras.KerasTensor((batch, self.max_det, 4), "float32"),
                "scores": keras.KerasTensor((batch, self.max_det), "float32"),
                "classes": keras.KerasTensor((batch, self.max_det), "int32"),
                "num_valid": keras.KerasTensor((batch,), "int32")}

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "input_hw": list(self.input_hw),
                "num_classes": self.num_classes, "score_thresh": self.score_thresh,
                "iou_thresh": self.iou_thresh, "max_det": self.max_det, "nms": self.nms,
                "pre_nms_topk": self.pre_nms_topk}


def end_to_end_model(model, anchors, num_classes, name=None, **postprocess_kwargs):
    """yolo body + YoloPostprocess as one functional keras.Model (saveable, exportable)."""
    input_hw = tuple(int(v) for v in model.inputs[0].shape[1:3])
    head = YoloPostprocess(anchors, input_hw, num_classes, name="yolo_postprocess", **postprocess_kwargs)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, head(list(model.outputs)), name=name or f"{model.name}_end2end")
