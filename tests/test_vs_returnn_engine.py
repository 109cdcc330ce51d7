"""Differential: RETURNN's own torch engine and returnn-ray train the same config to the same scores.

One config file, run unchanged by ``python -m returnn`` and by ``python -m returnn_ray`` (one
worker, Ray Train's local mode): a torch-style model and an RF model (``rf.Module``), both with
their initial weights loaded from one file in ``get_model`` (so both sides start from the same
parameters), no dropout, Task12AX data with fixed seeds (the same seqs and batches on both sides).
Over 3 epochs the per-epoch train and dev scores agree to 1e-4 relative, and the learning-rate
files hold the same learning rates and the same score keys. Train and dev steps get the same
``extern_data["seq_tag"]``, step by step.
"""

from __future__ import annotations

import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

COMMON = '''#!returnn.py
import os
import torch
from returnn.tensor import Tensor, Dim, batch_dim, TensorDict
import returnn.frontend as rf
from returnn.torch.frontend.bridge import rf_module_to_pt_module

backend = "torch"
task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 200, "fixed_random_seed": 3}
dev = {"class": "Task12AXDataset", "num_seqs": 40, "fixed_random_seed": 1}
batching = "random"
batch_size = 2000
max_seqs = 10
optimizer = {"class": "adam"}
learning_rate = 0.01
learning_rate_control = "newbob"
learning_rate_decay = 0.7
newbob_relative_error_threshold = -0.5  # the rate changes every epoch: the files must follow
INIT_FILE = %(init)r


def get_model(*, epoch, step, **_kwargs):
    model = Model()
    pt = model if isinstance(model, torch.nn.Module) else rf_module_to_pt_module(model)
    pt.load_state_dict(torch.load(INIT_FILE))
    return model
'''

TORCH_MODEL = '''
extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True, "available_for_inference": False}}


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(9, 20, 5, padding=2)
        self.out = torch.nn.Linear(20, 2)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x.permute(0, 2, 1)).permute(0, 2, 1)))


def train_step(*, model, extern_data, **_kwargs):
    data = extern_data["data"]
    lens = data.dims[1].dyn_size_ext.raw_tensor
    logits = model(data.raw_tensor)
    packed = torch.nn.utils.rnn.pack_padded_sequence(logits, lens, batch_first=True, enforce_sorted=False).data
    targets = torch.nn.utils.rnn.pack_padded_sequence(
        extern_data["classes"].raw_tensor, lens, batch_first=True, enforce_sorted=False).data.long()
    ce = torch.nn.functional.cross_entropy(packed, targets, reduction="none")
    rf.get_run_ctx().mark_as_loss(name="ce", loss=ce)
    rf.get_run_ctx().mark_as_loss(name="ce_norm", loss=ce, scale=0.5, use_normalized_loss=True)
    rf.get_run_ctx().mark_as_loss(name="fer", loss=packed.argmax(-1) != targets, as_error=True)
    # 1 in training, 0 when RETURNN scores dev (its run ctx's train_flag is False there)
    flag = torch.full_like(ce, float(rf.get_run_ctx().train_flag))
    rf.get_run_ctx().mark_as_loss(name="train_flag", loss=flag, as_error=True)
'''

RF_MODEL = '''
time_dim = Dim(None, name="time")
in_dim = Dim(9, name="in")
out_dim = Dim(2, name="out")
extern_data = {
    "data": {"dims": (batch_dim, time_dim, in_dim), "dtype": "float32"},
    "classes": {"dims": (batch_dim, time_dim), "sparse_dim": out_dim, "dtype": "int32", "available_for_inference": False},
}


class Model(rf.Module):
    def __init__(self):
        super().__init__()
        self.hidden = Dim(20, name="hidden")
        self.conv = rf.Conv1d(in_dim, self.hidden, 5, padding="same")
        self.out = rf.Linear(self.hidden, out_dim)

    def __call__(self, x, *, spatial_dim):
        x, _ = self.conv(x, in_spatial_dim=spatial_dim)
        return self.out(rf.relu(x))


def train_step(*, model, extern_data, **_kwargs):
    logits = model(extern_data["data"], spatial_dim=time_dim)
    targets = extern_data["classes"]
    ce = rf.cross_entropy(estimated=logits, estimated_type="logits", target=targets, axis=out_dim)
    ce.mark_as_loss(name="ce")
    ce.mark_as_loss(name="ce_norm", custom_inv_norm_factor=time_dim.get_size_tensor(), scale=0.1, use_normalized_loss=True)
    (rf.reduce_argmax(logits, axis=out_dim) != targets).mark_as_loss(name="fer", as_error=True)
'''


def _write_config(tmp_path: Path, model: str) -> Path:
    init = tmp_path / "init.pt"
    config = tmp_path / "diff.config"
    config.write_text(COMMON % {"init": str(init)} + model)
    namespace = runpy.run_path(str(config))  # the config's own Model, for the one initial-weights file
    import returnn.frontend as rf
    from returnn.torch.frontend.bridge import rf_module_to_pt_module

    rf.select_backend_torch()
    torch.manual_seed(0)
    model_obj = namespace["Model"]()
    pt = model_obj if isinstance(model_obj, torch.nn.Module) else rf_module_to_pt_module(model_obj)
    torch.save(pt.state_dict(), init)
    return config


def _run(cmd: list[str], out: Path, *, epochs: int = 3) -> dict:
    out.mkdir()
    args = cmd + ["++num_epochs", str(epochs), "++model", str(out / "model"), "++learning_rate_file", str(out / "lr")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _read_lr_file(out / "lr")


def _read_lr_file(path: Path) -> dict:
    """RETURNN's learning-rate file, read as RETURNN's LearningRateControl reads it (its own eval)."""
    epochs = eval(path.read_text(), {"EpochData": lambda learningRate, error: (learningRate, error), "nan": math.nan})
    return {ep: (lr, {k: v for k, v in err.items() if not k.startswith(":meta:")}) for ep, (lr, err) in epochs.items()}


@pytest.mark.parametrize("model", [TORCH_MODEL, RF_MODEL], ids=["torch", "rf"])
def test_returnn_ray_trains_like_returnns_torch_engine(tmp_path, model):
    config = _write_config(tmp_path, model)
    theirs = _run([sys.executable, "-m", "returnn", str(config)], tmp_path / "returnn")
    ours = _run([sys.executable, "-m", "returnn_ray", str(config)], tmp_path / "returnn_ray")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3]
    for epoch in (1, 2, 3):
        (lr_ours, scores_ours), (lr_theirs, scores_theirs) = ours[epoch], theirs[epoch]
        assert lr_ours == pytest.approx(lr_theirs, rel=1e-12), epoch
        assert sorted(scores_ours) == sorted(scores_theirs), epoch
        for key, value in scores_theirs.items():
            assert scores_ours[key] == pytest.approx(value, rel=1e-4), (epoch, key, scores_ours, scores_theirs)
        if "dev_loss_train_flag" in scores_theirs:
            assert scores_theirs["train_loss_train_flag"] == 1.0 and scores_theirs["dev_loss_train_flag"] == 0.0
    assert len({lr for lr, _ in theirs.values()}) > 1  # newbob changed the rate: the files show it


def test_chunked_dev_scores_like_returnns_torch_engine(tmp_path):
    # RETURNN's torch engine chunks dev as it chunks train (Engine._create_data_loader): after one
    # epoch on the same chunks, the same model scores the same chunked dev batches the same
    config = _write_config(tmp_path, TORCH_MODEL)
    config.write_text(config.read_text() + '\nchunking = "20:10"\nmin_chunk_size = 5\n')
    theirs = _run([sys.executable, "-m", "returnn", str(config)], tmp_path / "returnn", epochs=1)
    ours = _run([sys.executable, "-m", "returnn_ray", str(config)], tmp_path / "returnn_ray", epochs=1)
    (_, scores_ours), (_, scores_theirs) = ours[1], theirs[1]
    assert sorted(scores_ours) == sorted(scores_theirs) and "dev_loss_ce" in scores_theirs
    for key, value in scores_theirs.items():
        assert scores_ours[key] == pytest.approx(value, rel=1e-4), (key, scores_ours, scores_theirs)


RECORD_TAGS = '''
TAGS_FILE = %(tags)r


_train_step_unrecorded = train_step


def train_step(*, model, extern_data, **kwargs):
    # one line per step: train or dev, then the tags the step got, in batch order
    tags = extern_data["seq_tag"].raw_tensor.tolist()
    with open(TAGS_FILE, "a") as f:
        f.write(repr((bool(rf.get_run_ctx().train_flag), [str(t) for t in tags])) + "\\n")
    _train_step_unrecorded(model=model, extern_data=extern_data, **kwargs)
'''


def test_train_and_dev_steps_get_the_seq_tags_returnns_torch_engine_gives(tmp_path):
    # RETURNN's engine gives every step extern_data["seq_tag"] (extern_data_template_from_config_opts
    # adds it, ReturnnDatasetIterDataPipe sets it per seq, chunking keeps it per chunk): train and
    # dev steps here get the same tags, step by step, chunked
    recorded = {}
    for name, cmd in (("returnn", "returnn"), ("returnn_ray", "returnn_ray")):
        config = _write_config(tmp_path, TORCH_MODEL)
        tags = tmp_path / f"{name}.tags"
        config.write_text(config.read_text() + '\nchunking = "20:10"\nmin_chunk_size = 5\n' + RECORD_TAGS % {"tags": str(tags)})
        _run([sys.executable, "-m", cmd, str(config)], tmp_path / name, epochs=1)
        recorded[name] = [eval(line) for line in tags.read_text().splitlines()]
    ours, theirs = recorded["returnn_ray"], recorded["returnn"]
    assert {train for train, _ in theirs} == {True, False}  # train and dev steps both recorded
    steps = [tags for _, tags in theirs]
    assert any(len(set(t)) < len(t) for t in steps)  # chunks of one seq in one batch: each has its seq's tag
    assert ours == theirs
