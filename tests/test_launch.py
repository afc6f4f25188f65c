"""utils/launch.py: TF_CONFIG per worker, prefixed output, every worker stopped when one fails."""
import io
import json
import os
import sys
import time

import pytest

from utils.launch import Launcher, main, parse_workers, tf_config, worker_commands
from utils.training.distributed import read_tf_config


def test_workers_by_count_get_free_loopback_ports_and_their_own_task():
    addrs = parse_workers("3")
    assert len(set(addrs)) == 3 and all(a.startswith("127.0.0.1:") for a in addrs)
    for i in range(3):
        c = read_tf_config(tf_config(addrs, i))
        assert (c.rank, c.addresses) == (i, tuple(addrs))
    assert parse_workers("127.0.0.1:2001, 127.0.0.1:2002") == ["127.0.0.1:2001", "127.0.0.1:2002"]
    with pytest.raises(ValueError, match="worker address 'nohost' is not 'host:port'"):
        parse_workers("nohost,127.0.0.1:2")


def test_remote_workers_need_ssh():
    addrs = ["127.0.0.1:2001", "10.1.2.3:2002"]
    with pytest.raises(ValueError, match="worker 1 \\(10.1.2.3:2002\\) is not on this host: pass --ssh"):
        worker_commands(addrs, ["train.py"])
    (local, env0), (remote, _) = worker_commands(addrs, ["train.py", "--demo"], ssh=True, cwd="/srv/yolo",
                                                 python="python3")
    assert local == ["python3", "train.py", "--demo"] and json.loads(env0["TF_CONFIG"])["task"]["index"] == 0
    assert remote[:3] == ["ssh", "-tt", "10.1.2.3"] and remote[3].startswith("cd /srv/yolo && TF_CONFIG=")
    assert "\"index\": 1" in remote[3] and remote[3].endswith("python3 train.py --demo")


def _py(code):
    return [sys.executable, "-c", code]


def test_output_is_prefixed_and_success_is_zero():
    out = io.StringIO()
    cmds = [(_py("import json, os; print('rank', json.loads(os.environ['TF_CONFIG'])['task']['index'])"),
             {**os.environ, "TF_CONFIG": tf_config(["127.0.0.1:1", "127.0.0.1:2"], i)}) for i in range(2)]
    assert Launcher(cmds, out=out).run() == 0
    lines = out.getvalue().splitlines()
    assert sorted(lines) == ["[worker 0] rank 0", "[worker 1] rank 1"]


@pytest.mark.parametrize("how, code", [("sys.exit(3)", 3), ("os.kill(os.getpid(), 9)", 137)])
def test_one_failed_worker_stops_the_others(how, code, tmp_path):
    out = io.StringIO()
    pid_file = tmp_path / "sleeper.pid"
    sleeper = _py(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    failing = _py(f"import os, sys, time; time.sleep(1.0); print('failing', flush=True); {how}")
    t0 = time.monotonic()
    assert Launcher([(sleeper, dict(os.environ)), (failing, dict(os.environ))], grace=5, out=out).run() == code
    assert time.monotonic() - t0 < 30
    text = out.getvalue()
    assert "[worker 1] failing" in text
    assert f"[launch] worker 1 failed ({'exit code 3' if code == 3 else 'killed by signal 9'}); " \
           "stopping the other workers" in text
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the sleeper is gone (reaped by the launcher)
        os.kill(pid, 0)


def test_cli_needs_a_command_and_good_workers(capsys):
    with pytest.raises(SystemExit):
        main(["--workers", "2"])
    assert "give the command after --" in capsys.readouterr().err
    assert main(["--workers", "a:1,a:1", "--", "train.py"]) == 2
    assert "an address appears twice" in capsys.readouterr().err
    assert main(["--workers", "2", "--", "-c", "print('hi')"]) == 0
    assert "[worker 1] hi" in capsys.readouterr().out


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    import random
    import socket

    from utils.launch import ephemeral_range, free_ports
    ports = free_ports(4, random.Random(0))
    assert len(set(ports)) == 4
    span = ephemeral_range()
    if span is not None and span[0] > 11024:  # the kernel never hands these out by itself
        assert all(span[0] - 10000 <= p < span[0] for p in ports)
    for p in ports:  # free on every interface, as TensorFlow binds them
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", p))


# a worker that says what TensorFlow says when its port is taken: worker 0, on the first start
_CLASH = ("import json, os, sys; c = json.loads(os.environ['TF_CONFIG']); d = {d!r}; i = c['task']['index']; "
          "first = i == 0 and not os.path.exists(os.path.join(d, 'w0-first')); "
          "name = ('w0-first' if first else 'w0-second') if i == 0 else 'w1-' + c['cluster']['worker'][1]; "
          "open(os.path.join(d, name), 'w').write(json.dumps(c['cluster']['worker'])); "
          "first and print('E0000 grpc_server_lib.cc:618] UNKNOWN: Could not start gRPC server', flush=True); "
          "sys.exit(1 if first else 0)")


def test_a_taken_port_starts_every_worker_again_on_new_ports(tmp_path, capsys):
    assert main(["--workers", "2", "--grace", "2", "--", "-c", _CLASH.format(d=str(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.count("[launch] 2 workers: ") == 2
    assert "[launch] the port of worker 0 (127.0.0.1:" in out and "starting every worker again on new ports " \
           "(start 2 of 3)" in out
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("w0-first", "w0-second"))
    assert first != second  # new ports
    assert (tmp_path / f"w1-{second[1]}").is_file()  # worker 1 ran again, with the new cluster
    assert json.loads((tmp_path / f"w1-{second[1]}").read_text()) == second


def test_a_taken_port_given_by_hand_is_named_not_retried(capsys):
    said = ("import json, os, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
            "i == 1 and time.sleep(60); print('UNKNOWN: Could not start gRPC server', flush=True); raise SystemExit(1)")
    assert main(["--workers", "127.0.0.1:2001,127.0.0.1:2002", "--grace", "2", "--", "-c", said]) == 1
    out = capsys.readouterr().out
    assert out.count("[launch] 2 workers: ") == 1
    assert "[launch] the port of worker 0 (127.0.0.1:2001) is in use by another process: choose another port " \
           "for it" in out


@pytest.mark.slow
def test_tensorflow_on_a_taken_port_is_started_again(monkeypatch, capsys):
    """The marker is what this TensorFlow prints: the first ports handed out are held here."""
    import socket

    import utils.launch as launch
    held = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("", 0))
        s.listen()
        held.append(s)
    real, calls = launch.free_ports, []

    def first_taken(count, rng=None):
        calls.append(count)
        return [s.getsockname()[1] for s in held] if len(calls) == 1 else real(count, rng)

    monkeypatch.setattr(launch, "free_ports", first_taken)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # the Python error names it too
    strategy = "import tensorflow as tf; tf.distribute.MultiWorkerMirroredStrategy(); print('connected')"
    try:
        assert main(["--workers", "2", "--grace", "5", "--", "-c", strategy]) == 0
    finally:
        for s in held:
            s.close()
    out = capsys.readouterr().out
    assert calls == [2, 2] and "starting every worker again on new ports (start 2 of 3)" in out
    assert "[worker 0] connected" in out and "[worker 1] connected" in out


def test_another_failure_is_not_retried_for_a_port_line(capsys):
    # worker 1 prints the port line but keeps running; worker 0 fails for its own reason
    said = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
            "print('Could not start gRPC server' if i else 'other', flush=True); time.sleep(60 if i else 1); "
            "sys.exit(3)")
    assert main(["--workers", "2", "--grace", "2", "--", "-c", said]) == 3
    out = capsys.readouterr().out
    assert out.count("[launch] 2 workers: ") == 1 and "[launch] worker 0 failed (exit code 3)" in out
    assert "port of" not in out
