"""returnn_ray.model.torch_engine: a step of a torch-style or RF config on RETURNN's own frontend.

Fast checks of the glue; that the whole training equals RETURNN's torch engine is
tests/test_vs_returnn_engine.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import returnn.frontend
import returnn.tensor
import torch
from returnn.tensor import Dim, batch_dim

from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import UserError
from returnn_ray.model import torch_engine

SPECS = {"data": DataSpec(dim=3, sparse=False), "classes": DataSpec(dim=2, sparse=True)}


def _batch() -> Batch:
    torch.manual_seed(0)
    lens = torch.tensor([4, 2], dtype=torch.int32)
    return Batch(
        seq_idx=np.arange(2),
        data={"data": torch.randn(2, 4, 3), "classes": torch.randint(0, 2, (2, 4), dtype=torch.int32)},
        lens={"data": lens, "classes": lens.clone()},
    )


def test_old_import_paths_are_returnns_modules():
    import returnn_ray.frontend as rf
    import returnn_ray.tensor as rt

    assert rf is returnn.frontend and rt is returnn.tensor


def test_losses_are_read_off_returnns_run_ctx_by_hand():
    model = torch.nn.Linear(3, 2)

    def train_step(*, model, extern_data, **_kwargs):
        data = extern_data["data"]
        mask = torch.arange(4)[None, :] < data.dims[1].dyn_size_ext.raw_tensor[:, None]
        logits = model(data.raw_tensor)[mask]
        ce = torch.nn.functional.cross_entropy(logits, extern_data["classes"].raw_tensor[mask].long(), reduction="none")
        returnn.frontend.get_run_ctx().mark_as_loss(ce, "ce", scale=0.5, use_normalized_loss=True)
        returnn.frontend.get_run_ctx().mark_as_loss(logits.argmax(-1) != 0, "err", as_error=True)

    template = torch_engine.extern_data_template({"data": {"dim": 3}, "classes": {"dim": 2, "sparse": True}}, SPECS)
    batch = _batch()
    torch_engine.run_train_step(
        train_step, model, torch_engine.extern_data(template, batch), epoch=1, step=0, train_flag=True
    )
    losses = torch_engine.marked_losses()
    mask = torch.arange(4)[None, :] < batch.lens["data"][:, None]
    ce = torch.nn.functional.cross_entropy(model(batch.data["data"])[mask], batch.data["classes"][mask].long(), reduction="sum")
    assert losses["ce"].sum.item() == pytest.approx(ce.item(), rel=1e-6)
    assert int(losses["ce"].num_frames) == 6 and int(losses["err"].num_frames) == 6
    assert (losses["ce"].scale, losses["ce"].use_normalized_loss, losses["err"].as_error) == (0.5, True, True)


def test_a_step_that_marks_no_loss_is_a_user_error():
    template = torch_engine.extern_data_template(None, SPECS)
    torch_engine.run_train_step(
        lambda **_: None, torch.nn.Linear(3, 2), torch_engine.extern_data(template, _batch()),
        epoch=1, step=0, train_flag=True,
    )
    with pytest.raises(UserError, match="mark_as_loss"):
        torch_engine.marked_losses()


def test_extern_data_has_the_configs_own_dims_with_this_batchs_sizes():
    time_dim, in_dim = Dim(None, name="time"), Dim(3, name="in")
    opts = {"data": {"dims": (batch_dim, time_dim, in_dim), "dtype": "float32"}}
    template = torch_engine.extern_data_template(opts, SPECS)
    data = torch_engine.extern_data(template, _batch())["data"]
    assert data.dims[1] is time_dim and data.dims[2] is in_dim  # what RF model code refers to
    assert time_dim.dyn_size_ext.raw_tensor.tolist() == [4, 2]
    with pytest.raises(KeyError):  # a batch built without tags gets no made-up ones
        torch_engine.extern_data(template, _batch())["seq_tag"]


def test_the_no_batch_probe_has_a_seq_tag_as_every_batch():
    """A rank that saw no batch runs train_step on dummy_batch to learn the loss names: a step that
    reads extern_data["seq_tag"] must not fail there."""
    from returnn_ray.training.steps import dummy_batch

    template = torch_engine.extern_data_template({"data": {"dim": 3}, "classes": {"dim": 2, "sparse": True}}, SPECS)
    tags = torch_engine.extern_data(template, dummy_batch(SPECS, torch.device("cpu")))["seq_tag"]
    assert tags.raw_tensor.tolist() == ["returnn-ray-no-batch"]


def test_train_flag_reaches_the_run_ctx():
    seen = []
    template = torch_engine.extern_data_template(None, SPECS)
    for flag in (True, False):
        torch_engine.run_train_step(
            lambda **_: seen.append(returnn.frontend.get_run_ctx().train_flag), torch.nn.Linear(3, 2),
            torch_engine.extern_data(template, _batch()), epoch=1, step=0, train_flag=flag,
        )
    assert seen == [True, False]
