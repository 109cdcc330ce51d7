"""Dataset classes by RETURNN name and the ``init_dataset`` entry point.

``init_dataset(config["train"], name="train", batching=config.get("batching"))`` turns a
RETURNN dataset dict (or a comma-separated string of HDF files) into a :class:`Dataset`.
The generating datasets produce exactly RETURNN's data for the same arguments (see
``tests/data/test_datasets.py``), but as a fixed corpus whose lengths are known up front.
The ``extern_data`` checks are in :mod:`returnn_ray.data.extern_data`.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from returnn_ray.data.base import DataSpec, Dataset, OrderOptions
from returnn_ray.data.extern_data import convert_data_dims

# Re-exported (the ``as`` form): they lived here, and tests/model/test_network.py imports them from here.
from returnn_ray.data.extern_data import check_extern_data as check_extern_data
from returnn_ray.data.extern_data import extern_data_from_config as extern_data_from_config
from returnn_ray.data.hdf import HDFDataset
from returnn_ray.data.seq_list import SeqListFilteredDataset
from returnn_ray.data.seq_order import validate_seq_ordering
from returnn_ray.errors import ConfigError, DataError

__all__ = [
    "DATASET_CLASSES",
    "DummyDataset",
    "StaticDataset",
    "Task12AXDataset",
    "init_dataset",
]



def _order(seq_ordering, partition_epoch, fixed_random_seed, random_seed_offset) -> OrderOptions:
    return OrderOptions(
        seq_ordering=seq_ordering,
        partition_epoch=partition_epoch or 1,
        fixed_random_seed=fixed_random_seed,
        random_seed_offset=random_seed_offset or 0,
    )


def _generating_ordering(seq_ordering: str) -> str:
    # RETURNN's GeneratingDataset replaces "sorted"/"sorted_reverse" by "default" (it cannot
    # sort data it has not generated yet). dev/eval default to "sorted", so a Task12AX dev set
    # is read in corpus order by RETURNN; we do the same so that its batches match RETURNN's.
    return "default" if seq_ordering in ("sorted", "sorted_reverse") else seq_ordering


MAX_GENERATED_SEQS = 10_000_000
"""At most this many seqs in a generating dataset: every process that opens it (driver, workers) builds
a tag and a length per seq (about 80 bytes), 1 GB for 10M. ``num_seqs 1e12``, a typo, would grow until
the kernel kills processes machine-wide."""

MAX_GENERATED_SEQ_VALUES = 2**27
"""At most this many values (``seq_len * input_dim``) in one generated seq: 1 GB as float64."""


def _num_seqs(cls_name: str, name: str, num_seqs: Any) -> int:
    if isinstance(num_seqs, float) and num_seqs.is_integer():
        num_seqs = int(num_seqs)
    if isinstance(num_seqs, bool) or not isinstance(num_seqs, (int, np.integer)) or num_seqs < 1:
        raise ConfigError(
            f"dataset {name!r}: {cls_name} num_seqs must be a positive int, got {num_seqs!r} "
            f"(an endless generating dataset is not supported: the corpus must be finite)"
        )
    if num_seqs > MAX_GENERATED_SEQS:
        raise ConfigError(
            f"dataset {name!r}: {cls_name} num_seqs {num_seqs} is above the bound of {MAX_GENERATED_SEQS} "
            f"(every process keeps a tag and a length per generated seq in memory, about 80 bytes each); "
            f"lower num_seqs"
        )
    return int(num_seqs)


class Task12AXDataset(Dataset):
    """RETURNN's 12AX memory task: ``data`` one-hot ``[T, 9]`` over ``123ABCXYZ``, ``classes`` in {L=0, R=1}.

    Output R at an X or Y iff the last outer digit, the inner letter and this char spell
    ``1AX`` or ``2BY``. ``T`` is uniform in ``[10, 99]``.

    RETURNN regenerates the data every (full) epoch: seq ``i`` is drawn from
    ``RandomState((seed, i))`` with ``seed = fixed_random_seed`` if set, else the full-epoch
    number plus ``random_seed_offset``. We need a fixed corpus whose lengths are known before
    any batch is planned, so we always use the seed of full epoch 1: our corpus equals
    RETURNN's data of epoch 1 (of every epoch if ``fixed_random_seed`` is set). Only the seq
    length needs generating up front: it is the first draw after seeding.

    >>> ds = Task12AXDataset(num_seqs=3)
    >>> ds.seq_lens["data"].tolist(), ds.seq_tags
    ([84, 15, 65], ['seq-0', 'seq-1', 'seq-2'])
    """

    INPUT_CLASSES = "123ABCXYZ"
    OUTPUT_CLASSES = "LR"

    def __init__(
        self,
        num_seqs: int,
        *,
        name: str = "Task12AXDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
    ):
        self.name = name
        n = _num_seqs("Task12AXDataset", name, num_seqs)
        self.order = _order(_generating_ordering(seq_ordering), partition_epoch, fixed_random_seed, random_seed_offset)
        self.seed = fixed_random_seed if fixed_random_seed is not None else 1 + (random_seed_offset or 0)
        self.specs = {
            "data": DataSpec(dim=len(self.INPUT_CLASSES), sparse=False, dtype="float32"),
            "classes": DataSpec(dim=len(self.OUTPUT_CLASSES), sparse=True, dtype="int32"),
        }
        self.labels = {"data": list(self.INPUT_CLASSES), "classes": list(self.OUTPUT_CLASSES)}
        self.seq_tags = [f"seq-{i}" for i in range(n)]
        rng = np.random.RandomState()
        lens = np.empty(n, dtype=np.int64)
        for i in range(n):
            rng.seed((self.seed, i))
            lens[i] = rng.randint(10, 100)
        self.seq_lens = {"data": lens, "classes": lens}

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        rng = np.random.RandomState()
        out = []
        for i in indices:
            rng.seed((self.seed, int(i)))
            seq_len = rng.randint(10, 100)
            inputs = self._input_seq(rng, seq_len)
            data = np.zeros((seq_len, len(self.INPUT_CLASSES)), dtype=np.float32)
            data[np.arange(seq_len), inputs] = 1.0
            out.append({"data": data, "classes": np.array(self.output_seq(inputs), dtype=np.int32)})
        return out

    @classmethod
    def _input_seq(cls, rng: np.random.RandomState, seq_len: int) -> list[int]:
        # The same draws, in the same order, as RETURNN's Task12AXDataset.generate_input_seq.
        chars = cls.INPUT_CLASSES
        seq = str(rng.choice(["", "1", "2"]))
        while len(seq) < seq_len:
            if rng.uniform() < 0.5:
                seq += str(rng.choice(list("12")))
            if rng.uniform() < 0.9:
                seq += str(rng.choice(["AX", "BY"]))
            while rng.uniform() < 0.5:
                seq += str(rng.choice(list(chars)))
        return [chars.index(c) for c in seq[:seq_len]]

    @classmethod
    def output_seq(cls, input_seq: Sequence[int]) -> list[int]:
        """The L/R target of an input index seq.

        >>> Task12AXDataset.output_seq(["123ABCXYZ".index(c) for c in "1AX2AXBY"])
        [0, 0, 1, 0, 0, 0, 0, 1]
        """
        outer, inner, out = "", "", []
        for i in input_seq:
            c = cls.INPUT_CLASSES[i]
            o = 0
            if c in "12":
                outer = c
            elif c in "AB":
                inner = c
            elif c in "XY":
                if outer + inner + c in ("1AX", "2BY"):
                    o = 1
                inner = ""
            out.append(o)
        return out


class DummyDataset(Dataset):
    """RETURNN's DummyDataset: ``num_seqs`` seqs of ``seq_len`` frames, deterministic, no meaning.

    Seq ``i``: ``data[t, d] = ((k % input_max_value) + input_shift) * input_scale`` for
    ``k = i, i+1, ...`` row-major, then ``classes[t] = k % output_dim`` continuing the count.

    >>> ds = DummyDataset(input_dim=2, output_dim=3, num_seqs=2)
    >>> ds.get_seqs([1])[0]["classes"].tolist()
    [2, 0]
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int | Mapping[str, Any],
        num_seqs: int,
        seq_len: int = 2,
        input_max_value: float = 10.0,
        input_shift: float | None = None,
        input_scale: float | None = None,
        *,
        name: str = "DummyDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
    ):
        self.name = name
        n = _num_seqs("DummyDataset", name, num_seqs)
        dims = convert_data_dims(output_dim, what=f"dataset {name!r} output_dim")
        if "classes" not in dims:
            raise ConfigError(f"dataset {name!r}: DummyDataset output_dim needs a 'classes' entry, got {output_dim!r}")
        if not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
            raise ConfigError(f"dataset {name!r}: DummyDataset input_dim must be a positive int, got {input_dim!r}")
        if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ConfigError(f"dataset {name!r}: DummyDataset seq_len must be a positive int, got {seq_len!r}")
        if seq_len * input_dim > MAX_GENERATED_SEQ_VALUES:
            raise ConfigError(
                f"dataset {name!r}: DummyDataset seq_len {seq_len} * input_dim {input_dim} = {seq_len * input_dim} "
                f"values per seq is above the bound of {MAX_GENERATED_SEQ_VALUES} (1 GB per generated seq); lower them"
            )
        self.order = _order(_generating_ordering(seq_ordering), partition_epoch, fixed_random_seed, random_seed_offset)
        self.input_dim, self.num_classes, self.seq_len = int(input_dim), int(dims["classes"][0]), int(seq_len)
        self.input_max_value = float(input_max_value)
        if not self.input_max_value:  # RETURNN divides by it (a ZeroDivisionError there)
            raise ConfigError(f"dataset {name!r}: DummyDataset input_max_value must not be 0")
        self.input_shift = -self.input_max_value / 2.0 if input_shift is None else float(input_shift)
        self.input_scale = 1.0 / self.input_max_value if input_scale is None else float(input_scale)
        self.specs = {
            "data": DataSpec(dim=self.input_dim, sparse=False, dtype="float32"),
            "classes": DataSpec(dim=self.num_classes, sparse=True, dtype="int32"),
        }
        self.labels = {}
        self.seq_tags = [f"seq-{i}" for i in range(n)]
        lens = np.full(n, self.seq_len, dtype=np.int64)
        self.seq_lens = {"data": lens, "classes": lens}

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        out = []
        for i in indices:
            i1 = int(i)
            i2 = i1 + self.seq_len * self.input_dim
            k = np.arange(i1, i2, dtype=np.int64).astype(np.float64)  # float64 like RETURNN's Python floats
            data = ((k % self.input_max_value) + self.input_shift) * self.input_scale
            classes = np.arange(i2, i2 + self.seq_len, dtype=np.int64) % self.num_classes
            out.append(
                {
                    "data": data.astype(np.float32).reshape(self.seq_len, self.input_dim),
                    "classes": classes.astype(np.int32),
                }
            )
        return out


class StaticDataset(Dataset):
    """RETURNN's StaticDataset: the seqs given in memory, ``data=[{key: array}, ...]``.

    Keys are sorted with ``data`` first. A key's dim comes from ``output_dim`` (``input_dim``
    for ``data``), else the last axis of a ``[T, dim]`` array; a sparse (1-D integer) key
    without a given dim has ``dim == 0`` (unknown). Arrays are returned as given.

    >>> seq = {"data": np.zeros((3, 2), "float32"), "classes": np.array([1, 0, 1])}
    >>> ds = StaticDataset([seq], output_dim={"classes": 2})
    >>> ds.specs["classes"], ds.seq_tags
    (DataSpec(dim=2, sparse=True, dtype='int64'), ['seq-0'])
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, np.ndarray]],
        target_list: Sequence[str] | None = None,
        input_dim: int | None = None,
        output_dim: int | Mapping[str, Any] | None = None,
        *,
        name: str = "StaticDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
    ):
        self.name = name
        if not data:
            raise DataError(f"dataset {name!r}: StaticDataset got no seqs (data=[])")
        self.order = _order(seq_ordering, partition_epoch, fixed_random_seed, random_seed_offset)
        seqs = [{k: np.asarray(v) for k, v in seq.items()} for seq in data]
        first = seqs[0]
        keys = sorted(first)
        if "data" in keys:
            keys.remove("data")
            keys.insert(0, "data")
        for key in target_list or ():
            if key not in keys:
                raise ConfigError(f"dataset {name!r}: target_list names {key!r}, but the seqs have keys {keys}")
        dims = convert_data_dims(output_dim or {}, what=f"dataset {name!r} output_dim")
        if input_dim is not None:
            dims.setdefault("data", (int(input_dim), 2))
        for key in dims:
            if key not in first:
                raise ConfigError(f"dataset {name!r}: output_dim names {key!r}, but the seqs have keys {keys}")
        self.specs = {}
        for key in keys:
            arr = first[key]
            if arr.ndim < 1:
                raise DataError(
                    f"dataset {name!r}: StaticDataset key {key!r} must have a time axis, got shape {arr.shape}"
                )
            dim, ndim = dims.get(key, (arr.shape[-1] if arr.ndim >= 2 else 0, arr.ndim))
            if ndim != arr.ndim or (arr.ndim >= 2 and dim != arr.shape[-1]):
                raise DataError(
                    f"dataset {name!r}: StaticDataset key {key!r} has shape {arr.shape} but output_dim says "
                    f"dim {dim}, ndim {ndim}"
                )
            sparse = arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer)
            self.specs[key] = DataSpec(dim=int(dim), sparse=sparse, dtype=str(arr.dtype))
        for i, seq in enumerate(seqs):
            if sorted(seq) != sorted(keys):
                raise DataError(
                    f"dataset {name!r}: StaticDataset seq {i} has keys {sorted(seq)}, seq 0 has {sorted(keys)}"
                )
            for key in keys:
                if seq[key].ndim != first[key].ndim or seq[key].shape[1:] != first[key].shape[1:]:
                    raise DataError(
                        f"dataset {name!r}: StaticDataset seq {i} key {key!r} has shape {seq[key].shape}, "
                        f"seq 0 has {first[key].shape}; only the time axis may differ"
                    )
        self._seqs = [{k: seq[k] for k in keys} for seq in seqs]
        _check_static_values(name, self._seqs, self.specs)
        self.labels = {}
        self.seq_tags = [f"seq-{i}" for i in range(len(seqs))]
        self.seq_lens = {k: np.array([len(seq[k]) for seq in self._seqs], dtype=np.int64) for k in keys}

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [dict(self._seqs[int(i)]) for i in indices]


def _check_static_values(name: str, seqs: Sequence[Mapping[str, np.ndarray]], specs: Mapping[str, DataSpec]) -> None:
    """StaticDataset's seqs are in memory: float values must be finite, sparse labels in ``[0, dim)``."""
    for key, spec in specs.items():
        # [T, values]; not reshape(T, -1), which a seq of 0 frames cannot take
        arr = np.concatenate([seq[key].reshape(len(seq[key]), int(np.prod(seq[key].shape[1:]))) for seq in seqs])
        if not arr.size:
            continue
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr)
            what = "a non-finite value"
        elif spec.sparse and np.issubdtype(arr.dtype, np.integer):
            bad = (arr < 0) | (arr >= spec.dim) if spec.dim > 1 else arr < 0
            what = f"a label outside [0, {spec.dim})" if spec.dim > 1 else "a negative label"
        else:
            continue
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            seq = int(np.searchsorted(np.cumsum([len(s[key]) for s in seqs]), row, side="right"))
            value = arr[row][bad[row]][0]
            raise DataError(f"dataset {name!r}: StaticDataset seq {seq} key {key!r} has {what} ({value}); fix the data")


DATASET_CLASSES: dict[str, type[Dataset]] = {
    "HDFDataset": HDFDataset,
    "Task12AXDataset": Task12AXDataset,
    "DummyDataset": DummyDataset,
    "StaticDataset": StaticDataset,
}
"""The native dataset classes a config may name in ``"class"``, by RETURNN's class names
(``MetaDataset`` is added by :mod:`returnn_ray.data.meta`, which the package imports)."""

CLASS_RESOLVERS: list[Callable[[str, str], "type[Dataset] | None"]] = []
"""Tried in turn for a class name not in :data:`DATASET_CLASSES` (``(class_name, config key)``):
:mod:`returnn_ray.data.returnn_generic` adds RETURNN's own classes here."""

MORE_CLASS_NAMES: list[Callable[[], list[str]]] = []
"""Further known class names, for the unknown-class message."""

# RETURNN dataset kwargs that change nothing here, at these values. Any other value is an
# error rather than silently ignored (chunking/window would change what the model sees).
_NO_EFFECT_VALUES: dict[str, tuple] = {
    "window": (None, 0, 1),
    "context_window": (None,),
    "chunking": (None, "", "0", 0),  # RETURNN's dev/eval default is chunking="0"
    "shuffle_frames_of_nseqs": (None, 0),
    "min_chunk_size": (None, 0),
    "chunking_variance": (None, 0, 0.0),
}
_ALWAYS_IGNORED = (
    "estimated_num_seqs",  # progress reporting only; we know num_seqs up front
)


def init_dataset(
    spec: Mapping[str, Any] | str | Callable[[], Any] | Dataset, *, name: str, batching: str | None = None
) -> Dataset:
    """Build the dataset of config key ``name`` (``train``, ``dev``, ``eval``, ...).

    :param spec: a dataset dict with ``class``, a comma-separated string of HDF files, a
        ``"ClassName:key=value,..."`` string, or a function returning one of these
    :param name: the config key; names the dataset in errors and picks the default order
    :param batching: the config's global ``batching`` (default ``seq_ordering`` for ``train``)

    The ``seq_ordering`` a dict does not set is, as in RETURNN's ``__main__.load_data``:
    ``batching`` or ``"default"`` for ``train``; ``"sorted"`` for ``dev`` and ``eval`` (RETURNN
    gives them ``seq_ordering="sorted"`` before the global ``batching`` could apply); and
    ``"default"`` for any other name (RETURNN's torch engine builds ``eval_datasets``
    entries with no defaults).

    >>> spec = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4}
    >>> init_dataset(spec, name="dev").order.seq_ordering  # a generating dataset keeps its order
    'default'
    >>> init_dataset({"class": "DumyDataset"}, name="train")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: dataset 'train': unknown class 'DumyDataset' (did you mean 'DummyDataset'?); native: DummyDataset, HDFDataset, MetaDataset, StaticDataset, Task12AXDataset; through RETURNN's implementation: ...
    """
    if isinstance(spec, Dataset):
        return spec  # already built (RETURNN accepts dataset objects too)
    if callable(spec) and not isinstance(spec, (str, Mapping, type)):
        spec = spec()
    if isinstance(spec, str):
        spec = _parse_str_spec(spec, name)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"dataset {name!r} must be a dict with 'class' or a string of HDF files, got {type(spec).__name__}"
        )
    kwargs = dict(spec)
    cls = _dataset_class(kwargs.pop("class", None), name)
    kwargs.pop("name", None)  # the config key names the dataset (errors, score keys)
    for key, allowed in _NO_EFFECT_VALUES.items():
        if key in kwargs:
            value = kwargs.pop(key)
            if value not in allowed:
                raise ConfigError(f"dataset {name!r}: {key}={value!r} is not supported by returnn_ray; remove it")
    for key in _ALWAYS_IGNORED:
        kwargs.pop(key, None)
    seq_list_filter_file = kwargs.pop("seq_list_filter_file", None)
    if kwargs.get("seq_ordering") is None:
        kwargs["seq_ordering"] = _default_seq_ordering(name, batching)
    if not isinstance(kwargs["seq_ordering"], str):
        raise ConfigError(f"dataset {name!r}: seq_ordering must be a string, got {kwargs['seq_ordering']!r}")
    try:
        validate_seq_ordering(kwargs["seq_ordering"])
    except ConfigError as exc:
        raise ConfigError(f"dataset {name!r}: {exc}") from None
    _check_order_kwargs(kwargs, name)
    _check_kwargs(cls, kwargs, name)
    dataset = cls(name=name, **kwargs)
    if seq_list_filter_file:
        dataset = SeqListFilteredDataset(dataset, os.fspath(seq_list_filter_file))
    if dataset.num_seqs == 0:
        raise DataError(f"dataset {name!r} ({cls.__name__}) has no seqs; check its files or num_seqs")
    return dataset


def _check_order_kwargs(kwargs: Mapping[str, Any], name: str) -> None:
    """The common order options must be ints (or None) in range before any epoch is planned: a numpy
    seed is in ``[0, 2**32)``, and epoch 1's is ``fixed_random_seed``, else ``1 + random_seed_offset``."""
    for key, low, high in (("partition_epoch", 1, None), ("fixed_random_seed", 0, 2**32 - 1),
                           ("random_seed_offset", -1, 2**31)):
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= (high or value):
            need = f"an int >= {low}" if high is None else f"an int in [{low}, {high}] (a numpy random seed)"
            raise ConfigError(f"dataset {name!r}: {key} must be {need}, got {value!r}")


def _default_seq_ordering(name: str, batching: str | None) -> str:
    if name == "train":
        return batching or "default"
    if name in ("dev", "eval"):
        return "sorted"
    return "default"


def _dataset_class(class_name: Any, name: str) -> type[Dataset]:
    known = sorted(DATASET_CLASSES)
    if class_name is None:
        raise ConfigError(f"dataset {name!r} has no 'class'; set one of: {', '.join(known)}")
    if isinstance(class_name, type):
        class_name = class_name.__name__  # RETURNN also accepts the class object itself
    cls = DATASET_CLASSES.get(class_name)
    if cls is None and isinstance(class_name, str):
        cls = next(filter(None, (resolve(class_name, name) for resolve in CLASS_RESOLVERS)), None)
    if cls is None:
        more = sorted({n for names in MORE_CLASS_NAMES for n in names()} - set(known))
        close = difflib.get_close_matches(str(class_name), known + more, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        via = f"; through RETURNN's implementation: {', '.join(more)}" if more else ""
        raise ConfigError(f"dataset {name!r}: unknown class {class_name!r}{hint}; native: {', '.join(known)}{via}")
    return cls


def _check_kwargs(cls: type, kwargs: Mapping[str, Any], name: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "name")]
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())  # RETURNN's class checks its own
    for key in kwargs if not open_kwargs else ():
        if key not in params or key in ("self", "name"):
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"dataset {name!r}: {cls.__name__} does not take {key!r}{hint}; it takes: {', '.join(accepted)}"
            )
    for p in params.values():
        required = p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        if required and p.name != "self" and p.name not in kwargs:
            raise ConfigError(f"dataset {name!r}: {cls.__name__} needs {p.name!r}")


def _parse_str_spec(text: str, name: str) -> dict[str, Any]:
    """RETURNN's string forms: ``"{...}"`` (a dict literal), ``"Class:k=v,..."``, else HDF files."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(f"dataset {name!r}: cannot parse {text!r} as a dict literal ({exc})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"dataset {name!r}: {text!r} is not a dict")
        return value
    head, sep, rest = text.partition(":")
    if sep and head.isidentifier() and head not in ("sprint", "config"):
        try:
            call = ast.parse(f"dict({rest})", mode="eval").body
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
            if call.args or None in kwargs:
                raise ValueError("only key=value pairs are allowed")
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(f"dataset {name!r}: cannot parse the arguments in {text!r} ({exc})") from None
        return {"class": head, **kwargs}
    if sep and head in ("sprint", "config"):
        raise ConfigError(f"dataset {name!r}: {head}:... dataset strings are not supported; use a dataset dict")
    files = [f for f in text.split(",") if f]
    if not files:
        raise ConfigError(f"dataset {name!r} is an empty string; give HDF files or a dataset dict")
    return {"class": "HDFDataset", "files": files}
