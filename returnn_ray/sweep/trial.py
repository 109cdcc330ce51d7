"""One sweep trial: a full training run of the base config plus the trial's variant.

Ray 2.60 combines Tune and Train through a Tune *function* trainable that builds and fits a
``TorchTrainer`` (``Tuner(trainer)`` fails); :mod:`returnn_ray.sweep.reports` forwards each epoch's
report (with ``objective``, :func:`returnn_ray.training.worker.report`) to Tune, whose scheduler may
stop the trial, and then aborts the run. The trial trains in its own directory (``<sweep_dir>/trials/<variant>-<id>/``:
checkpoints, ``learning_rates``, ``train.log``, ``metrics.jsonl``), so a restored sweep resumes an
unfinished trial from its checkpoints, exactly as rerunning ``returnn-ray`` would.

Ray, Tune and the training modules (torch) are imported inside :func:`run_trial`: the sweep's
checks before Ray starts use this module's other functions without waiting for them.
"""

# Imports inside functions: Ray Tune and the training modules (torch) load only in a trial (start-up time).
from __future__ import annotations

import json
import os
from typing import Any

from returnn_ray.atomic import atomic_write
from returnn_ray.config import load_config, load_settings, set_global_config
from returnn_ray.metrics import FILE_NAME
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.space import VARIANT_KEY, override_args, variant_name
from returnn_ray.training.job import TrainJob, TrialReport


def trial_dir(sweep_dir: str, values: dict[str, Any], trial_id: str) -> str:
    return os.path.join(sweep_dir, "trials", f"{variant_name(values)}-{trial_id}")


def trial_args(job: SweepJob, values: dict[str, Any], directory: str) -> tuple[list[str], list[str]]:
    """The trial's command line: config files and ``++`` arguments, as a user would type it."""
    files = list(job.files) + ([str(values[VARIANT_KEY])] if VARIANT_KEY in values else [])
    model_name = os.path.basename(job.model or "model")
    args = list(job.args) + override_args(values) + [
        "++task", "train",
        # one CPU worker: trained inside the trial's actor, which holds the CPU (Ray Train local
        # mode); else the trial's workers are Ray actors holding its CPUs/GPUs
        "++ray_local_mode", str(job.local_trials),
        "++model", os.path.join(directory, model_name),
        "++learning_rate_file", os.path.join(directory, "learning_rates"),
        "++log", os.path.join(directory, "train.log"),
        "++metrics_file", os.path.join(directory, FILE_NAME),  # its own, also if the sweep's args name one
    ]
    return files, args


def run_trial(trial_config: dict[str, Any], shared_datasets: dict[str, Any] | None = None) -> None:
    """Tune's function trainable (runs in a Tune trial actor).

    ``shared_datasets``: ``{name: ObjectRef}`` of the datasets the sweep opened once; used when
    the trial's data settings are the base config's (a variant that changes the data opens its own).
    """
    from ray import tune

    from returnn_ray.sweep.reports import fit_reporting_to_tune
    from returnn_ray.training.driver import check_before_start, run_on_workers
    from returnn_ray.training.recipe import train_loop_per_worker

    job = SweepJob.from_tune(trial_config["job"])
    values = dict(trial_config["values"])
    directory = trial_dir(job.sweep_dir, values, tune.get_context().get_trial_id())
    os.makedirs(directory, exist_ok=True)
    files, args = trial_args(job, values, directory)
    atomic_write(os.path.join(directory, "variant.json"), json.dumps({"values": values, "files": files, "args": args}, indent=1, default=repr))
    config = load_config(files, args)
    set_global_config(config)
    settings = load_settings(config)
    check_before_start(settings)
    same_data = shared_datasets and data_fingerprint(settings) == job.data_fingerprint
    task = TrainJob(trial=TrialReport(job.metric, to_tune=job.local_trials), shared_datasets=shared_datasets if same_data else None)

    def fit(callbacks: list | None) -> None:
        run_on_workers(settings, config, train_loop_per_worker, task, what="training", run_name="returnn_ray_train",
                       callbacks=callbacks)

    if job.local_trials:
        fit(None)  # the loop, in this actor, reports to Tune itself
    else:
        fit_reporting_to_tune(fit)


def data_fingerprint(settings) -> str:
    """What decides a run's datasets: equal for two runs that would open the same data."""
    return repr(settings.data)
