"""One step of a torch-style or RF config, done as RETURNN's torch engine does it, with RETURNN's own code.

Configs written for RETURNN's torch backend (``get_model`` / ``train_step`` / ``forward_step``,
plain ``torch.nn.Module`` or ``rf.Module`` models) use ``returnn.frontend`` and ``returnn.tensor``.
Nothing of that is re-written here; this module only repeats the few lines of
``returnn.torch.engine.Engine`` that call it (``_create_model``, ``_run_step``, the loss
bookkeeping of ``train_epoch`` / ``eval_model``), so that a config sees what it sees under RETURNN:

- the torch backend selected (``rf.select_backend_torch()``, as ``Engine.__init__``);
- ``extern_data`` a ``returnn.tensor.TensorDict`` built by RETURNN's
  ``extern_data_template_from_config_opts`` from the config's own ``extern_data`` (its ``Dim``
  objects, which the model code refers to as globals of the config), filled per batch by
  ``raw_dict_to_extern_data``;
- the run context set up per step by ``rf.init_train_step_run_ctx`` (``train_flag`` True in
  training, False when scoring dev/eval, as ``eval_model``) or ``rf.init_forward_step_run_ctx``
  (with ``model_outputs`` as the expected outputs);
- an ``rf.Module`` wrapped for torch by ``rf_module_to_pt_module``; the step functions get the
  model as ``get_model`` returned it;
- losses reported as RETURNN reports them: per loss ``get_summed_loss()`` over
  ``get_inv_norm_factor()`` (``custom_inv_norm_factor`` included), the gradient from ``scale``
  and ``use_normalized_loss``, errors (``as_error``) never optimised.
"""

from __future__ import annotations

import dataclasses
import inspect
import traceback
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import returnn.frontend as rf
import torch
from returnn.tensor import Tensor, TensorDict
from returnn.torch.data.extern_data import extern_data_template_from_config_opts, raw_dict_to_extern_data
from returnn.torch.frontend.bridge import rf_module_to_pt_module
from returnn.util.basic import BackendEngine, get_fwd_compat_kwargs

from returnn_ray.config import USER_CONFIG_MODULE, get_global_config
from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.model.losses import LossValue

__all__ = [
    "MarkedLoss",
    "StepModule",
    "build_model",
    "extern_data",
    "extern_data_template",
    "expected_outputs",
    "marked_losses",
    "orig_model",
    "run_forward_step",
    "run_train_step",
    "select_backend",
]


def select_backend() -> None:
    """RETURNN's torch backend, as ``Engine.__init__`` selects it (idempotent)."""
    rf.select_backend_torch()
    if BackendEngine.selected_engine is None:
        BackendEngine.select_engine(engine=BackendEngine.Torch)


@dataclasses.dataclass
class MarkedLoss(LossValue):
    """A loss a step marked on RETURNN's run context (``rf.get_run_ctx().mark_as_loss``)."""

    use_normalized_loss: bool = False
    """The gradient uses ``sum / num_frames`` instead of ``sum`` (RETURNN's ``get_mean_loss``)."""


def call_user(func: Callable, **kwargs: Any) -> Any:
    """``func(**kwargs)`` plus RETURNN's forward-compatibility kwarg where ``func`` takes ``**kwargs``.

    RETURNN always adds a randomly named kwarg (``get_fwd_compat_kwargs``), which fails for a
    function without ``**kwargs`` (e.g. RETURNN's demo ``forward_step``); keyword arguments the
    function does not accept (``device`` for ``get_model``) are left out the same way.
    """
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        kwargs = {**kwargs, **get_fwd_compat_kwargs()}
    else:
        names = {p.name for p in params}
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    try:
        return func(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        where = _config_frame(exc)
        if where is None:
            raise
        # One line naming the config's own frame, instead of pages of Ray and RETURNN traceback.
        raise UserError(f"{getattr(func, '__name__', 'config function')} failed at {where}: "
                        f"{type(exc).__name__}: {exc}; fix the config") from exc


def _config_frame(exc: BaseException) -> str | None:
    """``file:line (in function)`` of the innermost traceback frame in the config's own code, if any."""
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if frame.f_globals.get("__name__") == USER_CONFIG_MODULE:
            found = f"{frame.f_code.co_filename}:{line} (in {frame.f_code.co_name})"
    return found


def build_model(get_model: Callable, *, epoch: int, step: int, device: str = "cpu") -> torch.nn.Module:
    """``get_model``'s model as a ``torch.nn.Module`` (an ``rf.Module`` wrapped as RETURNN wraps it)."""
    select_backend()
    model = call_user(get_model, epoch=epoch, step=step, device=device)
    if isinstance(model, rf.Module):
        return rf_module_to_pt_module(model)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"get_model must return a torch.nn.Module or rf.Module, got {type(model).__name__}")
    return model


def orig_model(model: torch.nn.Module) -> Any:
    """What the step functions get: the ``rf.Module`` behind RETURNN's wrapper, else the module itself."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, StepModule):
        model = model.module
    return getattr(model, "rf_module", model)


def extern_data_template(data_extern_data: Mapping[str, Any] | None, specs: Mapping[str, DataSpec]) -> TensorDict:
    """The config's ``extern_data`` as RETURNN's torch engine builds it (``init_network_from_config``).

    Taken from this process's config module where it has one, so that its ``Dim`` objects are the
    ones the config's functions use (settings come pickled, i.e. with copies of them); else from
    ``data_extern_data``, else (old-style ``num_inputs`` / ``num_outputs``) from ``specs``.
    """
    select_backend()
    opts = _config_extern_data() or data_extern_data
    if not opts:
        opts = {k: {"dim": s.dim, "sparse": s.sparse, "dtype": s.dtype} for k, s in specs.items()}
    return extern_data_template_from_config_opts(dict(opts))


def expected_outputs(model_outputs: Mapping[str, Any] | None) -> TensorDict | None:
    """The config's ``model_outputs`` as ``Engine.__init__`` builds them (from the config module's, as above)."""
    opts = _config_extern_data("model_outputs") or model_outputs
    if opts is None:
        return None
    select_backend()
    out = TensorDict()
    out.update(dict(opts), auto_convert=True)
    return out


def _config_extern_data(key: str = "extern_data") -> Mapping[str, Any] | None:
    try:
        value = get_global_config().typed_value(key)
    except ConfigError:
        return None
    return value if isinstance(value, Mapping) else None


def extern_data(
    template: TensorDict, batch: Batch, *, seq_tags: Sequence[str] | None = None, with_eval_targets: bool = True
) -> TensorDict:
    """One batch as RETURNN's ``raw_dict_to_extern_data`` makes it from its collated batch.

    ``seq_tag`` holds ``seq_tags``, else the batch's own (``Batch.seq_tags``), in training and
    scoring too: RETURNN's template always has it and its dataset wrapper gives every seq (every
    chunk) its tag. A batch with no tags (a rank's padding step) has no ``seq_tag``: a step that
    reads it gets a KeyError naming it rather than made-up tags.
    """
    if seq_tags is None:
        seq_tags = batch.seq_tags
    raw: dict[str, Any] = {"num_seqs": batch.num_seqs}
    for key, value in batch.data.items():
        raw[key] = value
        raw[f"{key}:seq_len"] = batch.lens[key].cpu()  # RETURNN keeps seq lens on the CPU
    if seq_tags is None:
        template = _without_seq_tag(template)
    else:
        raw["seq_tag"] = np.array(list(seq_tags), dtype=str)  # as RETURNN collates str_to_numpy_array tags
    missing = [k for k, v in template.data.items() if k not in raw and (with_eval_targets or v.available_for_inference)]
    if missing:
        raise UserError(f"extern_data declares {missing} but the dataset has only {sorted(batch.data)}; fix extern_data")
    device = next(iter(batch.data.values())).device if batch.data else torch.device("cpu")
    return raw_dict_to_extern_data(raw, extern_data_template=template, device=device, with_eval_targets=with_eval_targets)


def _without_seq_tag(template: TensorDict) -> TensorDict:
    out = TensorDict()
    out.data = {k: v for k, v in template.data.items() if k != "seq_tag"}
    return out


def run_train_step(
    train_step: Callable, model: torch.nn.Module, data: TensorDict, *, epoch: int, step: int, train_flag: bool
) -> None:
    """``train_step`` on RETURNN's run context, as ``Engine._run_step(train_func=True)`` calls it."""
    rf.init_train_step_run_ctx(train_flag=train_flag, step=step, epoch=epoch)
    with rf.set_default_device_ctx(_device_of(data)):
        call_user(train_step, model=orig_model(model), extern_data=data)


def run_forward_step(
    forward_step: Callable, model: torch.nn.Module, data: TensorDict, *, epoch: int, step: int,
    expected_outputs: TensorDict | None,
) -> TensorDict:
    """``forward_step`` on RETURNN's run context; the outputs it marked (checked against ``model_outputs``).

    ``expected_outputs`` must have been reset (``reset_content()``) before ``data`` was built, as
    ``forward_with_callback`` does: its dims may be ``extern_data``'s, whose sizes ``data`` just set."""
    rf.init_forward_step_run_ctx(expected_outputs=expected_outputs, step=step, epoch=epoch)
    with rf.set_default_device_ctx(_device_of(data)):
        call_user(forward_step, model=orig_model(model), extern_data=data)
    ctx = rf.get_run_ctx()
    ctx.check_outputs_complete()
    return ctx.outputs


def _device_of(data: TensorDict) -> str:
    for tensor in data.data.values():
        if isinstance(tensor.raw_tensor, torch.Tensor):
            return str(tensor.raw_tensor.device)
    return "cpu"


def marked_losses() -> dict[str, MarkedLoss]:
    """The losses of the step just run, as RETURNN's engine reads them off the run context."""
    ctx = rf.get_run_ctx()
    if not ctx.losses:
        raise UserError("train_step marked no loss: call rf.get_run_ctx().mark_as_loss(loss, name)")
    out = {}
    for name, loss in ctx.losses.items():
        summed = loss.get_summed_loss().raw_tensor
        inv_norm = loss.get_inv_norm_factor()
        frames = inv_norm.raw_tensor if isinstance(inv_norm, Tensor) else torch.tensor(inv_norm)
        out[name] = MarkedLoss(
            name, summed, frames, scale=loss.scale, as_error=loss.as_error, use_normalized_loss=loss.use_normalized_loss
        )
    return out


class StepModule(torch.nn.Module):
    """RETURNN's ``_WrappedModuleRunStep``: what DDP wraps, so the whole ``train_step`` is DDP's forward.

    The step functions call the model (or its ``rf.Module``) themselves, not through DDP; DDP over
    this module sees the step as one forward and the marked losses as its outputs, as in RETURNN.
    Its parameters are the model's (``module.`` + name); checkpoints keep the model's own.
    """

    def __init__(self, module: torch.nn.Module, run: Callable[..., None]):
        super().__init__()
        self.module = module
        self._run = run

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        self._run(self.module, *args, **kwargs)
        ctx = rf.get_run_ctx()
        return {"loss/" + name: loss.loss.raw_tensor for name, loss in ctx.losses.items()}
