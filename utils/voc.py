"""VOC-layout datasets: records of (image path, boxes, labels, difficult flags)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class VocRecord:
    """One image and its objects.

    ``boxes`` is float32 (N, 4) xyxy in the stored pixel frame of the image file (EXIF
    orientation is not applied), with the VOC values as written (xmin, ymin, xmax, ymax);
    ``labels`` int32 (N,) indices into the class list; ``difficult`` bool (N,).
    """
    image_path: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int
    annotation_path: str = ""

    @property
    def image_id(self) -> str:
        import os
        return os.path.splitext(os.path.basename(self.image_path))[0]
