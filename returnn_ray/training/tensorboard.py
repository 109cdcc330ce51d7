"""TensorBoard event files of a training run (``use_tensorboard = True``), as RETURNN writes them.

RETURNN's torch engine logs ``train/<loss>`` and ``train/learning_rate`` every
``tensorboard_opts["log_every_n_train_steps"]`` (default 100) global train steps, and
``<dataset>/<loss>`` after each epoch for every evaluated dataset, all over the global train step. It
writes to ``./runs/<date>_<host>``; we write next to the checkpoints, ``<model dir>/tensorboard``
(or ``tensorboard_opts["log_dir"]``), so a run and its curves stay together, also on a cluster
where the chief worker's working directory is on another machine. Only rank 0 writes.
"""

# Imports inside functions: torch's TensorBoard writer loads only when it is used (start-up time).
from __future__ import annotations

import os
from typing import Any, Mapping

from returnn_ray.errors import UserError


class TensorBoardLog:
    """Scalars to TensorBoard event files; ``None``-safe to call when TensorBoard is off."""

    def __init__(self, log_dir: str, *, every_n_train_steps: int = 100) -> None:
        SummaryWriter = _import_summary_writer()
        self.log_dir = log_dir
        self.every_n_train_steps = every_n_train_steps
        self._writer = SummaryWriter(log_dir=log_dir)

    def train_step(self, global_step: int, scores: Mapping[str, float], learning_rate: float) -> None:
        """The step's losses and the learning rate, every ``every_n_train_steps`` global steps."""
        if global_step % self.every_n_train_steps == 0:
            for name, value in scores.items():
                self._writer.add_scalar(f"train/{name}", value, global_step=global_step)
            self._writer.add_scalar("train/learning_rate", learning_rate, global_step=global_step)

    def evaluated(self, dataset: str, scores: Mapping[str, float], global_step: int) -> None:
        """A dataset's scores after an epoch, at the global train step (RETURNN's x axis)."""
        for name, value in scores.items():
            self._writer.add_scalar(f"{dataset}/{name}", value, global_step=global_step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_dir(model_prefix: str | None, opts: Mapping[str, Any]) -> str:
    """Where the event files go: ``opts["log_dir"]``, else ``<model dir>/tensorboard``."""
    if opts.get("log_dir"):
        return str(opts["log_dir"])
    return os.path.join(os.path.dirname(os.path.abspath(model_prefix or "returnn_ray_out/model")), "tensorboard")


def check_tensorboard(opts: Any) -> None:
    """``tensorboard_opts`` must be a dict of known keys and the package installed; checked
    before any worker starts."""
    _import_summary_writer()
    known = {"log_every_n_train_steps", "log_dir"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UserError(f"tensorboard_opts: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    every = opts.get("log_every_n_train_steps", 100)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UserError(f"tensorboard_opts['log_every_n_train_steps'] must be an int >= 1, got {every!r}")


def _import_summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is an optional extra
        raise UserError(
            "use_tensorboard needs the tensorboard package: pip install 'returnn-ray[tensorboard]'"
            " (or set use_tensorboard False)"
        ) from exc
    return SummaryWriter
