"""RETURNN's ``MetaDataset``, natively: several sub-datasets describing the same seqs, joined by seq tag.

The typical use pairs a feature HDF with an alignment HDF::

    train = {"class": "MetaDataset",
             "datasets": {"feat": {"class": "HDFDataset", "files": [...]},
                          "align": {"class": "HDFDataset", "files": [...]}},
             "data_map": {"data": ("feat", "data"), "classes": ("align", "data")},
             "seq_order_control_dataset": "feat"}

As in RETURNN (``returnn/datasets/meta.py``):

- The corpus is the *default* sub-dataset's seqs, in its corpus order: ``seq_order_control_dataset``
  if set, else the sub-dataset of ``data_map["data"]``; or the tags of ``seq_list_file``.
- Every other sub-dataset's seq is found by its tag (a missing tag is a one-line error here, where
  RETURNN raises "Dataset ... is missing seqs" or fails an assertion mid-epoch).
- With ``seq_order_control_dataset``, the epoch order is that sub-dataset's own order (its
  ``seq_ordering``, ``partition_epoch``, seeds); the MetaDataset's own ``seq_ordering`` is ignored.
  Without it, the MetaDataset's options order the corpus by the default sub-dataset's ``data`` lengths.
- Data keys are ``data_map``'s keys; dims, sparsity, dtypes and labels come from the sub-datasets.

Sub-datasets are built by :func:`returnn_ray.data.datasets.init_dataset` (any class a config may name),
so they pickle and read lazily like every other dataset.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from returnn_ray.data import datasets as _registry
from returnn_ray.data.base import Dataset
from returnn_ray.data.datasets import _order
from returnn_ray.data.seq_list import load_seq_list
from returnn_ray.data.seq_order import seq_order_for_epoch
from returnn_ray.errors import ConfigError, DataError

__all__ = ["MetaDataset"]


class MetaDataset(Dataset):
    """RETURNN's MetaDataset (see the module docstring for the rules it follows)."""

    def __init__(
        self,
        datasets: Mapping[str, Any],
        data_map: Mapping[str, Sequence[str]],
        seq_list_file: str | None = None,
        seq_order_control_dataset: str | None = None,
        seq_lens_file: str | None = None,
        data_dims: Mapping[str, Any] | None = None,
        data_dtypes: Mapping[str, str] | None = None,  # RETURNN: "deprecated, not used"
        *,
        name: str = "MetaDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
    ):
        self.name = name
        self.data_map = _check_data_map(name, datasets, data_map, seq_order_control_dataset)
        self.default_key = seq_order_control_dataset or self.data_map["data"][0]
        self.control_key = seq_order_control_dataset
        used = sorted({sub for sub, _ in self.data_map.values()} | {self.default_key})
        # "<name>_<key>" as RETURNN names them; any name but train/dev/eval gets seq_ordering "default".
        self.subs: dict[str, Dataset] = {
            key: _registry.init_dataset(datasets[key], name=f"{name}_{key}") for key in used
        }
        self.order = _order(seq_ordering, partition_epoch, fixed_random_seed, random_seed_offset)
        if self.control_key:
            self.order = self.subs[self.control_key].order
        self.seq_tags = self._corpus_tags(seq_list_file)
        self.index = {key: self._index_of(key, seq_list_file) for key in used}
        keys = sorted(self.data_map, key=lambda k: (k != "data", k))
        self.specs, self.seq_lens, self.labels = {}, {}, {}
        for key in keys:
            sub, sub_key = self.data_map[key]
            if sub_key not in self.subs[sub].specs:
                raise DataError(
                    f"dataset {name!r}: data_map[{key!r}]: sub-dataset {sub!r} has no data key {sub_key!r} "
                    f"(it has {self.subs[sub].data_keys})"
                )
            self.specs[key] = self.subs[sub].specs[sub_key]
            self.seq_lens[key] = np.asarray(self.subs[sub].seq_lens[sub_key])[self.index[sub]]
            if sub_key in self.subs[sub].labels:
                self.labels[key] = self.subs[sub].labels[sub_key]
        _check_data_dims(name, data_dims, self.specs)
        self.order_lens = self._order_lens(seq_lens_file)

    def _corpus_tags(self, seq_list_file: str | None) -> list[str]:
        """The default sub-dataset's tags, or those of ``seq_list_file`` (a list, or a dict per sub-dataset)."""
        if not seq_list_file:
            return list(self.subs[self.default_key].seq_tags)
        tags = load_seq_list(str(seq_list_file), self.name, "seq_list_file")
        if self.control_key and len(tags) != self.subs[self.control_key].num_seqs:
            raise DataError(
                f"dataset {self.name!r}: seq_list_file {seq_list_file!r} lists {len(tags)} seqs, but the "
                f"seq_order_control_dataset {self.control_key!r} has {self.subs[self.control_key].num_seqs}; "
                f"its orders index the list (as in RETURNN), so list its seqs in its corpus order"
            )
        return tags

    def _index_of(self, key: str, seq_list_file: str | None) -> np.ndarray:
        """Corpus index in sub-dataset ``key`` of each of our seqs, matched by tag."""
        sub = self.subs[key]
        if key == self.default_key and not seq_list_file:
            return np.arange(sub.num_seqs, dtype=np.int64)
        where = {tag: i for i, tag in enumerate(sub.seq_tags)}
        index = np.fromiter((where.get(tag, -1) for tag in self.seq_tags), dtype=np.int64, count=len(self.seq_tags))
        missing = np.flatnonzero(index < 0)
        if len(missing):
            source = f"seq_list_file {seq_list_file!r}" if seq_list_file else f"sub-dataset {self.default_key!r}"
            raise DataError(
                f"dataset {self.name!r}: sub-dataset {key!r} has no seq with tag {self.seq_tags[missing[0]]!r} "
                f"({len(missing)} of the {len(index)} tags of {source} are missing, e.g. it has "
                f"{sub.seq_tags[:2]}); every sub-dataset must hold every seq, with the same tags"
            )
        return index

    def _order_lens(self, seq_lens_file: str | None) -> np.ndarray:
        """The lengths RETURNN orders by without a control dataset: ``seq_lens_file``'s ``data`` entry per
        tag if given, else the default sub-dataset's ``data`` lengths (its first key if it has no ``data``)."""
        if seq_lens_file:
            try:
                with open(seq_lens_file) as f:
                    table = json.load(f)
                return np.array([int(table[tag]["data"]) for tag in self.seq_tags], dtype=np.int64)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"dataset {self.name!r}: seq_lens_file {seq_lens_file!r} must be JSON of tag -> "
                    f"{{'data': length}} for every seq ({type(exc).__name__}: {exc})"
                ) from None
        sub = self.subs[self.default_key]
        lens = sub.seq_lens["data"] if "data" in sub.seq_lens else sub.seq_lens[sub.data_keys[0]]
        return np.asarray(lens)[self.index[self.default_key]]

    def seq_order_for_epoch(self, epoch: int) -> np.ndarray:
        if self.control_key:
            return self.subs[self.control_key].seq_order_for_epoch(epoch)
        return _order_by(self, self.order_lens, epoch)

    def sub_epoch_orders(self, full_epoch: int = 1) -> list[np.ndarray]:
        if self.control_key:
            return self.subs[self.control_key].sub_epoch_orders(full_epoch)
        parts = self.order.partition_epoch
        first = (full_epoch - 1) * parts + 1
        return [self.seq_order_for_epoch(epoch) for epoch in range(first, first + parts)]

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        idx = np.asarray(indices, dtype=np.int64)
        used = {sub for sub, _ in self.data_map.values()}
        read = {key: self.subs[key].get_seqs(self.index[key][idx].tolist()) for key in sorted(used)}
        return [{key: read[sub][i][sub_key] for key, (sub, sub_key) in self.data_map.items()} for i in range(len(idx))]

    def seq_source(self, index: int) -> str | None:
        return self.subs[self.default_key].seq_source(int(self.index[self.default_key][index]))


def _order_by(dataset: Dataset, lens: np.ndarray, epoch: int) -> np.ndarray:
    o = dataset.order
    return seq_order_for_epoch(
        o.seq_ordering, lens, epoch=epoch, partition_epoch=o.partition_epoch,
        fixed_random_seed=o.fixed_random_seed, random_seed_offset=o.random_seed_offset,
    )


def _check_data_map(
    name: str, datasets: Any, data_map: Any, control: str | None
) -> dict[str, tuple[str, str]]:
    """``data_map`` must map our keys to ``(sub-dataset, its key)`` pairs naming entries of ``datasets``."""
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError(
            f"dataset {name!r}: MetaDataset datasets must be a dict name -> dataset dict, got {datasets!r}"
        )
    if not isinstance(data_map, Mapping) or not data_map:
        raise ConfigError(
            f"dataset {name!r}: MetaDataset data_map must be a dict key -> (dataset, key), got {data_map!r}"
        )
    out = {}
    for key, target in data_map.items():
        if not (isinstance(target, (tuple, list)) and len(target) == 2 and all(isinstance(t, str) for t in target)):
            raise ConfigError(
                f"dataset {name!r}: data_map[{key!r}] must be (sub-dataset name, its data key), got {target!r}"
            )
        if target[0] not in datasets:
            raise ConfigError(
                f"dataset {name!r}: data_map[{key!r}] names sub-dataset {target[0]!r}; datasets has {sorted(datasets)}"
            )
        out[str(key)] = (target[0], target[1])
    if control is not None and control not in datasets:
        raise ConfigError(
            f"dataset {name!r}: seq_order_control_dataset {control!r} is not in datasets ({sorted(datasets)})"
        )
    if not control and "data" not in out:
        raise ConfigError(
            f"dataset {name!r}: MetaDataset needs seq_order_control_dataset or a 'data' entry in data_map "
            f"(as in RETURNN)"
        )
    return out


def _check_data_dims(name: str, data_dims: Mapping[str, Any] | None, specs: Mapping) -> None:
    """RETURNN's deprecated ``data_dims`` double-check: ``key -> (dim, ndim)``, ndim 1 meaning sparse."""
    for key, value in (data_dims or {}).items():
        spec = specs.get(key)
        if spec is None:
            raise ConfigError(f"dataset {name!r}: data_dims names {key!r}, which data_map does not have")
        dim, ndim = value
        if int(dim) != spec.dim or (int(ndim) == 1) != spec.sparse:
            raise ConfigError(
                f"dataset {name!r}: data_dims[{key!r}] = {tuple(value)} but the sub-dataset holds dim {spec.dim}, "
                f"{'sparse' if spec.sparse else 'dense'}; fix data_dims or remove it"
            )


_registry.DATASET_CLASSES["MetaDataset"] = MetaDataset
