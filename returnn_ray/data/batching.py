"""Batches of an epoch, planned from seq lengths alone, and dealt to the DDP ranks.

:func:`plan_batches` is RETURNN's torch-engine batching (``LenFilterDataPipe`` then
``BatchingIterDataPipe``) on corpus indices: with one rank our batches equal RETURNN's,
seq for seq (``tests/data/test_batching.py`` compares both). :func:`deal_to_ranks` turns
the global batch list into a :class:`BatchPlan` in which every rank runs the same number of
steps; :func:`plan_epoch` does both.

Everything here is plain numpy and Python: a plan is a pure function of the seq order, the
lengths and the options, so every rank (and the driver) computes the same plan on its own.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Mapping, Sequence, Union

import numpy as np

from returnn_ray.data.chunking import Chunking, chunk_rows, row_lens
from returnn_ray.errors import ConfigError

__all__ = [
    "BatchingOptions",
    "BatchPlan",
    "batch_lens",
    "deal_to_ranks",
    "filter_by_length",
    "per_worker_batch_size",
    "plan_batches",
    "plan_epoch",
]

LengthLimit = Union[int, float, Mapping[str, Union[int, float]]]
"""A length limit: one number for every data key, or ``data key -> number`` for some keys."""


def _check_limit(key: str, value: object, *, allow_zero: bool = False) -> object:
    """Validate a number or a ``data key -> number`` dict; return a read-only copy."""

    def check_number(v: object, where: str) -> None:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or (v < 0 or (v == 0 and not allow_zero)):
            raise ConfigError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")

    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{key} must not be an empty dict")
        for data_key, v in value.items():
            check_number(v, f"{key}[{data_key!r}]")
        return dict(value)
    check_number(value, key)
    return value


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """How seqs are grouped into batches (RETURNN's ``batch_size``, ``max_seqs``, ...)."""

    batch_size: LengthLimit
    """Max padded frames per batch (longest seq × number of seqs), checked for every data
    key (a dict limits only the keys it names). A seq longer than this forms its own batch."""
    max_seqs: int = -1
    """Max seqs per batch; -1 = unlimited."""
    max_seq_length: LengthLimit | None = None
    """Drop seqs longer than this for any data key (a dict checks only the keys it names).
    None or 0 = no limit (RETURNN reads ``max_seq_length = 0`` as unset)."""
    min_seq_length: LengthLimit | None = None
    """Drop seqs shorter than this for any data key (a dict checks only the keys it names)."""
    chunking: Chunking | None = None
    """Cut the seqs into chunks (RETURNN's ``chunking``, :mod:`returnn_ray.data.chunking`); the
    plan's batches are then chunk rows, and the limits above count chunk lengths (its ``"tf"``
    rule) or, for the length filter, whole seqs (its ``"torch"`` rule)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", _check_limit("batch_size", self.batch_size))
        if isinstance(self.max_seqs, bool) or not isinstance(self.max_seqs, numbers.Integral):
            raise ConfigError(f"max_seqs must be an int (-1 = unlimited), got {self.max_seqs!r}")
        if self.max_seqs != -1 and self.max_seqs <= 0:
            raise ConfigError(f"max_seqs must be -1 (unlimited) or > 0, got {self.max_seqs!r}")
        for key in ("max_seq_length", "min_seq_length"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _check_limit(key, value, allow_zero=True))
        if not self.max_seq_length:  # RETURNN: `typed_value("max_seq_length") or int(...)`: 0 means unset
            object.__setattr__(self, "max_seq_length", None)


def _limits_per_key(name: str, limit: LengthLimit, keys: Sequence[str]) -> dict[str, float]:
    """``data key -> limit`` for the keys the limit applies to (RETURNN's ``NumbersDict``:
    a number applies to every key, a dict only to the keys it names)."""
    if isinstance(limit, Mapping):
        unknown = sorted(set(limit) - set(keys))
        if unknown:
            raise ConfigError(f"{name} names unknown data keys {unknown}; data keys: {list(keys)}")
        return dict(limit)
    return {key: limit for key in keys}


def _as_order(order: np.ndarray) -> np.ndarray:
    order = np.array(order, dtype=np.int64)  # a private copy: batches are views into it
    if order.ndim != 1:
        raise ValueError(f"order must be 1-D, got shape {order.shape}")
    return order


def filter_by_length(order: np.ndarray, seq_lens: Mapping[str, np.ndarray], options: BatchingOptions) -> np.ndarray:
    """The seqs of ``order`` within ``min_seq_length`` .. ``max_seq_length`` (inclusive), in order.

    With RETURNN's ``"tf"`` chunking rule the limits apply to the chunks, not here: every seq is kept.

    >>> opts = BatchingOptions(batch_size=100, max_seq_length=5, min_seq_length=2)
    >>> filter_by_length(np.array([0, 1, 2, 3]), {"data": np.array([1, 2, 5, 6])}, opts)
    array([1, 2])
    """
    order = _as_order(order)
    if options.chunking is not None and options.chunking.rule == "tf":
        return order
    keep = np.ones(len(order), dtype=bool)
    keys = list(seq_lens)
    if options.max_seq_length is not None:
        for key, limit in _limits_per_key("max_seq_length", options.max_seq_length, keys).items():
            keep &= np.asarray(seq_lens[key])[order] <= limit
    if options.min_seq_length is not None:
        for key, limit in _limits_per_key("min_seq_length", options.min_seq_length, keys).items():
            keep &= np.asarray(seq_lens[key])[order] >= limit
    return order if keep.all() else order[keep]


def _batch_starts(lens: list[list[int]], limits: list[float], max_seqs: int) -> list[int]:
    """Positions where a new batch starts (after the first), by RETURNN's rule.

    ``lens[k][i]`` is the length of the i-th seq of the order for key k, ``limits[k]`` the
    batch size for key k. This is the hot loop, over plain Python numbers.
    """
    starts: list[int] = []
    # The loops below are one rule, specialised by number of keys for speed (checked
    # against each other and against RETURNN in the tests).
    if len(lens) == 1:  # 1M seqs in ~0.2 s
        (lens0,), (limit0,) = lens, limits
        n = cur0 = 0
        for i, len0 in enumerate(lens0):
            if n:
                new0 = cur0 if cur0 > len0 else len0
                if n >= max_seqs or new0 * (n + 1) > limit0:
                    starts.append(i)
                    n, new0 = 0, len0
                cur0 = new0
            else:
                cur0 = len0
            n += 1
        return starts
    if len(lens) == 2:
        (lens0, lens1), (limit0, limit1) = lens, limits
        n = cur0 = cur1 = 0
        for i, (len0, len1) in enumerate(zip(lens0, lens1)):
            if n:
                new0 = cur0 if cur0 > len0 else len0
                new1 = cur1 if cur1 > len1 else len1
                if n >= max_seqs or new0 * (n + 1) > limit0 or new1 * (n + 1) > limit1:
                    starts.append(i)
                    n, new0, new1 = 0, len0, len1
                cur0, cur1 = new0, new1
            else:
                cur0, cur1 = len0, len1
            n += 1
        return starts
    cur: list = []
    n = 0
    for i, seq in enumerate(zip(*lens)):
        if n:
            new = [c if c > x else x for c, x in zip(cur, seq)]
            if n >= max_seqs or any(m * (n + 1) > lim for m, lim in zip(new, limits)):
                starts.append(i)
                n, new = 0, list(seq)
            cur = new
        else:
            cur = list(seq)
        n += 1
    return starts


def plan_batches(
    order: np.ndarray, seq_lens: Mapping[str, np.ndarray], options: BatchingOptions
) -> list[np.ndarray]:
    """Group the seqs of ``order`` into batches, as RETURNN's torch engine does.

    Seqs outside ``min_seq_length`` .. ``max_seq_length`` are dropped first. Then walk the
    order: if the batch has ``max_seqs`` seqs, close it; if it is non-empty and
    ``max(longest, len) * (n + 1) > batch_size`` for any data key, close it; add the seq.

    :param order: corpus indices of the epoch, in order
    :param seq_lens: data key -> length of every corpus seq (indexed by corpus index)
    :param options: the batch size limits
    :return: one int64 array of corpus indices per batch (read-only), in order

    >>> lens = {"data": np.array([4, 4, 9, 20, 3, 3])}
    >>> plan_batches(np.arange(6), lens, BatchingOptions(batch_size=10))
    [array([0, 1]), array([2]), array([3]), array([4, 5])]
    """
    items, item_lens, _ = planned_items(order, seq_lens, options)
    return _split(items, _plan_starts(item_lens, options))


def planned_items(
    order: np.ndarray, seq_lens: Mapping[str, np.ndarray], options: BatchingOptions
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """What the batches are made of: the length-filtered seqs of ``order`` (corpus indices), or
    with ``chunking`` their chunk rows (:func:`~returnn_ray.data.chunking.chunk_rows`); the lengths
    of each item per data key; and how many seqs (or, ``"tf"`` rule, chunks) the filter dropped."""
    filtered = filter_by_length(order, seq_lens, options)
    dropped = len(order) - len(filtered)
    if options.chunking is None:
        return filtered, {k: np.asarray(v)[filtered] for k, v in seq_lens.items()}, dropped
    rows = chunk_rows(filtered, seq_lens, options.chunking)
    keys = list(seq_lens)
    lens = {k: row_lens(rows, keys, k) for k in keys}
    if options.chunking.rule == "tf":  # the length filter applies to the chunks
        keep = filter_by_length(np.arange(len(rows)), lens, dataclasses.replace(options, chunking=None))
        dropped += len(rows) - len(keep)
        rows, lens = rows[keep], {k: v[keep] for k, v in lens.items()}
    return rows, lens, dropped


def _plan_starts(item_lens: Mapping[str, np.ndarray], options: BatchingOptions) -> list[int]:
    if not item_lens:
        raise ValueError("seq_lens needs at least one data key")
    num_items = len(next(iter(item_lens.values())))
    if num_items == 0:
        return []
    keys = list(item_lens)
    limits = _limits_per_key("batch_size", options.batch_size, keys)
    lens = [np.asarray(item_lens[key]).tolist() for key in limits]
    max_seqs = num_items + 1 if options.max_seqs == -1 else options.max_seqs
    return _batch_starts(lens, list(limits.values()), max_seqs)


def _split(order: np.ndarray, starts: list[int]) -> list[np.ndarray]:
    if len(order) == 0:
        return []
    order.flags.writeable = False  # batches are views of it; plans are shared values
    bounds = [0, *starts, len(order)]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The batches of one (sub)epoch for ``num_ranks`` DDP ranks.

    Step ``s`` runs ``batches[s*W : (s+1)*W]``, batch ``s*W + k`` on rank ``k``.
    """

    batches: tuple[np.ndarray, ...]
    """All batches in global order, each int64 corpus indices ``[n]`` or, with chunking, chunk rows
    ``[n, 1 + 2 * num_keys]``; ``len`` is a multiple of ``num_ranks``. With chunking, every "seq"
    below (``num_seqs``, ``seqs_in_steps``, ``plan_epoch``'s ``skip_seqs``) is a chunk."""
    num_ranks: int
    """Number of DDP ranks (W)."""
    num_dropped: int = 0
    """Seqs of the order (chunks, with RETURNN's ``"tf"`` chunking rule) dropped by
    ``min_seq_length`` / ``max_seq_length``."""

    def __post_init__(self) -> None:
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks must be >= 1, got {self.num_ranks}")
        if len(self.batches) % self.num_ranks:
            raise ValueError(f"{len(self.batches)} batches do not fill steps of {self.num_ranks} ranks")

    @property
    def num_steps(self) -> int:
        """Steps every rank runs this epoch."""
        return len(self.batches) // self.num_ranks

    @property
    def num_batches(self) -> int:
        """Batches over all ranks (empty ones included)."""
        return len(self.batches)

    @property
    def num_seqs(self) -> int:
        """Seqs over all ranks."""
        return sum(len(batch) for batch in self.batches)

    def for_rank(self, rank: int) -> list[np.ndarray]:
        """The batches rank ``rank`` runs, one per step."""
        if not 0 <= rank < self.num_ranks:
            raise ValueError(f"rank {rank} out of range for {self.num_ranks} ranks")
        return list(self.batches[rank :: self.num_ranks])

    def seqs_in_steps(self, num_steps: int) -> int:
        """Seqs used by the first ``num_steps`` steps over all ranks."""
        return sum(len(batch) for batch in self.batches[: num_steps * self.num_ranks])

    def step(self, step: int) -> tuple[np.ndarray, ...]:
        """The ``num_ranks`` batches of step ``step``, rank 0 first."""
        return self.batches[step * self.num_ranks : (step + 1) * self.num_ranks]

    def padded_frames(self, seq_lens: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """data key -> padded frames (longest seq × number of seqs) of every batch; 0 if empty."""
        return {key: _padded_frames(self.batches, seq_lens, key) for key in seq_lens}


def batch_lens(seq_lens: Mapping[str, np.ndarray], batch: np.ndarray, key: str) -> np.ndarray:
    """The lengths of ``key`` in one planned batch: of its seqs, or of its chunk rows (cut over
    the keys of ``seq_lens``, in that order)."""
    batch = np.asarray(batch)
    if batch.ndim == 2:
        return row_lens(batch, list(seq_lens), key)
    return np.asarray(seq_lens[key])[batch]


def _padded_frames(batches: Sequence[np.ndarray], seq_lens: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    lens = np.asarray(seq_lens[key])
    sizes = np.array([len(b) for b in batches], dtype=np.int64)
    out = np.zeros(len(batches), dtype=lens.dtype if lens.dtype.kind == "f" else np.int64)
    nonempty = sizes > 0
    if nonempty.any():
        flat = np.concatenate([batch_lens(seq_lens, b, key) for b in batches if len(b)])
        offsets = np.cumsum(sizes[nonempty]) - sizes[nonempty]
        out[nonempty] = np.maximum.reduceat(flat, offsets) * sizes[nonempty]
    return out


def _pieces_per_batch(weights: list[float], sizes: list[int], num_pieces: int) -> list[int]:
    """How many pieces to cut each batch into: at least one each, then one at a time to the
    batch with the largest weight per piece (D'Hondt), never more pieces than seqs."""
    counts = [1] * len(weights)
    for _ in range(num_pieces - len(weights)):
        open_ = [j for j in range(len(weights)) if counts[j] < sizes[j]]
        if not open_:
            break  # fewer seqs than pieces: the rest are empty
        best = max(open_, key=lambda j: (weights[j] / counts[j], -j))
        counts[best] += 1
    return counts


def deal_to_ranks(
    batches: Sequence[np.ndarray], num_ranks: int, seq_lens: Mapping[str, np.ndarray] | None = None
) -> BatchPlan:
    """Deal the global batches to ``num_ranks`` ranks so that all run the same number of steps.

    Step ``s`` is batches ``s*W .. s*W+W-1``; batch ``s*W+k`` goes to rank ``k``. If the batch
    count is not a multiple of W, the ``r`` batches of the last, partial step are cut into W
    contiguous pieces (each batch into at least one; more pieces to the batches with more
    seqs, or more padded frames if ``seq_lens`` is given). Each piece is a subset of one
    planned batch, so it keeps within ``batch_size``, and the pieces stay in global order.
    With fewer seqs than ranks, the last ranks get an empty batch for that step.

    The plan guarantees: every seq is used exactly once over all ranks; each rank's
    batches, concatenated, are a subsequence of the global order (a sorted or laplace order
    stays so on every rank); every rank runs the same number of steps; the result depends
    only on the arguments.

    >>> plan = deal_to_ranks([np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7, 8])], 2)
    >>> plan.num_steps, plan.for_rank(0), plan.for_rank(1)
    (2, [array([0, 1, 2]), array([5, 6])], [array([3, 4]), array([7, 8])])
    """
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, numbers.Integral) or num_ranks < 1:
        raise ValueError(f"num_ranks must be an int >= 1, got {num_ranks!r}")
    batches = [np.asarray(batch, dtype=np.int64) for batch in batches]
    if any(len(batch) == 0 for batch in batches):
        raise ValueError("planned batches must not be empty")
    num_full = len(batches) // num_ranks * num_ranks
    tail = batches[num_full:]
    if not tail:
        return BatchPlan(tuple(batches), num_ranks)
    # Every rank must run the same number of steps: under DDP, a rank that runs out of
    # batches while the others still step leaves them waiting in the gradient all-reduce
    # forever. So the last step gets a batch on every rank: the tail batches are cut into
    # W pieces, and where there are fewer seqs than ranks, some ranks get an empty batch
    # and run the step without data (lhotse's samplers solve the epoch end the same way).
    sizes = [len(batch) for batch in tail]
    if seq_lens is None:
        weights = [float(size) for size in sizes]
    else:
        frames = BatchPlan(tuple(tail), len(tail)).padded_frames(seq_lens)
        weights = [float(max(per_key[j] for per_key in frames.values())) for j in range(len(tail))]
    counts = _pieces_per_batch(weights, sizes, num_ranks)
    pieces = [piece for batch, count in zip(tail, counts) for piece in np.array_split(batch, count)]
    empty = np.zeros((0, *batches[0].shape[1:]), dtype=np.int64)  # (0, columns) for chunk rows
    empty.flags.writeable = False
    pieces += [empty] * (num_ranks - len(pieces))  # fewer seqs than ranks
    return BatchPlan(tuple(batches[:num_full] + pieces), num_ranks)


def plan_epoch(
    order: np.ndarray,
    seq_lens: Mapping[str, np.ndarray],
    options: BatchingOptions,
    num_ranks: int = 1,
    *,
    skip_seqs: int = 0,
) -> BatchPlan:
    """:func:`plan_batches` with the per-rank ``batch_size`` over the global order, then
    :func:`deal_to_ranks`.

    ``skip_seqs``: plan only what follows the first ``skip_seqs`` seqs of the (length-filtered)
    order: the rest of an epoch resumed mid-way. The batches do not depend on ``num_ranks`` and
    each step takes a contiguous run of the order, so after ``k`` full steps of a plan the seqs
    used are exactly the order's first ``n`` (:meth:`BatchPlan.seqs_in_steps`), and planning with
    ``skip_seqs=n`` gives the same remaining batches, dealt to any number of ranks.

    >>> lens = {"data": np.array([4, 4, 9, 20, 3, 3])}
    >>> plan = plan_epoch(np.arange(6), lens, BatchingOptions(batch_size=10), num_ranks=3)
    >>> plan.num_steps, plan.for_rank(2)
    (2, [array([3]), array([], dtype=int64)])
    >>> plan_epoch(np.arange(6), lens, BatchingOptions(batch_size=10), skip_seqs=2).batches
    (array([2]), array([3]), array([4, 5]))
    """
    items, item_lens, num_dropped = planned_items(order, seq_lens, options)
    if not 0 <= skip_seqs <= len(items):
        raise ValueError(f"skip_seqs {skip_seqs} out of range for an epoch of {len(items)} seqs")
    items, item_lens = items[skip_seqs:], {k: v[skip_seqs:] for k, v in item_lens.items()}
    batches = _split(items, _plan_starts(item_lens, options))
    plan = deal_to_ranks(batches, num_ranks, seq_lens)
    return dataclasses.replace(plan, num_dropped=num_dropped)


def per_worker_batch_size(frames_per_update: LengthLimit, num_workers: int) -> LengthLimit:
    """The ``batch_size`` each of ``num_workers`` DDP workers gets so that one update sums about
    ``frames_per_update`` frames: ``batch_size`` is per rank (a plan is made with it and dealt to
    the ranks, :func:`plan_epoch`), and an update over W workers equals one worker accumulating
    their W batches. Rounded to the nearest int, at least 1; a ``data key -> number`` dict is
    split key by key.

    >>> per_worker_batch_size(1000, 3), per_worker_batch_size(5, 8), per_worker_batch_size({"data": 900}, 2)
    (333, 1, {'data': 450})
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if isinstance(frames_per_update, Mapping):
        return {key: per_worker_batch_size(value, num_workers) for key, value in frames_per_update.items()}
    return max(1, round(float(frames_per_update) / num_workers))
