"""A diverging training stops at the end of the epoch, as RETURNN's ``stop_on_nonfinite_train_score``:
one line naming the epoch and the score, exit 2, and that epoch is not saved."""

from __future__ import annotations

import os
import subprocess
import sys

from returnn_ray.training.checkpoints import find_checkpoints

CONFIG = """#!returnn.py
import torch
import returnn_ray.frontend as rf

task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 20}
extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True}}
batch_size = 400
max_seqs = 4
num_epochs = 2
optimizer = {"class": "sgd"}
learning_rate = 0.01
model = %(model)r
learning_rate_file = %(lr)r

def get_model(**_kwargs):
    return torch.nn.Linear(9, 2)

def train_step(*, model, extern_data, **_kwargs):
    x = extern_data["data"].raw_tensor
    # a model whose loss overflows float32: what a diverging training looks like
    loss = (model(x) ** 2).sum() * 1e38
    rf.get_run_ctx().mark_as_loss(name="mse", loss=loss)
"""


def test_a_non_finite_training_score_stops_the_run_with_one_line(tmp_path):
    config = tmp_path / "diverge.config"
    config.write_text(CONFIG % {"model": str(tmp_path / "model"), "lr": str(tmp_path / "learning_rates")})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "returnn_ray", str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "epoch 1: non-finite training score" in lines[0] and "learning_rate" in lines[0], lines[0]
    assert find_checkpoints(str(tmp_path / "model")) == []
    assert not (tmp_path / "learning_rates").exists()
