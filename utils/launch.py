"""Start a multi-worker training: one process per worker, each with its own TF_CONFIG.

    python -m utils.launch --workers 2 -- train.py --strategy multiworker --demo --epochs 5
    python -m utils.launch --workers 127.0.0.1:23456,127.0.0.1:23457 -- train.py --strategy multiworker ...
    python -m utils.launch --workers 10.0.0.1:23456,10.0.0.2:23456 --ssh -- train.py --strategy multiworker ...

``--workers N`` starts N processes on this host on free loopback ports (if another process
takes one before its worker binds it, every worker is started again on new ports: 3 starts at
most); ``--workers
host:port,...`` uses those addresses, starting the local ones (127.0.0.1, localhost, this
host's name) as child processes and, with ``--ssh``, the others through ``ssh HOST 'cd DIR &&
TF_CONFIG=... python ...'`` (the same folder and the same Python on every host). Each worker's
output is streamed with a ``[worker i]`` prefix. When one worker fails (a non-zero exit, a
kill), the others are stopped (SIGTERM, then SIGKILL after ``--grace`` seconds) and the
launcher exits with the failed worker's code, saying which one failed. Ctrl-C stops them all.
Run the same command again with ``--resume`` in the training options to continue a stopped run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# TensorFlow's gRPC server binds 0.0.0.0:port when the strategy is created; this is what it
# prints when another process holds the port (TF 2.21)
PORT_TAKEN = "Could not start gRPC server"
PORT_ATTEMPTS = 3  # starts of a --workers N job whose ports were taken before the workers bound them


def ephemeral_range() -> tuple[int, int] | None:
    """The kernel's range for ports it hands out by itself (bind to port 0, outgoing
    connections); None where it cannot be read (not Linux)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))  # every interface, as TensorFlow binds
        except OSError:
            return False
    return True


def free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct TCP ports free on every interface now.

    They are released before the workers bind them, so another process can take one in
    between. To make that unlikely they are drawn below the kernel's ephemeral range, where
    the kernel never hands out a port by itself (the usual thief: an outgoing connection or a
    bind to port 0); main() starts the workers again on new ports if it happens anyway.
    Without a known range the kernel picks (bind to port 0)."""
    rng = rng or random.Random()
    span = ephemeral_range()
    ports: list[int] = []
    if span and span[0] > 11024:
        for port in rng.sample(range(span[0] - 10000, span[0]), 200):
            if len(ports) == count:
                break
            if _bindable(port):
                ports.append(port)
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def parse_workers(text: str) -> list[str]:
    """``"2"`` -> two free loopback addresses; ``"h1:p1,h2:p2"`` -> those addresses (checked)."""
    from utils.training.distributed import read_tf_config

    text = str(text).strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError("--workers must be at least 1")
        return [f"127.0.0.1:{p}" for p in free_ports(n)]
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    read_tf_config(tf_config(addresses, 0))  # the same checks the workers make
    return addresses


def tf_config(addresses, index: int) -> str:
    """TF_CONFIG of worker ``index`` (worker 0 is the chief, TensorFlow's convention)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": int(index)}})


def is_local(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in LOCAL_HOSTS or host in (socket.gethostname(), socket.getfqdn())


def worker_commands(addresses, command, ssh: bool = False, cwd: str | None = None, python: str | None = None):
    """(argv, env) per worker: local ones run ``python command...`` with TF_CONFIG in the
    environment; remote ones (``ssh=True``) run it through ``ssh HOST`` in ``cwd``."""
    python = python or sys.executable
    cwd = cwd or os.getcwd()
    out = []
    for i, address in enumerate(addresses):
        config = tf_config(addresses, i)
        if is_local(address):
            out.append(([python, *command], {**os.environ, "TF_CONFIG": config}))
        elif ssh:
            host = address.rpartition(":")[0]
            remote = (f"cd {shlex.quote(cwd)} && TF_CONFIG={shlex.quote(config)} "
                      + " ".join(shlex.quote(a) for a in [python, *command]))
            # -tt: a terminal on the remote side, so the remote worker ends when the ssh client is stopped
            out.append((["ssh", "-tt", host, remote], dict(os.environ)))
        else:
            raise ValueError(f"worker {i} ({address}) is not on this host: pass --ssh to start it through ssh, "
                             "or start it there yourself with TF_CONFIG (README: Training on several machines)")
    return out


class Launcher:
    """Runs the worker processes, streams their output, stops them all when one fails."""

    def __init__(self, commands, grace: float = 10.0, out=None):
        self.commands = commands
        self.grace = float(grace)
        self.out = out or sys.stdout
        self.procs: list[subprocess.Popen] = []
        self.port_taken: set[int] = set()  # workers that said their port was in use
        self.failed: int | None = None  # the worker whose failure ended the run
        self._lock = threading.Lock()

    def _pump(self, i, stream):
        for line in iter(stream.readline, ""):
            with self._lock:
                if PORT_TAKEN in line:
                    self.port_taken.add(i)
                self.out.write(f"[worker {i}] {line.rstrip()}\n")
                self.out.flush()
        stream.close()

    def stop(self, keep=None):
        """SIGTERM every running worker (process group), SIGKILL those still alive after grace."""
        alive = [p for p in self.procs if p.poll() is None and p is not keep]
        for p in alive:
            _signal_group(p, signal.SIGTERM)
        end = time.monotonic() + self.grace
        for p in alive:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()

    def run(self) -> int:
        threads = []
        try:
            for i, (argv, env) in enumerate(self.commands):
                try:
                    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         bufsize=1, start_new_session=True)
                except OSError as exc:
                    self._say(f"worker {i} could not start ({argv[0]}: {exc}); stopping the other workers")
                    self.stop()
                    return 2
                self.procs.append(p)
                t = threading.Thread(target=self._pump, args=(i, p.stdout), daemon=True)
                t.start()
                threads.append(t)
            while True:
                codes = [p.poll() for p in self.procs]
                failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    i, code = failed[0]
                    self.failed = i
                    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    self._say(f"worker {i} failed ({why}); stopping the other workers")
                    self.stop()
                    return code if code > 0 else 128 - code
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._say("interrupted; stopping every worker")
            self.stop()
            return 130
        finally:
            for t in threads:
                t.join(timeout=5)

    def _say(self, text):
        with self._lock:
            self.out.write(f"[launch] {text}\n")
            self.out.flush()


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", required=True,
                   help="N (N processes on this host, free loopback ports) or host:port,host:port,...")
    p.add_argument("--ssh", action="store_true", help="start the workers that are not on this host through ssh")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds a stopped worker gets to exit before it is killed (default 10)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the script and its options (train.py ...)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --, e.g. -- train.py --strategy multiworker --demo")
    auto = args.workers.strip().isdigit()  # ports of our choosing: start again on others if one is taken
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            addresses = parse_workers(args.workers)
            commands = worker_commands(addresses, command, ssh=args.ssh)
        except ValueError as exc:
            print(f"launch: error: {exc}", file=sys.stderr)
            return 2
        print(f"[launch] {len(addresses)} workers: {', '.join(addresses)} (worker 0 is the chief)", flush=True)
        launcher = Launcher(commands, grace=args.grace)
        code = launcher.run()
        if code == 0 or launcher.failed not in launcher.port_taken:  # a success, Ctrl-C, another failure
            return code
        taken = f"worker {launcher.failed} ({addresses[launcher.failed]})"
        if not auto:
            print(f"[launch] the port of {taken} is in use by another process: choose another port for it",
                  flush=True)
            return code
        if attempt == PORT_ATTEMPTS:
            print(f"[launch] the port of {taken} was in use by another process again; gave up after "
                  f"{PORT_ATTEMPTS} starts", flush=True)
            return code
        # nothing was trained yet (the ports are bound before the first step; what a worker
        # writes before that, the run folder and config.yaml, is written again), so the same
        # command starts afresh
        print(f"[launch] the port of {taken} was taken by another process before the worker bound it; "
              f"starting every worker again on new ports (start {attempt + 1} of {PORT_ATTEMPTS})", flush=True)
    raise AssertionError("unreachable: the last start returns")


if __name__ == "__main__":
    sys.exit(main())
