"""Multi-worker training's rules end to end on the shared local Ray (2 DDP workers, gloo):
a BatchNorm model's dev score is the saved checkpoint's, under returnn-ray's default rule and
under RETURNN's ``torch_distributed`` ``reduce_type: "param"``; and a padding step whose dummy batch
would have an infinite loss leaves the update finite and the train score one worker's."""

from __future__ import annotations

import ast
import math

import pytest
import torch

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


CTC_CONFIG = """#!returnn.py
import torch
import returnn.frontend as rf
task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 25, "seq_ordering": "laplace:.10"}
num_inputs, num_outputs = 9, 2
min_seq_length = 12
batch_size, max_seqs = 400, 4
optimizer = {"class": "sgd"}
learning_rate = 0.01
num_epochs = 1
model = %(model)r
learning_rate_file = %(lr)r

def get_model(**_kwargs):
    torch.manual_seed(1)
    return torch.nn.Linear(9, 3)  # labels 0, 1 and blank 2

def train_step(*, model, extern_data, **_kwargs):
    # CTC on the first T // 3 + 2 labels: feasible for T >= 12, infinite for a 1-frame seq
    x, y = extern_data["data"].raw_tensor, extern_data["classes"].raw_tensor.long()
    lens = extern_data["data"].dims[1].dyn_size_ext.raw_tensor.long()
    target_lens = lens // 3 + 2
    log_probs = model(x).log_softmax(-1).transpose(0, 1)
    targets = torch.nn.functional.pad(y, (0, 2))
    loss = torch.nn.functional.ctc_loss(log_probs, targets, lens, target_lens, blank=2, reduction="none")
    rf.get_run_ctx().mark_as_loss(name="ctc", loss=loss.sum(), custom_inv_norm_factor=rf.convert_to_tensor(target_lens.sum()))
"""


def test_a_padding_step_stays_out_of_the_update_and_the_scores(ray_session, tmp_path):
    # 2 workers, an odd batch count: rank 1's last step is padding. Its dummy batch (one frame,
    # :func:`dummy_batch`) has an infinite CTC loss, so running it (even times 0) would make the
    # update NaN; the padding step must run no data, and its frames stay out of the train score,
    # which equals one worker's accumulating the same batches (the last, unpaired one included).
    from returnn_ray.config import load_config, load_settings
    from returnn_ray.data import plan_epoch
    from returnn_ray.data.from_settings import batching_options, open_dataset

    from test_train import params

    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "ctc.config").write_text(CTC_CONFIG % {"model": str(d / "model"), "lr": str(d / "learning_rates")})
    settings = load_settings(load_config([str(two / "ctc.config")], []))
    train = open_dataset(settings, "train")
    plan = plan_epoch(train.seq_order_for_epoch(1), train.seq_lens, batching_options(settings, "train"), 2)
    assert [len(b) for b in plan.for_rank(1)][-1] == 0  # the precondition: a padding step
    dummy = torch.zeros(1, 1, 3).log_softmax(-1)
    assert torch.isinf(torch.nn.functional.ctc_loss(dummy, torch.zeros(1, 2, dtype=torch.long), [1], [2], blank=2))

    assert main([str(one / "ctc.config"), "++accum_grad_multiple_step", "2"]) == 0
    assert main([str(two / "ctc.config"), "++ray_num_workers", "2"]) == 0
    assert all(torch.isfinite(v).all() for v in params(two, 1).values())
    s1, s2 = scores(one)[1], scores(two)[1]
    assert set(s1) == set(s2) == {"train_loss_ctc"}
    assert s2["train_loss_ctc"] == pytest.approx(s1["train_loss_ctc"], rel=1e-5)
    assert math.isfinite(s2["train_loss_ctc"])
