"""Which sweep a sweep dir holds: its definition, written (atomically) before the sweep starts.

Ray Tune restores an experiment with its *recorded* trials, whatever the new command says, so a
rerun in the same dir is a resume only when the definition is the same. Another definition (grid,
variants, base config, overrides, metric, scheduler) in a dir with trial results is refused with
one line naming the differing part; a dir whose trials have no result yet (a failed or
interrupted start) is cleared and the new sweep starts there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Sequence

from returnn_ray.atomic import atomic_write
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.space import VARIANT_KEY, Dimension
from returnn_ray.training.lr_file import load_learning_rate_file

MANIFEST = "sweep.json"
"""The definition's file in the sweep dir."""

RUN_ONLY_KEYS = ("ray_address", "ray_placement_timeout", "sweep_max_concurrent_trials", "sweep_dir", "debug")
"""``++`` keys that change how a sweep runs, not its trials: a resume may change them."""

STATE = ("tune", "trials", "results.txt", "best.config", "best.json", "metrics.jsonl")
"""What a sweep writes in its dir (and the plot, ``<metric>.png``)."""


def definition(job: SweepJob, space: Sequence[Dimension], settings, files: Sequence[str]) -> dict[str, Any]:
    """The parts that decide a sweep's trials, as JSON data (named as a user would name them).

    ``files``: every config file the base config loaded (``--config`` and ``include`` too)."""
    s = settings.sweep
    parts = {
        "base config": [_file(path) for path in dict.fromkeys(files)],
        "overrides": _overrides(job.args),
        "grid": [[d.key, d.kind, list(d.values)] for d in space if d.key != VARIANT_KEY],
        "variants": [_file(path) for d in space if d.key == VARIANT_KEY for path in d.values],
        "metric": [s.sweep_metric, s.sweep_mode],
        "scheduler": [s.sweep_scheduler, s.sweep_grace_period, s.sweep_num_samples],
    }
    return json.loads(json.dumps(parts, default=repr))


def _overrides(args: Sequence[str]) -> list[list[str]]:
    """The command line's arguments that decide the trials, as ``[token]`` or ``[++key, value]``:
    all but ``++key value`` of a run-only or sweep key (``-n 3`` and ``--config=f`` stay)."""
    out: list[list[str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("++") and i + 1 < len(args):
            if token[2:] not in RUN_ONLY_KEYS and not token[2:].startswith("sweep"):
                out.append([token, args[i + 1]])
            i += 2
            continue
        out.append([token])
        i += 1
    return out


def _file(path: str) -> list[str]:
    """A config file by its path and content (an edited base config makes another sweep)."""
    with open(path, "rb") as f:
        return [path, hashlib.sha256(f.read()).hexdigest()[:16]]


def prepare(sweep_dir: str, new: dict[str, Any], key: str) -> tuple[str, str]:
    """Makes ``sweep_dir`` hold the sweep ``new``; returns ``("resume", "")``, ``("new", "")`` or
    ``("anew", <what differed>)`` (another sweep's dir without trial results, cleared). Raises
    for another sweep with results."""
    path = os.path.join(sweep_dir, MANIFEST)
    old = _read(path)
    has_state = any(os.path.exists(os.path.join(sweep_dir, name)) for name in STATE[:2])
    if old == new and has_state:
        return "resume", ""
    outcome = "new", ""
    if has_state or old is not None:
        if old != new and has_results(sweep_dir):
            raise ConfigError(
                f"{key} {sweep_dir!r} holds another sweep ({differs(old, new)}); rerun that sweep's command to"
                f" resume it, or give another {key} (or remove {sweep_dir!r}) to start this one"
            )
        for name in STATE:
            target = os.path.join(sweep_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        outcome = ("anew", differs(old, new)) if has_state else outcome
    atomic_write(path, json.dumps(new, indent=1) + "\n")
    return outcome


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: another sweep than any new one
    return data if isinstance(data, dict) else {}


def differs(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One phrase naming the first differing part, e.g. ``its grid: [...]; now: [...]``."""
    if not old:
        return "one without a readable sweep.json definition"
    for part, value in new.items():
        if old.get(part) != value:
            return f"its {part}: {_show(part, old.get(part))}; now: {_show(part, value)}"
    return "another definition"


def _show(part: str, value: Any) -> str:
    """A part as a user typed it: ``learning_rate=0.1,0.2``, file names, ``++key value``."""
    if not value or not isinstance(value, list):
        text = json.dumps(value)
    elif part == "grid":
        text = " ".join(f"{k}={','.join(map(str, v))}" if kind == "grid" else f"{k}={kind}{v}" for k, kind, v in value)
    elif part in ("base config", "variants"):
        text = " ".join(f"{os.path.basename(p)} (sha256 {h[:8]})" for p, h in value)
    elif part == "overrides":
        text = " ".join(" ".join(arg) for arg in value)
    else:
        text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def has_results(sweep_dir: str) -> bool:
    """Whether a trial of the sweep made progress: finished an epoch (its ``learning_rates`` holds
    one) or saved a mid-epoch checkpoint."""
    trials = os.path.join(sweep_dir, "trials")
    if not os.path.isdir(trials):
        return False
    for name in os.listdir(trials):
        trial = os.path.join(trials, name)
        if os.path.isdir(trial) and any(f.endswith(".partial.pt") for f in os.listdir(trial)):
            return True  # a mid-epoch checkpoint (save_interval_steps): progress a rerun continues
        lr_file = os.path.join(trials, name, "learning_rates")
        if os.path.exists(lr_file):
            try:
                epochs = load_learning_rate_file(lr_file)
            except (OSError, ValueError, UserError):  # unreadable: a result, never deleted
                return True
            if any(not k.startswith(":meta:") for data in epochs.values() for k in data.error):
                return True
    return False
