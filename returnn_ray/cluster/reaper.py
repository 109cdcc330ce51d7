"""Stops the embedded local Ray of a ``returnn-ray`` process that died without shutting it down.

A driver that exits, even by Ctrl-C or SIGTERM, shuts its embedded Ray down. One killed with
``kill -9`` (or by the OOM killer) cannot: Ray 2.60 then stops most of its processes itself, but
its dashboard and runtime-env agents were seen to live on, orphaned, for good. So when
``returnn-ray`` starts a local Ray it also starts this small watcher (``python -m
returnn_ray.cluster.reaper``, in its own session so that a signal to the driver's process group
leaves it alone). It holds the read end of a pipe whose write end only the driver has: end of file means
the driver is gone. Until then it notes, every second, the Ray processes below the driver; after,
it gives a normal shutdown a few seconds and then stops those of them that still run (each
checked by its start time, so a reused pid is never hit).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

POLL_S = 1.0
GRACE_S = 5.0
"""After the driver is gone, time for Ray's own shutdown before the watcher steps in."""


def start_reaper() -> subprocess.Popen | None:
    """Start the watcher for this process (the driver); None where it cannot run (no psutil)."""
    if _psutil() is None:
        return None
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "returnn_ray.cluster.reaper", str(os.getpid())],
        stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)  # only this process holds it: Ray's children must not keep it open
    _keep.append(write_end)
    return proc


_keep: list[int] = []
"""The pipe's write end, open for the life of this process (closed by the OS when it dies)."""


def _psutil():
    try:
        import psutil  # Ray bundles psutil in ray/thirdparty_files and puts it on sys.path on import
    except ImportError:
        try:
            import importlib.util

            spec = importlib.util.find_spec("ray")
            if spec is None or not spec.submodule_search_locations:
                return None
            sys.path.append(os.path.join(list(spec.submodule_search_locations)[0], "thirdparty_files"))
            import psutil
        except ImportError:
            return None
    return psutil


def kill_trees(pids: list[int]) -> None:
    """SIGKILL the processes ``pids`` (a Ray's daemons, started by this process) and every process
    below them (the raylet's workers and agents, the dashboard's modules): nothing of the run lives
    in them any more. Each tree is frozen first (SIGSTOP, looked at until no new process shows),
    so no daemon starts a process that a dead parent would hand to init unseen; then all are
    killed. This process's own children are reaped; the others' zombies are their new parent's
    (init's) to reap: waiting for that took 1.8 s, and a killed process holds neither CPU nor memory."""
    psutil = _psutil()
    if psutil is None:
        return
    roots = []
    for pid in pids:
        try:
            roots.append(psutil.Process(pid))
        except psutil.Error:
            continue
    frozen: dict[int, object] = {}
    for _ in range(10):  # a tree that still grows while it is being frozen: looked at again
        found = {}
        for root in roots:
            try:
                found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.Error:
                continue
        new = [p for pid, p in found.items() if pid not in frozen]
        if not new:
            break
        for proc in new:
            try:
                proc.send_signal(signal.SIGSTOP)
            except psutil.Error:
                pass
            frozen[proc.pid] = proc
    for proc in frozen.values():
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(roots, timeout=5.0)


def release() -> None:
    """This process's Ray is stopped: the watcher may go (it sees the end of its pipe, finds
    nothing left to stop and exits), so watchers do not pile up in a process that runs several
    commands (``main()`` called more than once)."""
    while _keep:
        os.close(_keep.pop())


def _is_ray_process(proc) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone or not ours to read
        return False
    return cmdline.startswith("ray::") or "/ray/" in cmdline or "raylet" in cmdline or "gcs_server" in cmdline


def watch(driver_pid: int) -> None:
    psutil = _psutil()
    if psutil is None:
        return
    seen: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if readable and not os.read(sys.stdin.fileno(), 1):
            break  # end of file: the driver is gone
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid() and child.pid not in seen and _is_ray_process(child):
                    seen[child.pid] = child.create_time()
        except psutil.Error:
            pass
    deadline = time.monotonic() + GRACE_S
    left = _alive(psutil, seen)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _alive(psutil, seen)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in left:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGTERM:
            psutil.wait_procs(left, timeout=3.0)
            left = _alive(psutil, seen)


def _alive(psutil, seen: dict[int, float]) -> list:
    procs = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                procs.append(proc)
        except psutil.Error:
            continue
    return procs


if __name__ == "__main__":
    watch(int(sys.argv[1]))
