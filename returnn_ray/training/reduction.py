"""How the ranks' steps combine into one update: returnn-ray's default, or RETURNN's ``torch_distributed``.

Without ``torch_distributed`` (returnn-ray's default, ``"sum"``): each rank's objective is
scaled by the number of workers W and DDP averages the gradients, so the update is the *sum*
of the ranks' gradients: N workers make the update one worker makes accumulating their N
batches (``accum_grad_multiple_step``). A config tuned on one GPU keeps its learning rate.

With ``torch_distributed`` the config asks for RETURNN's multi-GPU rule, and gets it from
RETURNN's own :class:`returnn.torch.distributed.DistributedContext`:

- ``reduce_type: "grad"`` (RETURNN's default; ``"grad_explicit"`` is the same maths): DDP
  with the config's ``options``; the objective is not scaled, so DDP's average over ranks is
  the update: the *mean* of the ranks' gradients.
- ``reduce_type: "param"``: no DDP; every rank updates its own parameters, which are averaged
  after every ``param_sync_step``-th update of an epoch (``step_after_param_update``) and, with
  ``sync_at_epoch_end``, parameters, buffers and optimizer state at the epoch's end
  (``step_after_epoch``), so that the checkpoint and the dev score are of the average.

Padding steps (a rank with fewer batches than the others) stay out of the maths: the rank
contributes a zero gradient (``Σ 0·p``, so DDP's all-reduce still matches) and no frames.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal, Mapping

import torch

ReduceKind = Literal["sum", "grad", "param"]

_INIT_INFO_ENV = "_RETURNN_TORCH_DISTRIBUTED_INIT_INFO"
"""RETURNN's env var for a process group set up elsewhere (here: by Ray Train)."""


@dataclasses.dataclass(frozen=True)
class Reduction:
    """The rule of a run: ``sum`` (no ``torch_distributed``), RETURNN's ``grad`` or ``param``."""

    kind: ReduceKind
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The config's ``torch_distributed`` dict (empty for ``sum``)."""

    @classmethod
    def from_setting(cls, torch_distributed: Mapping[str, Any] | None) -> "Reduction":
        """The rule for the config's ``torch_distributed`` (validated by :mod:`returnn_ray.config.validators`)."""
        if torch_distributed is None:
            return cls("sum")
        reduce_type = torch_distributed.get("reduce_type", "grad")
        return cls("param" if reduce_type == "param" else "grad", dict(torch_distributed))

    def loss_scale(self, world_size: int) -> float:
        """What each rank's objective is multiplied by before DDP averages (``sum``: W, else 1)."""
        return float(world_size) if self.kind == "sum" else 1.0

    @property
    def uses_ddp(self) -> bool:
        return self.kind != "param"

    def ddp_kwargs(self) -> dict[str, Any]:
        """``sum``: no per-forward buffer broadcast (buffers are synced at the epoch's end instead);
        ``grad``: the config's ``options``, as RETURNN passes them to DDP."""
        if self.kind == "sum":
            return {"forward_sync_buffers": False}
        return dict(self.options.get("options") or {})


class RankSync:
    """The collectives of a ``param`` run, done by RETURNN's ``DistributedContext`` (none for ``sum``/``grad``
    besides DDP, and the epoch-end buffer broadcast)."""

    def __init__(self, reduction: Reduction, *, rank: int, world_size: int):
        self.reduction, self.world_size = reduction, world_size
        self.returnn_ctx = _returnn_context(reduction.options, rank, world_size) if (
            reduction.kind == "param" and world_size > 1
        ) else None

    def after_update(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch_update_idx: int) -> None:
        """After the ``epoch_update_idx``-th (0-based) optimizer update of the epoch: RETURNN's parameter sync."""
        if self.returnn_ctx is not None:
            self.returnn_ctx.step_after_param_update(
                module=module, optimizer=optimizer, epoch_update_step_idx=epoch_update_idx
            )

    def after_epoch(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> int:
        """Make the state that is scored and saved the same on every rank; returns the global step.

        ``param``: RETURNN's ``step_after_epoch``. ``sum``/``grad``: rank 0's buffers (e.g.
        BatchNorm's running statistics; DDP without ``broadcast_buffers`` leaves them per rank,
        with it they lag one step) to every rank, so each rank's dev shard is scored with the
        model rank 0 saves.
        """
        if self.world_size <= 1:
            return step
        if self.returnn_ctx is not None:
            return self.returnn_ctx.step_after_epoch(module=module, optimizer=optimizer, global_train_step=step)
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
        return step


def _returnn_context(options: Mapping[str, Any], rank: int, world_size: int):
    """RETURNN's ``DistributedContext`` over the process group Ray Train made (RETURNN reads the
    rank and size from its init-info env var instead of making a group of its own)."""
    from returnn.torch.distributed import DistributedContext  # torch-heavy; only for param runs

    saved = {k: os.environ.get(k) for k in (_INIT_INFO_ENV, "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    os.environ[_INIT_INFO_ENV] = repr({"rank": rank, "size": world_size, "hostnames": None})
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    try:
        opts = {k: v for k, v in options.items() if k not in _NOT_FOR_RETURNN}
        opts.setdefault("sync_at_epoch_end", True)  # every rank scores and rank 0 saves the same model
        return DistributedContext(opts)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_NOT_FOR_RETURNN = ("dataset_distribution",)
"""Options returnn-ray handles itself (it always shards the epoch over the ranks)."""
