"""Checks and bounds that the typed settings apply to training keys, kept in the config layer.

They belong to the settings (``settings.py`` validates a config with them before anything runs),
and the training code that later uses the same values imports them from here: config sits
below training, so neither reaches up. :mod:`returnn_ray.training.lr_control` holds the
learning-rate policies themselves; ``tests/test_settings.py`` checks that the key list
and the kinds here match them.

>>> check_cleanup_old_models({"keep_last_n": 0})
Traceback (most recent call last):
...
returnn_ray.errors.ConfigError: cleanup_old_models: keep_last_n must be an int >= 1, got 0
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from returnn_ray.errors import ConfigError

__all__ = [
    "MAX_LEARNING_RATE",
    "LrControlKind",
    "LR_CONTROL_CONFIG_KEYS",
    "CLEANUP_DEFAULTS",
    "check_cleanup_old_models",
    "check_torch_distributed",
    "cleanup_options",
]

MAX_LEARNING_RATE = 1e30
"""The largest learning rate accepted: Adam's first step is 10x it, which must fit a float32
weight (3.4e38), or torch stops with an overflow error deep in the optimizer."""

LrControlKind = Literal["constant", "newbob", "newbob_rel", "newbob_relative", "newbob_abs", "newbob_multi_epoch"]
"""Values of the ``learning_rate_control`` config key."""

LR_CONTROL_CONFIG_KEYS: tuple[str, ...] = (
    "learning_rate",
    "min_learning_rate",
    "learning_rates",
    "learning_rate_control_error_measure",
    "learning_rate_control_relative_error_relative_lr",
    "learning_rate_control_min_num_epochs_per_new_lr",
    "newbob_relative_error_div_by_old",
    "learning_rate_decay",
    "learning_rate_growth",
    "newbob_relative_error_threshold",
    "newbob_error_threshold",
    "newbob_multi_num_epochs",
    "newbob_multi_update_interval",
    "newbob_relative_error_grow_threshold",
    "newbob_learning_rate_decay",
    "newbob_learning_rate_growth",
)
"""Every config key some learning-rate policy reads (each policy ignores the others' keys), the
two older ``newbob_learning_rate_*`` aliases last."""

CLEANUP_DEFAULTS: Mapping[str, Any] = {"keep_last_n": 2, "keep_best_n": 4, "keep": None}
"""RETURNN's ``cleanup_old_models`` options: keep the last 2 epochs, the best 4 of each score, and
``keep`` (default: a pattern that depends on the newest epoch, see
:func:`returnn_ray.training.checkpoints.default_keep_epochs`)."""


def check_cleanup_old_models(value: Any) -> None:
    """Before training: ``cleanup_old_models`` is False/None, True, or a dict of RETURNN's options
    (``keep_last_n`` int >= 1, ``keep_best_n`` int >= 0, ``keep`` a list of epochs), as RETURNN's
    ``cleanup_old_models`` asserts, only after the first epoch."""
    if value is None or value is False:
        return
    cleanup_options(value)


def cleanup_options(value: bool | Mapping[str, Any]) -> dict[str, Any]:
    """The ``cleanup_old_models`` options with RETURNN's defaults filled in; a bad value is a
    :class:`ConfigError`."""
    opts = dict(CLEANUP_DEFAULTS)
    if value is True:
        return opts
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"cleanup_old_models must be True/False or a dict of {sorted(CLEANUP_DEFAULTS)}, got {value!r}"
        )
    unknown = sorted(set(value) - set(CLEANUP_DEFAULTS))
    if unknown:
        raise ConfigError(f"cleanup_old_models: unknown option(s) {unknown}; known: {sorted(CLEANUP_DEFAULTS)}")
    opts.update(value)
    if not (isinstance(opts["keep_last_n"], int) and opts["keep_last_n"] >= 1):
        raise ConfigError(f"cleanup_old_models: keep_last_n must be an int >= 1, got {opts['keep_last_n']!r}")
    if not (isinstance(opts["keep_best_n"], int) and opts["keep_best_n"] >= 0):
        raise ConfigError(f"cleanup_old_models: keep_best_n must be an int >= 0, got {opts['keep_best_n']!r}")
    keep = opts["keep"]
    if keep is not None and not (
        isinstance(keep, (list, tuple, set, frozenset, range)) and all(isinstance(e, int) for e in keep)
    ):
        raise ConfigError(f"cleanup_old_models: keep must be a list of epochs, got {keep!r}")
    return opts


TORCH_DISTRIBUTED_KEYS = frozenset({
    "reduce_type", "param_sync_step", "sync_on_cpu", "sync_optimizer_state", "sync_at_epoch_end",
    "sync_complete_frac", "dataset_distribution", "class", "options",
})
"""Options of RETURNN's ``torch_distributed`` that returnn-ray follows (see returnn_ray/training/reduction.py)."""

_TORCH_DISTRIBUTED_REFUSED = {
    "backend": "Ray Train sets up the process group (gloo on CPU, nccl on GPU); remove it",
    "timeout_sec": "Ray Train sets up the process group with its own timeout; remove it",
    "sync": "nested sync levels are not implemented; use reduce_type 'grad' or 'param'",
}


def check_torch_distributed(opts: Any) -> None:
    """RETURNN's ``torch_distributed`` dict: options returnn-ray follows, else one line naming the option.

    >>> check_torch_distributed({"reduce_type": "param", "param_sync_step": 0})
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: torch_distributed: reduce_type 'param' needs param_sync_step, a positive int; got 0
    """
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise ConfigError(f"torch_distributed must be a dict (RETURNN's options, e.g. {{}}), got {opts!r}")
    for key in opts:
        if key in _TORCH_DISTRIBUTED_REFUSED:
            raise ConfigError(f"torch_distributed: option {key!r} is not supported: {_TORCH_DISTRIBUTED_REFUSED[key]}")
        if key not in TORCH_DISTRIBUTED_KEYS:
            raise ConfigError(f"torch_distributed: unknown option {key!r} (known: {', '.join(sorted(TORCH_DISTRIBUTED_KEYS))})")
    reduce_type = opts.get("reduce_type", "grad")
    if reduce_type not in ("grad", "grad_explicit", "param"):
        raise ConfigError(f"torch_distributed: reduce_type must be 'grad' or 'param', got {reduce_type!r}")
    step = opts.get("param_sync_step")
    if reduce_type == "param" and not (isinstance(step, int) and not isinstance(step, bool) and step > 0):
        raise ConfigError(f"torch_distributed: reduce_type 'param' needs param_sync_step, a positive int; got {step!r}")
    if opts.get("sync_at_epoch_end", True) is not True:
        raise ConfigError(
            "torch_distributed: sync_at_epoch_end False is not supported: every worker scores dev with the model "
            "rank 0 saves, so the ranks must agree at the epoch's end; remove it"
        )
    if opts.get("dataset_distribution", "shard") != "shard":
        raise ConfigError(
            f"torch_distributed: dataset_distribution {opts['dataset_distribution']!r} is not supported: returnn-ray "
            "always shards each epoch over the workers (every seq once); remove it or set 'shard'"
        )
    _check_ddp_class(opts)


def _check_ddp_class(opts: Mapping[str, Any]) -> None:
    """``class``: only torch's DDP; ``options``: a dict of DDP keyword arguments."""
    cls = opts.get("class")
    if cls is not None and getattr(cls, "__name__", None) != "DistributedDataParallel":
        raise ConfigError(f"torch_distributed: class {cls!r} is not supported; only torch's DistributedDataParallel")
    if opts.get("reduce_type") == "param" and ("class" in opts or "options" in opts):
        raise ConfigError("torch_distributed: 'class'/'options' configure DDP, which reduce_type 'param' does not use; remove them")
    if not isinstance(opts.get("options", {}), dict):
        raise ConfigError(f"torch_distributed: options must be a dict of DDP keyword arguments, got {opts['options']!r}")
