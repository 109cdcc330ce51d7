"""What one Ray Train worker process is: its rank and device, its settings and log, its reports.

The loops that run on the workers build on this: :mod:`returnn_ray.training.recipe` (training)
and :mod:`returnn_ray.training.eval_worker` (``task = "eval"``). Ray is imported inside the
functions that talk to it, so that the loops' parts load (and are tested) without starting it.
"""

# Imports inside functions: Ray and Ray Train load only in a worker (start-up time).
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Mapping

import torch

from returnn_ray.config import Settings
from returnn_ray.config.workers import use_worker_config
from returnn_ray.data.ray_data import READ_TASK_CONCURRENCY, read_task_concurrency, reads_in_process
from returnn_ray.errors import UserError
from returnn_ray.training.job import TrialReport, WorkerJob
from returnn_ray.training.log import WorkerLog
from returnn_ray.training.lr_control import error_key_for_scores


@dataclasses.dataclass
class WorkerContext:
    """What one rank knows about itself."""

    rank: int
    world_size: int
    device: torch.device
    local: bool = False
    """local mode: the loop runs in the driver (or a sweep trial) process, reads in-process."""
    read_concurrency: int = READ_TASK_CONCURRENCY
    """Ray Data read tasks in flight for this rank (:func:`read_task_concurrency`)."""
    read_here: bool = False
    """This rank reads its batches in its own process, not through Ray Data (:func:`reads_in_process`)."""

    @property
    def reads_in_process(self) -> bool:
        return self.local or self.read_here

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _context(use_gpu: bool) -> WorkerContext:
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", ctx.get_local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    cpus, ranks = _node_cpus(), ctx.get_local_world_size()
    return WorkerContext(rank, world, device, read_concurrency=read_task_concurrency(cpus, ranks),
                         read_here=reads_in_process(cpus, ranks, use_gpu=device.type == "cuda"))


def _node_cpus() -> float:
    import ray

    node = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node), 0.0)


def _local_context(use_gpu: bool) -> WorkerContext:
    """Rank 0 of 1 in this process (no Ray Train: :func:`returnn_ray.training.driver.run_on_workers`
    calls the loop itself, also inside a sweep trial's Tune actor)."""
    if use_gpu and not torch.cuda.is_available():
        raise UserError("device gpu: no GPU that torch can use in this process; use ++device cpu")
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return WorkerContext(0, 1, device, local=True)


def start_worker(job: WorkerJob) -> tuple[Settings, WorkerContext, WorkerLog]:
    """The settings (unpickled once this process knows which config to rebuild), rank and log."""
    use_worker_config(job.worker_env)
    settings = job.settings()
    ctx = _local_context(job.use_gpu) if job.local else _context(job.use_gpu)
    log = WorkerLog(job.log_channel, enabled=ctx.is_chief, verbosity=settings.run.log_verbosity)
    if not job.local and job.log_channel is not None:
        job.log_channel.check_visible()  # every rank: one that does not see the model dir fails at once
    torch.manual_seed(job.seed)
    return settings, ctx, log


def log_up(job: WorkerJob, settings: Settings, ctx: WorkerContext) -> None:
    """Every rank (not only rank 0): its start-up time and Ray node (``tests/test_multinode.py``
    and ``bench/startup.py`` read the line)."""
    if job.process_start is None:
        return
    ray = sys.modules.get("ray")  # not imported for a run in this process: nothing to ask it
    node = f"node {ray.get_runtime_context().get_node_id()}" if ray and ray.is_initialized() else "no Ray node (local mode)"
    WorkerLog(job.log_channel, enabled=True, verbosity=settings.run.log_verbosity).line(
        f"training worker {ctx.rank} up {time.time() - job.process_start:.1f} s after returnn-ray started on {node}"
        + ("; it reads its batches itself (its node has no CPU for Ray Data's read tasks)" if ctx.read_here else ""),
        level=4,
    )


def report(ctx: WorkerContext, epoch: int, step: int, scores: Mapping[str, float], lr: float, trial: TrialReport | None) -> None:
    """Every rank reports once per epoch (a sync point in Ray Train; per-step reports are throttled).

    Rank 0 attaches a small checkpoint marker, so Ray Train's failure handling knows the
    epoch; the weights themselves stay in ``<model>.NNN.pt``, the file RETURNN tools read.
    In a sweep trial (``trial``) the metrics also carry ``objective``, the score the sweep ranks
    by: ``trial.metric``, or (None) the dev key newbob would pick. With ``trial.to_tune`` the
    trial reports to Tune itself (:class:`returnn_ray.training.job.TrialReport`).
    """
    metrics = {"epoch": epoch, "global_step": step, "learning_rate": lr, **scores}
    if trial is not None:
        key = trial.metric or error_key_for_scores(scores)
        if key not in scores:
            raise UserError(f"sweep_metric {key!r} is not among the scores of this run: {', '.join(sorted(scores))}")
        metrics.update(objective=scores[key], objective_key=key)
        if trial.to_tune:
            from ray import tune

            tune.report(metrics)
            return
    if ctx.local:
        return  # no Ray Train to tell: the driver reads the log channel, the checkpoints are the model files
    import ray.train

    if not ctx.is_chief:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "returnn_ray_epoch.json"), "w") as f:
            json.dump({"epoch": epoch, "global_step": step}, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
