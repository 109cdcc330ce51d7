"""The typed job specs the driver sends workers, and the mid-epoch state's file format.

The mid-epoch file must stay what earlier versions wrote (a resumed run reads files an older
returnn-ray made); the job spec must survive Ray's cloudpickle into another process.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from ray import cloudpickle

from returnn_ray.config import load_config, load_settings
from returnn_ray.training import checkpoints
from returnn_ray.training.checkpoints import MidEpochState
from returnn_ray.training.job import DEFAULT_SEED, EvalJob, TrainJob, TrialReport, WorkerJob

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "returnn_ray"

OLD_PARTIAL_KEYS = [
    "model", "optimizer", "grad_scaler", "step", "seqs_done", "num_seqs", "order_digest", "scores", "world_size", "rng",
]
"""The keys of ``<model>.NNN.partial.pt`` as returnn-ray wrote them before the state was typed, in order."""


def _old_partial(epoch: int) -> dict:
    """A mid-epoch file's dict as the earlier code built it (a dict literal in training/worker.py)."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "grad_scaler": None,
        "step": 17,
        "seqs_done": 40,
        "num_seqs": 100,
        "order_digest": "ab" * 32,
        "scores": {"ce": (torch.tensor(3.5), torch.tensor(7.0))},
        "world_size": 2,
        "rng": [{"cpu": torch.get_rng_state()}, {"cpu": torch.get_rng_state()}],
        "epoch": epoch,
        "returnn_ray_version": "0.0.old",
    }


def test_a_mid_epoch_file_of_the_earlier_format_loads_as_its_typed_state(tmp_path):
    prefix = str(tmp_path / "net")
    old = _old_partial(3)
    torch.save(old, checkpoints.partial_path(prefix, 3))
    state = checkpoints.load_partial(prefix, 3)
    assert isinstance(state, MidEpochState)
    assert (state.step, state.seqs_done, state.num_seqs, state.world_size) == (17, 40, 100, 2)
    assert state.order_digest == old["order_digest"] and state.grad_scaler is None and len(state.rng) == 2
    assert torch.equal(state.model["weight"], old["model"]["weight"])
    assert state.scores["ce"][1].item() == 7.0


def test_a_saved_mid_epoch_state_keeps_the_earlier_files_keys_in_their_order(tmp_path):
    prefix = str(tmp_path / "net")
    old = _old_partial(2)
    state = MidEpochState.from_dict(old)
    checkpoints.save_partial(prefix, 2, state)
    saved = torch.load(checkpoints.partial_path(prefix, 2), weights_only=True)
    assert list(saved) == OLD_PARTIAL_KEYS + ["epoch", "returnn_ray_version"]
    assert saved["seqs_done"] == 40 and saved["order_digest"] == old["order_digest"] and saved["epoch"] == 2


def test_a_mid_epoch_file_without_the_later_keys_resumes_with_fresh_seeds_and_no_order_match():
    old = {k: v for k, v in _old_partial(1).items() if k not in ("order_digest", "world_size", "rng", "grad_scaler")}
    state = MidEpochState.from_dict(old)
    assert (state.order_digest, state.world_size, list(state.rng), state.grad_scaler) == ("", 0, [], None)


@pytest.fixture
def settings_and_config(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "train", "num_epochs": 2, "learning_rate": 0.25}))
    config = load_config([str(path)])
    return load_settings(config), config


def test_the_job_survives_cloudpickle_into_another_process(settings_and_config, tmp_path):
    settings, config = settings_and_config
    job = WorkerJob.from_settings(
        settings, config, TrainJob(trial=TrialReport("dev_score", to_tune=True)), use_gpu=False, local=True, log_channel=None
    )
    blob = tmp_path / "job.pkl"
    blob.write_bytes(cloudpickle.dumps(job))
    code = (
        "import sys; from ray import cloudpickle; from returnn_ray.config.workers import use_worker_config\n"
        "job = cloudpickle.loads(open(sys.argv[1], 'rb').read()); use_worker_config(job.worker_env)\n"
        "s = job.settings(); print(s.run.num_epochs, s.training.learning_rate, job.seed, job.train.trial.metric, job.train.trial.to_tune)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["2", "0.25", str(DEFAULT_SEED), "dev_score", "True"]


def test_the_job_is_frozen_and_a_loop_refuses_the_other_tasks_job(settings_and_config):
    settings, config = settings_and_config
    job = WorkerJob.from_settings(settings, config, EvalJob(("dev",)), use_gpu=False, local=True, log_channel=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 1  # type: ignore[misc]
    assert job.eval.datasets == ("dev",)
    with pytest.raises(TypeError, match="a training loop got a EvalJob"):
        job.train


@pytest.mark.parametrize("package", ["training", "sweep"])
def test_training_and_sweep_import_no_task_module(package):
    """The one-way rule (docs/architecture.md): tasks/ import training/ and sweep/, never the reverse."""
    upward = []
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])]
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.startswith("returnn_ray.tasks") for n in names):
                upward.append(f"{path.name}:{node.lineno}")
    assert not upward
