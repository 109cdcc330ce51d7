"""``pool``, ``time_chunking`` and ``time_unchunking`` against RETURNN's own code.

- chunking: RETURNN's native ``Chunking`` / ``UnChunking`` ops (the kernels its TF layers run),
  compiled for CPU by RETURNN's torch native-op maker;
- pool: RETURNN's ``rf.pool1d`` (torch backend) on one seq at a time, and its
  ``calc_conv_out_length`` (TF ``ConvLayer.calc_out_dim``) for the lengths.
"""

from __future__ import annotations

import pytest
import torch

from returnn_ray.data.base import DataSpec
from returnn_ray.errors import ConfigError, DataError
from returnn_ray.model import build_network

returnn_native_op = pytest.importorskip("returnn.native_op")
rf = pytest.importorskip("returnn.frontend")
from returnn.frontend.conv import calc_conv_out_length  # noqa: E402
from returnn.tensor import Dim, Tensor  # noqa: E402

SPECS = {"data": DataSpec(3), "classes": DataSpec(2, sparse=True, dtype="int32")}
LENS = (23, 9, 1, 15)


@pytest.fixture(scope="module")
def returnn_ops():
    """RETURNN's Chunking and UnChunking kernels, compiled for CPU (once; RETURNN caches the build)."""
    native = pytest.importorskip("returnn.torch.util.native_op")
    try:
        return (native.make_op(returnn_native_op.Chunking, with_cuda=False),
                native.make_op(returnn_native_op.UnChunking, with_cuda=False))
    except Exception as exc:  # noqa: BLE001 - no C++ compiler here
        pytest.skip(f"cannot compile RETURNN's native ops: {exc}")


def _data(lens=LENS, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    x = torch.randn(len(lens), int(lens_t.max()), dim, generator=g)
    x = x * (torch.arange(x.shape[1])[None, :, None] < lens_t[:, None, None])  # zero padding, as RETURNN's
    return x, lens_t


def _returnn_chunk(op, x, lens, size, step):
    """RETURNN's TimeChunkingLayer: time-major input and index, output ``(size, B*C, F)``, oindex."""
    xt = x.transpose(0, 1).contiguous()
    index = (torch.arange(xt.shape[0])[:, None] < lens[None, :]).float()
    n = max(xt.shape[0] - size + step - 1, 0) // step + 1
    out, oindex = op(xt, index, torch.zeros(size, xt.shape[1] * n, xt.shape[2]), torch.zeros(size, xt.shape[1] * n),
                     torch.tensor([size, step], dtype=torch.float32))
    return out, oindex


def _chunk_net(size, step, between=None):
    net = {
        "in": {"class": "time_chunking", "chunk_size": size, "chunk_step": step, "from": "data"},
        "out": {"class": "time_unchunking", "chunking_layer": "in", "from": between or "in"},
        "output": {"class": "copy", "from": "out"},
    }
    if between:
        net[between] = {"class": "linear", "activation": "tanh", "n_out": 4, "from": "in"}
    return net


@pytest.mark.parametrize("size,step", [(22, 11), (4, 2), (5, 5), (6, 4), (50, 10)])
def test_time_chunking_matches_returnns_chunk_op(returnn_ops, size, step):
    x, lens = _data()
    net = build_network(_chunk_net(size, step), SPECS)
    out = net({"data": x}, {"data": lens})["in"]
    want, oindex = _returnn_chunk(returnn_ops[0], x, lens, size, step)
    assert torch.equal(out.value, want.transpose(0, 1))  # batch-major here
    assert out.lens.tolist() == oindex.sum(0).int().tolist()


@pytest.mark.parametrize("size,step", [(22, 11), (4, 2), (6, 4), (3, 3)])
def test_time_unchunking_matches_returnns_unchunk_op(returnn_ops, size, step):
    """Different values in overlapping chunks (a layer between): the mean over the chunks that hold
    a frame, as RETURNN's UnChunking kernel computes it; lengths back to the seq's."""
    x, lens = _data()
    net = build_network(_chunk_net(size, step, between="h"), SPECS)
    outs = net({"data": x}, {"data": lens})
    h = outs["h"]
    index = (torch.arange(h.value.shape[1])[None, :] < h.lens[:, None]).float().t().contiguous()
    t, b = int(lens.max()), len(LENS)
    want, oindex, _ = returnn_ops[1](
        h.value.detach().transpose(0, 1).contiguous(), index, torch.zeros(t, b, 4), torch.zeros(t, b),
        torch.zeros(t, b), torch.tensor([size, step], dtype=torch.float32),
    )
    got = outs["output"]
    assert got.lens.tolist() == list(LENS) == oindex.sum(0).int().tolist()
    torch.testing.assert_close(got.value.detach(), want.transpose(0, 1), rtol=1e-6, atol=1e-6)


def test_chunking_then_unchunking_gives_each_seq_back_and_its_gradient():
    x, lens = _data()
    x.requires_grad_(True)
    net = build_network(_chunk_net(6, 4), SPECS)
    out = net({"data": x}, {"data": lens})["output"]
    mask = (torch.arange(x.shape[1])[None, :, None] < lens[:, None, None]).float()
    torch.testing.assert_close(out.value, x * mask)
    out.value.sum().backward()
    # RETURNN's chunk gradient is unchunk(grad) / factors: the sum over the copies, mean-weighted = 1 per frame
    torch.testing.assert_close(x.grad, mask.expand_as(x))


def test_demo_chunking_blstm_network_builds_and_runs():
    """The network of RETURNN's demo-tf-chunking-blstm.12ax.config, as written there."""
    net_dict = {
        "in": {"class": "time_chunking", "chunk_size": 22, "chunk_step": 11, "from": "data"},
        "fw0": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": "in"},
        "bw0": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": "in"},
        "fw1": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": ["fw0", "bw0"]},
        "bw1": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": ["fw0", "bw0"]},
        "fw2": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": ["fw1", "bw1"]},
        "bw2": {"class": "rec", "unit": "BasicLSTM", "n_out": 10, "from": ["fw1", "bw1"]},
        "out": {"class": "time_unchunking", "chunking_layer": "in", "from": ["fw2", "bw2"]},
        "output": {"class": "softmax", "loss": "ce", "from": "out"},
    }
    specs = {"data": DataSpec(9), "classes": DataSpec(2, sparse=True, dtype="int32")}
    net = build_network(net_dict, specs)
    x, lens = _data(lens=(40, 12), dim=9)
    targets = torch.zeros(2, 40, dtype=torch.int32)
    outs = net({"data": x, "classes": targets}, {"data": lens, "classes": lens})
    assert outs["fw0"].value.shape[0] == 2 * 3  # 40 frames: chunks at 0, 11, 22
    assert outs["output"].value.shape == (2, 40, 2) and outs["output"].lens.tolist() == [40, 12]
    losses = net.losses(outs, {"classes": targets}, {"classes": lens})
    assert float(losses["cost:output"].num_frames) == 52


def test_chunking_config_errors():
    with pytest.raises(ConfigError, match="'bad': 'chunking_layer' 'h' is not a 'time_chunking' layer"):
        build_network({**_chunk_net(4, 2, between="h"), "bad": {"class": "time_unchunking", "chunking_layer": "h",
                                                                "from": "h", "is_output_layer": True}}, SPECS)
    net = _chunk_net(4, 2)
    net["out"]["from"] = "data"
    with pytest.raises(ConfigError, match="'out': its input is on time axis data:data, not the chunks of 'in'"):
        build_network(net, SPECS)
    with pytest.raises(ConfigError, match="'out': chunk_step 5 > chunk_size 3 leaves frames in no chunk"):
        build_network(_chunk_net(3, 5), SPECS)
    with pytest.raises(ConfigError, match="'in': 'chunk_step' must be a positive int, got 0"):
        build_network(_chunk_net(4, 0), SPECS)
    net = _chunk_net(4, 2)
    net["output"] = {"class": "copy", "from": ["out", "in"]}
    with pytest.raises(ConfigError, match="different time axes"):
        build_network(net, SPECS)


def _rf_pool(x: torch.Tensor, mode: str, size: int, stride: int, padding: str) -> torch.Tensor:
    """RETURNN's rf.pool1d (torch backend) on one seq ``[T, F]``."""
    rf.select_backend_torch()
    time, feat = Dim(x.shape[0], name="time"), Dim(x.shape[1], name="feat")
    y, out_time = rf.pool1d(Tensor("x", dims=[time, feat], dtype="float32", raw_tensor=x), mode=mode,
                            pool_size=size, strides=stride, padding=padding, in_spatial_dim=time)
    return y.copy_transpose([out_time, feat]).raw_tensor


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,padding", [(2, 2, "same"), (3, 3, "same"), (3, 2, "valid"), (2, 2, "valid"),
                                                 (3, 1, "valid"), (1, 1, "valid")])
def test_pool_matches_returnn_per_seq(mode, size, stride, padding):
    x, lens = _data(lens=(23, 9, 1, 4, 2))
    x = x - 5.0  # negative values: padding taken for 0 would win a max
    net = build_network({"output": {"class": "pool", "mode": mode, "pool_size": (size,), "strides": stride,
                                    "padding": padding}}, SPECS)
    out = net({"data": x}, {"data": lens})["output"]
    for b, n in enumerate(lens.tolist()):
        want_len = calc_conv_out_length(n, filter_size=size, stride=stride, padding=padding)
        assert int(out.lens[b]) == want_len
        if want_len:
            torch.testing.assert_close(out.value[b, :want_len], _rf_pool(x[b, :n], mode, size, stride, padding))
        assert not out.value[b, want_len:].any()  # zero on padding frames


def test_pool_strides_default_to_pool_size_and_errors():
    x, lens = _data()
    net = build_network({"output": {"class": "pool", "mode": "max", "pool_size": (3,)}}, SPECS)
    assert net({"data": x}, {"data": lens})["output"].lens.tolist() == [7, 3, 0, 5]  # valid, stride 3
    for opts, msg in [
        ({"mode": "min", "pool_size": (2,)}, "pool 'mode' must be 'max' or 'avg', got 'min'"),
        ({"mode": "max", "pool_size": (2, 2)}, "'pool_size' must be a positive int or a tuple of one"),
        ({"mode": "max", "pool_size": (2,), "padding": "causal"}, "pool 'padding' must be 'same' or 'valid'"),
        ({"mode": "max"}, "class 'pool' needs 'pool_size'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            build_network({"output": {"class": "pool", **opts}}, SPECS)
    with pytest.raises(ConfigError, match="different time axes"):
        build_network({"p": {"class": "pool", "mode": "avg", "pool_size": (2,), "padding": "same"},
                       "output": {"class": "copy", "from": ["p", "data"]}}, SPECS)


def test_unroll_keeps_returnns_max_seq_len_limit():
    net = build_network({"output": {"class": "rec", "unit": "BasicLSTM", "unroll": True, "max_seq_len": 8,
                                    "n_out": 2}}, SPECS)
    x, lens = _data(lens=(8, 3))
    assert net({"data": x}, {"data": lens})["output"].value.shape == (2, 8, 2)
    x, lens = _data(lens=(9, 3))
    with pytest.raises(DataError, match="'output': 'unroll' with 'max_seq_len' 8 got a seq of 9 frames"):
        net({"data": x}, {"data": lens})
