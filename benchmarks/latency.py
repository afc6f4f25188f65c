"""Batch-1 CPU latency of yolo_body for every registered backbone, and where the time goes.

    python benchmarks/latency.py                                    # every backbone, 416x416, 20 classes
    python benchmarks/latency.py --backbones mobilenetv2 --runs 20
    python benchmarks/latency.py --breakdown mobilenetv2 --sweep    # + parts, op profile, thread settings

The model (random weights: the speed does not depend on them) is called as one compiled
graph, ``tf.function(lambda x: model(x, training=False), jit_compile=False)`` with a fixed
(1, H, W, 3) input signature. No XLA: XLA makes depthwise convolutions ~20x slower on CPU.
After --warmup untimed calls, --runs timed calls give the median, mean and 90th percentile
of the wall time, and the median process CPU time per call (all threads; on an idle machine
with N usable cores, wall >= CPU / N). Params and GFLOPs come from nets.summary.conv_flops.

--frozen also times the same graph with its variables folded into constants
(convert_variables_to_constants_v2), which lets TensorFlow's graph optimiser fold each
BatchNorm into its convolution and fuse conv + bias + ReLU6: what an inference export gets.

--breakdown NAME times, interleaved so that load from other processes hits all alike, the
backbone alone (``keras.Model(inputs, build_backbone(...))``), backbone + neck (the model cut
at the heads' inputs) and the whole model, each as tf.function and frozen; then profiles one
batch of calls with tf.profiler and sums the op time by part (layer-name prefix: ``neck_``/
``spp_`` = neck, ``head_`` = heads, the rest = backbone) and by op type.

--sweep re-runs NAME (the --breakdown backbone, else the first of --backbones) in child
processes with intra-/inter-op threads 1/2 and with oneDNN custom ops on
(TF_ENABLE_ONEDNN_OPTS=1): thread pools are fixed once TensorFlow starts, so each setting
needs a fresh process.

Prints everything and records it in docs/benchmarks.md, section "Model latency (CPU, batch
1)", with the date, the machine, the load average and the command (--no-record to skip).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, load_average, machine, record  # noqa: E402

SECTION = "Model latency (CPU, batch 1)"
GOAL = ("mobilenetv2", 1.0, 20, 70.0)  # the model-zoo issue: x1.0, 20 classes, <= 70 ms median on 2 cores
SWEEP = (  # (intra-op threads, inter-op threads, TF_ENABLE_ONEDNN_OPTS); 0 = TensorFlow's default (= cores)
    (0, 0, None), (1, 1, None), (2, 1, None), (1, 2, None), (0, 0, "1"))
JSON_TAG = "LATENCY_JSON "


def configure_threads(intra: int = 0, inter: int = 0) -> None:
    """Set TensorFlow's thread pools (0 = its default); must run before any TF op."""
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))


def compiled_call(model, input_hw):
    """The model as one graph for a (1, H, W, 3) float32 batch, without XLA."""
    import tensorflow as tf
    spec = [tf.TensorSpec((1, *input_hw, 3), tf.float32)]
    return tf.function(lambda x: model(x, training=False), jit_compile=False, input_signature=spec)


def frozen_call(fn):
    """``fn``'s graph with variables turned into constants (BatchNorm then folds into convs).

    TF 2 has no public freezing API; convert_variables_to_constants_v2 is what the TFLite
    converter and tf2onnx use for the same purpose.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    return convert_variables_to_constants_v2(fn.get_concrete_function())


def time_interleaved(calls: dict, x, runs: int, warmup: int) -> dict:
    """{name: (wall seconds, CPU seconds) per run}; the calls take turns within each run."""
    for _ in range(warmup):
        for call in calls.values():
            call(x)
    out = {name: ([], []) for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            outputs = call(x)
            for o in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
                o.numpy()  # the result is on the host (a no-op copy on CPU, but keep it honest)
            out[name][1].append(time.process_time() - c0)
            out[name][0].append(time.perf_counter() - t0)
    return out


def stats_ms(values) -> dict:
    import numpy as np
    v = 1e3 * np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "mean": float(v.mean()), "p90": float(np.percentile(v, 90)),
            "min": float(v.min())}


def part_of(layer_name: str) -> str:
    """The yolo_body part a layer (or an op under its name scope) belongs to."""
    if layer_name.startswith("head_"):
        return "heads"
    if layer_name.startswith(("neck_", "spp_")):
        return "neck"
    return "backbone"


def part_inputs(model, part: str) -> list:
    """Tensors made outside ``part`` that layers of ``part`` consume, in layer order.

    ``part_inputs(model, "heads")`` are the neck's outputs: cutting the model there leaves
    backbone + neck.
    """
    import keras
    members = [layer for layer in model.layers if part_of(layer.name) == part]
    inside = {id(t) for layer in members for t in keras.tree.flatten(layer.output)}
    seen, out = set(), []
    for layer in members:
        for t in keras.tree.flatten(layer.input):
            if id(t) not in inside and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def random_input(input_hw):
    import numpy as np
    import tensorflow as tf
    return tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *input_hw, 3)).astype("float32"))


# ----------------------------------------------------------------------------- table
def measure_backbone(name, alpha, input_hw, num_classes, runs, warmup, frozen=False, compare=False,
                     **options) -> dict:
    """Times what the Detector runs: the body with its batch norms folded (nets/fold.py).

    ``compare``: also the body as it was before the speed work (Keras' BatchNormalization,
    not folded), in the same interleaved runs. ``frozen``: the folded graph with its
    variables as constants.
    """
    import keras

    from nets.fold import fold_batchnorm
    from nets.layers import use_keras_batchnorm
    from nets.summary import conv_flops
    from nets.yolo import yolo_body

    model = yolo_body(input_hw, num_classes, backbone=name, alpha=alpha, **options)
    fn = compiled_call(fold_batchnorm(model), input_hw)
    calls = {"tf.function": fn}
    if compare:
        calls["before"] = compiled_call(use_keras_batchnorm(model), input_hw)
    if frozen:
        calls["frozen"] = frozen_call(fn)
    times = time_interleaved(calls, random_input(input_hw), runs, warmup)
    label = name + "".join(f" ({v})" for v in options.values())
    row = {"backbone": label, "alpha": alpha, "params": model.count_params(), "gflops": conv_flops(model) / 1e9,
           "runs": runs, "warmup": warmup, "load": os.getloadavg()[0],
           **{k: stats_ms(w) | {"cpu": stats_ms(c)["median"]} for k, (w, c) in times.items()}}
    del calls, fn, model
    keras.backend.clear_session()
    return row


def format_table(rows) -> list[str]:
    frozen = any("frozen" in r for r in rows)
    before = any("before" in r for r in rows)
    head = ["backbone", "alpha", "params M", "GFLOPs", "median ms", "mean ms", "p90 ms", "min ms", "CPU ms"]
    head += ["before median", "before CPU", "speed-up"] if before else []
    head += ["frozen median", "frozen CPU"] if frozen else []
    head += ["load 1-min"]
    body = []
    for r in rows:
        t = r["tf.function"]
        line = [r["backbone"], f"{r['alpha']:g}", f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.2f}",
                f"{t['median']:.1f}", f"{t['mean']:.1f}", f"{t['p90']:.1f}", f"{t['min']:.1f}", f"{t['cpu']:.1f}"]
        if before:
            b = r.get("before")
            line += ([f"{b['median']:.1f}", f"{b['cpu']:.1f}", f"{b['median'] / t['median']:.2f}x"] if b
                     else ["", "", ""])
        if frozen:
            line += [f"{r['frozen']['median']:.1f}", f"{r['frozen']['cpu']:.1f}"] if "frozen" in r else ["", ""]
        body.append(line + [f"{r['load']:.2f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:>{w}}}" if i > 0 else f"{{:<{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head)] + [fmt.format(*b) for b in body]


# ------------------------------------------------------------------------- breakdown
def profile_ops(call, x, runs: int) -> dict | None:
    """Op time (ms per call, summed over threads) by part and by op type, from tf.profiler.

    Returns None when the profiler's trace cannot be read (its protobuf module moved).
    """
    import glob

    import tensorflow as tf
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2  # where TF 2.21 ships the trace format
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(runs):
            call(x)
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            return None
        space = xplane_pb2.XSpace()
        space.ParseFromString(pathlib.Path(files[0]).read_bytes())
    by_part, by_type = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":  # the caller's thread: nested wrappers, not ops
                continue
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if name.count(":") != 1:  # an op is "<name>:<type>"; not ParallelFor, ExecutorState::Process
                    continue
                op_name, op_type = name.split(":")
                scope = op_name.split("/")
                ms = ev.duration_ps / 1e9 / runs
                by_part[part_of(scope[1]) if len(scope) > 2 else "outside the model"] += ms
                by_type[op_type] += ms
    return {"part": dict(by_part), "type": dict(by_type)}


def breakdown(name, alpha, input_hw, num_classes, runs, warmup, profile_runs=5) -> tuple[list, list]:
    """Times and FLOPs of backbone / backbone + neck / whole model; returns (lines, paragraphs)."""
    import keras

    from nets.backbones import build_backbone
    from nets.summary import conv_flops
    from nets.yolo import yolo_body

    model = yolo_body(input_hw, num_classes, backbone=name, alpha=alpha)
    inputs = keras.Input((*input_hw, 3), name="image")
    parts = {
        "backbone": keras.Model(inputs, build_backbone(name, inputs, alpha=alpha), name="backbone_only"),
        "backbone + neck": keras.Model(model.inputs, part_inputs(model, "heads"), name="backbone_neck"),
        "whole model": model,
    }
    flops = {k: conv_flops(m) / 1e9 for k, m in parts.items()}
    calls = {}
    for k, m in parts.items():
        calls[k] = compiled_call(m, input_hw)
        calls[k + " (frozen)"] = frozen_call(calls[k])
    x = random_input(input_hw)
    times = time_interleaved(calls, x, runs, warmup)
    load = load_average()
    s = {k: stats_ms(w) | {"cpu": stats_ms(c)["median"]} for k, (w, c) in times.items()}

    lines = [f"{name} x{alpha:g} {input_hw[0]}x{input_hw[1]}, {num_classes} classes; {runs} runs after {warmup} "
             f"warm-up, the 6 calls interleaved; load average {load} at the end",
             f"{'part':<16} {'GFLOPs':>6}  {'median ms':>9} {'mean':>6} {'p90':>6} {'CPU ms':>6}   "
             f"{'frozen median':>13} {'CPU ms':>6}"]
    for k in parts:
        a, b = s[k], s[k + " (frozen)"]
        lines.append(f"{k:<16} {flops[k]:6.2f}  {a['median']:9.1f} {a['mean']:6.1f} {a['p90']:6.1f} {a['cpu']:6.1f}   "
                     f"{b['median']:13.1f} {b['cpu']:6.1f}")
    gf = {"backbone": flops["backbone"], "neck": flops["backbone + neck"] - flops["backbone"],
          "heads": flops["whole model"] - flops["backbone + neck"]}
    lines.append("split by difference (neck = (backbone + neck) - backbone, heads = whole - (backbone + neck)), "
                 "% of the whole model:")
    lines.append(f"{'':<9} {'GFLOPs':>13}  {'median ms':>12} {'CPU ms':>12}   {'frozen median':>13} {'CPU ms':>12}")
    for k in gf:
        cells = [f"{gf[k]:5.2f} ({100 * gf[k] / flops['whole model']:3.0f}%)"]
        for suffix in ("", " (frozen)"):
            for stat in ("median", "cpu"):
                w, n, b = (s[p + suffix][stat] for p in ("whole model", "backbone + neck", "backbone"))
                v = {"backbone": b, "neck": n - b, "heads": w - n}[k]
                cells.append(f"{v:6.1f} ({100 * v / w:3.0f}%)")
        lines.append(f"  {k:<7} {cells[0]:>13}  {cells[1]:>12} {cells[2]:>12}   {cells[3]:>13} {cells[4]:>12}")
    whole, frozen = s["whole model"], s["whole model (frozen)"]
    paragraphs = [
        f"Frozen graph vs tf.function (whole model): median {whole['median']:.1f} -> "
        f"{frozen['median']:.1f} ms, CPU {whole['cpu']:.1f} -> {frozen['cpu']:.1f} ms per call."]

    if profile_runs:
        for label in ("whole model", "whole model (frozen)"):
            prof = profile_ops(calls[label], x, profile_runs)
            if prof is None:
                lines.append("(tf.profiler trace unreadable: op profile skipped)")
                break
            total = sum(prof["type"].values())
            lines.append(f"op time of {label}, {profile_runs} profiled calls, ms per call summed over threads "
                         f"(total {total:.1f}):")
            lines.append("  by part: " + ", ".join(f"{k} {v:.1f} ({100 * v / total:.0f}%)"
                                                     for k, v in sorted(prof["part"].items(), key=lambda kv: -kv[1])))
            top = sorted(prof["type"].items(), key=lambda kv: -kv[1])
            rest = sum(v for _, v in top[8:])
            lines.append("  by op type: " + ", ".join(f"{k} {v:.1f} ({100 * v / total:.0f}%)" for k, v in top[:8])
                         + (f", other {rest:.1f} ({100 * rest / total:.0f}%)" if rest else ""))
    del calls, parts, model
    keras.backend.clear_session()
    return lines, paragraphs


# ----------------------------------------------------------------------------- sweep
def sweep(name, alpha, input_size, num_classes, runs, warmup) -> list[str]:
    """Median latency of ``name`` under each thread / oneDNN setting, one child process each."""
    lines = [f"{name} x{alpha:g}, {runs} runs after {warmup} warm-up per setting, one process per setting "
             "(0 = TensorFlow's default)",
             f"{'intra':>5} {'inter':>5} {'oneDNN':>8}  {'median ms':>9} {'p90':>6} {'CPU ms':>6}  "
             f"{'frozen median':>13} {'CPU ms':>6}  {'load 1-min':>10}"]
    print("\n".join(lines), flush=True)
    for intra, inter, onednn in SWEEP:
        env = dict(os.environ)
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        if onednn is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = onednn
        cmd = [sys.executable, __file__, "--backbones", name, "--alpha", f"{alpha:g}", "--input-size", input_size,
               "--num-classes", str(num_classes), "--runs", str(runs), "--warmup", str(warmup),
               "--threads", str(intra), "--inter-threads", str(inter), "--frozen", "--no-record", "--json"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        found = [line[len(JSON_TAG):] for line in proc.stdout.splitlines() if line.startswith(JSON_TAG)]
        label = "default" if onednn is None else f"={onednn}"
        if proc.returncode or not found:
            lines.append(f"{intra:>5} {inter:>5} {label:>8}  failed (exit {proc.returncode}): "
                         + (proc.stderr.strip().splitlines() or ["no output"])[-1])
            continue
        r = json.loads(found[-1])[0]
        t, f = r["tf.function"], r["frozen"]
        lines.append(f"{intra:>5} {inter:>5} {label:>8}  {t['median']:9.1f} {t['p90']:6.1f} {t['cpu']:6.1f}  "
                     f"{f['median']:13.1f} {f['cpu']:6.1f}  {r['load']:10.2f}")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="See the module docstring for what each figure means.")
    p.add_argument("--backbones", nargs="+", help="backbone names (default: every registered one)")
    p.add_argument("--alpha", type=float, help="width multiplier for all (default: each family's default)")
    p.add_argument("--input-size", default="416", help="S or HxW, multiples of 32 (default 416)")
    p.add_argument("--num-classes", type=int, default=20, help="default 20 (VOC)")
    p.add_argument("--runs", type=int, default=30, help="timed calls per model, at least 20 (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default 0: TensorFlow's, = cores)")
    p.add_argument("--inter-threads", type=int, default=0, help="inter-op threads (default 0: TensorFlow's)")
    p.add_argument("--frozen", action="store_true", help="also time the frozen graph (variables as constants)")
    p.add_argument("--mobilenetv2-taps", nargs="+", choices=["expanded", "projected"], default=["expanded"],
                   help="mobilenetv2 rows: one per taps setting (see train.py --taps)")
    p.add_argument("--compare-bn", action="store_true",
                   help="also time the body as before the speed work (Keras BatchNormalization, not folded)")
    p.add_argument("--breakdown", metavar="NAME", help="time backbone / neck / heads of this backbone and profile it")
    p.add_argument("--breakdown-runs", type=int, default=60, help="timed calls per part in --breakdown (default 60)")
    p.add_argument("--sweep", action="store_true", help="thread and oneDNN settings, one child process each")
    p.add_argument("--sweep-runs", type=int, default=20, help="timed calls per setting in --sweep (default 20)")
    p.add_argument("--no-table", action="store_true", help="skip the per-backbone table")
    p.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # machine-readable rows (for --sweep)
    args = p.parse_args(argv)
    for flag, value in (("--runs", args.runs), ("--breakdown-runs", args.breakdown_runs),
                        ("--sweep-runs", args.sweep_runs)):
        if value < 20:
            p.error(f"{flag} must be at least 20 (a median and a 90th percentile of fewer calls mean little), "
                    f"got {value}")
    if args.warmup < 1:
        p.error(f"--warmup must be at least 1 (the first call builds the graph), got {args.warmup}")
    if args.threads < 0 or args.inter_threads < 0:
        p.error("--threads and --inter-threads must be >= 0")

    import tensorflow as tf  # noqa: F401  (before keras: the thread pools are set before any op runs)
    configure_threads(args.threads, args.inter_threads)

    from nets.backbones import available_backbones, check_alpha
    from utils.targets import parse_input_hw

    try:
        hw = parse_input_hw(args.input_size)
        names = [n.lower() for n in (args.backbones or available_backbones())]
        alphas = {n: check_alpha(n, args.alpha) for n in names + ([args.breakdown.lower()] if args.breakdown else [])}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    blocks = []
    rows = []
    if not args.no_table:
        print(f"yolo_body {hw[0]}x{hw[1]}, {args.num_classes} classes, batch 1, {args.runs} runs after "
              f"{args.warmup} warm-up; threads intra {args.threads or 'default'}, inter "
              f"{args.inter_threads or 'default'}; TF_ENABLE_ONEDNN_OPTS="
              f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}", flush=True)
        for name in names:
            variants = [{"taps": t} for t in args.mobilenetv2_taps] if name == "mobilenetv2" else [{}]
            for options in variants:
                if options == {"taps": "expanded"} and len(variants) == 1:
                    options = {}
                rows.append(measure_backbone(name, alphas[name], hw, args.num_classes, args.runs, args.warmup,
                                             args.frozen, args.compare_bn, **options))
            if not args.json:
                table = format_table(rows)
                new = table[-len(variants):]  # this backbone's rows (two for mobilenetv2 with both taps)
                print("\n".join(table[:2] + new[1:] if len(rows) == len(variants) else new), flush=True)
        if args.json:
            print(JSON_TAG + json.dumps(rows), flush=True)
            return 0
        table = format_table(rows)
        blocks.append(f"Batch-1 latency of the compiled model call (tf.function, no XLA), {hw[0]}x{hw[1]}, "
                      f"{args.num_classes} classes, random weights, {args.runs} runs after {args.warmup} warm-up; "
                      "CPU ms = median process CPU time per call (all threads); load 1-min = load average at the "
                      "end of that backbone's runs; the model timed is what the Detector runs, batch norms folded "
                      "into the convolutions (nets/fold.py)"
                      + ("; before = the body with Keras' BatchNormalization, not folded (the model before the "
                         "speed work), timed in the same interleaved runs; speed-up = before / median"
                         if args.compare_bn else "")
                      + ("; frozen = variables folded into constants" if args.frozen else "") + ":")
        blocks.append(table)
        goal = next((r for r in rows if (r["backbone"], r["alpha"], args.num_classes) == GOAL[:3]), None)
        if goal and hw == (416, 416):
            verdict = "met" if goal["tf.function"]["median"] <= GOAL[3] else "not met"
            blocks.append(f"Goal of the model-zoo issue (mobilenetv2 x1.0, 20 classes, <= {GOAL[3]:.0f} ms median on "
                          f"2 cores): {goal['tf.function']['median']:.1f} ms measured here, {verdict}.")
            print(blocks[-1])

    if args.breakdown:
        name = args.breakdown.lower()
        print(f"\nbreakdown of {name}:", flush=True)
        lines, paragraphs = breakdown(name, alphas[name], hw, args.num_classes, args.breakdown_runs, args.warmup)
        print("\n".join(lines + paragraphs), flush=True)
        blocks += ["Where the time goes (--breakdown): backbone alone, backbone + neck (the model cut at the heads' "
                   "inputs) and the whole model, each as tf.function and frozen; then tf.profiler op time by "
                   "part and by op type:", lines, *paragraphs]

    if args.sweep:
        name = (args.breakdown or names[0]).lower()
        print(f"\nthread / oneDNN settings for {name}:", flush=True)
        lines = sweep(name, alphas[name], args.input_size, args.num_classes, args.sweep_runs, args.warmup)
        blocks += ["Thread and oneDNN settings (--sweep), each in a fresh process "
                   "(tf.config.threading; TF_ENABLE_ONEDNN_OPTS):", lines]

    if not args.no_record:
        record(SECTION, command_line("latency.py", argv), *blocks)
        print(f"\nrecorded in docs/benchmarks.md, section {SECTION!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
