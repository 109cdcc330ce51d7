"""``task = "train"``: the config becomes a Ray Train ``TorchTrainer`` with PyTorch DDP.

Everything a user can get wrong is checked here, before Ray starts
(:func:`returnn_ray.training.driver.check_before_start`): the datasets open and agree with
``extern_data``, the network builds, the model directory is writable. Then the driver starts (or
joins) Ray, runs :func:`returnn_ray.training.recipe.train_loop_per_worker` on ``ray_num_workers``
workers and prints rank 0's log lines as RETURNN prints them
(:func:`returnn_ray.training.driver.run_on_workers`).
"""

from __future__ import annotations

import contextlib
import time

from returnn_ray.cluster import env
from returnn_ray.cluster.placement import Placement, place
from returnn_ray.config import Config, Settings
from returnn_ray.training.driver import check_before_start, run_on_workers
from returnn_ray.training.job import TrainJob
from returnn_ray.training.recipe import train_loop_per_worker
from returnn_ray.training.run_lock import ModelLock


def run(settings: Settings, config: Config) -> int:
    check_before_start(settings)
    env.set_defaults(env.TRAIN_ENV)
    start = time.monotonic()
    # One training per model: a second run would write the same checkpoints (run_lock.py).
    with ModelLock(settings.run.model) if settings.run.model else contextlib.nullcontext():
        placement = place(settings.run, env_vars=env.TRAIN_ENV)
        return _fit(settings, config, start, placement)


def _fit(settings: Settings, config: Config, start: float, placement: Placement) -> int:
    run_on_workers(
        settings,
        config,
        train_loop_per_worker,
        TrainJob(),
        what="training",
        run_name="returnn_ray_train",
        placement=placement,
    )
    print(f"returnn-ray: finished training in {time.monotonic() - start:.1f} s", flush=True)
    return 0
