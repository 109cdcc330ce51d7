"""returnn_ray.tensor: extern_data wrapping of padded batches and model_outputs templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import ConfigError, DataError
from returnn_ray.tensor import Dim, Tensor, TensorDict, batch_dim, extern_data_from_batch, tensor_dict_from_config


def _batch() -> Batch:
    lens = torch.tensor([4, 2, 3], dtype=torch.int32)
    return Batch(
        seq_idx=np.array([5, 1, 7]),
        data={"data": torch.randn(3, 4, 9), "classes": torch.randint(0, 2, (3, 4), dtype=torch.int32)},
        lens={"data": lens, "classes": lens.clone()},
    )


SPECS = {"data": DataSpec(dim=9), "classes": DataSpec(dim=2, sparse=True, dtype="int32")}


def test_extern_data_wraps_the_batch_without_copies():
    batch = _batch()
    ed = extern_data_from_batch(batch, SPECS)
    data, classes = ed["data"], ed["classes"]
    assert data.raw_tensor is batch.data["data"]
    assert classes.raw_tensor is batch.data["classes"]
    assert data.dims[1].dyn_size_ext.raw_tensor is batch.lens["data"]
    assert data.dims[0] is batch_dim and classes.dims[0] is batch_dim
    # each key has its own time dim, as in RETURNN without same_dim_tags_as
    assert data.dims[1] is not classes.dims[1]
    assert (data.dim, data.sparse, data.dtype, data.batch_shape) == (9, False, "float32", (None, None, 9))
    assert (classes.dim, classes.sparse, classes.dtype, len(classes.dims)) == (2, True, "int32", 2)
    assert data.feature_dim is data.dims[2] and classes.feature_dim is None
    assert data.get_sequence_lengths().tolist() == [4, 2, 3]
    assert sorted(ed) == ["classes", "data"] and "data" in ed and len(ed) == 2


def test_extern_data_fresh_dims_per_batch_and_seq_tags():
    a = extern_data_from_batch(_batch(), SPECS)
    b = extern_data_from_batch(_batch(), SPECS, seq_tags=["seq-5", "seq-1", "seq-7"])
    assert a["data"].dims[1] is not b["data"].dims[1]
    assert "seq_tag" not in a
    assert b["seq_tag"].raw_tensor.tolist() == ["seq-5", "seq-1", "seq-7"]


def test_extern_data_without_specs_infers_sparse():
    ed = extern_data_from_batch(_batch())
    assert ed["classes"].sparse and not ed["data"].sparse
    assert ed["classes"].sparse_dim.dimension is None


def test_extern_data_errors():
    with pytest.raises(DataError, match="'speaker' is not in the batch"):
        extern_data_from_batch(_batch(), {**SPECS, "speaker": DataSpec(dim=3, sparse=True)})
    with pytest.raises(DataError, match="feature dim is 9, extern_data says 40"):
        extern_data_from_batch(_batch(), {"data": DataSpec(dim=40)})
    with pytest.raises(DataError, match=r"expected a padded batch \[B, T\]"):
        extern_data_from_batch(_batch(), {"data": DataSpec(dim=9, sparse=True)})


def test_as_raw_tensor_dict():
    batch = _batch()
    raw = extern_data_from_batch(batch, SPECS).as_raw_tensor_dict()
    assert raw["data"] is batch.data["data"] and raw["data:seq_len"] is batch.lens["data"]


def test_tensor_dict_from_config_defaults():
    td = tensor_dict_from_config({"output": {"dim": 2}, "labels": {"dim": 5, "sparse": True}, "score": {"shape": ()}})
    out, labels, score = td["output"], td["labels"], td["score"]
    assert out.dims[0] is batch_dim and out.dims[1].is_dynamic() and out.dims[2].dimension == 2
    assert out.dims[1].dyn_size_ext.raw_tensor is None and out.dtype == "float32"
    assert len(labels.dims) == 2 and labels.sparse_dim.dimension == 5 and labels.dtype == "int32"
    assert score.dims == (batch_dim,)
    # fresh dims on every call, so one step's lengths never reach the next
    assert tensor_dict_from_config({"output": {"dim": 2}})["output"].dims[1] is not out.dims[1]


def test_tensor_dict_from_config_user_dims_are_reset():
    time = Dim(None, "time")
    feat = Dim(3, "feat")
    time.dyn_size_ext.raw_tensor = torch.tensor([1, 2])
    td = tensor_dict_from_config({"output": {"dims": [batch_dim, time, feat], "dtype": "float32"}})
    assert td["output"].dims == (batch_dim, time, feat)
    assert time.dyn_size_ext.raw_tensor is None


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"output": {"dim": 2, "time_dim_axis": 1}}, "unsupported option"),
        ({"output": {"sparse": True}}, "sparse entry needs 'dim'"),
        ({"output": {}}, "dense entry needs 'dim'"),
        ({"output": {"dim": 2, "shape": (None, 3)}}, "does not match"),
        ({"output": 2}, "must be a dict"),
    ],
)
def test_tensor_dict_from_config_errors(opts, message):
    with pytest.raises(ConfigError, match=message):
        tensor_dict_from_config(opts)


def test_model_outputs_like_returnn():
    """Same dims (static sizes, dynamic positions), dtype and sparsity as RETURNN's TensorDict.update(auto_convert)."""
    returnn_tensor = pytest.importorskip("returnn.tensor")
    opts = {
        "output": {"dim": 2},
        "labels": {"dim": 7, "sparse": True},
        "frames": {"shape": (None, 4, 5), "dtype": "float16"},
    }
    theirs = returnn_tensor.TensorDict()
    theirs.update(opts, auto_convert=True)
    ours = tensor_dict_from_config(opts)
    for name in opts:
        t, o = theirs.data[name], ours[name]
        assert [d.dimension for d in t.dims] == [d.dimension for d in o.dims], name
        assert t.dims[0].is_batch_dim() and o.dims[0] is batch_dim
        assert t.dtype == o.dtype and t.sparse == o.sparse and t.dim == o.dim, name


def test_tensor_dict_lookup_error_names_the_keys():
    td = TensorDict({"data": Tensor("data", dims=(batch_dim,), dtype="int32")})
    with pytest.raises(KeyError, match=r"'classes' is not in this TensorDict; it has \['data'\]"):
        td["classes"]
