"""RETURNN's other dataset classes through RETURNN's implementation (returnn_ray.data.returnn_generic):
per epoch the same seqs in the same order with the same data as RETURNN's class itself, after the
dataset went through pickle (as it does to each Ray Data reader)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from returnn_ray.data import DataSpec, ReturnnDataset, init_dataset, plan_epoch, write_hdf
from returnn_ray.data.batching import BatchingOptions
from returnn_ray.data.ray_data import pad_batch
from returnn_ray.errors import ConfigError, DataError

basic = pytest.importorskip("returnn.datasets.basic")


def write_ogg_zip(path: str, durations: list[float], sr: int = 16000) -> str:
    """A tiny corpus in RETURNN's OggZipDataset layout: ``<name>.txt`` (a list of dicts) + ``<name>/*.ogg``."""
    sf = pytest.importorskip("soundfile")
    name = os.path.splitext(os.path.basename(path))[0]
    entries = []
    with zipfile.ZipFile(path, "w") as z:
        for i, d in enumerate(durations):
            t = np.arange(int(d * sr)) / sr
            buf = io.BytesIO()
            sf.write(buf, (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype("float32"), sr, format="OGG")
            z.writestr(f"{name}/s{i}.ogg", buf.getvalue())
            entries.append({"file": f"s{i}.ogg", "text": f"seq {i}", "duration": d, "seq_name": f"rec/{i}"})
        z.writestr(f"{name}.txt", repr(entries))
    return path


def write_hdfs(tmp_path, lens_per_file: list[list[int]], dim: int = 2) -> list[str]:
    paths = []
    for f, lens in enumerate(lens_per_file):
        seqs = [{"data": np.full((t, dim), 10 * f + i, "float32")} for i, t in enumerate(lens)]
        paths.append(str(tmp_path / f"part{f}.hdf"))
        write_hdf(paths[-1], seqs, [f"f{f}-{i}" for i in range(len(lens))], {"data": DataSpec(dim)})
    return paths


def sub_epoch_hdf(files):
    """DistributeFilesDataset's get_sub_epoch_dataset."""
    return {"class": "HDFDataset", "files": files, "seq_ordering": "random"}


def returnn_epoch(spec, epoch):
    ds = basic.init_dataset(dict(spec))
    ds.initialize()
    ds.init_seq_order(epoch=epoch)
    tags, seqs, i = [], [], 0
    while ds.is_less_than_num_seqs(i):
        ds.load_seqs(i, i + 1)
        tags.append(ds.get_tag(i))
        seqs.append({k: ds.get_data(i, k) for k in ds.get_data_keys() if ds.get_data_dtype(k) != "string"})
        i += 1
    return tags, seqs


def assert_equals_returnn(spec, epochs=(1, 2, 3)):
    ours = init_dataset(spec, name="train")
    assert isinstance(ours, ReturnnDataset)
    reader = pickle.loads(pickle.dumps(ours))  # as a Ray Data reader gets it
    for epoch in epochs:
        tags, seqs = returnn_epoch(spec, epoch)
        order = ours.seq_order_for_epoch(epoch)
        assert [ours.seq_tags[i] for i in order] == tags, epoch
        for index, got, want in zip(order, reader.get_seqs(order.tolist()), seqs):
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])
                assert ours.seq_lens[key][index] == len(want[key])
    return ours


ORDERS = [{}, {"seq_ordering": "sorted"}, {"seq_ordering": "sorted_reverse"}, {"seq_ordering": "random"},
          {"seq_ordering": "laplace:.2", "partition_epoch": 2}, {"seq_ordering": "random", "random_seed_offset": 4}]


@pytest.mark.parametrize("order", ORDERS)
def test_ogg_zip_equals_returnn(tmp_path, order):
    path = write_ogg_zip(str(tmp_path / "corpus.zip"), [0.5, 0.31, 0.42, 0.2, 0.33, 0.31])
    spec = {"class": "OggZipDataset", "path": path, "audio": {"num_feature_filters": 5}, "targets": None, **order}
    ours = assert_equals_returnn(spec)
    assert ours.specs["data"] == DataSpec(5) and "raw" not in ours.specs  # the string key is left out


@pytest.mark.parametrize("order", ORDERS[:4])
def test_lm_dataset_equals_returnn(tmp_path, order):
    (tmp_path / "corpus.txt").write_text("hello world\nab\nba ab\nworld\na\n")
    (tmp_path / "symbols.txt").write_text("\n".join(["[END]", " ", *"abdehlorw"]) + "\n")
    spec = {"class": "LmDataset", "corpus_file": str(tmp_path / "corpus.txt"),
            "orth_symbols_file": str(tmp_path / "symbols.txt"), **order}
    ours = assert_equals_returnn(spec)
    assert ours.specs["data"].sparse


def test_concat_dataset_equals_returnn(tmp_path):
    files = write_hdfs(tmp_path, [[3, 1, 4], [2, 5]])
    subs = [{"class": "HDFDataset", "files": [files[0]]},
            {"class": "HDFDataset", "files": [files[1]], "seq_ordering": "sorted"}]  # a sub-dataset's own order
    spec = {"class": "ConcatDataset", "datasets": subs}
    assert_equals_returnn(spec)


def test_concat_dataset_other_order_is_returnns_error(tmp_path):
    files = write_hdfs(tmp_path, [[3, 1], [2]])
    spec = {"class": "ConcatDataset", "datasets": [{"class": "HDFDataset", "files": [f]} for f in files]}
    ours = init_dataset(spec, name="dev")  # dev defaults to "sorted", which RETURNN's ConcatDataset cannot do
    with pytest.raises(DataError, match=r"^dataset 'dev': RETURNN's ConcatDataset failed building it: "
                                        r"NotImplementedError: seq_ordering sorted$"):
        ours.seq_order_for_epoch(1)


@pytest.mark.parametrize("order", [{}, {"seq_ordering": "random"}, {"seq_ordering": "sorted", "partition_epoch": 2}])
def test_combined_dataset_equals_returnn(tmp_path, order):
    files = write_hdfs(tmp_path, [[3, 1, 4], [2, 5]])
    spec = {"class": "CombinedDataset", "datasets": {f"d{i}": {"class": "HDFDataset", "files": [f]}
                                                     for i, f in enumerate(files)},
            "data_map": {("d0", "data"): "data", ("d1", "data"): "data"}, **order}
    assert_equals_returnn(spec)


@pytest.mark.parametrize("order", [{"partition_epoch": 2}, {"partition_epoch": 2, "seq_ordering": "random"}])
def test_distribute_files_dataset_equals_returnn(tmp_path, order):
    files = write_hdfs(tmp_path, [[3, 1], [4, 2], [5], [2, 2, 1]])
    spec = {"class": "DistributeFilesDataset", "files": files, "get_sub_epoch_dataset": sub_epoch_hdf,
            "use_worker_proc": False, **order}
    ours = assert_equals_returnn(spec, epochs=(1, 2, 3, 4))
    # the sub-epochs of a full epoch together visit every seq once, as RETURNN deals the files
    full = np.concatenate(ours.sub_epoch_orders(1))
    assert sorted(full.tolist()) == list(range(ours.num_seqs))


def test_distrib_shard_files_is_refused(tmp_path):
    files = write_hdfs(tmp_path, [[3, 1], [4, 2]])
    spec = {"class": "DistributeFilesDataset", "files": files, "get_sub_epoch_dataset": sub_epoch_hdf,
            "distrib_shard_files": True}
    with pytest.raises(ConfigError, match="distrib_shard_files=True is not supported"):
        init_dataset(spec, name="train")


def test_sharding_contract_on_a_returnn_class(tmp_path):
    """Every seq of the epoch once over all ranks, equal step counts: the plan works from our corpus."""
    path = write_ogg_zip(str(tmp_path / "corpus.zip"), [0.5, 0.31, 0.42, 0.2, 0.33, 0.31, 0.25])
    ours = init_dataset({"class": "OggZipDataset", "path": path, "audio": {"num_feature_filters": 3},
                         "targets": None, "seq_ordering": "random"}, name="train")
    options = BatchingOptions(batch_size=10**6, max_seqs=2)
    plan = plan_epoch(ours.seq_order_for_epoch(1), ours.seq_lens, options, num_ranks=2)
    seen = [int(i) for rank in range(2) for batch in plan.for_rank(rank) for i in batch]
    assert sorted(seen) == list(range(ours.num_seqs))
    assert len(plan.for_rank(0)) == len(plan.for_rank(1))
    reader = pickle.loads(pickle.dumps(ours))
    batch = next(b for b in plan.for_rank(1) if len(b))
    cols = pad_batch(reader, batch)  # what each Ray Data read task does with a planned batch
    assert cols["data:lens"].tolist() == ours.seq_lens["data"][batch].tolist()
    assert cols["data"].shape == (len(batch), ours.seq_lens["data"][batch].max(), 3)


@pytest.mark.parametrize("cls", ["ExternSprintDataset", "SprintCacheDataset"])
def test_external_program_class_is_one_line(cls):
    with pytest.raises(ConfigError, match=rf"^dataset 'train': {cls} .*RASR \(Sprint\).*external program.*HDFDataset$"):
        init_dataset({"class": cls}, name="train")


def test_returnn_class_failure_is_one_line(tmp_path):
    want = r"^dataset 'train': RETURNN's OggZipDataset failed reading its corpus: FileNotFoundError: .*nope\.zip'$"
    with pytest.raises(DataError, match=want):
        init_dataset({"class": "OggZipDataset", "path": str(tmp_path / "nope.zip"), "audio": {}, "targets": None},
                     name="train")


@pytest.mark.parametrize(
    "spec",
    [
        {"class": "ConcatDataset", "datasets": ["{'class': __import__('os').system('touch {m}')}"]},
        {"class": "ConcatDataset", "datasets": ["config:__import__('os').system('touch {m}')"]},
        {"class": "OggZipDataset", "path": "x.zip", "audio": None, "targets": None,
         "targets_post_process": "__import__('os').system('touch {m}')"},
        {"class": "LmDataset", "corpus_file": "x", "seq_order_seq_lens_file": "{m}"},
    ],
)
def test_strings_returnn_would_eval_are_refused(tmp_path, spec):
    """A JSON config is data: strings RETURNN's dataset code would run as Python never reach it."""
    marker = tmp_path / "pwned"
    spec = json.loads(json.dumps(spec).replace("{m}", str(marker)))
    with pytest.raises(ConfigError, match=r"run as Python|runs the file's content"):
        init_dataset(spec, name="train")
    assert not marker.exists()
