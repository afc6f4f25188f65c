"""One set of option names for the command line and YAML files (ultralytics style).

``parse_with_config(parser, argv)``: a ``--config FILE.yaml`` holds any of the parser's
options under the same names (dashes or underscores); the command line overrides the file.
Unknown keys in the file are an error that names the file and the key.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def load_yaml(path) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return data


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        data = load_yaml(known.config)
        dests = {a.dest: a for a in parser._actions}
        defaults = {}
        for key, value in data.items():
            dest = str(key).replace("-", "_")
            if dest not in dests or dest in ("help", "config"):
                raise ValueError(f"{known.config}: unknown option {key!r}")
            action = dests[dest]
            if action.type is not None and value is not None and not isinstance(value, list):
                value = action.type(value)
            if action.choices is not None and value is not None and value not in action.choices:
                raise ValueError(f"{known.config}: {key} must be one of {sorted(action.choices)}, got {value!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def save_yaml(data: dict, path) -> None:
    from utils.checkpoint import atomic_path

    with atomic_path(path, suffix=".yaml") as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def build_train_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's options (compare.py passes them through to each run)."""
    from utils.console import add_tf_logs_argument
    from utils.data.formats import add_data_arguments

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with any of these options (the command line overrides it)")

    d = p.add_argument_group("data")
    d.add_argument("--demo", action="store_true",
                   help="build the synthetic demo dataset under VOCdevkit/demo if missing and train a small model on it")
    d.add_argument("--demo-images", type=int, default=300, help="images in the demo dataset (default 300)")
    add_data_arguments(d, split_ratios=[0.8, 0.1, 0.1],
                       classes_help="the dataset's own list: COCO categories, YOLO names; "
                                    "model_data/voc_classes.txt for VOC")
    d.add_argument("--train-split", default="train", help="split name for training (default train)")
    d.add_argument("--val-split", default="val", help="split name for validation mAP (default val)")
    d.add_argument("--anchors", default="model_data/yolo_anchors.txt", help="anchors file (9 w,h pairs)")
    d.add_argument("--input-size", type=int, nargs="+", default=[416], help="input side, or H W; multiples of 32")
    d.add_argument("--workers", type=int, default=2, help="parallel data-loading calls (default 2)")
    d.add_argument("--seed", type=int, default=0, help="seed for splits, shuffling, augmentation and init")
    d.add_argument("--allow-unteachable", action="store_true",
                   help="train even when the teachability check of the training split finds data that cannot "
                        "teach anything (no usable box, a class of the class list without a box, most boxes "
                        "of classes not in the class list); by default train.py stops before the first step "
                        "with the findings (exit code 2). Warnings never stop it")

    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="mobilenetv2", help="backbone name (python -m nets.summary lists them)")
    m.add_argument("--alpha", type=float, default=1.0, help="backbone width multiplier (family-specific values)")
    m.add_argument("--backbone-weights", default="none",
                   help="imagenet (keras.applications families, needs network) | none | PATH to a backbone .weights.h5")
    m.add_argument("--neck-shortcut", action=argparse.BooleanOptionalAction, default=True,
                   help="residual five-conv blocks in the neck (default on; --no-neck-shortcut = the plain "
                        "reference neck, which barely trains from scratch: see nets/yolo.py)")
    m.add_argument("--neck-width", type=float, default=None,
                   help="width multiplier of the neck and heads alone (128/256/512 channels times it; default: "
                        "--alpha). The neck computes most of a light detector's FLOPs: e.g. --alpha 1.0 "
                        "--neck-width 0.5 keeps the full backbone at a fraction of the cost")
    m.add_argument("--taps", choices=["expanded", "projected"], default=None,
                   help="mobilenetv2 only: tap the expanded (192/576/1280 ch, default) or the projected block "
                        "outputs (32/96/320 ch: 1.05 M parameters and 0.58 GFLOPs fewer at 416)")
    m.add_argument("--weights", help="initialise from a full checkpoint (.keras or .weights.h5); layers whose shape "
                                     "differs (e.g. heads for another class count) are skipped and listed")

    s = p.add_argument_group("schedule")
    s.add_argument("--epochs", type=int, default=100, help="total epochs (frozen + unfrozen)")
    s.add_argument("--freeze-epochs", type=int, default=None,
                   help="epochs with the backbone frozen (default: half the epochs with pretrained backbone weights, "
                        "0 from scratch)")
    s.add_argument("--freeze-batch-size", type=int, default=16, help="batch size of the frozen phase")
    s.add_argument("--batch-size", type=int, default=8, help="batch size of the unfrozen phase (global, over replicas)")
    s.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw", help="optimizer (default adamw)")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate at --nominal-batch, scaled to each phase's batch size: linearly for "
                        "sgd, by the square root for adam/adamw (default 1e-2 for sgd, 2e-2 for adam/adamw)")
    s.add_argument("--nominal-batch", type=int, default=64, help="batch size at which --lr applies (default 64)")
    s.add_argument("--min-lr-ratio", type=float, default=0.01, help="final learning rate as a fraction of the start")
    s.add_argument("--lr-schedule", choices=["cos", "step"], default="cos", help="decay after warm-up")
    s.add_argument("--step-epochs", type=int, nargs="*", help="epochs at which step decay multiplies the lr by 0.1")
    s.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warm-up epochs")
    s.add_argument("--momentum", type=float, default=0.937, help="SGD momentum / Adam beta_1")
    s.add_argument("--weight-decay", type=float, default=5e-4,
                   help="decoupled weight decay on kernels (sgd, adamw); 0 turns it off")
    s.add_argument("--clipnorm", type=float, default=10.0, help="gradient norm clipping per variable (0 = off)")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="keep an exponential moving average of the weights (Keras optimizer EMA); "
                        "evaluation and checkpoints use it")
    s.add_argument("--ema-momentum", type=float, default=0.99,
                   help="EMA momentum, reached after a warm-up: min(m, (1 + t) / (10 + t)) at step t")
    s.add_argument("--label-smoothing", type=float, default=0.0, help="class label smoothing eps")
    s.add_argument("--focal-gamma", type=float, default=0.0, help="focal loss gamma on objectness (0 = BCE)")
    s.add_argument("--obj-target", choices=["iou", "one"], default="iou",
                   help="objectness target of positives: iou (IoU-aware, YOLOv5) or one (YOLOv3/v4)")
    s.add_argument("--ignore-thresh", type=float, default=0.5, help="negatives above this IoU with a box are ignored")
    s.add_argument("--neighbor-cells", action=argparse.BooleanOptionalAction, default=True,
                   help="also assign each box to the 2 neighbour cells nearest its centre (YOLOv5; default on; "
                        "--no-neighbor-cells = YOLOv4's centre cell only)")
    s.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="training augmentation (jitter, flip, HSV); --no-augment gives letterbox only")
    s.add_argument("--mosaic", action=argparse.BooleanOptionalAction, default=True, help="mosaic augmentation")
    s.add_argument("--mosaic-prob", type=float, default=0.5, help="probability of a mosaic sample")
    s.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=True, help="mixup after mosaic")
    s.add_argument("--mixup-prob", type=float, default=0.5, help="probability of mixup on a mosaic sample")
    s.add_argument("--mosaic-fraction", type=float, default=0.7,
                   help="mosaic and mixup stay on for this fraction of the epochs (default 0.7)")
    s.add_argument("--steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick tries)")
    s.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False, help="XLA-compile the train step")

    e = p.add_argument_group("evaluation, checkpoints and logs")
    e.add_argument("--eval-every", type=int, default=5, help="validation mAP@0.5 every N epochs (and at the end)")
    e.add_argument("--eval-batch-size", type=int, default=8, help="batch size for validation")
    e.add_argument("--save-dir", default=os.path.join("runs", "train", "exp"), help="checkpoints and logs")
    e.add_argument("--exist-ok", action="store_true", help="overwrite a finished or stopped run in --save-dir")
    e.add_argument("--resume", action="store_true", help="continue the run in --save-dir from its last finished epoch")
    e.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True, help="TensorBoard logs")
    e.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras progress: 0 silent, 1 bar, 2 line")
    add_tf_logs_argument(e)
    e.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], default="default",
                   help="tf.distribute strategy; the global batch is split over replicas (multiworker: every "
                        "worker runs the same command with its own TF_CONFIG; python -m utils.launch does that)")
    e.add_argument("--connect-timeout", type=float, default=120.0,
                   help="multiworker: seconds to wait for the other workers at start before giving up (default 120)")
    return p


DEMO_DEFAULTS = {"input_size": [256], "backbone": "mobilenetv2", "alpha": 0.5, "epochs": 15, "batch_size": 8,
                 "eval_every": 5, "warmup_epochs": 1.0, "save_dir": os.path.join("runs", "train", "demo")}


# What the saved state of a run depends on: refused when it changes on --resume. --epochs may
# change (utils.training.callbacks.lr_at's restart rule), as may logging, evaluation, workers.
FIXED_ON_RESUME = ("backbone", "alpha", "input_size", "taps", "neck_shortcut", "neck_width", "anchors", "classes",
                   "data", "format", "root", "images", "annotations", "split_ratios", "seed", "train_split", "val_split",
                   "batch_size", "freeze_batch_size", "freeze_epochs", "optimizer", "lr", "nominal_batch",
                   "min_lr_ratio", "lr_schedule", "warmup_epochs", "ema")


def saved_config_path(args) -> str | None:
    """The configuration a --resume'd run was started with: <save-dir>/config.yaml, which the
    chief writes; a worker of a multi-worker run on another machine has no run folder and reads
    the copy it keeps with its resume state (distributed.worker_state_dir). None when neither exists."""
    path = os.path.join(args.save_dir, "config.yaml")
    if os.path.isfile(path):
        return path
    if getattr(args, "strategy", None) == "multiworker":
        from utils.training.distributed import DistributedError, read_tf_config, worker_state_dir
        try:
            cluster = read_tf_config()
        except DistributedError:
            return None  # train.py reports the bad TF_CONFIG itself
        if cluster is not None and not cluster.is_chief:
            path = os.path.join(worker_state_dir(args.save_dir, cluster.rank), "config.yaml")
            return path if os.path.isfile(path) else None
    return None


# Options each worker of a multi-worker run may set for itself (logging, its own loaders and
# timeouts); every other option shapes the model, the data, the loss or the schedule.
PER_WORKER = ("config", "tf_logs", "verbose", "workers", "connect_timeout", "eval_batch_size", "tensorboard",
              "exist_ok", "resume", "save_dir")


def fixed_options_key(args) -> int:
    """A 24-bit checksum of every option but PER_WORKER's: the workers of one run compare it
    before the first step (exact in float32, gathered as one float)."""
    import json
    import zlib
    text = json.dumps({k: _show(v) for k, v in vars(args).items() if k not in PER_WORKER}, sort_keys=True)
    return zlib.crc32(text.encode()) & 0xFFFFFF


def _fixed_value(args, key):
    """What option ``key`` of ``args`` fixes in a run's saved state: the neck width without one
    of its own is the alpha's (``--neck-width`` None and 1.0 at alpha 1.0 build one network)."""
    if key == "neck_width":
        from nets.widths import effective_neck_width
        return effective_neck_width(getattr(args, "alpha", 1.0), getattr(args, "neck_width", None))
    return getattr(args, key, None)


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def parse_train_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """train.py's options from ``argv``: --demo defaults, the YAML of --config, the saved
    configuration of a --resume'd run (the command line still wins) and derived defaults."""
    parser = build_train_parser(description)
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" in argv:  # small, quick settings unless the user sets them
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parse_with_config(parser, argv)
    saved_path = saved_config_path(args) if args.resume else None
    if saved_path:
        # resume with the configuration the run was started with; the command line still wins,
        # except for what the saved state depends on (FIXED_ON_RESUME)
        saved = parse_with_config(build_train_parser(description), ["--config", saved_path])
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        _, rest = pre.parse_known_args(argv)  # the command line without its own --config FILE
        argv = ["--config", saved_path] + rest
        args = parse_with_config(build_train_parser(description), argv)
        args.resume = True
        changed = [k for k in FIXED_ON_RESUME if _fixed_value(saved, k) != _fixed_value(args, k)]
        if changed:
            what = "; ".join(f"--{k.replace('_', '-')} {_show(_fixed_value(saved, k))} -> "
                             f"{_show(_fixed_value(args, k))}" for k in changed)
            raise ValueError(f"--resume: {what}: the model, the data and the batch of a run cannot change when it "
                             f"resumes (its weights, optimizer state and schedule depend on them). Resume "
                             f"{args.save_dir} without them, or start a new run with another --save-dir "
                             "(--weights PATH/last.keras starts from its weights)")
    if args.taps and args.backbone.lower() != "mobilenetv2":
        raise ValueError(f"--taps is a mobilenetv2 option; backbone {args.backbone!r} has one set of taps")
    if args.neck_width is not None:
        from nets.widths import check_neck_width
        args.neck_width = check_neck_width(args.neck_width, "--neck-width")
    if args.lr is None:
        args.lr = 1e-2 if args.optimizer == "sgd" else 2e-2
    if args.freeze_epochs is None:
        pretrained = args.backbone_weights not in (None, "none") or bool(args.weights)
        args.freeze_epochs = args.epochs // 2 if pretrained else 0
    return args
