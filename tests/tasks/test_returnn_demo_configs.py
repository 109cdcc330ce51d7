"""RETURNN's own torch demos (``demo-torch.config``, ``demo-rf.config``, from its sdist, unchanged)
train one epoch with returnn-ray: alone (Ray Train's local mode) and on two Ray workers (DDP)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from returnn_ray.cli import main
from returnn_ray.training.lr_file import load_learning_rate_file
from tests.returnn_demos import demo

pytestmark = pytest.mark.slow

DEMOS = ["demo-torch.config", "demo-rf.config"]


def _args(name: str, tmp_path) -> list[str]:
    return [str(demo(name)), "++num_epochs", "1", "++model", str(tmp_path / "model"),
            "++learning_rate_file", str(tmp_path / "lr"), "++log_verbosity", "3"]


def _check_scores(tmp_path) -> None:
    """The epoch's scores under RETURNN's torch engine keys, finite, and the model learned the task."""
    scores = load_learning_rate_file(str(tmp_path / "lr"))[1].error
    for key in ("train_loss_ce", "train_loss_fer", "dev_loss_ce", "dev_loss_fer"):
        assert math.isfinite(scores[key]), scores
    assert scores["dev_loss_fer"] < 0.2, scores  # Task12AX guessed: about 0.5


@pytest.mark.parametrize("name", DEMOS)
def test_returnn_demo_trains_unchanged_in_local_mode(tmp_path, name):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", *_args(name, tmp_path)], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in this process" in proc.stderr + proc.stdout
    _check_scores(tmp_path)


@pytest.mark.parametrize("name", DEMOS)
def test_returnn_demo_trains_unchanged_on_two_workers(ray_session, tmp_path, name):
    assert main([*_args(name, tmp_path), "++ray_num_workers", "2"]) in (0, None)
    _check_scores(tmp_path)
