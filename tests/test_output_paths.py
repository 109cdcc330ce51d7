"""returnn-ray writes where the config says and nowhere else: not the working directory, not the
home directory (not even Ray's ``~/.ray``: the Ray it starts has a token of its own), not next to
the config.

Train (Ray Train local mode) then forward (an embedded local Ray and its actors), as real
processes with an empty working directory and home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def files_under(directory) -> set[str]:
    found = set()
    for root, dirs, names in os.walk(directory):
        found |= {os.path.relpath(os.path.join(root, n), directory) for n in names}
        found |= {os.path.relpath(os.path.join(root, d), directory) + "/" for d in dirs}
    return found


@pytest.mark.ray  # the forward starts an embedded local Ray
def test_train_and_forward_write_only_their_configured_outputs(tmp_path):
    cwd, home, configs, out = (tmp_path / n for n in ("cwd", "home", "configs", "out"))
    for d in (cwd, home, configs):
        d.mkdir()
    config = configs / "train.json"
    config.write_text(json.dumps({
        "task": "train",
        "train": {"class": "Task12AXDataset", "num_seqs": 20},
        "eval": {"class": "Task12AXDataset", "num_seqs": 6, "fixed_random_seed": 1},
        "num_inputs": 9, "num_outputs": 2,
        "network": {"output": {"class": "softmax", "loss": "ce"}},
        "batch_size": 400, "max_seqs": 4, "adam": True, "learning_rate": 0.01, "num_epochs": 1,
        "model": str(out / "m" / "model"),
        "learning_rate_file": str(out / "m" / "lr"),
        "log": str(out / "m" / "train.log"),
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(home)
    (out / "m").mkdir(parents=True)  # the log file's folder must exist, as with RETURNN (its model's need not)
    for args in ([], ["++task", "forward", "++output_file", str(out / "f" / "eval.hdf")]):
        proc = subprocess.run(
            [sys.executable, "-m", "returnn_ray", str(config), *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    assert files_under(cwd) == set()
    assert files_under(configs) == {"train.json"}
    assert files_under(out) == {  # each run's metrics file (returnn_ray.metrics) next to its main output
        "m/", "m/model.001.pt", "m/model.001.opt.pt", "m/lr", "m/train.log", "m/metrics.jsonl",
        "f/", "f/eval.hdf", "f/metrics.jsonl",
    }
    # Ray 2.60's ray.init would keep an auth token in ~/.ray; ours has one of its own
    assert files_under(home) == set()
