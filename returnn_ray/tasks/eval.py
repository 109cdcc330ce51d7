"""``task = "eval"``: score a checkpoint (``load_epoch``, else the newest) on ``dev``, ``eval``
and every ``eval_datasets`` entry, across ``ray_num_workers`` workers; print the scores and,
with ``eval_output_file``, write them (a Python dict literal ``{dataset: {key: value}}``)."""

from __future__ import annotations

import time

from returnn_ray.cluster import env
from returnn_ray.cluster.placement import place
from returnn_ray.config import Config, Settings
from returnn_ray.data.from_settings import data_specs, eval_dataset_names, open_dataset
from returnn_ray.errors import ConfigError
from returnn_ray.model.build import model_spec
from returnn_ray.training import checkpoints
from returnn_ray.training.driver import run_on_workers
from returnn_ray.training.eval_worker import eval_loop_per_worker
from returnn_ray.training.job import EvalJob


def run(settings: Settings, config: Config) -> int:
    names = eval_dataset_names(settings)
    if not names:
        raise ConfigError("task 'eval' needs a dataset to score: set `eval`, `dev` or `eval_datasets`")
    datasets = [open_dataset(settings, name) for name in names]
    model_spec(settings, data_specs(settings, datasets[0]))
    checkpoints.checkpoint_to_load(settings.run.model, settings.run.load_epoch, load=settings.run.load)
    if settings.forward.eval_output_file:
        checkpoints.check_model_dir_writable(settings.forward.eval_output_file, key="eval_output_file")

    start = time.monotonic()
    placement = place(settings.run, env_vars=env.TRAIN_ENV)
    run_on_workers(
        settings,
        config,
        eval_loop_per_worker,
        EvalJob(tuple(names)),
        what="evaluating",
        run_name="returnn_ray_eval",
        placement=placement,
    )
    print(f"returnn-ray: finished evaluation in {time.monotonic() - start:.1f} s", flush=True)
    return 0
