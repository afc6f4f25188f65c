"""train.py end to end on a tiny synthetic VOC set: outputs, logs, resume, interrupt, NaN."""
import csv
import json
import os

import numpy as np
import pytest

import train
from utils import checkpoint as ck
from utils.training.callbacks import lr_at
from utils.training.config import load_yaml
from utils.data.demo_data import make_demo_dataset

SMALL = ["--input-size", "128", "--backbone", "squeezenet", "--alpha", "0.5", "--batch-size", "4",
         "--steps-per-epoch", "2", "--eval-every", "1", "--verbose", "0", "--no-tensorboard",
         "--workers", "1"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "demo"
    make_demo_dataset(root, num_images=16, seed=0)
    return root


def _args(demo_root, save_dir, *extra):
    return ["--root", str(demo_root), "--classes", str(demo_root / "demo_classes.txt"), *SMALL,
            "--save-dir", str(save_dir), *extra]


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_yaml_config_and_command_line_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("backbone: ghostnet\nalpha: 0.5\nbatch-size: 3\nlr_schedule: step\n")
    args = train.parse_args(["--config", str(cfg), "--batch-size", "5"])
    assert (args.backbone, args.alpha, args.batch_size, args.lr_schedule) == ("ghostnet", 0.5, 5, "step")
    assert args.freeze_epochs == 0  # from scratch: nothing to freeze
    assert train.parse_args(["--backbone-weights", "imagenet", "--epochs", "10"]).freeze_epochs == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbon: ghostnet\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown option 'backbon'"):
        train.parse_args(["--config", str(bad)])
    assert train.main(["--config", str(tmp_path / "nope.yaml")]) == 2


def test_learning_rate_scaling_rules():
    from utils.training.trainer import scaled_lr
    assert scaled_lr(1e-2, "sgd", 16, 64) == pytest.approx(2.5e-3)  # linear
    assert scaled_lr(8e-3, "adamw", 16, 64) == pytest.approx(4e-3)  # square root
    assert scaled_lr(8e-3, "adam", 64, 64) == pytest.approx(8e-3)
    args = train.parse_args([])
    assert (args.optimizer, args.lr, args.neck_shortcut, args.neighbor_cells) == ("adamw", 2e-2, True, True)
    args = train.parse_args(["--no-neck-shortcut", "--no-neighbor-cells", "--optimizer", "sgd"])
    assert (args.lr, args.neck_shortcut, args.neighbor_cells) == (1e-2, False, False)


def test_ema_momentum_warms_up_like_tf_moving_average():
    import keras
    from utils.training.trainer import with_ema_warmup

    v = keras.Variable(np.zeros(3, np.float32))
    opt = with_ema_warmup(keras.optimizers.SGD)(learning_rate=0.1, use_ema=True, ema_momentum=0.9)
    opt.build([v])
    value, average = np.zeros(3), np.zeros(3)
    for t in range(30):  # NumPy reference: min(0.9, (1 + t) / (10 + t)) at step t
        opt.apply_gradients([(np.ones(3, np.float32), v)])
        value = value - 0.1
        m = min(0.9, (1 + t) / (10 + t))
        average = m * average + (1 - m) * value
    np.testing.assert_allclose(v.numpy(), value, rtol=1e-5)
    opt.finalize_variable_values([v])  # Keras writes the average into the variable
    np.testing.assert_allclose(v.numpy(), average, rtol=1e-5)
    assert type(opt).__name__ == "SGD"


def test_no_dataset_says_so_and_offers_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--epochs", "1", "--save-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no VOC data under VOCdevkit/VOC2007" in err and "python train.py --demo" in err


def test_taps_of_another_backbone_is_refused_before_anything_starts(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--backbone", "ghostnet", "--taps", "projected", "--save-dir", str(run)]) == 2
    captured = capsys.readouterr()
    assert "--taps is a mobilenetv2 option" in captured.err
    assert "device:" not in captured.out and not run.exists()  # nothing started, nothing written


def _interrupt_at(epoch):
    """A batch hook that raises KeyboardInterrupt (as Ctrl-C does) in the middle of ``epoch``."""
    def hook(self, batch, logs=None):
        if self.epoch == epoch and batch == 1:
            raise KeyboardInterrupt
    return hook


@pytest.mark.slow
def test_interrupt_mid_epoch_then_resume_continues_and_writes_every_output(demo_root, tmp_path, monkeypatch):
    from utils.training import callbacks

    save = tmp_path / "run"
    monkeypatch.setattr(callbacks.NanGuard, "on_train_batch_begin", _interrupt_at(1))
    assert train.main(_args(demo_root, save, "--epochs", "3")) == 130
    state = json.loads((save / "resume.json").read_text())
    assert state["epoch"] == 1  # epoch 2 was in progress: only it is lost
    last = (save / "last.keras").read_bytes()
    ck.load_detector(save / "last.keras")  # intact and loadable
    assert not [p for p in os.listdir(save) if p.startswith(".")]  # no half-written temporaries
    monkeypatch.undo()

    assert train.main(_args(demo_root, save, "--epochs", "3", "--resume", "--tensorboard")) == 0
    for name in ("best.keras", "last.keras", "log.csv", "curves.png", "config.yaml", "resume.json"):
        assert (save / name).is_file(), name
    assert (save / "tensorboard").is_dir()
    rows = _csv(save / "log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for key in ("loss", "box_loss", "obj_loss", "cls_loss", "lr", "val_map50"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    config = load_yaml(save / "config.yaml")
    assert config["backbone"] == "squeezenet" and config["input_size"] == [128]
    model, meta = ck.load_detector(save / "best.keras")
    assert meta["class_names"] == (demo_root / "demo_classes.txt").read_text().split()
    assert tuple(meta["input_shape"]) == (128, 128) and model.outputs[0].shape[-1] == 3 * (5 + 4)
    # a new run into the same folder must not silently overwrite it
    assert train.main(_args(demo_root, save, "--epochs", "1")) == 2
    assert json.loads((save / "resume.json").read_text())["epoch"] == 3
    assert (save / "last.keras").read_bytes() != last
    # the learning-rate schedule continued from its position: each epoch's last step is at
    # epoch + 1/2 (two steps per epoch) of warm-up then cosine, before and after the resume
    base = 2e-2 * (4 / 64) ** 0.5  # adamw default lr at nominal batch 64, square-root scaled to batch 4
    want = [lr_at(e + 0.5, 3, base, base * 0.01, 2.0) for e in range(3)]
    np.testing.assert_allclose([float(r["lr"]) for r in rows], want, rtol=1e-5)


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(demo_root, tmp_path, monkeypatch,
                                                                           capsys):
    from utils.data.dataset import TrainDataset

    save = tmp_path / "run"
    real_example = TrainDataset.example

    def poisoned(self, position):
        out = list(real_example(self, position))
        if self.epoch == 1:
            out[1] = np.full_like(out[1], np.nan)  # a corrupt target poisons the loss
        return tuple(out)

    monkeypatch.setattr(TrainDataset, "example", poisoned)
    assert train.main(_args(demo_root, save, "--epochs", "3")) == 2
    err = capsys.readouterr()
    assert "at epoch 2, step 1" in err.out + err.err
    assert json.loads((save / "resume.json").read_text())["epoch"] == 1
    model, _ = ck.load_detector(save / "last.keras")
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_unteachable_data_stops_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    """Class names 'rbc' in the files, 'RBC' in the class list: exit 2 with the findings, no model
    built, nothing written to the run folder; --allow-unteachable goes on (stopped right after
    the check by a model builder that raises)."""
    import nets.yolo
    from _data_helpers import make_root, voc_xml

    root = make_root(tmp_path / "B", {f"b{k}": voc_xml([("rbc", (100, 100, 160, 150), 0)], size=(640, 480))
                                      for k in range(6)}, image_sizes={f"b{k}": (640, 480) for k in range(6)})
    (root / "ImageSets" / "Main" / "val.txt").write_text("b0\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("RBC\n")
    built = []

    def no_model(*a, **kw):
        built.append(1)
        raise RuntimeError("model building reached")

    monkeypatch.setattr(nets.yolo, "yolo_body", no_model)
    save = tmp_path / "run"
    argv = ["--root", str(root), "--classes", str(classes), *SMALL, "--save-dir", str(save)]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "did you mean 'RBC'?" in err and "'rbc'" in err and "--allow-unteachable" in err
    assert not built and not (save.exists() and list(save.iterdir()))  # no config.yaml, no checkpoint
    with pytest.raises(RuntimeError, match="model building reached"):
        train.main(argv + ["--allow-unteachable"])
    out = capsys.readouterr().out
    assert "fatal: no usable box in the training split (train)" in out and "training anyway" in out
    assert built == [1] and not any((save / n).exists() for n in ("best.keras", "last.keras", "resume.json"))
