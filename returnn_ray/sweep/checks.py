"""What ``returnn-ray sweep`` checks before Ray starts: each trial's config, and the sweep dir.

A trial's config is the base config plus its variant, loaded and checked as ``returnn-ray CONFIG``
checks a config before it trains (settings and their types, datasets, model, optimizer), so a bad
swept value is one line naming the trial and the key, not a trial error after Ray started.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from returnn_ray.cluster.ray_internals import user_message
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.space import Dimension, check_points, variant_name
from returnn_ray.sweep.trial import trial_args, trial_dir


def check_trials(job: SweepJob, space: Sequence[Dimension]) -> int:
    """Loads and checks the config of every trial (:func:`check_points`); returns how many.

    Datasets are opened once per distinct data settings; nothing is written (the trials'
    directories are made when they start, in the checked sweep dir).
    """
    from returnn_ray.config import USER_CONFIG_MODULE, get_global_config, load_config, load_settings, set_global_config
    from returnn_ray.data.from_settings import open_dataset
    from returnn_ray.training.checks import check_trainable

    opened: dict[tuple[str, str], Any] = {}

    def opener(settings, name: str):
        key = (repr(settings.data), name)
        if key not in opened:
            opened[key] = open_dataset(settings, name)
        return opened[key]

    points = check_points(space)
    try:
        base_config = get_global_config()
    except ConfigError:
        base_config = None
    # Loading a Python config makes it the module returnn_ray._user_config (what pickled functions
    # of the config name): the base config's, not the last trial's, must be that module afterwards.
    base_module = sys.modules.get(USER_CONFIG_MODULE)
    try:
        for values in points:
            files, args = trial_args(job, values, trial_dir(job.sweep_dir, values, "check"))
            try:
                config = load_config(files, args)
                set_global_config(config)  # as in the trial: a Python config's functions may read it
                check_trainable(load_settings(config), opener)
            except UserError as exc:
                raise ConfigError(f"sweep trial {variant_name(values)}: {user_message(exc)}") from exc
    finally:
        set_global_config(base_config)
        _restore_module(USER_CONFIG_MODULE, base_module)
    return len(points)


def _restore_module(name: str, module) -> None:
    """``sys.modules[name]`` and the parent package's attribute back to ``module`` (None: removed)."""
    package, _, attr = name.rpartition(".")
    if module is None:
        sys.modules.pop(name, None)
        if package in sys.modules and hasattr(sys.modules[package], attr):
            delattr(sys.modules[package], attr)
        return
    sys.modules[name] = module
    if package in sys.modules:
        setattr(sys.modules[package], attr, module)


def check_sweep_dir(sweep_dir: str, key: str) -> None:
    """Makes ``sweep_dir`` (if needed) and writes and removes a file there: permission bits alone
    do not tell (root ignores them; read-only mounts, /proc)."""
    from returnn_ray.atomic import atomic_write

    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        raise ConfigError(f"{key} {sweep_dir!r} is a file, not a directory; give another {key}")
    try:
        os.makedirs(sweep_dir, exist_ok=True)
        probe = os.path.join(sweep_dir, f".write-check-{os.getpid()}")
        atomic_write(probe, b"")
        os.remove(probe)
    except (OSError, UserError) as exc:
        cause = exc.__cause__ if isinstance(exc, UserError) and isinstance(exc.__cause__, OSError) else exc
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        raise ConfigError(f"cannot write the sweep dir {sweep_dir!r} ({key}): {reason}; give another {key}") from exc
