"""Training on several workers: TF_CONFIG read and checked, who writes, a bounded start.

TensorFlow's MultiWorkerMirroredStrategy reads the cluster from the ``TF_CONFIG`` environment
variable, the same JSON on every worker except for the task:

    {"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, "task": {"type": "worker", "index": 0}}

(an optional ``"chief": ["host:port"]`` entry adds a chief task; without one, worker 0 is the
chief, as in TensorFlow). Every worker runs the same train.py command. :func:`read_tf_config`
checks the JSON before TensorFlow sees it, so a malformed variable, a task index out of range
or an address without a port is one message at start instead of a hang or a C++ error.
:func:`deadline` bounds the start: a peer that never answers (a wrong address, a worker that
was not started) ends the process with a message after ``--connect-timeout`` seconds, where
TensorFlow alone would wait for ever.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile

ENV = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")


class DistributedError(ValueError):
    """A cluster description that cannot work (one message naming the problem)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster: ``addresses`` in rank order (chief first)."""
    addresses: tuple
    task_type: str
    index: int
    _chief_given: bool = False  # the cluster has a "chief" task (else worker 0 is the chief)

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def rank(self) -> int:
        """0 for the chief, then the workers in order: the shard this process reads."""
        if self._chief_given:
            return 0 if self.task_type == "chief" else self.index + 1
        return self.index

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def address(self) -> str:
        return self.addresses[self.rank]


def _check_address(addr, where) -> str:
    if not isinstance(addr, str) or addr.count(":") < 1:
        raise DistributedError(f"TF_CONFIG: {where} address {addr!r} is not 'host:port'")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"TF_CONFIG: {where} address {addr!r} is not 'host:port' with a port in 1..65535")
    return addr


def read_tf_config(text: str | None = None) -> Cluster | None:
    """The cluster of ``text`` (default: the TF_CONFIG variable); None when it is unset or
    empty. Raises DistributedError naming what is wrong."""
    text = os.environ.get(ENV, "") if text is None else text
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise DistributedError(f"TF_CONFIG is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise DistributedError("TF_CONFIG has no 'cluster' mapping (e.g. {\"worker\": [\"host:port\", ...]})")
    cluster, task = config["cluster"], config.get("task")
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise DistributedError(f"TF_CONFIG: cluster task types {unknown} are not used here; valid: chief, worker "
                               "(parameter servers and evaluators are not supported)")
    workers = cluster.get("worker") or []
    chief = cluster.get("chief") or []
    if not isinstance(workers, list) or not isinstance(chief, list) or len(chief) > 1:
        raise DistributedError("TF_CONFIG: 'worker' must be a list of addresses and 'chief' a list of at most one")
    if not workers and not chief:
        raise DistributedError("TF_CONFIG: the cluster lists no worker")
    addresses = tuple(_check_address(a, "chief") for a in chief) + tuple(_check_address(a, "worker") for a in workers)
    if len(set(addresses)) != len(addresses):
        raise DistributedError(f"TF_CONFIG: an address appears twice in the cluster: {list(addresses)}")
    if not isinstance(task, dict) or "type" not in task:
        raise DistributedError("TF_CONFIG has no 'task' ({\"type\": \"worker\", \"index\": i})")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in TASK_TYPES:
        raise DistributedError(f"TF_CONFIG: task type {kind!r} is not one of chief, worker")
    count = len(chief) if kind == "chief" else len(workers)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise DistributedError(f"TF_CONFIG: task index {index!r} is out of range: the cluster has {count} "
                               f"{kind} task{'s' if count != 1 else ''} (indices 0..{count - 1})")
    return Cluster(addresses, kind, index, bool(chief))


_WATCHDOG = """
import os, select, signal, sys
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], seconds)
if not ready:  # the parent neither finished nor died in time (it closes our stdin either way)
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Run the block; if it has not finished after ``seconds``, print ``what`` as an error and
    kill the process. For blocking calls that have no timeout of their own, such as the start
    of a multi-worker strategy waiting for a peer that never comes.

    Why a watchdog process rather than a thread or an alarm: TensorFlow's collective start
    blocks in C++ holding the GIL, so no Python thread or signal handler runs until it returns,
    and MultiWorkerMirroredStrategy installs its own SIGTERM handler (preemption), so SIGTERM
    does not end it either: only SIGKILL from another process does.
    """
    import subprocess

    message = f"error: {what} (no answer within {seconds:g} s)"
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(float(seconds)), message],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()  # done in time: the watchdog returns at once
        watchdog.wait()


def worker_state_dir(save_dir, rank: int) -> str:
    """Where a worker other than the chief keeps its resume state (and its copy of the run's
    config.yaml): a folder of its own on its machine, named after the run folder, so that a
    restarted job finds it again."""
    key = hashlib.sha1(os.path.abspath(save_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "yolov4lite_workers", f"{key}_worker{rank}")
