"""Shared fixtures. Tests that need Ray take ``ray_session``: one local Ray per test run."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray (2 CPUs) shared by every test that needs Ray."""
    ray = pytest.importorskip("ray")
    from returnn_ray.ray_setup import init_ray
    from returnn_ray.tasks.train import RAY_TRAIN_ENV

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(RAY_TRAIN_ENV)  # what `returnn-ray` sets before it starts Ray
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    # A test that uses the shared Ray is marked `ray`, so `-m "not ray"` gives a quick run.
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
