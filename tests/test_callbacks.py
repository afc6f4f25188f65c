"""utils/training/callbacks.py: the LR schedule against hand-computed values, the callbacks on
tiny models (fit on a Dense layer, or their hooks called directly), and the curves plot."""
import json
import math

import cv2
import keras
import numpy as np
import pytest

from _helpers import tiny_body
from utils import checkpoint as ck
from utils.targets import load_anchors
from utils.training.callbacks import CurvesPlot, EvalCheckpoint, LRSchedule, NanGuard, ResumeState, lr_at, plot_curves

COS = dict(total_epochs=10, base_lr=0.1, min_lr=0.001, warmup_epochs=2)


# ----------------------------------------------------------------------------- lr_at

@pytest.mark.parametrize("epoch,want", [
    (0.0, 0.01),                                              # warm-up starts at base / 10
    (1.0, 0.055),                                             # half-way up: 0.01 + 0.09 / 2
    (2.0, 0.1),                                               # warm-up done: base
    (4.0, 0.001 + 0.0495 * (1 + math.cos(math.pi / 4))),      # a quarter into the cosine
    (6.0, 0.0505),                                            # half-way down: (base + min) / 2
    (10.0, 0.001), (12.5, 0.001),                             # the end, and past it
])
def test_warmup_then_cosine_hand_values(epoch, want):
    assert lr_at(epoch, **COS) == pytest.approx(want, rel=1e-9)


def test_cosine_is_continuous_and_decreasing_after_warmup():
    grid = np.linspace(2, 10, 161)
    lrs = np.array([lr_at(e, **COS) for e in grid])
    assert np.all(np.diff(lrs) <= 1e-15)
    assert lr_at(2 - 1e-9, **COS) == pytest.approx(lr_at(2, **COS), rel=1e-6)
    assert lr_at(0, 10, 0.1, 0.001, warmup_epochs=0) == pytest.approx(0.1)  # no warm-up: starts at base


@pytest.mark.parametrize("epoch,want", [(0.5, 0.055), (1.0, 0.1), (2.99, 0.1), (3.0, 0.01), (5.5, 0.01),
                                        (6.0, 0.001), (9.0, 0.0005), (20, 0.0005)])  # floored at min_lr
def test_step_schedule_hand_values(epoch, want):
    got = lr_at(epoch, 20, 0.1, 0.0005, 1.0, kind="step", step_epochs=(3, 6, 9), step_gamma=0.1)
    assert got == pytest.approx(want, rel=1e-9)


def test_extended_run_continues_the_cosine_from_the_rate_reached():
    """--epochs 10 -> 20 at epoch 6: from lr_at(6, 10) the cosine goes down to min_lr at 20."""
    lr6 = lr_at(6.0, **COS)
    ext = dict(COS, total_epochs=20, restart=(6, lr6))
    assert lr_at(6.0, **ext) == pytest.approx(lr6, rel=1e-12)                  # no jump
    assert lr_at(13.0, **ext) == pytest.approx(0.001 + 0.5 * (lr6 - 0.001), rel=1e-9)  # half-way
    assert lr_at(20.0, **ext) == pytest.approx(0.001) and lr_at(25.0, **ext) == pytest.approx(0.001)
    assert lr_at(5.0, **ext) == pytest.approx(lr_at(5.0, **dict(COS, total_epochs=20)))  # before: the new plan
    grid = np.linspace(6, 20, 57)
    assert np.all(np.diff([lr_at(e, **ext) for e in grid]) <= 1e-15)
    step = lr_at(7, 20, 0.1, 0.0005, 1.0, kind="step", step_epochs=(3, 6, 9), restart=(6, 0.05))
    assert step == pytest.approx(0.001)  # step decay keeps its absolute epochs


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown LR schedule 'linear'; valid: cos, step"):
        lr_at(3, 10, 0.1, 0.001, 0, kind="linear")


# ----------------------------------------------------------------------------- LRSchedule, NanGuard (fit)

def dense_model(lr=0.5):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs, self.steps = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.steps.append((self.epoch, batch))


def test_lr_schedule_sets_the_optimizer_rate_before_every_step():
    model, rec = dense_model(), Recorder()
    x = np.linspace(-1, 1, 8, dtype=np.float32)[:, None]
    schedule = dict(total_epochs=3, base_lr=0.2, min_lr=0.002, warmup_epochs=1.0)
    hist = model.fit(x, 2 * x, batch_size=2, epochs=3, shuffle=False, verbose=0,
                     callbacks=[LRSchedule(4, **schedule), rec])
    want = [lr_at(e + b / 4, **schedule) for e, b in rec.steps]
    assert len(want) == 12 and rec.steps[5] == (1, 1)
    np.testing.assert_allclose(rec.lrs, want, rtol=1e-6)
    # the epoch log reports the rate of the epoch's last step
    np.testing.assert_allclose(hist.history["lr"], [lr_at(e + 0.75, **schedule) for e in range(3)], rtol=1e-6)


def test_lr_schedule_logs_the_last_step_run_not_a_batch_that_found_no_data():
    """With a pipeline of unknown length Keras begins one more batch that finds no data: the
    epoch's logged rate stays that of its last step."""
    model = dense_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    schedule = dict(total_epochs=2, base_lr=0.2, min_lr=0.002, warmup_epochs=1.0)
    cb = LRSchedule(4, **schedule)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    for b in range(4):
        cb.on_train_batch_begin(b)
        cb.on_train_batch_end(b)
    cb.on_train_batch_begin(4)  # the batch that finds the pipeline empty
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs["lr"] == pytest.approx(lr_at(0.75, **schedule)) != pytest.approx(lr_at(1.0, **schedule))


def test_nan_guard_stops_fit_at_the_first_nan_and_names_the_step():
    model, rec, messages = dense_model(), Recorder(), []
    x = np.ones((8, 1), np.float32)
    x[4] = np.nan  # the third batch of two
    guard = NanGuard(log=messages.append)
    model.fit(x, x, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[guard, rec])
    assert guard.tripped == (1, 3)
    assert rec.steps == [(0, 0), (0, 1), (0, 2)]  # nothing ran after the bad step
    assert len(messages) == 1 and "loss became nan at epoch 1, step 3" in messages[0]


def test_nan_guard_hooks_directly():
    model, messages = dense_model(), []
    guard = NanGuard(log=messages.append)
    guard.set_model(model)
    guard.on_epoch_begin(4)
    for batch, loss in enumerate([1.0, np.float32(2.5), None]):
        guard.on_train_batch_end(batch, {} if loss is None else {"loss": loss})
    guard.on_train_batch_end(3, None)
    assert guard.tripped is None and not model.stop_training and messages == []
    guard.on_train_batch_end(6, {"loss": np.inf})
    assert guard.tripped == (5, 7) and model.stop_training
    assert "loss became inf at epoch 5, step 7" in messages[0]


# ----------------------------------------------------------------------------- ResumeState

def test_resume_state_writes_alternating_weights_and_commits_last(tmp_path):
    model = dense_model()
    guard = NanGuard(log=lambda m: None)
    state = ResumeState(str(tmp_path), guard, extra={"phase": "unfrozen"}, best_map=lambda: 0.25)
    state.set_model(model)
    assert ResumeState.read(tmp_path) is None
    state.on_epoch_end(0)
    assert (tmp_path / "resume_0.weights.h5").is_file() and ResumeState.read(tmp_path) is None  # not committed
    state.committer.on_epoch_end(0)
    assert ResumeState.read(tmp_path) == {"epoch": 1, "weights": "resume_0.weights.h5", "best_map": 0.25,
                                          "phase": "unfrozen"}
    model.layers[0].set_weights([np.full((1, 1), 3.0, np.float32), np.full((1,), -1.0, np.float32)])
    state.on_epoch_end(1)
    state.committer.on_epoch_end(1)
    saved = ResumeState.read(tmp_path)
    assert (saved["epoch"], saved["weights"]) == (2, "resume_1.weights.h5")
    fresh = dense_model()
    fresh.load_weights(tmp_path / saved["weights"])
    np.testing.assert_array_equal(fresh.layers[0].get_weights()[0], [[3.0]])
    # after a NaN nothing is written or committed: the previous state stays
    guard.tripped = (3, 1)
    state.on_epoch_end(2)
    state.committer.on_epoch_end(2)
    assert ResumeState.read(tmp_path) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume.json", "resume_0.weights.h5", "resume_1.weights.h5"]
    assert json.loads((tmp_path / "resume.json").read_text())["epoch"] == 2


# ----------------------------------------------------------------------------- EvalCheckpoint

META = dict(backbone="tiny", alpha=1.0, class_names=["a", "b"], anchors=load_anchors(), input_shape=[64, 64])


@pytest.fixture(scope="module")
def body():
    return tiny_body((64, 64), 2)


def mark(model, value):
    """Write ``value`` into head8's bias, to tell saved checkpoints apart."""
    kernel, bias = model.get_layer("head8").get_weights()
    model.get_layer("head8").set_weights([kernel, np.full_like(bias, value)])


def marker(path):
    return float(ck.load_detector(path)[0].get_layer("head8").get_weights()[1][0])


def test_eval_checkpoint_keeps_best_and_last(body, tmp_path):
    scores = [0.3, 0.2, 0.5, 0.4]
    messages, calls = [], []
    guard = NanGuard(log=messages.append)
    cb = EvalCheckpoint(body, META, str(tmp_path), lambda m: calls.append(m) or scores[len(calls) - 1], every=1,
                        total_epochs=4, guard=guard, log=messages.append)
    for epoch, best in zip(range(4), [0.3, 0.3, 0.5, 0.5]):
        mark(body, epoch)
        logs = {}
        cb.on_epoch_end(epoch, logs)
        assert logs == {"val_map50": scores[epoch], "best_map50": best}
        if epoch == 1:
            assert (marker(tmp_path / "best.keras"), marker(tmp_path / "last.keras")) == (0, 1)
    assert calls == [body] * 4
    assert (marker(tmp_path / "best.keras"), marker(tmp_path / "last.keras")) == (2, 3)
    assert messages[2] == "epoch 3: val mAP@0.5 = 0.5000 (best 0.5000)"
    assert ck.read_meta(tmp_path / "best.keras")["class_names"] == ["a", "b"]
    # after a NaN nothing is evaluated or saved
    guard.tripped = (5, 1)
    mark(body, 9)
    logs = {}
    cb.on_epoch_end(4, logs)
    assert logs == {} and len(calls) == 4 and marker(tmp_path / "last.keras") == 3


def test_eval_checkpoint_every_n_and_without_evaluation(body, tmp_path):
    calls = []
    guard = NanGuard(log=lambda m: None)
    cb = EvalCheckpoint(body, META, str(tmp_path / "a"), lambda m: calls.append(1) or 0.1 * len(calls), every=2,
                        total_epochs=5, guard=guard, log=lambda m: None)
    maps = []
    for epoch in range(5):
        logs = {}
        cb.on_epoch_end(epoch, logs)
        maps.append(logs["val_map50"])
    assert len(calls) == 3  # epochs 2 and 4, and the last one
    assert np.isnan([maps[0], maps[2]]).all() and maps[1] == pytest.approx(0.1) and maps[4] == pytest.approx(0.3)

    # no validation set: best.keras is written once, the first epoch's weights, and not replaced
    cb = EvalCheckpoint(body, META, str(tmp_path / "b"), None, every=1, total_epochs=3, guard=guard)
    for epoch in range(3):
        mark(body, 10 + epoch)
        cb.on_epoch_end(epoch, {})
    assert (marker(tmp_path / "b" / "best.keras"), marker(tmp_path / "b" / "last.keras")) == (10, 12)


# ----------------------------------------------------------------------------- curves

def test_plot_curves_writes_a_png_from_a_small_csv(tmp_path):
    csv_path, png = tmp_path / "log.csv", tmp_path / "curves.png"
    plot_curves(str(csv_path), str(png))  # no log yet: nothing, no error
    csv_path.write_text("epoch,loss,box_loss,obj_loss,cls_loss,val_map50\n")
    plot_curves(str(csv_path), str(png))  # header only: nothing
    assert not png.exists()
    csv_path.write_text("epoch,loss,box_loss,obj_loss,cls_loss,val_map50\n"
                        "0,5.0,2.0,2.5,0.5,nan\n1,4.0,1.5,2.0,0.5,0.21\n2,3.5,oops,1.8,0.4,\n3,3.0,1.2,1.5,0.3,0.4\n")
    CurvesPlot(str(csv_path), str(png)).on_epoch_end(3)
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (320, 880, 3)  # 11 x 4 inches at 80 dpi
    assert image.std() > 0  # something is drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "log.csv"]
    csv_path.write_text("epoch,loss\n0,1.0\n")  # a log without mAP or loss parts
    plot_curves(str(csv_path), str(png))
    assert cv2.imread(str(png)).shape == (320, 880, 3)
