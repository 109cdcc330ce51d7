"""One training per model (``<model>.lock``), with real processes: a live holder refuses a second
``returnn-ray`` run in one line naming it; a killed holder's lock is stale and does not block."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_bad_input import BASE  # tests/ is on sys.path (its conftest.py)

from returnn_ray.errors import UserError
from returnn_ray.training.run_lock import ModelLock, lock_path, process_start_time

REPO = Path(__file__).resolve().parents[2]

# the bad-input table's valid training config, without its output paths (each test sets them)
CONFIG = {k: v for k, v in BASE.items() if k not in ("model", "learning_rate_file")}

HOLDER = "import sys, time\nfrom returnn_ray.training.run_lock import ModelLock\n" \
         "with ModelLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _hold(model: str) -> subprocess.Popen:
    """Another process holding the lock of ``model`` (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, model], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _train(tmp_path: Path, model: str) -> subprocess.CompletedProcess:
    (tmp_path / "c.json").write_text(json.dumps({**CONFIG, "model": model, "learning_rate_file": model + ".lr"}))
    return subprocess.run([sys.executable, "-m", "returnn_ray", "c.json"], capture_output=True, text=True,
                          cwd=tmp_path, env=_env(), timeout=300)


def test_a_second_training_of_the_same_model_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
    model = str(tmp_path / "out" / "net")
    os.makedirs(tmp_path / "out")
    holder = _hold(model)
    try:
        refused = _train(tmp_path, model)
        assert refused.returncode == 2, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("returnn-ray: error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"pid {holder.pid} on this host" in errors[0] and lock_path(model) in errors[0]
        assert sorted(os.listdir(tmp_path / "out")) == ["net.lock"]  # nothing of the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(lock_path(model))  # kill -9: left behind, stale
    done = _train(tmp_path, model)
    assert done.returncode == 0, done.stderr
    # and released (metrics.jsonl: the run's metrics file, next to the model)
    assert sorted(os.listdir(tmp_path / "out")) == ["metrics.jsonl", "net.001.opt.pt", "net.001.pt", "net.lr"]


def test_a_lock_is_released_on_ctrl_c(tmp_path):
    model = str(tmp_path / "net")
    holder = _hold(model)
    holder.send_signal(signal.SIGINT)  # KeyboardInterrupt unwinds the with block
    holder.wait(30)
    assert not os.path.exists(lock_path(model))


def test_a_lock_whose_pid_is_now_another_process_is_stale(tmp_path):
    model = str(tmp_path / "net")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(lock_path(model), "w") as f:  # the pid lives, but started at another time: reused
            json.dump({"host": socket.gethostname(), "pid": other.pid, "start_time": process_start_time(other.pid) + 5}, f)
        with ModelLock(model):
            assert json.loads(Path(lock_path(model)).read_text())["pid"] == os.getpid()
        with open(lock_path(model), "w") as f:  # the same process: held
            json.dump({"host": socket.gethostname(), "pid": other.pid, "start_time": process_start_time(other.pid)}, f)
        with pytest.raises(UserError, match=f"pid {other.pid} on this host"):
            ModelLock(model).acquire()
    finally:
        other.kill()
        other.wait()


def test_a_lock_of_another_host_says_how_to_remove_it(tmp_path):
    model = str(tmp_path / "net")
    Path(lock_path(model)).write_text(json.dumps({"host": "elsewhere-node", "pid": 1234, "start_time": 1}))
    with pytest.raises(UserError) as info:
        ModelLock(model).acquire()
    message = str(info.value)
    assert "'elsewhere-node'" in message and "1234" in message and f"delete {lock_path(model)!r}" in message
    assert Path(lock_path(model)).exists()  # not ours to remove

