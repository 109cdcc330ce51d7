"""Mid-epoch resume (``save_interval_steps``): a run killed in the middle of an epoch continues
from its last mid-epoch checkpoint instead of redoing the epoch, on any number of workers.

Each run is a real ``returnn-ray`` process (SIGKILLed, so nothing of it can tidy up); the
1-worker runs use Ray Train's local mode (no Ray to start), the re-dealt run a local Ray of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from returnn_ray.atomic import is_temp_path
from returnn_ray.training.checkpoints import checkpoint_path, find_checkpoints, partial_path
from test_train import write_config as base_config  # tests/tasks is on sys.path (rootdir import)
from test_train import scores

NUM_SEQS = 600
SAVE_EVERY = 100
RUN_TIMEOUT_S = 300

NETWORK = {  # dropout: a resumed epoch must draw the masks the uninterrupted one drew
    "hidden": {"class": "linear", "activation": "tanh", "n_out": 16, "dropout": 0.2},
    "output": {"class": "softmax", "loss": "ce", "from": ["hidden"]},
}


def write_config(directory: Path) -> str:
    return base_config(
        directory,
        train={"class": "Task12AXDataset", "num_seqs": NUM_SEQS, "seq_ordering": "laplace:.10"},
        network=NETWORK,
        max_seqs=1,  # one seq per step: 600 steps an epoch
        num_epochs=2,
        save_interval_steps=SAVE_EVERY,
        log=str(directory / "train.log"),
        log_verbosity=4,
    )


def command(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "returnn_ray", config, *args]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def log_text(directory: Path) -> str:
    path = directory / "train.log"
    return path.read_text() if path.exists() else ""


def run_to_end(directory: Path, *args: str) -> None:
    proc = subprocess.run(
        command(write_config(directory), *args), capture_output=True, text=True, env=env(), timeout=RUN_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_mid_epoch_2(directory: Path) -> int:
    """Starts a run and SIGKILLs it once epoch 2 has written its second mid-epoch checkpoint.
    Returns the seqs of epoch 2 that checkpoint says are done."""
    proc = subprocess.Popen(
        command(write_config(directory)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    pattern = re.compile(r"epoch 2 global train step \d+: mid-epoch checkpoint, (\d+) of (\d+) seqs done")
    try:
        while True:
            found = pattern.findall(log_text(directory))
            if len(found) >= 2:
                break
            assert proc.poll() is None, f"the run ended before epoch 2's mid-epoch checkpoints: {proc.stderr.read()}"
            assert time.monotonic() < deadline, log_text(directory)
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    done, total = (int(x) for x in found[-1])
    assert total == NUM_SEQS and 0 < done < total
    return done


def frames_line(directory: Path, epoch: int) -> str:
    lines = [l for l in log_text(directory).splitlines() if f"epoch {epoch}: " in l and "frames per loss" in l]
    assert lines, log_text(directory)
    return lines[-1].split("frames per loss", 1)[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(directory)
    return directory


def test_a_run_killed_mid_epoch_resumes_there_and_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    done = kill_mid_epoch_2(tmp_path)
    model = str(tmp_path / "model")
    assert find_checkpoints(model) == [1]
    assert os.path.exists(partial_path(model, 2))
    assert not [n for n in os.listdir(tmp_path) if is_temp_path(n)]

    run_to_end(tmp_path)
    log = log_text(tmp_path)
    assert f"Resuming epoch 2 mid-way ({partial_path(model, 2)}): {done} of {NUM_SEQS} seqs done" in log, log
    # epoch 2 was not redone from its start: only the rest of its steps ran after the resume
    resumed = log[log.index("Resuming epoch 2 mid-way") :]
    assert "start epoch 1 " not in resumed and resumed.count("start epoch 2 ") == 1
    assert not os.path.exists(partial_path(model, 2))  # the finished epoch's mid-epoch state is gone
    assert find_checkpoints(model) == [1, 2]

    # the same run as without the kill: scores (the epoch's running sums were saved too), the
    # frames trained on (no seq lost or repeated) and the weights (dropout masks included)
    ours, theirs = scores(tmp_path), scores(uninterrupted)
    assert ours.keys() == theirs.keys() == {1, 2}
    for key, value in theirs[2].items():
        assert ours[2][key] == pytest.approx(value, rel=1e-6), key
    assert frames_line(tmp_path, 2) == frames_line(uninterrupted, 2)
    a = torch.load(checkpoint_path(model, 2), weights_only=True)["model"]
    b = torch.load(checkpoint_path(str(uninterrupted / "model"), 2), weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.ray  # the 2-worker rerun starts a local Ray of its own
def test_a_mid_epoch_state_is_re_dealt_to_another_number_of_workers(tmp_path, uninterrupted):
    done = kill_mid_epoch_2(tmp_path)  # one worker (local mode)
    run_to_end(tmp_path, "++ray_num_workers", "2", "++ray_local_mode", "False")
    log = log_text(tmp_path)
    assert f"{done} of {NUM_SEQS} seqs done" in log and "Resuming epoch 2 mid-way" in log, log
    # every remaining seq once over the two ranks: the epoch's frames equal the uninterrupted run's
    assert frames_line(tmp_path, 2) == frames_line(uninterrupted, 2)
    assert scores(tmp_path).keys() == {1, 2}
    assert not os.path.exists(partial_path(str(tmp_path / "model"), 2))


def test_a_mid_epoch_state_of_another_seq_order_is_ignored(tmp_path):
    kill_mid_epoch_2(tmp_path)
    run_to_end(tmp_path, "++train", repr({"class": "Task12AXDataset", "num_seqs": NUM_SEQS, "seq_ordering": "random"}))
    log = log_text(tmp_path)
    assert "made for another seq order of epoch 2" in log and "Resuming epoch 2 mid-way" not in log, log
    assert scores(tmp_path).keys() == {1, 2}
