"""RETURNN's own network-dict demo configs (from its PyPI sdist), unchanged, trained for one epoch;
demo-fwd.config trained and forwarded.

Only the run's length and where it writes are set on the command line (``++num_epochs 1``,
``++model``, ``++learning_rate_file``); the plain command runs Ray Train's local mode in its own
process (no Ray started).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from returnn.datasets import init_dataset

from returnn_ray.config import load_config, load_settings
from returnn_ray.training.lr_file import load_learning_rate_file
from tests.returnn_demos import demo

pytest.importorskip("returnn")  # the demos import returnn.util.basic


def _returnn_ray(config, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "returnn_ray", str(config), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _train_one_epoch(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    config = demo(name)
    if name in GETLOGIN_DEMOS:  # the only change: os.getlogin() needs a login terminal, which tests do not have
        text = config.read_text()
        assert text.count("os.getlogin()") == 1
        config = tmp_path / name
        config.write_text(text.replace("os.getlogin()", "__import__('getpass').getuser()"))
    return _returnn_ray(config, "++num_epochs", "1", "++model", str(tmp_path / "model"),
                        "++learning_rate_file", str(tmp_path / "lr"), *extra)


#: demos whose model path is built with os.getlogin(), which fails (under RETURNN as here) without a login terminal
GETLOGIN_DEMOS = {"demo-tf-contribrnn-lstm.12ax.config", "demo-tf-native-lstm-lowmem.12ax.config"}


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [
    ("demo-tf-native-lstm.12ax.config", ()),
    ("demo-tf-native-lstm2.12ax.config", ()),
    ("demo-tf-vanilla-lstm.12ax.config", ()),
    ("demo-tf-chunking-blstm.12ax.config", ()),
    ("demo-tf-contribrnn-lstm.12ax.config", ()),  # rec unit LSTMBlockFused
    ("demo-tf-native-lstm-lowmem.12ax.config", ()),  # rec unit NativeLstmLowMem, with dropout
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





@pytest.mark.slow
@pytest.mark.ray  # forward runs on a Ray of its own (started by the subprocess)
def test_demo_fwd_trains_then_forwards_the_softmax_of_its_eval_data(tmp_path):
    """demo-fwd.config as its header says: ``--task=train`` first, then the config as it is (task forward).
    The HDF file, read by RETURNN's HDFDataset, holds softmax(x W + b) of the trained checkpoint's weights
    for each seq of RETURNN's own DummyDataset ``eval`` (by seq tag)."""
    config, model = demo("demo-fwd.config"), str(tmp_path / "model")
    train = _returnn_ray(config, "--task=train", "++num_epochs", "1", "++model", model,
                         "++learning_rate_file", str(tmp_path / "lr"))
    assert train.returncode == 0, train.stderr[-2000:]
    fwd = _returnn_ray(config, "++model", model, "++output_file", str(tmp_path / "fwd.hdf"))
    assert fwd.returncode == 0, fwd.stderr[-2000:]
    assert "Traceback" not in fwd.stderr
    params = torch.load(f"{model}.001.pt", map_location="cpu", weights_only=False)["model"]
    weight, bias = (params[f"layers.output.linear.{n}"].double().numpy() for n in ("weight", "bias"))
    eval_data = init_dataset({"class": "DummyDataset", "num_seqs": 20, "input_dim": 2, "output_dim": 3, "seq_len": 5,
                              "fixed_random_seed": 42})
    written = init_dataset({"class": "HDFDataset", "files": [str(tmp_path / "fwd.hdf")]})
    expected, got = {}, {}
    for dataset, into in ((eval_data, expected), (written, got)):
        dataset.init_seq_order(epoch=1)
        dataset.load_seqs(0, dataset.num_seqs)
        for i in range(dataset.num_seqs):
            into[dataset.get_tag(i)] = dataset.get_data(i, "data")
    assert sorted(got) == sorted(expected) and len(got) == 20
    for tag, x in expected.items():
        logits = x.astype(np.float64) @ weight.T + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[tag], probs, rtol=1e-4, atol=1e-6, err_msg=tag)


def test_maxgradnorm_demo_keeps_its_maximize_grad_norm():
    """The demo's factor reaches the training (RETURNN's TF updater term, returnn_ray.training.grad_norm)."""
    settings = load_settings(load_config([str(demo("demo-tf-maxgradnorm-lstm.12ax.config"))]))
    assert settings.training.maximize_grad_norm == 1e-6
