"""The training every Ray Train worker runs, as a recipe: one code path for 1 worker, N workers and N nodes.

:func:`train_loop_per_worker` reads top to bottom: start the worker, :meth:`TrainingRecipe.setup`
(datasets, model, optimizer, learning-rate control, and the resume point), then
:meth:`TrainingRecipe.train`, epoch by epoch, then :meth:`TrainingRecipe.cleanup`. The recipe
holds the run's state (model, optimizer, step, ...) on ``self``.

Per (sub)epoch: take the learning rate from the learning-rate control, plan the epoch's
batches over the global seq order and read this rank's share through Ray Data, train,
score ``dev`` and every ``eval_datasets`` entry on all ranks, then rank 0 writes the
checkpoint and the learning_rate_file (atomically) and every rank reports to Ray Train.

Resume needs no state beyond the files RETURNN users already have: the newest epoch with
both ``<model>.NNN.pt`` and ``.opt.pt`` and the learning_rate_file. The same holds when Ray
restarts the worker group after a failure (``ray_max_failures``). With ``save_interval_steps``
rank 0 also writes ``<model>.NNN.partial.pt`` every that many steps
(:class:`~returnn_ray.training.checkpoints.MidEpochState`); a restart continues the epoch from
there, on any number of workers: the rest of the order is planned again and dealt to the new
world size, so no seq is lost or used twice.
"""

# Imports inside functions: Ray loads only in a worker (start-up time).
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import torch

from returnn_ray.config import Settings
from returnn_ray.data.base import Dataset
from returnn_ray.data.from_settings import data_specs, eval_dataset_names, open_dataset
from returnn_ray.errors import DataError, UserError
from returnn_ray.model.build import Padded, model_spec
from returnn_ray.training import checkpoints
from returnn_ray.training.checkpoints import MidEpochState
from returnn_ray.training.dynamic_lr import StepLearningRate
from returnn_ray.training.epoch import (
    EpochBatches, epoch_batches, eval_epoch, gather, loss_names, order_digest, restore_rng, rng_states, seed_epoch, to_device,
)
from returnn_ray.training.grad_norm import double_backward_context, with_grad_norm_term
from returnn_ray.training.job import JOB_KEY, WorkerJob
from returnn_ray.training.log import WorkerLog, format_scores, hms
from returnn_ray.training.lr_control import make_lr_control
from returnn_ray.training.memory import log_memory_usage
from returnn_ray.training.optim import amp_context, apply_update, build_optimizer, make_grad_scaler, set_learning_rate, should_step
from returnn_ray.training.preload import load_weights
from returnn_ray.training.reduction import RankSync, Reduction
from returnn_ray.training.scores import ScoreAccumulator, objective, score_keys
from returnn_ray.training.steps import dummy_batch
from returnn_ray.training.tensorboard import TensorBoardLog, tensorboard_dir
from returnn_ray.training.worker import WorkerContext, log_up, report, start_worker


def train_loop_per_worker(config: Mapping[str, WorkerJob]) -> dict:
    """Ray Train's ``train_loop_per_worker``; the job is built by :mod:`returnn_ray.training.driver`."""
    job = config[JOB_KEY]
    settings, ctx, log = start_worker(job)
    try:
        log_up(job, settings, ctx)
        recipe = TrainingRecipe(settings, ctx, log, job)
        recipe.setup()
        result = recipe.train()
        recipe.cleanup()
        return result
    finally:
        log.close()


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a run goes on: after the newest complete epoch, maybe mid-way into the next one."""

    epoch: int | None = None
    """The newest epoch with ``.pt`` and ``.opt.pt``; None: a fresh start."""
    checkpoint: Mapping[str, Any] | None = None
    """Its ``.pt`` dict."""
    mid: MidEpochState | None = None
    """The next epoch's mid-epoch state, if one was made for its seq order."""

    @property
    def start_epoch(self) -> int:
        return (self.epoch or 0) + 1

    @property
    def step(self) -> int:
        if self.mid is not None:
            return self.mid.step
        return int(self.checkpoint.get("step", 0)) if self.checkpoint is not None else 0


class TrainingRecipe:
    """One rank's training run; :meth:`setup` first, then :meth:`train`, then :meth:`cleanup`."""

    def __init__(self, settings: Settings, ctx: WorkerContext, log: WorkerLog, job: WorkerJob):
        self.settings, self.ctx, self.log, self.job = settings, ctx, log, job
        self.num_epochs = settings.run.num_epochs
        self.start_epoch, self.step = 1, 0
        self.resume_point = ResumePoint()
        self.tb: TensorBoardLog | None = None
        self._clock = (0.0, 0.0)
        """(monotonic time the epoch started, of the last step), for the step lines."""

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Datasets, learning-rate control, resume point, model, optimizer, AMP scaler, DDP."""
        s = self.settings
        self.train_data = self._dataset("train")
        self.evals = {name: self._dataset(name) for name in eval_dataset_names(s)}
        self.specs = data_specs(s, self.train_data)
        self.spec = model_spec(s, self.specs)
        self.lr_control = make_lr_control(s.training.learning_rate_control, **s.training.lr_control_options())
        if s.training.learning_rate_file:
            self.lr_control.load(s.training.learning_rate_file)
        self.resume_point = self._find_resume_point()
        self.start_epoch, self.step = self.resume_point.start_epoch, self.resume_point.step
        # The first epoch's batches start coming (Ray Data's read tasks start) while the model is built.
        self.first_batches = (
            epoch_batches(s, self.ctx, self.train_data, self.start_epoch, self.resume_point.mid, started=True)
            if self.start_epoch <= self.num_epochs else None
        )
        self.model = self.spec.build(1, 0)
        self.model.to(self.ctx.device)
        self.optimizer = build_optimizer(
            self.model,
            optimizer=s.training.optimizer,
            adam=s.training.adam,
            nadam=s.training.nadam,
            learning_rate=s.training.learning_rate,
            optimizer_epsilon=s.training.optimizer_epsilon,
            # RETURNN's torch engine wants an explicit optimizer; network dicts follow its TF engine (SGD)
            default="sgd" if s.training.network is not None else "error",
        )
        self.grad_scaler = make_grad_scaler(s.training.torch_amp, self.ctx.device.type)
        self._restore(self.resume_point)
        self.train_model = self.model
        self.reduction = Reduction.from_setting(s.training.torch_distributed)
        self.sync = RankSync(self.reduction, rank=self.ctx.rank, world_size=self.ctx.world_size)
        if self.ctx.world_size > 1 and self.reduction.uses_ddp:
            # Only training steps (equal counts on all ranks) go through DDP; eval and the loss-name
            # probe use self.model, so a per-forward buffer broadcast cannot hang.
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                Padded(self.spec.ddp_module(self.model)), **self.reduction.ddp_kwargs()
            )
        self.tb = _tensorboard_log(s) if self.ctx.is_chief else None

    def _dataset(self, name: str) -> Dataset:
        """Dataset ``name``: a shared copy in Ray's object store if the job has one (the trials of a
        sweep over the same data share the one the sweep opened), else opened from the config."""
        shared = (self.job.train.shared_datasets or {}).get(name)
        if shared is None:
            return open_dataset(self.settings, name)
        import ray

        self.log.line(f"dataset {name}: the sweep's shared copy from Ray's object store", level=4)
        return ray.get(shared)

    # -- resume --------------------------------------------------------------------------------

    def _find_resume_point(self) -> ResumePoint:
        """The newest complete epoch and, for the next one, a mid-epoch state made for its seq order
        (rank 0 deletes older mid-epoch states)."""
        prefix = self.settings.run.model
        if not prefix:
            return ResumePoint()
        newest = checkpoints.newest_complete_epoch(prefix)
        checkpoint = checkpoints.load_checkpoint(prefix, newest) if newest is not None else None
        epoch = (newest or 0) + 1
        if self.ctx.is_chief:
            checkpoints.delete_partials(prefix, up_to_epoch=epoch - 1)
        mid = checkpoints.load_partial(prefix, epoch, map_location=self.ctx.device) if epoch <= self.num_epochs else None
        if mid is not None and mid.order_digest != order_digest(self.settings, self.train_data, epoch):
            self.log.line(
                f"WARNING: ignoring {checkpoints.partial_path(prefix, epoch)}: made for another seq order of epoch {epoch} "
                "(dataset or seq_ordering changed); the epoch starts from its beginning"
            )
            mid = None
        return ResumePoint(newest, checkpoint, mid)

    def _restore(self, point: ResumePoint) -> None:
        """Model, optimizer and AMP scaler as the resume point left them."""
        prefix, mid = self.settings.run.model, point.mid
        # import_model_train_epoch1 / preload_from_files on a fresh start; on resume the checkpoint, as RETURNN
        imported_step = load_weights(
            self.settings, self.model, point.checkpoint, training=True, log=self.log.line,
            checkpoint_path=checkpoints.checkpoint_path(prefix, point.epoch) if point.checkpoint is not None else None,
        )
        if imported_step is not None:
            self.step = imported_step
        if mid is not None:
            self.model.load_state_dict(mid.model)
            self.optimizer.load_state_dict(mid.optimizer)
            if self.grad_scaler is not None and mid.grad_scaler:
                self.grad_scaler.load_state_dict(mid.grad_scaler)
            self.log.line(
                f"Resuming epoch {point.start_epoch} mid-way ({checkpoints.partial_path(prefix, point.start_epoch)}): "
                f"{mid.seqs_done} of {mid.num_seqs} seqs done, global train step {self.step}"
            )
        elif point.epoch is not None:
            opt_state = checkpoints.load_optimizer_state(prefix, point.epoch, map_location=self.ctx.device)
            self.optimizer.load_state_dict(opt_state["optimizer"])
            self.log.line(
                f"Resuming from epoch {point.epoch} ({checkpoints.checkpoint_path(prefix, point.epoch)}), global train step {self.step}"
            )

    # -- train ---------------------------------------------------------------------------------

    def train(self) -> dict:
        """Every epoch from the resume point to ``num_epochs``."""
        if self.start_epoch > self.num_epochs:
            self._report_finished()
        for epoch in range(self.start_epoch, self.num_epochs + 1):
            self.run_epoch(epoch)
        return {"epoch": self.num_epochs, "step": self.step}

    def _report_finished(self) -> None:
        """Nothing left to train; the run's result is the last epoch's (e.g. for a resumed sweep)."""
        self.log.line(f"Already trained until final epoch {self.num_epochs}, nothing to do.")
        newest = self.resume_point.epoch
        if newest in self.lr_control.epochs:
            last = self.lr_control.epochs[newest]
            scores = {k: v for k, v in last.error.items() if not k.startswith(":meta:")}
            report(self.ctx, newest, self.step, scores, last.learning_rate, self.job.train.trial)

    def run_epoch(self, epoch: int) -> None:
        """Train one epoch, evaluate, save (rank 0), report (every rank)."""
        log = self.log
        lr = self.lr_control.learning_rate_for_epoch(epoch)
        set_learning_rate(self.optimizer, lr)
        log.line(f"start epoch {epoch} global train step {self.step} with effective learning rate {lr} ...")
        start = time.monotonic()
        first = epoch == self.start_epoch
        batches = self.first_batches if first else epoch_batches(self.settings, self.ctx, self.train_data, epoch, None)
        log_memory_usage(self.settings.run.torch_log_memory_usage, self.ctx.device, log.line, epoch_start=True)
        train_scores = self.train_epoch(batches, mid=self.resume_point.mid if first else None, first_of_run=first, lr=lr)
        train_secs = time.monotonic() - start
        log_memory_usage(self.settings.run.torch_log_memory_usage, self.ctx.device, log.line, epoch_start=False)
        scores = score_keys("train", train_scores)
        _check_finite(scores, epoch)
        log.line(f"Epoch {epoch}: Total train loss: {format_scores(train_scores)}  ({hms(train_secs)})")
        log.line(f"epoch {epoch} train time {train_secs:.3f} s", level=4)
        scores.update(self.evaluate(epoch))
        self.lr_control.set_epoch_error(epoch, scores)
        self.lr_control.set_epoch_meta(epoch, {"epoch_train_time_secs": round(train_secs), "global_train_step_end": self.step})
        if self.ctx.is_chief:
            self.save_epoch(epoch, lr)
        log.event("epoch_end", epoch=epoch, step=self.step, scores=scores, learning_rate=lr, epoch_time=round(train_secs, 3))
        report(self.ctx, epoch, self.step, scores, lr, self.job.train.trial)

    def train_epoch(
        self, batches: EpochBatches, *, mid: MidEpochState | None = None, first_of_run: bool = False, lr: float = 1.0
    ) -> dict:
        """Train on this rank's batches of one epoch; returns the epoch's train scores (all ranks)."""
        s, ctx, model, optimizer = self.settings, self.ctx, self.train_model, self.optimizer
        model.train()
        epoch, num_steps = batches.epoch, len(batches.mine)
        acc = self._start_epoch(epoch, mid)
        save_every = s.training.save_interval_steps if s.run.model else 0
        digest = order_digest(s, self.train_data, epoch) if save_every else ""
        accum = s.training.accum_grad_multiple_step or 1
        padding = dummy_batch(self.specs, ctx.device)
        self._clock = (time.monotonic(),) * 2  # (epoch start, last step)
        optimizer.zero_grad(set_to_none=True)
        updates = 0  # optimizer updates so far in this epoch (RETURNN's epoch_update_step_idx)
        step_lr = StepLearningRate.for_epoch(
            s.training.dynamic_learning_rate, learning_rate=lr, epoch=epoch, plan=batches.plan, skip_seqs=batches.skip
        )
        for i, batch in enumerate(batches.reader):
            if step_lr is not None:  # RETURNN's dynamic_learning_rate: the lr of this step
                set_learning_rate(optimizer, step_lr(i, global_train_step=self.step))
            is_padding = batch.num_seqs == 0
            losses = self._backward(None if is_padding else to_device(batch, ctx.device), epoch)
            # RETURNN: gradients of accum_grad_multiple_step steps are summed, then one update;
            # an accumulation still open at the end of the epoch is dropped.
            if should_step(i, accum):
                if any(p.grad is not None for p in self.model.parameters()):  # reduce_type param: padding only
                    apply_update(
                        optimizer, model, grad_scaler=self.grad_scaler,
                        gradient_clip=s.training.gradient_clip, gradient_clip_global_norm=s.training.gradient_clip_global_norm,
                    )
                optimizer.zero_grad(set_to_none=True)
                self.sync.after_update(self.model, optimizer, updates)
                updates += 1
            if i == 0 and first_of_run and self.job.process_start is not None:
                self.log.first_step(time.time() - self.job.process_start, epoch=epoch, step=self.step)
            if not is_padding:  # a padding step's frames stay out of the scores
                acc.add(losses)
            self.step += 1
            if save_every and (i + 1) % save_every == 0 and i + 1 < num_steps and should_step(i, accum):
                # after an update, so no gradient accumulation is open; every rank gets here at the same step
                totals = acc.totals(sorted(loss_names(self.spec, self.model, padding, epoch, self.step, acc)))
                self.save_mid_epoch(totals, epoch=epoch, seqs_done=batches.skip + batches.plan.seqs_in_steps(i + 1),
                                    num_seqs=batches.skip + batches.plan.num_seqs, digest=digest)
            self._log_step(epoch, i, num_steps, losses, acc, is_padding)
        names = sorted(loss_names(self.spec, self.model, padding, epoch, self.step, acc))
        self.step = self.sync.after_epoch(self.model, optimizer, self.step)  # what is scored and saved: one model
        totals = acc.totals(names)
        return _epoch_scores(totals, epoch, batches.skip + batches.plan.num_seqs, self.log)

    def _backward(self, batch: Any, epoch: int) -> Mapping[str, Any]:
        """One step's forward and backward on a real batch (``None``: a padding step); its losses.

        The L2 term is scaled as the data term is, so N workers equal one worker accumulating
        N batches (``sum``) or their mean (``grad``) with L2 included."""
        model, scale = self.train_model, self.reduction.loss_scale(self.ctx.world_size)
        max_gn, device_type = self.settings.training.maximize_grad_norm, self.ctx.device.type
        losses: Mapping[str, Any] = {}
        with amp_context(self.settings.training.torch_amp, device_type), double_backward_context(max_gn, device_type):
            if batch is None:
                loss = model(padding=True) if model is not self.model else None
            else:
                losses = self.spec.step(model, batch, epoch=epoch, step=self.step)
                l2 = self.spec.l2(model)
                loss = objective(losses, scale=scale) + (scale * l2 if l2 is not None else 0.0)
        if loss is not None:
            loss = self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss
            if max_gn:  # RETURNN's TF updater: + d(-max_gn * global grad norm)/dθ, per step, before accumulation/clipping
                # the norm of the gradient DDP makes (its mean over the ranks); without DDP (param) the rank's own
                world = self.ctx.world_size if model is not self.model else 1
                loss = with_grad_norm_term(loss, self.model.parameters(), max_gn, world_size=world)
            loss.backward()
        return losses

    def _start_epoch(self, epoch: int, mid: MidEpochState | None) -> ScoreAccumulator:
        """Seed this rank's RNG for the epoch (or restore it, resuming mid-way); the scores so far."""
        acc = ScoreAccumulator()
        seed = self.job.seed
        if mid is None:
            seed_epoch(seed, epoch, self.ctx.rank)
        else:
            restore_rng(mid, self.ctx, seed, epoch)
            if self.ctx.is_chief:
                acc.restore(mid.scores, self.ctx.device)
        return acc

    def _log_step(self, epoch: int, i: int, num_steps: int, losses: Mapping[str, Any], acc: ScoreAccumulator, is_padding: bool) -> None:
        """TensorBoard every ``log_every_n_train_steps``; step lines and progress on rank 0."""
        log, (start, last) = self.log, self._clock
        now = time.monotonic()
        if self.tb is not None and self.step % self.tb.every_n_train_steps == 0 and not is_padding:
            self.tb.train_step(self.step, _step_scores(losses), self.optimizer.param_groups[0]["lr"])
        if log.enabled:
            frac = (i + 1) / num_steps
            if log.verbosity >= 5:
                log.step_line(epoch=epoch, step=i, scores=_step_scores(losses), step_secs=now - last, elapsed=now - start, frac=frac)
            if log.progress_due(i, num_steps):
                # this rank's running epoch mean of the first loss: no collective, no per-step sync
                shown = acc.local_mean(acc.names()[0]) if acc.names() else None
                log.progress(epoch=epoch, step=i, num_steps=num_steps, loss=shown, elapsed=now - start)
        self._clock = (start, now)

    # -- evaluate ------------------------------------------------------------------------------

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Score ``dev`` and every ``eval_datasets`` entry (all ranks); the scores, keyed by dataset."""
        scores: dict[str, float] = {}
        text = []
        for name, dataset in self.evals.items():
            ds_scores = eval_epoch(self.settings, self.ctx, self.spec, self.model, dataset, name, self.specs, epoch, self.step)
            scores.update(score_keys(name, ds_scores))
            text.append(f"{name}: {format_scores(ds_scores)}")
            if self.tb is not None:
                self.tb.evaluated(name, ds_scores, self.step)
        if text:
            self.log.line(f"Epoch {epoch} evaluation: {' '.join(text)}")
        return scores

    # -- save ----------------------------------------------------------------------------------

    def save_epoch(self, epoch: int, lr: float) -> None:
        """Rank 0 only: checkpoint (if due), learning_rate_file, old-model cleanup; all atomic."""
        s, prefix = self.settings, self.settings.run.model
        if s.training.learning_rate_file:
            self.lr_control.save(s.training.learning_rate_file)
        if not prefix:
            return
        if checkpoints.should_save(epoch, s.training.save_interval, self.num_epochs):
            checkpoints.save_checkpoint(
                prefix, epoch, model_state=self.model.state_dict(), optimizer_state=self.optimizer.state_dict(),
                step=self.step, effective_learning_rate=lr,
            )
        checkpoints.delete_partials(prefix, up_to_epoch=epoch)  # the epoch is done: its mid-epoch state is stale
        cleanup = s.training.cleanup_old_models
        if cleanup:
            existing = checkpoints.find_checkpoints(prefix, for_training=False)
            scores = {e: dict(self.lr_control.epochs[e].error) for e in existing if e in self.lr_control.epochs}
            for old in checkpoints.models_to_delete(existing, cleanup_old_models=cleanup, scores=scores):
                checkpoints.delete_checkpoint(prefix, old)

    def save_mid_epoch(self, totals: Mapping[str, Any], *, epoch: int, seqs_done: int, num_seqs: int, digest: str) -> None:
        """All ranks: gather the RNG states; rank 0 writes ``<model>.NNN.partial.pt``."""
        rng = gather({k: v.cpu() for k, v in rng_states().items()})
        if not self.ctx.is_chief:
            return
        state = MidEpochState(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            grad_scaler=self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            step=self.step,
            seqs_done=seqs_done,
            num_seqs=num_seqs,
            order_digest=digest,
            scores=totals,
            world_size=self.ctx.world_size,
            rng=rng,
        )
        path = checkpoints.save_partial(self.settings.run.model, epoch, state)
        self.log.line(
            f"epoch {epoch} global train step {self.step}: mid-epoch checkpoint, {seqs_done} of {num_seqs} seqs done ({path})", level=4
        )

    def cleanup(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard_log(settings: Settings) -> TensorBoardLog | None:
    if not settings.training.use_tensorboard:
        return None
    opts = settings.training.tensorboard_opts or {}
    return TensorBoardLog(
        tensorboard_dir(settings.run.model, opts), every_n_train_steps=opts.get("log_every_n_train_steps", 100)
    )


def _step_scores(losses: Mapping[str, Any]) -> dict[str, float]:
    return {n: float(v.sum.detach()) / max(float(v.num_frames), 1.0) for n, v in losses.items()}


def _epoch_scores(totals: Mapping[str, tuple[float, float]], epoch: int, num_seqs: int, log: WorkerLog) -> dict[str, float]:
    """The epoch's mean per loss; a loss that got no frames is the data's fault, said in one line."""
    frames = {name: round(f) for name, (_, f) in totals.items()}
    log.line(f"epoch {epoch}: {num_seqs} seqs, frames per loss {frames}", level=4)
    empty = sorted(n for n, (_, f) in totals.items() if not f)  # a 0/0 score: NaN, which reads as divergence
    if empty:
        raise DataError(f"dataset 'train': epoch {epoch}: loss{'es' * (len(empty) > 1)} {', '.join(map(repr, empty))} got "
                        f"no frames from the epoch's {num_seqs} seqs (its targets all have length 0); fix the data or the loss's target")
    return {n: s / f for n, (s, f) in totals.items()}


def _check_finite(scores: Mapping[str, float], epoch: int) -> None:
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        raise UserError(
            f"epoch {epoch}: non-finite training score {bad} (model diverged; lower learning_rate or set gradient_clip)"
        )
