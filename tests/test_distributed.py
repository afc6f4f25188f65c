"""utils/training/distributed.py: TF_CONFIG checked before TensorFlow sees it, ranks, a bounded start."""
import json
import subprocess
import sys
import time

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
    assert r.returncode == 2 and "error: workers did not connect (no answer within 1 s)" in r.stderr
    ok = "from utils.training.distributed import deadline\nwith deadline(5, 'x'):\n    pass\nprint('fine')\n"
    r = subprocess.run([sys.executable, "-c", ok], capture_output=True, text=True, timeout=30,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert r.returncode == 0 and r.stdout.strip() == "fine"
