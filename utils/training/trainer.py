"""The training run behind train.py: data, model, two-phase schedule, logs, resume.

Phases (the schedule users of this kind of project expect): epochs [0, freeze_epochs) train
with the backbone frozen at ``freeze_batch_size``; the rest train everything at
``batch_size``. Each phase is one ``fit`` call with its own optimizer (the trainable set
changes, so the optimizer's slots do too). ``resume_{0,1}.weights.h5`` + ``resume.json`` are
written at every epoch end; ``--resume`` rebuilds the phase of the next epoch, restores model
and optimizer state (iteration count, moments, EMA) and continues with the same learning
rate position and augmentation schedule (both are pure functions of the epoch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

DEMO_ROOT = os.path.join("VOCdevkit", "demo")


class TrainError(RuntimeError):
    """A problem with the run's setup, reported as one message (no traceback)."""


def _log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------- data

def resolve_data(args, spec=None):
    """(train_records, val_records, class_names) from the parsed options (``spec``: the
    :func:`resolve_spec` of ``args`` when already made)."""
    spec = spec or resolve_spec(args)
    train = load_split(args, args.train_split, spec.class_names, spec=spec)
    val = load_split(args, args.val_split, spec.class_names, log=None, spec=spec)
    return train, val, spec.class_names


def resolve_spec(args, log=print):
    """The dataset train.py's options name (a utils.data.formats.DataSpec with its class list):
    --demo's set built, VOCdevkit/VOC2007 when no dataset is given, the class list from
    --classes, else the dataset's own (COCO, YOLO: one line says so), else
    model_data/voc_classes.txt for VOC (filled into args.classes, so config.yaml holds it)."""
    from utils.data import formats

    if args.demo:
        from utils.data.demo_data import make_demo_dataset
        root = args.root[0] if args.root else DEMO_ROOT
        path = make_demo_dataset(root, num_images=args.demo_images, seed=0)
        args.root = [str(path)]
        if args.classes is None:
            args.classes = os.path.join(str(path), "demo_classes.txt")
    if not formats.has_data_options(args):
        default = os.path.join("VOCdevkit", "VOC2007")
        if os.path.isdir(os.path.join(default, "Annotations")):
            args.root = [default]
        else:
            raise TrainError(
                "no dataset given and no VOC data under VOCdevkit/VOC2007. Pass --data PATH (a VOC root, a COCO "
                ".json or folder, a YOLO data.yaml or folder), --root DIR (VOC layout) or "
                "--images DIR --annotations DIR, or run `python train.py --demo` to build and train on "
                "the bundled synthetic demo dataset (offline).")
    problem = formats.data_options_problem(args)
    if problem:
        raise TrainError(problem)
    default_classes = os.path.join("model_data", "voc_classes.txt")
    spec = formats.spec_from_args(args, default_classes=default_classes, log=log)
    if args.classes is None and spec.fmt == "voc":
        args.classes = default_classes
    return spec


def load_split(args, split, class_names, log=print, spec=None):
    """Records of one split of the dataset train.py's options name (after :func:`resolve_data`);
    a split missing from the files is made on the spot from --split-ratios and --seed, as for
    training, so the test split of a run is the one its training never saw."""
    from utils.data.formats import spec_from_args

    spec = spec or spec_from_args(args, class_names=class_names, log=None)
    return spec.load(split, tuple(args.split_ratios), args.seed, log=log)


def check_teachability(args, spec, train_records, class_names, log=None):
    """The teachability check of the training split (utils.data.check.teachability) before
    anything is built: warnings are logged and training goes on; a fatal finding (no usable
    box, a class without a box, most boxes of unknown classes) raises TrainError (exit code 2)
    unless --allow-unteachable, which logs it and goes on. Returns the Findings."""
    from utils.data.check import anchors_command, teachability
    from utils.data.voc import ReportLog
    from utils.targets import load_anchors

    log = log or _log
    # The records came from resolve_data, whose load reported the boxes it dropped (unknown
    # classes, bad boxes) through its log only. Rather than change that call, the training
    # split is loaded again, cheaply: headers only (check_images=False, no decoding), silent,
    # through a ReportLog that keeps the load's LoadReport (its per-class unknown counts and
    # per-image drops). On BCCD's train split (291 images) that is ~0.4 s on 2 busy cores.
    report_log = ReportLog()
    try:
        spec.load(args.train_split, tuple(args.split_ratios), args.seed, check_images=False, log=report_log)
    except (ValueError, OSError):
        pass  # the first load succeeded; judge the records alone
    report = report_log.reports[-1] if report_log.reports else None
    hw = tuple(args.input_size) if len(args.input_size) == 2 else (args.input_size[0],) * 2
    findings = teachability(train_records, class_names, load_anchors(args.anchors), hw, report,
                            where=f"the training split ({args.train_split})",
                            command=anchors_command(args, hw, split=args.train_split), anchors_path=args.anchors)
    if findings.fatal and not getattr(args, "allow_unteachable", False):
        raise TrainError(f"{findings.format()}\nnothing trained: a model trained on this data would find nothing. "
                         "Fix the class list or the annotations, or pass --allow-unteachable to train anyway")
    log(findings.format())
    if findings.fatal:
        log("--allow-unteachable: training anyway, despite the fatal findings above")
    return findings


def run_records(weights, split: str):
    """Records of ``split`` of the dataset the run that wrote ``weights`` trained on, read from
    the run folder's config.yaml (train.py writes it beside best.keras) with the run's own
    split ratios and seed; None when ``weights`` has no run folder beside it."""
    from utils.checkpoint import read_meta
    from utils.training.config import parse_train_args

    config = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
    if not os.path.isfile(config):
        return None
    args = parse_train_args(["--config", config])  # holds the data options as resolved for the run
    # the model's classes: a COCO / YOLO run took its class list from the dataset (classes: null)
    return load_split(args, split, read_meta(weights)["class_names"], log=None)


# ----------------------------------------------------------------------------- model

def ema_warmup_momentum(step, momentum: float):
    """EMA momentum at optimizer step ``step`` (0-based): min(momentum, (1 + t) / (10 + t)),
    the ``num_updates`` rule of tf.train.ExponentialMovingAverage. Works on floats and tensors."""
    from keras import ops
    t = ops.cast(step, "float32")
    return ops.minimum(float(momentum), (1.0 + t) / (10.0 + t))


def with_ema_warmup(optimizer_class):
    """``optimizer_class`` whose Keras EMA warms its momentum up (:func:`ema_warmup_momentum`).

    Why: Keras' optimizer EMA uses the full momentum from the first step; at 0.99 the average
    lags ~100 steps, and it runs with the batch-norm statistics of the current weights (Keras
    averages trainable variables only). In a short run from scratch that ruins it: on BCCD
    after 12 epochs (300 steps) the raw weights scored val mAP@0.5 0.742 and the EMA weights
    0.408. With the warm-up the average spans ~t/9 steps until it reaches the set momentum
    (YOLOv5's ModelEMA ramps its decay for the same reason). Overrides the one Keras method
    that updates the average (BaseOptimizer._update_model_variables_moving_average, called
    once per step before the iteration counter moves); nothing else changes.
    """
    from keras import ops

    class EmaWarmup(optimizer_class):
        def _update_model_variables_moving_average(self, trainable_variables):
            if not self.use_ema:
                return
            momentum = ema_warmup_momentum(self.iterations, self.ema_momentum)
            for var, average in zip(trainable_variables, self._model_variables_moving_average):
                if average is not None:
                    m = ops.cast(momentum, var.dtype)
                    average.assign(ops.add(ops.multiply(m, average), ops.multiply(ops.subtract(1.0, m), var)))

    EmaWarmup.__name__ = EmaWarmup.__qualname__ = optimizer_class.__name__
    return EmaWarmup


def make_optimizer(args, lr):
    import keras

    common = dict(learning_rate=lr, use_ema=args.ema, ema_momentum=args.ema_momentum,
                  weight_decay=args.weight_decay or None, clipnorm=args.clipnorm or None)
    if args.optimizer == "sgd":
        opt = with_ema_warmup(keras.optimizers.SGD)(momentum=args.momentum, nesterov=True, **common)
    elif args.optimizer == "adam":
        common.pop("weight_decay")
        opt = with_ema_warmup(keras.optimizers.Adam)(beta_1=args.momentum, **common)
    elif args.optimizer == "adamw":
        opt = with_ema_warmup(keras.optimizers.AdamW)(beta_1=args.momentum, **common)
    else:
        raise TrainError(f"unknown optimizer {args.optimizer!r}; valid: sgd, adam, adamw")
    if args.weight_decay and args.optimizer != "adam":
        # decoupled decay on kernels only: BN scales/offsets and biases are not decayed
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def scaled_lr(lr: float, optimizer: str, batch_size: int, nominal_batch: int) -> float:
    """``lr`` (given at ``nominal_batch``) for ``batch_size``: linear for SGD (Goyal et al.
    2017), square root for Adam/AdamW (Malladi et al. 2022). The linear rule starved Adam at
    small batches: 4e-3 at 64 became 5e-4 at batch 8. From scratch on the demo set (300 Adam
    steps at batch 8, residual neck, neighbour cells) val mAP@0.5 was 0.40 at 3e-3 and 0.55
    at 1e-2; the default 2e-2 at 64 is 7e-3 at batch 8."""
    ratio = batch_size / nominal_batch
    return lr * (ratio if optimizer == "sgd" else ratio ** 0.5)


def set_backbone_trainable(body, trainable: bool):
    from nets.yolo import backbone_layer_names
    for name in backbone_layer_names(body):
        body.get_layer(name).trainable = trainable


def make_strategy(kind):
    import tensorflow as tf
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if not tf.config.list_logical_devices("GPU"):
            # a CPU-only machine: every logical CPU device is a replica (one unless the CPU was
            # split with tf.config.set_logical_device_configuration, as tests do)
            return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainError(f"unknown strategy {kind!r}; valid: default, mirrored, multiworker")


@dataclasses.dataclass
class Phase:
    name: str
    start: int
    end: int
    batch_size: int
    frozen: bool


def plan_phases(args) -> list[Phase]:
    phases = []
    if args.freeze_epochs > 0:
        phases.append(Phase("frozen", 0, min(args.freeze_epochs, args.epochs), args.freeze_batch_size, True))
    if args.epochs > args.freeze_epochs:
        phases.append(Phase("unfrozen", max(args.freeze_epochs, 0), args.epochs, args.batch_size, False))
    return phases


# ----------------------------------------------------------------------------- several workers

def read_cluster(args):
    """The multi-worker cluster of TF_CONFIG for --strategy multiworker (None otherwise); a bad
    or missing TF_CONFIG is a TrainError."""
    from utils.training.distributed import DistributedError, read_tf_config

    if args.strategy != "multiworker":
        return None
    try:
        cluster = read_tf_config()
    except DistributedError as exc:
        raise TrainError(str(exc)) from None
    if cluster is None:
        raise TrainError("--strategy multiworker needs TF_CONFIG on every worker (README: Training on several "
                         "machines); python -m utils.launch --workers N -- train.py ... sets it")
    return cluster


def barrier(strategy) -> None:
    """One all-reduce over every replica: returns once every worker is connected."""
    import tensorflow as tf

    @tf.function
    def step():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("SUM", tf.ones(())))

    total = float(strategy.experimental_local_results(step())[0])
    if round(total) != strategy.num_replicas_in_sync:
        raise TrainError(f"the workers do not agree on the cluster: {total:g} replicas answered, "
                         f"{strategy.num_replicas_in_sync} expected")


def gather(strategy, value: float) -> list[float]:
    """``value`` of every replica (all workers), in replica order."""
    import tensorflow as tf

    @tf.function
    def step():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_gather(
            tf.constant([float(value)], tf.float32), axis=0))

    return [float(v) for v in strategy.experimental_local_results(step())[0].numpy()]


def distributed_data(strategy, ds, batch_size: int, steps=None):
    """The training batches for ``strategy``: on one worker the plain pipeline of global batches
    (Keras splits them over local replicas); on several, one input pipeline per worker reading
    only its part of each global batch (each image read once per epoch,
    TrainDataset.as_tf_dataset), in per-replica batches. ``steps`` caps the steps of an epoch."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # one worker: Keras splits each global batch over the local replicas itself, the
        # same split (replica r takes the r-th part of every global batch)
        data = ds.as_tf_dataset()
        return data.take(steps) if steps else data

    def pipeline(ctx):
        data = ds.as_tf_dataset(shard=(ctx.input_pipeline_id, ctx.num_input_pipelines),
                                replica_batch=ctx.get_per_replica_batch_size(batch_size))
        per_step = strategy.num_replicas_in_sync // ctx.num_input_pipelines
        data = data.take(steps * per_step) if steps else data
        # Keras takes the pipeline's length for the steps of an epoch, but a step takes one batch
        # per local replica: with two replicas it would ask for twice the steps, run out and stop
        # training. An unknown length makes it run each epoch to the pipeline's end.
        return data.filter(lambda *batch: True)

    return strategy.distribute_datasets_from_function(pipeline)


def extension_restart(args, state, start_epoch: int):
    """The learning-rate rule when a resumed run's --epochs differs from the run's: the cosine
    continues from the rate reached at ``start_epoch`` down to the new end (lr_at's
    ``restart``), printed once. None when nothing changed (or the state predates the rule)."""
    from utils.training.callbacks import lr_at

    if not state or "epochs" not in state:
        return state.get("lr_restart") if state else None
    old_total, previous = int(state["epochs"]), state.get("lr_restart")
    if old_total == args.epochs:
        return previous
    if args.epochs < start_epoch:
        raise TrainError(f"--epochs {args.epochs} is below the {start_epoch} epochs the run already finished")
    phases = {p.name: p for p in plan_phases(args)}
    phase = next((p for p in phases.values() if p.start <= start_epoch < p.end), None)
    if phase is None:
        return previous
    lr = scaled_lr(args.lr, args.optimizer, phase.batch_size, args.nominal_batch)
    old = lr_at(start_epoch, old_total, lr, lr * args.min_lr_ratio, args.warmup_epochs, args.lr_schedule,
                tuple(args.step_epochs or ()),
                restart=(previous["epoch"], previous["lr"]) if previous and previous.get("phase") == phase.name
                else None)
    _log(f"--epochs {old_total} -> {args.epochs}: the learning rate continues from {old:.2e} at epoch "
         f"{start_epoch + 1} down to {lr * args.min_lr_ratio:.2e} at epoch {args.epochs} (cosine; no new warm-up)")
    return {"epoch": start_epoch, "lr": old, "phase": phase.name}


# ----------------------------------------------------------------------------- run

def store_conf_threshold(path, f1_best, split: str = "validation") -> dict | None:
    """Write the F1-best score of ``f1_best`` (utils.metrics.best_f1_threshold, measured on
    ``split``) into the metadata of the ``.keras`` file ``path`` as ``conf_threshold``:
    predict.py's default --conf (and each export's, which copies it). Nothing is written,
    and None returned, when there is no such score (no true positive at any score)."""
    from utils.checkpoint import update_meta

    score = (f1_best or {}).get("score")
    if score is None or not np.isfinite(score):
        return None
    conf = {"score": float(score), "source": f"F1-best score on the {split} split",
            **{k: float(f1_best[k]) for k in ("precision", "recall", "f1")},
            **{k: int(f1_best[k]) for k in ("tp", "fp", "num_gt")}}
    update_meta(path, conf_threshold=conf)
    return conf


def run(args) -> dict:
    """Train as ``args`` (train.py's options) say; returns a summary dict."""
    import keras
    import tensorflow as tf

    from nets.backbones import BackboneWeightsError
    from nets.loss import YoloTrainer, init_head_biases
    from nets.yolo import yolo_body
    from utils.training import callbacks as cb
    from utils.checkpoint import load_weights
    from utils.inference.runtime import open_model
    from utils.training.config import PER_WORKER, fixed_options_key, save_yaml
    from utils.data.dataset import EpochSetter, TrainDataset
    from utils.data.augment import AugmentConfig
    from utils.evaluate import evaluate_records, format_table
    from utils.inference.detector import Detector
    from utils.targets import load_anchors
    from utils.training.distributed import deadline, worker_state_dir

    keras.utils.set_random_seed(args.seed)
    save_dir = args.save_dir
    cluster = read_cluster(args)
    chief = cluster is None or cluster.is_chief
    # only the chief writes in the run folder; another worker keeps its resume state (all it
    # writes) in a folder of its own, removed when the run ends (module docstring)
    state_dir = save_dir if chief else worker_state_dir(save_dir, cluster.rank)
    if not chief and not args.resume:
        shutil.rmtree(state_dir, ignore_errors=True)  # a killed run's leftovers; the chief checks the run folder
    try:
        state = cb.open_run_state(save_dir, args.resume, args.exist_ok, state_dir)
    except cb.RunFolderError as exc:
        raise TrainError(str(exc)) from None

    spec = resolve_spec(args)
    train_records, val_records, class_names = resolve_data(args, spec)
    check_teachability(args, spec, train_records, class_names)  # stops on unteachable data (TrainError)
    anchors = load_anchors(args.anchors)
    hw = tuple(args.input_size) if len(args.input_size) == 2 else (args.input_size[0],) * 2
    if hw[0] % 32 or hw[1] % 32:
        raise TrainError(f"--input-size must be multiples of 32, got {hw[0]}x{hw[1]}")
    config = {k: v for k, v in vars(args).items() if k not in ("config", "tf_logs")}
    # the chief's is the run's; another worker keeps a copy with its resume state, which a
    # --resume on its own machine (no run folder there) reads (config.saved_config_path)
    save_yaml(config, os.path.join(save_dir if chief else state_dir, "config.yaml"))
    backbone_options = {"taps": args.taps} if getattr(args, "taps", None) else {}  # checked in train.py
    neck_width = getattr(args, "neck_width", None)  # None: the alpha's (nets.widths)
    meta = {"backbone": args.backbone, "alpha": args.alpha, "neck_shortcut": args.neck_shortcut,
            "neck_width": neck_width,
            **backbone_options, "class_names": class_names,
            "anchors": anchors, "input_shape": hw, "anchors_per_scale": 3}
    # the dataset and its split, so that eval_map.py evaluates on this run's own test split
    meta["data"] = spec.record(args.split_ratios, args.seed, (args.train_split, args.val_split, "test"))
    _log(f"train: {len(train_records)} images, val: {len(val_records)} images, {len(class_names)} classes, "
         f"input {hw[0]}x{hw[1]}, backbone {args.backbone} (alpha {args.alpha:g}"
         + (f", neck width {neck_width:g})" if neck_width is not None else ")"))

    waiting = (deadline(args.connect_timeout, f"worker {cluster.rank} ({cluster.address}): the other workers "
                        f"({', '.join(a for a in cluster.addresses if a != cluster.address)}) did not connect; check "
                        "TF_CONFIG's addresses and that every worker was started with the same command")
               if cluster else contextlib.nullcontext())
    with waiting:  # a multi-worker start blocks until every worker is there: bounded
        strategy = make_strategy(args.strategy)
        if cluster:
            barrier(strategy)
            keys = gather(strategy, fixed_options_key(args))
            if min(keys) != max(keys):
                raise TrainError("the workers were started with different options (every option but "
                                 f"{', '.join('--' + k.replace('_', '-') for k in PER_WORKER)} must be the same); "
                                 "start every worker with the same command")
            epochs = gather(strategy, int(state["epoch"]) if state else 0)
            if min(epochs) != max(epochs):
                raise TrainError(f"the workers' resume states are at different epochs ({', '.join(f'{e:g}' for e in epochs)} "
                                 "by worker): the run was stopped while they were saving; remove the run folder's "
                                 "resume state and the workers' folders and start again, or restart from last.keras "
                                 "with --weights")
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        try:
            body = yolo_body(hw, len(class_names), backbone=args.backbone, alpha=args.alpha, weight_decay=0.0,
                             neck_shortcut=args.neck_shortcut, neck_width=neck_width,
                             **backbone_options,
                             backbone_weights=None if args.backbone_weights == "none" else args.backbone_weights)
        except BackboneWeightsError as exc:
            raise TrainError(str(exc)) from None
        init_head_biases(body, len(class_names), hw, anchors)
        if args.weights and not state:
            if args.weights.endswith(".keras"):
                # the shape-checked loader reads .weights.h5; go through one in a temporary
                # folder so nothing is left in the run folder, even when loading fails
                src = open_model(args.weights, fold=False).model
                with tempfile.TemporaryDirectory() as tmpdir:
                    tmp = os.path.join(tmpdir, "init.weights.h5")
                    src.save_weights(tmp)
                    skipped = load_weights(body, tmp, skip_mismatch=True)
            else:
                skipped = load_weights(body, args.weights, skip_mismatch=True)
            _log(f"initialised from {args.weights}; skipped {len(skipped)} layers whose shapes differ"
                 + (f": {', '.join(skipped)}" if skipped else ""))
        trainer = YoloTrainer(body, anchors, len(class_names), hw, label_smoothing=args.label_smoothing,
                              focal_gamma=args.focal_gamma, ignore_thresh=args.ignore_thresh,
                              obj_target=args.obj_target)

    aug = AugmentConfig(mosaic_prob=args.mosaic_prob if args.mosaic else 0.0,
                        mixup_prob=args.mixup_prob if args.mixup else 0.0,
                        mosaic_fraction=args.mosaic_fraction)
    val_detector = Detector(body, meta) if chief else None  # in-loop evaluation runs on the chief only

    def evaluate_fn(model):
        val_detector.sync_weights()  # the folded copy takes this epoch's (EMA) weights
        res = evaluate_records(val_detector, val_records, batch_size=args.eval_batch_size, coco=False)
        return res["map"]

    guard = cb.NanGuard(_log)
    best_map = float(state.get("best_map", -1.0)) if state else -1.0
    start_epoch = int(state["epoch"]) if state else 0
    restart = extension_restart(args, state, start_epoch)
    csv_path = os.path.join(save_dir, "log.csv")
    if start_epoch >= args.epochs:
        _log(f"nothing to do: the run in {save_dir} already finished {start_epoch} epochs")
    t_start = time.time()
    for phase in plan_phases(args):
        if start_epoch >= phase.end:
            continue
        init_epoch = max(start_epoch, phase.start)
        if phase.batch_size % replicas:
            raise TrainError(f"the batch of the {phase.name} phase ({phase.batch_size}) does not split over the "
                             f"{replicas} replicas; use a multiple of {replicas}")
        ds = TrainDataset(train_records, len(class_names), hw, phase.batch_size, anchors, seed=args.seed,
                          augment=aug if args.augment else False,
                          drop_remainder=len(train_records) >= phase.batch_size or replicas > 1,
                          num_parallel=args.workers, neighbor_cells=args.neighbor_cells)
        steps = len(ds) if not args.steps_per_epoch else min(len(ds), args.steps_per_epoch)
        lr = scaled_lr(args.lr, args.optimizer, phase.batch_size, args.nominal_batch)
        with strategy.scope():
            set_backbone_trainable(body, not phase.frozen)
            optimizer = make_optimizer(args, lr)
            trainer.compile(optimizer=optimizer, jit_compile=args.jit)
            # Build the optimizer's slots eagerly: created inside the first train step they make
            # tf.function trace the step twice, which was ~3/4 of the first step's time.
            optimizer.build(trainer.trainable_variables)
            if state and init_epoch == start_epoch:
                trainer(np.zeros((1, *hw, 3), np.float32))
                trainer.load_weights(os.path.join(state_dir, state["weights"]))
                _log(f"resumed from {save_dir} at epoch {start_epoch + 1} ({phase.name} phase)")
        _log(f"phase {phase.name}: epochs {init_epoch + 1}-{phase.end}, batch {phase.batch_size}, "
             f"lr {lr:.2e} ({args.optimizer}), {steps} steps/epoch")
        schedule = dict(total_epochs=args.epochs, base_lr=lr, min_lr=lr * args.min_lr_ratio,
                        warmup_epochs=args.warmup_epochs, kind=args.lr_schedule,
                        step_epochs=tuple(args.step_epochs or ()),
                        restart=None if restart is None or restart["phase"] != phase.name else
                        (restart["epoch"], restart["lr"]))
        ds.set_epoch(init_epoch, args.epochs)
        checkpoint = cb.EvalCheckpoint(body, meta, save_dir, evaluate_fn if val_records else None,
                                       args.eval_every, args.epochs, guard, best_map, _log)
        extra = {"phase": phase.name, "epochs": args.epochs, "lr_restart": restart}
        resume = cb.ResumeState(state_dir, guard, extra, lambda: checkpoint.best_map,
                                sync=(lambda: barrier(strategy)) if cluster else None)
        # order matters: raw weights are saved for resuming before the EMA swap; the
        # evaluation and checkpoints see the EMA weights; the CSV sees val_map50; the
        # resume commit comes last, once everything of the epoch is on disk.
        callbacks = [EpochSetter(ds, args.epochs), cb.LRSchedule(steps, **schedule), cb.StepCount(), guard, resume]
        if args.ema:
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if chief:  # the other workers write nothing in the run folder
            callbacks += [checkpoint,
                          keras.callbacks.CSVLogger(csv_path, append=os.path.isfile(csv_path)),
                          cb.CurvesPlot(csv_path, os.path.join(save_dir, "curves.png"))]
            if args.tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(save_dir, "tensorboard"),
                                                             update_freq="epoch"))
        callbacks.append(resume.committer)
        data = distributed_data(strategy, ds, phase.batch_size, steps if args.steps_per_epoch else None)
        if replicas > 1:  # a distributed dataset has no known length: Keras warns at each epoch's end
            warnings.filterwarnings("ignore", message="Your input ran out of data")
        trainer.fit(data, epochs=phase.end, initial_epoch=init_epoch, callbacks=callbacks, shuffle=False,
                    verbose=args.verbose)
        best_map = checkpoint.best_map if chief else best_map
        start_epoch = phase.end
        if guard.tripped:
            raise TrainError(f"training stopped: non-finite loss at epoch {guard.tripped[0]}, step {guard.tripped[1]}; "
                             f"the last good checkpoint is {os.path.join(save_dir, 'last.keras')}")
    wall = time.time() - t_start

    summary = {"save_dir": save_dir, "wall_s": wall, "best_map50": best_map}
    if not chief:
        shutil.rmtree(state_dir, ignore_errors=True)  # the run ended: this worker's resume state is not needed
        _log(f"worker {cluster.rank}: done in {wall / 60:.1f} min; the chief wrote the run to {save_dir}")
        return summary
    best = os.path.join(save_dir, "best.keras")
    if val_records and os.path.isfile(best):
        # the body already has the compiled detector around it: load the best weights into it
        # rather than loading the file as a new model and tracing a second detector
        body.load_weights(best)
        val_detector.sync_weights()
        res = evaluate_records(val_detector, val_records, batch_size=args.eval_batch_size)
        _log(f"\nbest checkpoint {best} on the validation split:")
        _log(format_table(res, class_names))
        summary["final"] = {"map50": res["map"], "coco": res.get("coco")}
        conf = store_conf_threshold(best, res.get("f1_best"), "validation")
        if conf:
            summary["final"]["conf_threshold"] = conf
            _log(f"stored conf {conf['score']:.3g} ({conf['source']}) in {best}: predict.py's default --conf")
    _log(f"done in {wall / 60:.1f} min; checkpoints, log.csv and curves.png in {save_dir}")
    return summary


def main_guarded(args) -> int:
    """Run with one-line errors for the user's mistakes; Ctrl-C leaves the last epoch's state."""
    from utils.data.voc import DatasetError
    try:
        run(args)
    except (TrainError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python train.py --resume --save-dir {args.save_dir} "
              "(plus the same data options)", file=sys.stderr)
        return 130
    return 0
