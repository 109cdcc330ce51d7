"""HDF reading and writing: round trips, laziness, errors, atomic writes, and RETURNN compatibility."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

from returnn_ray.data import DataSpec, HDFDataset, HDFWriter, write_hdf
from returnn_ray.errors import DataError

SPECS = {
    "data": DataSpec(3),
    "classes": DataSpec(5, sparse=True, dtype="int32"),
    "align": DataSpec(4, sparse=True, dtype="int32"),
    "feats": DataSpec(2, sparse=False, dtype="float32"),
}
LABELS = {"classes": ["a", "b", "c", "d", "é"], "data": ["x", "y", "z"]}


def make_seqs(lens, seed=0, specs=SPECS):
    """Seqs with key-specific lengths (classes shorter than data) and random values."""
    rng = np.random.RandomState(seed)
    seqs = []
    for t in lens:
        seq = {}
        for key, spec in specs.items():
            n = max(t // 2, 1) if key == "classes" else t
            if spec.sparse:
                seq[key] = rng.randint(0, spec.dim, size=n).astype(spec.dtype)
            else:
                seq[key] = rng.standard_normal((n, spec.dim)).astype(spec.dtype)
        seqs.append(seq)
    return seqs


def assert_seqs_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert sorted(g) == sorted(e)
        for key in e:
            assert g[key].dtype == e[key].dtype, key
            np.testing.assert_array_equal(g[key], e[key], err_msg=key)


@pytest.fixture
def two_files(tmp_path):
    seqs1, seqs2 = make_seqs([4, 7, 1], seed=1), make_seqs([9, 2], seed=2)
    tags1, tags2 = ["f1/s0", "f1/s1", "f1/s2"], ["f2/s0", "f2/s1"]
    p1, p2 = str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")
    write_hdf(p1, seqs1, tags1, SPECS, labels=LABELS)
    write_hdf(p2, seqs2, tags2, SPECS)
    return [p1, p2], seqs1 + seqs2, tags1 + tags2


def test_round_trip_several_files(two_files):
    files, seqs, tags = two_files
    ds = HDFDataset(files, name="train")
    assert ds.num_seqs == 5
    assert ds.seq_tags == tags
    assert list(ds.specs) == ["data", "align", "classes", "feats"]  # inputs first, then sorted targets
    assert ds.specs == {k: SPECS[k] for k in ds.specs}
    assert ds.labels == LABELS  # first file's labels; the placeholder of 'align'/'feats' is dropped
    for key in SPECS:
        assert ds.seq_lens[key].tolist() == [len(s[key]) for s in seqs]
    order = [4, 0, 2, 2, 3, 1]  # across files, unsorted, with a repeat
    assert_seqs_equal(ds.get_seqs(order), [seqs[i] for i in order])
    assert ds.get_seqs([]) == []


def test_sparse_inputs_and_data_only(tmp_path):
    specs = {"data": DataSpec(7, sparse=True, dtype="int32")}
    seqs = make_seqs([3, 0, 5], specs=specs)
    path = str(tmp_path / "sparse.hdf")
    write_hdf(path, seqs, ["a", "b", "c"], specs)
    with h5py.File(path, "r") as f:
        assert f["inputs"].shape == (8,) and f.attrs["inputPattSize"] == 7
        assert f["seqLengths"].shape == (3, 2)  # RETURNN's dummy 'classes' column
        assert "targets" not in f
    ds = HDFDataset([path])
    assert ds.specs == specs
    assert ds.seq_lens["data"].tolist() == [3, 0, 5]
    assert_seqs_equal(ds.get_seqs([2, 1, 0]), seqs[::-1])


def test_targets_only(tmp_path):
    specs = {"classes": DataSpec(5, sparse=True, dtype="int32"), "feats": DataSpec(2)}
    seqs = make_seqs([2, 6], specs=specs)
    path = str(tmp_path / "t.hdf")
    write_hdf(path, seqs, ["a", "b"], specs)
    ds = HDFDataset([path])
    assert list(ds.specs) == ["classes", "feats"]
    assert_seqs_equal(ds.get_seqs([1, 0]), seqs[::-1])


def test_root_attrs(two_files):
    files, seqs, _ = two_files
    with h5py.File(files[0], "r") as f:
        assert f.attrs["numSeqs"] == 3
        assert f.attrs["numTimesteps"] == sum(len(s["data"]) for s in seqs[:3])
        assert f.attrs["inputPattSize"] == 3 and f.attrs["numDims"] == 1
        assert f.attrs["numLabels"] == 5  # the classes dim, which old configs read as num_outputs
        assert f["seqLengths"].dtype == np.int32
        assert f["seqLengths"][1].tolist() == [7, 7, 3, 7]  # data, then align, classes, feats
        assert f["targets/size"].attrs["classes"].tolist() == [5, 1]


def test_lazy_open_and_pickle(two_files):
    files, seqs, _ = two_files
    ds = HDFDataset(files)
    assert ds._handles == {}  # construction reads metadata only and closes the files
    ds.get_seqs([0, 4])
    assert len(ds._handles) == 2
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {}
    assert_seqs_equal(clone.get_seqs([3, 1]), [seqs[3], seqs[1]])
    ds.close()
    assert_seqs_equal(ds.get_seqs([2]), [seqs[2]])  # reopens after close


class _CountingDataset:
    """Wraps an h5py.Dataset and counts slice reads."""

    def __init__(self, ds, counter):
        self.ds, self.counter = ds, counter

    def __getitem__(self, item):
        self.counter.append(item)
        return self.ds[item]


def test_reads_are_merged(tmp_path, monkeypatch):
    seqs = make_seqs(list(range(1, 41)), seed=3)
    path = str(tmp_path / "many.hdf")
    write_hdf(path, seqs, [f"s{i}" for i in range(40)], SPECS)
    ds = HDFDataset([path])
    reads: list = []
    original = HDFDataset._h5_dataset
    monkeypatch.setattr(HDFDataset, "_h5_dataset", lambda self, f, k: _CountingDataset(original(self, f, k), reads))
    order = np.random.RandomState(0).permutation(40)
    assert_seqs_equal(ds.get_seqs(order), [seqs[i] for i in order])
    assert len(reads) == len(SPECS)  # one read per key for a contiguous set of seqs
    reads.clear()
    ds.get_seqs([0, 39])  # far apart: two separate reads per key, not the whole file
    assert len(reads) == 2 * len(SPECS)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.hdf")
    with pytest.raises(DataError, match="nope.hdf.*does not exist"):
        HDFDataset([path])


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.hdf"
    path.write_bytes(b"this is not hdf5\n" * 10)
    with pytest.raises(DataError, match="garbage.hdf.*not a readable HDF5 file") as info:
        HDFDataset([str(path)])
    assert "\n" not in str(info.value)


def test_missing_and_corrupt_datasets(tmp_path):
    path = str(tmp_path / "plain.hdf")
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=np.zeros((3, 2), "float32"))
    with pytest.raises(DataError, match="plain.hdf.*no 'seqLengths'"):
        HDFDataset([path])
    trunc = str(tmp_path / "trunc.hdf")
    write_hdf(trunc, make_seqs([4, 5]), ["a", "b"], SPECS)
    with h5py.File(trunc, "r+") as f:
        f["seqLengths"][1, 0] = 50
    with pytest.raises(DataError, match="trunc.hdf.*'inputs' has 9 rows but seqLengths sum to 54"):
        HDFDataset([trunc])


def test_mismatched_dims_across_files(tmp_path):
    p1, p2 = str(tmp_path / "one.hdf"), str(tmp_path / "two.hdf")
    write_hdf(p1, make_seqs([2]), ["a"], SPECS)
    other = dict(SPECS, data=DataSpec(4))
    write_hdf(p2, make_seqs([2], specs=other), ["b"], other)
    with pytest.raises(DataError, match=r"one.hdf.*two.hdf.*'data'.*dim 3.*dim 4"):
        HDFDataset([p1, p2], name="train")
    p3 = str(tmp_path / "three.hdf")
    fewer = {"data": DataSpec(3)}
    write_hdf(p3, make_seqs([2], specs=fewer), ["c"], fewer)
    with pytest.raises(DataError, match=r"one.hdf.*three.hdf.*different data keys"):
        HDFDataset([p1, p3])


def test_atomic_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.hdf"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"key 'data' has shape \(2, 5\), expected \[T, 3\]"):
        with HDFWriter(str(path), SPECS) as writer:
            writer.add_seq("ok", make_seqs([2])[0])
            writer.add_seq("bad", dict(make_seqs([2])[0], data=np.zeros((2, 5))))
    assert sorted(os.listdir(tmp_path)) == ["out.hdf"]
    assert path.read_bytes() == b"old"  # untouched on error
    writer = HDFWriter(str(path), SPECS)
    assert len(os.listdir(tmp_path)) == 2  # the temp file is in the same directory
    writer.add_seq("s", make_seqs([3])[0])
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["out.hdf"]
    assert HDFDataset([str(path)]).seq_tags == ["s"]



@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_file_has_the_mode_open_would_give(tmp_path, umask):
    # Not mkstemp's 0o600: other users of a shared cluster must be able to read the HDF.
    path = tmp_path / "out.hdf"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)  # a replaced file does not pass its mode on either
    old = os.umask(umask)
    try:
        write_hdf(str(path), make_seqs([2]), ["s"], SPECS)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert HDFDataset([str(path)]).seq_tags == ["s"]

def test_writer_streams_in_blocks(tmp_path, monkeypatch):
    import returnn_ray.data.hdf as hdf

    monkeypatch.setattr(hdf, "_FLUSH_BYTES", 100)  # flush after nearly every seq
    seqs = make_seqs([5, 1, 8, 3], seed=4)
    path = str(tmp_path / "stream.hdf")
    write_hdf(path, seqs, list("abcd"), SPECS)
    assert_seqs_equal(HDFDataset([path]).get_seqs(range(4)), seqs)


# -- differential tests against RETURNN -------------------------------------------------------------


def _returnn_hdf(files):
    hdf = pytest.importorskip("returnn.datasets.hdf")
    ds = hdf.HDFDataset(files=files)
    ds.initialize()
    ds.init_seq_order(epoch=1)
    ds.load_seqs(0, ds.num_seqs)
    return ds


def test_returnn_reads_our_files(two_files):
    files, seqs, tags = two_files
    theirs = _returnn_hdf(files)
    ours = HDFDataset(files)
    assert theirs.num_seqs == ours.num_seqs
    assert sorted(theirs.get_data_keys()) == sorted(ours.specs)
    assert [theirs.get_tag(i) for i in range(theirs.num_seqs)] == ours.seq_tags == tags
    assert theirs.labels["classes"] == LABELS["classes"] and theirs.labels["data"] == LABELS["data"]
    for key, spec in ours.specs.items():
        assert theirs.get_data_dim(key) == spec.dim
        assert theirs.is_data_sparse(key) == spec.sparse
    got = [{k: theirs.get_data(i, k) for k in ours.specs} for i in range(theirs.num_seqs)]
    assert_seqs_equal(got, seqs)


def test_returnn_reads_our_sparse_input_file(tmp_path):
    specs = {"data": DataSpec(7, sparse=True, dtype="int32")}
    seqs = make_seqs([3, 1, 5], specs=specs)
    path = str(tmp_path / "sparse.hdf")
    write_hdf(path, seqs, ["a", "b", "c"], specs)
    theirs = _returnn_hdf([path])
    assert theirs.get_data_dim("data") == 7 and theirs.is_data_sparse("data")
    assert_seqs_equal([{"data": theirs.get_data(i, "data")} for i in range(3)], seqs)


@pytest.mark.parametrize("sparse_inputs", [False, True])
def test_we_read_returnn_simple_hdf_writer(tmp_path, sparse_inputs):
    hdf = pytest.importorskip("returnn.datasets.hdf")
    path = str(tmp_path / "returnn.hdf")
    rng = np.random.RandomState(5)
    lens = [4, 2, 6]
    if sparse_inputs:
        inputs = rng.randint(0, 11, size=(3, 6)).astype("int32")
        writer = hdf.SimpleHDFWriter(path, dim=11, ndim=1, labels=[f"w{i}" for i in range(11)])
    else:
        inputs = rng.standard_normal((3, 6, 3)).astype("float32")
        writer = hdf.SimpleHDFWriter(path, dim=3)
    classes = rng.randint(0, 5, size=(3, 6)).astype("int32")
    scores = rng.standard_normal((3, 6, 2)).astype("float32")
    tags = ["x/1", "x/2", "x/3"]
    # One seq per batch: RETURNN's extra keys take the full padded time axis of their batch.
    for i in range(3):
        extra = {"classes": classes[i : i + 1, : lens[i]], "scores": scores[i : i + 1, : lens[i]]}
        writer.insert_batch(inputs[i : i + 1, : lens[i]], [lens[i]], [tags[i]], extra=extra)
    writer.close()

    theirs = _returnn_hdf([path])
    ours = HDFDataset([path])
    assert ours.seq_tags == [theirs.get_tag(i) for i in range(3)] == tags
    assert sorted(ours.specs) == sorted(theirs.get_data_keys()) == ["classes", "data", "scores"]
    for key, spec in ours.specs.items():
        assert (spec.dim, spec.sparse) == (theirs.get_data_dim(key), theirs.is_data_sparse(key)), key
        assert spec.dtype == theirs.get_data_dtype(key)
    expected = [{k: theirs.get_data(i, k) for k in ours.specs} for i in range(3)]
    assert_seqs_equal(ours.get_seqs([0, 1, 2]), expected)
    assert_seqs_equal(ours.get_seqs([2, 0]), [expected[2], expected[0]])
    if sparse_inputs:
        assert ours.labels == {"data": theirs.labels["data"]}
    else:
        assert ours.labels == {}  # RETURNN's placeholders ('dummy-label', empty root labels) are not vocabularies


def test_relative_paths_become_absolute(two_files, monkeypatch, tmp_path):
    files, seqs, _ = two_files
    monkeypatch.chdir(os.path.dirname(files[0]))
    ds = HDFDataset([os.path.basename(files[0])])
    monkeypatch.chdir(tmp_path.parent)  # a Ray worker reads from another working directory
    assert ds.files == [files[0]]
    assert_seqs_equal(pickle.loads(pickle.dumps(ds)).get_seqs([1]), [seqs[1]])


# -- row counts and seq tags that do not add up ----------------------------------------------------------


def _raw_hdf(path, lens, *, input_rows=None, class_rows=None, tags=None):
    """A RETURNN HDF file written with h5py directly: ``inputs`` ``[rows, 3]`` with each row's value its
    row number, ``targets/data/classes`` ``[rows]``, and seqLengths from ``lens`` (data = classes)."""
    n = len(lens)
    rows = sum(lens)
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=np.repeat(np.arange(input_rows or rows, dtype="float32")[:, None], 3, 1))
        f.create_dataset("targets/data/classes", data=np.zeros(rows if class_rows is None else class_rows, "int32"))
        f.create_group("targets/size").attrs["classes"] = np.array([4, 1], "int32")
        f.create_dataset("seqLengths", data=np.array([[t, t] for t in lens], "int32").reshape(n, 2))
        names = tags or [f"s{i}" for i in range(n)]
        f.create_dataset("seqTags", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs["inputPattSize"] = 3


def test_rows_that_match_seq_lengths_read_each_seq_its_own_frames(tmp_path):
    path = str(tmp_path / "ok.hdf")
    _raw_hdf(path, [2, 3, 1])
    seqs = HDFDataset([path]).get_seqs([0, 1, 2])
    assert [s["data"][:, 0].tolist() for s in seqs] == [[0, 1], [2, 3, 4], [5]]


@pytest.mark.parametrize(
    "rows, culprit",
    [
        ({"input_rows": 7}, "'inputs' has 7 rows but seqLengths sum to 6 for key 'data'"),  # a seq would read another's
        ({"input_rows": 5}, "'inputs' has 5 rows but seqLengths sum to 6 for key 'data'"),
        ({"class_rows": 9}, "'targets/data/classes' has 9 rows but seqLengths sum to 6 for key 'classes'"),
        ({"class_rows": 4}, "'targets/data/classes' has 4 rows but seqLengths sum to 6 for key 'classes'"),
    ],
)
def test_rows_that_disagree_with_seq_lengths_are_refused_when_opened(tmp_path, rows, culprit):
    path = str(tmp_path / "bad.hdf")
    _raw_hdf(path, [2, 3, 1], **rows)
    with pytest.raises(DataError) as info:
        HDFDataset([path], name="train")
    assert "bad.hdf" in str(info.value) and culprit in str(info.value) and "\n" not in str(info.value)


def test_duplicate_tags_within_and_across_files(tmp_path):
    a, b = str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")
    _raw_hdf(a, [1, 1, 1], tags=["x", "y", "x"])
    _raw_hdf(b, [1, 1], tags=["y", "z"])
    ds = HDFDataset([a, b], name="train")
    assert ds.duplicate_tags() == {"x": [0, 2], "y": [1, 3]}
    message = ds.duplicate_tags_message()
    assert message == (
        f"dataset 'train': 2 seq tag(s) occur more than once: 'x' (2x in {a!r}), 'y' (2x in {a!r}, {b!r})"
    )
    with pytest.raises(DataError, match=r"'x' \(2x in .*a\.hdf'\).*the forward output would hold a tag twice"):
        ds.check_unique_tags("the forward output")
    assert HDFDataset([b]).duplicate_tags_message() is None
    HDFDataset([b]).check_unique_tags("the forward output")


def test_duplicate_tags_count_only_the_seqs_a_seq_list_keeps(tmp_path):
    from returnn_ray.data import SeqListFilteredDataset

    a = str(tmp_path / "a.hdf")
    _raw_hdf(a, [1, 1, 1, 1], tags=["x", "y", "x", "y"])
    listed = tmp_path / "list.txt"
    listed.write_text("y\n")
    filtered = SeqListFilteredDataset(HDFDataset([a], name="dev"), str(listed))
    assert filtered.duplicate_tags() == {"y": [1, 3]}
    assert "'x'" not in filtered.duplicate_tags_message()


def test_int_seq_tags_read_as_strings(tmp_path):
    path = str(tmp_path / "int_tags.hdf")
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=np.zeros((3, 2), "float32"))
        f.create_dataset("seqLengths", data=np.array([[2, 0], [1, 0]], "int32"))
        f.create_dataset("seqTags", data=np.array([7, 8]))
    assert HDFDataset([path]).seq_tags == ["7", "8"]


@pytest.mark.parametrize("files", [5, [None], [3.5], {"a.hdf": 1}])
def test_files_that_are_not_paths(files):
    with pytest.raises(DataError, match=r"dataset 'train': HDFDataset files must be a list of HDF file paths, got "):
        HDFDataset(files, name="train")
