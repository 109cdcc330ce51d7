"""The driver side of a run on Ray Train workers: the checks before Ray starts, and the run.

:func:`run_on_workers` runs a worker loop (:func:`returnn_ray.training.recipe.train_loop_per_worker`,
:func:`returnn_ray.training.eval_worker.eval_loop_per_worker`) on ``ray_num_workers`` DDP workers
of a ``TorchTrainer``, each handed one :class:`~returnn_ray.training.job.WorkerJob`, and prints
rank 0's log lines as RETURNN prints them. Used by ``tasks/train.py``, ``tasks/eval.py`` and the
sweep's trials (``sweep/trial.py``). Ray and torch are imported inside the functions that use
them, so that the checks before Ray starts do not wait for those imports.
"""

# Imports inside functions: Ray Train and ray_trainer load only when workers run (start-up time).
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid

from returnn_ray.cluster import env
from returnn_ray.cluster.placement import Placement, place
from returnn_ray.cluster.queue import Watch
from returnn_ray.cluster.ray_internals import user_error_in
from returnn_ray.config import Config, Settings
from returnn_ray.errors import UserError
from returnn_ray.metrics import MetricsWriter, metrics_path, since_process_start
from returnn_ray.training import checkpoints
from returnn_ray.training.checks import check_trainable
from returnn_ray.training.job import JOB_KEY, EvalJob, TrainJob, WorkerJob
from returnn_ray.training.log import DriverLog, FileChannel, LocalChannel

DEFAULT_MODEL = "returnn_ray_out/model"
"""Where the model dir is taken to be when ``model`` is unset (Ray Train's run state, the metrics file)."""


def check_before_start(settings: Settings) -> None:
    """Fail fast, with one line, on everything that can be checked without Ray."""
    check_trainable(settings)
    if not settings.run.model:  # RETURNN trains then too, saying each epoch that it saves nothing
        logging.getLogger(__name__).warning(
            "`model` is not set: this run trains but saves no checkpoint; set model (e.g. model = 'out/net') to keep it"
        )
    if settings.run.model:
        checkpoints.check_model_dir_writable(settings.run.model)
    if settings.training.learning_rate_file:
        checkpoints.check_model_dir_writable(settings.training.learning_rate_file, key="learning_rate_file")


def run_on_workers(
    settings: Settings,
    config: Config,
    loop,
    task: TrainJob | EvalJob,
    *,
    what: str,
    run_name: str,
    callbacks: list | None = None,
    placement: Placement | None = None,
):
    """Run ``loop`` (a ``train_loop_per_worker``) on ``ray_num_workers`` DDP workers of a
    ``TorchTrainer``, each handed the job of ``task`` (:class:`WorkerJob`), printing rank 0's log
    lines and writing the metrics file (:mod:`returnn_ray.metrics`); a worker's UserError becomes the driver's.
    ``placement``: the run's (:func:`~returnn_ray.cluster.placement.place` when not given: a sweep
    trial's run decides its own).

    A local placement (one worker, no cluster) calls ``loop`` in this process, as Ray Train's own
    local mode (``ScalingConfig(num_workers=0)``) does, but without importing Ray Train: that import
    (pandas and Ray Data with it) is about 1 s of a short run's start-up (``bench/vs_returnn.py``),
    and local mode gives the loop nothing it uses (no context: rank 0 of 1; no report: the driver
    reads the log channel and the checkpoints are the model files).
    """
    placement = placement or place(settings.run, env_vars=env.TRAIN_ENV)
    metrics = MetricsWriter(metrics_path(settings.run.metrics_file, settings.run.model), task=settings.run.task)
    if placement.local:
        return _run_here(settings, config, loop, task, what=what, use_gpu=placement.use_gpu, metrics=metrics)
    return _run_on_ray(settings, config, loop, task, what=what, run_name=run_name, callbacks=callbacks,
                       placement=placement, metrics=metrics)


def _run_here(settings: Settings, config: Config, loop, task: TrainJob | EvalJob, *, what: str, use_gpu: bool,
              metrics: MetricsWriter):
    """The loop in this process: rank 0 of 1, its log through an in-process queue."""
    channel = LocalChannel()
    log = DriverLog(channel, log_files=settings.run.log, metrics=metrics).start()
    job = WorkerJob.from_settings(settings, config, task, use_gpu=use_gpu, local=True, log_channel=channel)
    log.print(f"returnn-ray: {what} with 1 worker(s) in this process ({'gpu' if job.use_gpu else 'cpu'})")
    metrics.write("run_start", workers=1, since_start=since_process_start())
    start = time.monotonic()
    try:
        result = loop({JOB_KEY: job})
    finally:
        log.close()  # its last drain writes the loop's last events
    metrics.write("run_end", secs=round(time.monotonic() - start, 3))
    return result


def _run_on_ray(settings: Settings, config: Config, loop, task: TrainJob | EvalJob, *, what: str, run_name: str,
                callbacks: list | None, placement: Placement, metrics: MetricsWriter):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from returnn_ray.training.ray_trainer import ReturnnTorchTrainer

    use_gpu, num_workers = placement.use_gpu, placement.num_workers
    model_dir = os.path.dirname(os.path.abspath(settings.run.model or DEFAULT_MODEL))
    # Ray Train keeps its run state (the epoch markers its failure handling restarts from) here;
    # every node must see it, as the model dir. Nothing in it is needed once fit() returns: the
    # checkpoints are the model files. So it goes, unless it was there before (not ours to delete).
    # The workers' log channel is a directory in it, this run's own.
    storage = os.path.join(model_dir, "ray_train")
    storage_is_ours = not os.path.exists(storage)
    channel = FileChannel(os.path.join(storage, f"log-{uuid.uuid4().hex[:12]}"), wants_progress=sys.stdout.isatty())
    os.makedirs(channel.directory)
    log = DriverLog(channel, log_files=settings.run.log, metrics=metrics).start()
    watch = None
    try:
        trainer = ReturnnTorchTrainer(
            loop,
            train_loop_config={
                JOB_KEY: WorkerJob.from_settings(settings, config, task, use_gpu=use_gpu, local=False, log_channel=channel)
            },
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage,
                # ray_placement_timeout: a start that Watch gave up at the deadline fails the run, not retried.
                failure_config=FailureConfig(max_failures=settings.run.ray_max_failures, controller_failure_limit=(
                    -1 if settings.run.ray_placement_timeout is None else 0)),
                callbacks=callbacks,
            ),
        )
        log.print(f"returnn-ray: {what} with {num_workers} worker(s) on Ray ({'gpu' if use_gpu else 'cpu'})")
        metrics.write("run_start", workers=num_workers, since_start=since_process_start())
        watch = _watch(placement, settings)
        return _fit_logged(trainer, settings, log, metrics, watch)
    finally:
        if watch is not None:
            watch.stop()
        log.close()  # (done already when fit() ran)
        shutil.rmtree(storage if storage_is_ours else channel.directory, ignore_errors=True)


def _watch(placement: Placement, settings: Settings) -> Watch | None:
    """The watch over the run's own placement group (:class:`~returnn_ray.cluster.queue.Watch`), in
    a driver on Ray. Not in a sweep trial: its trials share the driver's job, so one trial's group
    cannot be told from another's (Tune queues its trials itself)."""
    import ray

    if placement.local or placement.waited_since is None or ray.get_runtime_context().worker.mode != ray.SCRIPT_MODE:
        return None
    watch = Watch([dict(placement.bundle)] * placement.num_workers, settings.run.ray_placement_timeout,
                  what="training workers", since=placement.waited_since, say=lambda line: print(line, flush=True))
    watch.start()
    return watch


def _fit_logged(trainer, settings: Settings, log, metrics: MetricsWriter, watch: Watch | None = None):
    """``trainer.fit()``, then rank 0's last lines and events and the ``run_end`` event; a worker's
    error as one line, and so is a wait for room that ``watch`` gave up at ``ray_placement_timeout``."""
    import ray.train

    start = time.monotonic()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise (watch and watch.error()) or _user_error_from(exc) or _worker_death(exc, settings) or exc
    finally:
        log.close()  # its last drain writes rank 0's last events
    metrics.write("run_end", secs=round(time.monotonic() - start, 3))
    return result


def _worker_death(exc: BaseException, settings: Settings) -> UserError | None:
    """A worker process that died (killed, out of memory, node lost) as a one-line error that
    says where and how to go on; Ray's own report is a page of actor metadata."""
    import re

    for rank, error in sorted((getattr(exc, "worker_failures", None) or {}).items()):
        text = str(error)
        if type(error).__name__ != "WorkerHealthCheckFailedError" and "actor died" not in text.lower():
            continue
        host = re.search(r"hostname='([^']*)'", text)
        pid = re.search(r"\bpid=(\d+)", text)
        where = f" on node {host.group(1)}" if host else ""
        where += f" (pid {pid.group(1)})" if pid else ""
        newest = checkpoints.newest_complete_epoch(settings.run.model) if settings.run.model else None
        resume = f"resume after epoch {newest}" if newest else "start again"
        if settings.run.model and os.path.exists(checkpoints.partial_path(settings.run.model, (newest or 0) + 1)):
            resume = f"resume epoch {(newest or 0) + 1} from its mid-epoch checkpoint"
        return UserError(
            f"training worker rank {rank}{where} died (killed, out of memory, or its node was lost); "
            f"rerun the same command to {resume}, or set ray_max_failures to let Ray restart it"
        )
    return None


def _user_error_from(exc: BaseException) -> UserError | None:
    """The worker's own UserError (bad data, non-finite loss, ...), so the driver prints one line."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        error = user_error_in(failure)
        if error is not None:
            return type(error)(f"{error} (worker rank {rank})")
    return None
