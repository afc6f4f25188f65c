"""utils/console.py: TensorFlow's start-up noise is filtered from file descriptor 2 and real
lines are kept; and predict.py, run as a user runs it, starts with the device line and no
noise unless YOLO_TF_LOGS=1 asks for it."""
import os
import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from _helpers import tiny_body
from utils import console

NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results",
    "I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit",
    "I0000 00:00:1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
]
ROOT = pathlib.Path(__file__).resolve().parents[1]
NOISE_RE = re.compile(r"oneDNN|cuda|cuInit|absl|E0000|I0000")


def test_filtered_stderr_drops_noise_written_to_fd2_and_keeps_the_rest(capfd):
    with console.filtered_stderr():
        os.write(2, ("\n".join(NOISE_LINES[:3]) + "\nreal problem: file not found\n").encode())
        os.write(2, ("\n".join(NOISE_LINES[3:]) + "\nanother real line\n").encode())
        print("stdout is untouched")
    os.write(2, b"after the block\n")
    out, err = capfd.readouterr()
    assert out == "stdout is untouched\n"
    lines = err.splitlines()
    assert lines == ["real problem: file not found", "another real line", "after the block"]


def test_filtered_stderr_restores_fd2_on_error_and_takes_a_pattern(capfd):
    with pytest.raises(RuntimeError):
        with console.filtered_stderr(re.compile("drop me")):
            os.write(2, b"drop me please\nkeep: oneDNN custom operations are on\n")
            raise RuntimeError("boom")
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err.splitlines() == ["keep: oneDNN custom operations are on", "fd 2 is back"]
    with console.filtered_stderr():
        os.write(2, "\n".join(NOISE_LINES).encode())  # nothing left: nothing written, not even a newline
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("value,want", [(None, False), ("", False), ("0", False), ("no", False), ("1", True),
                                        ("true", True), (" YES ", True), ("On", True)])
def test_tf_logs_wanted_from_the_environment(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv(console.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(console.ENV_VAR, value)
    assert console.tf_logs_wanted() is want
    assert console.tf_logs_wanted(True) is True


def test_device_line_names_the_cpu_here():
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    line = console.device_line()
    assert line.startswith("device: CPU (") and line.endswith("no GPU")
    assert f"({os.cpu_count()} threads" in line
    with open("/proc/cpuinfo") as f:
        has_avx2 = " avx2" in f.read()
    assert ("AVX2" in line) == has_avx2


# ----------------------------------------------------------------------------- predict.py as a user runs it

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """predict.py twice, in parallel: quiet (no TF env vars) and with YOLO_TF_LOGS=1."""
    from utils.checkpoint import save_detector
    from utils.targets import load_anchors

    tmp = tmp_path_factory.mktemp("console")
    meta = dict(backbone="tiny", alpha=1.0, class_names=["a", "b"], anchors=load_anchors(), input_shape=[64, 64])
    weights = save_detector(tiny_body((64, 64), 2), tmp / "tiny.keras", meta)
    image = tmp / "img.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.ENV_VAR)}
    procs = {}
    for name, extra in (("quiet", {}), ("logs", {console.ENV_VAR: "1"})):
        cmd = [sys.executable, "predict.py", "--weights", str(weights), "--source", str(image),
               "--save-dir", str(tmp / name)]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env={**env, **extra}, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)  # two TF processes, maybe beside a test worker
        results[name] = (proc.returncode, out, err, tmp / name)
    return results


@pytest.mark.slow
def test_predict_starts_with_the_device_line_and_no_tf_noise(runs):
    rc, out, err, save_dir = runs["quiet"]
    assert rc == 0, err
    assert out.splitlines()[0].startswith("device:"), out
    noisy = [line for line in err.splitlines() if NOISE_RE.search(line)]
    assert noisy == [], err
    assert (save_dir / "predictions.jsonl").is_file()


@pytest.mark.slow
def test_predict_with_yolo_tf_logs_shows_tensorflows_own_lines(runs):
    rc, out, err, _ = runs["logs"]
    assert rc == 0, err
    assert out.splitlines()[0].startswith("device:")
    assert any(s in line for line in err.splitlines() for s in ("I0000", "oneDNN", "cuda")), err
