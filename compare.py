"""Compare backbones for speed against accuracy: train each configuration with one recipe,
export it, evaluate every export on the test split and time it at batch 1.

    python compare.py --configs mobilenetv2:0.5@320 ghostnet shufflenetv2:1.0@416 --out runs/compare/bccd \\
        --root ../shared/data/BCCD --classes model_data/bccd_classes.txt --epochs 30
    python compare.py --configs all --latency-only --input-size 320        # no training: params, GFLOPs, latency
    python compare.py --configs all --out runs/compare/bccd ...            # the same command again continues

A configuration is backbone[:alpha[:neck]][@size] ('all' = every backbone at its default alpha;
neck = the neck width, train.py's --neck-width, e.g. mobilenetv3small:1.0:0.5@320).
Every option this command does not know is a train.py option and goes to each training run
(data, --epochs, --batch-size, ...). Writes <out>/<config>/ (the run, its exports and
result.json), results.csv, results.md and speed_vs_map.png. A stopped comparison continues
where it stopped when the same command runs again. The work is done by utils/compare.py.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.console import add_tf_logs_argument

RUNTIMES = ("keras", "tflite-fp32", "tflite-int8", "onnx")  # utils.compare.RUNTIMES


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: train.py's options pass through; none may be taken for an abbreviation of ours
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--configs", nargs="+", required=True, metavar="BACKBONE[:ALPHA[:NECK]][@SIZE]",
                   help="configurations to compare, e.g. mobilenetv2:0.5@320 ghostnet; 'all' = every backbone")
    p.add_argument("--out", default=os.path.join("runs", "compare", "exp"),
                   help="comparison folder (default runs/compare/exp); the same folder continues a stopped comparison")
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                   help="runtimes to export, evaluate and time (default: all four)")
    p.add_argument("--input-size", type=int, default=416, help="size of configurations without @SIZE (default 416)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 runs per runtime (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--calib-images", type=int, default=100, help="int8 calibration images from the training split")
    p.add_argument("--reference", action="append", default=[], metavar="NAME:MS:MAP50",
                   help="a point drawn on the plot, e.g. 'YOLOv8n onnx:24:0.700' (repeatable)")
    p.add_argument("--latency-only", action="store_true",
                   help="no training: parameters, GFLOPs and latency of each configuration (random weights)")
    p.add_argument("--retime", action="store_true",
                   help="time the exports of finished configurations again (e.g. on a quiet machine)")
    p.add_argument("--num-classes", type=int, default=20,
                   help="--latency-only without a dataset: classes of the heads (default 20)")
    add_tf_logs_argument(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, train_argv = parser.parse_known_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.calib_images < 1:
        parser.error("--runs and --calib-images must be >= 1, --warmup >= 0")
    from utils.console import start
    start(args.tf_logs)
    from utils.compare import CompareError, Comparison, parse_configs, parse_reference
    from utils.training.trainer import TrainError
    try:  # every mistake in the command is found here, before anything starts
        configs = parse_configs(args.configs, args.input_size)
        references = [parse_reference(r) for r in args.reference]
        comparison = Comparison(args.out, configs, train_argv, args.runtimes, runs=args.runs, warmup=args.warmup,
                                calib_images=args.calib_images, references=references,
                                latency_only=args.latency_only, num_classes=args.num_classes, retime=args.retime)
    except (CompareError, ValueError, FileNotFoundError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(configs)} configuration(s): {' '.join(c.spec for c in configs)}; runtimes {' '.join(args.runtimes)}")
    try:
        comparison.run()
    except (CompareError, TrainError, ValueError, FileNotFoundError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the same command continues the comparison in {args.out}", file=sys.stderr)
        return 130
    print(f"results in {args.out}: results.csv, results.md" + ("" if args.latency_only else ", speed_vs_map.png"))
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
