"""The model of a config and its step function, for both ways RETURNN users write models.

- a ``network`` dict (TF-layers style), rebuilt in PyTorch by :mod:`returnn_ray.model`;
- RETURNN's torch engine style: ``get_model(*, epoch, step, **kwargs)`` (a ``torch.nn.Module`` or
  an ``rf.Module``) and ``train_step(*, model, extern_data, **kwargs)`` marking losses on
  RETURNN's run context, run by :mod:`returnn_ray.model.torch_engine` as RETURNN runs them.

Both give the training loop the same thing: a ``torch.nn.Module`` and a function from a
:class:`~returnn_ray.data.ray_data.Batch` to ``{name: LossValue}``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol

import torch

from returnn_ray.config import Settings
from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import ConfigError
from returnn_ray.model import torch_engine
from returnn_ray.model.losses import LossValue
from returnn_ray.training.reduction import Padded


class StepFn(Protocol):
    def __call__(
        self, model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True
    ) -> dict[str, LossValue]: ...


@dataclasses.dataclass
class ModelSpec:
    """How to build the model and run one step on it."""

    build: Callable[[int, int], torch.nn.Module]
    """``(epoch, step) -> module`` (fresh parameters)."""
    step: StepFn
    """Losses of one batch; ``model`` is what ``build`` returned, or DDP over ``ddp_module`` of it.
    ``train_flag`` False when scoring dev/eval (RETURNN's run context then says so)."""
    l2: Callable[[torch.nn.Module], torch.Tensor | None]
    """The L2 term of the objective (network dicts' ``L2``), or None."""
    ddp_module: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    """What DDP wraps: the model, or for step functions the whole step (RETURNN's ``_WrappedModuleRunStep``)."""


def model_spec(settings: Settings, specs: Mapping[str, DataSpec]) -> ModelSpec:
    """The config's model: a ``network`` dict, else ``get_model`` + ``train_step``."""
    training = settings.training
    if training.network is not None:
        return _network_spec(training.network, specs)
    if training.get_model is not None:
        if training.train_step is None:
            raise ConfigError("the config defines get_model but no train_step(*, model, extern_data, **kwargs)")
        return _torch_spec(training.get_model, training.train_step, settings.data.extern_data, specs)
    raise ConfigError("the config defines no model: set `network` (a layer dict) or `get_model` and `train_step`")


def _network_spec(network: dict, specs: Mapping[str, DataSpec]) -> ModelSpec:
    from returnn_ray.model import build_network

    build_network(network, dict(specs))  # validate before any worker starts; cheap

    def build(epoch: int, step: int) -> torch.nn.Module:
        return build_network(network, dict(specs))

    def step(model: torch.nn.Module, batch: Batch, *, epoch: int, step: int, train_flag: bool = True) -> dict[str, LossValue]:
        outputs = model(batch.data, batch.lens)
        return _unwrap(model).losses(outputs, batch.data, batch.lens)

    def l2(model: torch.nn.Module) -> torch.Tensor | None:
        return _unwrap(model).l2_loss()

    return ModelSpec(build, step, l2)


def _torch_spec(
    get_model: Callable, train_step: Callable, config_extern_data: dict | None, specs: Mapping[str, DataSpec]
) -> ModelSpec:
    templates: list = []  # built on first use, in the process that runs the steps (its config's Dims)

    def build(epoch: int, step: int) -> torch.nn.Module:
        return torch_engine.build_model(get_model, epoch=epoch, step=step)

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
    """The network under DDP and its :class:`~returnn_ray.training.reduction.Padded` wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.inner if isinstance(model, Padded) else model


def dummy_batch(specs: Mapping[str, DataSpec], device: torch.device) -> Batch:
    """One seq of one frame per key (zeros, label 0): what a rank runs on its empty padding step.

    Used to learn a model's loss names on a rank that saw no batch; training's padding steps
    run no data at all (:class:`~returnn_ray.training.reduction.Padded`).
    """
    import numpy as np

    data, lens = {}, {}
    for key, spec in specs.items():
        shape = (1, 1) if spec.sparse else (1, 1, spec.dim)
        data[key] = torch.zeros(shape, dtype=getattr(torch, spec.dtype), device=device)
        lens[key] = torch.ones((1,), dtype=torch.int32, device=device)
    return Batch(seq_idx=np.zeros((0,), dtype=np.int64), data=data, lens=lens)
