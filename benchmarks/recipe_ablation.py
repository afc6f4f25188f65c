"""From-scratch recipe ablation: what each change buys in a fixed, short training budget.

    python benchmarks/recipe_ablation.py                 # the four rows recorded in docs/benchmarks.md
    python benchmarks/recipe_ablation.py --steps 300 --rows baseline full

Trains mobilenetv2 (alpha 0.5) from scratch on the demo set's train split (210 images,
built offline by utils.data.demo_data) at 128x128, batch 8, Adam at a constant learning rate, no
augmentation, for ``--steps`` steps; then mAP@0.5 on the first 60 training images and on the
val split, with eval_map.py's code. Rows (each a fresh model, same seed):

    baseline   plain neck, centre-cell targets, Adam 1e-3 (the old linearly scaled default)
    lr         + Adam 7e-3 (train.py's default: 2e-2 at batch 64, square-root scaled)
    shortcut   + residual five-conv neck (nets/yolo.py)
    full       + neighbour-cell targets (utils/targets.py) = train.py's defaults

Records the table in docs/benchmarks.md (section "From-scratch recipe ablation").
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SECTION = "From-scratch recipe ablation"
ADAM_LR = 7.07e-3  # train.py's default: 2e-2 at batch 64, square-root scaled to batch 8
ROWS = {  # name: (learning rate, neck shortcut, neighbour cells)
    "baseline": (1e-3, False, False),
    "lr": (ADAM_LR, False, False),
    "shortcut": (ADAM_LR, True, False),
    "full": (ADAM_LR, True, True),
}


def run_row(records, val, names, lr, shortcut, neighbors, steps, size=128, seed=0):
    """Train one configuration; returns (mAP@0.5 on 60 training images, on val, seconds)."""
    import keras
    import tensorflow as tf

    from nets.loss import YoloTrainer, init_head_biases
    from nets.yolo import yolo_body
    from utils.data.dataset import TrainDataset
    from utils.evaluate import evaluate_records
    from utils.inference.detector import Detector
    from utils.targets import load_anchors

    keras.utils.set_random_seed(seed)
    hw, anchors = (size, size), load_anchors()
    ds = TrainDataset(records, len(names), hw, 8, anchors, seed=seed, augment=False, neighbor_cells=neighbors,
                      drop_remainder=True)
    body = yolo_body(hw, len(names), backbone="mobilenetv2", alpha=0.5, weight_decay=0.0, neck_shortcut=shortcut)
    init_head_biases(body, len(names), hw, anchors)
    trainer = YoloTrainer(body, anchors, len(names), hw)
    optimizer = keras.optimizers.Adam(lr)
    trainer.compile(optimizer=optimizer)
    optimizer.build(trainer.trainable_variables)
    data = ds.as_tf_dataset().repeat()
    t0 = time.time()
    trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.time() - t0
    det = Detector(body, {"class_names": names, "anchors": anchors, "input_shape": hw})
    train_map = evaluate_records(det, records[:60], coco=False)["map"]
    val_map = evaluate_records(det, val, coco=False)["map"]
    keras.backend.clear_session()
    return train_map, val_map, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    from utils.data.demo_data import make_demo_dataset
    from utils.data.voc import load_voc, read_class_names

    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(os.path.join(tmp, "demo"), num_images=300, seed=0)
        names = read_class_names(os.path.join(str(root), "demo_classes.txt"))
        records = load_voc(str(root), "train", names, log=None)
        val = load_voc(str(root), "val", names, log=None)
        lines = [f"{'row':9s} {'lr':>7s} {'shortcut':>8s} {'neighbours':>10s} {'mAP@0.5 train60':>15s} "
                 f"{'mAP@0.5 val':>11s} {'train s':>7s}"]
        print(lines[0], flush=True)
        for name in args.rows:
            lr, shortcut, neighbors = ROWS[name]
            tr, va, sec = run_row(records, val, names, lr, shortcut, neighbors, args.steps)
            lines.append(f"{name:9s} {lr:7.0e} {str(shortcut):>8s} {str(neighbors):>10s} {tr:15.3f} {va:11.3f} "
                         f"{sec:7.0f}")
            print(lines[-1], flush=True)
    if not args.no_record:
        from benchmarks._record import command_line, record
        record(SECTION, command_line("recipe_ablation.py", argv if argv is not None else sys.argv[1:]),
               f"mobilenetv2 alpha 0.5 from scratch, demo train split (210 images), 128x128, batch 8, "
                f"Adam at a constant lr, no augmentation, {args.steps} steps per row; mAP@0.5 with eval_map.py's "
                "code on the first 60 training images and on the val split (60 images).", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
