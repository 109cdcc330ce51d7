"""``task = forward`` / ``search`` end to end on the shared local Ray: outputs RETURNN reads,
exactly once under actor deaths and interruptions, CTC search as brute force would decode."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from returnn_ray.cli import main
from returnn_ray.data.datasets import Task12AXDataset
from returnn_ray.search import ctc_beam_search

# A torch-style config: get_model/train_step/forward_step/search_step. Marker files next to it
# make an actor slow ("slow"), kill itself once mid-run ("kill-once"), as a crash would, or hold
# its first batch until N actors have one ("spread", holding N), so that each of them gets work.
TORCH_CONFIG = '''#!returnn.py
import os, signal, time
import torch
import returnn_ray.frontend as rf

_HERE = os.path.dirname(os.path.abspath(__file__))
task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 40}
eval = {"class": "Task12AXDataset", "num_seqs": %(num_eval)d, "fixed_random_seed": 2}
extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True}}
model_outputs = {"output": {"dim": 2}}
batch_size = 400
max_seqs = 3
optimizer = {"class": "adam"}
learning_rate = 0.01
num_epochs = 1
model = os.path.join(_HERE, "model")
output_file = os.path.join(_HERE, "out.hdf")


def get_model(**_kwargs):
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def train_step(*, model, extern_data, **_kwargs):
    data, classes = extern_data["data"], extern_data["classes"]
    mask = torch.arange(data.raw_tensor.shape[1])[None, :] < data.dims[1].dyn_size_ext.raw_tensor[:, None]
    logits = model(data.raw_tensor)
    ce = torch.nn.functional.cross_entropy(logits[mask], classes.raw_tensor[mask].long(), reduction="none")
    rf.get_run_ctx().mark_as_loss(name="ce", loss=ce)


def _faults():
    if os.path.exists(os.path.join(_HERE, "slow")):
        time.sleep(0.4)
    spread = os.path.join(_HERE, "spread")
    mine = os.path.join(_HERE, "actor-%%d" %% os.getpid())
    if os.path.exists(spread) and not os.path.exists(mine):
        open(mine, "w").close()
        wanted, deadline = int(open(spread).read()), time.time() + 120
        while sum(n.startswith("actor-") for n in os.listdir(_HERE)) < wanted and time.time() < deadline:
            time.sleep(0.05)
    try:
        os.rename(os.path.join(_HERE, "kill-once"), os.path.join(_HERE, "killed"))
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def forward_step(*, model, extern_data, **_kwargs):
    _faults()
    data = extern_data["data"]
    rf.get_run_ctx().expected_outputs["output"].dims[1].dyn_size_ext.raw_tensor = data.dims[1].dyn_size_ext.raw_tensor
    rf.get_run_ctx().mark_as_default_output(torch.log_softmax(model(data.raw_tensor), dim=-1))
'''


SEARCH_STEP = '''

def search_step(*, model, extern_data, beam_size, **_kwargs):
    data = extern_data["data"]
    log_probs = torch.log_softmax(model(data.raw_tensor), dim=-1)
    beams = []
    for b, n in enumerate(data.dims[1].dyn_size_ext.raw_tensor.tolist()):
        best = log_probs[b, :n].max(dim=-1)
        labels = torch.unique_consecutive(best.indices)
        beams.append([(float(best.values.sum()), labels.tolist())])
    return beams
'''


def torch_config(tmp_path, num_eval: int = 30) -> str:
    path = tmp_path / "fwd.config"
    path.write_text(TORCH_CONFIG % {"num_eval": num_eval} + SEARCH_STEP)
    return str(path)


def trained(tmp_path, num_eval: int = 30) -> str:
    config = torch_config(tmp_path, num_eval)
    assert main([config]) == 0
    return config


def expected_outputs(tmp_path, num_eval: int = 30) -> dict[str, np.ndarray]:
    """The model applied to each eval seq in this process: what the HDF must hold."""
    state = torch.load(tmp_path / "model.001.pt", weights_only=True)["model"]
    model = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    model.load_state_dict(state)
    dataset = Task12AXDataset(num_seqs=num_eval, fixed_random_seed=2)
    out = {}
    with torch.no_grad():
        for i, seq in enumerate(dataset.get_seqs(list(range(num_eval)))):
            out[dataset.seq_tags[i]] = torch.log_softmax(model(torch.from_numpy(seq["data"])), dim=-1).numpy()
    return out


def read_hdf(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        tags = [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][...]]
        lens = f["seqLengths"][:, 0]
        data = f["inputs"][...]
    starts = np.concatenate([[0], np.cumsum(lens)])
    return {tag: data[starts[i] : starts[i + 1]] for i, tag in enumerate(tags)}


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_forward_writes_every_seq_once_in_an_hdf_returnn_reads(ray_session, tmp_path):
    config = trained(tmp_path)
    assert main([config, "++task", "forward", "++ray_num_workers", "2"]) == 0
    got = read_hdf(tmp_path / "out.hdf")
    want = expected_outputs(tmp_path)
    assert list(got) == list(want)  # corpus order (the eval data's default seq_ordering)
    for tag in want:
        np.testing.assert_allclose(got[tag], want[tag], rtol=1e-5, atol=1e-6, err_msg=tag)
    assert not (tmp_path / "out.hdf.parts").exists()

    hdf = pytest.importorskip("returnn.datasets.hdf")
    ds = hdf.HDFDataset(files=[str(tmp_path / "out.hdf")])
    ds.initialize()
    ds.init_seq_order(epoch=1)
    ds.load_seqs(0, ds.num_seqs)
    assert ds.num_seqs == len(want) and ds.get_data_dim("data") == 2
    for i in range(ds.num_seqs):
        np.testing.assert_array_equal(ds.get_data(i, "data"), got[ds.get_tag(i)])


def test_a_killed_actor_is_replaced_and_the_output_is_still_complete(ray_session, tmp_path):
    config = trained(tmp_path)
    (tmp_path / "kill-once").touch()
    assert main([config, "++task", "forward", "++ray_num_workers", "2"]) == 0
    assert (tmp_path / "killed").exists()  # an actor did die mid-batch
    got, want = read_hdf(tmp_path / "out.hdf"), expected_outputs(tmp_path)
    assert list(got) == list(want)  # every seq, once, in order
    for tag in want:
        np.testing.assert_allclose(got[tag], want[tag], rtol=1e-5, atol=1e-6, err_msg=tag)


def test_an_interrupted_forward_resumes_and_equals_an_uninterrupted_one(ray_session, tmp_path):
    config = trained(tmp_path, num_eval=60)
    cmd = [sys.executable, "-m", "returnn_ray", config, "++task", "forward", "++ray_address", ray_address()]
    assert subprocess.run(cmd + ["++output_file", str(tmp_path / "full.hdf")], capture_output=True).returncode == 0

    (tmp_path / "slow").touch()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    parts = tmp_path / "out.hdf.parts"
    _wait_for_parts(parts, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole command, as a lost terminal or node would
    proc.wait()
    written = sorted(p for p in os.listdir(parts) if p.endswith(".part"))
    assert 3 <= len(written) < 20 and not (tmp_path / "out.hdf").exists()
    # Parts are not fsynced: what an OS crash could leave of two of them (see _tear).
    _tear(parts / written[0], "empty")
    _tear(parts / written[1], "zeros")

    (tmp_path / "slow").unlink()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stdout and "2 torn part(s)" in rerun.stdout, rerun.stdout
    full, resumed = read_hdf(tmp_path / "full.hdf"), read_hdf(tmp_path / "out.hdf")
    assert list(full) == list(resumed)
    for tag in full:
        np.testing.assert_array_equal(resumed[tag], full[tag], err_msg=tag)  # bitwise: same batches
    assert not parts.exists()


def _tear(path, how: str) -> None:
    """A part as an OS crash may leave it when its rename reached the disk and its data did not:
    empty (ext4's delayed allocation), or its size with zeros for data (other file systems)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "empty":
            f.truncate(0)
        else:
            f.seek(size // 2)
            f.write(bytes(size - size // 2))


@pytest.mark.parametrize("how", ["empty", "zeros"])
def test_a_torn_part_is_not_taken_as_done_and_is_deleted(tmp_path, how):
    """What the resume relies on, without Ray: parts are not fsynced, so the store checks each
    part it finds (length and CRC-32 of the payload); only whole ones count as done."""
    from returnn_ray.inference.parts import PartStore

    store = PartStore(str(tmp_path / "out.hdf"), {"task": "forward"})
    assert store.open() == set()
    payloads = {i: os.urandom(1000 + i) for i in range(3)}
    for i, payload in payloads.items():
        store.put(i, payload, bytes(range(32)))
    _tear(tmp_path / "out.hdf.parts" / "00000001.part", how)

    again = PartStore(str(tmp_path / "out.hdf"), {"task": "forward"})
    assert again.open() == {0, 2} and again.torn == {1}
    assert again.done() == {0, 2}  # the torn part's file is gone: its batch runs again
    assert again.get(0) == payloads[0] and again.get(2) == payloads[2]
    assert again.input_digest(2) == bytes(range(32))


CTC_NETWORK = {
    "hidden": {"class": "rec", "unit": "lstm", "n_out": 8},
    "output": {"class": "softmax", "loss": "ctc", "from": ["hidden"]},
}


def test_ctc_search_writes_returnn_search_output_and_matches_beam_search_on_the_model(ray_session, tmp_path, capsys):
    from returnn_ray.data import DataSpec
    from returnn_ray.model import build_network
    from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

    config = write_config(
        tmp_path, network=CTC_NETWORK, num_epochs=1,
        eval={"class": "Task12AXDataset", "num_seqs": 7, "fixed_random_seed": 3},
        search_output_file=str(tmp_path / "search.py"), search_output_beam=True, beam_size=3,
    )
    specs = {"data": DataSpec(9), "classes": DataSpec(2, sparse=True, dtype="int32")}
    torch.manual_seed(0)
    net = build_network(CTC_NETWORK, specs)  # untrained: search only has to decode what the model says
    torch.save({"model": net.state_dict(), "epoch": 1, "step": 0}, tmp_path / "model.001.pt")
    assert main([config, "++task", "search", "++ray_num_workers", "2"]) == 0
    summary = capsys.readouterr().out
    shown = re.search(r"LER (\d+\.\d\d)% \((\d+)/(\d+) labels\), WER (\d+\.\d\d)% \((\d+)/(\d+) words\)", summary)
    assert shown, summary
    # the same figures, for programs, in the metrics file next to the search output
    from returnn_ray.metrics import read_metrics

    events = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert events[0]["event"] == "run_start" and events[0]["workers"] == 2 and events[-1]["event"] == "inference_end"
    assert events[-2]["event"] == "inference_progress" and events[-2]["seqs_done"] == 7
    r = events[-1]["scores"]
    assert (f"{r['ler']:.2f}", r["label_edits"], r["labels"], f"{r['wer']:.2f}", r["word_edits"], r["words"]) == (
        shown.group(1), int(shown.group(2)), int(shown.group(3)), shown.group(4), int(shown.group(5)), int(shown.group(6))
    )
    assert events[-1]["seqs"] == events[-1]["run_now"] == 7 and events[-1]["task"] == "search"
    assert {"seqs_per_s_after_first", "seqs_per_s_all_actors"} <= set(events[-1])  # rates: None with few results
    results = ast.literal_eval((tmp_path / "search.py").read_text())
    dataset = Task12AXDataset(num_seqs=7, fixed_random_seed=3)
    assert list(results) == dataset.seq_tags  # corpus order
    net.eval()
    with torch.no_grad():
        for i, seq in enumerate(dataset.get_seqs(list(range(7)))):
            x = torch.from_numpy(seq["data"])[None]
            out = net({"data": x}, {"data": torch.tensor([len(x[0])], dtype=torch.int32)})["output"]
            lp = torch.log_softmax(out.logits[0], dim=-1).numpy()
            want = ctc_beam_search(lp, beam_size=3, blank=2)
            beam = results[dataset.seq_tags[i]]
            vocab = dataset.labels["classes"]  # hypotheses are written as label strings
            assert [h for _, h in beam] == [" ".join(vocab[x] for x in h.labels) for h in want]
            assert [s for s, _ in beam] == pytest.approx([h.score for h in want], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(
    "changes, culprit",
    [
        (["++model", "/nonexistent/model"], "no checkpoint found"),
        (["++eval", "None"], "eval"),
    ],
)
def test_bad_forward_input_is_one_line(tmp_path, changes, culprit, capsys):
    config = torch_config(tmp_path)
    assert main([config, "++task", "forward", *changes]) == 2
    err = capsys.readouterr().err
    assert culprit in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.hdf").exists() and not (tmp_path / "out.hdf.parts").exists()


def test_forward_refuses_to_overwrite_an_output_file(tmp_path, capsys):
    config = torch_config(tmp_path)
    torch.save({"model": {}, "epoch": 1}, tmp_path / "model.001.pt")
    (tmp_path / "out.hdf").write_text("precious")
    assert main([config, "++task", "forward"]) == 2
    assert "forward_override_hdf_output" in capsys.readouterr().err
    assert (tmp_path / "out.hdf").read_text() == "precious"


CLUSTER_SCRIPT = """
import subprocess, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
for _ in range(2):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    cmd = [sys.executable, "-m", "returnn_ray", *sys.argv[1:], "++ray_address", cluster.address]
    sys.exit(subprocess.run(cmd).returncode)
finally:
    cluster.shutdown()
"""


def test_three_nodes_write_the_same_file_as_one(ray_session, tmp_path):
    config = trained(tmp_path, num_eval=45)
    assert main([config, "++task", "forward", "++output_file", str(tmp_path / "one.hdf")]) == 0
    # Each actor holds its first batch until all 3 have one: every node gets work, however late its actor starts.
    (tmp_path / "spread").write_text("3")
    proc = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT, config, "++task", "forward", "++output_file", str(tmp_path / "three.hdf")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with 3 actor(s)" in proc.stdout and "on 3 node(s)" in proc.stdout, proc.stdout
    one, three = read_hdf(tmp_path / "one.hdf"), read_hdf(tmp_path / "three.hdf")
    assert list(one) == list(three)
    for tag in one:
        np.testing.assert_array_equal(three[tag], one[tag], err_msg=tag)  # bitwise: the plan ignores the cluster


def test_search_step_of_a_torch_config_writes_one_line_per_seq_in_txt(ray_session, tmp_path):
    config = trained(tmp_path, num_eval=8)
    out = tmp_path / "hyps.txt"
    args = ["++task", "search", "++search_output_file", str(out), "++search_output_file_format", "txt"]
    assert main([config, *args]) == 0
    want = expected_outputs(tmp_path, num_eval=8)
    vocab = Task12AXDataset(num_seqs=1).labels["classes"]
    lines = out.read_text().splitlines()
    assert len(lines) == 8
    for line, log_probs in zip(lines, want.values()):
        labels = [k for i, k in enumerate(log_probs.argmax(-1)) if i == 0 or k != log_probs.argmax(-1)[i - 1]]
        assert line == " ".join(vocab[k] for k in labels)


def test_a_model_output_without_time_axis_is_a_one_line_error(ray_session, tmp_path):
    config = torch_config(tmp_path)
    with open(config, "a") as f:  # later definitions win: an utterance-level output [B, 2]
        f.write(
            "\nmodel_outputs = None\n"
            "def forward_step(*, model, extern_data, **_kwargs):\n"
            "    rf.get_run_ctx().mark_as_default_output(model(extern_data['data'].raw_tensor).mean(dim=1))\n"
        )
    model = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 0}, tmp_path / "model.001.pt")
    # Its own driver process (attached to the shared Ray): a failed Ray Data run holds its actors
    # until the driver goes, which the CLI does; they must not hold the shared Ray's CPUs.
    cmd = [sys.executable, "-m", "returnn_ray", config, "++task", "forward", "++ray_address", ray_address()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "has shape (3, 2) and no time axis with seq lengths" in lines[0], proc.stderr
    assert not (tmp_path / "out.hdf").exists()
    import ray

    deadline = time.monotonic() + 30  # the failed run's actors give their CPUs back (none leaks)
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


# -- a parts directory of another run, and data replaced under finished parts -------------------------


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "returnn_ray", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _dead_ray_address() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _random_model_checkpoint(path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 0}, path)


@pytest.mark.parametrize(
    "change, culprit",
    [
        ("checkpoint", "checkpoint was '{tmp}/model.001.pt', now '{tmp}/model.002.pt'"),
        ("dataset", "dataset_seqs was 30, now 31"),
        ("batching", "another plan (the batches: batch_size, max_seqs, seq order)"),
    ],
)
def test_a_parts_dir_of_another_checkpoint_dataset_or_batching_is_refused(tmp_path, change, culprit):
    config = torch_config(tmp_path)
    _random_model_checkpoint(tmp_path / "model.001.pt")
    # A first run that stops after it made its parts directory (its Ray cluster is not there).
    first = _cli(config, "++task", "forward", "++ray_address", _dead_ray_address())
    assert first.returncode == 2 and "cannot reach the Ray cluster" in first.stderr, first.stderr
    parts = tmp_path / "out.hdf.parts"
    manifest = (parts / "manifest.json").read_text()
    args = {
        "checkpoint": [],
        "dataset": ["++eval", "{'class': 'Task12AXDataset', 'num_seqs': 31, 'fixed_random_seed': 2}"],
        "batching": ["++max_seqs", "2"],
    }[change]
    if change == "checkpoint":
        _random_model_checkpoint(tmp_path / "model.002.pt", seed=1)
    rerun = _cli(config, "++task", "forward", *args)
    lines = [line for line in rerun.stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert rerun.returncode == 2 and len(lines) == 1 and "Traceback" not in rerun.stderr, rerun.stderr
    assert f"'{parts}' holds results of another run" in lines[0], lines[0]
    assert culprit.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert "delete the directory" in lines[0]
    assert (parts / "manifest.json").read_text() == manifest and not (tmp_path / "out.hdf").exists()


def _write_data(path, seed: int, lens) -> None:
    from returnn_ray.data import DataSpec, write_hdf

    rng = np.random.RandomState(seed)
    seqs = [{"data": rng.standard_normal((n, 9)).astype("float32"), "classes": rng.randint(0, 2, n).astype("int32")}
            for n in lens]
    specs = {"data": DataSpec(9), "classes": DataSpec(2, sparse=True, dtype="int32")}
    write_hdf(str(path), seqs, [f"utt-{i}" for i in range(len(lens))], specs)


def _wait_for_parts(parts, count: int, timeout: float = 120.0) -> None:
    """Until the running forward has written ``count`` finished parts to ``parts``."""
    deadline = time.monotonic() + timeout
    while len([p for p in os.listdir(parts) if p.endswith(".part")] if parts.exists() else []) < count:
        assert time.monotonic() < deadline, f"forward wrote fewer than {count} parts in {timeout:.0f} s"
        time.sleep(0.1)


def _old_and_new_data(tmp_path, *, num_seqs: int, seed: int):
    """``data.hdf`` and ``new.hdf``: the same tags and lengths, other values; a model checkpoint;
    ``want.hdf``, forward over the new data. Returns the two files, the forward command (joined to
    the shared Ray) and its ``++eval`` arguments for ``data.hdf``."""
    lens = np.random.RandomState(seed).randint(3, 12, size=num_seqs)
    data, new = tmp_path / "data.hdf", tmp_path / "new.hdf"
    _write_data(data, 0, lens)
    _write_data(new, 1, lens)
    config = torch_config(tmp_path)
    _random_model_checkpoint(tmp_path / "model.001.pt")
    cmd = [sys.executable, "-m", "returnn_ray", config, "++task", "forward", "++ray_address", ray_address()]
    eval_new = ["++eval", f"{{'class': 'HDFDataset', 'files': [{str(new)!r}]}}"]
    want = subprocess.run(cmd + eval_new + ["++output_file", str(tmp_path / "want.hdf")], capture_output=True, text=True)
    assert want.returncode == 0, want.stderr
    return data, new, cmd, ["++eval", f"{{'class': 'HDFDataset', 'files': [{str(data)!r}]}}"]


def test_data_replaced_in_place_under_finished_parts_is_recomputed_never_mixed(ray_session, tmp_path):
    """The HDF file is overwritten with other values (same tags, same lengths, its old mtime set
    back, as `cp -p` would): the resumed run reruns the parts of the old data and writes exactly
    what an uninterrupted run over the new data writes."""
    import shutil

    data, new, cmd, eval_data = _old_and_new_data(tmp_path, num_seqs=60, seed=5)
    (tmp_path / "slow").touch()
    proc = subprocess.Popen(cmd + eval_data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    parts = tmp_path / "out.hdf.parts"
    _wait_for_parts(parts, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len([p for p in os.listdir(parts) if p.endswith(".part")])
    assert 3 <= written < 20, written
    (tmp_path / "slow").unlink()

    old = os.stat(data)
    shutil.copyfile(new, data)  # in place: same inode
    os.utime(data, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(data).st_ino == old.st_ino and os.stat(data).st_mtime_ns == old.st_mtime_ns
    rerun = subprocess.run(cmd + eval_data, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    got, expected = read_hdf(tmp_path / "out.hdf"), read_hdf(tmp_path / "want.hdf")
    assert list(got) == list(expected) and sorted(got) == sorted(f"utt-{i}" for i in range(60))
    for tag in expected:
        np.testing.assert_array_equal(got[tag], expected[tag], err_msg=tag)  # no seq of the old data
    assert f"{written} of {written} read other data and run again" in rerun.stdout, rerun.stdout


def test_the_data_check_sees_an_in_place_copy_and_the_digest_tells_same_from_other_values(tmp_path):
    """What the resume relies on, without Ray: a rewrite with the old size, inode and mtime still
    changes the identity (ctime), and a batch's digest differs exactly when its values do."""
    from returnn_ray.data import HDFDataset
    from returnn_ray.data.ray_data import pad_batch
    from returnn_ray.inference.files import batch_digest, changed_file, data_files, file_identity

    import shutil

    lens = [4, 7, 5]
    a, b, same = tmp_path / "a.hdf", tmp_path / "b.hdf", tmp_path / "same.hdf"
    _write_data(a, 0, lens)
    _write_data(b, 1, lens)
    shutil.copyfile(a, same)
    ds = HDFDataset([str(a)])
    before = file_identity(data_files(ds))
    digest_a = batch_digest(pad_batch(ds, np.array([2, 0])))
    ds.close()  # HDF5 shares an open file's cache with every later open of it in this process
    assert changed_file(before, file_identity(data_files(ds))) is None
    time.sleep(0.01)
    old = os.stat(a)
    shutil.copyfile(b, a)
    os.utime(a, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert "ctime_ns" in changed_file(before, file_identity(data_files(ds)))
    assert batch_digest(pad_batch(HDFDataset([str(a)]), np.array([2, 0]))) != digest_a
    assert batch_digest(pad_batch(HDFDataset([str(same)]), np.array([2, 0]))) == digest_a
    assert batch_digest(pad_batch(HDFDataset([str(same)]), np.array([0, 2]))) != digest_a


def test_data_replaced_during_the_run_stops_it_and_the_rerun_recomputes(ray_session, tmp_path):
    """The HDF file is replaced (renamed over, as an atomic writer does) while forward runs: the
    actors go on reading the old file, so the run ends with one line instead of an output of old
    data; the rerun finds every finished part of the old data and writes the new data's output."""
    import shutil

    data, new, cmd, eval_data = _old_and_new_data(tmp_path, num_seqs=45, seed=6)
    (tmp_path / "slow").touch()
    proc = subprocess.Popen(cmd + eval_data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "out.hdf.parts"
    _wait_for_parts(parts, 2)
    shutil.copyfile(new, tmp_path / "next.hdf")
    os.replace(tmp_path / "next.hdf", data)
    (tmp_path / "slow").unlink()
    _, stderr = proc.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert proc.returncode == 2 and len(lines) == 1, stderr
    assert f"data file '{data}' changed (" in lines[0] and "during the run" in lines[0], lines[0]
    assert not (tmp_path / "out.hdf").exists()

    rerun = subprocess.run(cmd + eval_data, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    got, expected = read_hdf(tmp_path / "out.hdf"), read_hdf(tmp_path / "want.hdf")
    assert list(got) == list(expected)
    for tag in expected:
        np.testing.assert_array_equal(got[tag], expected[tag], err_msg=tag)
    # at least the parts written before the file was replaced read the old data
    stale = re.search(r"(\d+) of \d+ read other data and run again", rerun.stdout)
    assert stale and int(stale.group(1)) >= 2, rerun.stdout
