"""Network-dict dropout: RETURNN's noise shape (``Data.get_bc_shape``) is the oracle."""

from __future__ import annotations

import pytest
import torch

from returnn_ray.data.base import DataSpec
from returnn_ray.errors import ConfigError
from returnn_ray.model import build_network
from returnn_ray.model.dropout import dropout_noise_axes

returnn_tensor = pytest.importorskip("returnn.tensor")

SPECS = {"data": DataSpec(16), "classes": DataSpec(3, sparse=True, dtype="int32")}


def _returnn_noise_axes(opts: dict) -> tuple[bool, bool, bool]:
    """RETURNN's concat_sources_with_opt_dropout noise shape for a [B, T, F] value, as own-noise flags."""
    # batch-major [B, T, F] with TF layers' (version 1) axis semantics
    data = returnn_tensor.Tensor("x", shape=(None, 16), dtype="float32", version=1)
    shape, axis = opts.get("dropout_noise_shape"), opts.get("dropout_axis")
    if axis is not None:
        axes = data.get_axes_from_description(axis, allow_int=False)
        shape = [dim if i in axes else 1 for i, dim in enumerate(data.batch_shape)]
    if isinstance(shape, dict) or not shape:
        shape = data.get_bc_shape(shape)
    return tuple(n != 1 for n in shape)  # type: ignore[return-value]


@pytest.mark.parametrize("opts", [
    {},
    {"dropout_noise_shape": None},
    {"dropout_noise_shape": {"*": None}},
    {"dropout_noise_shape": {"*": None, "B": 1}},
    {"dropout_noise_shape": {"T": None}},
    {"dropout_noise_shape": {"t": -1, "f": "x"}},
    {"dropout_noise_shape": {"batch": None}},
    {"dropout_noise_shape": {"*": 1}},
    {"dropout_axis": "T"},
    {"dropout_axis": ["T", "F"]},
    {"dropout_axis": "bt"},
    {"dropout_axis": "except_batch"},
    {"dropout_axis": "except_time"},
    {"dropout_axis": "*"},
])
def test_noise_shape_matches_returnn(opts):
    assert dropout_noise_axes("h", {"dropout": 0.5, **opts}) == _returnn_noise_axes(opts)


def test_default_mask_is_one_per_feature_shared_over_batch_and_time():
    torch.manual_seed(0)
    net = build_network({"output": {"class": "copy", "dropout": 0.5}}, SPECS)
    net.train()
    x = torch.ones(4, 30, 16)
    y = net({"data": x}, {"data": torch.tensor([30, 30, 30, 30])})["output"].value
    per_feature = y[0, 0]
    assert torch.equal(y, per_feature.expand_as(y))  # same mask in every seq and frame
    assert set(per_feature.tolist()) == {0.0, 2.0}  # dropped or scaled by 1 / (1 - 0.5)
    net.eval()
    assert torch.equal(net({"data": x}, {"data": torch.tensor([30] * 4)})["output"].value, x)


def test_elementwise_mask_with_star_none():
    torch.manual_seed(0)
    net = build_network({"output": {"class": "copy", "dropout": 0.5, "dropout_noise_shape": {"*": None}}}, SPECS)
    y = net({"data": torch.ones(4, 30, 16)}, {"data": torch.tensor([30] * 4)})["output"].value
    assert not torch.equal(y[0], y[1]) and not torch.equal(y[0, 0], y[0, 1])


@pytest.mark.parametrize("opts,msg", [
    ({"dropout_noise_shape": (None, 1, None)}, "only the dict form"),
    ({"dropout_noise_shape": {"stag:time": None}}, "dropout_noise_shape axis 'stag:time' is not supported here"),
    ({"dropout_axis": "dim:16"}, "dropout_axis axis 'dim:16' is not supported here"),
    ({"dropout_axis": "T", "dropout_noise_shape": {"T": None}}, "not both"),
    ({"dropout_noise_shape": {"T": 2}}, "value 2 for 'T' must be 1 or 'x'"),
])
def test_unsupported_noise_shapes_are_one_line_errors(opts, msg):
    with pytest.raises(ConfigError, match=f"network layer 'output': .*{msg}"):
        build_network({"output": {"class": "copy", "dropout": 0.1, **opts}}, SPECS)
