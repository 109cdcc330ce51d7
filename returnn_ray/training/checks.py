"""Checks of a training config that write nothing and need no Ray: run before the first worker starts.

The train task runs them before Ray starts, and a sweep runs them on every trial's config before
any trial directory exists, so a bad value is one line naming its key, not a worker's traceback.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from returnn_ray.config import Settings
from returnn_ray.data.from_settings import check_datasets_for_training, data_specs, eval_dataset_names, open_dataset
from returnn_ray.errors import ConfigError
from returnn_ray.model.build import ModelSpec, model_spec
from returnn_ray.training import checkpoints
from returnn_ray.training.dynamic_lr import check_dynamic_learning_rate
from returnn_ray.training.lr_control import check_lr_control
from returnn_ray.training.optim import check_optimizer
from returnn_ray.training.preload import check_preload_files, load_weights
from returnn_ray.training.tensorboard import check_tensorboard

logger = logging.getLogger(__name__)


def check_trainable(settings: Settings, opener: Callable[[Settings, str], Any] = open_dataset) -> None:
    """The checks of :func:`returnn_ray.tasks.train.check_before_start` that write nothing (datasets, model, optimizer,
    tensorboard); a sweep checks each trial's config with them before its directory exists.
    ``opener`` opens a dataset (a sweep's reuses what an earlier trial's check opened)."""
    if settings.data.train is None:
        raise ConfigError("task 'train' needs a `train` dataset in the config")
    train = opener(settings, "train")
    datasets = {"train": train, **{name: opener(settings, name) for name in eval_dataset_names(settings)}}
    check_datasets_for_training(settings, datasets)
    spec = model_spec(settings, data_specs(settings, train))
    check_initial_weights(settings, spec)
    check_training_settings(settings)
    if settings.training.use_tensorboard:
        check_tensorboard(settings.training.tensorboard_opts or {})


def check_training_settings(settings: Settings) -> None:
    """The optimizer and the learning-rate control (with an existing ``learning_rate_file``), which
    the training loop builds first: a bad value is one line here, before Ray or a worker starts."""
    t = settings.training
    if t.network is not None or t.get_model is not None:  # no model: the train task says so
        check_optimizer(
            t.optimizer, adam=t.adam, nadam=t.nadam, learning_rate=t.learning_rate, optimizer_epsilon=t.optimizer_epsilon,
            # as the training loop: RETURNN's torch engine wants an optimizer, network dicts follow its TF engine (SGD)
            default="sgd" if t.network is not None else "error",
        )
    if t.network is None and t.optimizer_epsilon is not None:
        logger.warning(
            "optimizer_epsilon is ignored for torch-style configs, as by RETURNN's torch engine; "
            "set 'epsilon' in the optimizer dict"
        )
    check_dynamic_learning_rate(t.dynamic_learning_rate)
    check_lr_control(t.learning_rate_control, t.lr_control_options(), t.learning_rate_file)


def check_initial_weights(settings: Settings, spec: ModelSpec) -> None:
    """``import_model_train_epoch1`` / ``preload_from_files``: files named and used by this start exist; on a
    fresh start they are loaded into a model built here on the CPU, so that a missing parameter or a
    shape mismatch is one line before Ray starts (a resumed training loads them in the workers)."""
    run = settings.run
    if not (run.import_model_train_epoch1 or run.preload_from_files):
        return
    fresh = not (run.model and checkpoints.newest_complete_epoch(run.model))
    check_preload_files(settings, training=True, fresh_start=fresh)
    if fresh:
        load_weights(settings, spec.build(1, 0), None, training=True)
