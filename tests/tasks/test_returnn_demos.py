"""RETURNN's own network-dict demo configs (from its PyPI sdist), unchanged, trained for one epoch.

Only the run's length and where it writes are set on the command line (``++num_epochs 1``,
``++model``, ``++learning_rate_file``); the plain command runs Ray Train's local mode in its own
process (no Ray started).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from returnn_ray.config import load_config, load_settings
from returnn_ray.training.lr_file import load_learning_rate_file
from tests.returnn_demos import demo

pytest.importorskip("returnn")  # the demos import returnn.util.basic


def _train_one_epoch(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [str(demo(name)), "++num_epochs", "1", "++model", str(tmp_path / "model"),
            "++learning_rate_file", str(tmp_path / "lr"), *extra]
    return subprocess.run([sys.executable, "-m", "returnn_ray", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [
    ("demo-tf-native-lstm.12ax.config", ()),
    ("demo-tf-native-lstm2.12ax.config", ()),
    ("demo-tf-vanilla-lstm.12ax.config", ()),
    ("demo-tf-chunking-blstm.12ax.config", ()),
    # maximize_grad_norm's double backward through torch's CPU LSTM costs ~50 plain steps: 100 of the 1000 seqs
    ("demo-tf-maxgradnorm-lstm.12ax.config", ("++train", "{'class': 'Task12AXDataset', 'num_seqs': 100}")),
])
def test_network_dict_demo_trains_one_epoch(tmp_path, name, extra):
    proc = _train_one_epoch(tmp_path, name, *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    epochs = load_learning_rate_file(str(tmp_path / "lr"))
    scores = {k: v for k, v in epochs[1].error.items() if not k.startswith(":meta:")}
    assert any(k.startswith("dev_") for k in scores) and any(k.startswith("train_") for k in scores), scores
    assert all(v == v and v < 1e3 for v in scores.values()), scores  # finite



def test_maxgradnorm_demo_keeps_its_maximize_grad_norm():
    """The demo's factor reaches the training (RETURNN's TF updater term, returnn_ray.training.grad_norm)."""
    settings = load_settings(load_config([str(demo("demo-tf-maxgradnorm-lstm.12ax.config"))]))
    assert settings.training.maximize_grad_norm == 1e-6
