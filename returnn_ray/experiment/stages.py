"""Running ``returnn-ray`` commands as the stages of an experiment script, and timing them.

``experiments/asr.py`` is made of it; a script of your own can be too. :class:`Runner` runs each
stage as the command a user would type (printed, its output shown and kept in ``<log_dir>/<stage>.log``;
with ``warm=True`` returnn-ray commands run as forks of the script, :mod:`returnn_ray.experiment.warm_start`).
From the events of a stage's metrics file (:mod:`returnn_ray.metrics`; the log text is for people)
the functions below tell a stage's work from its Ray start-up and scheduling, and
:func:`print_table` shows both per stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import subprocess
import threading
import time
from typing import Any, Sequence

from returnn_ray.experiment import warm_start

# -- running a stage ------------------------------------------------------------------------------


@dataclasses.dataclass
class StageResult:
    """One stage: its wall time, and how much of it was Ray start-up/scheduling (None: not known)."""

    name: str
    wall: float
    overhead: float | None = None
    how: str = ""
    """How the work part was measured."""


@dataclasses.dataclass
class CommandOutput:
    """A command's stdout+stderr lines, each with the seconds since the command started."""

    lines: list[tuple[float, str]]
    wall: float
    start: float = 0.0
    """When the command started, in Unix seconds: its metrics file's older events are from earlier runs."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One stage's command: what runs, what is printed, and (for a returnn-ray command) its arguments."""

    stage: str
    cmd: list[str]
    shown: list[str]
    returnn_ray_args: list[str] | None = None


class Runner:
    """Runs the stages' commands: prints each command and its output, keeps a log per stage."""

    def __init__(self, log_dir: str, env: dict[str, str], *, warm: bool = False):
        self.log_dir, self.env, self.warm = log_dir, env, warm
        self.running: list[subprocess.Popen | warm_start.WarmCommand] = []
        self._print_lock = threading.Lock()
        os.makedirs(log_dir, exist_ok=True)

    def run(self, stage: str, cmd: list[str], shown: list[str], *, returnn_ray_args: list[str] | None = None) -> CommandOutput:
        """Runs ``cmd``; a returnn-ray command (``returnn_ray_args``) as a warm fork if ``warm``."""
        return self.run_together([Command(stage, cmd, shown, returnn_ray_args)])[0]

    def run_together(self, commands: Sequence[Command]) -> list[CommandOutput]:
        """Runs ``commands`` at once (stages that need only what is done: forward and search);
        their output lines are shown as they come, each prefixed with its stage when there are
        several.

        A returnn-ray command after another starts once the one before has said its first
        ``returnn-ray:`` line (or ended), which it says once its Ray driver is connected: no two
        drivers register with Ray at the same instant (CI once saw a driver die inside Ray's core
        worker creation while another registered); the rest of their start-ups still overlap.
        All are started from this thread before any reader thread runs (a fork while another
        thread holds a lock, e.g. stdout's, would leave the child that lock held)."""
        procs, logs, outputs, starts = [], [], [], []
        prefix = len(commands) > 1
        try:
            for i, c in enumerate(commands):
                print(f"\n== {c.stage}\n$ {shlex.join(c.shown)}", flush=True)
                log = open(os.path.join(self.log_dir, f"{c.stage}.log"), "a", encoding="utf-8")
                logs.append(log)
                log.write(f"$ {shlex.join(c.shown)}\n")
                outputs.append(CommandOutput([], 0.0, time.time()))
                starts.append(time.monotonic())
                procs.append(self._start(c))
                self.running.append(procs[-1])
                if i + 1 < len(commands) and c.returnn_ray_args is not None:
                    for line in procs[-1].stdout:
                        self._take(c, line, log, outputs[-1], starts[-1], prefix)
                        if line.startswith("returnn-ray: "):
                            break
            readers = [
                threading.Thread(target=self._show, args=(c, p, log, out, t, prefix), daemon=True)
                for c, p, log, out, t in zip(commands, procs, logs, outputs, starts)
            ]
            for r in readers:
                r.start()
            for r in readers:
                r.join()
            self.running = []  # (not on Ctrl-C: stop() ends what still runs)
        finally:
            for log in logs:
                log.close()
        for c, p, out in zip(commands, procs, outputs):
            if p.returncode != 0:
                log = os.path.join(self.log_dir, f"{c.stage}.log")
                raise StageFailed(c.stage, p.returncode, log, telling_line([line for _, line in out.lines]))
        return outputs

    def _start(self, c: Command) -> subprocess.Popen | warm_start.WarmCommand:
        if self.warm and c.returnn_ray_args is not None:
            return warm_start.WarmCommand(c.returnn_ray_args, self.env)
        return subprocess.Popen(c.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def _show(self, c: Command, proc, log, out: CommandOutput, start: float, prefix: bool) -> None:
        """One command's lines to the screen and its log, until it ends; its wall time into ``out``."""
        for line in proc.stdout:
            self._take(c, line, log, out, start, prefix)
        proc.wait()
        proc.stdout.close()
        out.wall = time.monotonic() - start

    def _take(self, c: Command, line: str, log, out: CommandOutput, start: float, prefix: bool) -> None:
        """One output line of ``c``: kept with its time, shown (prefixed by the stage if ``prefix``), logged."""
        out.lines.append((time.monotonic() - start, line.rstrip("\n")))
        with self._print_lock:
            print((f"  [{c.stage}] " if prefix else "  ") + line, end="", flush=True)
        if not log.closed:  # closed: Ctrl-C ended run_together while this command still printed
            log.write(line)

    def stop(self) -> None:
        """Ends the commands that run now, if any (Ctrl-C already reached them; SIGTERM did not)."""
        for proc in list(self.running):
            if proc.poll() is None:
                proc.terminate()
        for proc in list(self.running):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, log: str, cause: str | None = None):
        said = f" ({cause})" if cause else ""
        super().__init__(f"stage {stage} failed with exit code {code}{said}; its output is in {log}")
        self.code = code


_TELLING = re.compile(r"returnn-ray: error: |Check failed|Failed to register|FATAL|^\s*\w*(Error|Exception): ")


def telling_line(lines: Sequence[str], limit: int = 300) -> str | None:
    """The line of a failed command's output that says why it failed: returnn-ray's own one-line
    error, else the first line that reads as a failure (Ray's fatal line, which its stack trace
    follows, or Python's exception line); None when no line says.

    >>> telling_line(["step 1", "returnn-ray: error: config: no such file 'x.config'", "more"])
    "returnn-ray: error: config: no such file 'x.config'"
    >>> telling_line(["[2026-12-04 E 1 1] core_worker_process.cc:232: Failed to register worker to Raylet: IOError", "  at f()"])
    '[2026-12-04 E 1 1] core_worker_process.cc:232: Failed to register worker to Raylet: IOError'
    >>> telling_line(["Traceback (most recent call last):", '  File "x.py"', "ValueError: bad value"])
    'ValueError: bad value'
    >>> telling_line(["all fine", "exit"]) is None
    True
    """
    own = [line for line in lines if "returnn-ray: error: " in line]
    found = own[-1] if own else next((line for line in lines if _TELLING.search(line)), None)
    if found is None:
        return None
    found = found.strip()
    return found if len(found) <= limit else found[: limit - 3] + "..."


# -- what the metrics file says about start-up and work ------------------------------------------


def training_interval(events: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """From the first training step to the last epoch's end (scored and saved): the training's work,
    in the events' Unix seconds.

    >>> training_interval([{"event": "run_start", "time": 100.0}, {"event": "first_step", "time": 103.0},
    ...                    {"event": "epoch_end", "time": 109.0}, {"event": "epoch_end", "time": 110.0}])
    (103.0, 110.0)
    """
    first = next((e["time"] for e in events if e["event"] == "first_step"), None)
    ends = [e["time"] for e in events if e["event"] == "epoch_end"]
    return (first, ends[-1]) if first is not None and ends and ends[-1] >= first else None


def busy_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval.

    >>> busy_seconds([(0, 4), (2, 6), (10, 11)])
    7
    """
    total, end = 0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def inference_work(events: Sequence[dict[str, Any]]) -> float | None:
    """Seconds the seqs run now take at the rate after the first result (actors up); None if not known.

    >>> inference_work([{"event": "inference_end", "run_now": 100, "seqs_per_s_after_first": 50.0}])
    2.0
    """
    end = next((e for e in reversed(events) if e["event"] == "inference_end"), None)
    if end is None:
        return None
    if end["run_now"] == 0:
        return 0.0
    rate = end.get("seqs_per_s_after_first")
    return end["run_now"] / rate if rate else None


def print_table(stages: Sequence[StageResult]) -> None:
    """Each stage's wall time and the part that is Ray start-up or scheduling.

    The work part: for training, from the first training step to the last epoch's end (so Ray
    Data's per-epoch pipeline start counts as work); for a sweep, the time in which at least
    one trial was between those two points; for forward/search, the seqs over the seqs/s after
    the first result. The rest (process and Ray start, Ray Train's worker group, actors loading
    the model, the end) is start-up or scheduling. The data stage uses no Ray.
    """
    print("\nstage       wall s   Ray start-up/scheduling   work measured as")
    total = known_wall = known_overhead = 0.0
    for s in stages:
        total += s.wall
        if s.overhead is None:
            share = "-"
        else:
            known_wall += s.wall
            known_overhead += s.overhead
            share = f"{s.overhead:6.1f} s {100 * s.overhead / max(s.wall, 1e-9):4.0f}%"
        print(f"{s.name:10s} {s.wall:7.1f}   {share:>23s}   {s.how}")
    share = f"{known_overhead:6.1f} s {100 * known_overhead / max(known_wall, 1e-9):4.0f}%"
    print(f"{'total':10s} {total:7.1f}   {share:>23s}   (of the stages that use Ray)", flush=True)
