"""The Ray that returnn-ray starts keeps its idle worker processes (cluster.start.worker_soft_limit) and
prestarts none (cluster.env.PRESTART_WORKERS).

Checked on the raylet the shared Ray runs (a child of this pytest process, found by psutil, not
through returnn_ray): the environment it really runs with, and what it does with idle workers.
The shared Ray is started without a user's own setting of either variable (tests/conftest.py).
"""

from __future__ import annotations

import os
import time

import pytest

from returnn_ray.cluster.env import PRESTART_WORKERS, WORKER_SOFT_LIMIT

PRESTART_ENV = PRESTART_WORKERS.name
WORKER_SOFT_LIMIT_ENV = WORKER_SOFT_LIMIT.name

NUM_CPUS = 2  # the shared Ray's (tests/conftest.py)
IDLE_KILL_S = 1.0  # Ray kills a worker idle this long once there are more than the soft limit
NUM_TASKS = 2 * NUM_CPUS  # at Ray's default soft limit (one per CPU), half of them would be killed


def raylet():
    import psutil  # ray[default] ships it (imported after ray: ray puts it on sys.path)

    found = [p for p in psutil.Process().children(recursive=True) if p.name() == "raylet"]
    assert len(found) == 1, f"not one raylet among this process's children: {found}"
    return found[0]


def test_the_embedded_rays_raylet_prestarts_no_workers(ray_session):
    # Ray's default is 1: one idle worker per CPU started when the first driver connects.
    assert raylet().environ().get(PRESTART_ENV) == "0"


def test_the_embedded_rays_raylet_keeps_idle_workers_above_one_per_cpu(ray_session, tmp_path):
    import psutil

    ray = ray_session
    limit = raylet().environ().get(WORKER_SOFT_LIMIT_ENV)
    assert limit is not None and int(limit) > NUM_CPUS, limit  # Ray's default: one per CPU

    @ray.remote(num_cpus=0)
    def pid_once_all_run(directory: str, n: int) -> int:
        # Each waits until all n run, so each holds a worker process of its own.
        open(os.path.join(directory, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(directory)) < n:
            assert time.monotonic() < deadline, "the tasks never all ran at once"
            time.sleep(0.05)
        return os.getpid()

    pids = ray.get([pid_once_all_run.remote(str(tmp_path), NUM_TASKS) for _ in range(NUM_TASKS)], timeout=180)
    assert len(set(pids)) == NUM_TASKS
    workers = [psutil.Process(pid) for pid in pids]
    # Now idle, more of them than CPUs. Ray's default would kill the surplus within ~1 s (it kills
    # the longest idle first; these are the newest, so only a limit below their count touches them).
    deadline = time.monotonic() + 4 * IDLE_KILL_S
    while time.monotonic() < deadline:
        gone = [w.pid for w in workers if not w.is_running() or w.status() == psutil.STATUS_ZOMBIE]
        assert not gone, f"idle workers {gone} were killed: the raylet runs with {WORKER_SOFT_LIMIT_ENV}={limit}"
        time.sleep(0.1)
