"""The Ray that returnn-ray starts keeps its idle worker processes (ray_setup.worker_soft_limit) and
prestarts none (ray_setup.PRESTART_ENV)."""

import os

from returnn_ray.ray_setup import PRESTART_ENV, WORKER_SOFT_LIMIT_ENV, worker_soft_limit


def _raylet_env() -> dict[str, str]:
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process
    with open(f"/proc/{raylet.pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def test_the_embedded_rays_raylet_keeps_idle_workers(ray_session):
    expected = os.environ.get(WORKER_SOFT_LIMIT_ENV)  # a user's own setting wins; else ours
    assert _raylet_env().get(WORKER_SOFT_LIMIT_ENV) == (expected or str(worker_soft_limit(2)))
    assert int(_raylet_env()[WORKER_SOFT_LIMIT_ENV]) > 2  # above Ray's default of one per CPU


def test_the_embedded_rays_raylet_prestarts_no_workers(ray_session):
    assert _raylet_env().get(PRESTART_ENV) == os.environ.get(PRESTART_ENV, "0")
