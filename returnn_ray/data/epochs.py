"""Epochs with nothing to train on, found before anything runs, with the reason in one line.

A (sub-)epoch without seqs, or whose seqs have no frames, has no loss: its score is NaN, which
reads as a diverged model, at the same epoch on every rerun. Whether an epoch is empty depends
only on the corpus, the seq order, ``partition_epoch`` and the length filter, all known before
any data is read, so the driver checks the epochs it will run (:func:`check_epochs`) and the
training worker checks each epoch it plans (:func:`check_epoch`). What counts as empty is what
RETURNN cannot train either (it asserts ``num_seqs > 0`` and has no data for such an epoch):

- ``partition_epoch P`` over fewer than ``P`` seqs: sub-epochs ``N+1 .. P`` of every full epoch;
- ``default_every_n:n`` with fewer than ``n`` seqs (it uses ``N // n * n`` of them);
- ``max_seq_length`` / ``min_seq_length`` that drop every seq of the epoch;
- seqs that all have 0 frames of the input (``data``, the dataset's first key);
- ``seq_list_filter_file`` listing none of the epoch's seqs;
- ``chunking`` whose ``min_chunk_size`` (or, for a network dict, length limits) leaves no chunk.
"""

from __future__ import annotations

import numpy as np

from returnn_ray.data.base import Dataset
from returnn_ray.data.batching import BatchingOptions, _limits_per_key, filter_by_length, planned_items
from returnn_ray.errors import DataError

__all__ = ["check_epoch", "check_epochs", "empty_epoch_reason"]

_RANDOM_MODES = ("random", "random_sample", "sort_bin_shuffle", "sort_bin_shuffle_x2", "laplace")
_CHECK_SEQS = 2_000_000
""":func:`check_epochs` looks at further full epochs of a random order while it has looked at
fewer seqs than this (a small corpus: every epoch; a large one: the first full epoch)."""


def _where(dataset: Dataset, epoch: int) -> str:
    parts = dataset.order.partition_epoch
    sub = f" (sub-epoch {(epoch - 1) % parts + 1} of partition_epoch {parts})" if parts > 1 else ""
    return f"dataset {dataset.name!r}: epoch {epoch}{sub}"


def _ordered_seqs(dataset: Dataset) -> int:
    """Seqs a full epoch's order holds: all, but ``N // n * n`` for ``default_every_n:n``."""
    mode = dataset.order.seq_ordering
    if mode.startswith("default_every_n:"):
        n = int(mode.split(":")[1])
        return dataset.num_seqs // n * n
    return dataset.num_seqs


def _why_no_seqs(dataset: Dataset) -> str:
    """Why an epoch's order (before the length filter) is empty."""
    mode, parts, num_seqs = dataset.order.seq_ordering, dataset.order.partition_epoch, dataset.num_seqs
    ordered = _ordered_seqs(dataset)
    if ordered == 0:
        n = mode.split(":")[1]
        return f"seq_ordering {mode!r} uses {num_seqs} // {n} * {n} = 0 of its {num_seqs} seqs; use n <= {num_seqs}"
    if parts > ordered:
        return (
            f"partition_epoch {parts} > {ordered} seqs: each full epoch is cut into {parts} slices and only "
            f"{ordered} of them get a seq; set partition_epoch to at most {ordered}, or use more data"
        )
    filter_file = getattr(dataset, "seq_list_filter_file", None)
    if filter_file:
        return f"seq_list_filter_file {filter_file!r} lists none of its seqs; list more seqs or lower partition_epoch"
    return "its seq order is empty"


def _why_filtered(dataset: Dataset, order: np.ndarray, options: BatchingOptions) -> str:
    """Which length limits drop all seqs of ``order``."""
    keys = list(dataset.seq_lens)
    dropping = []
    for name, limit, longer in (
        ("max_seq_length", options.max_seq_length, True),
        ("min_seq_length", options.min_seq_length, False),
    ):
        if limit is None:
            continue
        for key, value in _limits_per_key(name, limit, keys).items():
            lens = np.asarray(dataset.seq_lens[key])[order]
            drops = lens > value if longer else lens < value
            if drops.all():
                extreme = f"the shortest has {lens.min()}" if longer else f"the longest has {lens.max()}"
                what = f"{name} {value}" if not isinstance(limit, dict) else f"{name}[{key!r}] {value}"
                return f"{what} drops all {len(order)} seqs ({extreme} frames of {key!r}); change {name}"
            if drops.any():
                dropping.append(name if not isinstance(limit, dict) else f"{name}[{key!r}]")
    return f"{' and '.join(dict.fromkeys(dropping))} together drop all {len(order)} seqs; change them"


def empty_epoch_reason(dataset: Dataset, order: np.ndarray, options: BatchingOptions, epoch: int) -> str | None:
    """One line saying why (sub-)epoch ``epoch`` of ``dataset``, whose order is ``order``, has nothing
    to train on; None if it has seqs with frames."""
    if not len(order):
        return f"{_where(dataset, epoch)} has no seqs: {_why_no_seqs(dataset)}"
    kept = filter_by_length(order, dataset.seq_lens, options)
    if not len(kept):
        return f"{_where(dataset, epoch)} has no seqs: {_why_filtered(dataset, np.asarray(order), options)}"
    key = dataset.data_keys[0]
    if not np.asarray(dataset.seq_lens[key])[kept].any():
        return (
            f"{_where(dataset, epoch)} has no frames: all {len(kept)} of its seqs have length 0 for {key!r}; "
            f"fix the data"
        )
    if options.chunking is not None and not len(planned_items(kept, dataset.seq_lens, options)[0]):
        return (
            f"{_where(dataset, epoch)} has no chunks: {options.chunking} (min_chunk_size "
            f"{options.chunking.min_chunk_size}) with max_seq_length / min_seq_length leaves none of its "
            f"{len(kept)} seqs; change them"
        )
    return None


def check_epoch(dataset: Dataset, order: np.ndarray, options: BatchingOptions, epoch: int) -> None:
    """Raise :class:`DataError` if the epoch has nothing to train on (:func:`empty_epoch_reason`)."""
    reason = empty_epoch_reason(dataset, order, options, epoch)
    if reason:
        raise DataError(reason)


def check_epochs(dataset: Dataset, options: BatchingOptions, num_epochs: int) -> None:
    """Raise :class:`DataError` for the first of epochs ``1 .. num_epochs`` with nothing to train on.

    The sub-epochs of a full epoch are slices of one order, computed once per full epoch. An order
    that is the same every full epoch (not random, or ``fixed_random_seed``) is checked once; a
    random one for as many full epochs as fit in :data:`_CHECK_SEQS` seqs (its later full epochs
    are checked by the worker as it plans them).
    """
    parts = dataset.order.partition_epoch
    same_each_epoch = (
        dataset.order.seq_ordering.split(":")[0] not in _RANDOM_MODES or dataset.order.fixed_random_seed is not None
    )
    looked = 0
    for full_epoch in range(1, (num_epochs - 1) // parts + 2 if num_epochs > 0 else 1):
        if full_epoch > 1 and (same_each_epoch or looked >= _CHECK_SEQS):
            return
        first = (full_epoch - 1) * parts + 1
        for epoch, order in enumerate(dataset.sub_epoch_orders(full_epoch), start=first):
            if epoch > num_epochs:
                return
            check_epoch(dataset, order, options, epoch)
        looked += max(dataset.num_seqs, 1)
