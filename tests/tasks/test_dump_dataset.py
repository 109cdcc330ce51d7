"""``returnn-ray dump-dataset``: what a (shard of an) epoch reads, and bad input as one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from returnn_ray.data import DataSpec, Task12AXDataset, write_hdf

BASE = {
    "train": {"class": "Task12AXDataset", "num_seqs": 30, "seq_ordering": "laplace:.10"},
    "num_inputs": 9,
    "num_outputs": 2,
    "batch_size": 300,
    "max_seqs": 4,
}


def dump(tmp_path, *args, config=None):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(BASE if config is None else config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "returnn_ray", "dump-dataset", str(path), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def lines(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_seqs_of_an_epoch_in_returnns_order(tmp_path):
    ds = Task12AXDataset(30, seq_ordering="laplace:.10")
    got = lines(dump(tmp_path, "--epoch", "3"))
    assert [r["seq_idx"] for r in got] == ds.seq_order_for_epoch(3).tolist()
    assert got[0]["seq_tag"] == f"seq-{got[0]['seq_idx']}"
    assert got[0]["len"]["data"] == ds.seq_lens["data"][got[0]["seq_idx"]]


def test_shards_partition_the_epoch_and_keep_its_order(tmp_path):
    full = [r["seq_idx"] for r in lines(dump(tmp_path, "--epoch", "2"))]
    shards = [[r["seq_idx"] for r in lines(dump(tmp_path, "--epoch", "2", "--shard", f"{k}/3"))] for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(full)
    for shard in shards:
        positions = [full.index(i) for i in shard]
        assert positions == sorted(positions)


def test_batches(tmp_path):
    got = lines(dump(tmp_path, "--batches"))
    assert [r["batch"] for r in got] == list(range(len(got)))
    assert all(1 <= len(r["seq_tags"]) <= 4 and r["padded_frames"] <= 300 for r in got)


def _hdf(tmp_path, dim: int) -> str:
    path = str(tmp_path / f"d{dim}.hdf")
    seqs = [{"data": np.zeros((3, dim), "float32"), "classes": np.zeros(3, "int32")}]
    write_hdf(path, seqs, ["a"], {"data": DataSpec(dim), "classes": DataSpec(2, sparse=True, dtype="int32")})
    return path


@pytest.mark.parametrize(
    "change, culprit",
    [
        ({"train": {"class": "Task12AXDatset", "num_seqs": 5}}, "Task12AXDatset"),
        ({"train": {"class": "Task12AXDataset", "num_seqs": 5, "seq_ordering": "shuffle"}}, "shuffle"),
        ({"train": "/nonexistent/train.hdf"}, "/nonexistent/train.hdf"),
        ({"train": "CORRUPT"}, "corrupt.hdf"),
        ({"train": "DIM40"}, "40"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_seqs": 0}, "max_seqs"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, change, culprit):
    config = {**BASE, **change}
    if config["train"] == "CORRUPT":
        (tmp_path / "corrupt.hdf").write_bytes(b"not an hdf file" * 10)
        config["train"] = str(tmp_path / "corrupt.hdf")
    if config["train"] == "DIM40":
        config["train"] = _hdf(tmp_path, 40)
    before = set(os.listdir(tmp_path))
    proc = dump(tmp_path, config=config)
    assert proc.returncode == 2, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert culprit in errors[0]
    assert proc.stdout == ""
    assert set(os.listdir(tmp_path)) == before | {"c.json"}


def test_override_without_value(tmp_path):
    proc = dump(tmp_path, "++batch_size")
    assert proc.returncode == 2 and "batch_size" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "train, args, extra, culprit",
    [
        ({"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 5}, ["--epoch", "4"], {},
         "epoch 4 (sub-epoch 4 of partition_epoch 5) has no seqs: partition_epoch 5 > 3 seqs"),
        ({"class": "Task12AXDataset", "num_seqs": 20}, ["--batches"], {"max_seq_length": 10},
         "epoch 1 has no seqs: max_seq_length 10 drops all 20 seqs"),
        ({"class": "Task12AXDataset", "num_seqs": 3, "seq_ordering": "default_every_n:5"}, [], {},
         "seq_ordering 'default_every_n:5' uses 3 // 5 * 5 = 0 of its 3 seqs"),
    ],
)
def test_an_empty_epoch_is_one_line_exit_2_not_empty_output(tmp_path, train, args, extra, culprit):
    proc = dump(tmp_path, *args, config={**BASE, "train": train, **extra})
    errors = [l for l in proc.stderr.splitlines() if l.startswith("returnn-ray: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert culprit in errors[0] and "dataset 'train'" in errors[0]
    assert proc.stdout == ""


def test_the_epochs_before_an_empty_one_dump(tmp_path):
    config = {**BASE, "train": {"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 5}}
    assert [r["seq_idx"] for r in lines(dump(tmp_path, "--epoch", "3", config=config))] == [2]


# -- MetaDataset and RETURNN's classes through RETURNN's implementation ------------------------------------

GENERIC_CONFIGS = {
    "MetaDataset": """{"class": "MetaDataset", "seq_order_control_dataset": "feat", "seq_ordering": "sorted",
        "datasets": {"feat": {"class": "HDFDataset", "files": [HDF0], "seq_ordering": "laplace:.2"},
                     "more": {"class": "HDFDataset", "files": [HDF0]}},
        "data_map": {"data": ("feat", "data"), "also": ("more", "data")}}""",
    "ConcatDataset": """{"class": "ConcatDataset", "datasets": [{"class": "HDFDataset", "files": [HDF0]},
                                                    {"class": "HDFDataset", "files": [HDF1]}]}""",
    "CombinedDataset": """{"class": "CombinedDataset", "seq_ordering": "random",
        "datasets": {"a": {"class": "HDFDataset", "files": [HDF0]}, "b": {"class": "HDFDataset", "files": [HDF1]}},
        "data_map": {("a", "data"): "data", ("b", "data"): "data"}}""",
    "DistributeFilesDataset": """{"class": "DistributeFilesDataset", "files": [HDF0, HDF1], "partition_epoch": 2,
        "get_sub_epoch_dataset": lambda files: {"class": "HDFDataset", "files": files, "seq_ordering": "random"},
        "use_worker_proc": False}""",
    "OggZipDataset": """{"class": "OggZipDataset", "path": OGG, "audio": {"num_feature_filters": 3}, "targets": None,
        "seq_ordering": "sorted"}""",
    "LmDataset": """{"class": "LmDataset", "corpus_file": TXT, "orth_symbols_file": SYMBOLS,
        "seq_ordering": "random"}""",
}


@pytest.mark.parametrize("cls", sorted(GENERIC_CONFIGS))
def test_dump_other_classes_in_returnns_order(tmp_path, cls):
    pytest.importorskip("returnn.datasets.basic")
    from tests.data.test_returnn_generic import returnn_epoch, write_ogg_zip  # here: it skips without returnn

    names = {"HDF0": _hdf_seqs(tmp_path, "a", [3, 1, 4]), "HDF1": _hdf_seqs(tmp_path, "b", [2, 5]),
             "OGG": write_ogg_zip(str(tmp_path / "corpus.zip"), [0.3, 0.21, 0.25]),
             "TXT": str(tmp_path / "corpus.txt"), "SYMBOLS": str(tmp_path / "symbols.txt")}
    (tmp_path / "corpus.txt").write_text("ab\nb a\naab\n")
    (tmp_path / "symbols.txt").write_text("[END]\n \na\nb\n")
    head = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    config = tmp_path / "c.config"
    config.write_text(f"#!rnn.py\n{head}train = {GENERIC_CONFIGS[cls]}\nbatch_size = 10000\nmax_seqs = 2\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = [sys.executable, "-m", "returnn_ray", "dump-dataset", str(config), "--epoch", "2"]
    got = lines(subprocess.run(run, capture_output=True, text=True, env=env, timeout=300))
    namespace: dict = {}
    exec(head + f"train = {GENERIC_CONFIGS[cls]}", namespace)  # the same dict RETURNN would get from the config
    tags, _ = returnn_epoch({"seq_ordering": "default", **namespace["train"]}, 2)
    assert [r["seq_tag"] for r in got] == tags


def _hdf_seqs(tmp_path, name: str, lens: list[int]) -> str:
    path = str(tmp_path / f"{name}.hdf")
    seqs = [{"data": np.full((t, 2), i, "float32")} for i, t in enumerate(lens)]
    write_hdf(path, seqs, [f"{name}-{i}" for i in range(len(lens))], {"data": DataSpec(2)})
    return path
