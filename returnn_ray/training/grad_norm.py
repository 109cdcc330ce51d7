"""RETURNN's ``maximize_grad_norm`` (its TF updater): the gradient gets the extra term of
``-factor * ||g||``, where ``||g||`` is the global L2 norm of the step's gradient ``g`` over all
trainable parameters.

RETURNN (``returnn/tf/updater.py``, ``_GetGlobalInfo.get_maximize_grad_norm_var_grads``) adds
``d(-factor * ||g||)/dθ`` to each variable's gradient per step, before gradient accumulation and
before any clipping; ``g`` is the gradient of the whole objective (losses and L2), after Horovod's
all-reduce when there is one, so the norm is that of the *reduced* gradient.

Here that is one backward pass through a surrogate objective (so DDP's gradient hooks fire once
per parameter, as with a plain loss)::

    surrogate = loss - factor * <g_rank, stop_gradient(G / ||G||)>

with ``g_rank = dloss/dθ`` built with ``create_graph=True`` (double backward) and ``G`` the
gradient DDP will produce (the mean of the ranks' ``g_rank``; one rank: ``g_rank`` itself).
Its gradient is ``g_rank - factor * H_rank G/||G||``; DDP's mean over the ranks gives
``G - factor * d||G||/dθ``: RETURNN's term for the reduced gradient, exactly.

RETURNN's torch engine refuses the option (``returnn/torch/updater.py``), so returnn-ray applies
it to network-dict configs only (TF-engine semantics) and refuses it with ``get_model`` configs.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterable

import torch


def with_grad_norm_term(loss: torch.Tensor, params: Iterable[torch.Tensor], factor: float, *, world_size: int) -> torch.Tensor:
    """The surrogate objective whose gradient is RETURNN's ``g - factor * d||G||/dθ`` (see the module).

    Every rank of a DDP group must call it in the same step (one all-reduce of the gradient).
    """
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not used and world_size == 1:
        return loss
    # every parameter, unused ones as zeros: the same length on every rank for the all-reduce
    # (a rank's padding step or a layer one rank's batch does not reach)
    flat = torch.cat([(g.detach() if g is not None else torch.zeros_like(p)).reshape(-1) for p, g in zip(params, grads)])
    if world_size > 1:
        torch.distributed.all_reduce(flat)
        flat = flat / world_size  # DDP's gradient: the mean over the ranks
    norm = flat.norm()
    if not torch.isfinite(norm) or norm == 0:
        return loss  # d||G|| is undefined at 0; a non-finite norm is left to the loss's own gradient
    direction = flat / norm
    dot = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for p, g in zip(params, grads)]) @ direction
    return loss - factor * dot


def double_backward_context(factor: float, device_type: str) -> ContextManager:
    """Around the forward of a step with ``maximize_grad_norm``: cuDNN's RNN kernels have no double
    backward, so they are off for that step (torch's own LSTM has one)."""
    if factor and device_type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()
