"""The dataset contract every dataset class implements.

A dataset is a fixed corpus of ``num_seqs`` sequences. Each sequence is a dict
``data key -> numpy array`` whose first axis is time (a sparse key is ``[T]`` int32,
a dense key ``[T, dim]`` float32). The lengths of every sequence are known up front
(``seq_lens``), so the seq order and the batch plan of an epoch are computed from
lengths alone, in numpy, before any data is read.

Datasets are pickled to Ray tasks: they must pickle cheaply (file paths, not open
handles) and open their files lazily in whatever process reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from returnn_ray.data.seq_order import partition_order, seq_order_for_epoch
from returnn_ray.errors import DataError


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What one data key holds, as RETURNN's ``extern_data`` entries describe it."""

    dim: int
    """Feature dimension (dense) or number of classes (sparse)."""
    sparse: bool = False
    """Sparse keys hold class indices ``[T]``; dense keys hold features ``[T, dim]``."""
    dtype: str = "float32"
    """numpy dtype of the stored values (``int32`` for sparse keys)."""

    @property
    def shape(self) -> tuple:
        """The ``extern_data`` style shape: ``(None,)`` sparse, ``(None, dim)`` dense."""
        return (None,) if self.sparse else (None, self.dim)


@dataclasses.dataclass(frozen=True)
class OrderOptions:
    """The per-dataset options that decide which seqs an epoch uses, in which order."""

    seq_ordering: str = "default"
    """RETURNN's seq ordering mode (``default``, ``sorted``, ``laplace:.100``, ``random:2``, ...)."""
    partition_epoch: int = 1
    """Split one pass over the data into this many sub-epochs."""
    fixed_random_seed: int | None = None
    """If set, every epoch uses this seed (the same random order each epoch)."""
    random_seed_offset: int = 0
    """Added to the epoch-derived seed."""


class Dataset:
    """Base class: subclasses fill ``specs``, ``seq_lens``, ``seq_tags`` and implement ``get_seqs``.

    Attributes set by subclasses:
      name: the config name (``train``, ``dev``, ...), for error messages
      specs: data key -> :class:`DataSpec`; ``data`` comes first
      seq_lens: data key -> int64 array ``[num_seqs]`` of time lengths
      seq_tags: list of ``num_seqs`` strings
      labels: data key -> vocabulary (list of label strings), where known
      order: :class:`OrderOptions`
    """

    name: str
    specs: dict[str, DataSpec]
    seq_lens: dict[str, np.ndarray]
    seq_tags: list[str]
    labels: dict[str, list[str]]
    order: OrderOptions
    supports_sorting: bool = False
    """RETURNN's ``supports_seq_order_sorting()`` for this class: its forward with a callback then
    reads the seqs longest first (``sorted_reverse``)."""

    @property
    def num_seqs(self) -> int:
        return len(self.seq_tags)

    @property
    def data_keys(self) -> list[str]:
        return list(self.specs)

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Read the seqs with these corpus indices, in the given order."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_seqs")

    def seq_order_for_epoch(self, epoch: int) -> np.ndarray:
        """Corpus indices of the (sub)epoch ``epoch`` (1-based), in RETURNN's order."""
        return seq_order_for_epoch(
            self.order.seq_ordering,
            self.seq_lens[self.data_keys[0]],
            epoch=epoch,
            partition_epoch=self.order.partition_epoch,
            fixed_random_seed=self.order.fixed_random_seed,
            random_seed_offset=self.order.random_seed_offset,
        )

    def sub_epoch_orders(self, full_epoch: int = 1) -> list[np.ndarray]:
        """The orders of the ``partition_epoch`` sub-epochs of full epoch ``full_epoch`` (1-based):
        ``seq_order_for_epoch(e)`` for each of its sub-epochs ``e``, at the cost of one order (the
        sub-epochs of a full epoch are slices of one order, with one seed)."""
        parts = self.order.partition_epoch
        full = seq_order_for_epoch(
            self.order.seq_ordering,
            self.seq_lens[self.data_keys[0]],
            epoch=full_epoch,
            fixed_random_seed=self.order.fixed_random_seed,
            random_seed_offset=self.order.random_seed_offset,
        )
        first = (full_epoch - 1) * parts + 1
        return [partition_order(full, epoch, parts) for epoch in range(first, first + parts)]

    def duplicate_tags(self) -> dict[str, list[int]]:
        """Seq tags that more than one seq has: tag -> the corpus indices that have it (in order)."""
        first: dict[str, int] = {}
        dups: dict[str, list[int]] = {}
        for i, tag in enumerate(self.seq_tags):
            j = first.setdefault(tag, i)
            if j != i:
                dups.setdefault(tag, [j]).append(i)
        return dups

    def seq_source(self, index: int) -> str | None:
        """Where seq ``index`` is stored (a file), for messages; None for a dataset without files."""
        return None

    def duplicate_tags_message(self, shown: int = 3) -> str | None:
        """One line naming the duplicated seq tags (the first ``shown``) and their files; None if none."""
        dups = self.duplicate_tags()
        if not dups:
            return None
        parts = []
        for tag, indices in list(dups.items())[:shown]:
            sources = list(dict.fromkeys(s for s in map(self.seq_source, indices) if s is not None))
            where = f"{len(indices)}x" + (f" in {', '.join(map(repr, sources))}" if sources else "")
            parts.append(f"{tag!r} ({where})")
        more = f" and {len(dups) - shown} more" if len(dups) > shown else ""
        return f"dataset {self.name!r}: {len(dups)} seq tag(s) occur more than once: {', '.join(parts)}{more}"

    def check_unique_tags(self, what: str) -> None:
        """Raise :class:`DataError` if two seqs share a tag: ``what`` (a forward or search output,
        keyed by tag) would hold that tag twice, and a reader would take one seq's result for another's."""
        message = self.duplicate_tags_message()
        if message:
            raise DataError(f"{message}; {what} would hold a tag twice: make the tags unique")

    def lens_for(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        """Lengths of the given seqs for every data key."""
        return {key: lens[indices] for key, lens in self.seq_lens.items()}
