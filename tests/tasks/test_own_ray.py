"""A Ray that a command starts for itself: what it runs (no dashboard modules where nothing needs
them) and that it is gone, at once, when the command returns."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from dashboards import run_watching_dashboards  # tests/ is on sys.path (rootdir conftest)
from test_forward import expected_outputs, read_hdf, trained  # tests/tasks is on sys.path (rootdir import)
from test_train import write_config


@pytest.mark.ray
def test_a_ray_started_for_a_sweep_or_a_training_run_has_no_dashboard(tmp_path):
    # The dashboard's modules only compete with the run: a sweep of one-CPU trials trains in the
    # Tune actors, and a run with Ray Train workers starts no placement-group cleaner, the one
    # user of the State API (returnn_ray.training.ray_trainer).
    config = write_config(tmp_path, num_epochs=1)
    cli = [sys.executable, "-m", "returnn_ray"]
    sweep, dashboard = run_watching_dashboards(
        cli + ["sweep", config, "--grid", "learning_rate=0.02,0.01", "--dir", str(tmp_path / "sweep")]
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert len(os.listdir(tmp_path / "sweep" / "trials")) == 2
    assert not dashboard, "the sweep's Ray started a dashboard"
    train, dashboard = run_watching_dashboards(
        cli + [config, "++ray_local_mode", "False", "++model", str(tmp_path / "ray" / "model")]
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert not dashboard, "a Ray Train run's own Ray started a dashboard"


@pytest.mark.ray
def test_forward_on_a_ray_of_its_own_runs_without_a_dashboard(tmp_path):
    # Forward runs Ray Data actors, no Ray Train: the Ray it starts has no dashboard (its
    # processes would only compete with the actors), and the output is what the model gives.
    config = trained(tmp_path)
    proc, dashboard = run_watching_dashboards([sys.executable, "-m", "returnn_ray", config, "++task", "forward"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not dashboard, "forward's Ray started a dashboard"
    got, want = read_hdf(tmp_path / "out.hdf"), expected_outputs(tmp_path)
    assert sorted(got) == sorted(want)
    for tag, out in want.items():
        np.testing.assert_allclose(got[tag], out, rtol=1e-4, atol=1e-5)


@pytest.mark.ray
def test_a_commands_own_ray_is_gone_when_the_command_returns(tmp_path):
    # Ray's own exit hook would stop it only as the interpreter exits, politely (0.5 s of sleep,
    # SIGTERM and up to 1 s per daemon); the command stops the Ray it started before it returns,
    # and releases its reaper (which would have killed that Ray had the command died). A second
    # command in the same process starts a Ray of its own again.
    config = trained(tmp_path)
    script = f"""
import os, sys
from returnn_ray.cli import main
code = main([{config!r}, "++task", "forward", "++output_file", {str(tmp_path / "first.hdf")!r}])
code += main([{config!r}, "++task", "forward"])  # a second command in the same process starts its own Ray again
import ray, time
from returnn_ray.cluster import reaper
mark = b"RETURNN_RAY_TEST_MARK=" + os.environ["RETURNN_RAY_TEST_MARK"].encode()

def left():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as f:
                ours = mark in f.read().split(b"\\0")
            with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                cmdline = f.read()
            if ours and int(pid) != os.getpid() and b"cluster.reaper" not in cmdline:
                found.append(cmdline[:60])
        except OSError:  # gone, or a zombie: nothing to read
            pass
    return found

deadline = time.monotonic() + 10  # killed processes take a moment to be gone
while left() and time.monotonic() < deadline:
    time.sleep(0.1)
# reaper._keep: the write ends of the reapers' pipes, closed once their Ray is stopped (released)
print("CODE", code, "CONNECTED", ray.is_initialized(), "LEFT", left(), "HELD", len(reaper._keep))
"""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ["RETURNN_RAY_TEST_MARK"] = str(os.getpid())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=600)
    assert "CODE 0 CONNECTED False LEFT [] HELD 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert read_hdf(tmp_path / "first.hdf").keys() == expected_outputs(tmp_path).keys()
    assert read_hdf(tmp_path / "out.hdf").keys() == expected_outputs(tmp_path).keys()
