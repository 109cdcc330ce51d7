"""tests/raylet_guard.py: a test not marked ``ray`` that starts a raylet fails; one marked ``ray``,
or one that starts anything else, does not; nor does a raylet of another test run.

Each case is a test of a pytest run of its own (a subprocess on a small test file). The fast cases
start a copy of ``sleep`` named ``raylet``: what the guard goes by is the process name and this
run's marker in its environment. The last case starts a real Ray (marked ``ray``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

FAKE_RAYLET_TESTS = """
import os, subprocess, time
import pytest
import raylet_guard

RAYLET = {raylet!r}
OTHER = {other!r}


def run_until_seen(cmd, env=None):
    # started and ended within the test, as a returnn-ray subprocess's Ray is; returns once the
    # guard has looked twice while it ran
    proc = subprocess.Popen(cmd, env=env)
    try:
        watch = raylet_guard.ACTIVE
        if watch is not None:
            looks, deadline = watch.looks, time.monotonic() + 60
            while watch.looks < looks + 2:
                assert time.monotonic() < deadline, "the guard never looked"
                time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


def test_unmarked_starts_a_raylet():
    run_until_seen([RAYLET, "60"])


@pytest.mark.ray
def test_marked_starts_a_raylet():
    run_until_seen([RAYLET, "60"])


def test_unmarked_starts_something_else():
    run_until_seen([OTHER, "60"])


def test_unmarked_sees_a_raylet_of_another_run():
    run_until_seen([RAYLET, "60"], env={{k: v for k, v in os.environ.items() if k != raylet_guard.GUARD_ENV}})


@pytest.fixture(scope="module")
def raylet_for_the_module():  # set up before the guard's own fixture, alive until the module ends
    proc = subprocess.Popen([RAYLET, "60"])
    yield
    proc.kill()
    proc.wait()


def test_unmarked_uses_a_module_fixture_that_starts_a_raylet(raylet_for_the_module):
    pass
"""

REAL_RAY_TEST = """
def test_unmarked_starts_a_real_ray():
    import ray
    from returnn_ray.cluster.start import init_ray

    init_ray(num_cpus=1)
    ray.shutdown()
"""


def run_pytest(tmp_path, source: str) -> dict[str, str]:
    """Runs ``source`` as a test file under the guard; returns each test's outcome line of ``-rA``."""
    (tmp_path / "conftest.py").write_text("from raylet_guard import _no_ray_unless_marked_ray  # noqa: F401\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    ray: starts a Ray\n")
    (tmp_path / "test_dummy.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]), COLUMNS="1000")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path / "test_dummy.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    outcomes = {}
    for m in re.finditer(r"^(PASSED|FAILED|ERROR) test_dummy\.py::(\w+)(.*)$", proc.stdout, re.M):
        outcomes.setdefault(m.group(2), []).append(m.group(1) + m.group(3))
    return {name: " | ".join(lines) for name, lines in outcomes.items()} | {"_output": proc.stdout + proc.stderr}


def test_only_an_unmarked_test_that_starts_one_of_our_raylets_fails(tmp_path):
    for name, source in (("raylet", "sleep"), ("notraylet", "sleep")):
        shutil.copy(shutil.which(source), tmp_path / name)
    found = run_pytest(tmp_path, FAKE_RAYLET_TESTS.format(raylet=str(tmp_path / "raylet"),
                                                          other=str(tmp_path / "notraylet")))
    output = found.pop("_output")
    for name in ("test_unmarked_starts_a_raylet", "test_unmarked_uses_a_module_fixture_that_starts_a_raylet"):
        assert found.get(name, "").startswith(f"PASSED | ERROR - Failed: test_dummy.py::{name} started a Ray"), output
        assert "is not marked `ray`" in found[name], output
    for name in ("test_marked_starts_a_raylet", "test_unmarked_starts_something_else",
                 "test_unmarked_sees_a_raylet_of_another_run"):
        assert found.get(name) == "PASSED", output


@pytest.mark.ray  # starts a real Ray (in its pytest run's test, which is not marked)
def test_an_unmarked_test_that_starts_a_real_ray_fails(tmp_path):
    found = run_pytest(tmp_path, REAL_RAY_TEST)
    assert "started a Ray" in found.get("test_unmarked_starts_a_real_ray", ""), found["_output"]
    assert "ERROR - Failed" in found["test_unmarked_starts_a_real_ray"], found["_output"]
