"""Latency of predict.py's fps mode: pre-processing, model and post-processing per image.

    python benchmarks/predict_fps.py                      # mobilenetv2 alpha 1.0, 416x416, 20 classes
    python benchmarks/predict_fps.py --backbone squeezenet --alpha 0.5 --input-size 320 --runs 100

Builds the detector with random weights (timing does not depend on them), saves it with
utils.checkpoint.save_detector, writes one synthetic 640x480 JPEG (utils.data.demo_data), and runs
``predict.py --mode fps`` on it in-process: the numbers are those of the command line. Prints
the table and records it, with the date, the machine (lscpu model name, core count) and the
command, in docs/benchmarks.md, section "predict.py fps mode" (--no-record to skip).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, record  # noqa: E402

SECTION = "predict.py fps mode"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--input-size", default="416")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)

    import cv2

    import predict
    from nets.yolo import yolo_body
    from utils.checkpoint import save_detector
    from utils.data.demo_data import render_sample
    from utils.targets import load_anchors, parse_input_hw
    from utils.data.voc import read_class_names

    hw = parse_input_hw(args.input_size)
    voc = read_class_names(ROOT / "model_data" / "voc_classes.txt")
    names = voc[:args.num_classes] if args.num_classes <= len(voc) else [f"class{i}" for i in range(args.num_classes)]
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, f"{args.backbone}_{args.alpha:g}_{hw[0]}x{hw[1]}.keras")
        model = yolo_body(hw, len(names), backbone=args.backbone, alpha=args.alpha)
        save_detector(model, weights, {"backbone": args.backbone, "alpha": args.alpha, "class_names": names,
                                       "anchors": load_anchors().tolist(), "input_shape": list(hw)})
        image, _ = render_sample(0, 0, (640, 480))
        source = os.path.join(tmp, "image_640x480.jpg")
        cv2.imwrite(source, image[..., ::-1])
        argv_predict = ["--weights", weights, "--source", source, "--mode", "fps",
                        "--fps-runs", str(args.runs), "--fps-warmup", str(args.warmup)]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = predict.main(argv_predict)
        text = buf.getvalue().replace(tmp + os.sep, "")
        print(text, end="")
        if rc != 0:
            return rc
    if not args.no_record:
        predict_command = "python predict.py " + " ".join(a.replace(tmp + os.sep, "") for a in argv_predict)
        record(SECTION, command_line("predict_fps.py", argv),
               "which runs, with a randomly initialised model saved by save_detector:", [predict_command],
               text.strip().splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
