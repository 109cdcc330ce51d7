"""``dynamic_learning_rate``: a config's function of the global step, applied per step as RETURNN's torch updater does.

RETURNN (``returnn.torch.updater.Updater``) calls it with ``global_train_step``, ``epoch``,
``epoch_continuous`` and ``learning_rate`` (the epoch's lr from the learning-rate control) and
uses what it returns, times a param group's ``learning_rate_multiplier``, as the lr of the step.
Its engine sets it at each epoch start (``epoch_continuous = epoch - 1``) and after each step (the
global step counted on, ``epoch_continuous = epoch - 1 + complete_frac`` of the step just done).
So the update of a step with global index ``g`` uses ``f(global_train_step=g, ...)`` with the
epoch fraction done *before* that step. The fraction here is of the whole epoch over all ranks,
the same on every rank (RETURNN with several GPUs averages its ranks' own fractions).

>>> def lr(*, global_train_step, learning_rate, **_):
...     return learning_rate * min(1.0, (global_train_step + 1) / 4)
>>> plan = BatchPlan(batches=tuple(np.arange(n) for n in (2, 1, 3)), num_ranks=1)
>>> steps = StepLearningRate.for_epoch(lr, learning_rate=0.1, epoch=1, plan=plan)
>>> [round(steps(i, global_train_step=i), 3) for i in range(3)]
[0.025, 0.05, 0.075]
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np

from returnn_ray.data.batching import BatchPlan
from returnn_ray.errors import ConfigError
from returnn_ray.training.lr_control import MAX_LEARNING_RATE

__all__ = ["StepLearningRate", "check_dynamic_learning_rate", "lr_for_step"]


def check_dynamic_learning_rate(fn: Callable | None) -> None:
    """Before training: the function takes what RETURNN's torch updater requires of it.

    >>> check_dynamic_learning_rate(lambda global_train_step, learning_rate: learning_rate)
    Traceback (most recent call last):
    returnn_ray.errors.ConfigError: dynamic_learning_rate must take **kwargs (RETURNN passes more arguments than it names), e.g. def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs)
    """
    if fn is None:
        return
    if not callable(fn):
        raise ConfigError(f"dynamic_learning_rate must be a function of the step, got {fn!r}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check before it is called
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ConfigError(
            "dynamic_learning_rate must take **kwargs (RETURNN passes more arguments than it names), "
            "e.g. def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs)"
        )
    if "network" in params:
        raise ConfigError("dynamic_learning_rate: its 'network' argument is TensorFlow only; remove it")


def lr_for_step(
    fn: Callable, *, learning_rate: float, global_train_step: int, epoch: int, epoch_continuous: float
) -> float:
    """What ``fn`` gives for this step (RETURNN's ``Updater._update_effective_learning_rate``), checked."""
    value = fn(
        global_train_step=global_train_step, epoch=epoch, epoch_continuous=epoch_continuous, learning_rate=learning_rate
    )
    try:
        lr = float(value)
    except (TypeError, ValueError):
        lr = math.nan
    if not 0 <= lr <= MAX_LEARNING_RATE:
        raise ConfigError(
            f"dynamic_learning_rate returned {value!r} at global_train_step {global_train_step} (epoch {epoch}); "
            f"it must return a number in [0, {MAX_LEARNING_RATE:g}]"
        )
    return lr


class StepLearningRate:
    """The lr of each step of one epoch under ``dynamic_learning_rate``."""

    def __init__(self, fn: Callable, *, learning_rate: float, epoch: int, fractions: np.ndarray) -> None:
        self._fn, self._lr, self._epoch, self._fractions = fn, learning_rate, epoch, fractions

    @classmethod
    def for_epoch(
        cls, fn: Callable | None, *, learning_rate: float, epoch: int, plan: BatchPlan, skip_seqs: int = 0
    ) -> StepLearningRate | None:
        """For the epoch ``plan`` runs (after ``skip_seqs`` seqs a resumed epoch had done); None without ``fn``.

        ``epoch_continuous`` before step ``i``: ``epoch - 1`` plus the fraction of the epoch's seqs
        the steps before it used, in float32 as RETURNN's data pipeline gives ``complete_frac``.
        """
        if fn is None:
            return None
        per_step = np.array([sum(len(b) for b in plan.step(s)) for s in range(plan.num_steps)], dtype=np.int64)
        before = skip_seqs + np.concatenate([[0], np.cumsum(per_step)[:-1]]) if len(per_step) else per_step
        total = max(skip_seqs + int(per_step.sum()), 1)
        return cls(fn, learning_rate=learning_rate, epoch=epoch, fractions=(before / total).astype(np.float32))

    def __call__(self, step_in_epoch: int, *, global_train_step: int) -> float:
        """The lr of the step ``step_in_epoch`` (0-based, of this run of the epoch) with global index ``global_train_step``."""
        return lr_for_step(
            self._fn,
            learning_rate=self._lr,
            global_train_step=global_train_step,
            epoch=self._epoch,
            epoch_continuous=self._epoch - 1 + float(self._fractions[step_in_epoch]),
        )
