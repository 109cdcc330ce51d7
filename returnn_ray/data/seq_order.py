"""The order in which an epoch visits the seqs of a dataset: RETURNN's ``seq_ordering``.

:func:`seq_order_for_epoch` reproduces RETURNN's ``Dataset.get_seq_order_for_epoch``
index for index (the differential tests in ``tests/data/test_seq_order.py`` compare both),
including the random seeds and the ``partition_epoch`` slicing, but works on a numpy array
of lengths and is vectorised, so that an order over a million seqs takes milliseconds.

The modes (``N`` seqs, ``RS`` = ``numpy.random.RandomState``, ``seed(n)`` see below):

- ``default``: ``0 .. N-1``; ``reverse``: ``N-1 .. 0``.
- ``default_every_n:n``: interleave ``n`` equal blocks (``N % n`` trailing seqs are unused).
- ``sorted`` / ``sorted_reverse``: stable sort by length, shortest / longest first.
- ``random`` / ``random:n``: ``RS(seed(n)).permutation(N)``; ``:n`` keeps one order for ``n``
  consecutive epochs.
- ``random_sample`` / ``random_sample:n``: ``N`` draws with replacement.
- ``sort_bin_shuffle[:B[:n]]`` / ``sort_bin_shuffle:.x[:n]``: shuffle, stable sort by length,
  cut into ``B`` bins (default 2; ``.x``: about ``x`` seqs per bin), visit the bins in random
  order. ``sort_bin_shuffle_x2`` also shuffles within each bin.
- ``laplace[:B[:n]]`` / ``laplace:.x[:n]``: shuffle, cut into bins, sort each bin by length,
  alternately ascending and descending (a saw-tooth of lengths).

The seed of epoch ``e`` is ``fixed_random_seed`` if set, else the full-epoch number
``(e-1) // partition_epoch + 1``, then ``(s-1) // n + 1`` for a ``:n`` suffix, plus
``random_seed_offset``. It is constant within one full epoch, so the sub-epochs of a
partitioned epoch are disjoint slices of one order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Literal, get_args

import numpy as np

from returnn_ray.errors import ConfigError

__all__ = ["SEQ_ORDERING_MODES", "SeqOrderingMode", "partition_order", "seq_order_for_epoch", "validate_seq_ordering"]

SeqOrderingMode = Literal[
    "default",
    "default_every_n",
    "reverse",
    "sorted",
    "sorted_reverse",
    "random",
    "random_sample",
    "sort_bin_shuffle",
    "sort_bin_shuffle_x2",
    "laplace",
]
"""The base names of the ``seq_ordering`` modes (the part before the first ``:``)."""

SEQ_ORDERING_MODES: tuple[str, ...] = get_args(SeqOrderingMode)
"""The base names of the modes, in the order error messages list them."""

_USAGE: dict[str, str] = {
    "default": "default",
    "default_every_n": "default_every_n:n",
    "reverse": "reverse",
    "sorted": "sorted",
    "sorted_reverse": "sorted_reverse",
    "random": "random[:n]",
    "random_sample": "random_sample[:n]",
    "sort_bin_shuffle": "sort_bin_shuffle[:B[:n]], sort_bin_shuffle:.x[:n]",
    "sort_bin_shuffle_x2": "sort_bin_shuffle_x2[:B[:n]], sort_bin_shuffle_x2:.x[:n]",
    "laplace": "laplace[:B[:n]], laplace:.x[:n]",
}
_NEEDS_LENS = frozenset({"sorted", "sorted_reverse", "sort_bin_shuffle", "sort_bin_shuffle_x2", "laplace"})
_POSITIVE_INT = re.compile(r"[1-9][0-9]*")


@dataclasses.dataclass(frozen=True)
class _Mode:
    """A parsed ``seq_ordering`` string."""

    base: str
    every_n: int = 1
    """``n`` of ``default_every_n:n``, ``random:n``, ... (epochs that share one order)."""
    bins: int | None = None
    """Number of bins given as ``:B``."""
    seqs_per_bin: int | None = None
    """Approximate seqs per bin given as ``:.x``."""

    def num_bins(self, num_seqs: int) -> int:
        """RETURNN's bin count: ``B``, ``max(N // x, 2)`` for ``.x``, else 2."""
        if self.bins is not None:
            return self.bins
        if self.seqs_per_bin is not None:
            return max(num_seqs // self.seqs_per_bin, 2)
        return 2


def _bad_args(mode: str, base: str, why: str) -> ConfigError:
    return ConfigError(f"malformed seq_ordering {mode!r}: {why}; expected {_USAGE[base]} (B, n, x positive integers)")


def _parse_int(mode: str, base: str, text: str, what: str) -> int:
    if not _POSITIVE_INT.fullmatch(text):
        raise _bad_args(mode, base, f"{what} {text!r} is not a positive integer")
    if len(text) > len(str(_MAX_ARG)) or int(text) > _MAX_ARG:
        raise _bad_args(mode, base, f"{what} {text} is too large (at most {_MAX_ARG})")
    return int(text)


_MAX_ARG = 2**31 - 1
"""The largest B, n or x of a seq_ordering (numpy's index range is wider; no corpus has more seqs)."""


def _parse(mode: str) -> _Mode:
    """Parse and validate ``mode``; raises :class:`ConfigError` naming the valid modes."""
    if not isinstance(mode, str):
        raise ConfigError(f"seq_ordering must be a string, got {mode!r} ({type(mode).__name__})")
    base, *args = mode.split(":")
    if base not in SEQ_ORDERING_MODES:
        raise ConfigError(f"unknown seq_ordering {mode!r}; valid: {', '.join(SEQ_ORDERING_MODES)}")
    if base in ("default", "reverse", "sorted", "sorted_reverse"):
        if args:
            raise _bad_args(mode, base, "this mode takes no arguments")
        return _Mode(base)
    if base == "default_every_n":
        if len(args) != 1:
            raise _bad_args(mode, base, "needs exactly one argument")
        return _Mode(base, every_n=_parse_int(mode, base, args[0], "n"))
    if base in ("random", "random_sample"):
        if len(args) > 1:
            raise _bad_args(mode, base, "takes at most one argument")
        return _Mode(base, every_n=_parse_int(mode, base, args[0], "n") if args else 1)
    # sort_bin_shuffle, sort_bin_shuffle_x2, laplace: [:B | :.x [:n]]
    if len(args) > 2:
        raise _bad_args(mode, base, "takes at most two arguments")
    bins = seqs_per_bin = None
    if args:
        if args[0].startswith("."):
            seqs_per_bin = _parse_int(mode, base, args[0][1:], "x of .x")
        else:
            bins = _parse_int(mode, base, args[0], "B")
    every_n = _parse_int(mode, base, args[1], "n") if len(args) > 1 else 1
    return _Mode(base, every_n=every_n, bins=bins, seqs_per_bin=seqs_per_bin)


def validate_seq_ordering(mode: str) -> None:
    """Raise :class:`~returnn_ray.errors.ConfigError` unless ``mode`` is a valid ``seq_ordering``.

    >>> validate_seq_ordering("laplace:.100")
    >>> validate_seq_ordering("shuffle")
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: unknown seq_ordering 'shuffle'; valid: default, default_every_n, reverse, sorted, sorted_reverse, random, random_sample, sort_bin_shuffle, sort_bin_shuffle_x2, laplace
    """
    _parse(mode)


def _random_seed(
    epoch: int, *, every_n: int, partition_epoch: int, fixed_random_seed: int | None, random_seed_offset: int
) -> int:
    """RETURNN's ``Dataset._get_random_seed_for_epoch``."""
    if fixed_random_seed is not None:
        return fixed_random_seed
    seed = epoch
    if partition_epoch > 1:
        seed = (seed - 1) // partition_epoch + 1  # one seed per full epoch: sub-epochs are disjoint
    if every_n > 1:
        seed = (seed - 1) // every_n + 1
    return seed + random_seed_offset


def _bin_bounds(num_seqs: int, bins: int) -> np.ndarray:
    """Bin ``i`` is ``[bounds[i], bounds[i+1])``, with RETURNN's ``i * N // bins`` rounding."""
    return np.arange(bins + 1, dtype=np.int64) * num_seqs // bins


_SMALL_BIN = 8
"""Up to this many seqs per bin on average, :func:`_shuffle_small_bins` replaces one
``rng.shuffle`` call (about 1.5 µs) per bin."""


def _sort_bin_shuffle(lens: np.ndarray, mode: _Mode, rng: np.random.RandomState) -> np.ndarray:
    num_seqs = len(lens)
    perm = rng.permutation(num_seqs)
    # RETURNN sorts the permuted Python list with `key=get_seq_len`: a stable sort by length.
    by_len = perm[np.argsort(lens[perm], kind="stable")]
    bins = mode.num_bins(num_seqs)
    bounds = _bin_bounds(num_seqs, bins)
    bin_ids = rng.permutation(bins)
    starts = bounds[bin_ids]
    sizes = bounds[bin_ids + 1] - starts
    # Concatenate the bins in shuffled order without a Python loop over bins.
    offsets = np.cumsum(sizes) - sizes  # where each bin starts in the output
    out = by_len[np.arange(num_seqs, dtype=np.int64) + np.repeat(starts - offsets, sizes)]
    if mode.base == "sort_bin_shuffle_x2":
        if num_seqs <= _SMALL_BIN * bins:
            _shuffle_small_bins(out, offsets, sizes, rng)
        else:
            for offset, size in zip(offsets.tolist(), sizes.tolist()):
                rng.shuffle(out[offset : offset + size])  # in place, the draws of RETURNN's list shuffle
    return out


def _shuffle_small_bins(out: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, rng: np.random.RandomState) -> None:
    """Shuffle ``out[offsets[b] : offsets[b] + sizes[b]]`` in place for each bin ``b`` in turn,
    exactly as that many ``rng.shuffle`` calls would, but with one draw of raw numbers.

    ``RandomState.shuffle(x)`` is Fisher-Yates from the end: for ``i = n-1 .. 1`` it swaps
    ``x[i]`` and ``x[j]``, ``j = random_interval(i)``: raw 32-bit draws masked to the smallest
    all-ones mask ``>= i``, redrawn while ``> i``. The raw stream is what
    ``randint(0, 2**32, dtype=uint32)`` returns, one draw per value.
    """
    calls_per_bin = np.maximum(sizes - 1, 0)
    num_calls = int(calls_per_bin.sum())
    if num_calls == 0:
        return
    first_call = np.cumsum(calls_per_bin) - calls_per_bin
    # Call t of bin b (k-th within it) uses i = size_b - 1 - k.
    bin_of_call = np.repeat(np.arange(len(sizes)), calls_per_bin)
    k_of_call = np.arange(num_calls) - first_call[bin_of_call]
    maxes = (sizes[bin_of_call] - 1 - k_of_call).tolist()
    mask_of = [(1 << m.bit_length()) - 1 for m in range(int(sizes.max()))]
    raw: list[int] = []
    while True:  # acceptance is > 1/2 per draw, so 2x + slack almost always suffices
        raw += rng.randint(0, 2**32, size=max(len(raw), 2 * num_calls + 64), dtype=np.uint32).tolist()
        try:
            js = _draw_intervals(maxes, mask_of, raw)
            break
        except IndexError:
            continue  # the stream goes on: the prefix stays the same, retry with more draws
    js = np.array(js, dtype=np.int64)
    # Swaps are sequential within a bin but independent across bins: do the k-th swap of all bins at once.
    for k in range(int(calls_per_bin.max())):
        bins_k = np.nonzero(calls_per_bin > k)[0]
        call = first_call[bins_k] + k
        pos_i = offsets[bins_k] + sizes[bins_k] - 1 - k
        pos_j = offsets[bins_k] + js[call]
        out[pos_i], out[pos_j] = out[pos_j], out[pos_i].copy()


def _draw_intervals(maxes: list[int], mask_of: list[int], raw: list[int]) -> list[int]:
    """numpy's legacy ``random_interval(m)`` for each ``m`` of ``maxes`` in turn, from ``raw``."""
    js = []
    pos = 0
    for m in maxes:
        mask = mask_of[m]
        value = raw[pos] & mask
        pos += 1
        while value > m:
            value = raw[pos] & mask
            pos += 1
        js.append(value)
    return js


def _laplace(lens: np.ndarray, mode: _Mode, rng: np.random.RandomState) -> np.ndarray:
    num_seqs = len(lens)
    perm = rng.permutation(num_seqs)
    # More bins than seqs leaves every bin with at most one seq, as one seq per bin does (the
    # order is the permutation either way), without arrays of the size of B.
    bins = min(mode.num_bins(num_seqs), max(num_seqs, 1))
    bounds = _bin_bounds(num_seqs, bins)
    bin_of_pos = np.repeat(np.arange(bins, dtype=np.int64), np.diff(bounds))
    signed = lens[perm]
    signed = np.where(bin_of_pos % 2 == 1, -signed, signed)  # odd bins: longest first
    # A stable sort by (bin, signed length) is RETURNN's stable argsort within each bin.
    return perm[np.lexsort((signed, bin_of_pos))]


def partition_order(order: np.ndarray, epoch: int, partition_epoch: int) -> np.ndarray:
    """Sub-epoch ``epoch`` of the full-epoch ``order``: slice ``(epoch-1) % P`` of ``P``
    contiguous slices, the first ``len % P`` of them one seq longer (RETURNN's
    ``_apply_partition_epoch_and_sharding`` without sharding)."""
    size, extra = divmod(len(order), partition_epoch)
    part = (epoch - 1) % partition_epoch
    start = part * size + min(part, extra)
    return order[start : start + size + (1 if part < extra else 0)]


def _checked_lens(
    seq_ordering: str, mode: _Mode, seq_lens: np.ndarray | None, num_seqs: int | None
) -> tuple[np.ndarray | None, int]:
    """``seq_lens`` as a 1-D signed wide array (``sorted_reverse`` / ``laplace`` negate them) and
    the number of seqs; a mode that sorts by length needs the lengths."""
    if seq_lens is not None:
        seq_lens = np.asarray(seq_lens)
        if seq_lens.ndim != 1:
            raise ValueError(f"seq_lens must be 1-D, got shape {seq_lens.shape}")
        if num_seqs is not None and num_seqs != len(seq_lens):
            raise ValueError(f"num_seqs {num_seqs} != len(seq_lens) {len(seq_lens)}")
        return seq_lens.astype(np.int64 if seq_lens.dtype.kind in "iub" else np.float64, copy=False), len(seq_lens)
    if num_seqs is None:
        raise ValueError("need seq_lens or num_seqs")
    if mode.base in _NEEDS_LENS:
        raise ValueError(f"seq_ordering {seq_ordering!r} needs seq_lens")
    return None, num_seqs


def _full_order(
    mode: _Mode, seq_lens: np.ndarray | None, num_seqs: int, rng: Callable[[], np.random.RandomState]
) -> np.ndarray:
    """The order of a whole pass over the data (before ``partition_epoch`` cuts it); ``rng`` is
    called only by the modes that draw random numbers."""
    base = mode.base
    if base == "default":
        order = np.arange(num_seqs, dtype=np.int64)
    elif base == "reverse":
        order = np.arange(num_seqs - 1, -1, -1, dtype=np.int64)
    elif base == "default_every_n":
        n = mode.every_n
        block = num_seqs // n
        pos = np.arange(block * n, dtype=np.int64)
        order = pos // n + (pos % n) * block
    elif base == "sorted":
        order = np.argsort(seq_lens, kind="stable")
    elif base == "sorted_reverse":
        order = np.argsort(-seq_lens, kind="stable")
    elif base == "random":
        order = rng().permutation(num_seqs)
    elif base == "random_sample":
        order = rng().randint(0, num_seqs, size=num_seqs)
    elif base in ("sort_bin_shuffle", "sort_bin_shuffle_x2"):
        order = _sort_bin_shuffle(seq_lens, mode, rng())
    else:
        assert base == "laplace", base
        order = _laplace(seq_lens, mode, rng())
    return order.astype(np.int64, copy=False)


def seq_order_for_epoch(
    seq_ordering: str,
    seq_lens: np.ndarray | None,
    *,
    epoch: int,
    partition_epoch: int = 1,
    fixed_random_seed: int | None = None,
    random_seed_offset: int = 0,
    num_seqs: int | None = None,
) -> np.ndarray:
    """Corpus indices (int64) of the (sub)epoch ``epoch`` (1-based), as RETURNN orders them.

    :param seq_ordering: the mode, e.g. ``"sorted"``, ``"random:2"``, ``"laplace:.1000"``
    :param seq_lens: length of every corpus seq (the ``data`` key); may be None for modes
        that ignore lengths if ``num_seqs`` is given
    :param epoch: the (sub)epoch, 1-based
    :param partition_epoch: one pass over the data is split into this many sub-epochs
    :param fixed_random_seed: if set, the seed of every epoch
    :param random_seed_offset: added to the epoch-derived seed
    :param num_seqs: number of corpus seqs; defaults to ``len(seq_lens)``
    :return: int64 array of corpus indices; empty for an empty corpus

    >>> seq_order_for_epoch("sorted", np.array([3, 1, 2]), epoch=1)
    array([1, 2, 0])
    >>> seq_order_for_epoch("sorted_reverse", np.array([3, 1, 2, 3]), epoch=1)
    array([0, 3, 2, 1])
    >>> seq_order_for_epoch("default", None, num_seqs=5, epoch=2, partition_epoch=2)
    array([3, 4])
    >>> lens = np.arange(10) % 4 + 1
    >>> order = seq_order_for_epoch("laplace:2", lens, epoch=3)
    >>> order
    array([4, 5, 1, 9, 2, 7, 3, 6, 0, 8])
    >>> lens[order]  # bin 1 ascending, bin 2 descending
    array([1, 2, 2, 2, 3, 4, 4, 3, 1, 1])
    """
    mode = _parse(seq_ordering)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 1:
        raise ValueError(f"epoch must be an int >= 1, got {epoch!r}")
    if partition_epoch < 1:
        raise ConfigError(f"partition_epoch must be >= 1, got {partition_epoch!r}")
    seq_lens, num_seqs = _checked_lens(seq_ordering, mode, seq_lens, num_seqs)
    if num_seqs == 0:
        return np.zeros((0,), dtype=np.int64)

    def rng() -> np.random.RandomState:
        seed = _random_seed(
            epoch,
            every_n=mode.every_n,
            partition_epoch=partition_epoch,
            fixed_random_seed=fixed_random_seed,
            random_seed_offset=random_seed_offset,
        )
        return np.random.RandomState(seed)

    order = _full_order(mode, seq_lens, num_seqs, rng)
    if partition_epoch > 1:
        order = partition_order(order, epoch, partition_epoch)
    return order
