"""Seq lists: RETURNN's seq list files and ``seq_list_filter_file`` (a dataset whose epochs keep listed seqs)."""

from __future__ import annotations

import gzip
import pickle
from typing import Callable, Sequence

import numpy as np

from returnn_ray.data.base import Dataset
from returnn_ray.errors import DataError

__all__ = ["SeqListFilteredDataset", "load_seq_list"]


class SeqListFilteredDataset(Dataset):
    """``seq_list_filter_file``: another dataset whose epochs use only the seqs with listed tags.

    As in RETURNN, the filter is applied to each epoch's order after ordering and
    partitioning the whole corpus, so the kept seqs keep their places in RETURNN's order.
    """

    def __init__(self, inner: Dataset, seq_list_filter_file: str):
        self.inner = inner
        self.name, self.specs, self.seq_lens = inner.name, inner.specs, inner.seq_lens
        self.seq_tags, self.labels, self.order = inner.seq_tags, inner.labels, inner.order
        self.supports_sorting = inner.supports_sorting
        self.seq_list_filter_file = seq_list_filter_file
        wanted = set(load_seq_list(seq_list_filter_file, inner.name))
        self.keep = np.fromiter((tag in wanted for tag in inner.seq_tags), dtype=bool, count=len(inner.seq_tags))
        if not self.keep.any():
            example = sorted(wanted)[:3]
            raise DataError(
                f"dataset {inner.name!r}: no seq tag is listed in seq_list_filter_file {seq_list_filter_file!r} "
                f"(file has e.g. {example}, dataset has e.g. {inner.seq_tags[:3]})"
            )

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return self.inner.get_seqs(indices)

    def sub_epoch_orders(self, full_epoch: int = 1) -> list[np.ndarray]:
        return [order[self.keep[order]] for order in self.inner.sub_epoch_orders(full_epoch)]

    def duplicate_tags(self) -> dict[str, list[int]]:
        kept = {tag: [i for i in indices if self.keep[i]] for tag, indices in self.inner.duplicate_tags().items()}
        return {tag: indices for tag, indices in kept.items() if len(indices) > 1}

    def seq_source(self, index: int) -> str | None:
        return self.inner.seq_source(index)

    def seq_order_for_epoch(self, epoch: int) -> np.ndarray:
        order = self.inner.seq_order_for_epoch(epoch)
        order = order[self.keep[order]]
        if not len(order):
            raise DataError(
                f"dataset {self.name!r}: epoch {epoch} is empty after seq_list_filter_file "
                f"{self.seq_list_filter_file!r} (lower partition_epoch or list more seqs)"
            )
        return order


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only (lists, tuples, dicts, strings, numbers): a pickle that names any
    class or function, which is how a pickle runs code, is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain data (a list of strings) is read")


def load_seq_list(path: str, name: str, what: str = "seq_list_filter_file") -> list[str]:
    """RETURNN's seq list file: one tag per line (optionally ``.gz``), or a pickled list (``.pkl``).
    ``what`` names the config key in errors."""
    opener: Callable = gzip.open if path.endswith(".gz") else open
    try:
        if path.removesuffix(".gz").endswith(".pkl"):
            with opener(path, "rb") as f:
                tags = _DataUnpickler(f).load()
        else:
            with opener(path, "rt") as f:
                tags = f.read().splitlines()
    except OSError as exc:
        msg = f"dataset {name!r}: cannot read {what} {path!r} ({exc.strerror or exc})"
        raise DataError(msg) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, UnicodeDecodeError) as exc:
        msg = f"dataset {name!r}: {what} {path!r} is not a pickled list of tags ({exc})"
        raise DataError(msg) from None
    if not isinstance(tags, list):
        raise DataError(f"dataset {name!r}: {what} {path!r} must hold a list of tags")
    return [str(t) for t in tags]
