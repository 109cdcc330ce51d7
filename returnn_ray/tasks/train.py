"""``task = "train"``: the config becomes a Ray Train ``TorchTrainer`` with PyTorch DDP.

Everything a user can get wrong is checked here, before Ray starts: the datasets open and
agree with ``extern_data``, the network builds, the model directory is writable. Then the
driver starts (or joins) Ray, runs :func:`returnn_ray.training.worker.train_loop_per_worker`
on ``ray_num_workers`` workers and prints rank 0's log lines as RETURNN prints them.
"""

from __future__ import annotations

import os
import shutil
import time

from returnn_ray.config import Config
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.settings import Settings
from returnn_ray.tasks.common import open_dataset
from returnn_ray.training import checkpoints
from returnn_ray.training.steps import model_spec
from returnn_ray.training.worker import data_specs, eval_dataset_names

RAY_TRAIN_ENV = {
    # Ray Train polls workers (and drains report()) at this interval; the default 2 s makes
    # every epoch-end report wait up to 2 s (RAY_NOTES.md).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # The preemption watcher is for cloud spot nodes; off by default locally it saves start-up.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train would run the workers in its own artifacts directory; relative paths in a config
    # (model, HDF files) must mean what they mean for `returnn-ray CONFIG`, as with RETURNN.
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}


def check_before_start(settings: Settings) -> None:
    """Fail fast, with one line, on everything that can be checked without Ray."""
    if settings.data.train is None:
        raise ConfigError("task 'train' needs a `train` dataset in the config")
    train = open_dataset(settings, "train")
    for name in eval_dataset_names(settings):
        open_dataset(settings, name)
    model_spec(settings, data_specs(settings, train))
    check_training_settings(settings)
    if settings.run.model:
        checkpoints.check_model_dir_writable(settings.run.model)
    if settings.training.learning_rate_file:
        checkpoints.check_model_dir_writable(settings.training.learning_rate_file)
    if settings.training.use_tensorboard:
        from returnn_ray.training.tensorboard import check_tensorboard

        check_tensorboard(settings.training.tensorboard_opts or {})


def check_training_settings(settings: Settings) -> None:
    """The optimizer and the learning-rate control (with an existing ``learning_rate_file``), which
    the training loop builds first: a bad value is one line here, before Ray or a worker starts."""
    from returnn_ray.training.lr_control import check_lr_control
    from returnn_ray.training.optim import check_optimizer

    t = settings.training
    if t.network is not None or t.get_model is not None:  # no model: the train task says so
        check_optimizer(
            t.optimizer, adam=t.adam, nadam=t.nadam, learning_rate=t.learning_rate,
            # as the training loop: RETURNN's torch engine wants an optimizer, network dicts follow its TF engine (SGD)
            default="sgd" if t.network is not None else "error",
        )
    check_lr_control(t.learning_rate_control, t.lr_control_options(), t.learning_rate_file)


def run(settings: Settings, config: Config) -> int:
    check_before_start(settings)
    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)

    from returnn_ray.ray_setup import init_ray

    start = time.monotonic()
    if not use_local_mode(settings):
        init_ray(settings.run.ray_address, env_vars=RAY_TRAIN_ENV)
    return _fit(settings, config, start)


def use_local_mode(settings: Settings) -> bool:
    """Whether to run the one worker in this process (Ray Train's local mode, ``num_workers=0``).

    Starting a Ray cluster costs a 2-core machine 15-20 s before the first step, RETURNN none; a
    run that can only ever use one worker (no ``ray_num_workers``, no cluster to join, at most one
    GPU) gets nothing for it. Same loop, same batches, same files; ``ray_local_mode False`` forces Ray.
    """
    import ray

    if settings.run.ray_local_mode is not None:
        return settings.run.ray_local_mode
    if settings.run.ray_num_workers is not None or settings.run.ray_address or os.environ.get("RAY_ADDRESS"):
        return False
    if ray.is_initialized():  # e.g. a notebook or test that started Ray itself
        return False
    import torch

    return settings.run.device == "cpu" or torch.cuda.device_count() <= 1


def _fit(settings: Settings, config: Config, start: float) -> int:
    from returnn_ray.training.worker import train_loop_per_worker

    run_on_workers(settings, config, train_loop_per_worker, what="training", run_name="returnn_ray_train")
    print(f"returnn-ray: finished training in {time.monotonic() - start:.1f} s", flush=True)
    return 0


def run_on_workers(
    settings: Settings,
    config: Config,
    loop,
    *,
    what: str,
    run_name: str,
    extra: dict | None = None,
    callbacks: list | None = None,
):
    """Run ``loop`` (a ``train_loop_per_worker``) on ``ray_num_workers`` DDP workers of a
    ``TorchTrainer``, printing rank 0's log lines; a worker's UserError becomes the driver's."""
    import ray
    import ray.train
    from ray import cloudpickle
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig
    from ray.util.queue import Queue

    from returnn_ray import interrupts

    from returnn_ray.training.log import DriverLog

    local = use_local_mode(settings)
    if local:
        import logging
        import queue as queue_module

        import torch

        use_gpu = settings.run.device == "gpu" or (settings.run.device is None and torch.cuda.is_available())
        num_workers = 1
        queue = queue_module.Queue()  # the driver's log reads the same get/put API
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # "Running in local mode", "Reported metrics"
    else:
        # RETURNN picks the GPU when there is one and `device` is unset.
        use_gpu = settings.run.device == "gpu" or (
            settings.run.device is None and ray.cluster_resources().get("GPU", 0) > 0
        )
        num_workers = settings.run.ray_num_workers or default_num_workers(use_gpu)
        _check_placeable(num_workers, use_gpu, settings.run.ray_placement_timeout)
        queue = Queue(actor_options={"num_cpus": 0})
    log = DriverLog(queue, log_files=settings.run.log).start()
    model_dir = os.path.dirname(os.path.abspath(settings.run.model or "returnn_ray_out/model"))
    # Ray Train keeps its run state (the epoch markers its failure handling restarts from) here;
    # every node must see it, as the model dir. Nothing in it is needed once fit() returns: the
    # checkpoints are the model files. So it goes, unless it was there before (not ours to delete).
    storage = os.path.join(model_dir, "ray_train")
    storage_is_ours = not os.path.exists(storage)
    trainer = interrupts.trainer_class()(
        loop,
        train_loop_config={
            "settings": cloudpickle.dumps(settings),
            "worker_env": config.worker_env(),
            "log_queue": queue,
            "use_gpu": use_gpu,
            "process_start": _process_start_time(),
            "local": local,
            **(extra or {}),
        },
        scaling_config=ScalingConfig(num_workers=0 if local else num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=settings.run.ray_max_failures),
            callbacks=callbacks,
        ),
    )
    where = "in this process (Ray Train local mode)" if local else "on Ray"
    log.print(f"returnn-ray: {what} with {num_workers} worker(s) {where} ({'gpu' if use_gpu else 'cpu'})")
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _user_error_from(exc) or _worker_death(exc, settings) or exc
    finally:
        log.close()
        if storage_is_ours:
            shutil.rmtree(storage, ignore_errors=True)


def _process_start_time() -> float:
    """When this `returnn-ray` process started (wall clock), for the time-to-first-step figure."""
    import psutil  # ships with ray[default]

    return psutil.Process().create_time()


def _check_placeable(
    num_workers: int,
    use_gpu: bool,
    timeout: float = 0.0,
    *,
    bundle: dict[str, float] | None = None,
    what: str = "training workers",
) -> None:
    """Fail with one line, instead of an endless PENDING, when the cluster cannot hold ``num_workers``
    workers of ``bundle`` each (Ray Train's: one GPU with device gpu, else one CPU).

    A cluster this process joined may grow (an autoscaler, ``ray start --address`` on more
    machines): wait up to ``timeout`` seconds (``ray_placement_timeout``) for the room, asking an
    autoscaler for it meanwhile (``request_resources``, withdrawn after the wait; a cluster-wide
    request, it replaces another driver's). A local Ray this process started itself cannot grow: no wait.
    """
    bundle = bundle or ({"GPU": 1} if use_gpu else {"CPU": 1})
    kind = "GPU" if use_gpu else "CPU"
    room, have = _placeable_workers(bundle), _cluster_amount(kind)
    if room >= num_workers:
        return
    need = num_workers * bundle.get(kind, 0)
    can_grow = _cluster_can_grow()
    limit = _autoscaler_max(kind) if can_grow else None
    too_big = limit is not None and limit < need
    waited = 0.0
    if can_grow and timeout > 0 and not too_big:
        print(
            f"returnn-ray: waiting up to {timeout:g} s for the Ray cluster to have room for {num_workers} {what}"
            f" ({_bundle_text(bundle)} each; it has {have:g} {kind}s now; ray_placement_timeout)",
            flush=True,
        )
        start = time.monotonic()
        _request_resources([bundle] * num_workers)
        try:
            while room < num_workers and time.monotonic() - start < timeout:
                time.sleep(min(1.0, max(0.0, timeout - (time.monotonic() - start))))
                room, have = _placeable_workers(bundle), _cluster_amount(kind)
        finally:
            _request_resources([])  # the workers' own placement group holds the nodes from here on
        waited = time.monotonic() - start
        if room >= num_workers:
            return
    plural = "" if need == 1 else "s"
    found = f"the Ray cluster has {have:g}"
    if have >= need:  # enough in all, but not together on single nodes
        found += f" {kind}{plural}, but its nodes have room for only {room} {what} of {_bundle_text(bundle)} each"
    if too_big:
        found += f" and its autoscaler can grow it to at most {limit:g}"
    elif waited:
        found += f" (after {waited:.0f} s of waiting, ray_placement_timeout)"
    elif not can_grow:
        found += " (the local Ray this command started)"
    if not can_grow:
        fix = "set device cpu, or join a cluster with GPUs (ray_address)" if use_gpu and have == 0 else (
            "lower ray_num_workers, or join a bigger cluster (ray_address)")
    else:
        fix = "set device cpu or add nodes with GPUs" if use_gpu and have == 0 else "lower ray_num_workers or add nodes"
        if not waited and not too_big:
            fix += ", or set ray_placement_timeout to wait for them"
    raise UserError(
        f"ray_num_workers {num_workers} needs {need:g} {kind}{plural} but {found};"
        f" the {what} cannot start: {fix}"
    )


def _bundle_text(bundle: dict[str, float]) -> str:
    """``{'CPU': 1, 'GPU': 1}`` -> ``1 CPU + 1 GPU``."""
    return " + ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def _cluster_amount(kind: str) -> float:
    import ray

    return float(ray.cluster_resources().get(kind, 0))


def _placeable_workers(bundle: dict[str, float]) -> int:
    """How many ``bundle``-sized workers the alive nodes hold, each worker on one node (busy or not)."""
    import ray

    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        total += min((int(have.get(name, 0) // amount) for name, amount in bundle.items() if amount > 0), default=0)
    return total


def _cluster_can_grow() -> bool:
    """False for a Ray that ``ray.init`` started in this process (no other node can join it)."""
    from ray._private import worker  # private, stable since Ray 2.0; unknown: assume it may grow

    return not getattr(getattr(worker, "_global_node", None), "ray_init_cluster", False)


def _autoscaler_max(kind: str) -> float | None:
    """The most of ``kind`` the cluster's autoscaler may bring up (None: no autoscaler config known)."""
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API; without it the wait is all we do
        return None
    return float(limits.get(kind, 0)) if limits else None


def _request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask an autoscaler for room (a no-op without one); ``[]`` withdraws the request."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - only a hint to the autoscaler
        pass


def default_num_workers(use_gpu: bool) -> int:
    """One worker per GPU of the cluster with ``device gpu``, else one."""
    import ray

    return max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 1


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
    for rank, error in sorted(failures.items()):
        cause = error
        while cause is not None:
            inner = getattr(cause, "cause", None)  # Ray's RayTaskError(UserError) of a Ray Data reader
            if isinstance(inner, UserError):
                cause = inner
            if isinstance(cause, UserError):
                return type(cause)(f"{cause} (worker rank {rank})")
            cause = cause.__cause__
    return None
