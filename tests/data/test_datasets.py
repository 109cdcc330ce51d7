"""Dataset classes (equal to RETURNN's), init_dataset and default orders."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from returnn_ray.data import (
    DataSpec,
    DummyDataset,
    HDFDataset,
    StaticDataset,
    Task12AXDataset,
    init_dataset,
    write_hdf,
)
from returnn_ray.errors import ConfigError, DataError


def returnn_epoch(ds, epoch=1):
    """All seqs of a RETURNN dataset's epoch (default order): (tags, [{key: array}])."""
    ds.initialize()
    ds.init_seq_order(epoch=epoch)
    ds.load_seqs(0, ds.num_seqs)
    keys = ds.get_data_keys()
    tags = [ds.get_tag(i) for i in range(ds.num_seqs)]
    return tags, [{k: ds.get_data(i, k) for k in keys} for i in range(ds.num_seqs)]


def assert_same_corpus(ours, tags, seqs):
    assert ours.seq_tags == tags
    got = ours.get_seqs(range(ours.num_seqs))
    for i, (g, e) in enumerate(zip(got, seqs)):
        assert sorted(g) == sorted(e), i
        for key in e:
            assert g[key].dtype == e[key].dtype, (i, key)
            np.testing.assert_array_equal(g[key], e[key], err_msg=f"seq {i} key {key}")
        for key in e:  # lengths known up front equal the generated ones
            assert ours.seq_lens[key][i] == len(e[key])


# -- equal to RETURNN's classes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, returnn_epochs",
    [
        ({}, [1]),  # RETURNN regenerates per epoch; our corpus is its epoch 1 ...
        ({"partition_epoch": 3}, [1, 3]),  # ... which is all sub-epochs of full epoch 1
        ({"random_seed_offset": 5}, [1]),
        ({"fixed_random_seed": 42}, [1, 7]),  # fixed seed: the same data every epoch
    ],
)
def test_task12ax_equals_returnn(kwargs, returnn_epochs):
    generating = pytest.importorskip("returnn.datasets.generating")
    ours = Task12AXDataset(num_seqs=12, **kwargs)
    for epoch in returnn_epochs:
        theirs = generating.Task12AXDataset(num_seqs=12, **kwargs)
        theirs.initialize()
        theirs.init_seq_order(epoch=epoch)
        # Every corpus seq as RETURNN generates it in this epoch, whatever the sub-epoch slice.
        seqs = [theirs.get_corpus_seq(i).features for i in range(12)]
        tags = [f"seq-{i}" for i in range(12)]
        assert_same_corpus(ours, tags, seqs)
    assert ours.specs == {"data": DataSpec(9), "classes": DataSpec(2, sparse=True, dtype="int32")}


def test_task12ax_differs_from_returnn_later_epochs_without_fixed_seed():
    # Documents the one deliberate difference: RETURNN draws new data in full epoch 2.
    generating = pytest.importorskip("returnn.datasets.generating")
    theirs = generating.Task12AXDataset(num_seqs=5)
    _, seqs = returnn_epoch(theirs, epoch=2)
    assert [len(s["data"]) for s in seqs] != Task12AXDataset(num_seqs=5).seq_lens["data"].tolist()


def test_task12ax_targets_follow_the_rule():
    ds = Task12AXDataset(num_seqs=30)
    for seq in ds.get_seqs(range(30)):
        chars = ["123ABCXYZ"[i] for i in seq["data"].argmax(axis=1)]
        assert seq["data"].sum(axis=1).tolist() == [1.0] * len(chars)
        outer = inner = ""
        for c, o in zip(chars, seq["classes"]):
            expected = 0
            if c in "12":
                outer = c
            elif c in "AB":
                inner = c
            elif c in "XY":
                expected = int(outer + inner + c in ("1AX", "2BY"))
                inner = ""
            assert o == expected
    assert 10 <= ds.seq_lens["data"].min() and ds.seq_lens["data"].max() <= 99


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_dim=3, output_dim=7, num_seqs=6),
        dict(input_dim=2, output_dim={"classes": 4}, num_seqs=5, seq_len=5),
        dict(input_dim=3, output_dim=7, num_seqs=4, seq_len=3, input_max_value=4.0, input_shift=0.5, input_scale=3.0),
    ],
)
def test_dummy_equals_returnn(kwargs):
    generating = pytest.importorskip("returnn.datasets.generating")
    tags, seqs = returnn_epoch(generating.DummyDataset(**kwargs))
    assert_same_corpus(DummyDataset(**kwargs), tags, seqs)


def test_static_equals_returnn():
    generating = pytest.importorskip("returnn.datasets.generating")
    rng = np.random.RandomState(0)
    data = [
        {"data": rng.standard_normal((t, 4)).astype("float32"), "classes": rng.randint(0, 6, t // 2 + 1)}
        for t in (5, 2, 8)
    ]
    theirs = generating.StaticDataset(data=data, output_dim={"classes": 6})
    tags, seqs = returnn_epoch(theirs)
    ours = StaticDataset(data=data, output_dim={"classes": 6})
    assert_same_corpus(ours, tags, seqs)
    assert list(ours.specs) == theirs.get_data_keys() == ["data", "classes"]
    for key, spec in ours.specs.items():
        assert (spec.dim, spec.sparse) == (theirs.get_data_dim(key), theirs.is_data_sparse(key))


def test_static_validates_shapes():
    with pytest.raises(DataError, match="seq 1 key 'data' has shape \\(2, 3\\), seq 0 has \\(2, 4\\)"):
        StaticDataset(data=[{"data": np.zeros((2, 4))}, {"data": np.zeros((2, 3))}])
    with pytest.raises(DataError, match="output_dim says dim 5"):
        StaticDataset(data=[{"data": np.zeros((2, 4))}], output_dim={"data": [5, 2]})
    with pytest.raises(DataError, match="no seqs"):
        StaticDataset(data=[])


def test_generating_datasets_keep_corpus_order_for_sorted():
    # RETURNN's GeneratingDataset turns "sorted" into "default"; a Task12AX dev set is not sorted.
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 5}, name="dev")
    assert ds.order.seq_ordering == "default"
    assert ds.seq_order_for_epoch(1).tolist() == [0, 1, 2, 3, 4]


# -- init_dataset ----------------------------------------------------------------------------------


@pytest.fixture
def hdf_files(tmp_path):
    specs = {"data": DataSpec(2), "classes": DataSpec(3, sparse=True, dtype="int32")}
    paths = []
    for f, lens in enumerate([[3, 1], [2]]):
        seqs = [{"data": np.full((t, 2), t, "float32"), "classes": np.zeros(t, "int32")} for t in lens]
        paths.append(str(tmp_path / f"part{f}.hdf"))
        write_hdf(paths[-1], seqs, [f"f{f}-{i}" for i in range(len(lens))], specs)
    return paths


def test_init_dataset_from_dict():
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 7, "fixed_random_seed": 3}, name="train")
    assert isinstance(ds, Task12AXDataset) and ds.name == "train" and ds.num_seqs == 7
    assert ds.order.fixed_random_seed == 3 and ds.order.seq_ordering == "default"


def test_init_dataset_from_string_of_hdf_files(hdf_files):
    ds = init_dataset(",".join(hdf_files), name="train")
    assert isinstance(ds, HDFDataset) and ds.files == hdf_files
    assert ds.seq_tags == ["f0-0", "f0-1", "f1-0"] and ds.seq_lens["data"].tolist() == [3, 1, 2]
    spec = {"class": "HDFDataset", "files": hdf_files, "use_cache_manager": True, "cache_byte_size": 0}
    ds = init_dataset(spec, name="dev")
    assert ds.num_seqs == 3 and ds.order.seq_ordering == "sorted"


def test_init_dataset_other_string_forms():
    ds = init_dataset("DummyDataset:input_dim=2,output_dim=3,num_seqs=4", name="train")
    assert isinstance(ds, DummyDataset) and ds.num_seqs == 4
    ds = init_dataset("{'class': 'Task12AXDataset', 'num_seqs': 3}", name="train")
    assert isinstance(ds, Task12AXDataset)
    ds = init_dataset(lambda: {"class": "Task12AXDataset", "num_seqs": 2}, name="train")
    assert ds.num_seqs == 2
    assert init_dataset(ds, name="train") is ds


def test_unknown_class_suggests():
    with pytest.raises(ConfigError) as info:
        init_dataset({"class": "HDFDatset", "files": []}, name="dev")
    msg = str(info.value)
    assert "dataset 'dev'" in msg and "'HDFDatset'" in msg and "did you mean 'HDFDataset'" in msg
    assert "native: DummyDataset, HDFDataset, MetaDataset, StaticDataset, Task12AXDataset;" in msg
    assert "through RETURNN's implementation: " in msg and "OggZipDataset" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="dataset 'train' has no 'class'"):
        init_dataset({"num_seqs": 3}, name="train")


def test_unknown_and_missing_kwargs():
    msg = "dataset 'train': Task12AXDataset does not take 'num_seq' \\(did you mean 'num_seqs'\\?\\)"
    with pytest.raises(ConfigError, match=msg):
        init_dataset({"class": "Task12AXDataset", "num_seq": 3}, name="train")
    with pytest.raises(ConfigError, match="dataset 'train': DummyDataset needs 'num_seqs'"):
        init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 3}, name="train")
    with pytest.raises(ConfigError, match="chunking='50:25' is not supported"):
        init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "chunking": "50:25"}, name="train")
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "chunking": "0", "window": 1}, name="dev")
    assert ds.num_seqs == 3
    with pytest.raises(ConfigError, match="dataset 'train': partition_epoch must be an int >= 1, got 0"):
        init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 0}, name="train")
    with pytest.raises(ConfigError, match="num_seqs must be a positive int"):
        init_dataset({"class": "Task12AXDataset", "num_seqs": float("inf")}, name="train")


def test_invalid_seq_ordering():
    with pytest.raises(ConfigError, match="unknown seq_ordering 'shuffle'"):
        init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "seq_ordering": "shuffle"}, name="train")
    with pytest.raises(ConfigError, match="unknown seq_ordering 'sortd'"):
        init_dataset({"class": "Task12AXDataset", "num_seqs": 3}, name="train", batching="sortd")


def test_empty_dataset(tmp_path):
    path = str(tmp_path / "empty.hdf")
    write_hdf(path, [], [], {"data": DataSpec(2)})
    assert HDFDataset([path]).num_seqs == 0
    with pytest.raises(DataError, match="dataset 'train' \\(HDFDataset\\) has no seqs"):
        init_dataset(path, name="train")


@pytest.mark.parametrize("name", ["train", "dev", "eval"])
@pytest.mark.parametrize("batching", [None, "random"])
@pytest.mark.parametrize("as_string, own", [(False, None), (False, "laplace:.10"), (True, None)])
def test_default_seq_ordering_equals_returnn_load_data(hdf_files, name, batching, own, as_string):
    config_mod = pytest.importorskip("returnn.config")
    main = pytest.importorskip("returnn.__main__")
    basic = pytest.importorskip("returnn.datasets.basic")
    spec = ",".join(hdf_files) if as_string else {"class": "HDFDataset", "files": hdf_files}
    if own:
        spec["seq_ordering"] = own
    config = config_mod.Config({name: spec, **({"batching": batching} if batching else {})})
    Dataset = basic.Dataset
    defaults = Dataset.get_default_kwargs_train(config) if name == "train" else Dataset.get_default_kwargs_eval(config)
    theirs, _ = main.load_data(config, 0, name, **defaults)
    ours = init_dataset(spec, name=name, batching=batching)
    assert ours.order.seq_ordering == theirs.seq_ordering


def test_default_seq_ordering_other_names():
    # RETURNN's torch engine builds eval_datasets entries without the dev/eval defaults.
    spec = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4}
    assert init_dataset(dict(spec), name="devtrain", batching="random").order.seq_ordering == "default"
    static = {"class": "StaticDataset", "data": [{"data": np.zeros((2, 1), "float32")}]}
    assert init_dataset(static, name="dev", batching="random").order.seq_ordering == "sorted"
    assert init_dataset(static, name="train", batching="random").order.seq_ordering == "random"


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz", ".pkl"])
def test_seq_list_filter_file_equals_returnn(tmp_path, hdf_files, suffix):
    keep = ["f1-0", "f0-0"]
    path = str(tmp_path / f"tags{suffix}")
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(keep, f)
    else:
        with (gzip.open(path, "wt") if suffix.endswith(".gz") else open(path, "w")) as f:
            f.write("\n".join(keep) + "\n")
    spec = {"class": "HDFDataset", "files": hdf_files, "seq_ordering": "random", "seq_list_filter_file": path}
    ours = init_dataset(spec, name="train")
    assert ours.num_seqs == 3  # the corpus stays whole; epochs use only listed seqs
    hdf = pytest.importorskip("returnn.datasets.hdf")
    theirs = hdf.HDFDataset(files=hdf_files, seq_ordering="random", seq_list_filter_file=path)
    theirs.initialize()
    for epoch in (1, 2, 3):
        theirs.init_seq_order(epoch=epoch)
        expected = [theirs.get_corpus_seq_idx(i) for i in range(theirs.num_seqs)]
        assert ours.seq_order_for_epoch(epoch).tolist() == expected
    assert ours.get_seqs([2])[0]["data"].shape == (2, 2)


def test_seq_list_filter_file_errors(tmp_path, hdf_files):
    spec = {"class": "HDFDataset", "files": hdf_files, "seq_list_filter_file": str(tmp_path / "missing.txt")}
    with pytest.raises(DataError, match="cannot read seq_list_filter_file .*missing.txt"):
        init_dataset(spec, name="train")
    (tmp_path / "other.txt").write_text("nope\n")
    spec["seq_list_filter_file"] = str(tmp_path / "other.txt")
    with pytest.raises(DataError, match="no seq tag is listed"):
        init_dataset(spec, name="train")


def test_static_dataset_with_seqs_of_zero_frames():
    seqs = [{"data": np.zeros((0, 2), "float32"), "classes": np.zeros(0, "int32")},
            {"data": np.ones((3, 2), "float32"), "classes": np.ones(3, "int32")}]
    ds = StaticDataset(seqs, output_dim={"classes": 2})
    assert ds.seq_lens["data"].tolist() == [0, 3]
    assert ds.get_seqs([0])[0]["data"].shape == (0, 2)


_RLIMIT_AS = 3 << 30  # address space of the child: numpy and h5py start in far less


def _limited():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_RLIMIT_AS, _RLIMIT_AS))


@pytest.mark.parametrize(
    "train, culprit",
    [
        ({"class": "Task12AXDataset", "num_seqs": 1e12}, "Task12AXDataset num_seqs 1000000000000 is above the bound of 10000000"),
        ({"class": "DummyDataset", "input_dim": 9, "output_dim": 2, "num_seqs": 10**12}, "DummyDataset num_seqs"),
        ({"class": "DummyDataset", "input_dim": 9, "output_dim": 2, "num_seqs": 2, "seq_len": 10**12},
         "seq_len 1000000000000 * input_dim 9"),
    ],
)
def test_a_generating_dataset_too_big_for_memory_is_one_line(tmp_path, train, culprit):
    """``num_seqs: 1e12`` (a typo) once grew until the kernel killed processes machine-wide. The CLI
    runs here in a child whose address space is capped, and with a timeout, so that even without the
    bound this test fails (MemoryError, a traceback) instead of taking the machine down."""
    import json
    import os
    import subprocess
    import sys

    config = {"train": train, "num_inputs": 9, "num_outputs": 2, "batch_size": 300}
    (tmp_path / "c.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", "dump-dataset", "c.json", "--batches"], capture_output=True, text=True,
        cwd=tmp_path, env=env, timeout=120, preexec_fn=_limited,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert culprit in errors[0] and "dataset 'train'" in errors[0]
    assert proc.stdout == ""
