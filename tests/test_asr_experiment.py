"""``python experiments/asr.py`` end to end at a tiny scale: every stage's files, the stage table,
the WER, and its Ray head gone afterwards."""

from __future__ import annotations

import ast
import doctest
import importlib.util
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "asr.py")


def load_asr_module():
    spec = importlib.util.spec_from_file_location("asr_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_asr_helpers_doctests():
    # experiments/ is not a package pytest collects: its sizes and grid are checked here (the timing
    # estimates are returnn_ray.experiment.stages', whose doctests pytest runs).
    result = doctest.testmod(load_asr_module())
    assert result.attempted >= 3 and result.failed == 0


def hdf_tags(path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [t.decode() if isinstance(t, bytes) else str(t) for t in f["seqTags"][...]]


def files_under(directory) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, n), directory) for root, dirs, names in os.walk(directory)
                  for n in names + dirs)


@pytest.mark.parametrize("scale", [1, 4, 10])
def test_each_scale_sweeps_batch_sizes_that_change_the_batches(scale):
    # the plan's train corpus (asr.py's seed 1) by its lengths alone, batched as asr.config batches
    # it with the plan's overrides: no two swept batch sizes may plan the same batches (at scale 4,
    # asr.config's max_seqs 32 made 10000 and 20000 frames the same 75 batches of 32 seqs)
    from returnn_ray.config import load_config, load_settings
    from returnn_ray.corpus.synthetic import SyntheticCorpus
    from returnn_ray.data.from_settings import batching_options
    from returnn_ray.data.seq_order import seq_order_for_epoch
    from returnn_ray.sweep.checks import same_batch_pairs
    from returnn_ray.sweep.space import override_args, variant_name

    asr = load_asr_module()
    plan = asr.Plan.for_scale(scale)
    corpus = SyntheticCorpus(seed=1)
    lens = np.array([corpus.num_frames(i) for i in range(plan.train_seqs)])
    by_rest: dict[str, dict] = {}
    for values in asr.grid_points(plan.grid):
        settings = load_settings(load_config([asr.CONFIG], [*plan.config_args(), *override_args(values)]))
        rest = variant_name({k: v for k, v in values.items() if k not in ("batch_size", "max_seqs")})
        by_rest.setdefault(rest, {})[variant_name(values)] = batching_options(settings, "train")
    orders = [seq_order_for_epoch(settings.data.batching, lens, epoch=epoch) for epoch in (1, 2)]
    assert all(len({repr(o) for o in options.values()}) >= 2 for options in by_rest.values())  # batch sizes swept
    for options in by_rest.values():
        assert same_batch_pairs(orders, {"data": lens}, options) == []


@pytest.mark.ray  # asr.py starts a Ray head of its own
def test_asr_experiment_runs_every_stage_and_prints_stage_times_and_wer(tmp_path):
    out, home = tmp_path / "asr", tmp_path / "home"
    home.mkdir()
    cmd = [sys.executable, SCRIPT, "--scale", "0.04", "--out", str(out), "--num-cpus", "2", "--workers", "2",
           "--epochs", "1", "--grid", "learning_rate=0.005,0.01"]
    # its own local head; a home as on a machine that never ran Ray (no ~/.ray/auth_token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(home)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # asr.py stops its Ray head on SIGTERM
        output, _ = proc.communicate(timeout=60)
        raise AssertionError(f"asr.py took over 8 minutes:\n{output[-5000:]}")
    assert proc.returncode == 0, output[-5000:]

    # data: 0.04 x (600, 100, 100) seqs
    data = out / "data"
    assert [len(hdf_tags(data / f"{n}.hdf")) for n in ("train", "dev", "eval")] == [24, 4, 4]
    eval_tags = hdf_tags(data / "eval.hdf")
    with h5py.File(data / "eval.hdf", "r") as f:
        vocab_size = len(f["targets/labels/classes"])

    # sweep: both trials trained their epoch; best.json names one of the grid's learning rates
    trials = list((out / "sweep" / "trials").iterdir())
    assert len(trials) == 2 and all((t / "net.001.pt").exists() for t in trials), trials
    assert "learning_rate 0.005" in output or "learning_rate 0.01" in output
    # train: DDP over 2 workers, 1 epoch, per-worker batch_size half the default 1000 frames per update
    assert (out / "model" / "net.001.pt").exists() and (out / "model" / "net.001.opt.pt").exists()
    assert (out / "model" / "learning_rates").exists()
    assert "training with 2 worker(s) on Ray" in output
    assert re.search(r"returnn-ray experiments/asr.config .*\+\+ray_num_workers 2 .*\+\+batch_size 500", output), output
    # forward: RETURNN's HDF layout, the CTC softmax (vocabulary + blank) per eval seq
    with h5py.File(out / "forward" / "eval.hdf", "r") as f:
        tags = [t.decode() if isinstance(t, bytes) else str(t) for t in f["seqTags"][...]]
        lens = f["seqLengths"][...][:, 0]
        probs = f["inputs"][...]
    assert tags == eval_tags and probs.shape == (lens.sum(), vocab_size + 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    # search: one entry per eval seq, in corpus order
    results = ast.literal_eval((out / "search" / "eval.py").read_text())
    assert list(results) == eval_tags

    # the stage table and the WER line
    table = output[output.index("\nstage ") :]
    for stage in ("data", "ray start", "sweep", "train", "fwd+search", "ray stop", "total"):
        assert re.search(rf"^{re.escape(stage)}\s+\d+\.\d", table, re.M), f"no row {stage!r} in\n{table}"
    for stage in ("sweep", "train"):  # (fwd+search: 4 eval seqs leave no rate after the first result)
        row = re.search(rf"^{re.escape(stage)}\s+([\d.]+)\s+([\d.]+) s\s+(\d+)%", table, re.M)
        assert row and 0 <= float(row.group(2)) <= float(row.group(1)), table
    # forward and search ran at once, one actor each: both started before either was done
    started = output.index("++task search")
    assert started < output.index("[forward] returnn-ray: forward done") and "[search] " in output, output[-5000:]
    assert re.search(r"\+\+task forward .*\+\+ray_num_workers 1 ", output), output[-5000:]
    searched = re.search(r"search done: .* WER ([\d.]+)% \((\d+)/(\d+) words\)", output)
    final = re.search(r"^WER ([\d.]+)% \((\d+)/(\d+) words\) on the eval set", output, re.M)
    assert searched and final and final.groups() == searched.groups(), output[-3000:]

    # its Ray head is gone: no process runs from its temp dir, and the dir is removed
    temp_dir = f"/tmp/asr-ray-{proc.pid}"
    assert not os.path.exists(temp_dir)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if temp_dir.encode() in f.read():
                    left.append(pid)
        except OSError:
            pass
    assert not left, f"processes of asr.py's Ray head still run: {left}"
    # and of it the home directory holds only matplotlib's own font cache, from the sweep's plot
    # (README: "What returnn-ray leaves in your home")
    left = [f for f in files_under(home) if not f.startswith((".cache/matplotlib/", ".config/matplotlib"))]
    assert set(left) <= {".cache", ".cache/matplotlib", ".config"}, files_under(home)


def test_a_missing_experiment_config_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--config", str(tmp_path / "nope.config"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"asr.py: error: config {str(tmp_path / 'nope.config')!r} does not exist; give --config a RETURNN config"
        " file (experiments/asr.config is the default)"
    ]
    assert not out.exists()
