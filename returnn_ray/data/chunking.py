"""RETURNN's ``chunking``: seqs cut into chunks that are batched like seqs (train, and for torch
configs dev/eval too: :func:`returnn_ray.data.from_settings.chunking`).

RETURNN has two rules, and a config gets the one its RETURNN engine applies:

- ``"tf"``, network-dict configs: ``Dataset.iterate_seqs`` (``returnn/datasets/basic.py``) as the
  TF engine calls it. Every data key must have a chunk size; a key of another length than
  ``data`` needs its own step (the chunk counts must agree) or a length <= 1 (then every chunk
  holds the whole seq of that key). A seq ends its chunks once any key has ``min_chunk_size``
  frames or fewer left. ``max_seq_length`` / ``min_seq_length`` apply to the chunks.
- ``"torch"``, torch configs (``get_model`` / ``train_step``): ``ChunkingIterDataPipe``
  (``returnn/torch/data/pipeline.py``): each chunked key is cut at ``0, step, 2*step, ...``
  and chunks shorter than ``min_chunk_size`` are dropped; a key the chunking dict does not
  name is whole in every chunk. ``max_seq_length`` / ``min_seq_length`` apply to the whole
  seqs, before chunking.

Chunks are rows ``[corpus seq index, start, end of key 1, start, end of key 2, ...]`` (keys in
the order of the ``seq_lens`` dict they were cut from): the batch plan deals them like seqs,
and the reader slices each seq accordingly (:func:`row_lens`, ``ray_data.pad_batch``).
A chunk depends only on its seq's lengths and the options, so a plan stays a pure function.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Literal, Mapping, Union

import numpy as np

from returnn_ray.errors import ConfigError, DataError

__all__ = ["Chunking", "chunk_rows", "parse_chunking", "row_lens"]

PerKey = Union[int, Mapping[str, int]]
"""One number for every data key, or ``data key -> number`` (RETURNN's ``NumbersDict``)."""

Rule = Literal["tf", "torch"]


@dataclasses.dataclass(frozen=True)
class Chunking:
    """Chunk size and step per data key, ``min_chunk_size``, and whose rule cuts them."""

    size: PerKey
    step: PerKey
    min_chunk_size: PerKey = 0
    rule: Rule = "torch"

    def __str__(self) -> str:
        return f"chunking {_text(self.size)}:{_text(self.step)}"


def _text(value: PerKey) -> str:
    return str(value) if isinstance(value, numbers.Integral) else repr(dict(value))


def _per_key(what: str, value: Any, *, allow_zero: bool) -> PerKey:
    """An int or a ``data key -> int`` dict, each >= 0 (or > 0)."""
    items = value.items() if isinstance(value, Mapping) else [(None, value)]
    for key, v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 or (v == 0 and not allow_zero):
            where = what if key is None else f"{what}[{key!r}]"
            need = "an int >= 0" if allow_zero else "an int > 0"
            raise ConfigError(f"{where} must be {need} (or a dict data key -> int), got {v!r}")
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{what} must not be an empty dict")
        return {str(k): int(v) for k, v in value.items()}
    return int(value)


def _split(value: Any) -> tuple[Any, Any]:
    """RETURNN's ``Dataset._parse_chunking`` up to the numbers: ``"size:step"``, ``"size"``, an int,
    a dict, or a ``(size, step)`` pair of those."""
    if callable(value):
        raise ConfigError("chunking: a custom chunking function is not supported; give 'size:step' or a dict")
    if isinstance(value, str):
        try:
            value = tuple(int(v) for v in value.split(":")) if ":" in value else int(value)
        except ValueError:
            raise ConfigError(f"chunking {value!r}: expected 'size:step', 'size', or a dict data key -> size") from None
    if not isinstance(value, (tuple, list)):
        value = (value, None)
    if len(value) != 2:
        raise ConfigError(f"chunking {value!r}: expected (size, step)")
    return value[0], value[1]


def parse_chunking(value: Any, min_chunk_size: Any = 0, *, rule: Rule = "torch") -> Chunking | None:
    """The config's ``chunking`` and ``min_chunk_size``; None where RETURNN chunks nothing (unset, 0).

    >>> parse_chunking("200:100")
    Chunking(size=200, step=100, min_chunk_size=0, rule='torch')
    >>> parse_chunking(({"data": 20, "classes": 10}, None), rule="tf").step
    {'data': 20, 'classes': 10}
    >>> parse_chunking("0") is None
    True
    """
    if value is None or value == "":
        return None
    size, step = _split(value)
    if not size:  # RETURNN: chunk size 0 (or None) is no chunking
        return None
    size = _per_key("chunking size", size, allow_zero=False)
    step = size if step in (None, 0) else _per_key("chunking step", step, allow_zero=rule == "tf")
    if isinstance(size, Mapping) != isinstance(step, Mapping) or (
        isinstance(size, Mapping) and sorted(size) != sorted(step)
    ):
        raise ConfigError(f"chunking: size {size!r} and step {step!r} must name the same data keys")
    if isinstance(step, Mapping) and not any(step.values()):
        raise ConfigError(f"chunking: step {step!r} must be > 0 for some data key")
    return Chunking(size, step, _per_key("min_chunk_size", min_chunk_size or 0, allow_zero=True), rule)


def _value(what: str, per_key: PerKey, key: str, *, default: int | None = None) -> int | None:
    if not isinstance(per_key, Mapping):
        return int(per_key)
    if key in per_key:
        return per_key[key]
    if default is None:
        raise ConfigError(f"{what} {dict(per_key)!r} names no size for data key {key!r}; name every data key")
    return default


def _check_keys(chunking: Chunking, keys: list[str]) -> None:
    for what, per_key in (("chunking", chunking.size), ("min_chunk_size", chunking.min_chunk_size)):
        unknown = sorted(set(per_key) - set(keys)) if isinstance(per_key, Mapping) else []
        if unknown:
            raise ConfigError(f"{what} names unknown data keys {unknown}; data keys: {keys}")


def _rows(seqs: np.ndarray, counts: np.ndarray, spans: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Rows of all chunks: ``spans[k] = (start of chunk 0, step, length, whole)`` per seq for key k;
    chunk j of a seq starts at ``start + j * step`` (``whole``: 0 .. length in every chunk)."""
    offsets = np.cumsum(counts) - counts
    j = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets, counts)
    cols = [np.repeat(seqs, counts)]
    for size, step, lens, whole in spans:
        lens_r, whole_r = np.repeat(lens, counts), np.repeat(whole, counts)
        start = j * np.repeat(step, counts)
        end = np.minimum(start + np.repeat(size, counts), lens_r)
        cols += [np.where(whole_r, 0, start), np.where(whole_r, lens_r, end)]
    return np.stack(cols, axis=1).astype(np.int64) if cols[0].size else np.zeros((0, len(cols)), np.int64)


def _torch_counts(order: np.ndarray, lens: dict[str, np.ndarray], chunking: Chunking):
    """``ChunkingIterDataPipe``: per seq, the number of chunks and each key's span."""
    chunked = list(chunking.size) if isinstance(chunking.size, Mapping) else list(lens)
    counts = None
    spans = []
    for key, key_lens in lens.items():
        if key not in chunked:
            spans.append((key_lens, np.zeros_like(key_lens), key_lens, np.ones(len(key_lens), bool)))
            continue
        size, step = _value("chunking", chunking.size, key), _value("chunking", chunking.step, key)
        least = max(_value("min_chunk_size", chunking.min_chunk_size, key, default=0), 1)
        n = np.where((size >= least) & (key_lens >= least), (key_lens - least) // step + 1, 0)
        if counts is not None and not np.array_equal(n, counts):
            bad = int(np.flatnonzero(n != counts)[0])
            raise DataError(
                f"chunking: seq {int(order[bad])} gives {counts[bad]} chunks of {chunked[0]!r} (length "
                f"{int(lens[chunked[0]][bad])}) but {n[bad]} of {key!r} (length {int(key_lens[bad])}); "
                f"give {key!r} its own chunk size and step in a chunking dict, or leave it out of the dict"
            )
        counts = n
        spans.append((np.full_like(key_lens, size), np.full_like(key_lens, step), key_lens, np.zeros(len(key_lens), bool)))
    return counts, spans


def _tf_counts(order: np.ndarray, lens: dict[str, np.ndarray], chunking: Chunking):
    """``Dataset.iterate_seqs`` (TF engine): per seq, the number of chunks and each key's span."""
    keys = list(lens)
    size = {k: _value("chunking", chunking.size, k) for k in keys}
    step = {k: _value("chunking", chunking.step, k) for k in keys}
    least = {k: _value("min_chunk_size", chunking.min_chunk_size, k, default=0) for k in keys}
    default = "data" if "data" in keys else sorted(keys)[0]
    if step[default] == 0:
        default = next(k for k in sorted(keys) if step[k] > 0)
    d_lens = lens[default]
    extra = np.full(len(d_lens), np.iinfo(np.int64).max)  # chunks after the first that every key allows
    spans = []
    for key in keys:
        key_lens = lens[key]
        same = (step[key] == step[default]) & (key_lens == d_lens)
        whole = ~same & (key_lens <= 1)
        _check_tf_key(order, key, default, key_lens, d_lens, same | whole, step, least)
        if step[key] > 0:
            allows = (key_lens - least[key] - 1) // step[key]
        else:
            allows = np.where(key_lens > least[key], extra, 0)
        extra = np.minimum(extra, allows)
        spans.append((np.full_like(key_lens, size[key]), np.full_like(key_lens, step[key]), key_lens, whole))
    counts = np.where(d_lens > 0, 1 + np.maximum(extra, 0), 0)
    return counts, spans


def _check_tf_key(order, key, default, key_lens, d_lens, ok, step, least) -> None:
    """What ``iterate_seqs`` raises on: a key of another length with the same step, or a chunk count
    that differs from the default key's."""
    if ok.all():
        return
    if step[key] == step[default]:
        bad = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"chunking: seq {int(order[bad])} has {int(d_lens[bad])} frames of {default!r} but "
            f"{int(key_lens[bad])} of {key!r}; give {key!r} its own chunk size and step in a chunking dict"
        )
    lim, lim_d = max(least[key], 1), max(least[default], 1)
    if step[key] == 0:
        raise ConfigError(f"chunking: step 0 for {key!r}, whose length differs from {default!r}'s")
    n_key = (key_lens - lim) // step[key] + 1
    n_default = (d_lens - lim_d) // step[default] + 1
    mismatch = ~ok & (n_key != n_default)
    if mismatch.any():
        bad = int(np.flatnonzero(mismatch)[0])
        raise DataError(
            f"chunking: seq {int(order[bad])} gives {int(n_default[bad])} chunks of {default!r} (length "
            f"{int(d_lens[bad])}, step {step[default]}) but {int(n_key[bad])} of {key!r} (length "
            f"{int(key_lens[bad])}, step {step[key]}); make the steps match the lengths' ratio"
        )


def chunk_rows(order: np.ndarray, seq_lens: Mapping[str, np.ndarray], chunking: Chunking) -> np.ndarray:
    """The chunks of the seqs of ``order``, in order (each seq's chunks in time order), as int64
    rows ``[seq, start_1, end_1, start_2, end_2, ...]`` over the keys of ``seq_lens``."""
    keys = list(seq_lens)
    _check_keys(chunking, keys)
    order = np.asarray(order, dtype=np.int64)
    lens = {k: np.asarray(seq_lens[k], dtype=np.int64)[order] for k in keys}
    counts, spans = (_tf_counts if chunking.rule == "tf" else _torch_counts)(order, lens, chunking)
    return _rows(order, counts, spans)


def row_lens(rows: np.ndarray, keys: list[str], key: str) -> np.ndarray:
    """The lengths of ``key`` in chunk rows cut over ``keys``."""
    i = keys.index(key)
    return rows[:, 2 + 2 * i] - rows[:, 1 + 2 * i]
