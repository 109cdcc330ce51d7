"""Whether a command's own Ray ran the dashboard's modules (``ray-dashboard-NodeHead-0`` and the
like: processes of their own; with ``include_dashboard=False`` Ray starts the dashboard's head
without them). The command's processes carry a marker of its environment, so other Rays on the
machine (the test run's shared one) are not counted. Linux only (``/proc``)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid


def _dashboards_of(marker: str) -> set[int]:
    """Pids of Ray dashboard module processes of the command whose environment holds ``marker``.
    A module process renames itself (setproctitle, which overwrites its own environment as
    /proc shows it), so the marker is looked for in its parent, the dashboard's fork server."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray-dashboard-"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = f.read().rsplit(b")", 1)[1].split()[1].decode()
            with open(f"/proc/{parent}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.add(int(entry))
        except (OSError, IndexError):  # not a pid, gone, or not ours to read
            continue
    return found


def run_watching_dashboards(cmd: list[str]) -> tuple[subprocess.CompletedProcess, bool]:
    """Run ``cmd`` (a ``returnn-ray`` command starting a Ray of its own: no ``RAY_ADDRESS``) and
    say whether the dashboard's modules of its Ray were seen while it ran."""
    marker = f"RETURNN_RAY_TEST_MARK={uuid.uuid4().hex}"
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update(dict([marker.split("=", 1)]))
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if _dashboards_of(marker):
                seen.append(True)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=600)
    finally:
        done.set()
        watcher.join()
    return proc, bool(seen)


