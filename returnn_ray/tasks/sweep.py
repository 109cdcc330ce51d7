"""``returnn-ray sweep``: one Ray Tune trial per config variant, each a full training run.

    returnn-ray sweep base.config --grid learning_rate=0.0005,0.001,0.003 --grid batch_size=2000,5000

Checks everything it can before any trial starts (the sweep, every trial's config, the metric, the
sweep dir, that a trial's workers fit the cluster), then runs a ``Tuner`` over :func:`returnn_ray.sweep.trial.run_trial`
with as many trials at once as the cluster can place (``sweep_max_concurrent_trials``), the rest
queued. ``sweep_scheduler asha`` stops weak trials early. Rerunning the same command resumes an
interrupted sweep: finished trials are kept, unfinished ones resume from their checkpoints, failed
ones are tried again; another sweep in the same dir is refused or, without results, replaces it
(:mod:`returnn_ray.sweep.manifest`). At
the end: a table of trials, ``best.config``, ``<metric>.png`` and a ``sweep_end`` event in the sweep's
metrics file (``metrics.jsonl``) in ``sweep_dir``; each trial writes its own in its directory.
"""

# Imports inside functions: Ray, torch and the modules that import them load only when they are used (a sweep with --variants needs no torch before its trials) (start-up time).
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time

from returnn_ray.atomic import atomic_write
from returnn_ray.cluster import env, ray_internals
from returnn_ray.cluster.placement import place
from returnn_ray.config import KNOWN_KEYS, Config, Settings
from returnn_ray.data.from_settings import data_specs, eval_dataset_names, open_dataset
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.metrics import FILE_NAME, MetricsWriter, metrics_path, since_process_start
from returnn_ray.sweep import manifest
from returnn_ray.sweep.checks import check_sweep_dir, check_trials
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.results import (
    TrialSummary, best_config_text, best_epoch, format_table, import_plot_in_background, metric_per_epoch, ranked,
    write_plot,
)
from returnn_ray.sweep.space import parse_space, tune_param_space, warn_unknown_keys
from returnn_ray.sweep.trial import data_fingerprint, run_trial, trial_args, trial_dir
from returnn_ray.training.run_lock import ModelLock


@dataclasses.dataclass(frozen=True)
class SweepArgs:
    """What ``returnn-ray sweep`` takes besides ``++key value``."""

    files: tuple[str, ...] = ()
    """The base config files."""
    args: tuple[str, ...] = ()
    """The base ``++key value`` arguments."""
    grid: tuple[str, ...] = ()
    """``--grid key=v1,v2`` texts."""
    variants: tuple[str, ...] = ()
    """``--variants`` config files."""


def run(settings: Settings, config: Config, sweep_args: SweepArgs | None = None) -> int:
    sweep_args = sweep_args or SweepArgs()
    s = settings.sweep
    variants = tuple(s.sweep_variants) + sweep_args.variants
    space = parse_space(s.sweep, sweep_args.grid, variants)
    for path in variants:
        if not os.path.isfile(path):
            raise ConfigError(f"--variants: config file {path!r} does not exist")
    warn_unknown_keys(space, KNOWN_KEYS, config.keys())
    _check_base(settings, has_variants=bool(variants))
    sweep_dir = os.path.abspath(s.sweep_dir or os.path.join(os.path.dirname(os.path.abspath(settings.run.model or "returnn_ray_out/model")), "sweep"))
    job = SweepJob(
        files=tuple(sweep_args.files), args=tuple(sweep_args.args), model=settings.run.model, sweep_dir=sweep_dir,
        metric=s.sweep_metric,
    )
    _check(job, space, sweep_dir)
    # One sweep per dir at a time: a second one would clear or restore what the first still writes.
    with ModelLock(sweep_dir, key=SWEEP_DIR_KEY, doing="used", path=os.path.join(sweep_dir, "sweep.lock")):
        return _run(settings, config, job, space, sweep_dir, has_variants=bool(variants))


def _run(settings: Settings, config: Config, job: SweepJob, space, sweep_dir: str, *, has_variants: bool) -> int:
    """The sweep of :func:`run`, after its checks, with the sweep dir locked."""
    s = settings.sweep
    import ray
    from ray import tune

    # env.SWEEP_ENV keeps trials in the command's working directory too (Tune would chdir); a value
    # the user set wins, in the workers too.
    env.set_defaults(env.SWEEP_ENV)
    # Every trial needs room for its workers (a one-CPU trial: its Tune actor), or Tune waits forever.
    placement = place(
        settings.run, may_run_here=False, what="workers of a sweep trial", env_vars={k: os.environ[k] for k in env.SWEEP_ENV},
        state_api=not _one_cpu_trials_on_a_ray_of_ours(settings),
    )
    workers = placement.num_workers
    capacity = int(ray.cluster_resources().get(placement.kind, 0)) // workers
    concurrent = min(s.sweep_max_concurrent_trials or capacity, capacity)
    resume = _prepare(settings, config, job, space, sweep_dir)  # changes the dir: after every check

    shared = _shared_datasets(settings, has_variants=has_variants)
    # A one-CPU-worker trial trains inside its Tune actor, which then holds that CPU: no Train
    # controller and worker actors to start per trial. Else the trial's workers hold the real
    # resources. The datasets are opened once, for all trials.
    job = dataclasses.replace(
        job, data_fingerprint=data_fingerprint(settings) if shared else None,
        local_trials=workers == 1 and not placement.use_gpu,
    )
    # Else the trial's actor only drives its Ray Train run: it holds one byte of memory, no CPU (Tune
    # wants some resource; a hundredth of a CPU left a trial whose workers need all the cluster's
    # CPUs waiting for room for ever).
    resources = {"CPU": 1} if job.local_trials else {"memory": 1}
    trainable = tune.with_resources(tune.with_parameters(run_trial, shared_datasets=shared), resources)
    experiment = os.path.join(sweep_dir, "tune", "sweep")
    start = time.monotonic()
    if resume and tune.Tuner.can_restore(experiment):
        print(f"returnn-ray: resuming the sweep in {sweep_dir}", flush=True)
        # a failed trial is tried again: its cause (a data file, a full disk) may be fixed now
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**tune_param_space(space), "job": job.to_tune()},
            tune_config=tune.TuneConfig(
                metric="objective",
                mode=s.sweep_mode,
                scheduler=_scheduler(settings),
                num_samples=s.sweep_num_samples,
                max_concurrent_trials=concurrent,
                trial_dirname_creator=lambda trial: trial.trial_id,
                # A finished trial's actor (torch imported, config loaded) runs the next trial.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="sweep", storage_path=os.path.join(sweep_dir, "tune"), verbose=0),
        )
    print(
        f"returnn-ray: sweep over {', '.join(d.key for d in space)}: up to {concurrent} trial(s) at once,"
        f" {workers} worker(s) each -> {sweep_dir}",
        flush=True,
    )
    # Tune's console box and failed trials' tracebacks: our table instead
    env.set_defaults({**env.AIR_NEW_OUTPUT.as_env(), **env.TUNE_TRIAL_ERRORS.as_env()})
    metrics = MetricsWriter(metrics_path(settings.run.metrics_file, os.path.join(sweep_dir, FILE_NAME)), task="sweep")
    metrics.write("run_start", workers=workers, concurrent_trials=concurrent, since_start=since_process_start())
    importing = import_plot_in_background()
    try:
        grid = tuner.fit()
    finally:
        importing.join(timeout=30)
    return _summarize(settings, grid, sweep_dir, job, time.monotonic() - start, metrics)


def _one_cpu_trials_on_a_ray_of_ours(settings: Settings) -> bool:
    """Whether the trials will train in their Tune actors (one CPU worker each, :func:`_run`) if this
    sweep starts its own Ray: it would count no GPU (as Ray will count), and the config asks for
    neither a GPU nor more workers. Else they run Ray Train in their actors, whose placement-group
    cleaner needs the State API (``init_ray(state_api=True)``, which starting no Ray, or joining
    one, ignores)."""
    run = settings.run
    if run.device == "gpu" or (run.ray_num_workers or 1) != 1:
        return False
    return run.device == "cpu" or ray_internals.local_gpus() == 0


def _scheduler(settings: Settings):
    """ASHA for ``sweep_scheduler asha`` (stops weak trials at its rungs), else Tune's FIFO."""
    if settings.sweep.sweep_scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch", max_t=settings.run.num_epochs, grace_period=settings.sweep.sweep_grace_period, reduction_factor=2
    )


def _check(job: SweepJob, space, sweep_dir: str) -> None:
    """Before Ray starts: every trial's config, and that the sweep dir is writable."""
    check_trials(job, space)
    check_sweep_dir(sweep_dir, SWEEP_DIR_KEY)


def _prepare(settings: Settings, config: Config, job: SweepJob, space, sweep_dir: str) -> bool:
    """The sweep dir holds this sweep: the same one to resume, or none with results (cleared).
    Returns whether to resume."""
    new = manifest.definition(job, space, settings, config.files)
    outcome, differs = manifest.prepare(sweep_dir, new, SWEEP_DIR_KEY)
    if outcome == "anew":
        print(f"returnn-ray: {sweep_dir} held another sweep without trial results ({differs}); starting anew", flush=True)
    return outcome == "resume"


SWEEP_DIR_KEY = "sweep_dir (--dir)"


def _shared_datasets(settings: Settings, *, has_variants: bool) -> dict | None:
    """The base config's datasets, opened once and put in Ray's object store for every trial
    whose data settings are the same (generated corpora are not generated again per trial)."""
    if has_variants and settings.data.train is None:
        return None
    import ray

    return {name: ray.put(open_dataset(settings, name)) for name in ["train", *eval_dataset_names(settings)]}


def _check_base(settings: Settings, *, has_variants: bool) -> None:
    """The base config must train (unless variants complete it); a sweep_metric must be a score it reports."""
    if has_variants and settings.data.train is None:
        return  # each variant file brings its own data and model; checked with its trials' configs
    from returnn_ray.training.checks import check_trainable

    check_trainable(settings)  # the trials' configs are checked next; this names the base config's faults as its own
    metric = settings.sweep.sweep_metric
    if metric is not None:
        known = expected_score_keys(settings)
        if metric not in known:
            raise ConfigError(f"sweep_metric {metric!r} is not a score this config reports; it reports: {', '.join(known)}")


def _trial_values(result, sweep_dir: str, trial_id: str) -> dict | None:
    """The trial's swept values: from Tune's record, else (a restored failed trial has no
    config there) from the ``variant.json`` its run wrote."""
    if result.config and "values" in result.config:
        return dict(result.config["values"])
    for path in glob.glob(os.path.join(glob.escape(sweep_dir), "trials", f"*-{trial_id}", "variant.json")):
        with open(path, encoding="utf-8") as f:
            return dict(json.load(f)["values"])
    return None


def expected_score_keys(settings: Settings) -> list[str]:
    """The score keys each epoch of this config reports (``train_*`` and per evaluated dataset)."""
    import torch

    from returnn_ray.model.build import model_spec
    from returnn_ray.training.scores import score_keys
    from returnn_ray.training.steps import dummy_batch

    specs = data_specs(settings, open_dataset(settings, "train"))
    spec = model_spec(settings, specs)
    with torch.no_grad():
        names = list(spec.step(spec.build(1, 0), dummy_batch(specs, torch.device("cpu")), epoch=1, step=0))
    keys: list[str] = []
    for dataset in ["train", *eval_dataset_names(settings)]:
        keys += score_keys(dataset, dict.fromkeys(names, 0.0))
    return sorted(keys)


def _summarize(settings: Settings, grid, sweep_dir: str, job: SweepJob, secs: float, metrics: MetricsWriter) -> int:
    trials = []
    for result in grid:
        # Tune names a trial's directory after its id; a restored trial's gets a suffix (`<id>_e2ef`).
        trial_id = (result.metrics or {}).get("trial_id") or re.match(r"[0-9a-f]+_\d+", os.path.basename(result.path)).group(0)
        values = _trial_values(result, sweep_dir, trial_id)
        if values is None:
            continue  # a trial Tune recorded before it started (an interrupted start): nothing to report
        directory = trial_dir(sweep_dir, values, trial_id)
        scores, metric = metric_per_epoch(os.path.join(directory, "learning_rates"), job.metric)
        if result.error is not None:
            status = "error: " + (str(result.error).strip().splitlines() or ["?"])[-1][:120]
        elif len(scores) < settings.run.num_epochs:
            status = "stopped early"
        else:
            status = "done"
        trials.append(TrialSummary(os.path.basename(directory), directory, values, status, scores, metric))
    if not trials:
        raise UserError(f"the sweep in {sweep_dir} ran no trial")
    mode = settings.sweep.sweep_mode
    table = format_table(trials, mode)
    atomic_write(os.path.join(sweep_dir, "results.txt"), table)
    print(table, end="", flush=True)
    best = ranked(trials, mode)[0]
    if not best.scores:
        raise UserError(f"no trial of the sweep reported a score; see the trials' train.log files in {sweep_dir}/trials")
    files, args = trial_args(job, best.values, best.directory)
    atomic_write(os.path.join(sweep_dir, "best.config"), best_config_text(best, files, args, mode))
    atomic_write(os.path.join(sweep_dir, "best.json"), json.dumps({"values": best.values, "directory": best.directory}, default=repr) + "\n")
    plot = os.path.join(sweep_dir, f"{best.metric or 'score'}.png")
    plotted = write_plot(plot, trials)
    failed = sum(t.status.startswith("error") for t in trials)
    score = best_epoch(best, mode)
    metrics.write("sweep_end", trials=len(trials), failed=failed, best=best.name, directory=best.directory,
                  values=best.values, metric=best.metric, score=score[1] if score else None, secs=round(secs, 3))
    print(
        f"returnn-ray: sweep done in {secs:.1f} s: {len(trials)} trials ({failed} failed); best {best.name};"
        f" config {os.path.join(sweep_dir, 'best.config')}"
        + (f"; plot {plot}" if plotted else "; no plot (pip install 'returnn-ray[plot]')"),
        flush=True,
    )
    return 0
