"""Augmented training images per second of utils/data/dataset.py (mosaic + mixup on), and
records per second of loading BCCD from each dataset format.

    python benchmarks/data_throughput.py                       # BCCD train, 416x416, tf.data x2
    python benchmarks/data_throughput.py --compare             # also PyDataset threads/processes, serial

Mosaic/mixup are forced on with the default probabilities (mosaic 0.5, mixup 0.5 of the
mosaics), i.e. the first 70% of a training run. Targets are built too: the figure is what
the trainer receives. The first batch (start-up) is not timed.

Loading: BCCD (the whole set, every split) is converted to COCO and YOLO in a temporary folder
(utils.data.convert, images hard-linked) and utils.data.formats.load_records is timed on each
format, with the image headers only (check_images=False: the annotation parsing) and with each
image decoded too (check_images=True, what train.py does), the median of --load-rounds; the
three loads must give the same images, classes and boxes (within a pixel). --no-formats skips it.

Prints the figures and records them in docs/benchmarks.md (section "Data throughput";
--no-record to skip).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, record  # noqa: E402

SECTION = "Data throughput"


def iterate(ds, backend, batches, workers):
    """Time ``batches`` batches after one warm-up batch; returns images/s."""
    if backend == "tfdata":
        it = iter(ds.as_tf_dataset(num_parallel=workers))
        next_batch = lambda: next(it)  # noqa: E731
        stop = lambda: None  # noqa: E731
    elif backend == "serial":
        counter = iter(range(len(ds)))
        next_batch = lambda: ds.batch(next(counter))  # noqa: E731
        stop = lambda: None  # noqa: E731
    else:  # keras.utils.PyDataset the way model.fit consumes it (its data adapter)
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
        ds.workers = workers
        ds.use_multiprocessing = backend == "processes"
        adapter = PyDatasetAdapter(ds)
        adapter.on_epoch_begin()
        it = iter(adapter.get_numpy_iterator())
        next_batch = lambda: next(it)  # noqa: E731
        stop = adapter.on_epoch_end
    next_batch()
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        images = next_batch()[0]
        n += int(images.shape[0])
    dt = time.perf_counter() - t0
    stop()
    return n / dt


def format_loading(root, classes, rounds=3):
    """Lines of records/s of load_records on ``root`` (a VOC root) and its COCO and YOLO copies."""
    import tempfile

    import numpy as np

    from utils.data.convert import convert
    from utils.data.formats import load_records

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"voc": str(root)}
        t0 = time.perf_counter()
        for fmt in ("coco", "yolo"):
            paths[fmt] = os.path.join(tmp, fmt)
            convert(root, paths[fmt], fmt, class_names=classes, link=True, check_images=False, log=None)
        print(f"  converted {root} to COCO and YOLO in {time.perf_counter() - t0:.1f} s", flush=True)
        loaded = {}
        for check_images in (False, True):
            for fmt, path in paths.items():
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    records = load_records(path, None, classes, fmt=fmt, check_images=check_images, log=None)
                    times.append(time.perf_counter() - t0)
                loaded[fmt] = sorted(records, key=lambda r: r.image_id)
                n, boxes, mid = len(records), sum(len(r.boxes) for r in records), sorted(times)[len(times) // 2]
                line = (f"load {fmt:<4} {n} images, {boxes} boxes, check_images={str(check_images):<5}: "
                        f"{n / mid:7.0f} records/s ({1000 * mid:6.0f} ms"
                        + (f", median of {rounds}" if rounds > 1 else "") + ")")
                print(line, flush=True)
                lines.append(line)
        same = all(len(loaded[f]) == len(loaded["voc"]) and all(
            a.image_id == b.image_id and np.array_equal(a.labels, b.labels)
            and np.allclose(a.boxes, b.boxes, atol=1.0) for a, b in zip(loaded[f], loaded["voc"]))
            for f in ("coco", "yolo"))
        lines.append(f"COCO and YOLO copies give the VOC records (images, classes, boxes within 1 px): "
                     f"{'yes' if same else 'NO'}")
        print(lines[-1], flush=True)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "BCCD"))
    p.add_argument("--split", default="train")
    p.add_argument("--classes", default=str(ROOT / "model_data" / "bccd_classes.txt"))
    p.add_argument("--input-size", default="416")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", choices=["tfdata", "threads", "processes", "serial"], default="tfdata")
    p.add_argument("--compare", action="store_true", help="measure every backend")
    p.add_argument("--rounds", type=int, default=1, help="repeat (backends interleaved); the median is reported")
    p.add_argument("--load-rounds", type=int, default=3, help="repeats of each format's load (the median is reported)")
    p.add_argument("--no-formats", action="store_true", help="skip the loading throughput of each format")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)

    load_lines = [] if args.no_formats else format_loading(args.root, args.classes, args.load_rounds)

    from utils.data.dataset import TrainDataset, records_from_args
    records, class_names = records_from_args([args.root], args.split, args.classes)
    backends = ["tfdata", "threads", "processes", "serial"] if args.compare else [args.backend]
    results = {b: [] for b in backends}
    for _ in range(args.rounds):  # interleaved so that load from other processes hits all alike
        for backend in backends:
            ds = TrainDataset(records, len(class_names), args.input_size, args.batch_size, seed=0)
            ds.set_epoch(0)
            ds.set_special(True)
            workers = 1 if backend == "serial" else args.workers
            results[backend].append(iterate(ds, backend, min(args.batches, len(ds) - 1), workers))
            print(f"  {backend}: {results[backend][-1]:.1f} images/s", flush=True)
    lines = []
    for backend, values in results.items():
        values = sorted(values)
        line = (f"{backend:<10} workers={1 if backend == 'serial' else args.workers} batch={args.batch_size} "
                f"{ds.input_hw[0]}x{ds.input_hw[1]} mosaic+mixup on: {values[len(values) // 2]:7.1f} images/s"
                + (f" (median of {len(values)}: {', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else ""))
        print(line, flush=True)
        lines.append(line)
    if not args.no_record:
        record(SECTION, command_line("data_throughput.py", argv), lines,
               *(["Loading BCCD (every split) from each format, utils.data.formats.load_records; COCO and YOLO "
                  "are copies made by utils.data.convert:", load_lines] if load_lines else []))


if __name__ == "__main__":
    main()
