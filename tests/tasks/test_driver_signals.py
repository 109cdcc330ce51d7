"""The ``returnn-ray`` process interrupted (Ctrl-C, SIGTERM from a scheduler, ``kill -9``) while it
trains on its embedded local Ray: no checkpoint or score file half-written, none of the Ray
processes it started left running, and the same command resumes.

Each run is a real process with a marker in its environment; every process Ray starts for it
inherits the marker, so after the run ``/proc`` tells exactly which of them are still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from returnn_ray.atomic import is_temp_path
from returnn_ray.training.checkpoints import find_checkpoints, load_checkpoint, load_optimizer_state
from returnn_ray.training.lr_file import load_learning_rate_file
from test_train import write_config as base_config  # tests/tasks is on sys.path (rootdir import)

RUN_TIMEOUT_S = 300
EXIT_TIMEOUT_S = 60
MARK = "RETURNN_RAY_TEST_RUN"


def write_config(directory: Path) -> str:
    return base_config(
        directory,
        train={"class": "Task12AXDataset", "num_seqs": 1500, "seq_ordering": "laplace:.10"},
        max_seqs=1,
        num_epochs=3,
        log=str(directory / "train.log"),
        log_verbosity=4,
    )


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie holds nothing; its parent has yet to reap it
        except OSError:
            continue
        pids.append(int(entry))
    return pids


def log_text(directory: Path) -> str:
    path = directory / "train.log"
    return path.read_text() if path.exists() else ""


def assert_files_whole(directory: Path) -> None:
    """No temp file of an interrupted write; every checkpoint and the score file load."""
    names = os.listdir(directory)
    assert not [n for n in names if is_temp_path(n)], names
    model = str(directory / "model")
    for epoch in find_checkpoints(model):
        load_checkpoint(model, epoch)
        load_optimizer_state(model, epoch)
    if (directory / "learning_rates").exists():
        load_learning_rate_file(str(directory / "learning_rates"))


@pytest.mark.ray  # the run starts its own local Ray (ray_local_mode False)
@pytest.mark.parametrize(
    "sig, exit_code, message",
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGKILL, -signal.SIGKILL, None),
    ],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
def test_an_interrupted_driver_leaves_whole_files_no_processes_and_resumes(tmp_path, sig, exit_code, message):
    mark = uuid.uuid4().hex
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[MARK] = mark
    # ray_local_mode False: the run starts its own local Ray (raylet, GCS, workers), the case to clean up
    proc = subprocess.Popen(
        [sys.executable, "-m", "returnn_ray", config, "++ray_num_workers", "1", "++ray_local_mode", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "start epoch 2 " not in log_text(tmp_path):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, log_text(tmp_path)
            time.sleep(0.05)
        time.sleep(1.0)  # into epoch 2's steps
        started = marked_pids(mark)
        assert len(started) > 2, "the run's Ray processes do not carry the marker: the check below would prove nothing"
        os.kill(proc.pid, sig)  # the driver only, as a scheduler or Ctrl-C in a terminal would
        rc = proc.wait(EXIT_TIMEOUT_S)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    assert rc == exit_code, err
    if message is not None:
        lines = [l for l in err.splitlines() if l.startswith("returnn-ray: ")]
        assert len(lines) == 1 and message in lines[0] and "rerun" in lines[0], err
        assert "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = marked_pids(mark)
    assert not left, f"processes of the interrupted run still alive: {left}"
    assert_files_whole(tmp_path)
    saved = find_checkpoints(str(tmp_path / "model"))
    if sig == signal.SIGKILL:
        # nothing of ours runs in a killed driver: Ray stops the job's workers once its raylet sees
        # the driver gone, seconds on a loaded machine, and epoch 2 may end (whole) in between
        assert saved in ([1], [1, 2]), saved
    else:
        assert saved == [1], saved  # the driver stopped the workers itself, inside epoch 2

    # the same command resumes (here in local mode: no Ray to start) and finishes
    rerun = subprocess.run(
        [sys.executable, "-m", "returnn_ray", config], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from epoch {saved[-1]} " in log_text(tmp_path)
    assert find_checkpoints(str(tmp_path / "model")) == [1, 2, 3]
    assert load_learning_rate_file(str(tmp_path / "learning_rates")).keys() == {1, 2, 3}
