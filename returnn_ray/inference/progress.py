"""The progress of a forward or search run: seqs done, seqs/s, time left; its steady rate."""

from __future__ import annotations

import sys
import time

from returnn_ray.metrics import MetricsWriter
from returnn_ray.training.log import hms


class Progress:
    """Seqs done / total, seqs/s and time remaining: a live line on a terminal, else every 10%
    (and an ``inference_progress`` metrics event every 10%). The steady rate (:meth:`rates`)
    counts from the first result, and from the first result of the last of ``actors`` actors to
    start: the actors start together but not at the same pace, and until the last one runs the
    rate is that of fewer actors."""

    def __init__(self, task: str, *, total: int, verbosity: int, out=None, metrics: MetricsWriter | None = None,
                 actors: int = 1, clock=time.monotonic):
        self.task, self.total, self.verbosity, self.metrics = task, total, verbosity, metrics
        self._next_event = 0.1  # an inference_progress event every 10% of the seqs
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.done = 0
        self.clock = clock
        self.start = clock()
        self._next_line = 0.1
        self.actors = actors
        self._first: tuple[float, int] | None = None  # when the first result came, and the seqs done then
        self._all_up: tuple[float, int] | None = None  # the same for the first result of the last actor
        self._seen: set[str] = set()  # the actors whose results came (the first ``actors`` of them)

    def advance(self, seqs: int, actor: str | None = None) -> None:
        self.done += seqs
        now = self.clock()
        self._first = self._mark(self._first, now)
        if actor is not None and actor not in self._seen and len(self._seen) < self.actors:
            self._seen.add(actor)
            if len(self._seen) == self.actors:  # the last actor's first result: all of them run now
                self._all_up = (now, self.done)
        elif self._all_up is not None:
            self._all_up = self._mark(self._all_up, now)
        if self.metrics is not None and self.done >= self._next_event * self.total:
            secs = now - self.start
            self.metrics.write("inference_progress", seqs_done=self.done, seqs_total=self.total, secs=round(secs, 3))
            while self._next_event * self.total <= self.done:
                self._next_event += 0.1
        if self.verbosity < 3:
            return
        text = self.text()
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
        elif self.done >= self._next_line * self.total:
            print(text, file=self.out, flush=True)
            while self._next_line * self.total <= self.done:
                self._next_line += 0.1

    def _mark(self, mark: tuple[float, int] | None, now: float) -> tuple[float, int]:
        """The start of a rate's window: set now if unset; results within 50 ms of it belong to it
        (the batches of one Ray Data task arrive together)."""
        if mark is None:
            return (now, self.done)
        if now - mark[0] < 0.05:
            return (mark[0], self.done)
        return mark

    def text(self) -> str:
        secs = self.clock() - self.start
        rate = self.done / secs if secs > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return f"{self.task}: {self.done}/{self.total} seqs, {rate:.1f} seqs/s, remaining {hms(eta)}"

    def rates(self) -> tuple[float | None, float | None]:
        """Seqs/s from the first result on (an actor was up), and from the last actor's first
        result on (all were up); None where no result came after that point."""
        return self._rate(self._first), self._rate(self._all_up)

    def _rate(self, mark: tuple[float, int] | None) -> float | None:
        if mark is None or self.done <= mark[1]:
            return None
        secs = self.clock() - mark[0]
        return (self.done - mark[1]) / secs if secs > 0 else float("inf")

    def close(self) -> None:
        if self.tty and self.verbosity >= 3:
            self.out.write("\r\033[K")
            self.out.flush()
        first, all_up = self.rates()
        if self.verbosity >= 4 and first is not None:
            once_all = f"; {all_up:.2f} once all {self.actors} actors ran" if self.actors > 1 and all_up is not None else ""
            print(f"{self.task}: {first:.2f} seqs/s after the first result (actors started){once_all}", file=self.out, flush=True)
