"""Several workers on one machine: images/s of one process with 2 threads against 2 workers with 1
thread each, and the time the workers spend exchanging gradients per step.

    python benchmarks/multiworker.py                       # mobilenetv2 x0.5, 256 px, batch 8, demo data
    python benchmarks/multiworker.py --backbone ghostnet --alpha 1.0 --input-size 320 --steps 12

A correctness run more than a speed-up: on one 2-core machine, two workers split the same two
cores and add a gradient all-reduce over loopback TCP to every step; on several machines each
worker brings its own cores, and this all-reduce time is what the network has to carry per step.

- one process: ``train.py --strategy default`` with TF_NUM_INTRAOP_THREADS=2 (OMP too);
- two workers: ``python -m utils.launch --workers 2 -- train.py --strategy multiworker``, one
  thread each, the same global batch;
- both train ``--epochs 3 --steps-per-epoch S`` and are timed on epoch 2 (epoch 1 traces the
  graph; the last epoch is evaluated, epoch 2 is not), from Keras' own epoch time (whole
  seconds: S is large enough to make that ~2%);
- communication: two workers all-reduce tensors shaped like the model's trainable weights
  (the step's gradient exchange, alone) 20 times; the median per step. Measured this way rather
  than in the profiler's trace because the collective's time there interleaves with compute.

Records "Several workers on one machine" in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SECTION = "Several workers on one machine"
EPOCH_LINE = re.compile(r"(\d+)/(\d+) - (\d+)s - ")


def threads_env(n: int) -> dict:
    return {**os.environ, "TF_NUM_INTRAOP_THREADS": str(n), "TF_NUM_INTEROP_THREADS": str(n),
            "OMP_NUM_THREADS": str(n), "CUDA_VISIBLE_DEVICES": ""}


def epoch_seconds(text: str, prefix: str = "") -> list[int]:
    """Keras' per-epoch wall times (verbose 2 lines ``S/S - Ns - ...``) in the output ``text``."""
    return [int(m.group(3)) for line in text.splitlines() if line.startswith(prefix)
            for m in [EPOCH_LINE.search(line)] if m and m.group(1) == m.group(2)]


def run(argv, env, label):
    t0 = time.time()
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{label} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr, time.time() - t0


def allreduce_worker(args) -> int:
    """Run under utils.launch: the median time of one all-reduce of the model's gradients."""
    import numpy as np
    import tensorflow as tf

    from nets.yolo import yolo_body
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    body = yolo_body((args.input_size, args.input_size), 3, backbone=args.backbone, alpha=args.alpha)
    shapes = [tuple(w.shape) for w in body.trainable_weights]
    with strategy.scope():
        tensors = [tf.Variable(tf.zeros(s)) for s in shapes]

    @tf.function
    def exchange():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [t.read_value() for t in tensors])

    times = []
    for i in range(args.repeats + 3):
        t0 = time.perf_counter()
        strategy.run(exchange)
        times.append(time.perf_counter() - t0)
    times = times[3:]
    floats = sum(int(np.prod(s)) for s in shapes)
    print(f"ALLREDUCE {np.median(times) * 1e3:.1f} ms {floats}", flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="global batch")
    p.add_argument("--steps", type=int, default=12, help="steps per epoch (3 epochs; the second is timed)")
    p.add_argument("--repeats", type=int, default=20, help="all-reduces timed")
    p.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if args.allreduce_worker:
        return allreduce_worker(args)

    from utils.data.demo_data import make_demo_dataset
    work = pathlib.Path(tempfile.mkdtemp(prefix="multiworker_bench_"))
    demo = make_demo_dataset(work / "demo", num_images=max(64, 2 * args.batch_size * args.steps), seed=0)
    common = ["--root", str(demo), "--classes", str(demo / "demo_classes.txt"), "--backbone", args.backbone,
              "--alpha", str(args.alpha), "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
              "--epochs", "3", "--freeze-epochs", "0", "--steps-per-epoch", str(args.steps), "--eval-every", "1000",
              "--verbose", "2", "--no-tensorboard", "--workers", "1", "--allow-unteachable", "--no-ema"]
    rows = []
    text, _ = run([sys.executable, "train.py", *common, "--strategy", "default", "--save-dir", str(work / "one")],
                  threads_env(2), "one process")
    one = epoch_seconds(text)
    text, _ = run([sys.executable, "-m", "utils.launch", "--workers", "2", "--", "train.py", *common,
                   "--strategy", "multiworker", "--save-dir", str(work / "two")], threads_env(1), "two workers")
    two = epoch_seconds(text, "[worker 0]")
    if len(one) < 2 or len(two) < 2:
        sys.exit(f"could not read the epoch times (one process {one}, two workers {two})")
    text, _ = run([sys.executable, "-m", "utils.launch", "--workers", "2", "--", "benchmarks/multiworker.py",
                   "--allreduce-worker", "--backbone", args.backbone, "--alpha", str(args.alpha),
                   "--input-size", str(args.input_size), "--repeats", str(args.repeats)], threads_env(1), "all-reduce")
    found = re.search(r"\[worker 0\] ALLREDUCE ([\d.]+) ms (\d+)", text)
    if not found:
        sys.exit(f"no all-reduce time in the workers' output:\n{text[-2000:]}")
    comm_ms, floats = float(found.group(1)), int(found.group(2))
    images = args.steps * args.batch_size
    one_ips, two_ips = images / one[1], images / two[1]
    step_ms = 1e3 * two[1] / args.steps
    rows = [f"| one process, 2 threads | {one[1]} | {one_ips:.2f} | 1.00x | - |",
            f"| two workers, 1 thread each | {two[1]} | {two_ips:.2f} | {two_ips / one_ips:.2f}x | "
            f"{comm_ms:.1f} ms of {step_ms:.0f} ms ({100 * comm_ms / step_ms:.0f}%) |"]
    lines = [f"{args.backbone} x{args.alpha:g} at {args.input_size}, global batch {args.batch_size}, AdamW, "
             f"no EMA, demo images; epoch 2 of 3 ({args.steps} steps, no evaluation) timed. Gradient all-reduce: "
             f"{floats / 1e6:.2f} M float32 ({4 * floats / 1e6:.1f} MB) per step over loopback, median of "
             f"{args.repeats}. A correctness run more than a speed-up: both set-ups share the same 2 cores.", "",
             "| set-up | epoch s | images/s | vs one process | all-reduce per step |", "|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(SECTION, command_line("multiworker.py", argv), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
