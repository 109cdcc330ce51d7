"""A config's ``forward_callback`` (RETURNN's ``ForwardCallbackIface``), differentially against RETURNN.

One config, run unchanged by ``python -m returnn`` (its torch engine's ``forward_with_callback``)
and by ``python -m returnn_ray`` on 2 forward actors: the callback records, per ``process_seq``,
the seq tag, the outputs' dims and values; both records must agree seq by seq, in the same
order (RETURNN sorts an HDF corpus longest first), with ``init`` once before and ``finish``
once after. The forward step also marks the seq's number read from ``extern_data["seq_tag"]``,
so the tags the step sees are checked against the tags the callback gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from returnn_ray.cli import main
from returnn_ray.data import DataSpec, write_hdf

CONFIG = '''#!returnn.py
import json, os
import torch
import returnn.frontend as rf
from returnn.tensor import Dim, batch_dim
from returnn.forward_iface import ForwardCallbackIface

_HERE = os.path.dirname(os.path.abspath(__file__))
backend = "torch"
task = "forward"
time_dim = Dim(None, name="time")
in_dim = Dim(9, name="in")
out_dim = Dim(2, name="out")
extern_data = {"data": {"dims": (batch_dim, time_dim, in_dim), "dtype": "float32"}}
model_outputs = {
    "output": {"dims": (batch_dim, time_dim, out_dim), "dtype": "float32"},
    "tag_id": {"dims": (batch_dim,), "dtype": "int64"},
}
eval = {"class": "HDFDataset", "files": [os.path.join(_HERE, "data.hdf")]}
batch_size = 40
max_seqs = 3
load = os.path.join(_HERE, "ckpt.pt")


def get_model(**_kwargs):
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def forward_step(*, model, extern_data, **_kwargs):
    data = extern_data["data"]
    ctx = rf.get_run_ctx()
    ctx.mark_as_output(torch.log_softmax(model(data.raw_tensor), dim=-1), "output", dims=(batch_dim, time_dim, out_dim))
    ids = [int(str(tag).split("-")[1]) for tag in extern_data["seq_tag"].raw_tensor]
    ctx.mark_as_output(torch.tensor(ids, dtype=torch.int64), "tag_id", dims=(batch_dim,))


class Recorder(ForwardCallbackIface):
    def init(self, *, model):
        self.events = [["init", type(model).__name__]]

    def process_seq(self, *, seq_tag, outputs):
        out = outputs["output"]
        self.events.append([
            "seq", seq_tag, [d.name for d in out.dims], [int(d.get_dim_value()) for d in out.dims],
            out.dims[1] is out_dim, type(out.raw_tensor).__name__, out.raw_tensor.tolist(),
            int(outputs["tag_id"].raw_tensor),
        ])

    def finish(self):
        self.events.append(["finish"])
        with open(os.path.join(os.getcwd(), "record.json"), "w") as f:
            json.dump(self.events, f)


forward_callback = Recorder
'''


def _setup(tmp_path, lens) -> str:
    rng = np.random.RandomState(0)
    seqs = [{"data": rng.standard_normal((n, 9)).astype("float32")} for n in lens]
    write_hdf(str(tmp_path / "data.hdf"), seqs, [f"utt-{i}" for i in range(len(lens))], {"data": DataSpec(9)})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 0}, tmp_path / "ckpt.pt")
    config = tmp_path / "fwd.config"
    config.write_text(CONFIG)
    return str(config)


def _returnn_record(config: str, out) -> list:
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "returnn", config], capture_output=True, text=True, env=env,
                          timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


def _assert_same_records(ours: list, theirs: list) -> None:
    assert ours[0] == theirs[0] and ours[-1] == theirs[-1] == ["finish"]
    assert [e[1] for e in ours[1:-1]] == [e[1] for e in theirs[1:-1]]  # the same tags, in RETURNN's order
    for mine, want in zip(ours[1:-1], theirs[1:-1]):
        assert mine[:6] == want[:6], (mine[:6], want[:6])  # tag, dims, sizes, the config's Dim, numpy
        np.testing.assert_allclose(np.asarray(mine[6]), np.asarray(want[6]), rtol=1e-5, atol=1e-6, err_msg=mine[1])
        assert mine[7] == want[7] == int(mine[1].split("-")[1])  # the step saw the seq's own tag


def test_forward_callback_sees_what_returnns_engine_gives_it_on_two_actors(ray_session, tmp_path, monkeypatch):
    lens = [5, 17, 9, 23, 2, 11, 30, 8, 14, 4, 19, 6]
    config = _setup(tmp_path, lens)
    theirs = _returnn_record(config, tmp_path / "returnn")
    assert [e[1] for e in theirs[1:-1]] == [f"utt-{i}" for i in np.argsort(lens, kind="stable")[::-1]]
    (tmp_path / "ours").mkdir()
    monkeypatch.chdir(tmp_path / "ours")
    assert main([config, "++ray_num_workers", "2"]) == 0
    ours = json.loads((tmp_path / "ours" / "record.json").read_text())
    _assert_same_records(ours, theirs)
    assert not (tmp_path / "dump-fwd-epoch001.hdf").exists() and not list(tmp_path.glob("ours/*.hdf*"))
