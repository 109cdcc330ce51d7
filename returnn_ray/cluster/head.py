"""A private Ray head for scripts (``experiments/asr.py``, benchmarks): start one, stop exactly it.

``ray start --head`` runs in a new session with its own ``--temp-dir`` and free ports, so it never
meets another Ray on the machine; :func:`stop_head` kills that process group and whatever runs
from its temp dir. ``ray stop`` is never used: it stops every Ray of the user on the machine.
Drivers that attach to it need :func:`driver_env` in their environment (:func:`use_head`).
"""

# Imports inside functions: Ray loads only when a head is stopped (start-up time).
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import MutableMapping

from returnn_ray.cluster import env
from returnn_ray.cluster.start import head_env, private_auth_env


def driver_env(temp_dir: str) -> dict[str, str]:
    """What a driver of the head in ``temp_dir`` needs in its environment; apply it with
    :func:`use_head` (before importing Ray, which reads it then).

    Token auth with the head's own token (:func:`returnn_ray.cluster.start.private_auth_env`): a
    file in the head's private temp dir, made here if missing, never ``~/.ray/auth_token``.
    Usage stats: off, as for the head (``--disable-usage-stats``); else Ray Data starts a
    usage-collection actor for the driver.
    """
    os.makedirs(temp_dir, mode=0o700, exist_ok=True)
    usage = env.USAGE_STATS
    driver = {usage.name: os.environ.get(usage.name, usage.value)}
    driver.update(private_auth_env(os.path.join(temp_dir, "auth_token")))
    return driver


def use_head(environ: MutableMapping[str, str], temp_dir: str) -> None:
    """Makes ``environ`` that of a driver of the head in ``temp_dir`` (:func:`driver_env`)."""
    environ.pop(env.AUTH_TOKEN.name, None)  # a token for another cluster would win over the head's file
    environ.update(driver_env(temp_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_head(temp_dir: str, num_cpus: int, *, dashboard: bool = False) -> tuple[subprocess.Popen, str]:
    """``ray start --head`` with ``num_cpus`` CPUs; returns the process and the head's address.
    ``dashboard``: with the dashboard's modules (the State API), which Ray Train's placement-group
    cleaner needs where a sweep's trials run Ray Train (:mod:`returnn_ray.training.ray_trainer`).

    Works where no Ray ever ran (no ``~/.ray``): the head authenticates with a token of its own
    (:func:`driver_env`).
    """
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", "--num-cpus", str(num_cpus), "--disable-usage-stats",
           "--temp-dir", temp_dir, "--port", str(free_port()), "--dashboard-port", str(free_port()),
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           # One machine, fixed: no autoscaler to run (its monitor process polls the GCS); every
           # driver of ours connects with log_to_driver=False, so no log monitor to tail the logs
           # for them. Together ~2.6 s of CPU over the default experiment, on 2 cores. And no
           # dashboard modules (processes that poll all the time) unless asked for.
           "--no-monitor", "--include-log-monitor", "false", "--include-dashboard", "true" if dashboard else "false"]
    head_environ = {k: v for k, v in os.environ.items() if k != env.ADDRESS}
    use_head(head_environ, temp_dir)
    head_environ.update(head_env(num_cpus))
    head = subprocess.Popen(cmd, env=head_environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output = head.communicate()[0]
    if head.returncode != 0:
        stop_head(head, temp_dir)
        raise RuntimeError(f"ray start --head failed with exit code {head.returncode}:\n{output[-3000:]}")
    with open(os.path.join(temp_dir, "ray_current_cluster")) as f:  # written there, not in /tmp/ray
        return head, f.read().strip()


class Helpers:
    """Starts the helper actors that Ray Train and Ray Data start on their first use in a cluster
    (:func:`returnn_ray.cluster.ray_internals.start_shared_helpers`), in a process of its own that
    ends once they run: a script that starts a head and later runs Ray Train and Ray Data
    (``experiments/asr.py``) starts them while it does something else, not in the first run's
    start-up. The process starts at once and imports Ray while the head starts; :meth:`start`
    gives it the head's address; :meth:`join` returns ``(ok, output)``: the names started, or
    Ray's error; after it, :attr:`resources` holds the cluster's resources as the process saw them
    (None if it said none), so that the caller need not connect to ask."""

    def __init__(self):
        self.resources: dict[str, float] | None = None
        self.process = subprocess.Popen([sys.executable, "-m", "returnn_ray.cluster.head", "--start-helpers"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)

    def start(self, address: str) -> None:
        self.process.stdin.write(address + "\n")
        self.process.stdin.flush()

    def join(self, timeout: float = 120.0) -> tuple[bool, str]:
        """Waits for it (an address never given: it ends at once); ``(ok, its output)``."""
        try:
            output = self.process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            output = self.process.communicate()[0] + f"\nnot done in {timeout:.0f} s"
        ok = self.process.returncode == 0
        lines = output.strip().splitlines()
        said = [line for line in lines if line.startswith(RESOURCES)]  # Ray may log lines after it
        if ok and said:
            self.resources = json.loads(said[-1][len(RESOURCES):])
        return ok, "\n".join(line for line in lines if not line.startswith(RESOURCES))


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Kills the head's process group and whatever else runs from its private temp dir (its workers)."""
    import ray  # noqa: F401  (puts the psutil that ray[default] bundles on sys.path)
    import psutil

    def ours() -> list:
        procs = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                in_temp_dir = temp_dir in " ".join(p.info["cmdline"] or [])
                if p.pid != os.getpid() and (os.getpgid(p.pid) == head.pid or in_temp_dir):
                    procs.append(p)
            except (psutil.Error, ProcessLookupError):
                pass
        return procs

    # Killed at once, as `ray stop --force` does: Ray's daemons take over 10 s to act on SIGTERM
    # (gcs_server, raylet), and nothing they would write on the way out is kept (their temp dir,
    # logs included, goes next; the head is private: no other driver or node uses it).
    # A second look kills what a daemon started while the first kills went out.
    for _ in range(2):
        procs = ours()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        deadline = time.monotonic() + 10.0
        while procs and time.monotonic() < deadline:
            time.sleep(0.05)
            procs = [p for p in procs if _running(p)]
    shutil.rmtree(temp_dir, ignore_errors=True)


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE  # a zombie is dead; reaping it is its parent's job
    except psutil.Error:
        return False


RESOURCES = "resources "
"""A line of the helpers' process: this, then the cluster's resources as JSON."""


def _start_helpers_main() -> int:
    import ray
    import ray.data  # noqa: F401  (the helpers' modules, imported while the head starts)

    from returnn_ray.cluster import ray_internals

    ray_internals.quiet_auth_notice()
    address = sys.stdin.readline().strip()
    if not address:
        return 1
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        print(" ".join(ray_internals.start_shared_helpers()), flush=True)
        print(RESOURCES + json.dumps(ray.cluster_resources()), flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--start-helpers"]:
    sys.exit(_start_helpers_main())
