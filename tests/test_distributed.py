"""utils/training/distributed.py: TF_CONFIG checked before TensorFlow sees it, ranks, a bounded start."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from utils.training.distributed import Cluster, DistributedError, read_tf_config


def _config(workers, kind="worker", index=0, chief=None):
    cluster = {"worker": workers}
    if chief:
        cluster["chief"] = chief
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_unset_is_single_machine(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert read_tf_config() is None and read_tf_config("  ") is None


def test_ranks_with_and_without_a_chief_task():
    two = ["127.0.0.1:2001", "127.0.0.1:2002"]
    w1 = read_tf_config(_config(two, index=1))
    assert (w1.rank, w1.is_chief, w1.num_workers, w1.address) == (1, False, 2, "127.0.0.1:2002")
    assert read_tf_config(_config(two, index=0)).is_chief
    chief = read_tf_config(_config(two, "chief", 0, chief=["10.0.0.9:3000"]))
    assert (chief.rank, chief.is_chief, chief.num_workers, chief.address) == (0, True, 3, "10.0.0.9:3000")
    w0 = read_tf_config(_config(two, "worker", 0, chief=["10.0.0.9:3000"]))
    assert (w0.rank, w0.is_chief, w0.address) == (1, False, "127.0.0.1:2001")
    assert isinstance(w0, Cluster)


@pytest.mark.parametrize("text, message", [
    ("{cluster: 1", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no 'cluster' mapping"),
    (_config(["a:1", "b:2"], index=2), "task index 2 is out of range: the cluster has 2 worker tasks \\(indices 0..1\\)"),
    (_config(["a:1"], index=-1), "task index -1 is out of range"),
    (_config(["a:1"], kind="ps"), "task type 'ps' is not one of chief, worker"),
    (_config(["a"]), "worker address 'a' is not 'host:port'"),
    (_config(["a:99999"]), "with a port in 1..65535"),
    (_config(["a:1", "a:1"]), "an address appears twice"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}),
     "parameter servers and evaluators are not supported"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG has no 'task'"),
])
def test_bad_tf_config_is_one_clear_message(text, message):
    with pytest.raises(DistributedError, match=message):
        read_tf_config(text)


def test_deadline_ends_a_blocked_process_with_a_message():
    code = ("import time\nfrom utils.training.distributed import deadline\n"
            "with deadline(1.0, 'workers did not connect'):\n    time.sleep(60)\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert time.monotonic() - t0 < 20
    assert r.returncode == -9 and "error: workers did not connect (no answer within 1 s)" in r.stderr
    ok = "from utils.training.distributed import deadline\nwith deadline(5, 'x'):\n    pass\nprint('fine')\n"
    r = subprocess.run([sys.executable, "-c", ok], capture_output=True, text=True, timeout=30,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert r.returncode == 0 and r.stdout.strip() == "fine"


# ----------------------------------------------------------------------------- real workers

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

def _h5_arrays(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _epoch_losses(text, worker):
    return [line.split(" loss: ")[1].split()[0] for line in text.splitlines()
            if line.startswith(f"[worker {worker}]") and " loss: " in line]


@pytest.mark.slow
def test_two_workers_killed_mid_epoch_resume_and_finish(tmp_path):
    """Two train.py workers on 127.0.0.1 (one replica each). Worker 1 is SIGKILLed in epoch 2:
    the launcher stops worker 0 and says why; the same command with --resume finishes epoch 2.
    Only the chief wrote the run folder; the other worker's resume state (in its own folder)
    holds exactly the chief's weights and optimizer state (synchronous training); both workers
    logged the same losses; the other worker's folder is gone at the end."""
    import io
    import os
    import signal
    import threading

    from utils.data.demo_data import make_demo_dataset
    from utils.launch import Launcher, parse_workers, worker_commands

    demo = make_demo_dataset(tmp_path / "demo", num_images=40, seed=0)
    opts = ["--root", str(demo), "--classes", str(demo / "demo_classes.txt"), "--input-size", "128",
            "--backbone", "mobilenetv1", "--alpha", "0.25", "--epochs", "2", "--batch-size", "2", "--eval-every", "1",
            "--verbose", "2", "--no-tensorboard", "--workers", "1", "--allow-unteachable",
            "--anchors", str(ROOT / "model_data" / "yolo_anchors.txt")]
    run = tmp_path / "mw"
    command = [str(ROOT / "train.py"), *opts, "--strategy", "multiworker", "--save-dir", str(run)]
    first = io.StringIO()
    launcher = Launcher(worker_commands(parse_workers("2"), command, cwd=str(ROOT)), grace=10, out=first)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", launcher.run()))
    thread.start()
    from utils.training.distributed import worker_state_dir
    other = __import__("pathlib").Path(worker_state_dir(str(run), 1))

    def epoch_done(folder):  # each worker writes its own resume state at the epoch's end
        state = folder / "resume.json"
        try:
            return json.loads(state.read_text())["epoch"] == 1
        except (OSError, ValueError, KeyError):
            return False

    deadline_at = time.monotonic() + 600
    while time.monotonic() < deadline_at and thread.is_alive():
        if epoch_done(run) and epoch_done(other):  # worker 1 may write its state after the chief
            break
        time.sleep(0.05)
    os.kill(launcher.procs[1].pid, signal.SIGKILL)  # mid-epoch 2 (14 steps of batch 2)
    thread.join(120)
    text = first.getvalue()
    assert result["rc"] == 137, text[-3000:]
    assert "[launch] worker 1 failed (killed by signal 9); stopping the other workers" in text
    assert json.loads((run / "resume.json").read_text())["epoch"] == 1  # epoch 2 was not finished
    assert set(os.listdir(run)) <= {"config.yaml", "log.csv", "curves.png", "best.keras", "last.keras", "resume.json",
                                    "resume_0.weights.h5", "resume_1.weights.h5"}

    state = json.loads((other / "resume.json").read_text())
    assert state["epoch"] == 1
    mine, chiefs = _h5_arrays(other / state["weights"]), _h5_arrays(run / state["weights"])
    assert sorted(mine) == sorted(chiefs) and len(mine) > 100
    moving = [n for n in mine if "batch_normalization" in n and n.endswith(("/vars/2", "/vars/3"))]
    assert len(moving) > 20
    for name in set(mine) - set(moving):  # weights and optimizer state, bit for bit; the batch-norm
        np.testing.assert_array_equal(mine[name], chiefs[name], err_msg=name)  # statistics are each replica's
    second = io.StringIO()
    rc = Launcher(worker_commands(parse_workers("2"), command + ["--resume"], cwd=str(ROOT)), out=second).run()
    text = second.getvalue()
    assert rc == 0, text[-3000:]
    assert "[worker 0] resumed from" in text and "at epoch 2" in text
    assert not os.path.exists(worker_state_dir(str(run), 1))  # removed at the end
    with open(run / "log.csv") as f:
        assert [r.split(",")[0] for r in f.read().splitlines()[1:]] == ["0", "1"]
    assert _epoch_losses(text, 0) == _epoch_losses(text, 1) and len(_epoch_losses(text, 0)) == 1
    assert _epoch_losses(first.getvalue(), 0)[:1] == _epoch_losses(first.getvalue(), 1)[:1]



@pytest.mark.slow
def test_train_py_with_a_bad_or_unanswered_tf_config_ends_with_a_message(tmp_path):
    """A malformed TF_CONFIG is exit 2 with the reason; a peer that never answers ends the worker
    after --connect-timeout with a message naming it, not a hang."""
    import os

    from utils.data.demo_data import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", num_images=12, seed=0)
    cmd = [sys.executable, str(ROOT / "train.py"), "--strategy", "multiworker", "--root", str(demo), "--classes",
           str(demo / "demo_classes.txt"), "--input-size", "128", "--backbone", "mobilenetv1", "--alpha", "0.25",
           "--epochs", "1", "--batch-size", "2", "--allow-unteachable", "--save-dir", str(tmp_path / "run"),
           "--anchors", str(ROOT / "model_data" / "yolo_anchors.txt"), "--connect-timeout", "5"]
    bad = {**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}'}
    r = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "task index 3 is out of range: the cluster has 1 worker task" in r.stderr
    from utils.launch import free_ports
    me, peer = (f"127.0.0.1:{p}" for p in free_ports(2))
    lonely = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": [me, peer]},
                                                     "task": {"type": "worker", "index": 0}})}
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=lonely, capture_output=True, text=True, timeout=180)
    assert time.monotonic() - t0 < 150
    assert r.returncode == -9, r.stderr[-2000:]
    assert f"error: worker 0 ({me}): the other workers ({peer}) did not connect" in r.stderr
    assert "(no answer within 5 s)" in r.stderr


_ONE_PROCESS_TWO_REPLICAS = r"""
import sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train
sys.exit(train.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_workers_take_the_step_of_one_process_with_two_replicas(tmp_path, monkeypatch):
    """Two train.py workers (one replica each) against one process with two replicas (the CPU
    split in two), same global batch of 8, seed and augmentation: one SGD step gives the same
    weights to float rounding (the gradient all-reduce sums in another order), the same losses,
    and the same optimizer step count (Keras' extra empty step per epoch under the multi-worker
    strategy is not counted: callbacks.StepCount).

    Why one step: at this point of training the network is ill-conditioned, a 1e-7 relative
    change of the weights moves the early layers' gradients by several percent (conv1 6%,
    median over variables 3%, measured on this model), so the rounding of step 1 grows to
    visible differences in later steps, as it does between two GPUs that sum in other orders.
    Batch-norm moving statistics are each replica's and are not compared."""
    import os

    from utils.data.demo_data import make_demo_dataset
    from utils.launch import Launcher, parse_workers, worker_commands

    demo = make_demo_dataset(tmp_path / "demo", num_images=24, seed=0)
    opts = ["--root", str(demo), "--classes", str(demo / "demo_classes.txt"), "--input-size", "128",
            "--backbone", "mobilenetv1", "--alpha", "0.25", "--epochs", "1", "--freeze-epochs", "0",
            "--batch-size", "8", "--steps-per-epoch", "1", "--optimizer", "sgd", "--no-ema", "--eval-every", "0",
            "--verbose", "2", "--no-tensorboard", "--workers", "1", "--allow-unteachable",
            "--anchors", str(ROOT / "model_data" / "yolo_anchors.txt")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU kernels for both (the workers inherit it)
    env = dict(os.environ)
    one = subprocess.run([sys.executable, "-c", _ONE_PROCESS_TWO_REPLICAS, str(ROOT), *opts, "--strategy", "mirrored",
                          "--save-dir", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    import io
    out = io.StringIO()
    rc = Launcher(worker_commands(parse_workers("2"), [str(ROOT / "train.py"), *opts, "--strategy", "multiworker",
                                                      "--save-dir", str(tmp_path / "two")], cwd=str(ROOT)), out=out).run()
    assert rc == 0, out.getvalue()[-3000:]

    def state(run):
        info = json.loads((run / "resume.json").read_text())
        return _h5_arrays(run / info["weights"])

    a, b = state(tmp_path / "one"), state(tmp_path / "two")
    assert sorted(a) == sorted(b)
    assert int(a["optimizer/vars/0"]) == int(b["optimizer/vars/0"]) == 1  # iterations: one step each
    moving = {n for n in a if "batch_normalization" in n and n.endswith(("/vars/2", "/vars/3"))}
    compared = [n for n in a if n.startswith("body/") and n not in moving]
    assert len(compared) > 100
    worst = max(float(np.max(np.abs(a[n] - b[n]))) for n in compared)
    assert worst < 1e-6, worst
    # the step itself is far above that tolerance: SGD's momentum buffers (no EMA) hold -lr * gradient
    slots = [n for n in a if n.startswith("optimizer/vars/") and n not in ("optimizer/vars/0", "optimizer/vars/1")]
    assert max(float(np.max(np.abs(a[n]))) for n in slots) > 1e-4
    assert max(float(np.max(np.abs(a[n] - b[n]))) for n in slots) < 1e-6
    with open(tmp_path / "one" / "log.csv") as f:
        one_log = f.read().splitlines()
    with open(tmp_path / "two" / "log.csv") as f:
        two_log = f.read().splitlines()
    head = one_log[0].split(",")
    for key in ("loss", "box_loss", "obj_loss", "cls_loss"):
        i = head.index(key)
        assert float(one_log[1].split(",")[i]) == pytest.approx(float(two_log[1].split(",")[i]), rel=1e-5), key
