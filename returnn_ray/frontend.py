"""The run context of torch-style configs: what RETURNN's ``returnn.frontend`` gives a ``train_step``/``forward_step``.

A config written for RETURNN's torch backend does ``import returnn.frontend as rf`` and, inside
its step functions, ``rf.get_run_ctx().mark_as_loss(...)`` / ``mark_as_output(...)``. With the
import changed to ``import returnn_ray.frontend as rf`` it runs unchanged. This module is that
compatibility surface and nothing more; the model itself is plain PyTorch.

What ``rf`` offers here (everything else raises an error naming this list):

- the run context: :func:`get_run_ctx`, :class:`RunCtx` (``stage``, ``train_flag``, ``epoch``,
  ``step``, ``mark_as_loss``, ``mark_as_output``, ``mark_as_default_output``,
  ``expected_outputs``, ``outputs``, ``losses``, ``train_flag_ctx``, ``total_loss``),
  RETURNN's ``init_train_step_run_ctx`` / ``init_forward_step_run_ctx`` / ``reset_run_ctx``;
- :class:`~returnn_ray.tensor.Tensor`, :class:`~returnn_ray.tensor.Dim`,
  :class:`~returnn_ray.tensor.TensorDict`, ``batch_dim``;
- no-ops and constants: ``select_backend_torch()``, ``get_default_float_dtype()`` (``"float32"``).

For the trainer: :func:`init_run_ctx` / :func:`run_ctx_scope` set up one step's context, and
:meth:`RunCtx.loss_values` turns the marked losses into :class:`MarkedLoss` (a
:class:`~returnn_ray.model.losses.LossValue` that also knows ``use_normalized_loss``); the
gradient must use :func:`total_objective`, which honours it.

Loss semantics, checked against RETURNN's ``returnn.frontend.run_ctx.Loss``:

- ``sum``: the loss summed over all its elements (padded frames excluded when it is a
  :class:`Tensor` with dynamic dims); bool/int losses are cast to float32 first.
- ``num_frames``: ``custom_inv_norm_factor`` summed, if given; else the number of elements
  (RETURNN's ``num_elements_of_shape`` of the loss dims: for a raw ``torch.Tensor`` every axis
  is static, so ``loss.numel()``; a scalar counts 1).
- gradient term: ``scale * sum``, or ``scale * sum / num_frames`` with ``use_normalized_loss``;
  none for ``as_error`` or ``scale == 0``. Reported: ``sum / num_frames``.

The context is per thread (Ray Train runs the training loop in a thread of its own), one at a
time, as in RETURNN where it is one module global.

>>> import torch
>>> with run_ctx_scope("train_step", epoch=1, step=0) as ctx:
...     get_run_ctx().mark_as_loss(torch.tensor([0.5, 1.5, 1.0]), "ce")
...     values = ctx.loss_values()
>>> values["ce"].sum.item(), values["ce"].num_frames.item()
(3.0, 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import torch

from returnn_ray.errors import UserError
from returnn_ray.model.losses import LossValue
from returnn_ray.tensor import Dim, Tensor, TensorDict, batch_dim, tensor_dict_from_config

__all__ = [
    "Dim",
    "MarkedLoss",
    "RunCtx",
    "Stage",
    "Tensor",
    "TensorDict",
    "batch_dim",
    "get_default_float_dtype",
    "get_run_ctx",
    "init_forward_step_run_ctx",
    "init_run_ctx",
    "init_train_step_run_ctx",
    "reset_run_ctx",
    "run_ctx_scope",
    "select_backend_torch",
    "total_objective",
]

Stage = Literal["init", "train_step", "forward_step"]


@dataclasses.dataclass
class MarkedLoss(LossValue):
    """A loss marked by ``mark_as_loss``: a :class:`LossValue` plus RETURNN's ``use_normalized_loss``."""

    use_normalized_loss: bool = False
    """The gradient uses ``sum / num_frames`` instead of ``sum`` (times ``scale`` either way)."""

    def objective(self) -> torch.Tensor | None:
        """This loss's term of the training objective; None if it has none (``as_error`` or ``scale == 0``)."""
        if self.as_error or self.scale == 0.0:
            return None
        value = self.sum / self.num_frames.to(self.sum.dtype) if self.use_normalized_loss else self.sum
        return value * self.scale if self.scale != 1.0 else value


def total_objective(values: Iterable[LossValue]) -> torch.Tensor | float:
    """The training objective of a step's losses: ``Σ scale * sum`` (``sum / num_frames`` for normalized ones).

    Works for :class:`MarkedLoss` and plain :class:`LossValue` (network dicts). 0.0 if no loss counts.

    >>> v = [MarkedLoss("a", torch.tensor(6.0), torch.tensor(3), scale=2.0, use_normalized_loss=True),
    ...      LossValue("b", torch.tensor(1.0), torch.tensor(4)),
    ...      LossValue("e", torch.tensor(9.0), torch.tensor(4), as_error=True)]
    >>> total_objective(v).item()  # 2 * 6/3 + 1
    5.0
    """
    total: torch.Tensor | float = 0.0
    for value in values:
        if isinstance(value, MarkedLoss):
            term = value.objective()
        else:
            term = None if value.as_error or value.scale == 0.0 else value.sum * value.scale
        if term is not None:
            total = total + term
    return total


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point or t.dtype.is_complex


def _valid_mask(tensor: Tensor, raw: torch.Tensor, what: str) -> torch.Tensor | None:
    """Bool mask broadcastable to ``raw``: False on padded frames of the dynamic dims; None if nothing is padded."""
    if len(tensor.dims) != raw.dim():
        raise UserError(f"{what}: tensor {tensor.name!r} has dims {list(tensor.dims)} but raw shape {tuple(raw.shape)}")
    mask = None
    for axis, dim in enumerate(tensor.dims):
        lens = dim.dyn_size_ext.raw_tensor if dim.dyn_size_ext is not None else None
        if dim is batch_dim or lens is None or lens.dim() == 0:
            continue
        if batch_dim not in tensor.dims:
            raise UserError(f"{what}: tensor {tensor.name!r} has per-seq lengths on {dim} but no batch dim")
        b_axis = tensor.dims.index(batch_dim)
        m = torch.arange(raw.shape[axis], device=raw.device)[None, :] < lens.to(raw.device)[:, None]  # [B, T]
        if axis < b_axis:
            m = m.T
        shape = [1] * raw.dim()
        shape[b_axis], shape[axis] = raw.shape[b_axis], raw.shape[axis]
        m = m.reshape(shape)
        mask = m if mask is None else mask & m
    return mask


def _sum_and_count(tensor: Tensor, raw: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the non-padded elements and their number (RETURNN's masked reduce_sum, num_elements_of_shape)."""
    mask = _valid_mask(tensor, raw, what)
    if mask is None:
        return raw.sum(), torch.tensor(raw.numel(), dtype=torch.int64, device=raw.device)
    broadcast = 1
    for axis, n in enumerate(raw.shape):
        if mask.shape[axis] == 1:
            broadcast *= n
    total = torch.where(mask, raw, torch.zeros((), dtype=raw.dtype, device=raw.device)).sum()
    return total, mask.sum(dtype=torch.int64) * broadcast


def _inv_norm_factor(value: Any, device: torch.device, what: str) -> torch.Tensor:
    """``custom_inv_norm_factor`` summed, as a scalar tensor on ``device`` (int64 if integral)."""
    if isinstance(value, Tensor):
        if not isinstance(value.raw_tensor, torch.Tensor):
            raise UserError(f"{what}: custom_inv_norm_factor {value!r} has no raw torch tensor")
        total, _ = _sum_and_count(value, value.raw_tensor, what)
    elif isinstance(value, torch.Tensor):
        total = value.sum()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        total = torch.tensor(value)
    else:
        raise UserError(f"{what}: custom_inv_norm_factor must be a tensor or a number, got {type(value).__name__}")
    if not _is_float(total):
        total = total.to(torch.int64)
    return total.to(device)


class RunCtx:
    """One step's context: which stage, and what the step function marks (losses or outputs).

    Made by :func:`init_run_ctx` / :func:`run_ctx_scope`; read by configs through :func:`get_run_ctx`.
    """

    def __init__(
        self,
        *,
        stage: Stage,
        train_flag: bool = False,
        epoch: int = 1,
        step: int = 0,
        expected_outputs: TensorDict | None = None,
    ):
        self.stage: Stage = stage
        """``init`` (outside a step), ``train_step`` (training and scoring, marks losses), ``forward_step``."""
        self._train_flags = [bool(train_flag)]
        self.epoch = epoch
        """The epoch, starting at 1."""
        self.step = step
        """The global train step, starting at 0, not reset per epoch."""
        self.losses: dict[str, MarkedLoss] = {}
        """Name -> the loss marked in this step, in marking order."""
        self.outputs = TensorDict()
        """Name -> the output marked in this step (``forward_step``)."""
        self.expected_outputs = expected_outputs
        """The config's ``model_outputs`` as templates, fresh per step; None if the config has none."""

    def __repr__(self) -> str:
        return f"<RunCtx stage={self.stage!r} train_flag={self.train_flag} epoch={self.epoch} step={self.step}>"

    @property
    def train_flag(self) -> bool:
        """Training (dropout on) rather than scoring or forwarding."""
        return self._train_flags[-1]

    def is_train_flag_enabled(self, *, func: Any = None) -> bool:
        """RETURNN's per-function train flag; here one flag for all functions."""
        return self.train_flag

    @contextlib.contextmanager
    def train_flag_ctx(self, train_flag: bool, *, func: Any = None) -> Iterator[None]:
        """Temporarily set the train flag (``with rf.get_run_ctx().train_flag_ctx(False): ...``)."""
        self._train_flags.append(bool(train_flag))
        try:
            yield
        finally:
            self._train_flags.pop()

    def mark_as_loss(
        self,
        loss: Tensor | torch.Tensor,
        name: str,
        *,
        dims: Sequence[Dim] | None = None,
        scale: float = 1.0,
        as_error: bool = False,
        use_normalized_loss: bool = False,
        use_flatten_frames: bool = True,
        custom_inv_norm_factor: Tensor | torch.Tensor | int | float | None = None,
    ) -> None:
        """Mark ``loss`` (per frame, any shape; summed here) as the loss ``name`` of this step.

        :param loss: a ``torch.Tensor`` (every element counts) or a :class:`Tensor` (padded
            frames of its dynamic dims are left out)
        :param dims: for a raw ``loss``: its dims, so padded frames are left out
        :param scale: the gradient uses ``scale`` times this loss; reports are unscaled
        :param as_error: reported only, never optimised (e.g. a frame error rate)
        :param use_normalized_loss: the gradient uses ``sum / num_frames`` instead of ``sum``
        :param use_flatten_frames: accepted for RETURNN compatibility; no effect on the values
        :param custom_inv_norm_factor: what reports divide by (summed), instead of the element count
        """
        what = f"mark_as_loss(name={name!r})"
        if self.stage != "train_step":
            raise UserError(f"{what} is only allowed in train_step, not in {self.stage}")
        if name in self.losses:
            raise UserError(f"{what}: a loss {name!r} was already marked in this step; use distinct names")
        if isinstance(loss, Tensor):
            tensor, raw = loss, loss.raw_tensor
        elif isinstance(loss, torch.Tensor):
            tensor, raw = (Tensor(name, dims=dims, raw_tensor=loss) if dims is not None else None), loss
        else:
            raise UserError(
                f"{what}: loss must be a torch.Tensor (or a returnn_ray.tensor.Tensor), got {type(loss).__name__}"
            )
        if not isinstance(raw, torch.Tensor):
            raise UserError(f"{what}: the loss tensor has no raw torch tensor")
        if not _is_float(raw):
            raw = raw.to(torch.float32)  # RETURNN casts to the default float dtype
        if tensor is None:
            total, count = raw.sum(), torch.tensor(raw.numel(), dtype=torch.int64, device=raw.device)
        else:
            total, count = _sum_and_count(tensor, raw, what)
        if custom_inv_norm_factor is not None:
            count = _inv_norm_factor(custom_inv_norm_factor, raw.device, what)
        if as_error:
            total = total.detach()
        self.losses[name] = MarkedLoss(
            name=name,
            sum=total,
            num_frames=count,
            scale=float(scale),
            as_error=bool(as_error),
            use_normalized_loss=bool(use_normalized_loss),
        )

    def loss_values(self) -> dict[str, MarkedLoss]:
        """The losses marked in this ``train_step``; a UserError if there are none."""
        if not self.losses:
            raise UserError("train_step marked no loss (call rf.get_run_ctx().mark_as_loss(...))")
        return dict(self.losses)

    def total_loss(self) -> torch.Tensor | float:
        """The training objective of this step (see :func:`total_objective`)."""
        return total_objective(self.loss_values().values())

    def mark_as_output(self, tensor: Tensor | torch.Tensor, name: str, *, dims: Sequence[Dim] | None = None) -> None:
        """Mark ``tensor`` as the output ``name`` of this ``forward_step``.

        With the config's ``model_outputs``, ``name`` must be one of them and the output takes its
        dims (assign ``expected_outputs[name].dims[i].dyn_size_ext.raw_tensor`` for dynamic ones).
        Without, a raw tensor gets ``(batch_dim, <static dims>)`` (no per-seq lengths), as in RETURNN.
        """
        what = f"mark_as_output(name={name!r})"
        if self.stage != "forward_step":
            raise UserError(f"{what} is only allowed in forward_step, not in {self.stage}")
        if name in self.outputs:
            raise UserError(f"{what}: an output {name!r} was already marked in this step")
        expected = None
        if self.expected_outputs is not None:
            if name not in self.expected_outputs:
                raise UserError(
                    f"{what}: model_outputs has no {name!r}; it defines {sorted(self.expected_outputs.keys())}"
                )
            expected = self.expected_outputs[name]
        if dims is not None and expected is not None and tuple(dims) != expected.dims:
            raise UserError(f"{what}: dims {list(dims)} differ from model_outputs' {list(expected.dims)}")
        if dims is None and expected is not None:
            dims = expected.dims
        sparse_dim = expected.sparse_dim if expected is not None else None
        if isinstance(tensor, Tensor):
            raw = tensor.raw_tensor
            sparse_dim = sparse_dim or tensor.sparse_dim
            if dims is None:
                dims = tensor.dims
            elif set(dims) != set(tensor.dims) or len(dims) != len(tensor.dims):
                raise UserError(f"{what}: tensor dims {list(tensor.dims)} cannot be ordered as {list(dims)}")
            else:
                raw = raw.permute([tensor.dims.index(d) for d in dims])
        elif isinstance(tensor, torch.Tensor):
            raw = tensor
            if dims is None:
                dims = ([batch_dim] if raw.dim() else []) + [
                    Dim(int(n), f"{name}_dim{i}") for i, n in enumerate(raw.shape[1:], start=1)
                ]
        else:
            raise UserError(
                f"{what}: expected a torch.Tensor (or a returnn_ray.tensor.Tensor), got {type(tensor).__name__}"
            )
        dims = tuple(dims)
        if len(dims) != raw.dim():
            raise UserError(f"{what}: output has shape {tuple(raw.shape)} but dims {list(dims)} ({len(dims)} axes)")
        for axis, dim in enumerate(dims):
            if dim.dimension is not None and dim.dimension != raw.shape[axis]:
                raise UserError(
                    f"{what}: axis {axis} has size {raw.shape[axis]}, expected {dim} of size {dim.dimension}"
                )
            if dim is not batch_dim and dim.dyn_size_ext is not None and dim.dyn_size_ext.raw_tensor is None:
                raise UserError(
                    f"{what}: the seq lengths of dim {dim} (axis {axis}) are unknown; assign "
                    f"rf.get_run_ctx().expected_outputs[{name!r}].dims[{axis}].dyn_size_ext.raw_tensor = <lengths [B]>"
                )
        if expected is not None:
            # RETURNN checks the exact dtype; we only check the kind, so AMP's float16/bfloat16 outputs pass.
            if _is_float(raw) != expected.dtype.startswith(("float", "bfloat", "complex")):
                raise UserError(f"{what}: dtype {raw.dtype} does not match model_outputs' {expected.dtype!r}")
        self.outputs.data[name] = Tensor(name, dims=dims, sparse_dim=sparse_dim, raw_tensor=raw)

    def mark_as_default_output(self, tensor: Tensor | torch.Tensor, *, shape: Sequence[Dim] | None = None) -> None:
        """``mark_as_output(tensor, "output", dims=shape)``."""
        self.mark_as_output(tensor, "output", dims=shape)

    def check_outputs_complete(self) -> None:
        """UserError unless every output of ``model_outputs`` was marked (when the config has ``model_outputs``)."""
        if self.expected_outputs is not None:
            missing = sorted(set(self.expected_outputs.keys()) - set(self.outputs.keys()))
            if missing:
                raise UserError(
                    f"forward_step did not mark the model_outputs {missing} (marked: {sorted(self.outputs.keys())})"
                )


# -- the current context, per thread ----------------------------------------------------------

_local = threading.local()


def get_run_ctx() -> RunCtx:
    """The context of the step running in this thread; outside a step, an ``init``-stage context."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = getattr(_local, "init_ctx", None)
        if ctx is None:
            ctx = _local.init_ctx = RunCtx(stage="init")
    return ctx


def init_run_ctx(
    stage: Literal["train_step", "forward_step"],
    epoch: int = 1,
    step: int = 0,
    *,
    train_flag: bool | None = None,
    expected_outputs: TensorDict | Mapping[str, Any] | None = None,
) -> RunCtx:
    """Start a step: a fresh context for this thread, returned and made current.

    :param train_flag: default True for ``train_step``; pass False to score (dev/eval) with train_step
    :param expected_outputs: a TensorDict, or the config's ``model_outputs`` dict (made into fresh
        templates here, so dims of one step never carry lengths into the next)
    """
    if stage not in ("train_step", "forward_step"):
        raise ValueError(f"stage must be 'train_step' or 'forward_step', got {stage!r}")
    if expected_outputs is not None and not isinstance(expected_outputs, TensorDict):
        expected_outputs = tensor_dict_from_config(expected_outputs)
    ctx = RunCtx(
        stage=stage,
        train_flag=(stage == "train_step") if train_flag is None else train_flag,
        epoch=epoch,
        step=step,
        expected_outputs=expected_outputs if stage == "forward_step" else None,
    )
    _local.ctx = ctx
    return ctx


def reset_run_ctx() -> None:
    """End the step: back to the ``init`` context (RETURNN's name)."""
    _local.ctx = None


@contextlib.contextmanager
def run_ctx_scope(
    stage: Literal["train_step", "forward_step"],
    epoch: int = 1,
    step: int = 0,
    *,
    train_flag: bool | None = None,
    expected_outputs: TensorDict | Mapping[str, Any] | None = None,
) -> Iterator[RunCtx]:
    """:func:`init_run_ctx` for the ``with`` block; the previous context is current again afterwards."""
    previous = getattr(_local, "ctx", None)
    ctx = init_run_ctx(stage, epoch, step, train_flag=train_flag, expected_outputs=expected_outputs)
    try:
        yield ctx
    finally:
        _local.ctx = previous


def init_train_step_run_ctx(*, train_flag: bool = True, step: int = 0, epoch: int = 1) -> None:
    """RETURNN's name: :func:`init_run_ctx` for a ``train_step``."""
    init_run_ctx("train_step", epoch, step, train_flag=train_flag)


def init_forward_step_run_ctx(*, expected_outputs: TensorDict | None = None, step: int = 0, epoch: int = 1) -> None:
    """RETURNN's name: :func:`init_run_ctx` for a ``forward_step``."""
    init_run_ctx("forward_step", epoch, step, expected_outputs=expected_outputs)


def select_backend_torch() -> None:
    """No-op: the torch backend is the only one."""


def get_default_float_dtype() -> str:
    """``"float32"``, RETURNN's default."""
    return "float32"


class UnsupportedFrontendError(UserError, AttributeError):
    """A config used a part of ``returnn.frontend`` that returnn_ray does not provide."""


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise UnsupportedFrontendError(
        f"returnn_ray.frontend has no {name!r}: only the run context of RETURNN's frontend is provided "
        f"({', '.join(n for n in __all__ if n not in ('MarkedLoss', 'Stage', 'total_objective'))}); "
        f"write the model in plain PyTorch"
    )
