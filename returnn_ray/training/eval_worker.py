"""The loop every Ray Train worker runs for ``task = "eval"``: score one checkpoint on datasets.

Each rank scores its shard of every dataset (the same batch plan as after a training epoch);
the sums are all-reduced, so the scores equal a one-worker evaluation. Rank 0 prints them and
writes ``eval_output_file`` (atomically); the driver writes its ``eval_end`` metrics event.
"""

# Imports inside functions: Ray Train loads only in a worker (start-up time).
from __future__ import annotations

import pprint
from typing import Mapping

from returnn_ray.atomic import atomic_write
from returnn_ray.config import Settings
from returnn_ray.data.from_settings import data_specs, open_dataset
from returnn_ray.model.build import model_spec
from returnn_ray.training import checkpoints
from returnn_ray.training.log import WorkerLog, format_scores
from returnn_ray.training.preload import load_weights
from returnn_ray.training.scores import score_keys
from returnn_ray.training.epoch import eval_epoch
from returnn_ray.training.job import JOB_KEY, WorkerJob
from returnn_ray.training.worker import WorkerContext, start_worker


def eval_loop_per_worker(config: Mapping[str, WorkerJob]) -> dict:
    """Ray Train's ``train_loop_per_worker`` for ``task = "eval"`` (an :class:`EvalJob`)."""
    job = config[JOB_KEY]
    settings, ctx, log = start_worker(job)
    try:
        return _evaluate(job, settings, ctx, log)
    finally:
        log.close()


def _evaluate(job: WorkerJob, settings: Settings, ctx: WorkerContext, log: WorkerLog) -> dict:
    names = job.eval.datasets
    datasets = {name: open_dataset(settings, name) for name in names}
    specs = data_specs(settings, next(iter(datasets.values())))
    spec = model_spec(settings, specs)
    which = checkpoints.checkpoint_to_load(settings.run.model, settings.run.load_epoch, load=settings.run.load)
    state = checkpoints.load_checkpoint_file(which.path)
    model = spec.build(which.epoch, int(state.get("step", 0)))
    load_weights(settings, model, state, checkpoint_path=which.path, training=False, log=log.line)
    model.to(ctx.device)
    log.line(f"Evaluating {which.path} (epoch {which.epoch})")
    results: dict[str, dict[str, float]] = {}
    for name, dataset in datasets.items():
        scores = eval_epoch(settings, ctx, spec, model, dataset, name, specs, which.epoch, int(state.get("step", 0)))
        results[name] = score_keys(name, scores)
        log.line(f"{name}: {format_scores(scores)}")
    if ctx.is_chief and settings.forward.eval_output_file:
        atomic_write(settings.forward.eval_output_file, pprint.pformat(results, sort_dicts=True) + "\n")
    flat = {k: v for scores in results.values() for k, v in scores.items()}
    log.event("eval_end", epoch=which.epoch, checkpoint=which.path, scores=flat)
    if not ctx.local:
        import ray.train

        ray.train.report(flat)
    return results
