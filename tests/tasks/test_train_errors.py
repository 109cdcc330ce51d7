"""Bad training configs fail before Ray starts, with one line naming the culprit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_bad_input import BASE as TABLE_BASE  # tests/ is on sys.path (its conftest.py)

# the bad-input table's valid config, without its output paths (each test here sets `model`)
BASE = {k: v for k, v in TABLE_BASE.items() if k not in ("model", "learning_rate_file")}


def run_cli(tmp_path, **changes) -> subprocess.CompletedProcess:
    config = {**BASE, "model": str(tmp_path / "m" / "model"), **changes}
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "returnn_ray", str(path)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "changes, culprit",
    [
        ({"network": {"output": {"class": "softmaks", "loss": "ce"}}}, "softmaks"),
        ({"network": {"output": {"class": "softmax", "loss": "ce", "from": ["nope"]}}}, "nope"),
        ({"network": {"a": {"class": "linear", "n_out": 4, "from": ["b"]}, "b": {"class": "linear", "n_out": 4, "from": ["a"]}, "output": {"class": "softmax", "loss": "ce", "from": ["a"]}}}, "cycle"),
        ({"train": None}, "train"),
        ({"network": None}, "model"),
        ({"model": "/proc/returnn_ray_cannot_write/model"}, "/proc/returnn_ray_cannot_write"),
        ({"use_tensorboard": True, "tensorboard_opts": {"log_evry_n_train_steps": 10}}, "log_evry_n_train_steps"),
        ({"use_tensorboard": True, "tensorboard_opts": {"log_every_n_train_steps": 0}}, "log_every_n_train_steps"),
    ],
)
def test_bad_training_config_is_one_line_and_writes_nothing(tmp_path, changes, culprit):
    proc = run_cli(tmp_path, **changes)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert culprit in lines[0]
    assert not (tmp_path / "m").exists() or not os.listdir(tmp_path / "m")


def test_a_ray_address_nobody_listens_on_is_one_line_in_seconds_not_a_hang(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli(tmp_path, ray_address=f"127.0.0.1:{port}", ray_num_workers=1)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0], proc.stderr


def test_training_without_a_model_says_that_nothing_is_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory: nothing may appear there either
    proc = run_cli(tmp_path, model="")  # as RETURNN: it trains, but the user must know it keeps nothing
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "`model` is not set" in line]
    assert len(warnings) == 1 and "saves no checkpoint" in warnings[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


BUGGY_TRAIN_STEP = '''#!returnn.py
import torch

task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 20}
extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True}}
batch_size = 2000
optimizer = {"class": "adam"}
learning_rate = 0.01
num_epochs = 1


def get_model(**_kwargs):
    return torch.nn.Linear(9, 2)


def train_step(*, model, extern_data, **_kwargs):
    logits = model(extern_data["data"].raw_tensor)
    raise ValueError(f"my bug, dim {tuple(logits.shape)[-1]}")
'''


@pytest.mark.parametrize(
    "workers", [[], pytest.param(["++ray_num_workers", "2"], marks=pytest.mark.ray)], ids=["local", "2-ray-workers"]
)
def test_a_bug_in_train_step_is_one_line_with_the_configs_frame(tmp_path, workers):
    """Local mode, and 2 Ray Train workers with DDP: both ranks fail, the user sees one line, not pages of Ray."""
    path = tmp_path / "bug.config"
    path.write_text(BUGGY_TRAIN_STEP)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", str(path), "++model", str(tmp_path / "m" / "model"), *workers],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = BUGGY_TRAIN_STEP.splitlines().index('    raise ValueError(f"my bug, dim {tuple(logits.shape)[-1]}")') + 1
    assert f"{path}:{line} (in train_step)" in lines[0] and "ValueError: my bug, dim 2" in lines[0], lines[0]
