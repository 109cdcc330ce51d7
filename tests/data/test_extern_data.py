"""extern_data from the config (or num_inputs/num_outputs), and the check against a dataset."""

from __future__ import annotations

import pytest

from returnn_ray.data import DataSpec, check_extern_data, extern_data_from_config, init_dataset
from returnn_ray.errors import ConfigError, DataError


def test_check_extern_data():
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 2}, name="train")
    check_extern_data(ds, {"data": {"dim": 9, "shape": (None, 9)}, "classes": {"dim": 2, "sparse": True}})
    check_extern_data(ds, {"data": {"shape": (None, 9)}})  # dim from the shape
    with pytest.raises(DataError) as info:
        check_extern_data(ds, {"data": {"dim": 80}})
    expected = "dataset 'train' key 'data' has dim 9 but extern_data says 80 (fix extern_data or the data file)"
    assert str(info.value) == expected
    with pytest.raises(DataError, match="key 'classes' is sparse but extern_data says dense"):
        check_extern_data(ds, {"classes": {"dim": 2}})
    with pytest.raises(DataError, match="has no key 'align' that extern_data declares"):
        check_extern_data(ds, {"align": {"dim": 2, "sparse": True}})
    check_extern_data(ds, {"align": {"dim": 2, "sparse": True}, "data": {"dim": 9}}, keys=["data"])
    check_extern_data(ds, extern_data_from_config(num_inputs=9, num_outputs=2))
    with pytest.raises(DataError, match="key 'classes' has dim 2 but extern_data says 3"):
        check_extern_data(ds, extern_data_from_config(num_inputs=9, num_outputs={"classes": [3, 1]}))


def test_extern_data_from_config():
    assert extern_data_from_config(num_inputs=40, num_outputs=10) == {
        "classes": DataSpec(10, sparse=True, dtype="int32"),
        "data": DataSpec(40),
    }
    out = extern_data_from_config(num_outputs={"classes": [5, 1], "data": [7, 2], "align": 3, "feats": [4, 2]})
    assert out == {
        "classes": DataSpec(5, sparse=True, dtype="int32"),
        "data": DataSpec(7),
        "align": DataSpec(3, sparse=True, dtype="int32"),
        "feats": DataSpec(4),
    }
    assert extern_data_from_config(num_inputs=3, num_outputs={"data": 8})["data"] == DataSpec(8)
    ext = extern_data_from_config(
        {
            "data": {"dim": 40, "shape": (None, 40)},
            "classes": {"dim": 9, "sparse": True, "dtype": "int64"},
            "w": [5, 1],
        },
        num_inputs=1,  # ignored when extern_data is set, as in RETURNN
    )
    assert ext == {"data": DataSpec(40), "classes": DataSpec(9, True, "int64"), "w": DataSpec(5, True, "int32")}
    assert extern_data_from_config() == {}
    with pytest.raises(ConfigError, match="extern_data\\['data'\\] has no dim"):
        extern_data_from_config({"data": {"shape": (None, None)}})
