"""Compare backbones for speed against accuracy: train each configuration the same way, export
it, evaluate every export on the test split and time it at batch 1 (compare.py's work).

    cmp = Comparison("runs/compare/bccd", parse_configs(["mobilenetv2:0.5@320", "ghostnet"], 416),
                     ["--root", "../shared/data/BCCD", "--classes", "model_data/bccd_classes.txt", "--epochs", "30"])
    cmp.run()

A configuration is ``backbone[:alpha[:neck]][@size]`` (alpha: the family's default when left
out; neck: the neck width, train.py's ``--neck-width``, the alpha when left out; size: the
recipe's ``--input-size``). Each one trains with train.py's own code
(utils.training.trainer.run) into ``<out>/<name>/``, with the recipe's options and its own
backbone, alpha, input size and save folder. Then best.keras is evaluated on the test split
of the same data (VOC mAP@0.5, COCO mAP@[.5:.95], per-class AP), exported to each runtime
(utils.inference.export; int8 calibrated on the training split), and every export is
evaluated on that same test split with its own runtime (an int8 row carries the int8 file's
mAP, not the Keras model's) and timed at batch 1 on this machine (:func:`time_batch`: median
and p90 of the network alone, the protocol of benchmarks/export_latency.py). What one
configuration yields is written to ``<out>/<name>/result.json`` last, atomically: a
configuration with that file is finished and is never redone; one without it is continued
(a half-trained run through train.py's ``--resume``), so a comparison stopped by Ctrl-C, a
kill or a lost machine goes on where it stopped when the same command runs again.

Outputs in ``<out>``: ``results.csv`` (one row per configuration and runtime),
``results.md`` (a markdown table sorted by mAP@0.5) and ``speed_vs_map.png`` (mAP@0.5 against
batch-1 latency per runtime, the Pareto front drawn and its points labelled, optional
reference points such as another detector's figures on the same axes).

``retime=True``: the latencies of finished configurations are measured again (the exports
are kept), so that every figure of a comparison comes from one quiet run.

``latency_only=True``: no training; parameters, GFLOPs and latency of each configuration
with random weights (batch-norm statistics from a few images, so the exports see realistic
activations), for choosing what to train.
"""
from __future__ import annotations

import csv
import dataclasses
import gc
import json
import math
import os
import statistics
import time

import numpy as np

RUNTIMES = ("keras", "tflite-fp32", "tflite-int8", "onnx")
DEFAULT_RUNTIMES = RUNTIMES
RESULT_FILE = "result.json"
STATE_FILE = "compare_state.json"


class CompareError(ValueError):
    """A comparison that cannot start: a bad configuration, runtime or option (one message)."""


# ----------------------------------------------------------------------------- configurations

@dataclasses.dataclass(frozen=True)
class Config:
    backbone: str
    alpha: float
    size: int
    neck_width: float | None = None  # yolo_body's neck_width; None: the alpha

    @property
    def name(self) -> str:
        """Folder name of the configuration's run, e.g. ``mobilenetv2-a0.5-320`` or, with a
        neck width of its own, ``mobilenetv2-a1-n0.5-320``."""
        neck = f"-n{self.neck_width:g}" if self.neck_width is not None else ""
        return f"{self.backbone}-a{self.alpha:g}{neck}-{self.size}"

    @property
    def spec(self) -> str:
        """The configuration as written on the command line, e.g. ``mobilenetv2:0.5@320``."""
        neck = f":{self.neck_width:g}" if self.neck_width is not None else ""
        return f"{self.backbone}:{self.alpha:g}{neck}@{self.size}"


def parse_config(spec: str, default_size: int) -> list[Config]:
    """``backbone[:alpha[:neck]][@size]`` -> [Config]; ``all[@size]`` -> every registered
    backbone at its default alpha. Unknown backbones or alphas, a neck width out of range and
    sizes that are not positive multiples of 32 are a CompareError naming the configuration
    and what is valid."""
    from nets.backbones import available_backbones, check_alpha
    from nets.widths import check_neck_width

    text = str(spec).strip()
    body, _, size_text = text.partition("@")
    try:
        size = int(size_text) if size_text else int(default_size)
    except ValueError:
        raise CompareError(f"configuration {spec!r}: size {size_text!r} is not a whole number") from None
    if size <= 0 or size % 32:
        raise CompareError(f"configuration {spec!r}: input size {size} is not a positive multiple of 32")
    name, _, alpha_text = body.partition(":")
    alpha_text, _, neck_text = alpha_text.partition(":")
    name = name.strip().lower()
    if name == "all":
        if alpha_text or neck_text:
            raise CompareError(f"configuration {spec!r}: 'all' takes each family's default alpha and neck width; "
                               "give neither")
        return [Config(b, check_alpha(b, None), size) for b in available_backbones()]
    try:
        alpha = float(alpha_text) if alpha_text else None
    except ValueError:
        raise CompareError(f"configuration {spec!r}: alpha {alpha_text!r} is not a number") from None
    try:
        alpha = check_alpha(name, alpha)
        neck = check_neck_width(neck_text, "neck width") if neck_text else None
        # a neck as wide as the alpha is the default network: one configuration, one run folder
        return [Config(name, alpha, size, None if neck == alpha else neck)]
    except ValueError as exc:
        raise CompareError(f"configuration {spec!r}: {exc}") from None


def parse_configs(specs, default_size: int) -> list[Config]:
    """Every configuration of ``specs`` in order, duplicates once."""
    out = []
    for spec in specs:
        out += [c for c in parse_config(spec, default_size) if c not in out]
    if not out:
        raise CompareError("no configuration to compare")
    return out


def check_runtimes(runtimes) -> list[str]:
    """The runtimes in order, each known and installed; otherwise one CompareError saying which
    is not and how to get it."""
    runtimes = list(dict.fromkeys(runtimes))
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise CompareError(f"unknown runtime(s) {', '.join(bad) or '(none given)'}; valid: {', '.join(RUNTIMES)}")
    if any(r.startswith("tflite") for r in runtimes):
        from utils.inference.runtime import RuntimeLoadError, litert_interpreter
        try:
            litert_interpreter()
        except (ImportError, RuntimeLoadError) as exc:
            raise CompareError(f"runtime tflite is not installed ({exc}); pip install -r requirements.txt") from None
    if "onnx" in runtimes:
        missing = [m for m in ("tf2onnx", "onnxruntime") if not _importable(m)]
        if missing:
            raise CompareError(f"runtime onnx needs {' and '.join(missing)}, which is not installed; "
                               "pip install -r requirements.txt")
    return runtimes


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def parse_reference(text: str) -> tuple[str, float, float]:
    """``NAME:LATENCY_MS:MAP50`` (e.g. ``YOLOv8n onnx:24:0.700``) -> (name, ms, mAP)."""
    name, sep, rest = str(text).rpartition(":")
    name2, sep2, lat = name.rpartition(":")
    try:
        if not (sep and sep2 and name2):
            raise ValueError
        ms, m = float(lat), float(rest)
        if ms <= 0 or not 0.0 <= m <= 1.0:
            raise ValueError
    except ValueError:
        raise CompareError(f"reference point {text!r}: expected NAME:LATENCY_MS:MAP50 with a latency > 0 and "
                           "an mAP in [0, 1], e.g. 'YOLOv8n onnx:24:0.700'") from None
    return name2, ms, m


# ----------------------------------------------------------------------------- measures

def pareto_front(points) -> list[int]:
    """Indices of the points (latency, mAP) no other point dominates, by latency: a point is
    dominated when another is at least as fast and at least as accurate, and strictly better
    in one. Equal points are all kept."""
    pts = [(float(l), float(m)) for l, m in points]
    front = []
    for i, (li, mi) in enumerate(pts):
        if not any((lj <= li and mj >= mi) and (lj < li or mj > mi) for j, (lj, mj) in enumerate(pts) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], -pts[i][1]))


def time_batch(fn, batch, warmup: int = 5, runs: int = 30) -> tuple[float, float]:
    """(median, p90) in ms of ``fn(batch)`` over ``runs`` calls after ``warmup`` untimed ones.
    Every runtime of utils.inference.runtime returns NumPy arrays: the work is done when the
    call returns."""
    for _ in range(int(warmup)):
        fn(batch)
    times = []
    for _ in range(max(1, int(runs))):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * statistics.median(times), 1000 * times[max(0, math.ceil(0.9 * len(times)) - 1)]


def model_stats(model) -> dict:
    """Parameters and GFLOPs (nets.summary.conv_flops) of a yolo body."""
    from nets.summary import conv_flops
    return {"params": int(model.count_params()), "gflops": conv_flops(model) / 1e9}


def _write_json(path, data) -> None:
    from utils.checkpoint import atomic_path
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the comparison

class Comparison:
    """One comparison: configurations x runtimes, trained with one recipe into ``out_dir``.

    Args:
        out_dir: the comparison folder (a run folder per configuration, the outputs).
        configs: :class:`Config` list (:func:`parse_configs`).
        train_argv: train.py options shared by every configuration (data, epochs, batch...);
            --backbone, --alpha, --input-size, --save-dir, --resume and --exist-ok are set here.
        runtimes: any of RUNTIMES.
        runs, warmup: timing protocol of :func:`time_batch`.
        calib_images: int8 calibration images (a seeded choice of the training split).
        references: (name, latency ms, mAP@0.5) points drawn on the plot.
        latency_only: no training (module docstring); ``num_classes`` is used when the recipe
            names no dataset.
        log: where progress lines go.
    """

    def __init__(self, out_dir, configs, train_argv=(), runtimes=DEFAULT_RUNTIMES, runs: int = 30, warmup: int = 5,
                 calib_images: int = 100, references=(), latency_only: bool = False, num_classes: int = 20,
                 retime: bool = False, log=print):
        self.out_dir = os.fspath(out_dir)
        self.configs = list(configs)
        self.train_argv = [str(a) for a in train_argv]
        self.runtimes = check_runtimes(runtimes)
        self.runs, self.warmup, self.calib_images = int(runs), int(warmup), int(calib_images)
        self.references = list(references)
        self.latency_only = bool(latency_only)
        self.retime = bool(retime)
        self.num_classes = int(num_classes)
        self.log = log or (lambda *a: None)
        for flag in ("--backbone", "--alpha", "--neck-width", "--input-size", "--save-dir", "--resume", "--exist-ok",
                     "--config"):
            if flag in self.train_argv:
                raise CompareError(f"{flag} is set by the comparison for each configuration; leave it out of the "
                                   "training options")
        # the recipe parses: bad training options fail before anything starts; without the first
        # configuration's own neck width, so that a recipe's --neck-width in any spelling is refused here
        self.train_args(dataclasses.replace(self.configs[0], neck_width=None))

    # -- paths and options
    def run_dir(self, cfg: Config) -> str:
        return os.path.join(self.out_dir, cfg.name)

    def train_args(self, cfg: Config, resume: bool = False):
        from utils.training.config import parse_train_args
        argv = self.train_argv + ["--backbone", cfg.backbone, "--alpha", f"{cfg.alpha:g}",
                                  "--input-size", str(cfg.size), "--save-dir", self.run_dir(cfg)]
        argv += ["--neck-width", repr(cfg.neck_width)] if cfg.neck_width is not None else []  # exact, not :g
        argv += ["--resume"] if resume else ["--exist-ok"]
        try:
            args = parse_train_args(argv)
        except SystemExit:  # argparse printed what is wrong with the training options
            raise CompareError(f"bad training options: {' '.join(self.train_argv)}") from None
        if args.neck_width != cfg.neck_width:  # the recipe set it (--neck-width=W, an abbreviation)
            raise CompareError("--neck-width is set by the comparison for each configuration "
                               "(backbone:alpha:neck@size); leave it out of the training options")
        return args

    # -- driver
    def run(self, train_fn=None) -> list[dict]:
        """Run (or continue) every configuration, then write the outputs; returns the results.
        ``train_fn`` replaces utils.training.trainer.run (tests)."""
        os.makedirs(self.out_dir, exist_ok=True)
        results = []
        for i, cfg in enumerate(self.configs, 1):
            path = os.path.join(self.run_dir(cfg), RESULT_FILE)
            done = _read_json(path)
            same_budget = done is not None and (self.latency_only or done.get("epochs") == self.train_args(cfg).epochs)
            if done is not None and done.get("latency_only") == self.latency_only and same_budget and \
                    set(self.runtimes) <= {r["runtime"] for r in done["rows"]}:
                self.log(f"[{i}/{len(self.configs)}] {cfg.spec}: finished earlier ({path})")
                if self.retime:
                    done = self._retime(done)
                    _write_json(path, done)
            else:
                self.log(f"[{i}/{len(self.configs)}] {cfg.spec}")
                done = self._latency_only(cfg) if self.latency_only else self._train_and_measure(cfg, train_fn)
                _write_json(path, done)
                self._release()
            results.append(done)
            self.write_outputs(results)
        return results

    @staticmethod
    def _release():
        import keras
        keras.backend.clear_session()
        gc.collect()

    def _train_and_measure(self, cfg: Config, train_fn=None) -> dict:
        from utils.evaluate import evaluate_records
        from utils.inference.detector import Detector
        from utils.inference.export import calibration_from_records
        from utils.inference.runtime import open_model
        from utils.training.trainer import TrainError, load_split, resolve_data, run

        run_dir = self.run_dir(cfg)
        state_path = os.path.join(run_dir, STATE_FILE)
        state = _read_json(state_path) or {"train_s": 0.0}
        resume = os.path.isfile(os.path.join(run_dir, "resume.json"))
        args = self.train_args(cfg, resume=resume)
        summary = (train_fn or run)(args)
        state["train_s"] = float(state["train_s"]) + float(summary.get("wall_s", 0.0))
        _write_json(state_path, state)  # the time of a segment killed midway is lost, not the rest

        best = os.path.join(run_dir, "best.keras")
        if not os.path.isfile(best):
            raise TrainError(f"{cfg.spec}: training wrote no best.keras in {run_dir} (no validation split?)")
        train_records, _, class_names = resolve_data(args)
        test = load_split(args, "test", class_names, log=None)
        if not test:
            raise TrainError(f"{cfg.spec}: the test split is empty")
        keras_rt = open_model(best, num_threads=os.cpu_count())
        stats = model_stats(keras_rt.model)
        hw = tuple(int(v) for v in keras_rt.meta["input_shape"][:2])
        batch = calibration_from_records(test, 1, hw)[0][0]
        files = {"keras": best}
        files.update(self._export(best, [r for r in self.runtimes if r != "keras"], train_records, hw))
        rows = []
        for runtime in self.runtimes:
            rt = keras_rt if runtime == "keras" else open_model(files[runtime], num_threads=os.cpu_count())
            res = evaluate_records(Detector(rt, rt.meta), test, batch_size=8)
            ms, p90 = time_batch(rt, batch, self.warmup, self.runs)
            rows.append({"runtime": runtime, "map50": float(res["map"]),
                         "map50_95": float(res["coco"]["map_50_95"]) if res.get("coco") else None,
                         "per_class": {n: float(c["ap"]) for n, c in zip(class_names, res["per_class"])},
                         "latency_ms": ms, "p90_ms": p90, "mb": _size(files[runtime]) / 1e6,
                         "file": os.path.relpath(files[runtime], self.out_dir)})
            self.log(f"  {runtime}: mAP@0.5 {rows[-1]['map50']:.3f}, {ms:.1f} ms (p90 {p90:.1f})")
        return {"config": cfg.spec, "name": cfg.name, "backbone": cfg.backbone, "alpha": cfg.alpha,
                "neck_width": cfg.neck_width, "size": cfg.size,
                "latency_only": False, **stats, "train_s": state["train_s"], "epochs": args.epochs,
                "test_images": len(test), "class_names": class_names, "rows": rows}

    def _retime(self, done: dict) -> dict:
        """``done`` with every row's latency measured again now (the files are kept): timings
        taken while the machine was busy (e.g. training the next configuration) are retaken
        on a quiet one, all in one run."""
        from utils.inference.runtime import open_model

        for row in done["rows"]:
            rt = open_model(os.path.join(self.out_dir, row["file"]), num_threads=os.cpu_count())
            hw = tuple(int(v) for v in rt.meta["input_shape"][:2])
            batch = np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)).astype(np.float32)
            row["latency_ms"], row["p90_ms"] = time_batch(rt, batch, self.warmup, self.runs)
            self.log(f"  {row['runtime']}: {row['latency_ms']:.1f} ms (p90 {row['p90_ms']:.1f}), timed again")
        self._release()
        return done

    def _export(self, weights, formats, train_records, hw) -> dict:
        from utils.inference.export import calibration_from_records, export_detector

        if not formats:
            return {}
        calibration = None
        if "tflite-int8" in formats:
            calibration = calibration_from_records(train_records, self.calib_images, hw, seed=0)
        out = os.path.join(os.path.dirname(weights), "export")
        results = export_detector(weights, out, formats, calibration=calibration, log=None)
        return {r.format: r.path for r in results if r.variant == "raw"}

    def _latency_only(self, cfg: Config) -> dict:
        import keras

        from nets.yolo import yolo_body
        from utils.checkpoint import save_detector
        from utils.inference.export import export_model, set_batchnorm_stats
        from utils.inference.runtime import open_model

        images, class_names, anchors = self._latency_images(cfg.size)
        keras.utils.set_random_seed(0)
        body = yolo_body((cfg.size, cfg.size), len(class_names), backbone=cfg.backbone, alpha=cfg.alpha,
                         neck_width=cfg.neck_width)
        set_batchnorm_stats(body, images[:8])
        meta = {"class_names": class_names, "anchors": anchors.tolist(), "input_shape": [cfg.size, cfg.size],
                "backbone": cfg.backbone, "alpha": cfg.alpha, "neck_width": cfg.neck_width}
        run_dir = self.run_dir(cfg)
        os.makedirs(run_dir, exist_ok=True)
        files = {"keras": save_detector(body, os.path.join(run_dir, "random.keras"), meta)}
        formats = [r for r in self.runtimes if r != "keras"]
        if formats:
            results = export_model(body, meta, os.path.join(run_dir, "export"), formats, stem="random",
                                   calibration=images if "tflite-int8" in formats else None, log=None)
            files.update({r.format: r.path for r in results if r.variant == "raw"})
        rows = []
        for runtime in self.runtimes:
            ms, p90 = time_batch(open_model(files[runtime], num_threads=os.cpu_count()), images[:1],
                                 self.warmup, self.runs)
            rows.append({"runtime": runtime, "map50": None, "map50_95": None, "per_class": {},
                         "latency_ms": ms, "p90_ms": p90, "mb": _size(files[runtime]) / 1e6,
                         "file": os.path.relpath(files[runtime], self.out_dir)})
            self.log(f"  {runtime}: {ms:.1f} ms (p90 {p90:.1f})")
        return {"config": cfg.spec, "name": cfg.name, "backbone": cfg.backbone, "alpha": cfg.alpha,
                "neck_width": cfg.neck_width, "size": cfg.size,
                "latency_only": True, **model_stats(body), "train_s": None, "epochs": 0, "test_images": 0,
                "class_names": class_names, "rows": rows}

    def _latency_images(self, size):
        """Letterboxed images of the recipe's training split when it names a dataset, else noise;
        the class list and anchors of the recipe."""
        from utils.inference.export import calibration_from_records
        from utils.targets import load_anchors
        from utils.training.trainer import TrainError, resolve_data

        args = self.train_args(self.configs[0])
        anchors = load_anchors(args.anchors)
        try:
            train, _, class_names = resolve_data(args)
            calib = calibration_from_records(train, min(self.calib_images, len(train)), (size, size))
            images = np.concatenate([calib[i][0] for i in range(len(calib))]).astype(np.float32)
        except (TrainError, FileNotFoundError, ValueError):
            class_names = [f"class{i}" for i in range(self.num_classes)]
            images = np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)).astype(np.float32)
        return images, class_names, anchors

    # -- outputs
    def write_outputs(self, results) -> dict:
        """results.csv, results.md and (with mAP figures) speed_vs_map.png in ``out_dir``."""
        paths = {"csv": write_csv(results, os.path.join(self.out_dir, "results.csv")),
                 "md": os.path.join(self.out_dir, "results.md")}
        from utils.checkpoint import atomic_path
        with atomic_path(paths["md"], suffix=".md") as tmp, open(tmp, "w") as f:
            f.write(format_markdown(results) + "\n")
        if any(r["map50"] is not None for res in results for r in res["rows"]):
            paths["png"] = plot_speed_vs_map(results, os.path.join(self.out_dir, "speed_vs_map.png"),
                                             self.references)
        return paths


def _size(path) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


# ----------------------------------------------------------------------------- reports

CSV_FIELDS = ("config", "backbone", "alpha", "neck_width", "size", "runtime", "map50", "map50_95", "latency_ms",
              "p90_ms", "params_m", "gflops", "size_mb", "train_min", "epochs")


def flat_rows(results) -> list[dict]:
    """One dict per (configuration, runtime), with per-class AP columns ``ap_<class>``."""
    from nets.widths import effective_neck_width
    rows = []
    for res in results:
        for r in res["rows"]:
            row = {"config": res["config"], "backbone": res["backbone"], "alpha": res["alpha"],
                   "neck_width": effective_neck_width(res["alpha"], res.get("neck_width")), "size": res["size"],
                   "runtime": r["runtime"], "map50": r["map50"], "map50_95": r["map50_95"],
                   "latency_ms": r["latency_ms"], "p90_ms": r["p90_ms"], "params_m": res["params"] / 1e6,
                   "gflops": res["gflops"], "size_mb": r["mb"],
                   "train_min": None if res["train_s"] is None else res["train_s"] / 60, "epochs": res["epochs"]}
            row.update({f"ap_{n}": v for n, v in r["per_class"].items()})
            rows.append(row)
    return rows


def write_csv(results, path) -> str:
    from utils.checkpoint import atomic_path
    rows = flat_rows(results)
    extra = sorted({k for r in rows for k in r} - set(CSV_FIELDS))
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS) + extra)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(v) for k, v in r.items()})
    return path


def _csv_value(v):
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_markdown(results) -> str:
    """A markdown table, best mAP@0.5 first (fastest first when there is no mAP)."""
    rows = flat_rows(results)
    rows.sort(key=lambda r: (-(r["map50"] if r["map50"] is not None else -1.0), r["latency_ms"]))
    front = set(pareto_front([(r["latency_ms"], r["map50"]) for r in rows])) \
        if rows and all(r["map50"] is not None for r in rows) else set()
    head = ["config", "runtime", "mAP@0.5", "mAP@.5:.95", "latency ms (p90)", "params M", "GFLOPs", "MB",
            "train min", "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join([
            r["config"], r["runtime"], _fmt(r["map50"], ".3f"), _fmt(r["map50_95"], ".3f"),
            f"{r['latency_ms']:.1f} ({r['p90_ms']:.1f})", f"{r['params_m']:.2f}", f"{r['gflops']:.2f}",
            f"{r['size_mb']:.1f}", _fmt(r["train_min"], ".1f"), "yes" if i in front else ""]) + " |")
    return "\n".join(lines)


def plot_speed_vs_map(results, path, references=()) -> str:
    """mAP@0.5 against batch-1 latency, one marker per runtime, the Pareto front over all points
    drawn and labelled, reference points as black stars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.checkpoint import atomic_path

    rows = [r for r in flat_rows(results) if r["map50"] is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    markers = dict(zip(RUNTIMES, "osD^"))
    for runtime in RUNTIMES:
        pts = [r for r in rows if r["runtime"] == runtime]
        if pts:
            ax.scatter([r["latency_ms"] for r in pts], [r["map50"] for r in pts], marker=markers[runtime],
                       s=40, label=runtime, alpha=0.8)
    front = pareto_front([(r["latency_ms"], r["map50"]) for r in rows])
    if front:
        ax.step([rows[i]["latency_ms"] for i in front], [rows[i]["map50"] for i in front], where="post",
                color="grey", linestyle="--", linewidth=1, label="Pareto front")
        for i in front:
            ax.annotate(f"{rows[i]['config']} {rows[i]['runtime']}", (rows[i]["latency_ms"], rows[i]["map50"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    for name, ms, m in references:
        ax.scatter([ms], [m], marker="*", s=140, color="black")
        ax.annotate(name, (ms, m), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel("batch-1 latency on this machine (ms, median)")
    ax.set_ylabel("test mAP@0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
