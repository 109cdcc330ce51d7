"""The bad-input table: malformed configs, command lines and data files, each run through the real CLI.

Every row runs ``python -m returnn_ray CONFIG [args]`` in a subprocess (no ``RAY_ADDRESS``) in a
fresh directory and checks what a user sees: exit code 2, exactly one ``returnn-ray: error:``
line on stderr that names the culprit (key, file, layer, value), no traceback, and no file left
behind (no checkpoint, learning_rate_file, output file, or anything else new in the directory).

The rows run once, two at a time, in a module fixture; each test only reads its row's result.
The ids read like the table in the security notes (``docs/``): ``json-syntax-error`` etc.
That JSON and line configs and ``++key value`` overrides are data, never code: tests/test_config_is_data.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Union

import numpy as np
import pytest

from returnn_ray.data import DataSpec
from tests.hostile_files import (
    HDF_SPECS, checkpoint, hdf, hdf_with_extra_row, hdf_without_data, no_targets, pickle_that_runs_code, random_bytes,
    set_value, torch_file, truncated_hdf, wider_data, zero_length,
)

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------ the configs

#: A small valid training config (Task12AX: 9-dim one-hot data, 2 classes); rows change a part.
#: ``{tmp}`` is the row's directory; everything the run could write goes under ``{tmp}/out``.
BASE = {
    "task": "train",
    "train": {"class": "Task12AXDataset", "num_seqs": 5},
    "num_inputs": 9,
    "num_outputs": 2,
    "network": {"output": {"class": "softmax", "loss": "ce"}},
    "batch_size": 400,
    "num_epochs": 1,
    "learning_rate": 0.01,
    "model": "{tmp}/out/model",
    "learning_rate_file": "{tmp}/out/learning_rates",
}

#: BASE as a Python config.
PY_BASE = "#!rnn.py\n" + "".join(f"{k} = {v!r}\n" for k, v in BASE.items())

#: The same as BASE reading ``{tmp}/data.hdf`` (3-dim features, 4 classes): the HDF rows write it.
HDF_BASE = {
    **BASE,
    "train": {"class": "HDFDataset", "files": ["{tmp}/data.hdf"]},
    "num_inputs": 3,
    "num_outputs": 4,
}

#: For forward: an ``eval`` set, a model prefix without checkpoints, the output in ``{tmp}/out``.
FORWARD_BASE = {**BASE, "task": "forward", "eval": BASE["train"], "output_file": "{tmp}/out/fwd.hdf"}

#: A Python config whose in-memory StaticDataset has a NaN feature in its second seq.
STATIC_NAN_CONFIG = """#!rnn.py
import numpy
task = "train"
train = {"class": "StaticDataset", "output_dim": {"classes": 2}, "data": [
    {"data": numpy.zeros((3, 2), "float32"), "classes": numpy.array([0, 1, 1])},
    {"data": numpy.array([[0.0, float("nan")]], "float32"), "classes": numpy.array([1])},
]}
network = {"output": {"class": "softmax", "loss": "ce"}}
model = "{tmp}/out/model"
num_epochs = 1
"""

Content = Union[str, bytes, dict, Callable[[str], None]]


def changed(base: dict, **changes) -> dict:
    """``base`` with keys set (a value None removes the key)."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------ the table


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad input: the files of its directory and the command line, and what the error names."""

    files: dict[str, Content]
    """File name -> content: text or bytes as they are, a dict as JSON, a function writes it
    (given the path); ``{tmp}`` in text and in dict strings is the row's directory. A name ending
    in ``/`` is an empty directory."""
    args: tuple[str, ...]
    """The command line after ``python -m returnn_ray``; ``{tmp}`` is replaced."""
    culprit: tuple[str, ...]
    """Every one of these must be in the error line."""


def row(args, culprit, files=None, *, id: str, marks=()):
    files = {"bad.json": BASE} if files is None else files
    culprit = (culprit,) if isinstance(culprit, str) else tuple(culprit)
    return pytest.param(Row(files, tuple(args), culprit), id=id, marks=marks)


TABLE = [
    # ---- config files: each format's syntax, and the file itself
    row(["bad.config"], ("bad.config:3:", "SyntaxError"),
        {"bad.config": "#!rnn.py\ntask = 'train'\nbatch_size = (400\n"}, id="python-config-syntax-error"),
    row(["bad.py"], ("bad.py:2:", "SyntaxError"),
        {"bad.py": "task = 'train'\nif True\n    num_epochs = 1\n"}, id="py-file-syntax-error"),
    row(["bad.config"], ("bad.config:2:", "ModuleNotFoundError", "no_such_module_xyz"),
        {"bad.config": "#!rnn.py\nimport no_such_module_xyz\n"}, id="python-config-import-error"),
    row(["bad.json"], ("bad.json:3:", "invalid JSON"),
        {"bad.json": '{"task": "train",\n "batch_size": 400,\n ,"num_epochs": 1}\n'}, id="json-syntax-error"),
    row(["bad.json"], ("bad.json:1:", "invalid JSON", "Extra data"),
        {"bad.json": '{"task": "train"} {"num_epochs": 1}\n'}, id="json-trailing-data"),
    row(["bad.json"], ("bad.json", "cannot read config file"),
        {"bad.json": b'{"task": "tr\xffain"}\n'}, id="config-not-utf8"),
    row(["bad.config"], ("bad.config:2:", "expected 'key value'", "batch_size"),
        {"bad.config": "task train\nbatch_size\n"}, id="line-config-key-without-value"),
    row(["bad.config"], ("batch_size", "expected an int", "abc"),
        {"bad.config": "task train\nbatch_size abc\n"}, id="line-config-int-not-int"),
    row(["nope.config"], ("config file not found", "nope.config"), {}, id="config-file-missing"),
    row(["dir.config"], ("dir.config", "is a directory"), {"dir.config/": ""}, id="config-file-is-directory"),
    row(["empty.config"], ("train", "dataset"), {"empty.config": "# nothing\n"}, id="empty-config-train-without-data"),
    row(["bad.json", "--config", "{tmp}/missing.config"], ("config file not found", "missing.config"),
        id="option-config-file-missing"),
    # ---- the command line
    row(["bad.json", "++batch_size", "abc"], ("batch_size", "'abc'"), id="override-batch-size-not-int"),
    row(["bad.json", "++num_epochs", "-1"], ("num_epochs", "-1"), id="override-num-epochs-negative"),
    row(["bad.json", "++learning_rate", "x"], ("learning_rate", "'x'"), id="override-learning-rate-not-float"),
    row(["bad.json", "++learning_rate", "__import__('os')"], ("learning_rate", "__import__"),
        id="override-code-is-not-run"),
    row(["bad.json", "++num_epochs"], ("++num_epochs", "needs a value"), id="override-without-value"),
    row(["bad.json", "--frobnicate", "1"], ("--frobnicate", "unknown option"), id="unknown-option"),
    row(["bad.json", "++ray_num_workers", "0"], ("ray_num_workers", "0"), id="ray-num-workers-zero"),
    row(["bad.json", "-z", "0"], ("max_seqs", "0"), id="max-seqs-zero"),
    row(["bad.json", "++batch_size", "0"], ("batch_size", "0"), id="batch-size-zero"),
    row(["bad.json", "-c", "10:x"], ("chunking", "'10:x'", "size:step"), id="chunking-not-size-step"),
    row(["bad.json", "++chunking", "10:5", "++chunking_variance", "0.3"], ("chunking_variance", "0.3"),
        id="chunking-variance-with-network"),
    row(["bad.json", "++window", "3"], ("window", "3", "set it to 1"), id="window-not-1"),
    row(["bad.json", "-x", "tran"], ("task", "'tran'"), id="unknown-task"),
    row(["bad.config", "++maximize_grad_norm", "1e-6"], ("maximize_grad_norm", "torch engine", "set it to 0"),
        {"bad.config": "#!rnn.py\ntask = 'train'\ndef get_model(**kwargs): pass\ndef train_step(**kwargs): pass\n"},
        id="maximize-grad-norm-with-get-model"),
    row(["bad.json"], ("torch_distributed", "reduce_type", "'sum'"),
        {"bad.json": changed(BASE, torch_distributed={"reduce_type": "sum"})}, id="torch-distributed-unknown-reduce-type"),
    row(["bad.json"], ("torch_distributed", "dataset_distribution", "'random_seed_offset'", "shard"),
        {"bad.json": changed(BASE, torch_distributed={"dataset_distribution": "random_seed_offset"})},
        id="torch-distributed-random-seed-offset"),
    row(["bad.json"], ("torch_distributed", "unknown option", "'reduce_typ'"),
        {"bad.json": changed(BASE, torch_distributed={"reduce_typ": "grad"})}, id="torch-distributed-unknown-option"),
    row(["bad.config"], ("chunking 10:5", "forward each chunk", "'eval'", "++chunking 0"),
        {"bad.config": "#!rnn.py\ntask = 'forward'\neval = {'class': 'Task12AXDataset', 'num_seqs': 5}\n"
                       "num_inputs = 9\nnum_outputs = 2\nchunking = '10:5'\nmodel = '{tmp}/out/model'\n"
                       "def get_model(**kwargs): pass\ndef forward_step(**kwargs): pass\n"},
        id="forward-of-chunked-torch-config"),
    row(["bad.json", "++device", "tpu"], ("device", "'tpu'"), id="unknown-device"),
    row(["bad.json", "++device", "gpu"], ("device", "gpu", "no GPU"), id="device-gpu-without-gpu"),
    row(["dump-dataset", "bad.json", "--shard", "2/2"], ("--shard", "2/2"), id="dump-dataset-bad-shard"),
    row(["dump-dataset", "bad.json", "--shard", "0/99999999999999999999"], ("--shard", "99999999999999999999"),
        id="dump-dataset-shard-overflow"),
    row(["bad.json", "-i", "0"], ("save_interval", "0"), id="save-interval-zero"),
    row(["bad.json", "-r", "-0.5"], ("learning_rate", "-0.5"), id="learning-rate-negative"),
    row(["bad.json", "++learning_rate", "nan"], ("learning_rate", "nan", "in [0, 1e+30]"), id="learning-rate-nan"),
    row(["bad.json", "++learning_rate", "1e38"], ("learning_rate", "1e+38", "in [0, 1e+30]"), id="learning-rate-overflows-float32"),
    row(["bad.json", "++learning_rate_file", "/proc/lr"], ("learning_rate_file", "/proc/lr", "fix `learning_rate_file`"),
        id="learning-rate-file-unwritable"),
    row(["bad.json", "++log", "{tmp}/nope/x.log"], ("log", "nope/x.log", "does not exist"), id="log-dir-missing"),
    row(["bad.json", "++ray_address", "http://"], ("ray_address", "'http://'"), id="ray-address-http"),
    row(["bad.config"], ("self.config", "includes itself"),
        {"bad.config": "task train\ninclude self.config\n", "self.config": "include self.config\n"},
        id="line-config-includes-itself"),
    row(["a.config"], ("a.config -> b.config -> a.config", "includes itself"),
        {"a.config": "include b.config\n", "b.config": "include a.config\n"}, id="line-configs-include-each-other"),
    # ---- datasets
    row(["bad.json"], ("train", "Task12AXDatset", "Task12AXDataset"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDatset", "num_seqs": 5})}, id="unknown-dataset-class"),
    row(["bad.json"], ("train", "'class'"),
        {"bad.json": changed(BASE, train={"num_seqs": 5})}, id="dataset-dict-without-class"),
    row(["bad.json"], ("train", "ExternSprintDataset", "RASR", "HDFDataset"),
        {"bad.json": changed(BASE, train={"class": "ExternSprintDataset", "sprintTrainerExecPath": "rasr"})},
        id="sprint-dataset-class"),
    row(["bad.json"], ("train", "OggZipDataset", "nope.zip"),
        {"bad.json": changed(BASE, train={"class": "OggZipDataset", "path": "nope.zip", "audio": {}, "targets": None})},
        id="returnn-dataset-class-fails"),
    row(["bad.json"], ("train", "data_map['data']", "'b'"),
        {"bad.json": changed(BASE, train={"class": "MetaDataset", "datasets": {"a": {"class": "Task12AXDataset",
                                                                              "num_seqs": 5}},
                                          "data_map": {"data": ["b", "data"]}})}, id="meta-dataset-unknown-sub"),
    row(["bad.json"], ("train", "sub-dataset 'b'", "'seq-3'"),
        {"bad.json": changed(BASE, train={"class": "MetaDataset", "datasets": {
            "a": {"class": "Task12AXDataset", "num_seqs": 5}, "b": {"class": "Task12AXDataset", "num_seqs": 3}},
            "data_map": {"data": ["a", "data"], "classes": ["b", "classes"]}})}, id="meta-dataset-missing-tag"),
    row(["bad.json"], ("train", "'num_seq'", "num_seqs"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seq": 5})}, id="dataset-option-typo"),
    row(["bad.json"], ("train", "sorted_backwards"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 5, "seq_ordering": "sorted_backwards"})},
        id="unknown-seq-ordering"),
    row(["bad.json"], ("train", "laplace:xx"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 5, "seq_ordering": "laplace:xx"})},
        id="malformed-laplace"),
    row(["bad.json"], ("train", "laplace:99999999999999999999999", "too large"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 5,
                                          "seq_ordering": "laplace:99999999999999999999999"})},
        id="laplace-overflow"),
    row(["bad.json"], ("train", "partition_epoch", "0"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 5, "partition_epoch": 0})},
        id="partition-epoch-zero"),
    row(["bad.json"], ("train", "num_seqs", "0"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 0})}, id="task12ax-zero-seqs"),
    row(["bad.json"], ("train", "random_seed_offset", "-5", "seed"),
        {"bad.json": changed(BASE, train={**BASE["train"], "seq_ordering": "random", "random_seed_offset": -5})},
        id="random-seed-offset-gives-a-negative-seed"),
    row(["bad.json"], ("train", "fixed_random_seed", str(2**40), "seed"),
        {"bad.json": changed(BASE, train={**BASE["train"], "fixed_random_seed": 2**40})},
        id="fixed-random-seed-above-numpy-range"),
    row(["bad.json"], ("train", "input_max_value", "0"),
        {"bad.json": changed(BASE, train={"class": "DummyDataset", "input_dim": 9, "output_dim": 2, "num_seqs": 3,
                                          "input_max_value": 0})}, id="dummy-dataset-input-max-value-zero"),
    row(["bad.json"], ("train", "epoch 4", "partition_epoch 5 > 3 seqs"),
        {"bad.json": changed(BASE, num_epochs=5, train={"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 5})},
        id="empty-sub-epoch-partition-epoch-above-seqs"),
    row(["bad.json"], ("train", "epoch 1", "max_seq_length 10 drops all 5 seqs"),
        {"bad.json": changed(BASE, max_seq_length=10)}, id="max-seq-length-drops-every-seq"),
    row(["bad.json"], ("train", "default_every_n:9", "5 seqs"),
        {"bad.json": changed(BASE, train={"class": "Task12AXDataset", "num_seqs": 5, "seq_ordering": "default_every_n:9"})},
        id="default-every-n-above-seq-count"),
    row(["bad.json"], ("train", "'data'", "dim 9", "10"),
        {"bad.json": changed(BASE, num_inputs=None, num_outputs=None,
                             extern_data={"data": {"dim": 10}, "classes": {"dim": 2, "sparse": True}})},
        id="extern-data-dim-vs-dataset"),
    row(["bad.json"], ("train", "'classes'", "sparse", "dense"),
        {"bad.json": changed(BASE, num_inputs=None, num_outputs=None,
                             extern_data={"data": {"dim": 9}, "classes": {"dim": 2}})},
        id="extern-data-dense-vs-sparse-labels"),
    # ---- network, optimizer, learning-rate control
    row(["bad.json"], ("'output'", "'n_ou'", "n_out"),
        {"bad.json": changed(BASE, network={"output": {"class": "softmax", "loss": "ce", "n_ou": 2}})},
        id="layer-option-typo"),
    row(["bad.json"], ("'output'", "'cee'"),
        {"bad.json": changed(BASE, network={"output": {"class": "softmax", "loss": "cee"}})}, id="unknown-loss"),
    row(["bad.json"], ("'output'", "n_out", "3", "2"),
        {"bad.json": changed(BASE, network={"output": {"class": "softmax", "loss": "ce", "n_out": 3}})},
        id="n-out-vs-target-dim"),
    row(["bad.json"], ("'hidden'", "n_out 1000000000000", "memory"),
        {"bad.json": changed(BASE, network={"hidden": {"class": "linear", "n_out": 10**12},
                                            "output": {"class": "softmax", "loss": "ce", "from": "hidden"}})},
        id="layer-too-large"),
    row(["bad.json"], ("optimizer", "'adamm'"),
        {"bad.json": changed(BASE, optimizer={"class": "adamm"})}, id="unknown-optimizer"),
    row(["bad.json"], ("optimizer", "'epsilonn'", "'epsilon'"),
        {"bad.json": changed(BASE, optimizer={"class": "adam", "epsilonn": 1e-8})}, id="optimizer-option-typo"),
    row(["bad.json"], ("optimizer", "'os.system'", "not a torch.optim.Optimizer"),
        {"bad.json": changed(BASE, optimizer={"class": "os.system"})}, id="optimizer-class-is-a-function"),
    row(["bad.config"], ("epoch_start", "function RETURNN calls"),
        {"bad.config": PY_BASE + "def epoch_start(**kwargs):\n    pass\n"}, id="returnn-function-not-implemented"),
    row(["bad.config"], ("dynamic_learning_rate", "**kwargs"),
        {"bad.config": PY_BASE + "def dynamic_learning_rate(global_train_step, learning_rate):\n    return learning_rate\n"},
        id="dynamic-learning-rate-without-kwargs"),
    row(["bad.json"], ("gradient_noise", "not supported"),
        {"bad.json": changed(BASE, gradient_noise=0.1)}, id="updater-option-not-implemented"),
    row(["bad.json"], ("learning_rate_control", "'newbobb'"),
        {"bad.json": changed(BASE, learning_rate_control="newbobb")}, id="unknown-learning-rate-control"),
    row(["bad.json"], ("learning_rates", "epoch 2", "-1"),
        {"bad.json": changed(BASE, learning_rates=[0.1, -1])}, id="learning-rates-negative-entry"),
    row(["bad.json"], ("cleanup_old_models", "keep_last_n", "0"),
        {"bad.json": changed(BASE, cleanup_old_models={"keep_last_n": 0})}, id="cleanup-old-models-keep-last-zero"),
    row(["bad.json"], ("cleanup_old_models", "'keep_lats_n'"),
        {"bad.json": changed(BASE, cleanup_old_models={"keep_lats_n": 2})}, id="cleanup-old-models-typo"),
    row(["bad.json"], ("cleanup_old_models", "'sometimes'"),
        {"bad.json": changed(BASE, cleanup_old_models="sometimes")}, id="cleanup-old-models-not-bool"),
    row(["bad.json"], ("learning_rates", "abc"),
        {"bad.json": changed(BASE, learning_rates="abc")}, id="learning-rates-not-numbers"),
    row(["bad.json"], ("learning_rate_file", "learning_rates"),
        {"bad.json": BASE, "out/learning_rates": "this is not a learning-rate file\n"},
        id="learning-rate-file-corrupt"),
    # ---- HDF files
    row(["bad.json"], ("nope.hdf", "does not exist"),
        {"bad.json": changed(HDF_BASE, train={"class": "HDFDataset", "files": ["{tmp}/nope.hdf"]})},
        id="hdf-file-missing"),
    row(["bad.json"], ("data.hdf", "not a readable HDF5 file"),
        {"bad.json": HDF_BASE, "data.hdf": random_bytes}, id="hdf-random-bytes"),
    row(["bad.json"], ("data.hdf",), {"bad.json": HDF_BASE, "data.hdf": truncated_hdf}, id="hdf-truncated"),
    row(["bad.json"], ("train", "'data'"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(specs={"classes": HDF_SPECS["classes"]})}, id="hdf-without-inputs"),
    row(["bad.json"], ("data.hdf", "neither 'inputs' nor 'targets"),
        {"bad.json": HDF_BASE, "data.hdf": hdf_without_data}, id="hdf-without-any-data"),
    row(["bad.json"], ("train", "no seqs"), {"bad.json": HDF_BASE, "data.hdf": hdf(n=0)}, id="hdf-zero-seqs"),
    row(["bad.json"], ("data.hdf", "more.hdf", "'data'", "dim 3", "dim 5"),
        {"bad.json": changed(HDF_BASE, train={"class": "HDFDataset", "files": ["{tmp}/data.hdf", "{tmp}/more.hdf"]}),
         "data.hdf": hdf(), "more.hdf": hdf(specs={**HDF_SPECS, "data": DataSpec(5)}, edit=wider_data)},
        id="hdf-files-disagree-on-dim"),
    row(["bad.json"], ("train", "'data'", "dim 3", "5"),
        {"bad.json": changed(HDF_BASE, num_inputs=5), "data.hdf": hdf()}, id="num-inputs-vs-hdf-dim"),
    row(["bad.json"], ("train", "'classes'", "dim 4", "6"),
        {"bad.json": changed(HDF_BASE, num_outputs=6), "data.hdf": hdf()}, id="num-outputs-vs-hdf-dim"),
    row(["bad.json"], ("train", "files", "list of HDF file paths", "5"),
        {"bad.json": changed(HDF_BASE, train={"class": "HDFDataset", "files": 5})}, id="hdf-files-not-a-list"),
    row(["bad.json"], ("train", "epoch 1", "length 0", "'data'"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(zero_length)}, id="hdf-only-zero-length-seqs"),
    row(["bad.json"], ("epoch 1", "loss", "no frames", "length 0"),
        {"bad.json": changed(HDF_BASE, network={"output": {"class": "softmax", "loss": "ctc"}}),
         "data.hdf": hdf(no_targets)}, id="hdf-ctc-targets-all-empty"),
    row(["bad.json"], ("data.hdf", "'inputs' has 17 rows", "sum to 16"),
        {"bad.json": HDF_BASE, "data.hdf": hdf_with_extra_row("inputs")}, id="hdf-inputs-rows-disagree-with-seq-lengths"),
    row(["bad.json"], ("data.hdf", "'targets/data/classes' has 17 rows", "sum to 16"),
        {"bad.json": HDF_BASE, "data.hdf": hdf_with_extra_row("targets/data/classes")},
        id="hdf-target-rows-disagree-with-seq-lengths"),
    row(["bad.json"], ("data.hdf", "seq-1", "'data'", "nan"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(set_value(1, "data", (2, 1), np.nan))}, id="hdf-nan-in-features"),
    row(["bad.json"], ("data.hdf", "seq-0", "'data'", "inf"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(set_value(0, "data", (4, 0), -np.inf))}, id="hdf-inf-in-features"),
    row(["bad.json"], ("data.hdf", "seq-2", "'classes'", "7", "4"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(set_value(2, "classes", 1, 7))}, id="hdf-label-out-of-range"),
    row(["bad.json"], ("data.hdf", "seq-1", "'classes'", "-1"),
        {"bad.json": HDF_BASE, "data.hdf": hdf(set_value(1, "classes", 0, -1))}, id="hdf-negative-label"),
    row(["bad.json"], ("tags.pkl", "system", "plain data"),
        {"bad.json": changed(BASE, train={**BASE["train"], "seq_list_filter_file": "{tmp}/tags.pkl"}),
         "tags.pkl": pickle_that_runs_code}, id="seq-list-pickle-with-code"),
    row(["static.config"], ("StaticDataset", "seq 1", "'data'", "nan"),
        {"static.config": STATIC_NAN_CONFIG}, id="static-dataset-nan-in-features"),
    # ---- weights from other files (import_model_train_epoch1, preload_from_files)
    row(["bad.json"], ("nope.pt", "import_model_train_epoch1"),
        {"bad.json": changed(BASE, import_model_train_epoch1="{tmp}/nope.pt")}, id="import-model-missing"),
    row(["bad.json"], ("preload_from_files['lm']", "lm.pt", "does not exist"),
        {"bad.json": changed(BASE, preload_from_files={"lm": {"filename": "{tmp}/lm.pt", "init_for_train": True}})},
        id="preload-file-missing"),
    row(["bad.json"], ("preload_from_files['lm']", "lm.pt", "none of the model's parameters"),
        {"bad.json": changed(BASE, preload_from_files={"lm": {"filename": "{tmp}/lm.pt", "init_for_train": True}}),
         "lm.pt": torch_file({"model": {"lm.weight": [0.0]}})}, id="preload-file-other-model"),
    # ---- forward, search, eval
    row(["bad.json", "++load", "{tmp}/nope.pt"], ("nope.pt", "load"), {"bad.json": FORWARD_BASE},
        id="forward-load-missing"),
    row(["bad.json"], ("no checkpoint", "model"), {"bad.json": FORWARD_BASE}, id="forward-without-checkpoint"),
    row(["bad.json"], ("'eval'", "'seq-0'", "data.hdf", "more.hdf", "forward output"),
        {"bad.json": changed(FORWARD_BASE, num_inputs=3, num_outputs=4,
                             eval={"class": "HDFDataset", "files": ["{tmp}/data.hdf", "{tmp}/more.hdf"]}),
         "data.hdf": hdf(), "more.hdf": hdf()}, id="forward-duplicate-seq-tags"),
    row(["bad.json", "-x", "search"], ("search_output_file",), {"bad.json": changed(FORWARD_BASE, model=None)},
        id="search-without-output-file"),
    row(["bad.json", "-x", "eval"], ("eval", "dataset"), id="eval-without-dataset"),
    # ---- sweeps: every trial's config and the sweep dir are checked before Ray starts
    row(["sweep", "bad.json", "--grid", "batch_size=0,abc", "--dir", "{tmp}/out/sweep"],
        ("sweep trial batch_size=0", "batch_size must be > 0"), id="sweep-grid-value-invalid"),
    row(["sweep", "bad.json", "--grid", "batch_size=400,abc", "--dir", "{tmp}/out/sweep"],
        ("sweep trial batch_size=abc", "'batch_size'", "'abc'"), id="sweep-grid-value-wrong-type"),
    row(["sweep", "bad.json", "--grid", "learning_rate", "--dir", "{tmp}/out/sweep"],
        ("--grid 'learning_rate'", "key=value1,value2"), id="sweep-grid-without-equals"),
    row(["sweep", "bad.json", "--grid", "learning_rate=0.1", "--grid", "learning_rate=0.2", "--dir", "{tmp}/out/sweep"],
        ("'learning_rate'", "given twice"), id="sweep-grid-key-twice"),
    row(["sweep", "bad.json", "--grid", "model=a,b", "--dir", "{tmp}/out/sweep"],
        ("'model'", "cannot be swept"), id="sweep-grid-per-trial-key"),
    row(["sweep", "bad.json", "--variants", "v.json", "--dir", "{tmp}/out/sweep"],
        ("sweep trial variant=v", "v.json:2:", "invalid JSON"), {"bad.json": BASE, "v.json": '{"learning_rate":\n'},
        id="sweep-variant-file-invalid"),
    # Task12AX's 5 seqs (at most 97 frames) fill max_seqs 2 long before 400 or 800 frames: the same batches
    row(["sweep", "bad.json", "--grid", "batch_size=400,800", "++max_seqs", "2", "--dir", "{tmp}/out/sweep"],
        ("sweep trials batch_size=400 and batch_size=800", "same batches", "max_seqs 2 binds first", "--batches"),
        id="sweep-grid-batch-size-same-batches"),
    row(["sweep", "bad.json", "--variants", "a.json", "b.json", "c.json", "--dir", "{tmp}/out/sweep"],
        ("sweep trials variant=a and variant=c", "same batches"),
        {"bad.json": changed(BASE, max_seqs=2), "a.json": {"learning_rate": 0.1, "batch_size": 400},
         "b.json": {"learning_rate": 0.2, "batch_size": 400}, "c.json": {"learning_rate": 0.1, "batch_size": 800}},
        id="sweep-variants-same-batches"),
    row(["sweep", "bad.json", "--grid", "learning_rate=0.1", "--dir", "/proc/returnn-ray-sweep"],
        ("/proc/returnn-ray-sweep", "sweep_dir", "--dir"), id="sweep-dir-not-creatable"),
    row(["sweep", "bad.json", "--grid", "learning_rate=0.1", "--dir", "{tmp}/bad.json"],
        ("bad.json", "is a file", "--dir"), id="sweep-dir-is-a-file"),
    # Task12AX's 5 seqs have 84, 15, 65, 97, 45 frames: a training-only length filter would drop some
    row(["bad.json"], ("max_seq_length 50", "would drop 3 of the 5 seqs", "'eval'", "++max_seq_length 0"),
        {"bad.json": changed(FORWARD_BASE, max_seq_length=50)}, id="forward-max-seq-length-drops-seqs"),
    row(["bad.json", "-x", "search"], ("min_seq_length 20", "would drop 1 of the 5 seqs", "++min_seq_length 0"),
        {"bad.json": changed(FORWARD_BASE, min_seq_length=20, search_output_file="{tmp}/out/hyps.py")},
        id="search-min-seq-length-drops-seqs"),
    row(["bad.json"], ("'eval'", "partition_epoch 2", "only 3 of its seqs"),
        {"bad.json": changed(FORWARD_BASE, eval={**BASE["train"], "partition_epoch": 2})}, id="forward-partition-epoch"),
    row(["bad.json"], ("seq_ordering 'random_sample'", "'eval'", "more than once", "every seq once"),
        {"bad.json": changed(FORWARD_BASE, eval={**BASE["train"], "num_seqs": 20, "seq_ordering": "random_sample"})},
        id="forward-random-sample-order"),
    row(["bad.json"], ("output_file", "bad.json' is a file, not a directory"),
        {"bad.json": changed(FORWARD_BASE, output_file="{tmp}/bad.json/sub/fwd.hdf"), "out/model.001.pt": checkpoint},
        id="forward-output-file-under-a-file"),
    row(["bad.json"], ("output_file", "data.hdf", "is an input of this run"),
        {"bad.json": changed(HDF_BASE, task="forward", eval=HDF_BASE["train"], output_file="{tmp}/data.hdf",
                             forward_override_hdf_output=True),
         "data.hdf": hdf(), "out/model.001.pt": checkpoint}, id="forward-output-file-is-the-input-hdf"),
    row(["bad.json", "-x", "search"], ("search_output_file", "hyps", "is a directory"),
        {"bad.json": changed(FORWARD_BASE, search_output_file="{tmp}/out/hyps"), "out/hyps/": "",
         "out/model.001.pt": checkpoint}, id="search-output-file-is-a-directory"),
    row(["bad.json", "-x", "search", "++beam_size", "0"], ("beam_size", "0"),
        {"bad.json": changed(FORWARD_BASE, search_output_file="{tmp}/out/hyps.py"), "out/model.001.pt": checkpoint},
        id="search-beam-size-zero"),
]


# ------------------------------------------------------------------------------------ running it


@dataclasses.dataclass
class Result:
    proc: subprocess.CompletedProcess
    new_files: list[str]
    seconds: float


def _subst(value, tmp: str):
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, dict):
        return {k: _subst(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, tmp) for v in value]
    return value


def _all_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir()}


def run_row(r: Row, directory: Path) -> Result:
    """Writes the row's files into ``directory``, runs the CLI there, and lists the files it left."""
    directory.mkdir(parents=True)
    (directory / "out").mkdir()
    tmp = str(directory)
    for name, content in r.files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(_subst(content, tmp))
        elif isinstance(content, dict):
            path.write_text(json.dumps(_subst(content, tmp), indent=1))
        else:
            content(str(path))
    before = _all_files(directory)
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", *(_subst(a, tmp) for a in r.args)],
        capture_output=True, text=True, cwd=directory, env=env, timeout=300,
    )
    return Result(proc, sorted(_all_files(directory) - before), time.monotonic() - start)


@pytest.fixture(scope="module")
def results(tmp_path_factory, request) -> dict[str, Result]:
    """The result of every selected row, run two at a time (the rows are independent processes)."""
    base = tmp_path_factory.mktemp("bad_input")
    selected = {
        item.callspec.id for item in request.session.items if getattr(item, "originalname", None) == "test_bad_input"
    }
    rows = {p.id: p.values[0] for p in TABLE if p.id in selected}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_row, r, base / name) for name, r in rows.items()}
        return {name: f.result() for name, f in futures.items()}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_table_ids_are_unique_and_many():
    ids = [p.id for p in TABLE]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("r", TABLE)
def test_bad_input(r: Row, results, request):
    name = request.node.callspec.id
    if name == "device-gpu-without-gpu" and _has_gpu():
        pytest.skip("this machine has a GPU")
    res = results[name]
    print(f"{res.seconds:.1f} s: {res.proc.stderr.strip()[-300:]}")
    stderr = res.proc.stderr
    errors = [line for line in stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    assert res.proc.returncode == 2, (res.proc.returncode, stderr)
    missing = [c for c in r.culprit if c not in errors[0]]
    assert not missing, f"{missing} not in: {errors[0]}"
    assert not res.new_files, f"left behind: {res.new_files}"


def test_hdf_value_check_is_exact(tmp_path):
    """A float sum that merely overflows is no NaN; a bad value in another file names that file's seq."""
    from returnn_ray.data import HDFDataset
    from returnn_ray.errors import DataError

    directory = str(tmp_path)
    big = hdf(set_value(0, "data", slice(None), 3e38))
    big(f"{directory}/a.hdf")
    hdf(set_value(1, "classes", 2, 4))(f"{directory}/b.hdf")
    ds = HDFDataset([f"{directory}/a.hdf", f"{directory}/b.hdf"])
    ds.get_seqs([0, 1, 2])
    with pytest.raises(DataError, match=r"b\.hdf': seq 'seq-1' key 'classes' has a label 4 outside \[0, 4\).* at frame 2"):
        ds.get_seqs([2, 3, 4])


def test_an_error_from_a_ray_task_prints_as_its_own_one_line_message():
    ray_exceptions = pytest.importorskip("ray.exceptions")
    from returnn_ray.cluster.ray_internals import user_message
    from returnn_ray.errors import DataError

    original = DataError("HDF file 'x.hdf': seq 'a' key 'data' has a non-finite value nan at frame 2")
    remote_traceback = f"Traceback ...\n  File hdf.py, line 1, in check\nreturnn_ray.errors.DataError: {original}\n"
    remote = ray_exceptions.RayTaskError("read", remote_traceback, original).as_instanceof_cause()
    assert isinstance(remote, DataError) and "\n" in str(remote)
    assert user_message(remote) == str(original)
    # rewrapped with its class and a text by a caller (its cause is then that text): the last error line
    assert user_message(type(remote)(f"{remote} (worker rank 0)")) == str(original)
    assert user_message(DataError("two\nlines")) == "two lines"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "returnn_ray", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)



def test_duplicate_seq_tags_are_one_warning_line_for_training(tmp_path):
    """Training uses every seq whatever its tag, so a tag twice (here: the same file listed twice over)
    is a warning naming the tags and files, and the run goes on; forward/search refuse it (row
    ``forward-duplicate-seq-tags``)."""
    hdf()(str(tmp_path / "data.hdf"))
    hdf()(str(tmp_path / "more.hdf"))
    config = changed(HDF_BASE, train={"class": "HDFDataset", "files": ["{tmp}/data.hdf", "{tmp}/more.hdf"]})
    (tmp_path / "c.json").write_text(json.dumps(_subst(config, str(tmp_path))))
    proc = _run(["c.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "seq tag" in line]
    assert len(warnings) == 1 and warnings[0].startswith("returnn-ray: warning: dataset 'train': 3 seq tag(s)"), proc.stderr
    assert all(s in warnings[0] for s in ("'seq-0'", "data.hdf", "more.hdf")), warnings[0]
