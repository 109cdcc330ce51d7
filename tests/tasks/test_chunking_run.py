"""``chunking`` end to end: a network-dict training run and ``dump-dataset`` use RETURNN's chunks.

The oracle is RETURNN's own code on RETURNN's Task12AXDataset (the dataset of its 12AX LSTM demos,
which set ``chunking = "200:200"``): ``Dataset.iterate_seqs`` for a network dict (TF engine), the
torch engine's ``ChunkingIterDataPipe`` for a config without one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest

returnn_datasets = pytest.importorskip("returnn.datasets.basic")
pipeline = pytest.importorskip("returnn.torch.data.pipeline")

TRAIN = {"class": "Task12AXDataset", "num_seqs": 30, "seq_ordering": "random"}


def _run(tmp_path, config: dict, *args) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "returnn_ray", *args, str(path)], capture_output=True, text=True, env=env, timeout=300
    )


def _returnn_dataset(**chunking):
    ds = returnn_datasets.init_dataset({**TRAIN, **chunking})
    ds.init_seq_order(epoch=1)
    return ds


def test_a_network_dict_run_trains_on_returnns_chunks(tmp_path):
    config = {
        "task": "train", "train": TRAIN, "num_inputs": 9, "num_outputs": 2, "chunking": "20:10",
        "network": {"output": {"class": "rec", "unit": "lstm", "n_out": 2, "loss": "ce"}},
        "batch_size": 200, "max_seqs": 8, "num_epochs": 1, "learning_rate": 0.01, "log_verbosity": 4,
        "ray_local_mode": True, "log": str(tmp_path / "train.log"),
    }
    proc = _run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"epoch 1: (\d+) seqs, frames per loss (\{.*\})", (tmp_path / "train.log").read_text())
    chunks = list(_returnn_dataset(chunking="20:10").iterate_seqs(used_data_keys={"data", "classes"}))
    assert int(m.group(1)) == len(chunks) > 30  # every chunk is a seq of the epoch
    frames = sum(end["classes"] - start["classes"] for _, start, end in chunks)
    assert ast.literal_eval(m.group(2))["cost:output"] == frames  # the loss saw exactly the chunks' frames


def test_dump_dataset_shows_the_torch_engines_chunks(tmp_path):
    config = {"train": TRAIN, "num_inputs": 9, "num_outputs": 2, "batch_size": 300, "chunking": "25:10"}
    proc = _run(tmp_path, config, "dump-dataset")
    assert proc.returncode == 0, proc.stderr
    ours = [json.loads(line) for line in proc.stdout.splitlines()]
    ds = _returnn_dataset()
    ds.load_seqs(0, ds.num_seqs)
    seqs = [
        {"data": ds.get_data(i, "data"), "classes": ds.get_data(i, "classes"), "seq_idx": ds.get_corpus_seq_idx(i)}
        for i in range(ds.num_seqs)
    ]
    theirs = list(pipeline.ChunkingIterDataPipe(seqs, "25:10"))
    assert [(r["seq_idx"], r["len"]["data"], r["len"]["classes"]) for r in ours] == [
        (int(c["seq_idx"]), len(c["data"]), len(c["classes"])) for c in theirs
    ]
    assert len(ours) > ds.num_seqs and ours[1]["chunk"]["data"][0] in (0, 10)
