"""Training-step throughput: images/s of one mobilenetv2-yolov4 training step at batch 8.

    python benchmarks/train_step.py       # mobilenetv2 x1.0 at 416 and 320, x0.5 at 320; batch 8
    python benchmarks/train_step.py --configs ghostnet:1.0:320 mobilenetv2:0.75:416

The step is model forward + loss + backward + AdamW update with EMA, on a fixed BCCD batch
(so the input pipeline is not part of it). Compare with benchmarks/data_throughput.py: the
pipeline must deliver images at least 3x faster than the step consumes them. Records the
figures in docs/benchmarks.md (section "Training step throughput"), with the training issue's
goal (at least 5 images/s at batch 8 on this 2-core machine) per setting.
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
BCCD = ROOT.parent / "shared" / "data" / "BCCD"
SECTION = "Training step throughput"
GOAL = 5.0  # images/s at batch 8, the training issue's target


def step_throughput(backbone="mobilenetv2", alpha=1.0, size=416, batch=8, steps=10, compare=False, **options):
    """{variant: (images/s, seconds/step)} of a bare training step on a fixed BCCD batch.

    Variant "after" is the body train.py builds (the fused BatchNormalization of nets/layers.py);
    with ``compare``, "before" is the same body with Keras' own BatchNormalization (the model
    before the speed work), stepped in turn with "after" so that load hits both alike. The
    figure is the median step time.
    """
    import statistics

    import keras
    from nets.layers import use_keras_batchnorm
    from nets.loss import YoloTrainer
    from nets.yolo import yolo_body
    from utils.data.dataset import TrainDataset
    from utils.data.voc import load_voc
    from utils.targets import load_anchors
    from utils.training.trainer import with_ema_warmup

    hw = (size, size)
    recs = load_voc(str(BCCD), "train", str(ROOT / "model_data" / "bccd_classes.txt"), log=None)
    anchors = load_anchors()
    x, y = TrainDataset(recs, 3, hw, batch, anchors).batch(0)
    body = yolo_body(hw, 3, backbone=backbone, alpha=alpha, weight_decay=0.0, **options)
    bodies = {"after": body, **({"before": use_keras_batchnorm(body)} if compare else {})}
    trainers = {}
    for name, net in bodies.items():
        trainer = YoloTrainer(net, anchors, 3, hw)
        # the optimizer class train.py builds (utils.training.trainer.make_optimizer): AdamW with the EMA warm-up
        opt = with_ema_warmup(keras.optimizers.AdamW)(1e-4, use_ema=True, weight_decay=5e-4, clipnorm=10.0)
        trainer.compile(optimizer=opt, jit_compile=False)
        opt.build(trainer.trainable_variables)
        for _ in range(2):  # trace + warm-up
            trainer.train_on_batch(x, y)
        trainers[name] = trainer
    times = {name: [] for name in trainers}
    for _ in range(steps):
        for name, trainer in trainers.items():
            t = time.perf_counter()
            trainer.train_on_batch(x, y)
            times[name].append(time.perf_counter() - t)
    keras.backend.clear_session()
    return {name: (batch / statistics.median(v), statistics.median(v)) for name, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["mobilenetv2:1.0:416", "mobilenetv2:1.0:320",
                                                     "mobilenetv2:0.5:320"],
                   help="backbone:alpha:input-size settings to time (default: the BCCD benchmark's, then lighter)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compare-bn", action="store_true",
                   help="also step the body with Keras' BatchNormalization (before the speed work), in turn")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")
    configs = []
    for spec in args.configs:
        try:
            backbone, alpha, size, *taps = spec.split(":")
            if len(taps) > 1 or (taps and backbone != "mobilenetv2"):
                raise ValueError
            configs.append((backbone, float(alpha), int(size), {"taps": taps[0]} if taps else {}))
        except ValueError:
            p.error(f"--configs: expected backbone:alpha:size[:taps] (e.g. mobilenetv2:0.5:320, "
                    f"mobilenetv2:1.0:416:projected), got {spec!r}")
    lines = [f"batch {args.batch_size}, AdamW + EMA, median of {args.steps} steps after 2 warm-up steps"
             + ("; before = Keras' BatchNormalization, after = the fused one train.py uses, stepped in turn"
                if args.compare_bn else "")
             + f"; goal of the training issue: >= {GOAL:g} images/s", "",
             f"{'backbone':12s} {'alpha':>5s} {'input':>5s} {'s/step':>7s} {'images/s':>8s}  goal"
             + ("   before s/step  before images/s  speed-up" if args.compare_bn else "")]
    for backbone, alpha, size, options in configs:
        res = step_throughput(backbone, alpha, size, args.batch_size, args.steps, args.compare_bn, **options)
        ips, dt = res["after"]
        label = backbone + "".join(f"/{v}" for v in options.values())
        line = f"{label:12s} {alpha:5g} {size:5d} {dt:7.2f} {ips:8.1f}  {'met' if ips >= GOAL else 'not met'}"
        if "before" in res:
            b_ips, b_dt = res["before"]
            line += f"   {b_dt:14.2f}  {b_ips:15.1f}  {ips / b_ips:7.2f}x"
        lines.append(line)
        print(lines[-1], flush=True)
    print("\n".join(lines))
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(SECTION, command_line("train_step.py", argv), lines[0], lines[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
