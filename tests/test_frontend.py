"""returnn_ray.frontend: the run context of torch-style configs, against hand computations and RETURNN's own."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import returnn_ray.frontend as rf
from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import UserError
from returnn_ray.model.losses import LossValue
from returnn_ray.tensor import Dim, Tensor, TensorDict, batch_dim, extern_data_from_batch

# -- RETURNN's demos/demo-torch.config: its model and step functions, only the imports changed --------

num_inputs = 9
num_outputs = 2
model_outputs = {"output": {"dim": num_outputs}}


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(num_inputs, 50, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(50, 100, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(100, num_outputs, 5, padding=2),
        )

    def forward(self, x):  # (B, T, F)
        x = x.permute(0, 2, 1)  # (B, F, T)
        x = self.layers(x)
        x = x.permute(0, 2, 1)  # (B, T, F)
        return x  # logits


def forward_step(*, model: Model, extern_data: TensorDict):
    data = extern_data["data"]
    out = model(data.raw_tensor)
    rf.get_run_ctx().expected_outputs["output"].dims[1].dyn_size_ext.raw_tensor = data.dims[1].dyn_size_ext.raw_tensor
    rf.get_run_ctx().mark_as_default_output(tensor=out)


def train_step(*, model: Model, extern_data: TensorDict, **_kwargs):
    data = extern_data["data"]
    logits = model(data.raw_tensor)
    logits_packed = torch.nn.utils.rnn.pack_padded_sequence(
        logits, data.dims[1].dyn_size_ext.raw_tensor, batch_first=True, enforce_sorted=False
    )
    targets = extern_data["classes"]
    targets_packed = torch.nn.utils.rnn.pack_padded_sequence(
        targets.raw_tensor, data.dims[1].dyn_size_ext.raw_tensor, batch_first=True, enforce_sorted=False
    )
    loss = nn.CrossEntropyLoss(reduction="none")(logits_packed.data, targets_packed.data.long())
    rf.get_run_ctx().mark_as_loss(name="ce", loss=loss)
    frame_error = torch.argmax(logits_packed.data, dim=-1).not_equal(targets_packed.data)
    rf.get_run_ctx().mark_as_loss(name="fer", loss=frame_error, as_error=True)


# ------------------------------------------------------------------------------------------------

SPECS = {"data": DataSpec(dim=num_inputs), "classes": DataSpec(dim=num_outputs, sparse=True, dtype="int32")}


def _demo_batch() -> Batch:
    gen = torch.Generator().manual_seed(0)
    lens = torch.tensor([7, 3, 5], dtype=torch.int32)
    data = torch.randn(3, 7, num_inputs, generator=gen)
    classes = torch.randint(0, num_outputs, (3, 7), generator=gen, dtype=torch.int32)
    for b, n in enumerate(lens.tolist()):  # padding as pad_batch leaves it
        data[b, n:] = 0
        classes[b, n:] = 0
    return Batch(seq_idx=np.arange(3), data={"data": data, "classes": classes}, lens={"data": lens, "classes": lens})


def test_demo_train_step_losses_match_hand_computation():
    torch.manual_seed(1)
    model = Model()
    batch = _demo_batch()
    with rf.run_ctx_scope("train_step", epoch=1, step=0) as ctx:
        train_step(model=model, extern_data=extern_data_from_batch(batch, SPECS))
        values = ctx.loss_values()
        objective = ctx.total_loss()
    assert list(values) == ["ce", "fer"]
    assert all(isinstance(v, LossValue) for v in values.values())

    logits = model(batch.data["data"])
    mask = torch.arange(7)[None, :] < batch.lens["data"][:, None]
    ce = nn.functional.cross_entropy(logits[mask], batch.data["classes"][mask].long(), reduction="sum")
    fer = (logits[mask].argmax(-1) != batch.data["classes"][mask]).sum()
    ce_v, fer_v = values["ce"], values["fer"]
    assert ce_v.sum.item() == pytest.approx(ce.item(), rel=1e-5)
    assert ce_v.num_frames.item() == 15 and fer_v.num_frames.item() == 15
    assert (ce_v.scale, ce_v.as_error, fer_v.as_error) == (1.0, False, True)
    assert fer_v.sum.item() == fer.item() and fer_v.sum.dtype == torch.float32
    # the objective is the ce sum only; fer is reported, not optimised
    assert objective.item() == pytest.approx(ce.item(), rel=1e-5)
    objective.backward()
    assert model.layers[0].weight.grad is not None


def test_demo_forward_step_output_with_lengths():
    torch.manual_seed(1)
    model = Model()
    batch = _demo_batch()
    extern_data = extern_data_from_batch(batch, {"data": SPECS["data"]})
    with rf.run_ctx_scope("forward_step", epoch=3, expected_outputs=model_outputs) as ctx:
        with torch.no_grad():
            forward_step(model=model, extern_data=extern_data)
        ctx.check_outputs_complete()
    out = ctx.outputs["output"]
    assert torch.equal(out.raw_tensor, model(batch.data["data"]).detach())
    assert out.dims[0] is batch_dim and out.dims[2].dimension == num_outputs
    assert out.get_sequence_lengths().tolist() == [7, 3, 5]


def test_no_loss_marked_is_a_user_error():
    with rf.run_ctx_scope("train_step") as ctx:
        with pytest.raises(
            UserError, match=r"^train_step marked no loss \(call rf.get_run_ctx\(\).mark_as_loss\(...\)\)$"
        ):
            ctx.loss_values()


def test_mark_as_loss_semantics_by_hand():
    lens = torch.tensor([3, 1], dtype=torch.int32)
    time = Dim(None, "time")
    time.dyn_size_ext.raw_tensor = lens
    x = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    x_nan = x.clone()
    x_nan[1, 1:] = float("nan")  # padding may hold anything
    with rf.run_ctx_scope("train_step") as ctx:
        ctx.mark_as_loss(x, "raw")
        ctx.mark_as_loss(Tensor("l", dims=(batch_dim, time, Dim(2, "f")), raw_tensor=x_nan), "masked")
        ctx.mark_as_loss(x[..., 0].T, "tb", dims=(time, batch_dim), scale=2.0, use_normalized_loss=True)
        ctx.mark_as_loss(torch.tensor(3.0), "scalar")
        ctx.mark_as_loss(x, "custom", custom_inv_norm_factor=lens)
        ctx.mark_as_loss(x, "off", scale=0.0)
        values = ctx.loss_values()
    got = {n: (v.sum.item(), v.num_frames.item()) for n, v in values.items()}
    assert got == {
        "raw": (66.0, 12),
        "masked": (28.0, 8),  # seq 0: 0..5, seq 1: 6+7; 4 frames x 2 features
        "tb": (12.0, 4),  # 0+2+4 + 6
        "scalar": (3.0, 1),
        "custom": (66.0, 4),
        "off": (66.0, 12),
    }
    # objective: raw 66 + masked 28 + tb 2*12/4 + scalar 3 + custom 66; "off" has scale 0
    assert rf.total_objective(values.values()).item() == pytest.approx(66 + 28 + 6 + 3 + 66)


def test_normalized_loss_gradient():
    w = torch.ones(4, requires_grad=True)
    with rf.run_ctx_scope("train_step") as ctx:
        ctx.mark_as_loss(w * 2.0, "l", scale=3.0, use_normalized_loss=True)
        ctx.total_loss().backward()
    assert w.grad.tolist() == [1.5] * 4  # 3 * 2 / 4


def test_mark_as_loss_matches_returnn():
    """Differential: sum, norm factor and gradient term as RETURNN's run ctx computes them (torch backend)."""
    returnn_rf = pytest.importorskip("returnn.frontend")
    returnn_tensor = pytest.importorskip("returnn.tensor")
    returnn_rf.select_backend_torch()
    r_batch = returnn_tensor.batch_dim
    old_batch_size = r_batch.dyn_size_ext
    lens = torch.tensor([3, 1], dtype=torch.int32)
    x = torch.randn(2, 3, 2)
    int_loss = torch.tensor([[1, 0, 1], [1, 1, 0]])
    cases = [  # (name, raw loss, kwargs, time-dims layout or None for a raw tensor)
        ("raw", x, {}, None),
        ("bool", x > 0, {"as_error": True}, None),
        ("scalar", x.sum(), {"use_normalized_loss": True}, None),
        ("int_custom", int_loss, {"custom_inv_norm_factor": "lens", "use_normalized_loss": True, "scale": 0.5}, None),
        ("btf", x, {"scale": 2.0}, "btf"),
        ("tb_norm", x[..., 0].T.contiguous(), {"use_normalized_loss": True}, "tb"),
    ]
    try:
        r_batch.dyn_size_ext = returnn_tensor.Tensor(
            "b", dims=[], dtype="int32", raw_tensor=torch.tensor(2, dtype=torch.int32)
        )
        r_time = returnn_tensor.Dim(
            returnn_tensor.Tensor("t", dims=[r_batch], dtype="int32", raw_tensor=lens), name="time"
        )
        r_feat = returnn_tensor.Dim(2, name="feat")
        o_time = Dim(None, "time")
        o_time.dyn_size_ext.raw_tensor = lens
        o_feat = Dim(2, "feat")
        returnn_rf.init_train_step_run_ctx(train_flag=True, step=0, epoch=1)
        with rf.run_ctx_scope("train_step") as ctx:
            for name, raw, kwargs, layout in cases:
                r_kwargs, o_kwargs = dict(kwargs), dict(kwargs)
                if kwargs.get("custom_inv_norm_factor") == "lens":
                    r_kwargs["custom_inv_norm_factor"] = returnn_tensor.Tensor(
                        "n", dims=[r_batch], dtype="int32", raw_tensor=lens
                    )
                    o_kwargs["custom_inv_norm_factor"] = lens
                if layout is None:
                    r_loss, o_loss = raw, raw
                else:
                    r_dims = [r_batch, r_time, r_feat] if layout == "btf" else [r_time, r_batch]
                    o_dims = (batch_dim, o_time, o_feat) if layout == "btf" else (o_time, batch_dim)
                    r_loss = returnn_tensor.Tensor(name, dims=r_dims, dtype="float32", raw_tensor=raw)
                    o_loss = Tensor(name, dims=o_dims, raw_tensor=raw)
                returnn_rf.get_run_ctx().mark_as_loss(r_loss, name, **r_kwargs)
                ctx.mark_as_loss(o_loss, name, **o_kwargs)
            ours = ctx.loss_values()
        theirs = returnn_rf.get_run_ctx().losses
        for name, *_ in cases:
            r, o = theirs[name], ours[name]
            inv_norm = r.get_inv_norm_factor()
            inv_norm = float(getattr(inv_norm, "raw_tensor", inv_norm))
            assert o.sum.item() == pytest.approx(float(r.get_summed_loss().raw_tensor), rel=1e-6), name
            assert o.num_frames.item() == inv_norm, name
            if not r.as_error:
                assert o.objective().item() == pytest.approx(
                    float(r.get_scaled_reduced_loss().raw_tensor), rel=1e-6
                ), name
        total = returnn_rf.get_run_ctx().total_loss()
        assert rf.total_objective(ours.values()).item() == pytest.approx(float(total.raw_tensor), rel=1e-6)
    finally:
        r_batch.dyn_size_ext = old_batch_size
        pytest.importorskip("returnn.frontend.run_ctx").reset_run_ctx()


def test_stage_and_name_errors():
    with rf.run_ctx_scope("forward_step") as ctx:
        with pytest.raises(UserError, match="only allowed in train_step, not in forward_step"):
            ctx.mark_as_loss(torch.ones(2), "ce")
    with rf.run_ctx_scope("train_step") as ctx:
        ctx.mark_as_loss(torch.ones(2), "ce")
        with pytest.raises(UserError, match="'ce' was already marked"):
            ctx.mark_as_loss(torch.ones(2), "ce")
        with pytest.raises(UserError, match="only allowed in forward_step"):
            ctx.mark_as_default_output(torch.ones(2))
        with pytest.raises(UserError, match="loss must be a torch.Tensor"):
            ctx.mark_as_loss(1.0, "x")


def test_mark_as_output_checks_against_model_outputs():
    out = torch.zeros(2, 5, 2)
    with rf.run_ctx_scope("forward_step", expected_outputs=model_outputs) as ctx:
        with pytest.raises(UserError, match=r"model_outputs has no 'logits'; it defines \['output'\]"):
            ctx.mark_as_output(out, "logits")
        with pytest.raises(
            UserError,
            match=r"seq lengths of dim .* are unknown; assign rf.get_run_ctx\(\).expected_outputs\['output'\].dims\[1\]",
        ):
            ctx.mark_as_default_output(out)
        ctx.expected_outputs["output"].dims[1].dyn_size_ext.raw_tensor = torch.tensor([5, 2])
        with pytest.raises(UserError, match="axis 2 has size 3"):
            ctx.mark_as_default_output(torch.zeros(2, 5, 3))
        with pytest.raises(UserError, match="does not match model_outputs' 'float32'"):
            ctx.mark_as_default_output(out.long())
        ctx.mark_as_default_output(out.bfloat16())  # AMP output: only the dtype kind is checked
    with rf.run_ctx_scope("forward_step", expected_outputs=model_outputs) as ctx:
        with pytest.raises(UserError, match=r"did not mark the model_outputs \['output'\]"):
            ctx.check_outputs_complete()


def test_mark_as_output_without_model_outputs():
    with rf.run_ctx_scope("forward_step") as ctx:
        ctx.mark_as_output(torch.zeros(2, 5, 3), "a")
        time = Dim(None, "time")
        time.dyn_size_ext.raw_tensor = torch.tensor([5, 4])
        ctx.mark_as_output(
            Tensor("b", dims=(time, batch_dim), raw_tensor=torch.zeros(5, 2)), "b", dims=(batch_dim, time)
        )
    a, b = ctx.outputs["a"], ctx.outputs["b"]
    assert a.dims[0] is batch_dim and [d.dimension for d in a.dims[1:]] == [5, 3]  # static: no lengths, as RETURNN
    assert b.raw_tensor.shape == (2, 5) and b.dims == (batch_dim, time)


def test_run_ctx_is_per_thread_and_scoped():
    assert rf.get_run_ctx().stage == "init"
    seen = []
    with rf.run_ctx_scope("train_step", epoch=2, step=17) as ctx:
        worker = threading.Thread(target=lambda: seen.append(rf.get_run_ctx().stage))
        worker.start()
        worker.join()
        assert rf.get_run_ctx() is ctx and (ctx.epoch, ctx.step, ctx.train_flag) == (2, 17, True)
        with rf.run_ctx_scope("train_step", train_flag=False) as inner:  # scoring dev with train_step
            assert rf.get_run_ctx() is inner and not inner.train_flag
        assert rf.get_run_ctx() is ctx
        with ctx.train_flag_ctx(False):
            assert not rf.get_run_ctx().train_flag
        assert ctx.train_flag
    assert seen == ["init"]
    assert rf.get_run_ctx().stage == "init"


def test_returnn_style_init_and_reset():
    rf.init_train_step_run_ctx(train_flag=False, step=3, epoch=2)
    try:
        ctx = rf.get_run_ctx()
        assert (ctx.stage, ctx.train_flag, ctx.step, ctx.epoch) == ("train_step", False, 3, 2)
    finally:
        rf.reset_run_ctx()
    assert rf.get_run_ctx().stage == "init"


def test_unsupported_frontend_names_say_so():
    assert not hasattr(rf, "Linear")
    with pytest.raises(UserError, match="returnn_ray.frontend has no 'Linear'.*plain PyTorch"):
        rf.Linear  # noqa: B018
    rf.select_backend_torch()
    assert rf.get_default_float_dtype() == "float32"
