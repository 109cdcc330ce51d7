"""Running ``returnn-ray`` commands as the stages of an experiment script, and timing them.

``experiments/asr.py`` is made of it; a script of your own can be too. :class:`Runner` runs each
stage as the command a user would type (printed, its output shown and kept in ``<log_dir>/<stage>.log``;
with ``warm=True`` returnn-ray commands run as forks of the script, :mod:`returnn_ray.warm_start`).
From what ``returnn-ray`` prints at ``++log_verbosity 4`` the functions below tell a stage's
work from its Ray start-up and scheduling, and :func:`print_table` shows both per stage.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import shlex
import subprocess
import threading
import time
from typing import Sequence

from returnn_ray import warm_start

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


class Runner:
    """Runs the stages' commands: prints each command and its output, keeps a log per stage."""

    def __init__(self, log_dir: str, env: dict[str, str], *, warm: bool = False):
        self.log_dir, self.env, self.warm = log_dir, env, warm
        self.current: subprocess.Popen | warm_start.WarmCommand | None = None
        os.makedirs(log_dir, exist_ok=True)

    def run(self, stage: str, cmd: list[str], shown: list[str], *, returnn_ray_args: list[str] | None = None) -> CommandOutput:
        """Runs ``cmd``; a returnn-ray command (``returnn_ray_args``) as a warm fork if ``warm``."""
        print(f"\n== {stage}\n$ {shlex.join(shown)}", flush=True)
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        with open(os.path.join(self.log_dir, f"{stage}.log"), "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(shown)}\n")
            if self.warm and returnn_ray_args is not None:
                self.current = proc = warm_start.WarmCommand(returnn_ray_args, self.env)
            else:
                self.current = proc = subprocess.Popen(
                    cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
                )
            for line in proc.stdout:
                lines.append((time.monotonic() - start, line.rstrip("\n")))
                print("  " + line, end="", flush=True)
                log.write(line)
            proc.wait()
            proc.stdout.close()
            self.current = None
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise StageFailed(stage, proc.returncode, os.path.join(self.log_dir, f"{stage}.log"))
        return CommandOutput(lines, wall)

    def stop(self) -> None:
        """Ends the command that runs now, if any (Ctrl-C already reached it; SIGTERM did not)."""
        if self.current is not None and self.current.poll() is None:
            self.current.terminate()
            try:
                self.current.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.current.kill()


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, log: str):
        super().__init__(f"stage {stage} failed with exit code {code}; its output is in {log}")
        self.code = code


class LogWatcher(threading.Thread):
    """Timestamps the lines that files matching ``pattern`` get while it runs (sweep trials' logs,
    which their trials write, not the sweep command)."""

    def __init__(self, pattern: str):
        super().__init__(daemon=True)
        self.pattern = pattern
        self.start_time = time.monotonic()
        self.offsets = {path: os.path.getsize(path) for path in glob.glob(pattern)}  # older runs' lines
        self.lines: dict[str, list[tuple[float, str]]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            self.poll()

    def poll(self) -> None:
        for path in glob.glob(self.pattern):
            offset = self.offsets.get(path, 0)
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                text = f.read()
            complete = text[: text.rfind("\n") + 1]
            self.offsets[path] = offset + len(complete.encode("utf-8"))
            now = time.monotonic() - self.start_time
            self.lines.setdefault(path, []).extend((now, line) for line in complete.splitlines())

    def finish(self) -> dict[str, list[tuple[float, str]]]:
        self._stop_event.set()
        self.join()
        self.poll()
        return self.lines


# -- what the output says about start-up and work ------------------------------------------------

_FIRST_STEP = re.compile(r"time to first training step: ")
_EPOCH_END = re.compile(r"^Epoch \d+(: Total train loss| evaluation):")
_RATE = re.compile(r"([\d.]+) seqs/s after the first result")
_DONE = re.compile(r"done: (\d+) seqs \((\d+) run now")


def training_interval(lines: Sequence[tuple[float, str]]) -> tuple[float, float] | None:
    """From the first training step to the last epoch's end (its dev scores): the training's work.

    >>> training_interval([(3.0, "time to first training step: 2.9 s since returnn-ray started"),
    ...                    (9.0, "Epoch 1: Total train loss: ..."), (10.0, "Epoch 1 evaluation: dev: ...")])
    (3.0, 10.0)
    """
    first = next((t for t, line in lines if _FIRST_STEP.search(line)), None)
    ends = [t for t, line in lines if _EPOCH_END.search(line)]
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


def inference_work(lines: Sequence[tuple[float, str]]) -> float | None:
    """Seconds the seqs run now take at the rate after the first result (actors up); None if not printed.

    >>> inference_work([(1, "forward: 50.00 seqs/s after the first result (actors started)"),
    ...                 (2, "returnn-ray: forward done: 100 seqs (100 run now on 1 node(s), 0 resumed) in 9.0 s")])
    2.0
    """
    rate = next((float(m.group(1)) for _, line in lines if (m := _RATE.search(line))), None)
    ran = next((int(m.group(2)) for _, line in lines if (m := _DONE.search(line))), None)
    if ran == 0:
        return 0.0
    return ran / rate if rate and ran is not None else None


def print_table(stages: Sequence[StageResult]) -> None:
    """Each stage's wall time and the part that is Ray start-up or scheduling.

    The work part: for training, from the first training step to the last epoch's dev scores (so
    Ray Data's per-epoch pipeline start counts as work); for a sweep, the time in which at least
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
