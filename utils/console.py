"""What the command-line front ends print first: no TensorFlow start-up noise, one device line.

On a CPU machine ``import tensorflow`` (2.21) prints about ten lines before the program says
anything: oneDNN notices, "Could not find cuda drivers", CPU-instruction notices, and an
``E0000 ... failed call to cuInit: CUDA error`` line that reads like a failure. Most of them
come from absl before it is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them:
:func:`start` sets the level (unless the user set it), imports TensorFlow and looks up the
devices with the process's stderr (file descriptor 2) sent to a temporary file, then writes
back every captured line that is not one of those known notices, so a real error still shows.

``--tf-logs`` on every CLI, or the environment variable ``YOLO_TF_LOGS=1``, leaves all of it
as TensorFlow prints it. This module imports nothing heavy: a CLI calls :func:`start` before
it imports the library.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

ENV_VAR = "YOLO_TF_LOGS"

# TensorFlow / absl start-up notices that say nothing a user needs (CPU-only machine, oneDNN on).
NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions:",
    r"rebuild TensorFlow with the appropriate compiler flags",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning",
    r"cuda_(platform|executor|dnn|blas|fft)\.cc",
]))


def add_tf_logs_argument(parser) -> None:
    """The ``--tf-logs`` option every front end that runs TensorFlow takes."""
    parser.add_argument("--tf-logs", action="store_true",
                        help=f"show TensorFlow's start-up logs (hidden by default; also {ENV_VAR}=1)")


def tf_logs_wanted(flag: bool = False) -> bool:
    """True when the user asked for TensorFlow's own logs (``--tf-logs`` or ``YOLO_TF_LOGS=1``)."""
    return bool(flag) or os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern = NOISE, on_exit=None):
    """Send file descriptor 2 to a temporary file; on exit write back the lines that do not match
    (or hand them, as a list, to ``on_exit``)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines() if not pattern.search(line)]
            if on_exit is not None:
                on_exit(kept)
            elif kept:
                print("\n".join(kept), file=sys.stderr)


def device_line() -> str:
    """One line naming where TensorFlow runs: its GPUs, or the CPU with its threads and features."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            try:
                names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
            except (ValueError, RuntimeError):
                names.append(gpu.name)
        return f"device: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
    return f"device: CPU ({os.cpu_count()} threads{cpu_features()}), no GPU"


def cpu_flags() -> set | None:
    """The CPU feature flags of /proc/cpuinfo (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def cpu_features() -> str:
    """``, AVX2, AVX-512, VNNI`` style suffix for the device line (empty where unknown)."""
    flags = cpu_flags() or set()
    found = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"))
             if flag in flags]
    return "".join(f", {name}" for name in found)


def start(tf_logs: bool = False, announce: bool = True) -> None:
    """Import TensorFlow quietly (unless ``tf_logs``) and print the device line.

    Call it from a CLI's ``main`` after parsing the arguments and before importing anything
    that imports TensorFlow.
    """
    if tf_logs_wanted(tf_logs):
        import tensorflow  # noqa: F401
        line = device_line()
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        kept = []
        with filtered_stderr(on_exit=kept.extend):
            import tensorflow  # noqa: F401
            line = device_line()  # the CUDA probe (cuInit) runs here
        if announce:
            print(line, flush=True)  # the device line first, then whatever else TF said
            announce = False
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)
    if announce:
        print(line, flush=True)
