"""The metrics file: what a run did, one JSON object per line, for programs to read.

Log lines are for people and may change; scripts (:mod:`returnn_ray.experiment.stages`, ``experiments/asr.py``)
read this file instead. The driver (the ``returnn-ray`` process; training events come from rank 0
through its log channel) appends one line per event and writes each line whole, with one ``write``
on the file opened for appending: no buffer to flush, no partly written line from a live run. A run
that crashes mid-write may leave a torn last line; :func:`read_metrics` skips it (and the next run
ends that line before its first event, so its own events stay whole).

Every event has ``event``, ``task`` (train, eval, forward, search, sweep), ``run`` (an id, the same
for all events of one ``returnn-ray`` run: a rerun appends to the same file) and ``time`` (Unix
seconds when it happened, by the clock of the process it happened in). The events and their other
fields (docs/metrics.md has them with an example):

- ``run_start``: ``workers``, ``since_start`` (seconds since the process started).
- ``first_step``: the first training step of the run is done: ``epoch``, ``step``, ``since_start``.
- (These two are written with the run's first result, the next event: a run that fails before
  one, as bad input does, leaves no metrics file.)
- ``epoch_end``: ``epoch``, ``step``, ``scores`` (the learning_rate_file's keys: ``train_score``,
  ``dev_score``, ...), ``learning_rate``, ``epoch_time`` (seconds of training, without evaluation).
- ``run_end``: a training or evaluation finished: ``secs``.
- ``eval_end``: ``epoch``, ``checkpoint``, ``scores`` (as ``epoch_end``'s).
- ``inference_progress``: every 10% of the seqs to run: ``seqs_done``, ``seqs_total``, ``secs``.
- ``inference_end``: ``seqs``, ``run_now``, ``resumed``, ``nodes``, ``secs``, ``seqs_per_s_after_first``
  (seqs/s from the first result on: an actor was up), ``seqs_per_s_all_actors`` (from the first result of
  the last actor to start on: all were up; each None if not measured), ``output``, ``scores``
  (search with references: ``ler``, ``label_edits``, ``labels``; with a vocabulary also ``wer``,
  ``word_edits``, ``words``; rates in percent).
- ``sweep_end``: ``trials``, ``failed``, ``best`` (the trial's name), ``directory``, ``values``, ``metric``,
  ``score``, ``secs``.

Where: ``metrics_file`` if set, else ``metrics.jsonl`` next to the run's main output
(:func:`metrics_path`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
import uuid
from typing import Any

from returnn_ray.errors import UserError

FILE_NAME = "metrics.jsonl"
HELD = ("run_start", "first_step")
"""Start-up events, written with the run's first result (any other event) rather than at once."""


_IMPORTED_AT = time.time()


def metrics_path(setting: str | None, next_to: str | None) -> str | None:
    """``metrics_file`` if set, else :data:`FILE_NAME` in the directory of ``next_to``, the run's main
    output: the model prefix (train, eval), the output file (forward, search), a file in the sweep dir.
    None (no metrics file) for a run without either, e.g. a training without ``model``, which keeps
    nothing (and must not leave a directory in the working directory).

    >>> metrics_path(None, "/runs/a/model"), metrics_path("m.jsonl", "/runs/a/model"), metrics_path(None, "")
    ('/runs/a/metrics.jsonl', 'm.jsonl', None)
    """
    if setting or not next_to:
        return setting or None
    return os.path.join(os.path.dirname(os.path.abspath(next_to)), FILE_NAME)


def process_started_at() -> float:
    """When this process (``returnn-ray``) started, in Unix seconds: the ``since_start`` figures count from it.

    Read from ``/proc`` on Linux: now, less how long ago the process started (the seconds since
    boot, ``/proc/uptime``, less the process's start in clock ticks since boot). Not as psutil
    does it (``btime`` + the ticks): ``btime`` is whole seconds, so psutil's start time is up to a
    second early (0.93 s on the development machine), and every ``since_start`` figure as much too
    high. Where the two disagree by more than that (a container whose ``/proc/uptime`` is its own,
    LXCFS, while the ticks count from the host's boot) or the start would lie ahead, ``btime``'s.
    Elsewhere psutil, or failing that the time returnn_ray's metrics module was imported.
    """
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        now = time.time()
        started = now - (uptime - ticks)
        return started if started <= now and abs(started - (boot + ticks)) <= 1.5 else boot + ticks
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        import psutil
    except ImportError:
        return _IMPORTED_AT
    return psutil.Process().create_time()


def since_process_start() -> float:
    return round(time.time() - process_started_at(), 3)


class MetricsWriter:
    """Appends events to one metrics file, each line in one ``write``; all events get ``task`` and ``run``.

    The file is opened per event (a few per epoch), so there is nothing to close. The start-up
    events (:data:`HELD`) wait for the run's first result and are written with it: a run that
    fails before one (bad input) leaves no metrics file, as it leaves no other file behind.
    Creating the writer checks that the file can be written (a one-line error, before the run starts).
    """

    def __init__(self, path: str | None, *, task: str) -> None:
        self.path, self.task = path, task
        """``path`` None: no metrics file, every event is dropped (:func:`metrics_path`)."""
        self.run = uuid.uuid4().hex[:12]
        self._held = b""
        self._first_write = True
        self._warned = False
        if path is None:
            return
        try:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            if not os.access(path if os.path.exists(path) else directory, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise UserError(f"cannot write metrics file {path!r}: {exc.strerror or exc}; fix `metrics_file`") from exc

    def write(self, event: str, **fields: Any) -> None:
        """One event; ``time`` is now unless ``fields`` has it (an event stamped where it happened)."""
        if self.path is None:
            return
        record = {"event": event, "task": self.task, "run": self.run, "time": round(time.time(), 3), **fields}
        line = (dumps(record) + "\n").encode("utf-8")
        if event in HELD:
            self._held += line
            return
        data, self._held = self._held + line, b""
        try:
            if self._first_write and _ends_torn(self.path):
                data = b"\n" + data  # a crashed run's torn line: ours start on a line of their own
            self._first_write = False
            self._append(data)
        except OSError as exc:  # a full disk: the run goes on (its checkpoints fail if it matters)
            if not self._warned:
                print(f"returnn-ray: warning: cannot write metrics file {self.path!r}: {exc.strerror or exc}",
                      file=sys.stderr, flush=True)
                self._warned = True

    def write_event(self, record: dict[str, Any]) -> None:
        """An event built elsewhere (rank 0's, through the log channel): ``{"event": ..., "time": ..., ...}``."""
        fields = dict(record)
        self.write(fields.pop("event"), **fields)

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:  # one write for any lines of sane size; a short write (a signal) goes on
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)


def dumps(record: dict[str, Any]) -> str:
    """One line of JSON; NumPy/torch scalars as numbers, NaN and infinities as None (JSON has none).

    >>> dumps({"a": float("nan"), "b": [1.5, float("inf")]})
    '{"a": null, "b": [1.5, null]}'
    """
    try:
        return json.dumps(record, allow_nan=False, default=_plain)
    except ValueError:
        return json.dumps(_finite(record), allow_nan=False, default=_plain)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy and torch scalars
    return item() if callable(item) else str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    item = getattr(value, "item", None)
    return _finite(item()) if callable(item) else value


def _ends_torn(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read_metrics(path: str, *, event: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """The events of a metrics file, oldest first: those named ``event`` if given, at or after ``since``
    (Unix seconds) if given. A missing file has none; a torn line (a crash mid-write) is skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    events = []
    for line in text[: text.rfind("\n") + 1].splitlines():  # an unterminated last line is torn
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line that a later run ended with its own newline
        if not isinstance(record, dict) or "event" not in record:
            continue
        if (event is None or record["event"] == event) and (since is None or record.get("time", 0) >= since):
            events.append(record)
    return events


def last_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the newest run among ``events`` (a rerun appends to the same file).

    >>> [e["event"] for e in last_run([{"event": "a", "run": "1"}, {"event": "b", "run": "2"}, {"event": "c", "run": "2"}])]
    ['b', 'c']
    """
    if not events:
        return []
    newest = events[-1].get("run")
    return [e for e in events if e.get("run") == newest]
