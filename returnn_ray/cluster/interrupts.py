"""Ctrl-C and SIGTERM end a run the same way: as a ``KeyboardInterrupt`` unwinding the driver.

Unwinding runs every cleanup on the way out: a write in flight removes its temp file (all files
are written atomically, so the previous version stays), Ray Train aborts its workers, and the
embedded local Ray goes down with the driver. ``returnn-ray`` then prints one line and exits
with 130 (SIGINT) or 143 (SIGTERM); the same command resumes.

Two things in Ray 2.60 would get in the way: ``ray.init`` installs a SIGTERM handler calling
``sys.exit(15)``, and ``TorchTrainer.fit`` installs a SIGINT handler that aborts the run and
then exits with code 0 or 1 and no message. :func:`install` (called again after ``ray.init``)
and :func:`abort_on_signal` (from :mod:`returnn_ray.training.ray_trainer`) put ours in their place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

ABORT_TIMEOUT_S = 15.0
"""How long an interrupted driver waits for Ray Train to stop its workers before it goes anyway
(the workers of a driver that is gone are stopped by Ray regardless)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler ending the job, ``kill``), raised like Ctrl-C's KeyboardInterrupt."""


received: int | None = None
"""The last signal handled here: Ray's ``ray.get`` turns whatever a handler raises into a plain
``KeyboardInterrupt``, so the exception alone does not tell SIGTERM from Ctrl-C."""


def _raise(signum: int, frame: Any) -> None:
    global received
    received = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def was_terminated(exc: BaseException) -> bool:
    """Whether the interrupt ``exc`` came from SIGTERM rather than Ctrl-C."""
    return isinstance(exc, Terminated) or received == signal.SIGTERM


def install() -> None:
    """SIGINT and SIGTERM raise in the main thread (a no-op in any other thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _raise)
        signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """:func:`install` for the duration of the block, then the handlers as they were."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def abort_on_signal(abort_run) -> None:
    """SIGINT/SIGTERM call ``abort_run()`` (bounded by the caller), then raise here as :func:`install`'s
    handlers do: for ``TorchTrainer.fit``, whose own SIGINT handler exits without a word."""

    def handler(signum: int, frame: Any) -> None:
        global received
        received = signum
        install()  # a second signal interrupts the abort itself
        with contextlib.suppress(Exception):
            abort_run()
        _raise(signum, frame)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
