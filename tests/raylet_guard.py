"""A test that is not marked ``ray`` and starts a Ray fails: ``-m "not ray"`` is the quick run, and
it stays quick only while every test that starts a Ray says so.

How a Ray is seen: the whole test run carries :data:`GUARD_ENV` with a value of its own in its
environment. Every process the run starts inherits it, so does every raylet, however it was
started (``ray.init`` in the pytest process, a ``returnn-ray`` subprocess with its embedded Ray,
``ray start`` in a new session that outlives its parent). While a test without the mark runs, a
thread looks every :data:`POLL_S` seconds for a process named ``raylet`` whose environment holds
this run's value and that was not there when the test began; finding one fails the test. Ray
start-up takes seconds, so a raylet cannot come and go between two looks. Raylets of other test
runs on the machine carry another value (or none) and are not counted. Linux only (``/proc``).

Loaded by tests/conftest.py; tests/test_raylet_guard.py runs it on tests that must fail or pass.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest

GUARD_ENV = "RETURNN_RAY_TEST_SESSION"
POLL_S = 0.2

# Set, not setdefault: a pytest run started by a test has a value of its own, so its raylets are
# its own guard's business (tests/test_raylet_guard.py relies on that).
os.environ[GUARD_ENV] = uuid.uuid4().hex


def our_raylets(value: str | None = None) -> set[int]:
    """Pids of live raylet processes whose environment holds ``GUARD_ENV=value`` (this run's)."""
    needle = f"{GUARD_ENV}={value or os.environ[GUARD_ENV]}".encode()
    found: set[int] = set()
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() != b"raylet":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


class RayletWatch:
    """Records the raylets of this run that start while it is on."""

    def __init__(self, before: set[int]) -> None:
        self.before = before
        self.new: set[int] = set()
        self.looks = 0  # how many times it has looked (tests/test_raylet_guard.py waits on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="raylet-guard", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.new |= our_raylets() - self.before
            self.looks += 1

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join()
        self.new |= our_raylets() - self.before
        return self.new


ACTIVE: RayletWatch | None = None
"""The watch of the test running now (None for a test marked ``ray``)."""

_seen = our_raylets()
"""This run's raylets alive when the previous test ended: a raylet that a module- or session-scoped
fixture starts for this test (set up before this fixture) is new too."""


@pytest.fixture(autouse=True)
def _no_ray_unless_marked_ray(request):
    global ACTIVE, _seen
    if request.node.get_closest_marker("ray") is not None or not os.path.isdir("/proc"):
        yield
        _seen = our_raylets()
        return
    watch = ACTIVE = RayletWatch(_seen)
    try:
        yield
    finally:
        ACTIVE = None
        started = watch.stop()
        _seen = our_raylets()
    if started:  # an error in the teardown: a failure of the test itself is reported too
        pytest.fail(
            f"{request.node.nodeid} started a Ray (raylet pid(s) {sorted(started)}) but is not marked `ray`:"
            " mark it @pytest.mark.ray, so that `-m \"not ray\"` leaves it out",
            pytrace=False,
        )
