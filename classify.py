"""Train any backbone of the registry as an image classifier; its weights start a detector.

    python classify.py train --data DIR --backbone shufflenetv2 --alpha 1.0 --input-size 224 --epochs 30
    python classify.py eval --weights runs/classify/exp/best.keras --data DIR [--split val]
    python classify.py predict --weights best.keras --source img_or_dir [--top-k 3]
    python classify.py export-backbone --weights best.keras --out backbone.weights.h5
    python train.py --backbone shufflenetv2 --alpha 1.0 --backbone-weights backbone.weights.h5 ...

A dataset is a folder with one sub-folder of images per class (split into train and val by
--val-ratio and --seed), or train/ and val/ (and test/) folders of that shape, as
`python -m utils.crops` cuts them from a detection dataset. The work is done by utils.classify.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = ("train", "eval", "predict", "export-backbone")


def build_parser(command: str) -> argparse.ArgumentParser:
    """The options of ``command`` (train's come from utils.classify)."""
    from utils.console import add_tf_logs_argument

    if command == "train":
        from utils.classify import build_train_parser
        return build_train_parser(__doc__)
    p = argparse.ArgumentParser(prog=f"classify.py {command}")
    p.add_argument("--weights", required=True, help="a classifier .keras file (best.keras of classify.py train)")
    if command == "eval":
        p.add_argument("--data", required=True, help="dataset folder (class folders, or train/ val/ test/ of them)")
        p.add_argument("--split", default="val", choices=["train", "val", "test", "all"],
                       help="split to evaluate (default val; a flat folder: the run's own val ratio and seed)")
        p.add_argument("--val-ratio", type=float, default=None, help="val ratio of a flat folder (default: the run's)")
        p.add_argument("--seed", type=int, default=None, help="split seed of a flat folder (default: the run's)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--save-dir", help="results.json, confusion_matrix.png (default runs/classify/eval, eval2, ...)")
    elif command == "predict":
        p.add_argument("--source", required=True, help="an image file or a folder of images")
        p.add_argument("--top-k", type=int, default=3, help="classes printed per image (default 3)")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--save-dir", help="predictions.json (default runs/classify/predict, predict2, ...)")
    else:
        p.add_argument("--out", required=True, help="the backbone weights file to write (*.weights.h5)")
    add_tf_logs_argument(p)
    return p


def usage() -> str:
    return f"usage: python classify.py {{{','.join(COMMANDS)}}} [options]   (python classify.py COMMAND -h)"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n" + usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        if command == "train":
            from utils.classify import parse_train_args
            args = parse_train_args(rest)
        else:
            args = build_parser(command).parse_args(rest)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from utils.console import start
    start(args.tf_logs)
    from utils import classify
    from utils.data.voc import DatasetError
    try:
        if command == "train":
            classify.train(args)
        elif command == "eval":
            classify.evaluate(args.weights, args.data, args.split, args.val_ratio, args.seed, args.batch_size,
                              args.save_dir)
        elif command == "predict":
            classify.predict(args.weights, args.source, args.top_k, args.batch_size, args.save_dir)
        else:
            classify.export_backbone(args.weights, args.out)
    except (classify.ClassifyError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if command != "train":
            raise
        print(f"\ninterrupted; resume with: python classify.py train --resume --save-dir {args.save_dir}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
