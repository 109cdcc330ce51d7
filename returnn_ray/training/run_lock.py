"""One training per ``model``: ``<model>.lock`` while a ``task=train`` run writes its checkpoints.

Two runs on the same model prefix (two terminals, a job resubmitted while the first still runs)
would both write ``<model>.NNN.pt`` and the learning_rate_file, each over the other's. The lock
file is created atomically (``O_CREAT | O_EXCL``) and holds the host name, pid and process start
time of the run that holds it; a second run is refused with one line naming that run.

A run killed with ``kill -9`` (or a lost node) cannot remove its lock. On the same host a lock
whose pid is gone, or is now another process (another start time), is stale and taken over. A
lock of another host cannot be checked from here: the message says so and how to remove it.

The driver holds the lock for the whole run, so Ray Train's restarts of its workers
(``ray_max_failures``) do not touch it. Sweep trials each have their own model directory, and
Ray Tune runs a trial once; forward, search and eval only read checkpoints: they take no lock.

>>> import tempfile, os
>>> prefix = os.path.join(tempfile.mkdtemp(), "net")
>>> with ModelLock(prefix):
...     os.path.exists(prefix + ".lock")
True
>>> os.path.exists(prefix + ".lock")
False
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from returnn_ray.errors import UserError


def lock_path(model: str) -> str:
    """``<model>.lock``."""
    return f"{model}.lock"


def process_start_time(pid: int) -> int | None:
    """An id of when process ``pid`` of this host started (Linux: clock ticks since boot, from
    ``/proc/<pid>/stat``); None if there is no such process (or only its zombie), -1 if it exists
    but its start is unknown here."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        return None if fields[0] == "Z" else int(fields[19])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError, ValueError):
        pass
    try:  # no /proc: only whether it exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return -1


class ModelLock:
    """``with ModelLock(model):`` holds ``<model>.lock``; released when the block ends, also by
    Ctrl-C/SIGTERM (they unwind the driver as a ``KeyboardInterrupt``)."""

    def __init__(self, model: str, *, key: str = "model", doing: str = "being trained", path: str | None = None):
        self.model = model
        self.path = path or lock_path(model)
        self.key, self.doing = key, doing
        """The config key that names ``model``, and what the holder does with it (for messages);
        ``path``: another lock file than ``<model>.lock`` (a sweep's is in its dir)."""
        self._held = False

    def __enter__(self) -> "ModelLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _owner(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start_time": process_start_time(pid)}

    def acquire(self) -> None:
        """Creates the lock file, taking over a stale one; a live holder is a :class:`UserError`."""
        text = json.dumps(self._owner())
        for _ in range(3):  # a stale lock removed by another starter at the same moment: try again
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:  # released meanwhile
                    continue
                if not self._is_stale(holder):
                    raise UserError(self._busy_message(holder)) from None
                self._remove_stale(holder)
                continue
            except OSError as exc:
                raise UserError(
                    f"cannot create the lock file {self.path!r} of {self.key} {self.model!r}: {exc.strerror or exc};"
                    f" fix `{self.key}`"
                ) from exc
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            self._held = True
            return
        raise UserError(f"cannot take the lock file {self.path!r}: other runs keep creating it; try again")

    def release(self) -> None:
        """Removes the lock file if this process holds it (and it is still ours)."""
        if not self._held:
            return
        self._held = False
        holder = self._read_holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _read_holder(self) -> dict[str, Any] | None:
        """The holder written in the lock file; None if it vanished. Unreadable: an unknown holder."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None  # also a lock being written this moment: not stale
        return holder if isinstance(holder, dict) else {"unreadable": text[:100]}

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        """A lock of this host whose process is gone or is now another process."""
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
            return False
        started = process_start_time(pid)
        if started is None:
            return True
        recorded = holder.get("start_time")
        return started >= 0 and isinstance(recorded, int) and recorded >= 0 and started != recorded

    def _remove_stale(self, holder: dict[str, Any]) -> None:
        if self._read_holder() != holder:  # taken over by another starter meanwhile
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UserError(f"cannot remove the stale lock file {self.path!r}: {exc.strerror or exc}") from exc

    def _busy_message(self, holder: dict[str, Any]) -> str:
        host, pid = holder.get("host"), holder.get("pid")
        if "unreadable" in holder or not host or not pid:
            return (
                f"{self.key} {self.model!r} is locked by {self.path!r}, which does not say which run holds it;"
                f" if no other run uses it, delete {self.path!r}"
            )
        here = host == socket.gethostname()
        where = "on this host" if here else f"on host {host!r} (cannot be checked from here)"
        return (
            f"{self.key} {self.model!r} is {self.doing} by another run: pid {pid} {where}, lock file {self.path!r};"
            f" wait for it, stop it, or use another `{self.key}`"
            + ("" if here else f"; if that run is gone, delete {self.path!r}")
        )
