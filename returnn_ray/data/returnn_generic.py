"""Every other RETURNN dataset class, through RETURNN's own implementation.

``ConcatDataset``, ``CombinedDataset``, ``OggZipDataset``, ``LmDataset``, ``DistributeFilesDataset`` and
the other classes of ``returnn.datasets`` that need no external program are not re-written here: a
:class:`ReturnnDataset` builds RETURNN's class from the config dict wherever it is needed.

- Corpus (driver, once): RETURNN's class with ``seq_ordering="default"`` and ``partition_epoch=1``,
  epoch 1, read seq by seq. Its seqs, in that order, are our corpus: tags, lengths of every key, dims.
  Classes that draw new data each epoch (audio perturbation, text noise) give their epoch-1 data.
- Order (driver, per epoch): RETURNN's class with the config's own ``seq_ordering``,
  ``partition_epoch`` and seeds orders the epoch (``init_seq_order(epoch)``), and its seqs are mapped to
  our corpus by RETURNN's corpus index (or by tag). So each epoch visits RETURNN's seqs in RETURNN's
  order, by construction, whatever rule the class orders by (``OggZipDataset`` sorts by duration,
  ``CombinedDataset`` samples, ``DistributeFilesDataset`` deals files to sub-epochs). Our batch plan
  and sharding then apply as for every other dataset: the ranks split the planned batches; RETURNN's
  own sharding knobs (``distrib_shard_files``) are refused.
- Reading (each reader: Ray Data task or the local reader): RETURNN's corpus view again, the wanted
  seqs picked by corpus index (``init_seq_order(seq_order=...)``) where the class supports it, else
  by walking its epoch up to the last wanted seq. Every seq read is checked against its tag.

``returnn`` is imported only when such a class is used: the package import stays light for the others.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from returnn_ray.data import datasets as _registry
from returnn_ray.data.base import DataSpec, Dataset
from returnn_ray.data.datasets import _order
from returnn_ray.errors import ConfigError, DataError

__all__ = ["EXTERNAL_PROGRAM_CLASSES", "NATIVE_ELSEWHERE", "ReturnnDataset", "returnn_dataset_class"]

EXTERNAL_PROGRAM_CLASSES = {
    "ExternSprintDataset": "runs RASR (Sprint) as a child process",
    "SprintDatasetBase": "is fed by RASR (Sprint)",
    "SprintCacheDataset": "reads RASR (Sprint) caches with RASR's allophone/state-tying setup",
}
"""RETURNN classes that need an external program: refused in one line."""

NATIVE_ELSEWHERE = frozenset({"HDFDataset", "Task12AXDataset", "DummyDataset", "StaticDataset", "MetaDataset"})
"""Native classes (:data:`returnn_ray.data.datasets.DATASET_CLASSES`): never routed to RETURNN's."""

_BASES = frozenset({"Dataset", "CachedDataset", "CachedDataset2", "GeneratingDataset"})
_EVAL_KEYS = ("targets_post_process", "orth_post_process")
"""RETURNN ``eval``s a string value of these keys that holds ``(`` or ``,`` (a post-processor expression)."""
_REFUSED_KWARGS = {"distrib_shard_files": (None, False)}


def _returnn_basic():
    try:
        return importlib.import_module("returnn.datasets.basic")
    except ImportError:
        return None


def returnn_class_names() -> list[str]:
    """The dataset classes RETURNN has that we run through its implementation (empty without returnn)."""
    basic = _returnn_basic()
    if basic is None:
        return []
    basic.get_dataset_class("HDFDataset")  # fills RETURNN's class table
    names = set(basic._dataset_classes) - NATIVE_ELSEWHERE - _BASES - set(EXTERNAL_PROGRAM_CLASSES)
    return sorted(n for n in names if not n.startswith("_"))


def returnn_dataset_class(class_name: str, name: str) -> type[Dataset] | None:
    """The :class:`ReturnnDataset` subclass for RETURNN's ``class_name``; None if RETURNN has no such class.
    A class that needs an external program, or RETURNN not installed, is a one-line error."""
    if class_name in EXTERNAL_PROGRAM_CLASSES:
        raise ConfigError(
            f"dataset {name!r}: {class_name} {EXTERNAL_PROGRAM_CLASSES[class_name]}, an external program that "
            f"returnn-ray does not run; dump the data to HDF (e.g. RETURNN's tools/hdf_dump.py) and use HDFDataset"
        )
    basic = _returnn_basic()
    if basic is None:
        raise ConfigError(
            f"dataset {name!r}: class {class_name!r} runs through RETURNN's implementation, but the returnn "
            f"package is not installed; pip install returnn"
        )
    if class_name in _BASES or basic.get_dataset_class(class_name) is None:
        return None
    return _subclass(class_name)


_SUBCLASSES: dict[str, type] = {}


def _subclass(class_name: str) -> type:
    """One :class:`ReturnnDataset` subclass per RETURNN class, named like it (for messages)."""
    if class_name not in _SUBCLASSES:
        _SUBCLASSES[class_name] = type(class_name, (ReturnnDataset,), {"returnn_class": class_name})
    return _SUBCLASSES[class_name]


def _rebuild(class_name: str, state: dict) -> "ReturnnDataset":
    """Unpickle: the subclass is made again in the reading process (it is not a module attribute)."""
    dataset = _subclass(class_name).__new__(_subclass(class_name))
    dataset.__dict__.update(state)
    return dataset


class ReturnnDataset(Dataset):
    """A RETURNN dataset class run by RETURNN's implementation (see the module docstring)."""

    returnn_class = ""

    def __init__(
        self,
        *,
        name: str = "ReturnnDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
        **kwargs: Any,
    ):
        self.name = name
        for key, allowed in _REFUSED_KWARGS.items():
            if kwargs.get(key) not in allowed:
                raise ConfigError(
                    f"dataset {name!r}: {key}={kwargs[key]!r} is not supported: returnn-ray shards the planned "
                    f"batches over the workers itself; remove it"
                )
        _refuse_eval_strings(kwargs, name)
        self.kwargs = kwargs
        self.order = _order(seq_ordering, partition_epoch, fixed_random_seed, random_seed_offset)
        self._reader: Any = None
        self._orderer: Any = None
        self._orders: dict[int, np.ndarray] = {}
        corpus = self._build(corpus=True)
        self._read_corpus(corpus)

    def __reduce__(self) -> tuple:
        state = dict(self.__dict__)
        state["_reader"] = state["_orderer"] = None  # RETURNN's instances stay in their process
        state["_orders"] = {}
        return _rebuild, (self.returnn_class, state)

    # -- RETURNN's instances --------------------------------------------------------------------------

    def _build(self, *, corpus: bool) -> Any:
        """RETURNN's dataset: the corpus view (default order, one part) or the config's ordering."""
        basic = _returnn_basic()
        o = self.order
        options: dict[str, Any] = {"seq_ordering": "default", "partition_epoch": 1}
        if not corpus:
            options = {"seq_ordering": o.seq_ordering, "partition_epoch": o.partition_epoch}
        options["random_seed_offset"] = o.random_seed_offset
        if o.fixed_random_seed is not None:
            options["fixed_random_seed"] = o.fixed_random_seed
        spec = {"class": self.returnn_class, **self.kwargs, **options, "name": f"{self.name}:{self.returnn_class}"}
        with self._returnn_call("building it"):
            dataset = basic.init_dataset(spec)
            dataset.initialize()
        return dataset

    @contextlib.contextmanager
    def _returnn_call(self, what: str) -> Iterator[None]:
        """RETURNN's errors as one line naming the dataset; its log on stderr, not in our stdout."""
        _quiet_returnn_log()
        try:
            yield
        except (ConfigError, DataError):
            raise
        except Exception as exc:  # noqa: BLE001 -- any failure inside RETURNN's class, reported in one line
            text = " ".join(str(exc).split())[:300] or "(no message)"
            raise DataError(
                f"dataset {self.name!r}: RETURNN's {self.returnn_class} failed {what}: {type(exc).__name__}: {text}"
            ) from None

    def _read_corpus(self, corpus: Any) -> None:
        """Tags, lengths, specs and labels of the corpus view's epoch 1, read once."""
        with self._returnn_call("reading its corpus"):
            corpus.init_seq_order(epoch=1)
            # String keys (OggZipDataset's "raw" text) have no time axis and no tensor form: left out.
            keys = [k for k in corpus.get_data_keys() if corpus.get_data_dtype(k) != "string"]
            keys.sort(key=lambda k: (k != "data", k))
            self.specs = {key: _spec(corpus, key, self.name) for key in keys}
            self.labels = {k: list(v) for k, v in (corpus.labels or {}).items() if k in self.specs and v}
            tags, lens, cidx = [], {key: [] for key in keys}, []
            with_cidx = corpus.have_corpus_seq_idx()
            i = 0
            while corpus.is_less_than_num_seqs(i):
                corpus.load_seqs(i, i + 1)
                tags.append(str(corpus.get_tag(i)))
                for key in keys:
                    lens[key].append(len(corpus.get_data(i, key)))
                cidx.append(corpus.get_corpus_seq_idx(i) if with_cidx else i)
                i += 1
        self.seq_tags = tags
        self.seq_lens = {key: np.array(v, dtype=np.int64) for key, v in lens.items()}
        self.corpus_idx = np.array(cidx, dtype=np.int64) if with_cidx else None
        self._by_tag: dict[str, int] | None = None

    # -- orders ---------------------------------------------------------------------------------------

    def seq_order_for_epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if self._orderer is None:
                self._orderer = self._build(corpus=False)
            with self._returnn_call(f"ordering epoch {epoch}"):
                self._orders = {epoch: self._map_epoch(self._orderer, epoch)}
        return self._orders[epoch]

    def sub_epoch_orders(self, full_epoch: int = 1) -> list[np.ndarray]:
        parts = self.order.partition_epoch
        first = (full_epoch - 1) * parts + 1
        return [self.seq_order_for_epoch(epoch) for epoch in range(first, first + parts)]

    def _map_epoch(self, ds: Any, epoch: int) -> np.ndarray:
        """Our corpus index of each seq of RETURNN's epoch, in RETURNN's order."""
        ds.init_seq_order(epoch=epoch)
        if self.corpus_idx is not None and ds.have_corpus_seq_idx():
            where = {int(c): i for i, c in enumerate(self.corpus_idx)}
            out, i = [], 0
            while ds.is_less_than_num_seqs(i):
                out.append(where[int(ds.get_corpus_seq_idx(i))])
                i += 1
            return np.array(out, dtype=np.int64)
        return np.array([self._index_of_tag(tag) for tag in _epoch_tags(ds)], dtype=np.int64)

    def _index_of_tag(self, tag: str) -> int:
        if self._by_tag is None:
            dups = self.duplicate_tags_message()
            if dups:
                raise DataError(f"{dups}; its epochs are matched to its corpus by tag: make the tags unique")
            self._by_tag = {t: i for i, t in enumerate(self.seq_tags)}
        if tag not in self._by_tag:
            raise DataError(
                f"dataset {self.name!r}: RETURNN's epoch holds seq {tag!r}, which its corpus (epoch 1) lacks"
            )
        return self._by_tag[tag]

    # -- reading --------------------------------------------------------------------------------------

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        if self._reader is None:
            self._reader = self._build(corpus=True)
        wanted = [int(i) for i in indices]
        with self._returnn_call("reading seqs"):
            if self.corpus_idx is not None:
                self._reader.init_seq_order(epoch=1, seq_order=self.corpus_idx[wanted].tolist())
                got = [self._read_one(self._reader, pos, i) for pos, i in enumerate(wanted)]
            else:
                got = self._walk(wanted)
        return got

    def _walk(self, wanted: list[int]) -> list[dict[str, np.ndarray]]:
        """Read by walking the corpus epoch up to the last wanted seq (classes without corpus indices)."""
        self._reader.init_seq_order(epoch=1)
        need = set(wanted)
        found: dict[int, dict[str, np.ndarray]] = {}
        for i in range(max(wanted, default=-1) + 1):
            self._reader.load_seqs(i, i + 1)
            if i in need:
                found[i] = self._read_one(self._reader, i, i)
        return [found[i] for i in wanted]

    def _read_one(self, ds: Any, pos: int, index: int) -> dict[str, np.ndarray]:
        ds.load_seqs(pos, pos + 1)
        tag = str(ds.get_tag(pos))
        if tag != self.seq_tags[index]:
            raise DataError(
                f"dataset {self.name!r}: RETURNN's {self.returnn_class} gave seq {tag!r} where seq {index} is "
                f"{self.seq_tags[index]!r}; its corpus changes between reads (a file changed?)"
            )
        return {key: np.asarray(ds.get_data(pos, key)) for key in self.specs}


def _refuse_eval_strings(value: Any, name: str, key: str = "") -> None:
    """Strings that RETURNN's code would run as Python are refused: a nested dataset given as a
    ``"{...}"`` or ``"config:..."`` string, a post-processor expression, and ``seq_order_seq_lens_file``
    (RETURNN evals the file's content). A JSON or line config is data and must stay data; a Python
    config gives dicts and functions instead."""
    if key == "seq_order_seq_lens_file" and value:
        raise ConfigError(
            f"dataset {name!r}: seq_order_seq_lens_file is not supported for RETURNN's classes (RETURNN runs "
            f"the file's content as Python); remove it"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_eval_strings(v, name, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refuse_eval_strings(v, name, key)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "config:")) or (key in _EVAL_KEYS and ("(" in text or "," in text)):
            raise ConfigError(
                f"dataset {name!r}: {key or 'a value'} = {value[:60]!r} would be run as Python by RETURNN's "
                f"dataset code; give a dict (a nested dataset) or, in a Python config, a function"
            )


def _epoch_tags(ds: Any) -> Iterator[str]:
    i = 0
    while ds.is_less_than_num_seqs(i):
        ds.load_seqs(i, i + 1)
        yield str(ds.get_tag(i))
        i += 1


def _spec(ds: Any, key: str, name: str) -> DataSpec:
    """Our spec of RETURNN's key: sparse ``[T]`` or dense ``[T, dim]``; other shapes are refused."""
    sparse = bool(ds.is_data_sparse(key))
    shape = list(ds.get_data_shape(key))
    dim = ds.num_outputs[key][0] if key in ds.num_outputs else (shape[-1] if shape else 0)
    if (sparse and shape) or (not sparse and len(shape) != 1):
        raise DataError(
            f"dataset {name!r}: key {key!r} has per-frame shape {shape} ({'sparse' if sparse else 'dense'}); "
            f"returnn-ray reads sparse [T] or dense [T, dim] keys only"
        )
    return DataSpec(dim=int(dim or 0), sparse=sparse, dtype=str(ds.get_data_dtype(key)))


def _quiet_returnn_log() -> None:
    """RETURNN's datasets print progress to its log (stdout when uninitialised): send it to stderr,
    warnings and errors only, unless something set RETURNN's log up already."""
    log = importlib.import_module("returnn.log").log
    if not getattr(log, "initialized", False):
        log.initialize(logs=[logging.StreamHandler(sys.stderr)], verbosity=[2], propagate=True)


_registry.CLASS_RESOLVERS.append(returnn_dataset_class)
_registry.MORE_CLASS_NAMES.append(returnn_class_names)
