"""A Ray Train worker killed mid-epoch (``kill -9``), on the shared local Ray: no mocks.

With ``ray_max_failures 1`` Ray Train restarts the worker group, which resumes from the
newest complete checkpoint, so the run ends as if nothing happened: every epoch once in the
learning_rate_file and the same final scores as an uninterrupted run. With the default
``ray_max_failures 0`` the run fails with one line that names the dead worker and says to
rerun the same command, and that rerun resumes.

The kill targets only a ``ray::RayTrainWorker`` process that descends from this pytest
process (the embedded Ray's raylet is our child), never anything else on the machine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path

import pytest

from returnn_ray.cli import main
from test_train import write_config as base_config  # tests/tasks is on sys.path (rootdir import)
from returnn_ray.training.checkpoints import checkpoint_path, find_checkpoints, opt_path
from returnn_ray.training.lr_file import load_learning_rate_file

NUM_EPOCHS = 3
RUN_TIMEOUT_S = 300.0


def write_config(directory: Path) -> str:
    """tests/tasks/test_train.py's config, long enough to kill a worker mid-epoch: one seq per
    step, 800 steps, a few seconds per epoch on one CPU (epoch 1 also pays Ray Data's start-up)."""
    return base_config(
        directory,
        train={"class": "Task12AXDataset", "num_seqs": 800, "seq_ordering": "laplace:.10"},
        max_seqs=1,
        num_epochs=NUM_EPOCHS,
        log=str(directory / "train.log"),
        log_verbosity=4,
    )


def scores(directory: Path) -> dict[int, dict[str, float]]:
    epochs = load_learning_rate_file(str(directory / "learning_rates"))
    return {e: {k: v for k, v in d.error.items() if not k.startswith(":meta:")} for e, d in epochs.items()}


def log_text(directory: Path) -> str:
    try:
        return (directory / "train.log").read_text()
    except FileNotFoundError:
        return ""


class Background:
    """``main(argv)`` in a thread: its return code, or the exception it raised."""

    def __init__(self, argv: list[str]) -> None:
        self.rc: int | None = None
        self.exc: BaseException | None = None
        self.traceback = ""
        self.thread = threading.Thread(target=self._run, args=(argv,), name="returnn-ray-main", daemon=True)
        self.start = time.monotonic()
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        try:
            self.rc = main(argv)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.exc = exc
            self.traceback = traceback.format_exc()

    def join(self) -> None:
        self.thread.join(RUN_TIMEOUT_S)
        assert not self.thread.is_alive(), f"returnn-ray did not finish within {RUN_TIMEOUT_S} s"

    @property
    def outcome(self) -> str:
        if self.exc is not None:
            return f"main raised {type(self.exc).__module__}.{type(self.exc).__qualname__}: {self.exc}"
        return f"main returned {self.rc}"


def train_worker_pids() -> list[int]:
    """Pids of live Ray Train workers (process title ``ray::RayTrainWorker...``) below this process."""
    import ray  # noqa: F401 - puts Ray's bundled psutil on sys.path

    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::RayTrainWorker"):
            pids.append(proc.pid)
    return sorted(pids)


def kill_a_worker_mid_epoch_2(directory: Path, run: Background) -> int:
    """Waits until epoch 1 is checkpointed and epoch 2 has started, then ``kill -9``s one worker.

    Returns the pid killed; fails if the run got past epoch 2 before the kill (then the kill
    would not be mid-epoch and the test would prove nothing).
    """
    model = str(directory / "model")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while "start epoch 2 " not in log_text(directory):
        assert run.thread.is_alive(), f"the run ended before epoch 2 started: {run.outcome}\n{log_text(directory)}"
        assert time.monotonic() < deadline, f"epoch 2 did not start within {RUN_TIMEOUT_S} s\n{log_text(directory)}"
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2's steps
    pids = train_worker_pids()
    assert pids, "no ray::RayTrainWorker process found below this process"
    assert find_checkpoints(model) == [1], f"not mid-epoch 2: checkpoints {find_checkpoints(model)}"
    assert run.thread.is_alive(), run.outcome
    victim = pids[-1]
    os.kill(victim, signal.SIGKILL)
    return victim


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory) -> dict[int, Path]:
    """Reference runs of the same config without a failure, by number of workers (made on first use)."""
    made: dict[int, Path] = {}

    def get(num_workers: int) -> Path:
        if num_workers not in made:
            directory = tmp_path_factory.mktemp(f"uninterrupted_{num_workers}w")
            assert main([write_config(directory), "++ray_num_workers", str(num_workers)]) == 0
            assert scores(directory).keys() == set(range(1, NUM_EPOCHS + 1))
            made[num_workers] = directory
        return made[num_workers]

    return get


def assert_final_scores_equal(directory: Path, reference: Path) -> None:
    ours, theirs = scores(directory)[NUM_EPOCHS], scores(reference)[NUM_EPOCHS]
    assert ours.keys() == theirs.keys() == {"train_score", "train_error", "dev_score", "dev_error"}
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize("num_workers", [1, 2])
def test_killed_worker_is_restarted_and_the_run_equals_an_uninterrupted_one(ray_session, tmp_path, uninterrupted, num_workers):
    reference = uninterrupted(num_workers)
    args = [write_config(tmp_path), "++ray_num_workers", str(num_workers), "++ray_max_failures", "1"]
    run = Background(args)
    victim = kill_a_worker_mid_epoch_2(tmp_path, run)
    killed_at = time.monotonic() - run.start
    run.join()
    print(f"{num_workers} worker(s): killed pid {victim} at {killed_at:.1f} s, run took {time.monotonic() - run.start:.1f} s")

    assert run.exc is None and run.rc == 0, f"{run.outcome}\n{log_text(tmp_path)}"
    log = log_text(tmp_path)
    # the restarted group resumed from epoch 1's checkpoint (it did not start over, nor skip the kill)
    assert "Resuming from epoch 1 " in log, log
    assert log.count("start epoch 1 ") == 1 and log.count("start epoch 2 ") == 2, log
    # the learning_rate_file is a dict by epoch: each epoch exactly once, none missing
    assert scores(tmp_path).keys() == set(range(1, NUM_EPOCHS + 1))
    model = str(tmp_path / "model")
    assert os.path.exists(checkpoint_path(model, NUM_EPOCHS)) and os.path.exists(opt_path(model, NUM_EPOCHS))
    assert find_checkpoints(model) == list(range(1, NUM_EPOCHS + 1))
    assert victim not in train_worker_pids()
    assert_final_scores_equal(tmp_path, reference)


def test_killed_worker_without_max_failures_is_one_line_and_a_rerun_resumes(ray_session, tmp_path, uninterrupted, capsys):
    args = [write_config(tmp_path)]  # ray_max_failures 0: the default
    run = Background(args)
    victim = kill_a_worker_mid_epoch_2(tmp_path, run)
    run.join()
    err = capsys.readouterr().err
    print(f"killed pid {victim}; {run.outcome}\n{run.traceback}stderr:\n{err}")

    # nothing of epoch 2 was written, and the rerun the message asks for resumes from epoch 1
    model = str(tmp_path / "model")
    assert find_checkpoints(model) == [1]
    assert scores(tmp_path).keys() == {1}
    assert main(args) == 0
    assert "Resuming from epoch 1 " in log_text(tmp_path)
    assert scores(tmp_path).keys() == set(range(1, NUM_EPOCHS + 1))
    assert_final_scores_equal(tmp_path, uninterrupted(1))

    # A dead worker is not a bug of returnn-ray: one line, exit 2, no traceback.
    assert run.exc is None, run.outcome
    assert run.rc == 2, run.outcome
    errors = [line for line in err.splitlines() if line.startswith("returnn-ray: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    assert "worker" in line and "rank 0" in line, line  # names the dead worker
    assert "rerun" in line.lower(), line  # says what to do
