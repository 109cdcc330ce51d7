"""The training loop every Ray Train worker runs: one code path for 1 worker, N workers and N nodes.

Per (sub)epoch: take the learning rate from the learning-rate control, plan the epoch's
batches over the global seq order and read this rank's share through Ray Data, train,
score ``dev`` and every ``eval_datasets`` entry on all ranks, then rank 0 writes the
checkpoint and the learning_rate_file (atomically) and every rank reports to Ray Train.

Resume needs no state beyond the files RETURNN users already have: the newest epoch with
both ``<model>.NNN.pt`` and ``.opt.pt`` and the learning_rate_file. The same holds when Ray
restarts the worker group after a failure (``ray_max_failures``). With ``save_interval_steps``
rank 0 also writes ``<model>.NNN.partial.pt`` every that many steps (model, optimizer, the
number of seqs of the epoch's order done, the scores so far, every rank's RNG state); a restart
continues the epoch from there, on any number of workers: the rest of the order is planned
again and dealt to the new world size, so no seq is lost or used twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import threading
import time
from typing import Any, Iterable, Iterator, Mapping

import torch

import numpy as np

from returnn_ray.config import Settings
from returnn_ray.data import plan_epoch
from returnn_ray.data.batching import filter_by_length
from returnn_ray.data.base import Dataset
from returnn_ray.data.epochs import check_epoch
from returnn_ray.data.from_settings import batching_options, data_specs, eval_dataset_names, open_dataset
from returnn_ray.data.ray_data import READ_TASK_CONCURRENCY, Batch, rank_batches, read_task_concurrency
from returnn_ray.errors import DataError, UserError
from returnn_ray.training import checkpoints
from returnn_ray.training.dynamic_lr import StepLearningRate
from returnn_ray.training.log import WorkerLog, format_scores, hms
from returnn_ray.training.lr_control import make_lr_control
from returnn_ray.training.memory import log_memory_usage
from returnn_ray.training.optim import amp_context, apply_update, build_optimizer, make_grad_scaler, set_learning_rate, should_step
from returnn_ray.training.preload import load_weights
from returnn_ray.training.scores import ScoreAccumulator, objective, score_keys
from returnn_ray.training.steps import ModelSpec, dummy_batch, model_spec
from returnn_ray.training.tensorboard import TensorBoardLog, tensorboard_dir


@dataclasses.dataclass
class WorkerContext:
    """What one rank knows about itself."""

    rank: int
    world_size: int
    device: torch.device
    local: bool = False
    """Ray Train's local mode: the loop runs in the driver (or a sweep trial) process, reads in-process."""
    read_concurrency: int = READ_TASK_CONCURRENCY
    """Ray Data read tasks in flight for this rank (:func:`read_task_concurrency`)."""

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
    return WorkerContext(rank, world, device, read_concurrency=read_task_concurrency(_node_cpus(), ctx.get_local_world_size()))


def _node_cpus() -> float:
    import ray

    node = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node), 0.0)


def _local_context(use_gpu: bool) -> WorkerContext:
    """Rank 0 of 1 in this process (Ray Train's local mode; inside a Tune trial Ray Train's
    context API is off limits, so it is not asked)."""
    if use_gpu and not torch.cuda.is_available():
        raise UserError("device gpu: no GPU that torch can use in this process; use ++device cpu")
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return WorkerContext(0, 1, device, local=True)


def start_worker(job: Mapping[str, Any]) -> tuple[Settings, WorkerContext, WorkerLog]:
    """The settings (unpickled once this process knows which config to rebuild), rank and log."""
    from ray import cloudpickle

    from returnn_ray.config.workers import use_worker_config

    use_worker_config(job["worker_env"])
    settings: Settings = cloudpickle.loads(job["settings"])
    ctx = _local_context(job.get("use_gpu", False)) if job.get("local") else _context(job.get("use_gpu", False))
    log = WorkerLog(job.get("log_queue"), enabled=ctx.is_chief, verbosity=settings.run.log_verbosity)
    torch.manual_seed(job.get("seed", 42))
    return settings, ctx, log


def train_loop_per_worker(job: Mapping[str, Any]) -> dict:
    """Ray Train's ``train_loop_per_worker``; ``job`` is built by :mod:`returnn_ray.tasks.train`.

    The settings come pickled (they hold functions of a Python config), so that this process
    first learns which config to rebuild for them (:func:`use_worker_config`).
    """
    settings, ctx, log = start_worker(job)
    if job.get("process_start") is not None:  # every rank, with its Ray node id (local mode: none)
        import ray

        node = f"node {ray.get_runtime_context().get_node_id()}" if ray.is_initialized() else "no Ray node (local mode)"
        WorkerLog(job.get("log_queue"), enabled=True, verbosity=settings.run.log_verbosity).line(
            f"training worker {ctx.rank} up {time.time() - job['process_start']:.1f} s after returnn-ray started on {node}",
            level=4,
        )

    train = _dataset(settings, job, "train", log)
    evals = {name: _dataset(settings, job, name, log) for name in eval_dataset_names(settings)}
    specs = data_specs(settings, train)
    spec = model_spec(settings, specs)

    model_prefix = settings.run.model
    lr_file = settings.training.learning_rate_file
    lr_control = make_lr_control(settings.training.learning_rate_control, **settings.training.lr_control_options())
    if lr_file:
        lr_control.load(lr_file)

    start_epoch, step = 1, 0
    newest = checkpoints.newest_complete_epoch(model_prefix) if model_prefix else None
    state = checkpoints.load_checkpoint(model_prefix, newest) if newest is not None else None
    if state is not None:
        start_epoch, step = newest + 1, int(state.get("step", 0))
    mid = _mid_epoch_state(settings, train, start_epoch, ctx, log)
    num_epochs = settings.run.num_epochs
    # The first epoch's batches start coming (Ray Data's read tasks start) while the model is built.
    first = _epoch_batches(settings, ctx, train, start_epoch, mid, started=True) if start_epoch <= num_epochs else None
    model = spec.build(1, 0)
    imported_step = load_weights(  # import_model_train_epoch1 / preload_from_files on a fresh start; resume: as RETURNN
        settings, model, state, training=True, log=log.line,
        checkpoint_path=checkpoints.checkpoint_path(model_prefix, newest) if state is not None else None,
    )
    step = step if imported_step is None else imported_step
    if mid is not None:
        model.load_state_dict(mid["model"])
        step = int(mid["step"])
    model.to(ctx.device)
    optimizer = build_optimizer(
        model,
        optimizer=settings.training.optimizer,
        adam=settings.training.adam,
        nadam=settings.training.nadam,
        learning_rate=settings.training.learning_rate,
        optimizer_epsilon=settings.training.optimizer_epsilon,
        # RETURNN's torch engine wants an explicit optimizer; network dicts follow its TF engine (SGD)
        default="sgd" if settings.training.network is not None else "error",
    )
    if mid is not None:
        optimizer.load_state_dict(mid["optimizer"])
        log.line(
            f"Resuming epoch {start_epoch} mid-way ({checkpoints.partial_path(model_prefix, start_epoch)}): "
            f"{mid['seqs_done']} of {mid['num_seqs']} seqs done, global train step {step}"
        )
    elif newest is not None:
        opt_state = checkpoints.load_optimizer_state(model_prefix, newest, map_location=ctx.device)
        optimizer.load_state_dict(opt_state["optimizer"])
        log.line(f"Resuming from epoch {newest} ({checkpoints.checkpoint_path(model_prefix, newest)}), global train step {step}")

    grad_scaler = make_grad_scaler(settings.training.torch_amp, ctx.device.type)
    if mid is not None and grad_scaler is not None and mid.get("grad_scaler"):
        grad_scaler.load_state_dict(mid["grad_scaler"])
    train_model = model
    if ctx.world_size > 1:
        # broadcast_buffers=False: no per-forward collective, so eval passes with uneven step
        # counts cannot hang; network dicts have no buffers to keep in sync.
        train_model = torch.nn.parallel.DistributedDataParallel(spec.ddp_module(model), broadcast_buffers=False)

    tb = _tensorboard_log(settings) if ctx.is_chief else None
    if start_epoch > num_epochs:
        log.line(f"Already trained until final epoch {num_epochs}, nothing to do.")
        if newest in lr_control.epochs:  # the run's result is the last epoch's (e.g. for a resumed sweep)
            last = lr_control.epochs[newest]
            scores = {k: v for k, v in last.error.items() if not k.startswith(":meta:")}
            report(
                ctx, newest, step, scores, last.learning_rate,
                sweep_metric=job.get("sweep_metric", False), to_tune=job.get("report_to_tune", False),
            )
    for epoch in range(start_epoch, num_epochs + 1):
        lr = lr_control.learning_rate_for_epoch(epoch)
        set_learning_rate(optimizer, lr)
        log.line(f"start epoch {epoch} global train step {step} with effective learning rate {lr} ...")
        start = time.monotonic()
        batches = first if epoch == start_epoch else _epoch_batches(settings, ctx, train, epoch, None)
        log_memory_usage(settings.run.torch_log_memory_usage, ctx.device, log.line, epoch_start=True)
        train_scores, step = _train_epoch(
            settings, ctx, spec, train_model, optimizer, grad_scaler, train, specs, batches, step, log,
            job.get("process_start") if epoch == start_epoch else None, tb,
            seed=job.get("seed", 42), mid=mid if epoch == start_epoch else None, lr=lr,
        )
        train_secs = time.monotonic() - start
        log_memory_usage(settings.run.torch_log_memory_usage, ctx.device, log.line, epoch_start=False)
        scores = score_keys("train", train_scores)
        _check_finite(scores, epoch)
        log.line(f"Epoch {epoch}: Total train loss: {format_scores(train_scores)}  ({hms(train_secs)})")
        log.line(f"epoch {epoch} train time {train_secs:.3f} s", level=4)
        eval_text = []
        for name, dataset in evals.items():
            ds_scores = eval_epoch(settings, ctx, spec, model, dataset, name, specs, epoch, step)
            scores.update(score_keys(name, ds_scores))
            eval_text.append(f"{name}: {format_scores(ds_scores)}")
            if tb is not None:
                tb.evaluated(name, ds_scores, step)
        if eval_text:
            log.line(f"Epoch {epoch} evaluation: {' '.join(eval_text)}")
        lr_control.set_epoch_error(epoch, scores)
        lr_control.set_epoch_meta(epoch, {"epoch_train_time_secs": round(train_secs), "global_train_step_end": step})
        if ctx.is_chief:
            _save_epoch(settings, lr_control, model, optimizer, epoch, step, lr)
        log.event("epoch_end", epoch=epoch, step=step, scores=scores, learning_rate=lr, epoch_time=round(train_secs, 3))
        report(ctx, epoch, step, scores, lr, sweep_metric=job.get("sweep_metric", False), to_tune=job.get("report_to_tune", False))
    if tb is not None:
        tb.close()
    return {"epoch": num_epochs, "step": step}


def _dataset(settings: Settings, job: Mapping[str, Any], name: str, log: WorkerLog) -> Dataset:
    """Dataset ``name``: a shared copy in Ray's object store if the job has one (the trials of a
    sweep over the same data share the one the sweep opened), else opened from the config."""
    shared = (job.get("shared_datasets") or {}).get(name)
    if shared is None:
        return open_dataset(settings, name)
    import ray

    log.line(f"dataset {name}: the sweep's shared copy from Ray's object store", level=4)
    return ray.get(shared)


def _tensorboard_log(settings: Settings) -> TensorBoardLog | None:
    if not settings.training.use_tensorboard:
        return None
    opts = settings.training.tensorboard_opts or {}
    return TensorBoardLog(
        tensorboard_dir(settings.run.model, opts), every_n_train_steps=opts.get("log_every_n_train_steps", 100)
    )


def _mid_epoch_state(settings: Settings, train: Dataset, epoch: int, ctx: WorkerContext, log: WorkerLog) -> dict | None:
    """The mid-epoch state of ``epoch`` to resume from, if there is one made for this epoch's seq order."""
    prefix = settings.run.model
    if not prefix:
        return None
    if ctx.is_chief:
        checkpoints.delete_partials(prefix, up_to_epoch=epoch - 1)
    if epoch > settings.run.num_epochs:
        return None
    mid = checkpoints.load_partial(prefix, epoch, map_location=ctx.device)
    if mid is None:
        return None
    if mid.get("order_digest") != _order_digest(settings, train, epoch):
        log.line(
            f"WARNING: ignoring {checkpoints.partial_path(prefix, epoch)}: made for another seq order of epoch {epoch} "
            "(dataset or seq_ordering changed); the epoch starts from its beginning"
        )
        return None
    return mid


def _order_digest(settings: Settings, train: Dataset, epoch: int) -> str:
    """Digest of the epoch's seq order after the length filter: what a mid-epoch cursor counts in."""
    order = filter_by_length(train.seq_order_for_epoch(epoch), train.seq_lens, batching_options(settings, "train"))
    return hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()


def _seed_epoch(seed: int, epoch: int, rank: int, skip_seqs: int = 0) -> None:
    """Each rank's torch RNG (dropout) from the seed, epoch and rank: a redone or resumed epoch
    draws what the first try drew."""
    torch.manual_seed((seed * 1_000_003 + epoch * 10_007 + rank * 101 + skip_seqs) % 2**63)


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _restore_rng(mid: Mapping[str, Any], ctx: WorkerContext, seed: int, epoch: int) -> None:
    """Every rank's RNG as it was at the mid-epoch save if the world size is the same; else fresh
    per-rank seeds (a different world size draws differently anyway)."""
    states = mid.get("rng") or []
    if int(mid.get("world_size", 0)) == ctx.world_size and len(states) == ctx.world_size:
        mine = states[ctx.rank]
        torch.set_rng_state(mine["cpu"].cpu())
        if "cuda" in mine and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"].cpu())
    else:
        _seed_epoch(seed, epoch, ctx.rank, int(mid["seqs_done"]))


def _gather(obj: Any) -> list:
    """``obj`` of every rank (rank order); ``[obj]`` without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _save_mid_epoch(
    settings: Settings, ctx: WorkerContext, log: WorkerLog, model, optimizer, grad_scaler, totals, *,
    epoch: int, step: int, seqs_done: int, num_seqs: int, digest: str,
) -> None:
    """All ranks: gather the RNG states; rank 0 writes ``<model>.NNN.partial.pt``."""
    rng = _gather({k: v.cpu() for k, v in _rng_states().items()})
    if not ctx.is_chief:
        return
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    path = checkpoints.save_partial(
        settings.run.model,
        epoch,
        {
            "model": inner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            "step": step,
            "seqs_done": seqs_done,
            "num_seqs": num_seqs,
            "order_digest": digest,
            "scores": totals,
            "world_size": ctx.world_size,
            "rng": rng,
        },
    )
    log.line(f"epoch {epoch} global train step {step}: mid-epoch checkpoint, {seqs_done} of {num_seqs} seqs done ({path})", level=4)


@dataclasses.dataclass
class EpochBatches:
    """One (sub)epoch's batch plan over all ranks and this rank's batches, as they are read."""

    epoch: int
    plan: Any
    skip: int
    """Seqs of the epoch's order done before (a mid-epoch resume); the plan covers the rest."""
    mine: list
    reader: Iterable[Batch]


def _epoch_batches(
    settings: Settings, ctx: WorkerContext, train: Dataset, epoch: int, mid: Mapping[str, Any] | None, *, started: bool = False
) -> EpochBatches:
    """The epoch's plan and this rank's reader; ``started``: its first batch is read now, in a
    background thread, so that Ray Data starting up overlaps with what the caller does next."""
    order = train.seq_order_for_epoch(epoch)
    skip = int(mid["seqs_done"]) if mid is not None else 0
    check_epoch(train, order, batching_options(settings, "train"), epoch)  # else a NaN score that reads as divergence
    plan = plan_epoch(order, train.seq_lens, batching_options(settings, "train"), ctx.world_size, skip_seqs=skip)
    mine = plan.for_rank(ctx.rank)
    reader = rank_batches(train, mine, list(train.specs), in_process=ctx.local, concurrency=ctx.read_concurrency)
    return EpochBatches(epoch, plan, skip, mine, StartedReader(reader) if started else reader)


class StartedReader:
    """An iterator whose first item is fetched at once by a background thread; iterating it
    (once) yields that item, then the rest from the calling thread."""

    def __init__(self, items: Iterator):
        self._items = items
        self._first: list = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch_first, name="returnn-ray-first-batch", daemon=True)
        self._thread.start()

    def _fetch_first(self) -> None:
        try:
            self._first.append(next(self._items))
        except StopIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised in the thread that iterates
            self._error = exc

    def __iter__(self) -> Iterator:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._items


def _train_epoch(
    settings, ctx, spec: ModelSpec, model, optimizer, grad_scaler, train: Dataset, specs, batches: EpochBatches, step, log,
    job_start, tb, *, seed: int = 42, mid: Mapping[str, Any] | None = None, lr: float = 1.0,
):
    model.train()
    epoch, plan, skip, my_batches = batches.epoch, batches.plan, batches.skip, batches.mine
    num_seqs = skip + plan.num_seqs
    acc = ScoreAccumulator()
    if mid is None:
        _seed_epoch(seed, epoch, ctx.rank)
    else:
        _restore_rng(mid, ctx, seed, epoch)
        if ctx.is_chief:
            acc.restore(mid["scores"], ctx.device)
    save_every = settings.training.save_interval_steps if settings.run.model else 0
    digest = _order_digest(settings, train, epoch) if save_every else ""
    accum = settings.training.accum_grad_multiple_step or 1
    amp = settings.training.torch_amp
    padding = dummy_batch(specs, ctx.device)
    start = time.monotonic()
    last = start
    optimizer.zero_grad(set_to_none=True)
    step_lr = StepLearningRate.for_epoch(settings.training.dynamic_learning_rate, learning_rate=lr, epoch=epoch, plan=plan, skip_seqs=skip)
    for i, batch in enumerate(batches.reader):
        if step_lr is not None:  # RETURNN's dynamic_learning_rate: the lr of this step
            set_learning_rate(optimizer, step_lr(i, global_train_step=step))
        is_padding = batch.num_seqs == 0
        batch = padding if is_padding else _to_device(batch, ctx.device)
        weight = 0.0 if is_padding else 1.0
        with amp_context(amp, ctx.device.type):
            losses = spec.step(model, batch, epoch=epoch, step=step)
            loss = objective(losses, world_size=ctx.world_size) * weight
            l2 = spec.l2(model)
            if l2 is not None:
                loss = loss + l2
        (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
        # RETURNN: gradients of accum_grad_multiple_step steps are summed, then one update;
        # an accumulation still open at the end of the epoch is dropped.
        if should_step(i, accum):
            apply_update(
                optimizer,
                model,
                grad_scaler=grad_scaler,
                gradient_clip=settings.training.gradient_clip,
                gradient_clip_global_norm=settings.training.gradient_clip_global_norm,
            )
            optimizer.zero_grad(set_to_none=True)
        if i == 0 and job_start is not None:  # the caller passes job_start for the run's first epoch only
            log.first_step(time.time() - job_start, epoch=epoch, step=step)
        acc.add(losses, weight=weight)
        step += 1
        if save_every and (i + 1) % save_every == 0 and i + 1 < len(my_batches) and should_step(i, accum):
            # after an update, so no gradient accumulation is open; every rank gets here at the same step
            totals = acc.totals(sorted(_loss_names(spec, model, padding, epoch, step, acc)))
            _save_mid_epoch(
                settings, ctx, log, model, optimizer, grad_scaler, totals,
                epoch=epoch, step=step, seqs_done=skip + plan.seqs_in_steps(i + 1), num_seqs=num_seqs, digest=digest,
            )
        now = time.monotonic()
        if tb is not None and step % tb.every_n_train_steps == 0 and not is_padding:
            tb.train_step(step, {n: float(v.sum) / max(float(v.num_frames), 1.0) for n, v in losses.items()}, optimizer.param_groups[0]["lr"])
        if log.enabled:
            frac = (i + 1) / len(my_batches)
            if log.verbosity >= 5:
                step_scores = {n: float(v.sum) / max(float(v.num_frames), 1.0) for n, v in losses.items()}
                log.step_line(epoch=epoch, step=i, scores=step_scores, step_secs=now - last, elapsed=now - start, frac=frac)
            if log.progress_due(i, len(my_batches)):
                # this rank's running epoch mean of the first loss: no collective, no per-step sync
                shown = acc.local_mean(acc.names()[0]) if acc.names() else None
                log.progress(epoch=epoch, step=i, num_steps=len(my_batches), loss=shown, elapsed=now - start)
        last = now
    totals = acc.totals(sorted(_loss_names(spec, model, padding, epoch, step, acc)))
    frames = {name: round(f) for name, (_, f) in totals.items()}
    log.line(f"epoch {epoch}: {num_seqs} seqs, frames per loss {frames}", level=4)
    empty = sorted(n for n, (_, f) in totals.items() if not f)  # a 0/0 score: NaN, which reads as divergence
    if empty:
        raise DataError(f"dataset 'train': epoch {epoch}: loss{'es' * (len(empty) > 1)} {', '.join(map(repr, empty))} got "
                        f"no frames from the epoch's {num_seqs} seqs (its targets all have length 0); fix the data or the loss's target")
    return {n: s / f for n, (s, f) in totals.items()}, step


def _loss_names(spec: ModelSpec, model, padding: Batch, epoch: int, step: int, acc: ScoreAccumulator) -> list[str]:
    """The loss names of this model (the same on every rank, even one that ran only padding steps)."""
    names = acc.names()
    if names:
        return names
    with torch.no_grad():
        return list(spec.step(model, padding, epoch=epoch, step=step))


def eval_epoch(settings, ctx, spec: ModelSpec, model, dataset: Dataset, name: str, specs, epoch, step) -> dict:
    """Score ``dataset`` with the current model, each rank on its shard; no collectives until the reduce."""
    model.eval()
    order = dataset.seq_order_for_epoch(epoch)
    check_epoch(dataset, order, batching_options(settings, name), epoch)
    plan = plan_epoch(order, dataset.seq_lens, batching_options(settings, name), ctx.world_size)
    acc = ScoreAccumulator()
    padding = dummy_batch(specs, ctx.device)
    with torch.no_grad():
        for batch in rank_batches(
            dataset, plan.for_rank(ctx.rank), list(dataset.specs), in_process=ctx.local, concurrency=ctx.read_concurrency
        ):
            if batch.num_seqs:
                acc.add(spec.step(model, _to_device(batch, ctx.device), epoch=epoch, step=step, train_flag=False))
        names = _loss_names(spec, model, padding, epoch, step, acc)
    model.train()
    return acc.reduce(sorted(names))


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return Batch(
        seq_idx=batch.seq_idx,
        data={k: v.to(device, non_blocking=True) for k, v in batch.data.items()},
        lens={k: v.to(device, non_blocking=True) for k, v in batch.lens.items()},
    )


def _check_finite(scores: Mapping[str, float], epoch: int) -> None:
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        raise UserError(
            f"epoch {epoch}: non-finite training score {bad} (model diverged; lower learning_rate or set gradient_clip)"
        )


def _save_epoch(settings: Settings, lr_control, model, optimizer, epoch: int, step: int, lr: float) -> None:
    """Rank 0 only: checkpoint (if due), learning_rate_file, old-model cleanup; all atomic."""
    prefix = settings.run.model
    if settings.training.learning_rate_file:
        lr_control.save(settings.training.learning_rate_file)
    if not prefix:
        return
    if checkpoints.should_save(epoch, settings.training.save_interval, settings.run.num_epochs):
        checkpoints.save_checkpoint(
            prefix,
            epoch,
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            step=step,
            effective_learning_rate=lr,
        )
    checkpoints.delete_partials(prefix, up_to_epoch=epoch)  # the epoch is done: its mid-epoch state is stale
    cleanup = settings.training.cleanup_old_models
    if cleanup:
        existing = checkpoints.find_checkpoints(prefix, for_training=False)
        scores = {e: dict(lr_control.epochs[e].error) for e in existing if e in lr_control.epochs}
        for old in checkpoints.models_to_delete(existing, cleanup_old_models=cleanup, scores=scores):
            checkpoints.delete_checkpoint(prefix, old)


def report(
    ctx: WorkerContext,
    epoch: int,
    step: int,
    scores: Mapping[str, float],
    lr: float,
    *,
    sweep_metric: str | None | bool = False,
    to_tune: bool = False,
) -> None:
    """Every rank reports once per epoch (a sync point in Ray Train; per-step reports are throttled).

    Rank 0 attaches a small checkpoint marker, so Ray Train's failure handling knows the
    epoch; the weights themselves stay in ``<model>.NNN.pt``, the file RETURNN tools read.
    In a sweep trial (``sweep_metric`` not False) the metrics also carry ``objective``, the
    score the sweep ranks by: ``sweep_metric``, or (None) the dev key newbob would pick.
    ``to_tune``: a sweep trial training in Ray Train's local mode, inside the Tune trial, has no
    Train controller to forward its reports (``TuneReportCallback``): it reports to Tune itself.
    """
    import json

    import ray.train

    metrics = {"epoch": epoch, "global_step": step, "learning_rate": lr, **scores}
    if sweep_metric is not False:
        from returnn_ray.training.lr_control import error_key_for_scores

        key = sweep_metric or error_key_for_scores(scores)
        if key not in scores:
            raise UserError(f"sweep_metric {key!r} is not among the scores of this run: {', '.join(sorted(scores))}")
        metrics.update(objective=scores[key], objective_key=key)
    if to_tune:
        from ray import tune

        tune.report(metrics)
        return
    if not ctx.is_chief:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "returnn_ray_epoch.json"), "w") as f:
            json.dump({"epoch": epoch, "global_step": step}, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
