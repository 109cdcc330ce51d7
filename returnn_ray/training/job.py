"""What the driver sends every Ray Train worker: one frozen, typed job spec, built in one place.

A :class:`WorkerJob` holds what every worker loop needs (the pickled settings, the config's
worker environment, the log channel, where it runs) and the task's own part: a :class:`TrainJob`
(training, also as a sweep trial) or an :class:`EvalJob` (``task = "eval"``). The driver builds
it with :meth:`WorkerJob.from_settings`; every default lives here, nowhere else. Ray pickles the
job (cloudpickle) to each worker, so it holds only picklable values. Ray's cloudpickle is
imported where it is used: importing this module (as the sweep's checks do) starts no Ray.
"""

# Imports inside functions: Ray's cloudpickle loads only when settings are packed or unpacked (start-up time).
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from returnn_ray.config import Config, Settings
from returnn_ray.metrics import process_started_at

DEFAULT_SEED = 42
"""Every rank's torch RNG is seeded from it (with epoch and rank, for dropout)."""

JOB_KEY = "job"
"""Ray Train's ``train_loop_config`` must be a dict: the job travels as its one entry."""


@dataclasses.dataclass(frozen=True)
class TrialReport:
    """A sweep trial's reporting: each epoch's metrics also carry ``objective``."""

    metric: str | None = None
    """The score the sweep ranks by; None: the dev key newbob would pick."""
    to_tune: bool = False
    """Report to Tune directly: the trial trains in local mode inside its Tune actor,
    which has no Train controller to forward the reports (:mod:`returnn_ray.sweep.reports`)."""


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """The training loop's part of a job."""

    trial: TrialReport | None = None
    """Set for a sweep trial, None for a plain training run."""
    shared_datasets: Mapping[str, Any] | None = None
    """``{name: ObjectRef}`` of datasets a sweep opened once for all its trials (else each
    worker opens its datasets from the config)."""


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """The eval loop's part of a job: the datasets to score, in order."""

    datasets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What every worker of a run gets; built by :meth:`from_settings` in the driver."""

    settings_pickle: bytes | None
    """The settings, cloudpickled: they hold functions of a Python config, which a worker can
    unpickle only once it knows which config to rebuild (``worker_env``). None in local mode."""
    worker_env: Mapping[str, str]
    """Environment that lets a worker rebuild the config (:meth:`Config.worker_env`)."""
    log_channel: Any
    """Where rank 0 puts its log lines and events for the driver
    (:class:`~returnn_ray.training.log.FileChannel`; in local mode a
    :class:`~returnn_ray.training.log.LocalChannel`)."""
    use_gpu: bool
    local: bool
    """Local mode: the loop runs in the driver's (or sweep trial's) process, called by
    :func:`returnn_ray.training.driver.run_on_workers` itself (no Ray Train)."""
    task: TrainJob | EvalJob
    process_start: float | None = None
    """When returnn-ray started (``time.time()``), for the start-up figures; None: unknown."""
    seed: int = DEFAULT_SEED
    local_settings: Settings | None = dataclasses.field(default=None, repr=False, compare=False)
    """Local mode: the driver's own settings (the loop runs in its process; no pickling, no Ray import)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, config: Config, task: TrainJob | EvalJob, *, use_gpu: bool, local: bool, log_channel: Any
    ) -> WorkerJob:
        if local:
            pickled = None
        else:
            from ray import cloudpickle

            pickled = cloudpickle.dumps(settings)
        return cls(
            settings_pickle=pickled,
            local_settings=settings if local else None,
            worker_env=config.worker_env(),
            log_channel=log_channel,
            use_gpu=use_gpu,
            local=local,
            task=task,
            process_start=process_started_at(),
        )

    def settings(self) -> Settings:
        """The settings; call after :func:`returnn_ray.config.workers.use_worker_config`."""
        if self.local:  # the driver's own settings object: nothing was pickled
            return self.local_settings
        from ray import cloudpickle

        return cloudpickle.loads(self.settings_pickle)

    @property
    def train(self) -> TrainJob:
        if not isinstance(self.task, TrainJob):
            raise TypeError(f"a training loop got a {type(self.task).__name__}")
        return self.task

    @property
    def eval(self) -> EvalJob:
        if not isinstance(self.task, EvalJob):
            raise TypeError(f"an eval loop got a {type(self.task).__name__}")
        return self.task
