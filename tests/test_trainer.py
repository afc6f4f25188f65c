"""utils/training/trainer.py, its unit pieces: LR scaling, EMA warm-up, phases, optimizers,
dataset resolution. (tests/test_train.py runs training end to end and checks the EMA
optimizer against a NumPy reference.)"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from utils.training.trainer import (Phase, TrainError, ema_warmup_momentum, make_optimizer, make_strategy,
                                    plan_phases, resolve_data, scaled_lr)


# ----------------------------------------------------------------------------- scaled_lr

@pytest.mark.parametrize("batch,nominal", [(8, 64), (128, 64), (3, 48), (64, 64)])
def test_scaled_lr_linear_for_sgd_square_root_for_adam(batch, nominal):
    ratio = batch / nominal
    assert scaled_lr(0.01, "sgd", batch, nominal) == pytest.approx(0.01 * ratio)
    for opt in ("adam", "adamw"):
        assert scaled_lr(0.01, opt, batch, nominal) == pytest.approx(0.01 * math.sqrt(ratio))


def test_scaled_lr_hand_values():
    assert scaled_lr(2e-2, "adamw", 8, 64) == pytest.approx(2e-2 / math.sqrt(8))  # ~7e-3, as the docstring says
    assert scaled_lr(0.1, "sgd", 256, 64) == pytest.approx(0.4)
    assert scaled_lr(0.1, "adam", 256, 64) == pytest.approx(0.2)


# ----------------------------------------------------------------------------- EMA warm-up

def test_ema_warmup_momentum_follows_min_rule():
    for t in [0, 1, 2, 5, 10, 50, 100, 500, 5000]:
        for m in (0.9, 0.99, 0.9999):
            want = min(m, (1 + t) / (10 + t))
            assert float(ema_warmup_momentum(t, m)) == pytest.approx(want, rel=1e-6), (t, m)
    assert float(ema_warmup_momentum(0, 0.99)) == pytest.approx(0.1)
    assert float(ema_warmup_momentum(1, 0.99)) == pytest.approx(2 / 11)
    # (1 + t) / (10 + t) reaches 0.99 at t = 890
    assert float(ema_warmup_momentum(880, 0.99)) < 0.99 and float(ema_warmup_momentum(1000, 0.99)) == pytest.approx(0.99)


def test_ema_warmup_momentum_on_tensors():
    steps = tf.constant([0, 9, 90], tf.int64)
    got = ema_warmup_momentum(steps, 0.5).numpy()
    np.testing.assert_allclose(got, [0.1, 0.5, 0.5], rtol=1e-6)
    step = keras.Variable(3, dtype="int64")
    assert float(ema_warmup_momentum(step, 0.99)) == pytest.approx(4 / 13)


# ----------------------------------------------------------------------------- phases

def test_phases_pretrained_freeze_half_then_unfreeze():
    args = train.parse_args(["--backbone-weights", "imagenet", "--epochs", "10", "--freeze-batch-size", "12",
                             "--batch-size", "6"])
    assert plan_phases(args) == [Phase("frozen", 0, 5, 12, True), Phase("unfrozen", 5, 10, 6, False)]
    args = train.parse_args(["--weights", "some.keras", "--epochs", "7"])  # a full checkpoint counts as pretrained
    assert [(p.name, p.start, p.end) for p in plan_phases(args)] == [("frozen", 0, 3), ("unfrozen", 3, 7)]


def test_phases_from_scratch_and_edge_cases():
    args = train.parse_args(["--epochs", "10"])
    assert plan_phases(args) == [Phase("unfrozen", 0, 10, args.batch_size, False)]
    args = train.parse_args(["--epochs", "4", "--freeze-epochs", "9"])  # frozen longer than the run
    assert plan_phases(args) == [Phase("frozen", 0, 4, args.freeze_batch_size, True)]
    args = train.parse_args(["--epochs", "6", "--freeze-epochs", "6"])
    assert [p.name for p in plan_phases(args)] == ["frozen"]
    for epochs, freeze in [(1, 0), (5, 2), (9, 8), (3, 3)]:
        phases = plan_phases(train.parse_args(["--epochs", str(epochs), "--freeze-epochs", str(freeze)]))
        spans = [(p.start, p.end) for p in phases]
        assert spans[0][0] == 0 and spans[-1][1] == epochs  # contiguous cover of [0, epochs)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


# ----------------------------------------------------------------------------- optimizers

def opt_args(*extra):
    return train.parse_args(["--epochs", "1", *extra])


def test_make_optimizer_kinds_and_settings():
    sgd = make_optimizer(opt_args("--optimizer", "sgd", "--momentum", "0.8", "--clipnorm", "5"), 0.01)
    assert isinstance(sgd, keras.optimizers.SGD) and type(sgd).__name__ == "SGD"
    assert (sgd.momentum, sgd.nesterov, sgd.clipnorm, sgd.use_ema) == (0.8, True, 5.0, True)
    assert sgd.weight_decay == pytest.approx(5e-4) and float(sgd.learning_rate) == pytest.approx(0.01)
    adam = make_optimizer(opt_args("--optimizer", "adam", "--momentum", "0.85"), 1e-3)
    assert type(adam) is not keras.optimizers.Adam and isinstance(adam, keras.optimizers.Adam)
    assert adam.beta_1 == 0.85 and adam.weight_decay is None  # Adam's L2 is not decoupled: off
    adamw = make_optimizer(opt_args("--optimizer", "adamw", "--weight-decay", "0.05", "--no-ema",
                                    "--ema-momentum", "0.9", "--clipnorm", "0"), 1e-3)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.weight_decay == pytest.approx(0.05) and adamw.use_ema is False and adamw.clipnorm is None
    off = make_optimizer(opt_args("--optimizer", "sgd", "--weight-decay", "0"), 0.01)
    assert off.weight_decay is None
    bad = opt_args()
    bad.optimizer = "rmsprop"
    with pytest.raises(TrainError, match="unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"):
        make_optimizer(bad, 0.01)


@pytest.mark.parametrize("kind", ["sgd", "adamw", "adam"])
def test_weight_decay_reaches_kernels_only(kind):
    """With zero gradients the only change a step makes is decoupled decay: var *= 1 - lr * wd."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, bias_initializer="ones"),
                              keras.layers.BatchNormalization(gamma_initializer="ones", beta_initializer="ones")])
    lr, wd = 0.1, 0.05
    opt = make_optimizer(opt_args("--optimizer", kind, "--weight-decay", str(wd), "--no-ema"), lr)
    variables = model.trainable_variables
    before = {v.name: v.numpy().copy() for v in variables}
    assert sorted(before) == ["beta", "bias", "gamma", "kernel"]
    opt.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in variables])
    after = {v.name: v.numpy() for v in variables}
    factor = 1.0 if kind == "adam" else 1 - lr * wd
    np.testing.assert_allclose(after["kernel"], before["kernel"] * factor, rtol=1e-6)
    for name in ("bias", "gamma", "beta"):
        np.testing.assert_array_equal(after[name], before[name])


def test_unknown_strategy_is_a_train_error():
    with pytest.raises(TrainError, match="unknown strategy 'tpu'; valid: default, mirrored, multiworker"):
        make_strategy("tpu")
    assert make_strategy("default") is tf.distribute.get_strategy()


# ----------------------------------------------------------------------------- resolve_data

def test_resolve_data_without_a_dataset_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainError, match=r"no dataset given.*--root DIR.*--images DIR --annotations DIR.*--demo"):
        resolve_data(train.parse_args([]))
    classes = tmp_path / "c.txt"
    classes.write_text("a\nb\n")
    with pytest.raises(TrainError, match="--images needs --annotations"):
        resolve_data(train.parse_args(["--images", str(tmp_path), "--classes", str(classes)]))
    with pytest.raises(FileNotFoundError, match=r"class list not found: .*none\.txt"):
        resolve_data(train.parse_args(["--root", str(tmp_path), "--classes", str(tmp_path / "none.txt")]))


@pytest.fixture(scope="module")
def demo_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    args = train.parse_args(["--demo", "--root", str(root), "--demo-images", "12"])
    return args, resolve_data(args), root


def test_resolve_data_demo_builds_the_set_and_fills_in_root_and_classes(demo_args):
    args, (train_records, val_records, names), root = demo_args
    assert args.root == [str(root)] and args.classes.endswith("demo_classes.txt")
    assert names == (root / "demo_classes.txt").read_text().split()
    assert len(train_records) > len(val_records) > 0
    assert not {r.image_path for r in train_records} & {r.image_path for r in val_records}


def test_resolve_data_flat_layout_splits_by_ratio(demo_args):
    _, _, root = demo_args
    base = ["--images", str(root / "JPEGImages"), "--annotations", str(root / "Annotations"),
            "--classes", str(root / "demo_classes.txt")]
    tr, va, names = resolve_data(train.parse_args(base + ["--split-ratios", "0.5", "0.5", "0"]))
    assert len(tr) + len(va) == 12 and len(tr) > 0 and len(va) > 0
    assert not {r.image_path for r in tr} & {r.image_path for r in va}
    tr2, va2, _ = resolve_data(train.parse_args(base + ["--split-ratios", "0.75", "0.25", "0"]))
    assert len(tr2) > len(tr) and len(tr2) + len(va2) == 12


# ----------------------------------------------------------------------------- conf_threshold

def test_store_conf_threshold_writes_the_f1_best_score_into_best_keras(tmp_path):
    from _helpers import tiny_body
    from utils.checkpoint import read_meta, save_detector
    from utils.metrics import evaluate_detections
    from utils.targets import load_anchors
    from utils.training.trainer import store_conf_threshold

    path = tmp_path / "best.keras"
    save_detector(tiny_body((64, 64), 1), path, {"backbone": "tiny", "alpha": 1.0, "class_names": ["cell"],
                                                  "anchors": load_anchors(), "input_shape": [64, 64]})
    gt = {"boxes": [[10, 10, 40, 40], [50, 50, 60, 60]], "labels": [0, 0]}
    det = {"boxes": [[10, 10, 40, 40], [0, 0, 5, 5], [50, 50, 60, 60]], "scores": [0.3, 0.2, 0.1],
           "classes": [0, 0, 0]}
    best = evaluate_detections([det], [gt], 1)["f1_best"]  # keep all three: 2 TP, 1 FP -> F1 0.8
    conf = store_conf_threshold(path, best)
    assert conf == read_meta(path)["conf_threshold"]
    assert conf["score"] == best["score"] and 0 < conf["score"] < 0.1
    assert conf["source"] == "F1-best score on the validation split"
    assert (conf["f1"], conf["tp"], conf["fp"], conf["num_gt"]) == (pytest.approx(0.8), 2, 1, 2)
    # no true positive: no score, the file is left as it is
    before = path.read_bytes()
    assert store_conf_threshold(path, evaluate_detections([det], [{"boxes": [], "labels": []}], 1)["f1_best"]) is None
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- data formats and the recorded split

def _same_records(got, want):
    """Same image ids, labels and boxes within one pixel."""
    got, want = {r.image_id: r for r in got}, {r.image_id: r for r in want}
    assert sorted(got) == sorted(want)
    for i, r in want.items():
        order_g, order_w = np.lexsort(got[i].boxes.T[::-1]), np.lexsort(r.boxes.T[::-1])
        assert got[i].labels[order_g].tolist() == r.labels[order_w].tolist(), i
        np.testing.assert_allclose(got[i].boxes[order_g], r.boxes[order_w], atol=1.0, err_msg=i)


def test_resolve_data_coco_and_yolo_copies_give_the_voc_records(tmp_path, capsys):
    from _data_helpers import demo_copies

    d = demo_copies(tmp_path, num_images=24, seed=0)
    voc_train, voc_val, voc_names = resolve_data(train.parse_args(["--root", str(d["voc"]), "--classes",
                                                                   str(d["classes"])]))
    capsys.readouterr()
    for fmt, path in (("coco", d["coco"]), ("yolo", d["yolo"]), ("coco", d["coco"] / "annotations"
                                                                  / "instances_train.json")):
        args = train.parse_args(["--data", str(path)])
        tr, va, names = resolve_data(args)
        out = capsys.readouterr().out
        assert names == voc_names and args.classes is None  # taken from the dataset: config.yaml keeps null
        assert f"classes: 4 from the dataset ({'COCO categories' if fmt == 'coco' else 'YOLO names'}" in out
        if path.suffix == ".json":  # one instances file: the whole of it, split on the spot
            assert {r.image_id for r in tr + va} <= {r.image_id for r in voc_train} and len(va) > 0
            continue
        _same_records(tr, voc_train)
        _same_records(va, voc_val)
    # --format overrides detection; a wrong one is a clear error
    with pytest.raises(ValueError, match="not a VOC root|no Annotations"):
        resolve_data(train.parse_args(["--data", str(d["coco"]), "--format", "voc", "--classes", str(d["classes"])]))
    with pytest.raises(TrainError, match="--root names VOC roots"):
        resolve_data(train.parse_args(["--root", str(d["voc"]), "--format", "yolo"]))


def test_the_run_records_its_split_made_on_the_spot(tmp_path):
    from _data_helpers import flat_set
    from utils.data import formats
    from utils.data.voc import split_ids
    from utils.training.trainer import resolve_spec

    images, xml = flat_set(tmp_path / "flat", 20, classes=("cat", "dog"))
    classes = tmp_path / "c.txt"
    classes.write_text("cat\ndog\n")
    args = train.parse_args(["--images", str(images), "--annotations", str(xml), "--classes", str(classes),
                             "--seed", "3"])
    spec = resolve_spec(args, log=None)
    rec = spec.record(args.split_ratios, args.seed, (args.train_split, args.val_split, "test"))  # as run() does
    ids = [f"im{i:02d}" for i in range(20)]
    assert rec["test_ids"] == split_ids(ids, (0.8, 0.1, 0.1), 3)["test"]
    assert (rec["seed"], rec["split_ratios"], rec["split"], rec["classes"]) == (
        3, [0.8, 0.1, 0.1], formats.MADE_ON_THE_SPOT, f"file {classes}")
    tr, va, _ = resolve_data(args, spec)
    assert not {r.image_id for r in tr + va} & set(rec["test_ids"])  # the test split never trained on


@pytest.mark.slow
def test_a_short_run_records_its_split_and_eval_map_uses_it(tmp_path, monkeypatch, capsys):
    """Two steps at 128 on a flat folder pair with --seed 3: best.keras and last.keras carry the
    split; eval_map.py with no data option evaluates on exactly its test images."""
    import eval_map
    from _data_helpers import flat_set
    from utils import evaluate
    from utils.checkpoint import read_meta
    from utils.data.voc import split_ids

    images, xml = flat_set(tmp_path / "flat", 20, classes=("cat", "dog"))
    classes = tmp_path / "c.txt"
    classes.write_text("cat\ndog\n")
    save = tmp_path / "run"
    assert train.main(["--images", str(images), "--annotations", str(xml), "--classes", str(classes),
                       "--seed", "3", "--input-size", "128", "--backbone", "squeezenet", "--alpha", "0.5",
                       "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "2", "--eval-every", "1",
                       "--verbose", "0", "--no-tensorboard", "--workers", "1", "--save-dir", str(save)]) == 0
    want = split_ids([f"im{i:02d}" for i in range(20)], (0.8, 0.1, 0.1), 3)["test"]
    for name in ("best.keras", "last.keras"):
        data = read_meta(save / name)["data"]
        assert data["test_ids"] == want and data["seed"] == 3 and data["split"] == "made on the spot", name
    seen = []
    real = evaluate.evaluate_records
    monkeypatch.setattr(evaluate, "evaluate_records",
                        lambda det, recs, **kw: seen.append(recs) or real(det, recs, **kw))
    capsys.readouterr()
    assert eval_map.main(["--weights", str(save / "best.keras"), "--no-coco", "--save-dir", str(tmp_path / "ev")]) == 0
    assert sorted(r.image_id for r in seen[-1]) == want
    assert "the test split of the training run's dataset" in capsys.readouterr().out


# ----------------------------------------------------------------------------- teachability at the start of train.py

def _rbc_root(tmp_path, name="rbc", box=(100, 100, 160, 150)):
    """A VOC root of 6 train images whose boxes are of class ``name``; the class list file says RBC."""
    from _data_helpers import make_root, voc_xml

    root = make_root(tmp_path / "B", {f"b{k}": voc_xml([(name, box, 0)], size=(640, 480)) for k in range(6)},
                     image_sizes={f"b{k}": (640, 480) for k in range(6)})
    (root / "ImageSets" / "Main" / "val.txt").write_text("b0\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("RBC\n")
    return root, classes


def test_check_teachability_stops_on_unknown_class_names_unless_allowed(tmp_path):
    from utils.training.trainer import check_teachability, resolve_spec

    root, classes = _rbc_root(tmp_path)
    args = train.parse_args(["--root", str(root), "--classes", str(classes)])
    spec = resolve_spec(args, log=None)
    tr, _, names = resolve_data(args, spec)
    with pytest.raises(TrainError) as exc:
        check_teachability(args, spec, tr, names)
    msg = str(exc.value)
    assert "class name 'rbc' in the annotations is not in the class list: 6 box(es) dropped; did you mean 'RBC'?" in msg
    assert "fatal: no usable box in the training split (train)" in msg and "--allow-unteachable" in msg
    lines = []
    args.allow_unteachable = True
    found = check_teachability(args, spec, tr, names, log=lines.append)
    assert len(found.fatal) == 2 and "did you mean 'RBC'?" in lines[0]
    assert lines[-1].startswith("--allow-unteachable: training anyway")


def test_check_teachability_warns_on_tiny_boxes_and_goes_on(tmp_path):
    from utils.training.trainer import check_teachability, resolve_spec

    root, classes = _rbc_root(tmp_path, "RBC", box=(100, 100, 102, 102))
    args = train.parse_args(["--root", str(root), "--classes", str(classes), "--input-size", "416", "--seed", "2"])
    spec = resolve_spec(args, log=None)
    tr, _, names = resolve_data(args, spec)
    lines = []
    found = check_teachability(args, spec, tr, names, log=lines.append)
    assert not found.fatal and [w.kind for w in found.warnings] == ["anchor fit"]
    assert (f"fit anchors to the data: python -m utils.data.anchors --root {root} --classes {classes} --seed 2 "
            "--input-size 416 --out model_data/my_anchors.txt") in lines[0]
    # a clean set: one line, no finding
    root, classes = _rbc_root(tmp_path / "clean", "RBC")
    args = train.parse_args(["--root", str(root), "--classes", str(classes)])
    spec = resolve_spec(args, log=None)
    lines = []
    assert check_teachability(args, spec, resolve_data(args, spec)[0], ["RBC"], log=lines.append).items == []
    assert lines == ["teachability of the training split (train): no finding"]


def test_extension_restart_rule(capsys):
    """A resumed run whose --epochs changed continues the cosine from the rate it had reached."""
    from utils.training.callbacks import lr_at
    from utils.training.trainer import extension_restart, scaled_lr
    args = train.parse_args(["--epochs", "40", "--optimizer", "sgd", "--lr", "0.01"])
    state = {"epoch": 20, "epochs": 30, "phase": "unfrozen", "lr_restart": None}
    r = extension_restart(args, state, 20)
    lr = scaled_lr(0.01, "sgd", args.batch_size, args.nominal_batch)
    assert r == {"epoch": 20, "lr": pytest.approx(lr_at(20, 30, lr, lr * 0.01, 2.0)), "phase": "unfrozen"}
    assert "--epochs 30 -> 40: the learning rate continues from" in capsys.readouterr().out
    assert extension_restart(args, {**state, "epochs": 40, "lr_restart": r}, 25) == r  # a second resume keeps it
    assert extension_restart(args, {"epoch": 20, "weights": "x"}, 20) is None  # a state from before the rule
    with pytest.raises(TrainError, match="--epochs 40 is below the 45 epochs the run already finished"):
        extension_restart(args, {**state, "epoch": 45}, 45)
