"""Train a YOLOv4-lite detector.

    python train.py --demo                                   # synthetic demo set, offline, a few minutes on a CPU
    python train.py --root VOCdevkit/VOC2007 --classes model_data/voc_classes.txt --backbone mobilenetv2
    python train.py --config my_run.yaml --epochs 50         # YAML with the same option names; the command line wins
    python train.py --resume --save-dir runs/train/exp       # continue a stopped run from its last finished epoch

Every option can be given in a YAML file (--config) under the same name (dashes or
underscores). The effective configuration is saved as <save-dir>/config.yaml; checkpoints
(best.keras by validation mAP@0.5, last.keras), log.csv, curves.png and TensorBoard logs
go to --save-dir.
"""
from __future__ import annotations

import argparse
import sys

from utils.training.config import DEMO_DEFAULTS, build_train_parser, parse_train_args  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    return build_train_parser(__doc__)


def parse_args(argv=None) -> argparse.Namespace:
    return parse_train_args(argv, __doc__)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from utils.console import start
    start(args.tf_logs)
    from utils.training.trainer import main_guarded
    return main_guarded(args)


if __name__ == "__main__":
    sys.exit(main())
