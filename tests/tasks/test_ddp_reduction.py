"""Multi-worker training's rules end to end on the shared local Ray (2 DDP workers, gloo):
a BatchNorm model's dev score is the saved checkpoint's, under returnn-ray's default rule and
under RETURNN's ``torch_distributed`` ``reduce_type: "param"``."""

from __future__ import annotations

import ast

import pytest

from returnn_ray.cli import main
from test_train import scores  # tests/tasks is on sys.path (rootdir import)

CONFIG = """#!returnn.py
import torch
import returnn.frontend as rf
task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 30, "seq_ordering": "laplace:.10"}
dev = {"class": "Task12AXDataset", "num_seqs": 10, "fixed_random_seed": 1}
num_inputs, num_outputs = 9, 2
batch_size, max_seqs = 400, 4
optimizer = {"class": "sgd"}
learning_rate = 0.05
num_epochs = 1
model = %(model)r
learning_rate_file = %(lr)r
torch_distributed = %(dist)r

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(9, momentum=0.5)
        self.out = torch.nn.Linear(9, 2)

    def forward(self, x):  # [B, T, 9]
        return self.out(self.norm(x.transpose(1, 2)).transpose(1, 2))

def get_model(**_kwargs):
    return Net()

def train_step(*, model, extern_data, **_kwargs):
    x, y = extern_data["data"].raw_tensor, extern_data["classes"].raw_tensor
    loss = torch.nn.functional.cross_entropy(model(x).transpose(1, 2), y.long(), reduction="none")
    mask = torch.arange(x.shape[1])[None, :] < extern_data["data"].dims[1].dyn_size_ext.raw_tensor[:, None]
    rf.get_run_ctx().mark_as_loss(name="ce", loss=(loss * mask).sum(), custom_inv_norm_factor=rf.convert_to_tensor(mask.sum()))
"""


@pytest.mark.parametrize("dist", [None, {"reduce_type": "param", "param_sync_step": 2}], ids=["default", "param"])
def test_batchnorm_dev_score_is_the_saved_checkpoints(ray_session, tmp_path, dist):
    config = tmp_path / "bn.config"
    config.write_text(CONFIG % {"model": str(tmp_path / "model"), "lr": str(tmp_path / "learning_rates"), "dist": dist})
    assert main([str(config), "++ray_num_workers", "2"]) == 0
    out = tmp_path / "eval_scores.txt"
    assert main([str(config), "++task", "eval", "++eval_output_file", str(out)]) == 0
    alone = ast.literal_eval(out.read_text())["dev"]
    trained = scores(tmp_path)[1]
    assert alone and set(alone) <= set(trained)
    for key, value in alone.items():
        assert trained[key] == pytest.approx(value, rel=1e-5), key
