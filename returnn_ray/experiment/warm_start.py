"""``returnn-ray`` commands started warm: forks of a process that imported torch and Ray once.

A script that runs several ``returnn-ray`` commands one after another (``experiments/asr.py``:
sweep, train, forward, search) pays each command's imports again: torch, Ray, Ray Train, Ray
Data and Tune take 3-4 s of CPU before the command does anything, on a 2-core machine about as
long as Ray Train's own start-up. :func:`preload` imports them once in the calling process;
:class:`WarmCommand` then runs each command in a forked child of it, which starts with those
modules loaded. Ray, torch and returnn_ray read some environment variables at import
(``RAY_AUTH_MODE``, ...): set them before :func:`preload`, as the children's environment has
them. The child is still a process of its own, exactly as the command typed: its own Ray driver
(job), its own config, its exit code; Ctrl-C and SIGTERM reach it as they would.

Forking is safe here because the parent only imports: it never connects to Ray (what needs Ray
in the parent goes through :func:`call_in_fork`; forks check), runs no torch computation (no
thread pool, no CUDA context) and starts no threads of its own before a fork. Linux only
(``fork`` after importing torch is not safe on macOS); elsewhere :func:`available` is False and
callers start the command as a plain subprocess.
"""

# Imports inside functions: returnn_ray.cli and Ray are imported in the forked child; the parent imports only what preload() is given (and times) (start-up time).
from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
import traceback
from typing import Mapping, Sequence

PRELOAD = (
    "torch",
    "ray",
    "ray.train.torch",
    "ray.data",
    "ray.tune",
    "returnn_ray.cli",
    "returnn_ray.tasks.train",
    "returnn_ray.tasks.sweep",
    "returnn_ray.inference.run",
    "returnn_ray.training.recipe",
)
"""What every returnn-ray task imports (the CLI imports its tasks lazily)."""


def available() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def preload(modules: Sequence[str] = PRELOAD) -> float:
    """Imports ``modules`` here; returns the seconds it took."""
    import importlib

    start = time.monotonic()
    for name in modules:
        importlib.import_module(name)
    _check_no_ray()
    return time.monotonic() - start


class Preload(threading.Thread):
    """:func:`preload` in a background thread (started at once), while the caller does something
    else, e.g. waits for ``ray start``; :meth:`join` returns its seconds or raises its error.
    Join it before the first fork."""

    def __init__(self, modules: Sequence[str] = PRELOAD):
        super().__init__(name="warm-start-preload", daemon=True)
        self.modules = modules
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.seconds = preload(self.modules)
        except BaseException as exc:  # noqa: BLE001 - raised by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> float:
        super().join(timeout)
        if self.error is not None:
            raise self.error
        return self.seconds


class WarmCommand:
    """``returnn-ray ARGS`` in a fork of this process, stdout and stderr into one pipe (text).

    The part of :class:`subprocess.Popen` callers use: ``pid``, ``stdout``, ``poll()``,
    ``wait()``, ``terminate()``, ``kill()``, ``returncode``.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str]):
        pid, fd = _fork_with_pipe()
        if pid == 0:  # the child never returns from here
            _child(list(args), dict(env), fd)
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self.stdout = io.TextIOWrapper(io.FileIO(fd, "r"), encoding="utf-8", errors="replace", line_buffering=True)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                import subprocess

                raise subprocess.TimeoutExpired(["returnn-ray", *self.args], timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def call_in_fork(fn, *args):
    """``fn(*args)`` in a forked child, which may connect to Ray while this process stays free of
    it (and so able to fork commands); the return value comes back pickled, an exception too."""
    import pickle

    pid, fd = _fork_with_pipe()
    if pid == 0:
        try:
            try:
                result = (True, fn(*args))
            except Exception as exc:  # noqa: BLE001 - raised again in the parent
                result = (False, exc)
            with os.fdopen(fd, "wb") as out:
                pickle.dump(result, out)
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"call_in_fork({getattr(fn, '__name__', fn)}): the child died without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


def _fork_with_pipe() -> tuple[int, int]:
    """Forks with a pipe from child to parent: ``(0, write end)`` in the child, ``(pid, read end)``
    in the parent."""
    _check_no_ray()
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()  # else what the parent printed is printed again by the child
    sys.stderr.flush()
    pid = os.fork()
    os.close(read_fd if pid == 0 else write_fd)
    return pid, write_fd if pid == 0 else read_fd


def _check_no_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        raise RuntimeError("warm_start: this process is connected to Ray; a fork would share the connection")


def _child(args: list[str], env: dict[str, str], out_fd: int) -> None:
    code = 1
    try:
        # A clean slate as a new process would have: the parent's signal handlers, environment and
        # output streams are not the command's.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
        sys.argv = ["returnn-ray", *args]
        from returnn_ray.cli import main

        code = main(args)
        import ray

        if ray.is_initialized():  # as at a normal exit (Ray's atexit hook), before the hard exit below
            ray.shutdown()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the command's crash, reported as a process would
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        # Never unwind into the parent's stack (its finally blocks are not ours to run).
        os._exit(code if isinstance(code, int) else 1)
