"""utils/training/config.py: YAML options under the parser's names, command line first,
clear errors, atomic save. (tests/test_train.py checks the same through train.parse_args.)"""
import argparse

import pytest
import yaml

from utils.training.config import load_yaml, parse_with_config, save_yaml


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--name", default="exp")
    p.add_argument("--schedule", choices=["cos", "step"], default="cos")
    p.add_argument("--sizes", type=int, nargs="+", default=[416])
    p.add_argument("--fast", action="store_true")
    return p


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_without_config_it_is_plain_argparse():
    args = parse_with_config(parser(), ["--batch-size", "4"])
    assert (args.batch_size, args.lr, args.name, args.sizes, args.fast, args.config) == (4, 0.01, "exp", [416], False,
                                                                                         None)


def test_yaml_overrides_defaults_and_the_command_line_overrides_yaml(tmp_path):
    cfg = write(tmp_path, "batch-size: 16\nlr: 0.5\nname: run1\nschedule: step\nsizes: [320, 256]\nfast: true\n")
    args = parse_with_config(parser(), ["--config", cfg])
    assert (args.batch_size, args.lr, args.name, args.schedule, args.sizes, args.fast) == (16, 0.5, "run1", "step",
                                                                                           [320, 256], True)
    args = parse_with_config(parser(), ["--lr", "0.1", f"--config={cfg}", "--sizes", "128", "--schedule", "cos"])
    assert (args.batch_size, args.lr, args.name, args.schedule, args.sizes) == (16, 0.1, "run1", "cos", [128])


def test_dashes_or_underscores_and_values_converted_by_the_option_type(tmp_path):
    for key in ("batch-size", "batch_size"):
        args = parse_with_config(parser(), ["--config", write(tmp_path, f"{key}: '12'\nlr: '1e-3'\n")])
        assert args.batch_size == 12 and isinstance(args.batch_size, int)
        assert args.lr == pytest.approx(1e-3) and isinstance(args.lr, float)
    args = parse_with_config(parser(), ["--config", write(tmp_path, "name: null\n")])
    assert args.name is None


def test_unknown_keys_and_bad_choices_name_the_file_and_key(tmp_path):
    cfg = write(tmp_path, "batch-size: 4\nbatch-sise: 5\n", "typo.yaml")
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown option 'batch-sise'"):
        parse_with_config(parser(), ["--config", cfg])
    for key in ("help", "config"):
        with pytest.raises(ValueError, match=rf"unknown option '{key}'"):
            parse_with_config(parser(), ["--config", write(tmp_path, f"{key}: x\n")])
    cfg = write(tmp_path, "schedule: linear\n", "choice.yaml")
    with pytest.raises(ValueError, match=r"choice\.yaml: schedule must be one of \['cos', 'step'\], got 'linear'"):
        parse_with_config(parser(), ["--config", cfg])
    with pytest.raises(ValueError, match=r"invalid literal"):  # the option's type() rejects it
        parse_with_config(parser(), ["--config", write(tmp_path, "batch-size: many\n")])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*nope\.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse_with_config(parser(), ["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        load_yaml(write(tmp_path, "a: [1, 2\n", "broken.yaml"))
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping"):
        load_yaml(write(tmp_path, "- a\n- b\n", "list.yaml"))
    assert load_yaml(write(tmp_path, "", "empty.yaml")) == {}
    assert parse_with_config(parser(), ["--config", write(tmp_path, "# nothing\n")]).batch_size == 8


def test_save_yaml_round_trips_in_order_and_is_atomic(tmp_path):
    data = {"zeta": 1, "alpha": [1, 2], "name": "x", "nested": {"b": 2.5, "a": None}}
    path = tmp_path / "out" / "config.yaml"
    save_yaml(data, path)
    assert load_yaml(path) == data
    assert list(yaml.safe_load(path.read_text())) == ["zeta", "alpha", "name", "nested"]  # not sorted
    before = path.read_bytes()
    with pytest.raises(yaml.YAMLError):
        save_yaml({"ok": 1, "bad": object()}, path)  # safe_dump refuses part-way through
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    # a saved run configuration feeds back in as --config
    save_yaml({"batch_size": 3, "sizes": [64]}, path)
    args = parse_with_config(parser(), ["--config", str(path)])
    assert (args.batch_size, args.sizes) == (3, [64])


def _saved_run(tmp_path, *extra):
    from utils.training.config import parse_train_args
    args = parse_train_args(["--root", "data/VOC", "--epochs", "10", "--save-dir", str(tmp_path), *extra])
    save_yaml({k: v for k, v in vars(args).items() if k not in ("config", "tf_logs")}, tmp_path / "config.yaml")
    return args


def test_resume_refuses_what_the_saved_state_depends_on(tmp_path):
    from utils.training.config import parse_train_args
    _saved_run(tmp_path, "--backbone", "ghostnet", "--batch-size", "8")
    base = ["--resume", "--save-dir", str(tmp_path)]
    args = parse_train_args(base)
    assert (args.backbone, args.batch_size, args.epochs, args.resume) == ("ghostnet", 8, 10, True)
    with pytest.raises(ValueError, match="--resume: --backbone ghostnet -> mobilenetv2; --batch-size 8 -> 16: "
                                         "the model, the data and the batch of a run cannot change"):
        parse_train_args(base + ["--backbone", "mobilenetv2", "--batch-size", "16"])
    with pytest.raises(ValueError, match="--input-size 416 -> 320"):
        parse_train_args(base + ["--input-size", "320"])
    with pytest.raises(ValueError, match="--seed 0 -> 3"):
        parse_train_args(base + ["--seed", "3"])
    with pytest.raises(ValueError, match="--neck-width 1.0 -> 0.5"):
        parse_train_args(base + ["--neck-width", "0.5"])
    assert parse_train_args(base + ["--neck-width", "1.0"]).neck_width == 1.0  # = alpha 1.0: the same network
    # what may change: the end of the run, evaluation and logging
    args = parse_train_args(base + ["--epochs", "20", "--eval-every", "2", "--no-tensorboard", "--workers", "1"])
    assert (args.epochs, args.eval_every, args.tensorboard, args.workers) == (20, 2, False, 1)


def test_neck_width_is_checked_when_parsed():
    from utils.training.config import parse_train_args
    assert parse_train_args(["--root", "data/VOC", "--neck-width", "0.5"]).neck_width == 0.5
    assert parse_train_args(["--root", "data/VOC"]).neck_width is None
    with pytest.raises(ValueError, match=r"--neck-width must be in \(0, 4\]"):
        parse_train_args(["--root", "data/VOC", "--neck-width", "0"])



def test_parsing_the_neck_width_does_not_start_tensorflow(tmp_path):
    """train.py parses its options before utils.console.start() quiets TensorFlow's start-up
    lines: the neck-width rule (checked on parse, compared on --resume) must not import it."""
    import subprocess
    import sys
    code = ("import sys; from utils.training.config import parse_train_args; "
            "parse_train_args(['--root', 'data/VOC', '--neck-width', '0.5']); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


def test_resume_with_the_same_config_file_as_the_start(tmp_path):
    """`train.py --config recipe.yaml --resume` (the start command plus --resume) reads the run's
    saved configuration and drops the recipe's --config, value included."""
    from utils.training.config import parse_train_args
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("backbone: ghostnet\nepochs: 12\n")
    run = tmp_path / "run"
    run.mkdir()
    args = parse_train_args(["--config", str(recipe), "--save-dir", str(run)])
    save_yaml({k: v for k, v in vars(args).items() if k not in ("config", "tf_logs")}, run / "config.yaml")
    again = parse_train_args(["--config", str(recipe), "--save-dir", str(run), "--resume"])
    assert (again.backbone, again.epochs, again.resume) == ("ghostnet", 12, True)


def test_a_worker_on_another_machine_resumes_from_its_own_copy_of_the_configuration(tmp_path, monkeypatch):
    """Worker 1 of a multi-worker run has no run folder on its machine: `--resume` reads the copy
    of config.yaml kept with its resume state, and refuses changes to it as the chief would."""
    import json
    import os

    from utils.training.config import parse_train_args, saved_config_path
    from utils.training.distributed import worker_state_dir

    run = tmp_path / "run_on_the_chief"  # not created here: this "machine" is worker 1's
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    base = ["--resume", "--save-dir", str(run), "--strategy", "multiworker"]
    assert saved_config_path(parse_train_args(base)) is None  # nothing saved yet: the command line alone
    monkeypatch.setattr("utils.training.distributed.tempfile.gettempdir", lambda: str(tmp_path))  # not the real one
    own = worker_state_dir(str(run), 1)
    os.makedirs(own)
    started = parse_train_args(["--save-dir", str(run), "--strategy", "multiworker", "--backbone", "ghostnet",
                                "--epochs", "7"])
    save_yaml({k: v for k, v in vars(started).items() if k not in ("config", "tf_logs")}, os.path.join(own, "config.yaml"))
    assert saved_config_path(parse_train_args(base)) == os.path.join(own, "config.yaml")
    args = parse_train_args(base)
    assert (args.backbone, args.epochs, args.resume) == ("ghostnet", 7, True)
    with pytest.raises(ValueError, match="--backbone ghostnet -> mobilenetv2"):
        parse_train_args(base + ["--backbone", "mobilenetv2"])
    # the chief (index 0) reads only the run folder, which it writes itself
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert saved_config_path(parse_train_args(base)) is None


def test_workers_compare_a_checksum_of_the_options_they_must_share():
    from utils.training.config import fixed_options_key, parse_train_args
    key = fixed_options_key(parse_train_args(["--backbone", "ghostnet"]))
    assert 0 <= key < 2 ** 24  # exact in float32: gathered over workers as one float
    assert key == fixed_options_key(parse_train_args(["--backbone", "ghostnet", "--verbose", "2", "--workers", "1"]))
    for change in (["--alpha", "0.5"], ["--batch-size", "16"], ["--input-size", "320"], ["--seed", "1"],
                   ["--epochs", "50"], ["--momentum", "0.9"], ["--no-mosaic"], ["--ignore-thresh", "0.7"]):
        assert fixed_options_key(parse_train_args(["--backbone", "ghostnet", *change])) != key, change
