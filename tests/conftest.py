"""Shared fixtures. Tests that need Ray take ``ray_session``: one local Ray per test run."""

from __future__ import annotations

import os

import pytest

# tests/ is on sys.path (rootdir conftest). An unmarked test that starts a Ray fails (raylet_guard.py).
from raylet_guard import _no_ray_unless_marked_ray  # noqa: F401


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray (2 CPUs) shared by every test that needs Ray."""
    ray = pytest.importorskip("ray")
    from returnn_ray.cluster import env
    from returnn_ray.cluster.start import init_ray

    # Started as for a user who set none of these (tests/test_ray_setup.py checks what returnn-ray sets).
    for key in (env.ADDRESS, env.PRESTART_WORKERS.name, env.WORKER_SOFT_LIMIT.name):
        os.environ.pop(key, None)
    os.environ.update(env.SWEEP_ENV)  # what `returnn-ray` sets before it starts Ray (sweep: TRAIN_ENV and more)
    init_ray(num_cpus=2, state_api=True)  # tests ask Ray's State API (list_actors) what ran
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    # A test that uses the shared Ray is marked `ray`, so `-m "not ray"` gives a quick run.
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
