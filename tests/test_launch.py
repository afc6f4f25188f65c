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
