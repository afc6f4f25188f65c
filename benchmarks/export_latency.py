"""Batch-1 CPU latency of the exported detectors: Keras vs TFLite fp32 / int8 vs ONNX Runtime.

    python benchmarks/export_latency.py                 # mobilenetv2 x1.0 and ghostnet, 416x416, 20 classes

For each backbone: yolo_body with random weights whose BatchNorm statistics are set from a
few letterboxed BCCD images (utils.inference.export.set_batchnorm_stats; untrained logits would be
~1e-7 and every parity figure meaningless), exported by utils.inference.export.export_model (int8
calibrated on --calib-images letterboxed BCCD train images, in both modes: output convolutions
in float32, export.py's default, and full-integer), then each artifact loaded through
utils.inference.runtime and timed on one letterboxed image: --warmup untimed runs, then the median
(and 90th percentile) of --runs timed runs of the network alone (raw heads, no decode/NMS).
Keras = the model in one compiled tf.function without XLA (XLA makes depthwise convolutions
~20x slower on CPU). Every runtime uses all cores (TF's default; LiteRT with XNNPACK and
ONNX Runtime given os.cpu_count() threads). Prints a table and records it in
docs/benchmarks.md (section "Export latency"; --no-record to skip), with the machine and the
load average, since the CPUs may be shared.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, load_average, machine, record  # noqa: E402

SECTION = "Export latency"


def time_runs(fn, batch, warmup, runs):
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(batch)  # every runtime returns NumPy arrays: the work is done when it returns
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * statistics.median(times), 1000 * times[min(len(times) - 1, int(0.9 * len(times)))]


def bench_backbone(backbone, alpha, args, images, calib, log):
    import keras
    import numpy as np

    from nets.yolo import yolo_body
    from utils.checkpoint import save_detector
    from utils.inference.export import export_model, set_batchnorm_stats
    from utils.inference.runtime import KerasRuntime, open_model
    from utils.targets import load_anchors

    hw = tuple(args.input)
    names = [f"class{i}" for i in range(args.num_classes)]
    keras.utils.set_random_seed(0)
    body = set_batchnorm_stats(yolo_body(hw, args.num_classes, backbone=backbone, alpha=alpha), images)
    meta = {"class_names": names, "anchors": load_anchors().tolist(), "input_shape": list(hw),
            "backbone": backbone, "alpha": alpha}
    rows = []
    with tempfile.TemporaryDirectory(prefix="export_latency_") as tmp:
        keras_path = save_detector(body, os.path.join(tmp, "model.keras"), meta)
        t0 = time.perf_counter()
        results = export_model(body, meta, tmp, ["tflite-fp32", "tflite-int8", "onnx"], stem="model",
                               calibration=calib, log=log)  # int8: float heads, export.py's default
        if args.full_int8:
            full = export_model(body, meta, os.path.join(tmp, "full"), ["tflite-int8"], stem="model",
                                calibration=calib, int8_heads="int8", log=log)
            results += [dataclasses.replace(r, format=r.format + " full") for r in full]
        log(f"{backbone}: exported in {time.perf_counter() - t0:.0f} s")
        batch = images[:1].astype(np.uint8)
        runtimes = [("keras (tf.function)", KerasRuntime(keras_path, body, meta), os.path.getsize(keras_path), None)]
        for r in results:
            runtimes.append((r.format, open_model(r.path, num_threads=os.cpu_count()), r.bytes, r.check["max_abs_diff"]))
        for name, rt, size, diff in runtimes:
            med, p90 = time_runs(rt, batch, args.warmup, args.runs)
            rows.append((f"{backbone} x{alpha:g}", name, med, p90, size / 1e6, diff))
            log(f"  {name}: median {med:.1f} ms, p90 {p90:.1f} ms, {size / 1e6:.1f} MB")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["mobilenetv2:1.0", "ghostnet:1.0"],
                   help="name:alpha pairs (default mobilenetv2:1.0 ghostnet:1.0)")
    p.add_argument("--input", type=int, nargs=2, default=(416, 416), metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "BCCD"),
                   help="VOC root for calibration and parity images (default ../shared/data/BCCD)")
    p.add_argument("--calib-images", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--no-full-int8", dest="full_int8", action="store_false",
                   help="skip the full-integer int8 file (int8 heads, uint8 input; exported besides the default one)")
    p.add_argument("--no-record", action="store_true")
    a = p.parse_args(argv)

    import numpy as np

    from utils.inference.export import calibration_dataset
    from utils.data.voc import read_class_names

    if a.runs < 20:
        p.error("--runs must be >= 20")
    hw = tuple(a.input)
    calib = calibration_dataset(a.root, "train", a.calib_images, hw, read_class_names(ROOT / "model_data" /
                                                                                        "bccd_classes.txt"))
    images = np.concatenate([calib[i][0] for i in range(min(8, len(calib)))])
    load_before = load_average()
    rows = []
    for spec in a.backbones:
        name, _, alpha = spec.partition(":")
        rows += bench_backbone(name, float(alpha or 1.0), a, images, calib, log=print)

    lines = [f"batch 1, {hw[0]}x{hw[1]}, {a.num_classes} classes, random weights (BN statistics from BCCD images), "
             f"median and p90 of {a.runs} runs after {a.warmup} warm-up, network only (raw heads); int8 calibrated "
             f"on {len(calib)} letterboxed BCCD train images (tflite-int8: output convolutions in float32, float input "
             "and outputs, export.py's default; tflite-int8 full: full-integer, uint8 input, int8 outputs); "
             "parity = max |diff| of the raw logits vs Keras on 4 BCCD images; MB = file size (keras: the .keras file)"]
    header = ("model", "runtime", "median ms", "p90 ms", "MB", "max |diff| vs keras")
    table = [header] + [(m, r, f"{med:.1f}", f"{p90:.1f}", f"{mb:.1f}", "-" if d is None else f"{d:.1e}")
                        for m, r, med, p90, mb, d in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    table = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    when = (f"{datetime.date.today()} on {machine()}, load average {load_before} before and {load_average()} "
            "after (1, 5, 15 min; high means the CPUs were shared with other jobs and the figures are inflated)")
    print("\n".join([when, "", *lines, "", *table]))
    if not a.no_record:
        record(SECTION, command_line("export_latency.py", argv), lines[0], table, when=when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
