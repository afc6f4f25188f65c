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
