"""What ``returnn-ray sweep`` checks before Ray starts: each trial's config, and the sweep dir.

A trial's config is the base config plus its variant, loaded and checked as ``returnn-ray CONFIG``
checks a config before it trains (settings and their types, datasets, model, optimizer), so a bad
swept value is one line naming the trial and the key, not a trial error after Ray started.

Trials that differ only in their batching (``batch_size``, ``max_seqs``, ...) must also differ in
their batches: when another limit binds first (``max_seqs`` 32 fills every batch before either
swept ``batch_size`` does), two grid values train the same model, and the sweep would rank a
setting against itself (:func:`same_batch_pairs`, planned from the train data's seq lengths).
"""

# Imports inside functions: training.checks (torch) loads only when trials are checked (start-up time).
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import types
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from returnn_ray.atomic import atomic_write
from returnn_ray.cluster.ray_internals import user_message
from returnn_ray.config import USER_CONFIG_MODULE, get_global_config, load_config, load_settings, set_global_config
from returnn_ray.data.batching import BatchingOptions, plan_batches
from returnn_ray.data.from_settings import batching_options, open_dataset
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.space import PER_TRIAL_KEYS, Dimension, check_points, variant_name
from returnn_ray.sweep.trial import trial_args, trial_dir

BATCH_CHECK_EPOCHS = 3
"""Epochs whose batches two trials must share to be refused as the same (the first ones of the run)."""


def check_trials(job: SweepJob, space: Sequence[Dimension]) -> int:
    """Loads and checks the config of every trial (:func:`check_points`); returns how many.

    Datasets are opened once per distinct data settings; nothing is written (the trials'
    directories are made when they start, in the checked sweep dir).
    """
    from returnn_ray.training.checks import check_trainable

    opened: dict[tuple[str, str], Any] = {}

    def opener(settings, name: str):
        key = (repr(settings.data), name)
        if key not in opened:
            opened[key] = open_dataset(settings, name)
        return opened[key]

    points = check_points(space)
    trials: list[tuple[str, Any]] = []
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
                settings = load_settings(config)
                check_trainable(settings, opener)
            except UserError as exc:
                raise ConfigError(f"sweep trial {variant_name(values)}: {user_message(exc)}") from exc
            trials.append((variant_name(values), settings))
    finally:
        set_global_config(base_config)
        _restore_module(USER_CONFIG_MODULE, base_module)
    check_batches_differ(trials, opener)
    return len(points)


def check_batches_differ(trials: Sequence[tuple[str, Any]], opener) -> None:
    """Trials whose settings differ only in their batching must differ in their batches
    (:func:`same_batch_pairs` on the train data of their first epochs); one line naming two that
    do not, and what binds. ``trials``: ``(name, Settings)``; ``opener(settings, name)`` opens a dataset."""
    groups: dict[Hashable, list[tuple[str, Any]]] = {}
    for name, settings in trials:
        groups.setdefault(_all_but_batching(settings), []).append((name, settings))
    for group in groups.values():
        options = {name: batching_options(settings, "train") for name, settings in group}
        if len(set(map(repr, options.values()))) < 2:
            continue  # nothing about the batches is swept here
        settings = group[0][1]
        train = opener(settings, "train")
        epochs = range(1, min(settings.run.num_epochs, BATCH_CHECK_EPOCHS) + 1)
        orders = [train.seq_order_for_epoch(epoch) for epoch in epochs]
        pairs = same_batch_pairs(orders, train.seq_lens, options)
        if pairs:
            first, second = pairs[0]
            why = why_same_batches(plan_batches(orders[0], train.seq_lens, options[first]), options[first])
            raise ConfigError(
                f"sweep trials {first} and {second} train on the same batches ({why}), so the sweep would rank "
                "one setting against itself; sweep values that change the batches (e.g. raise or drop max_seqs; "
                "`returnn-ray dump-dataset CONFIG ++key value --batches` shows an epoch's batches)"
            )


def same_batch_pairs(
    orders: Sequence[np.ndarray], seq_lens: Mapping[str, np.ndarray], options: Mapping[str, BatchingOptions]
) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` of names whose different batching ``options`` plan the same batches
    (:func:`~returnn_ray.data.batching.plan_batches`) for every epoch order in ``orders``;
    ``a`` is the first name of its kind. Options equal to an earlier name's are skipped.

    >>> lens = {"data": np.array([10, 12, 11, 9, 10, 12])}
    >>> options = {"a": BatchingOptions(batch_size=100, max_seqs=2), "b": BatchingOptions(batch_size=200, max_seqs=2),
    ...            "c": BatchingOptions(batch_size=20, max_seqs=2)}
    >>> same_batch_pairs([np.arange(6)], lens, options)
    [('a', 'b')]
    """
    distinct: dict[str, BatchingOptions] = {}
    for name, option in options.items():
        if all(option != other for other in distinct.values()):
            distinct[name] = option
    groups = [list(distinct)]
    for order in orders:  # each epoch splits the groups of names that still share all batches
        refined = []
        for names in groups:
            by_batches: dict[bytes, list[str]] = {}
            for name in names:
                by_batches.setdefault(_batches_digest(plan_batches(order, seq_lens, distinct[name])), []).append(name)
            refined += [same for same in by_batches.values() if len(same) > 1]
        groups = refined
    return [(names[0], other) for names in groups for other in names[1:]]


def why_same_batches(batches: Sequence[np.ndarray], options: BatchingOptions) -> str:
    """What the shared batches look like: ``max_seqs`` filling them, or just their number.

    >>> why_same_batches([np.arange(4), np.arange(4), np.arange(2)], BatchingOptions(batch_size=99, max_seqs=4))
    'max_seqs 4 binds first: 2 of the 3 batches of epoch 1 hold 4 seqs'
    """
    full = sum(len(batch) == options.max_seqs for batch in batches)
    if options.max_seqs != -1 and 2 * full >= len(batches):
        limit = options.max_seqs
        return f"max_seqs {limit} binds first: {full} of the {len(batches)} batches of epoch 1 hold {limit} seqs"
    return f"{len(batches)} batches in epoch 1"


def _batches_digest(batches: Sequence[np.ndarray]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        digest.update(np.int64(len(batch)).tobytes())
        digest.update(np.ascontiguousarray(batch, dtype=np.int64).tobytes())
    return digest.digest()


def _all_but_batching(settings: Any) -> Hashable:
    """The trial's settings without its batching and the keys each trial sets itself, as a value
    that is equal for two trials loaded from the same files (functions by their code, not identity)."""
    return tuple(
        (f.name, _comparable(getattr(settings, f.name))) for f in dataclasses.fields(settings) if f.name != "batching"
    )


def _comparable(value: Any) -> Hashable:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        compared = (f.name for f in fields if f.name not in PER_TRIAL_KEYS)
        return (type(value).__name__, *((name, _comparable(getattr(value, name))) for name in compared))
    if isinstance(value, Mapping):
        return ("dict", *sorted(((repr(k), _comparable(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_comparable, value))
    if isinstance(value, types.FunctionType):
        return ("function", value.__qualname__, _code(value.__code__))
    if isinstance(value, type):
        return ("class", value.__module__, value.__qualname__)
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _code(code: types.CodeType) -> Hashable:
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code, code.co_names, consts)


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
