"""Training log lines as RETURNN's torch engine prints them, carried from rank 0 to the driver
(with the metrics-file events of :mod:`returnn_ray.metrics`, which the driver writes).

The training loop runs in Ray worker processes whose stdout Ray would prefix with
``(RayTrainWorker pid=...)``; instead rank 0 sends its lines through a small Ray queue and the
driver prints them as RETURNN does (to stdout and to the ``log`` files). On an interactive
terminal the driver also shows a live progress line (steps, loss, time remaining).
"""

# Imports inside functions: Ray's queue loads only when it is drained (start-up time).
from __future__ import annotations

import datetime
import sys
import threading
import time
from typing import Any, Mapping, TextIO

from returnn_ray.errors import UserError


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


class WorkerLog:
    """Rank 0's side: formats lines and sends them to the driver (other ranks stay silent)."""

    def __init__(self, queue, *, enabled: bool, verbosity: int) -> None:
        self._queue = queue
        self.enabled = enabled and queue is not None
        self.verbosity = verbosity
        self._last_progress = 0.0

    def line(self, text: str, *, level: int = 3) -> None:
        if self.enabled and level <= self.verbosity:
            self._queue.put(("line", text))

    def event(self, name: str, **fields: Any) -> None:
        """A metrics-file event (:mod:`returnn_ray.metrics`), stamped now; the driver writes it."""
        if self._queue is not None and self.enabled:
            self._queue.put(("metrics", {"event": name, "time": round(time.time(), 3), **fields}))

    def first_step(self, since_start: float, *, epoch: int, step: int) -> None:
        """The run's first training step is done: the start-up figure (a line at level 4 on a fresh run) and event."""
        if step == 0:
            self.line(f"time to first training step: {since_start:.1f} s since returnn-ray started", level=4)
        self.event("first_step", epoch=epoch, step=step, since_start=round(since_start, 3))

    def progress_due(self, step: int, num_steps: int) -> bool:
        """Whether a progress update for ``step`` would be sent (at most ~4 a second, and the last step)."""
        return self.enabled and (time.monotonic() - self._last_progress >= 0.25 or step + 1 >= num_steps)

    def progress(self, *, epoch: int, step: int, num_steps: int, loss: float | None, elapsed: float) -> None:
        """A live progress update, if one is due (:meth:`progress_due`)."""
        if not self.progress_due(step, num_steps):
            return
        self._last_progress = time.monotonic()
        self._queue.put(("progress", (epoch, step, num_steps, loss, elapsed)))

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
    """The driver's side: prints what rank 0 sends, to stdout (and log files)."""

    def __init__(self, queue, *, log_files: tuple[str, ...] = (), out: TextIO | None = None, metrics=None) -> None:
        self._queue = queue
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
        self._thread = threading.Thread(target=self._run, name="returnn-ray-log", daemon=True)

    def start(self) -> "DriverLog":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        self._clear_progress()
        for f in self._files:
            f.close()

    def print(self, text: str) -> None:
        self._clear_progress()
        print(text, file=self._out, flush=True)
        for f in self._files:
            print(text, file=f, flush=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(timeout=0.2)

    def _drain(self, timeout: float | None = None) -> None:
        while True:
            try:
                kind, payload = self._queue.get(block=timeout is not None, timeout=timeout)
            except Exception:  # noqa: BLE001 - empty (queue.Empty, ray.util.queue.Empty), or the queue actor gone at shutdown
                return
            timeout = None
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
