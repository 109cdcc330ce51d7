"""Network dicts built as PyTorch modules: shapes, parameter counts, lengths, losses, config errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from returnn_ray.data.base import DataSpec
from returnn_ray.data.datasets import extern_data_from_config
from returnn_ray.errors import ConfigError, DataError
from returnn_ray.model import LossValue, Network, build_network

SPECS = {
    "data": DataSpec(40),
    "classes": DataSpec(10, sparse=True, dtype="int32"),
    "feats": DataSpec(6),
}
SOFTMAX_CE = {"class": "softmax", "loss": "ce"}

# The 3-layer BLSTM from RETURNN's basic-usage text, as written there.
BLSTM = {
"lstm0_fw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": 1 },
"lstm0_bw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": -1 },

"lstm1_fw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": 1, "from" : ["lstm0_fw", "lstm0_bw"] },
"lstm1_bw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": -1, "from" : ["lstm0_fw", "lstm0_bw"] },

"lstm2_fw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": 1, "from" : ["lstm1_fw", "lstm1_bw"] },
"lstm2_bw" : { "class": "rec", "unit": "lstm", "n_out" : 500, "dropout": 0.1, "L2": 0.01, "direction": -1, "from" : ["lstm1_fw", "lstm1_bw"] },

"output" :   { "class" : "softmax", "loss" : "ce", "from" : ["lstm2_fw", "lstm2_bw"] }
}  # fmt: skip


def _batch(lens=(7, 4, 2), seed=0, specs=SPECS):
    """Random padded data for every key of ``specs``, with garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    lens_t = torch.tensor(lens)
    t = int(lens_t.max())
    data, seq_lens = {}, {}
    for key, spec in specs.items():
        if spec.sparse:
            x = torch.randint(0, spec.dim, (len(lens), t), generator=g, dtype=torch.int32)
        else:
            x = torch.randn(len(lens), t, spec.dim, generator=g)
        data[key], seq_lens[key] = x, lens_t.clone()
    return data, seq_lens


def _num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _lstm_params(n_in, n):
    # torch's LSTM: W_ih, W_hh and two bias vectors (RETURNN's NativeLstm has one: 4*n fewer).
    return 4 * (n_in * n + n * n + 2 * n)


def test_blstm_example_builds_and_trains_one_step():
    net = build_network(BLSTM, SPECS)
    assert net.order[-1] == "output" and net.output_layer_name == "output"
    assert net.input_keys == ["data"] and net.target_keys == ["classes"]
    assert "layers.lstm0_fw.lstm.weight_ih_l0" in dict(net.named_parameters())
    want = 2 * _lstm_params(40, 500) + 4 * _lstm_params(1000, 500) + (1000 * 10 + 10)
    assert _num_params(net) == want == 14_194_010
    assert net.out_spec("output").dim == 10

    data, lens = _batch()
    net.train()
    outputs = net(data, lens)
    value, out_lens = outputs["output"]
    assert value.shape == (3, 7, 10) and out_lens.tolist() == [7, 4, 2]
    assert outputs["lstm1_bw"].value.shape == (3, 7, 500)
    losses = net.losses(outputs, data, lens)
    assert sorted(losses) == ["cost:output", "error:output"]
    assert all(isinstance(v, LossValue) for v in losses.values())
    assert losses["cost:output"].num_frames.item() == 13 and losses["error:output"].as_error
    objective = sum(v.scale * v.sum for v in losses.values() if not v.as_error) + net.l2_loss()
    objective.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_l2_is_scale_times_sum_of_squares_of_the_layers_params():
    net = build_network({**BLSTM, "output": {**BLSTM["output"], "L2": 0.5}}, SPECS)
    rec_sq = sum(p.pow(2).sum() for n, p in net.named_parameters() if n.startswith("layers.lstm"))
    out_sq = sum(p.pow(2).sum() for n, p in net.named_parameters() if n.startswith("layers.output"))
    assert net.l2_loss().item() == pytest.approx((0.01 * rec_sq + 0.5 * out_sq).item(), rel=1e-5)
    p = net.layers["lstm0_fw"].lstm.weight_hh_l0
    net.l2_loss().backward()
    assert torch.allclose(p.grad, 2 * 0.01 * p.detach())


@pytest.mark.parametrize(
    ("layer", "n_params", "out_dim"),
    [
        ({"class": "linear", "n_out": 7, "activation": "tanh"}, 40 * 7 + 7, 7),
        ({"class": "hidden", "n_out": 7, "with_bias": False}, 40 * 7, 7),
        ({"class": "forward", "n_out": 7, "activation": "relu", "from": ["data", "data:feats"]}, 46 * 7 + 7, 7),
        ({"class": "rec", "unit": "LSTM", "n_out": 8}, _lstm_params(40, 8), 8),
        ({"class": "rec", "unit": "nativelstm2", "n_out": 8, "direction": -1}, _lstm_params(40, 8), 8),
        ({"class": "rec", "unit": "GRU", "n_out": 8}, 3 * (40 * 8 + 8 * 8 + 2 * 8), 8),
        ({"class": "rec", "unit": "rnn", "n_out": 8}, 40 * 8 + 8 * 8 + 2 * 8, 8),
        ({"class": "conv", "n_out": 6, "filter_size": (3,), "padding": "same"}, 40 * 6 * 3 + 6, 6),
        ({"class": "copy", "from": ["data", "data:feats"]}, 0, 46),
        ({"class": "dropout", "dropout": 0.3}, 0, 40),
        ({"class": "activation", "activation": "sigmoid", "n_out": 40}, 0, 40),
        ({"class": "combine", "kind": "add", "from": ["data", "data"]}, 0, 40),
    ],
)
def test_layer_shapes_and_parameter_counts(layer, n_params, out_dim):
    net = build_network({"output": layer}, SPECS)
    assert _num_params(net) == n_params
    data, lens = _batch()
    value, out_lens = net(data, lens)["output"]
    assert value.shape == (3, 7, out_dim) and out_lens.tolist() == [7, 4, 2]


def test_sparse_input_to_linear_is_an_embedding():
    net = build_network({"output": {"class": "linear", "n_out": 5, "from": "data:classes"}}, SPECS)
    assert _num_params(net) == 10 * 5 + 5
    data, lens = _batch()
    value = net(data, lens)["output"].value
    lin = net.layers["output"].linear
    want = F.one_hot(data["classes"].long(), 10).float() @ lin.weight.t() + lin.bias
    assert torch.allclose(value, want, atol=1e-6)


def test_softmax_takes_n_out_from_the_target_and_ctc_adds_a_blank():
    net = build_network({"output": {"class": "softmax", "loss": "ce"}}, SPECS)
    assert net.out_spec().dim == 10 and _num_params(net) == 410
    net = build_network({"output": {"class": "softmax", "loss": "ctc"}}, SPECS)
    assert net.out_spec().dim == 11


@pytest.mark.parametrize(
    "layer",
    [
        {"class": "rec", "unit": "lstm", "n_out": 5, "direction": -1},
        {"class": "rec", "unit": "gru", "n_out": 5, "direction": 1},
        {"class": "conv", "n_out": 5, "filter_size": (3,), "padding": "same"},
        {"class": "conv", "n_out": 5, "filter_size": (4,), "padding": "same", "strides": 2},
        {"class": "conv", "n_out": 5, "filter_size": (3,), "padding": "valid", "strides": 2, "dilation_rate": 2},
    ],
)
def test_padding_never_leaks_into_real_frames(layer):
    # A padded seq gives the same outputs on its real frames as the same seq alone.
    net = build_network({"output": layer}, SPECS).eval()
    data, lens = _batch(lens=(9, 5))
    data["data"][1, 5:] = 5 * torch.randn(4, 40, generator=torch.Generator().manual_seed(5))  # loud padding
    both = net(data, lens)["output"]
    alone = net({"data": data["data"][1:, :5]}, {"data": torch.tensor([5])})["output"]
    n = int(alone.lens[0])
    assert both.lens[1].item() == n
    assert torch.allclose(both.value[1, :n], alone.value[0, :n], atol=1e-5)
    assert (both.value[1, n:] == 0).all()


def test_backward_rec_reads_each_seq_from_its_own_end():
    layer = {"class": "rec", "unit": "lstm", "n_out": 4, "direction": -1}
    net = build_network({"output": layer}, SPECS).eval()
    data, lens = _batch(lens=(6, 3))
    out = net(data, lens)["output"].value
    # Running the torch LSTM forward over the reversed real frames gives the reversed outputs.
    rev, _ = net.layers["output"].lstm(data["data"][1:, :3].flip(1))
    assert torch.allclose(out[1, :3], rev[0].flip(0), atol=1e-6)


def test_conv_output_lengths():
    specs = {"data": DataSpec(3)}
    data, lens = _batch(lens=(10, 9, 4, 2), specs=specs)
    cases = [
        ({"padding": "same", "filter_size": (3,)}, [10, 9, 4, 2]),
        ({"padding": "same", "filter_size": (3,), "strides": 2}, [5, 5, 2, 1]),
        ({"padding": "valid", "filter_size": (3,)}, [8, 7, 2, 0]),
        ({"padding": "valid", "filter_size": (3,), "strides": 3}, [3, 3, 1, 0]),
    ]
    for opts, want in cases:
        net = build_network({"output": {"class": "conv", "n_out": 2, **opts}}, specs)
        value, out_lens = net(data, lens)["output"]
        assert out_lens.tolist() == want, opts
        assert value.shape[1] == max(want), opts


def test_dropout_only_in_training():
    net = build_network({"output": {"class": "copy", "dropout": 0.5}}, {"data": DataSpec(200)})
    x = torch.ones(2, 50, 200)
    lens = {"data": torch.tensor([50, 50])}
    net.eval()
    assert torch.equal(net({"data": x}, lens)["output"].value, x)
    net.train()
    y = net({"data": x}, lens)["output"].value
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < (y == 0).float().mean().item() < 0.6


def test_trainable_false_freezes_the_layer():
    net = build_network(
        {"h": {"class": "linear", "n_out": 3, "trainable": False}, "output": {**SOFTMAX_CE, "from": "h"}},
        SPECS,
    )
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["layers.h.linear.weight", "layers.h.linear.bias"]


def test_only_needed_layers_are_built():
    net = build_network(
        {
            "unused": {"class": "linear", "n_out": 3},
            "aux": {"class": "linear", "n_out": 4, "is_output_layer": True},
            "output": {"class": "softmax", "loss": "ce"},
        },
        SPECS,
    )
    assert net.order == ["aux", "output"]
    assert not any(n.startswith("layers.unused") for n, _ in net.named_parameters())


def test_layer_names_that_shadow_module_attributes():
    network = {"forward": {"class": "linear", "n_out": 3}, "output": {"class": "copy", "from": "forward"}}
    net = build_network(network, SPECS)
    assert sorted(net.state_dict()) == ["layers.forward.linear.bias", "layers.forward.linear.weight"]
    data, lens = _batch()
    assert net(data, lens)["output"].value.shape == (3, 7, 3)


def test_old_style_num_inputs_num_outputs():
    net = build_network(BLSTM, extern_data_from_config(num_inputs=40, num_outputs=10))
    assert net.out_spec().dim == 10 and net.input_keys == ["data"]


def test_ce_loss_of_the_network_uses_logits_and_ignores_padding():
    net = build_network({"output": {"class": "softmax", "loss": "ce", "loss_scale": 0.5}}, SPECS)
    data, lens = _batch()
    outputs = net(data, lens)
    losses = net.losses(outputs, data, lens)
    mask = torch.arange(7)[None] < lens["classes"][:, None]
    logits = net.layers["output"].linear(data["data"])
    want = F.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    cost, err = losses["cost:output"], losses["error:output"]
    assert cost.sum.item() == pytest.approx(want.item(), rel=1e-5) and cost.scale == 0.5
    assert err.sum.item() == (logits[mask].argmax(-1) != data["classes"][mask]).sum().item()
    assert cost.num_frames.item() == err.num_frames.item() == 13
    data2 = {k: v.clone() for k, v in data.items()}
    data2["data"][~mask] = 50.0
    data2["classes"][~mask] = 7
    cost2 = net.losses(net(data2, lens), data2, lens)["cost:output"]
    assert cost2.sum.item() == pytest.approx(cost.sum.item(), rel=1e-6)


def test_target_padded_longer_than_the_output():
    net = build_network({"output": {"class": "softmax", "loss": "ce"}}, SPECS)
    data, lens = _batch()
    want = net.losses(net(data, lens), data, lens)["cost:output"].sum
    data["classes"] = F.pad(data["classes"], (0, 3), value=-1)
    assert net.losses(net(data, lens), data, lens)["cost:output"].sum.item() == pytest.approx(want.item())


def test_ddp_sees_the_tensors_in_the_outputs():
    # DDP (find_unused_parameters / static_graph) collects output tensors with torch's pytree.
    net = build_network({"output": {"class": "softmax", "loss": "ce"}}, SPECS)
    data, lens = _batch()
    leaves, spec = torch.utils._pytree.tree_flatten(net(data, lens))
    assert sum(isinstance(x, torch.Tensor) for x in leaves) == 3  # probs, lens, logits
    rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)["output"]
    assert rebuilt.logits is leaves[2]


def test_ctc_and_mse_losses_of_the_network():
    net = build_network(
        {
            "enc": {"class": "linear", "n_out": 6, "activation": "tanh"},
            "ctc": {"class": "softmax", "loss": "ctc", "from": "enc"},
            "output": {"class": "linear", "n_out": 6, "loss": "mse", "target": "feats", "from": "enc"},
        },
        SPECS,
    )
    data, lens = _batch()
    labels = torch.tensor([[1, 2, 3], [4, 4, 0], [5, 0, 0]])
    data["classes"], lens["classes"] = labels, torch.tensor([3, 2, 1])
    outputs = net(data, lens)
    losses = net.losses(outputs, data, lens)
    assert sorted(losses) == ["cost:ctc", "cost:output", "error:ctc", "error:output"]
    logits = outputs["ctc"].logits
    want = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), labels, lens["data"], lens["classes"], blank=10,
                      reduction="sum")
    assert losses["cost:ctc"].sum.item() == pytest.approx(want.item(), rel=1e-5)
    assert losses["cost:ctc"].num_frames.item() == 6  # the number of labels
    mask = torch.arange(7)[None] < lens["feats"][:, None]
    y = outputs["output"].value
    want_mse = ((y - data["feats"]) ** 2).mean(-1)[mask].sum()
    assert losses["cost:output"].sum.item() == pytest.approx(want_mse.item(), rel=1e-5)


def test_framewise_loss_with_misaligned_target_is_a_data_error():
    net = build_network({"output": {"class": "softmax", "loss": "ce"}}, SPECS)
    data, lens = _batch()
    lens["classes"] = torch.tensor([7, 3, 2])
    with pytest.raises(DataError, match=r"network layer 'output': loss 'ce' is frame-wise.*\[7, 3, 2\].*\[7, 4, 2\]"):
        net.losses(net(data, lens), data, lens)


def test_inputs_with_different_lengths_is_a_data_error():
    net = build_network({"output": {"class": "copy", "from": ["data", "data:feats"]}}, SPECS)
    data, lens = _batch()
    lens["feats"] = torch.tensor([7, 4, 1])
    with pytest.raises(DataError, match="network layer 'output': its inputs have different seq lengths"):
        net(data, lens)


BAD = [
    (
        {
            "lstm0_fw": {"class": "rec", "n_out": 3},
            "lstm1_fw": {"class": "rec", "n_out": 3, "from": "lstm0_fx"},
            "output": {**SOFTMAX_CE, "from": "lstm1_fw"},
        },
        "network layer 'lstm1_fw': 'from' names unknown layer 'lstm0_fx' (did you mean 'lstm0_fw'?)",
    ),
    (
        {"output": {"class": "softmx", "loss": "ce"}},
        "network layer 'output': unknown class 'softmx' (did you mean 'softmax'?)",
    ),
    (
        {"output": {**SOFTMAX_CE, "from": "data:phones"}},
        "network layer 'output': 'from' names 'data:phones', but extern_data has no key 'phones'",
    ),
    (
        {"a": {"class": "copy", "from": "b"}, "b": {"class": "copy", "from": "a"}, "output": {"class": "copy"}},
        "network layer 'a': 'from' forms a cycle: a -> b -> a",
    ),
    (
        {"output": {**SOFTMAX_CE, "n_out": 11}},
        "network layer 'output': output dim 11 does not match target 'classes' dim 10 for loss 'ce': want 10",
    ),
    (
        {"output": {"class": "softmax", "n_out": 10, "loss": "ctc"}},
        "network layer 'output': output dim 10 does not match target 'classes' dim 10 for loss 'ctc': want 11 "
        "(ctc needs target dim + 1 for the blank)",
    ),
    (
        {"output": {"class": "copy", "loss": "ce"}},
        "network layer 'output': output dim 40 does not match target 'classes' dim 10",
    ),
    (
        {"output": {**SOFTMAX_CE, "target": "phones"}},
        "network layer 'output': loss 'ce' needs target 'phones', which extern_data does not have",
    ),
    ({"output": {**SOFTMAX_CE, "loss": "cee"}}, "network layer 'output': unknown loss 'cee' (did you mean 'ce'?)"),
    ({"output": {"class": "softmax", "loss": "ctc", "target": "feats"}}, "loss 'ctc' needs a sparse target"),
    ({"final": SOFTMAX_CE}, "network has no 'output' layer"),
    (
        {"output": {**SOFTMAX_CE, "dropuot": 0.1}},
        "network layer 'output': unknown key 'dropuot' for class 'softmax' (did you mean 'dropout'?)",
    ),
    (
        {"output": {"class": "rec", "unit": "lstmx", "n_out": 3}},
        "network layer 'output': unknown rec unit 'lstmx' (did you mean 'lstm'?)",
    ),
    (  # RETURNN's demo-tf-rec-explicit-lstm.config: no n_out, and the unit is not a name
        {"output": {"class": "rec", "unit": {"output": {"class": "linear", "n_out": 3, "from": "prev:output"}}}},
        "network layer 'output': a 'unit' dict (a subnetwork of layers run frame by frame",
    ),
    (
        {"output": {"class": "rec", "n_out": 3, "unit": {"output": {"class": "linear", "n_out": 3}}}},
        "network layer 'output': a 'unit' dict (a subnetwork of layers run frame by frame",
    ),
    (
        {"output": {"class": "rec", "n_out": 3, "unit": ["lstm"]}},
        "network layer 'output': unknown rec unit ['lstm']",
    ),
    (
        {"output": {"class": "rec", "n_out": 3, "direction": 0}},
        "network layer 'output': 'direction' must be 1 (forward) or -1 (backward)",
    ),
    (
        {"output": {"class": "linear", "n_out": 3, "activation": "rleu"}},
        "network layer 'output': unknown activation 'rleu' (did you mean 'relu'?)",
    ),
    ({"output": {"class": "linear"}}, "network layer 'output': class 'linear' needs 'n_out'"),
    (
        {"output": {"class": "combine", "kind": "add", "from": ["data", "data:feats"]}},
        "network layer 'output': combine needs inputs of the same dim, got dims [40, 6]",
    ),
    (
        {"output": {"class": "combine", "kind": "plus", "from": ["data", "data"]}},
        "network layer 'output': combine 'kind' must be one of",
    ),
    (
        {"output": {"class": "conv", "n_out": 3, "filter_size": (3, 3), "padding": "same"}},
        "network layer 'output': 'filter_size' must be a positive int or a tuple of one",
    ),
    (
        {"output": {"class": "conv", "n_out": 3, "filter_size": (3,), "padding": "full"}},
        "network layer 'output': conv 'padding' must be 'same' or 'valid'",
    ),
    (
        {
            "c": {"class": "conv", "n_out": 40, "filter_size": (3,), "padding": "same", "strides": 2},
            "output": {"class": "copy", "from": ["data", "c"]},
        },
        "network layer 'output': inputs are on different time axes (data:data vs data:data after conv 'c')",
    ),
    (
        {"output": {"class": "activation", "activation": "relu", "from": "data:classes"}},
        "network layer 'output': class 'activation' cannot take a sparse input",
    ),
    (
        {"output": {"class": "linear", "n_out": 3, "from": "data:classes", "dropout": 0.1}},
        "network layer 'output': 'dropout' on a sparse input",
    ),
    (
        {"output": {**SOFTMAX_CE, "loss_opts": {"focal": 1}}},
        "network layer 'output': unsupported loss_opts key 'focal' for loss 'ce'",
    ),
    ({"output": {**SOFTMAX_CE, "dropout": 1.5}}, "network layer 'output': 'dropout' must be a number in [0.0, 1.0)"),
    ({"output": {**SOFTMAX_CE, "L2": "a lot"}}, "network layer 'output': 'L2' must be a number >= 0"),
    ({"output": {**SOFTMAX_CE, "from": []}}, "network layer 'output': 'from' is empty"),
    ({"output": {"n_out": 3}}, "network layer 'output': has no 'class'"),
    ({"output.1": {"class": "copy"}}, "network layer name 'output.1' must be a non-empty string without '.'"),
    (  # RETURNN's demo-tf-hard-att-copy.config (pretraining reads it)
        {"#pretrain_idx": None, "output": SOFTMAX_CE},
        "network key '#pretrain_idx': RETURNN's '#' entries of a network dict",
    ),
]


@pytest.mark.parametrize(("network", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_networks_are_config_errors_naming_the_culprit(network, message):
    with pytest.raises(ConfigError) as info:
        build_network(network, SPECS)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_data_key_missing_from_extern_data():
    with pytest.raises(ConfigError, match=r"layer 'output': 'from' defaults to 'data', but extern_data has no key"):
        build_network({"output": SOFTMAX_CE}, {"classes": SPECS["classes"]})


def test_network_pickles_and_deep_copies():
    network = {
        "h": {"class": "linear", "n_out": 4, "activation": "log_softmax"},
        "c": {"class": "combine", "kind": "add", "from": ["h", "h"], "activation": "relu"},
        "output": {**SOFTMAX_CE, "from": "c"},
    }
    net = build_network(network, SPECS)
    assert isinstance(net, Network) and isinstance(net, torch.nn.Module)
    data, lens = _batch()
    want = net(data, lens)["output"].value
    for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert torch.equal(other(data, lens)["output"].value, want)
