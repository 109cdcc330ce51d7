"""The one model builder: the config's model for training, eval, forward and search alike.

RETURNN users write models in two ways, and both are built here, nowhere else:

- a ``network`` dict (TF-layers style), rebuilt in PyTorch by :mod:`returnn_ray.model.network`;
- RETURNN's torch engine style: ``get_model(*, epoch, step, **kwargs)`` (a ``torch.nn.Module`` or
  an ``rf.Module``) with ``train_step`` / ``forward_step`` / ``search_step(*, model, extern_data,
  **kwargs)``, run by :mod:`returnn_ray.model.torch_engine` as RETURNN runs them.

:func:`build_model` gives the module with fresh parameters (inference loads a checkpoint into
it); :func:`model_spec` adds what training needs: a function from a
:class:`~returnn_ray.data.ray_data.Batch` to ``{name: LossValue}``, the L2 term and what DDP wraps.
:func:`check_model` says before Ray starts what a task needs the config to define.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping, Protocol

import torch

from returnn_ray.config import Settings
from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import ConfigError
from returnn_ray.model import torch_engine
from returnn_ray.model.losses import LossValue
from returnn_ray.model.network import build_network

Task = Literal["train", "forward", "search"]
"""What a run does with the model; each needs its own step function of a ``get_model`` config."""

STEP_FUNCTIONS: dict[str, str] = {"train": "train_step", "forward": "forward_step", "search": "search_step"}
"""Task -> the step function a ``get_model`` config must define for it (eval scores with ``train_step``)."""


class StepFn(Protocol):
    def __call__(
        self, model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True
    ) -> dict[str, LossValue]: ...


@dataclasses.dataclass
class ModelSpec:
    """How to build the model and run one training (or scoring) step on it."""

    build: Callable[[int, int], torch.nn.Module]
    """``(epoch, step) -> module`` (fresh parameters)."""
    step: StepFn
    """Losses of one batch; ``model`` is what ``build`` returned, or DDP over ``ddp_module`` of it.
    ``train_flag`` False when scoring dev/eval (RETURNN's run context then says so)."""
    l2: Callable[[torch.nn.Module], torch.Tensor | None]
    """The L2 term of the objective (network dicts' ``L2``), or None."""
    ddp_module: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    """What DDP wraps: the model, or for step functions the whole step (RETURNN's ``_WrappedModuleRunStep``)."""


def check_model(settings: Settings, *, task: Task) -> None:
    """What the config must define to run ``task``: a ``network`` dict, else ``get_model`` and the
    task's step function. Writes nothing; run before Ray starts."""
    t = settings.training
    needed = STEP_FUNCTIONS[task]
    if t.network is None and t.get_model is None:
        raise ConfigError(f"the config defines no model: set `network` (a layer dict) or `get_model` and `{needed}`")
    if t.network is None and getattr(t, needed) is None:
        raise ConfigError(f"the config defines get_model but no {needed}(*, model, extern_data, **kwargs)")


def build_model(settings: Settings, specs: Mapping[str, DataSpec], *, epoch: int, step: int) -> torch.nn.Module:
    """The config's model with fresh parameters: the ``network`` dict rebuilt, else ``get_model``'s."""
    if settings.training.network is not None:
        return build_network(settings.training.network, dict(specs))
    if settings.training.get_model is None:
        raise ConfigError("the config defines no model: set `network` (a layer dict) or `get_model`")
    return torch_engine.build_model(settings.training.get_model, epoch=epoch, step=step)


def model_spec(settings: Settings, specs: Mapping[str, DataSpec]) -> ModelSpec:
    """The config's model for training and scoring: a ``network`` dict, else ``get_model`` + ``train_step``."""
    check_model(settings, task="train")

    def build(epoch: int, step: int) -> torch.nn.Module:
        return build_model(settings, specs, epoch=epoch, step=step)

    if settings.training.network is not None:
        build(1, 0)  # validate the network dict before any worker starts; cheap
        return _network_spec(build)
    return _torch_spec(build, settings.training.train_step, settings.data.extern_data, specs)


def _network_spec(build: Callable[[int, int], torch.nn.Module]) -> ModelSpec:
    def step(model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True) -> dict[str, LossValue]:
        outputs = model(batch.data, batch.lens)
        return _unwrap(model).losses(outputs, batch.data, batch.lens)

    def l2(model: torch.nn.Module) -> torch.Tensor | None:
        return _unwrap(model).l2_loss()

    return ModelSpec(build, step, l2)


def _torch_spec(
    build: Callable[[int, int], torch.nn.Module],
    train_step: Callable,
    config_extern_data: dict | None,
    specs: Mapping[str, DataSpec],
) -> ModelSpec:
    templates: list = []  # built on first use, in the process that runs the steps (its config's Dims)

    def run(model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True) -> None:
        if not templates:
            templates.append(torch_engine.extern_data_template(config_extern_data, specs))
        data = torch_engine.extern_data(templates[0], batch)
        torch_engine.run_train_step(train_step, model, data, epoch=epoch, step=step, train_flag=train_flag)

    def step(model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True) -> dict[str, LossValue]:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model(batch, epoch=epoch, step=step, train_flag=train_flag)  # the step as DDP's forward
        else:
            run(model, batch, epoch=epoch, step=step, train_flag=train_flag)
        return dict(torch_engine.marked_losses())

    return ModelSpec(build, step, lambda model: None, ddp_module=lambda model: torch_engine.StepModule(model, run))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network under DDP and its :class:`Padded` wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.inner if isinstance(model, Padded) else model


class Padded(torch.nn.Module):
    """What DDP wraps: the step module, plus a padding forward that touches no data.

    ``forward(padding=True)`` returns ``Σ 0·p`` over the parameters: a zero gradient for every
    parameter, so DDP's all-reduce matches the other ranks' and nothing non-finite enters it.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, padding: bool = False, **kwargs: Any) -> Any:
        if padding:
            return zero_objective(self.inner)
        return self.inner(*args, **kwargs)


def zero_objective(module: torch.nn.Module) -> torch.Tensor:
    """``Σ 0·p``: every trainable parameter in the graph with a zero gradient."""
    terms = [(p * 0).sum() for p in module.parameters() if p.requires_grad]
    return torch.stack(terms).sum() if terms else torch.zeros(())
