"""Training log lines as RETURNN's torch engine prints them, carried from rank 0 to the driver
(with the metrics-file events of :mod:`returnn_ray.metrics`, which the driver writes).

The training loop runs in Ray worker processes whose stdout Ray would prefix with
``(RayTrainWorker pid=...)``; instead rank 0 sends its lines through a channel and the driver
prints them as RETURNN does (to stdout and to the ``log`` files). On an interactive terminal the
driver also shows a live progress line (steps, loss, time remaining).

The channel of a run on Ray is a directory of files (:class:`FileChannel`) beside the model,
which every node must see anyway: each worker process appends its items as JSON lines to a file
of its own, the driver reads what was appended. It costs no process: the Ray queue it replaced
was an actor of its own (its start took about 1.2 s of CPU out of a 2-core machine's start-up, and
3.8 s of CPU over a 1-minute run) and a blocking round trip to it for each line. A run in the
driver's process (local mode) uses an in-process queue (:class:`LocalChannel`).
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from typing import Any, Mapping, TextIO

from returnn_ray.errors import UserError
from returnn_ray.metrics import dumps


def format_score_value(v: Any) -> str:
    """RETURNN's number format: 3 decimals, or scientific outside [1e-3, 1e3].

    >>> format_score_value(0.6749), format_score_value(1.5e-5)
    ('0.675', '1.500e-05')
    """
    if isinstance(v, float):
        return f"{v:.3e}" if (abs(v) > 1.0e3 or abs(v) < 1.0e-3) and v != 0 else f"{v:.3f}"
    return str(v)


def format_scores(scores: Mapping[str, float]) -> str:
    """``name value name value ...`` (one value alone if there is one score), as RETURNN prints them."""
    if not scores:
        return "None"
    if len(scores) == 1:
        return format_score_value(next(iter(scores.values())))
    return " ".join(f"{k} {format_score_value(v)}" for k, v in scores.items())


def hms(seconds: float) -> str:
    """``0:05:00`` style."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class LocalChannel:
    """Rank 0 in the driver's process (local mode): items through an in-process queue."""

    wants_progress = True

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item: tuple[str, Any]) -> None:
        self._queue.put(item)

    def close(self) -> None:
        pass

    def take(self, *, final: bool = False) -> list[tuple[str, Any]]:
        """What was put since the last call, in order."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items


class FileChannel:
    """Worker processes on Ray to the driver: each process appends its items to a file of its own
    in ``directory`` (one JSON line each, flushed at once); the driver's :meth:`take` reads what
    the files gained since its last call. ``directory`` must be one every worker's node sees (the
    model's, which training needs shared already). Pickled into the workers' job; the driver makes
    and removes the directory.

    ``wants_progress``: whether the driver shows the live progress line (a terminal); if not,
    the workers write no progress items, only lines and events.

    On NFS another node sees appended data only once the writer syncs or closes the file: an
    event (a few per epoch) is synced at once, a line may show late, and :meth:`close` (every
    rank, when its loop ends, before ``fit()`` returns) syncs the rest before the driver's last
    read."""

    def __init__(self, directory: str, *, wants_progress: bool) -> None:
        self.directory, self.wants_progress = directory, wants_progress
        self._file = None  # the worker's own file, opened at its first item
        self._read: dict[str, tuple[int, bytes]] = {}  # the driver's: file name -> (offset, partial line)
        self._order: list[str] = []  # file names as the driver first saw them

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "wants_progress": self.wants_progress}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], wants_progress=state["wants_progress"])

    def check_visible(self) -> None:
        """A worker's check that it sees the driver's directory: a node whose model dir is not the
        driver's (not shared storage) would write its lines and checkpoints where nobody reads them."""
        if not os.path.isdir(self.directory):
            raise UserError(
                f"node {socket.gethostname()} does not see {os.path.dirname(os.path.dirname(self.directory))!r}, "
                "the model's directory, as the driver does: with several nodes, `model` must be on storage every node shares"
            )

    def put(self, item: tuple[str, Any]) -> None:
        if self._file is None:
            self.check_visible()
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._file = open(os.path.join(self.directory, name), "a", encoding="utf-8")
        self._file.write(dumps({"item": item}) + "\n")
        self._file.flush()
        if item[0] == "metrics":
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """The worker's file synced and closed (its loop has ended)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def take(self, *, final: bool = False) -> list[tuple[str, Any]]:
        """The complete lines every file gained since the last call (a file's in its order; files
        in the order first seen: a restarted worker's after the one it replaced).

        A file whose listed size has not grown is not opened (a run of 64 ranks has 64 files,
        polled 10 times a second); ``final``, the last read after ``fit()``, opens every file: on
        NFS only an open is sure to see what a closed file holds (a listed size may be cached)."""
        try:
            sizes = {e.name: e.stat().st_size for e in os.scandir(self.directory) if e.name.endswith(".jsonl")}
        except OSError:
            return []
        self._order += sorted(n for n in sizes if n not in self._read)
        items = []
        for name in self._order:
            offset, partial = self._read.get(name, (0, b""))
            if not final and sizes.get(name, offset + 1) <= offset:
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            complete, _, partial = (partial + data).rpartition(b"\n")
            self._read[name] = (offset + len(data), partial)
            for line in complete.splitlines():
                try:
                    kind, payload = json.loads(line)["item"]
                except (ValueError, KeyError, TypeError):  # not a line a worker wrote whole: skipped
                    continue
                items.append((kind, tuple(payload) if kind == "progress" else payload))
        return items


class WorkerLog:
    """Rank 0's side: formats lines and sends them to the driver through ``channel``
    (:class:`LocalChannel`, :class:`FileChannel`; None: nowhere); other ranks stay silent."""

    def __init__(self, channel, *, enabled: bool, verbosity: int) -> None:
        self._channel = channel
        self.enabled = enabled and channel is not None
        self.verbosity = verbosity
        self._last_progress = 0.0

    def line(self, text: str, *, level: int = 3) -> None:
        if self.enabled and level <= self.verbosity:
            self._channel.put(("line", text))

    def close(self) -> None:
        """The loop has ended: what this process sent is made visible to the driver (any rank)."""
        if self._channel is not None:
            self._channel.close()

    def event(self, name: str, **fields: Any) -> None:
        """A metrics-file event (:mod:`returnn_ray.metrics`), stamped now; the driver writes it."""
        if self.enabled:
            self._channel.put(("metrics", {"event": name, "time": round(time.time(), 3), **fields}))

    def first_step(self, since_start: float, *, epoch: int, step: int) -> None:
        """The run's first training step is done: the start-up figure (a line at level 4 on a fresh run) and event."""
        if step == 0:
            self.line(f"time to first training step: {since_start:.1f} s since returnn-ray started", level=4)
        self.event("first_step", epoch=epoch, step=step, since_start=round(since_start, 3))

    def progress_due(self, step: int, num_steps: int) -> bool:
        """Whether a progress update for ``step`` would be sent (at most ~4 a second, and the last
        step; never when the driver shows no progress line)."""
        return self.enabled and self._channel.wants_progress and (
            time.monotonic() - self._last_progress >= 0.25 or step + 1 >= num_steps)

    def progress(self, *, epoch: int, step: int, num_steps: int, loss: float | None, elapsed: float) -> None:
        """A live progress update, if one is due (:meth:`progress_due`)."""
        if not self.progress_due(step, num_steps):
            return
        self._last_progress = time.monotonic()
        self._channel.put(("progress", (epoch, step, num_steps, loss, elapsed)))

    def step_line(
        self, *, epoch: int, step: int, scores: Mapping[str, float], step_secs: float, elapsed: float, frac: float
    ) -> None:
        """RETURNN's per-step line at log_verbosity 5."""
        if not self.enabled or self.verbosity < 5:
            return
        remaining = elapsed / frac - elapsed if frac > 0 else 0.0
        parts = [f"ep {epoch} train, step {step}"]
        parts += [f"{k} {format_score_value(v)}" for k, v in scores.items()]
        parts += [
            f"{step_secs:.3f} sec/step",
            f"elapsed {hms(elapsed)}",
            f"exp. remaining {hms(remaining)}",
            f"complete {frac:.2%}",
        ]
        self.line(", ".join(parts), level=5)


class DriverLog:
    """The driver's side: prints what rank 0 sends through ``channel`` (its ``take()``), to stdout
    (and log files), and writes its events to ``metrics``."""

    def __init__(self, channel, *, log_files: tuple[str, ...] = (), out: TextIO | None = None, metrics=None) -> None:
        self._channel = channel
        self._metrics = metrics  # a MetricsWriter for rank 0's events, or None
        self._out = out = out or sys.stdout
        self._files = []
        for path in log_files:
            try:
                self._files.append(open(path, "a", encoding="utf-8"))
            except OSError as exc:
                for f in self._files:
                    f.close()
                raise UserError(f"cannot open log file {path!r}: {exc.strerror or exc}; fix `log` (-l)") from exc
        self._tty = out.isatty()
        self._progress_shown = False
        self._stop = threading.Event()
        self._draining = threading.Lock()  # close() drains too, while a stalled thread may still be at it
        self._thread = threading.Thread(target=self._run, name="returnn-ray-log", daemon=True)

    def start(self) -> "DriverLog":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops the reading thread, prints what is left; a second call does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain(final=True)
        self._clear_progress()
        for f in self._files:
            f.close()

    def print(self, text: str) -> None:
        self._clear_progress()
        print(text, file=self._out, flush=True)
        for f in self._files:
            print(text, file=f, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._drain()

    def _drain(self, *, final: bool = False) -> None:
        with self._draining:
            self._handle(self._channel.take(final=final))

    def _handle(self, items: list[tuple[str, Any]]) -> None:
        for kind, payload in items:
            if kind == "line":
                self.print(payload)
            elif kind == "metrics" and self._metrics is not None:
                self._metrics.write_event(payload)
            elif kind == "progress" and self._tty:
                self._show_progress(*payload)

    def _show_progress(self, epoch: int, step: int, num_steps: int, loss: float | None, elapsed: float) -> None:
        done = (step + 1) / max(num_steps, 1)
        width = 30
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        remaining = elapsed / done - elapsed if done > 0 else 0.0
        loss_text = f" loss {format_score_value(loss)}" if loss is not None else ""
        text = f"\rep {epoch} [{bar}] step {step + 1}/{num_steps}{loss_text} remaining {hms(remaining)}"
        self._out.write(text)
        self._out.flush()
        self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self._out.write("\r\033[K")
            self._out.flush()
            self._progress_shown = False
