"""One (sub)epoch on one rank: its batch plan and reader, its RNG, its evaluation.

The plan covers every rank (the same on each), and each rank reads its share through Ray Data
(:mod:`returnn_ray.data.ray_data`). A mid-epoch resume plans the rest of the epoch's order after
the seqs done (:class:`returnn_ray.training.checkpoints.MidEpochState`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable

import numpy as np
import torch

from returnn_ray.config import Settings
from returnn_ray.data import plan_epoch
from returnn_ray.data.batching import planned_items
from returnn_ray.data.base import Dataset
from returnn_ray.data.epochs import check_epoch
from returnn_ray.data.from_settings import batching_options
from returnn_ray.data.ray_data import Batch, StartedReader, rank_batches
from returnn_ray.model.build import ModelSpec
from returnn_ray.training.checkpoints import MidEpochState
from returnn_ray.training.scores import ScoreAccumulator
from returnn_ray.training.steps import dummy_batch
from returnn_ray.training.worker import WorkerContext


def order_digest(settings: Settings, train: Dataset, epoch: int) -> str:
    """Digest of what a mid-epoch cursor counts in: the epoch's seqs after the length filter or, with
    ``chunking``, its chunk rows (seq, start and end per key), so a changed ``chunking`` starts the
    epoch anew. Without chunking the items are the filtered seq order, as before."""
    items, _, _ = planned_items(train.seq_order_for_epoch(epoch), train.seq_lens, batching_options(settings, "train"))
    return hashlib.sha256(np.ascontiguousarray(items, dtype=np.int64).tobytes()).hexdigest()


def seed_epoch(seed: int, epoch: int, rank: int, skip_seqs: int = 0) -> None:
    """Each rank's torch RNG (dropout) from the seed, epoch and rank: a redone or resumed epoch
    draws what the first try drew."""
    torch.manual_seed((seed * 1_000_003 + epoch * 10_007 + rank * 101 + skip_seqs) % 2**63)


def rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(mid: MidEpochState, ctx: WorkerContext, seed: int, epoch: int) -> None:
    """Every rank's RNG as it was at the mid-epoch save if the world size is the same; else fresh
    per-rank seeds (a different world size draws differently anyway)."""
    if mid.world_size == ctx.world_size and len(mid.rng) == ctx.world_size:
        mine = mid.rng[ctx.rank]
        torch.set_rng_state(mine["cpu"].cpu())
        if "cuda" in mine and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"].cpu())
    else:
        seed_epoch(seed, epoch, ctx.rank, mid.seqs_done)


def gather(obj: Any) -> list:
    """``obj`` of every rank (rank order); ``[obj]`` without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


@dataclasses.dataclass
class EpochBatches:
    """One (sub)epoch's batch plan over all ranks and this rank's batches, as they are read."""

    epoch: int
    plan: Any
    skip: int
    """Seqs of the epoch's order done before (a mid-epoch resume); the plan covers the rest."""
    mine: list
    reader: Iterable[Batch]


def epoch_batches(
    settings: Settings, ctx: WorkerContext, train: Dataset, epoch: int, mid: MidEpochState | None, *, started: bool = False
) -> EpochBatches:
    """The epoch's plan and this rank's reader; ``started``: its first batch is read now, in a
    background thread, so that Ray Data starting up overlaps with what the caller does next."""
    order = train.seq_order_for_epoch(epoch)
    skip = mid.seqs_done if mid is not None else 0
    check_epoch(train, order, batching_options(settings, "train"), epoch)  # else a NaN score that reads as divergence
    plan = plan_epoch(order, train.seq_lens, batching_options(settings, "train"), ctx.world_size, skip_seqs=skip)
    mine = plan.for_rank(ctx.rank)
    reader = rank_batches(train, mine, list(train.specs), in_process=ctx.reads_in_process, concurrency=ctx.read_concurrency)
    return EpochBatches(epoch, plan, skip, mine, StartedReader(reader) if started else reader)


def loss_names(spec: ModelSpec, model, padding: Batch, epoch: int, step: int, acc: ScoreAccumulator) -> list[str]:
    """The loss names of this model (the same on every rank, even one that ran only padding steps)."""
    names = acc.names()
    if names:
        return names
    with torch.no_grad():
        return list(spec.step(model, padding, epoch=epoch, step=step))


def eval_epoch(
    settings: Settings, ctx: WorkerContext, spec: ModelSpec, model, dataset: Dataset, name: str, specs, epoch: int, step: int
) -> dict:
    """Score ``dataset`` with the current model, each rank on its shard; no collectives until the reduce."""
    model.eval()
    order = dataset.seq_order_for_epoch(epoch)
    check_epoch(dataset, order, batching_options(settings, name), epoch)
    plan = plan_epoch(order, dataset.seq_lens, batching_options(settings, name), ctx.world_size)
    acc = ScoreAccumulator()
    padding = dummy_batch(specs, ctx.device)
    with torch.no_grad():
        for batch in rank_batches(
            dataset, plan.for_rank(ctx.rank), list(dataset.specs), in_process=ctx.reads_in_process, concurrency=ctx.read_concurrency
        ):
            if batch.num_seqs:
                acc.add(spec.step(model, to_device(batch, ctx.device), epoch=epoch, step=step, train_flag=False))
        names = loss_names(spec, model, padding, epoch, step, acc)
    model.train()
    return acc.reduce(sorted(names))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device`` (on the CPU: as it is)."""
    if device.type == "cpu":
        return batch
    return Batch(
        seq_idx=batch.seq_idx,
        data={k: v.to(device, non_blocking=True) for k, v in batch.data.items()},
        lens={k: v.to(device, non_blocking=True) for k, v in batch.lens.items()},
        seq_tags=batch.seq_tags,
    )


