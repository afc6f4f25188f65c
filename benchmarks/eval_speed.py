"""Evaluation speed: is image reading hidden behind the model, and where does a batch's time go?

    python benchmarks/eval_speed.py                  # BCCD test, mobilenetv2 x0.5, 416x416, batch 8

Builds yolo_body with random weights (no download; the speed does not depend on the weights,
except NMS: random heads give the worst case, every box a candidate at --conf 0.001), runs
utils.evaluate.run_detector with the image-reading thread pool (--workers) and serially
(workers 0), and utils.inference.detector.Detector.detect_timed on one batch. The first batch (tracing)
is run before timing. Prints the figures and records them in docs/benchmarks.md (section
"Evaluation speed"; --no-record to skip).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, record  # noqa: E402

SECTION = "Evaluation speed"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "BCCD"))
    p.add_argument("--split", default="test")
    p.add_argument("--classes", default=str(ROOT / "model_data" / "bccd_classes.txt"))
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--input", type=int, nargs=2, default=(416, 416), metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--nms", default="iou")
    p.add_argument("--no-record", action="store_true")
    a = p.parse_args(argv)

    from nets.yolo import yolo_body
    from utils.evaluate import run_detector
    from utils.inference.detector import Detector
    from utils.targets import load_anchors
    from utils.data.images import read_image
    from utils.data.voc import load_voc, read_class_names

    names = read_class_names(a.classes)
    records = load_voc(a.root, a.split, names, log=None)
    model = yolo_body(tuple(a.input), len(names), backbone=a.backbone, alpha=a.alpha)
    meta = {"class_names": names, "anchors": load_anchors(), "input_shape": tuple(a.input),
            "backbone": a.backbone, "alpha": a.alpha}
    det = Detector(model, meta)
    opts = dict(batch_size=a.batch_size, score_thresh=a.conf, iou_thresh=0.5, max_det=a.max_det, nms=a.nms)
    run_detector(det, records[:a.batch_size], **opts)  # trace
    rows = []
    for workers in (a.workers, 0):
        _, _, t = run_detector(det, records, workers=workers, **opts)
        rows.append(f"workers {workers}: {len(records)} images in {t['total_s']:.2f} s "
                    f"({t['images_per_s']:.1f} img/s); model + NMS {t['model_s']:.2f} s; "
                    f"total / model = {t['overhead']:.2f}")
    images = [read_image(r.image_path) for r in records[:a.batch_size]]
    det.detect_timed(images, a.conf, 0.5, a.max_det, a.nms)  # trace the split functions
    _, times = det.detect_timed(images, a.conf, 0.5, a.max_det, a.nms)
    n = len(images)
    rows.append(f"one batch of {n} (detect_timed), ms per image: preprocess {1e3 * times['preprocess'] / n:.1f}, "
                f"model {1e3 * times['model'] / n:.1f}, decode + NMS + unletterbox "
                f"{1e3 * times['postprocess'] / n:.1f}")
    lines = [f"{a.backbone} x{a.alpha:g} {a.input[0]}x{a.input[1]}, batch {a.batch_size}, conf {a.conf:g}, "
             f"max_det {a.max_det}, {a.nms} NMS, random weights, {a.split} split of {a.root}"] + rows
    print("\n".join(lines))
    if not a.no_record:
        record(SECTION, command_line("eval_speed.py", argv), lines)


if __name__ == "__main__":
    main()
