"""The private head of an experiment (``cluster/head.start_head``, what ``experiments/asr.py`` starts)
and the Ray a ``returnn-ray`` command starts in its process (``cluster/start.init_ray``): Ray's
daemons but the autoscaler's monitor and the log monitor, which one fixed machine whose drivers
take no logs does not need."""

from __future__ import annotations

import os

import pytest

from returnn_ray.cluster.head import start_head, stop_head


def processes_under(temp_dir: str) -> list[str]:
    """Command lines of the live processes that name ``temp_dir`` (every Ray daemon of a head
    started there does: its session, log or socket paths)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.ray
def test_the_head_runs_no_autoscaler_monitor_and_no_log_monitor():
    temp_dir = f"/tmp/rr-head-{os.getpid()}"  # short: Ray's socket paths live under it
    head, address = start_head(temp_dir, 1)
    try:
        running = processes_under(temp_dir)
    finally:
        stop_head(head, temp_dir)
    assert any("gcs_server" in c for c in running) and any("raylet" in c for c in running), running  # seen at all
    assert any("dashboard.py" in c for c in running), running  # its head; its modules are left out
    assert not [c for c in running if "autoscaler/_private/monitor.py" in c or "log_monitor.py" in c], running
    assert address
    assert not processes_under(temp_dir)


EMBEDDED = """
import json
from returnn_ray.cluster.ray_internals import RayOfOurs
from returnn_ray.cluster.start import init_ray
init_ray(num_cpus=1)
running = []
for pid in RayOfOurs.take_over().pids():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            running.append(f.read().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError:
        pass
print(json.dumps(running))
"""


@pytest.mark.ray
def test_an_embedded_ray_runs_no_autoscaler_monitor_and_no_log_monitor():
    # a process of its own, as a returnn-ray command starts its Ray (the tests' shared Ray may have
    # been started by Ray itself, e.g. by ray.data on first use)
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", EMBEDDED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    running = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("gcs_server" in c for c in running) and any("raylet" in c for c in running), running  # seen at all
    assert not [c for c in running if "autoscaler/_private/monitor.py" in c or "log_monitor.py" in c], running
