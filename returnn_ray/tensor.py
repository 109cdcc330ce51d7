"""``Tensor``, ``Dim`` and ``TensorDict``: the part of RETURNN's ``returnn.tensor`` that torch-style configs touch.

A compatibility surface, not a tensor library: a config written for RETURNN's torch backend
(``from returnn.tensor import TensorDict``) runs after changing that import to
``from returnn_ray.tensor import TensorDict``. What such configs use, and all this module has:

- ``extern_data[key]`` (a :class:`TensorDict` lookup) giving a :class:`Tensor`;
- ``tensor.raw_tensor`` (the padded ``torch.Tensor`` ``[B, T, ...]``), ``tensor.dims``
  (``(batch_dim, time_dim[, feature_dim])``), ``dtype``, ``sparse_dim`` / ``sparse`` / ``dim``,
  ``feature_dim``, ``batch_shape``, ``get_sequence_lengths()``;
- ``dim.dyn_size_ext.raw_tensor``: the int32 seq lengths ``[B]`` of a dynamic dim, readable on
  ``extern_data`` and assignable on ``rf.get_run_ctx().expected_outputs`` (forward).

Dims compare by identity, like RETURNN's within one step. Every call of
:func:`extern_data_from_batch` and :func:`tensor_dict_from_config` makes fresh time dims, so
nothing of one step (or one thread) leaks into the next.

>>> import torch
>>> td = TensorDict({"data": Tensor("data", dims=(batch_dim, Dim(None, "time"), Dim(3, "feat")),
...                                 raw_tensor=torch.zeros(2, 5, 3))})
>>> td["data"].dims[1].is_dynamic(), td["data"].dim, td["data"].dtype
(True, 3, 'float32')
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from returnn_ray.errors import ConfigError, DataError

__all__ = [
    "Dim",
    "Tensor",
    "TensorDict",
    "batch_dim",
    "extern_data_from_batch",
    "tensor_dict_from_config",
]


class Dim:
    """One axis: static (``dimension`` an int) or dynamic (``dimension`` None, sizes in ``dyn_size_ext``).

    A dynamic dim made here gets a ``dyn_size_ext``: a :class:`Tensor` over ``(batch_dim,)``
    whose ``raw_tensor`` holds the seq lengths (None until known; a forward_step may assign it).
    """

    def __init__(self, dimension: int | None, name: str | None = None, *, dyn_size_ext: Tensor | None = None):
        if dimension is not None and (not isinstance(dimension, (int, np.integer)) or dimension < 0):
            raise ConfigError(f"Dim {name!r}: dimension must be an int >= 0 or None, got {dimension!r}")
        self.dimension = None if dimension is None else int(dimension)
        self.name = name
        if dyn_size_ext is None and dimension is None:
            dyn_size_ext = Tensor(f"{name or 'dim'}:size", dims=(batch_dim,), dtype="int32")
        self.dyn_size_ext = dyn_size_ext

    @property
    def size(self) -> int | None:
        """RETURNN's alias of :attr:`dimension`."""
        return self.dimension

    def is_batch_dim(self) -> bool:
        """Whether this is :data:`batch_dim`."""
        return self is batch_dim

    def is_dynamic(self) -> bool:
        """Dynamic: no static size (the batch dim counts as dynamic, as in RETURNN)."""
        return self.dimension is None

    def is_static(self) -> bool:
        """Static: a fixed size."""
        return self.dimension is not None

    def is_dim_known(self) -> bool:
        """Static, or dynamic with its sizes set."""
        return self.is_static() or (self.dyn_size_ext is not None and self.dyn_size_ext.raw_tensor is not None)

    def __repr__(self) -> str:
        return f"Dim({self.name!r}, {self.dimension if self.dimension is not None else '?'})"


def _dim_without_sizes(name: str) -> Dim:
    """A dynamic dim with no per-seq sizes: the batch dim, or the classes of a sparse key of unknown dim."""
    dim = Dim.__new__(Dim)
    dim.dimension, dim.name, dim.dyn_size_ext = None, name, None
    return dim


batch_dim = _dim_without_sizes("batch")
"""The batch axis, first in every tensor made here. Its size is the raw tensor's ``shape[0]``."""


def _dtype_name(dtype: Any) -> str:
    return str(dtype).split(".")[-1]


class Tensor:
    """A raw ``torch.Tensor`` (or ``None``, a template) with named dims, like RETURNN's ``Tensor``."""

    def __init__(
        self,
        name: str,
        dims: Sequence[Dim] = (),
        dtype: str | None = None,
        *,
        sparse_dim: Dim | None = None,
        raw_tensor: Any = None,
        available_for_inference: bool = True,
    ):
        self.name = name
        self.dims: tuple[Dim, ...] = tuple(dims)
        if dtype is None:
            dtype = _dtype_name(raw_tensor.dtype) if raw_tensor is not None else ("int32" if sparse_dim else "float32")
        self.dtype = dtype
        self.sparse_dim = sparse_dim
        self.available_for_inference = available_for_inference
        self.raw_tensor = raw_tensor

    @property
    def sparse(self) -> bool:
        """Class indices (``sparse_dim`` set) rather than features."""
        return self.sparse_dim is not None

    @property
    def feature_dim(self) -> Dim | None:
        """The last dim of a dense tensor with a static last dim after batch and time, else None."""
        if self.sparse or len(self.dims) < 2 or self.dims[-1].is_dynamic():
            return None
        return self.dims[-1]

    @property
    def dim(self) -> int | None:
        """Number of classes (sparse) or the feature dimension (dense), as RETURNN's ``Tensor.dim``."""
        if self.sparse_dim is not None:
            return self.sparse_dim.dimension
        feature = self.feature_dim
        return feature.dimension if feature is not None else None

    @property
    def batch_ndim(self) -> int:
        """Number of dims, batch included."""
        return len(self.dims)

    @property
    def batch_shape(self) -> tuple[int | None, ...]:
        """Static sizes, None for dynamic dims (batch included)."""
        return tuple(d.dimension for d in self.dims)

    def get_sequence_lengths(self) -> torch.Tensor:
        """The seq lengths ``[B]`` of the first dynamic dim after the batch dim."""
        for d in self.dims:
            if d is not batch_dim and d.is_dynamic() and d.dyn_size_ext is not None:
                if d.dyn_size_ext.raw_tensor is None:
                    break
                return d.dyn_size_ext.raw_tensor
        raise DataError(f"tensor {self.name!r} {self.dims} has no dynamic dim with known seq lengths")

    def __repr__(self) -> str:
        sparse = f", sparse_dim={self.sparse_dim}" if self.sparse_dim is not None else ""
        return f"Tensor({self.name!r}, {list(self.dims)}, dtype={self.dtype!r}{sparse})"


class TensorDict:
    """Data key -> :class:`Tensor`. ``.data`` is the plain dict, as in RETURNN."""

    def __init__(self, data: Mapping[str, Tensor] | None = None):
        self.data: dict[str, Tensor] = dict(data or {})

    def __getitem__(self, key: str) -> Tensor:
        try:
            return self.data[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in this TensorDict; it has {sorted(self.data)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def keys(self):
        """The keys, like a dict's."""
        return self.data.keys()

    def values(self):
        """The Tensors, like a dict's."""
        return self.data.values()

    def items(self):
        """``(key, Tensor)`` pairs, like a dict's."""
        return self.data.items()

    def as_raw_tensor_dict(self) -> dict[str, Any]:
        """``{key: raw_tensor}`` plus ``{key}:seq_len`` for each key's first dynamic dim with known sizes."""
        out = {}
        for key, value in self.data.items():
            out[key] = value.raw_tensor
            for d in value.dims:
                if d is not batch_dim and d.dyn_size_ext is not None and d.dyn_size_ext.raw_tensor is not None:
                    out[f"{key}:seq_len"] = d.dyn_size_ext.raw_tensor
                    break
        return out

    def __repr__(self) -> str:
        return f"TensorDict({self.data!r})"


def extern_data_from_batch(
    batch: Any,
    specs: Mapping[str, Any] | None = None,
    *,
    seq_tags: Sequence[str] | None = None,
) -> TensorDict:
    """Wrap a padded batch as RETURNN's ``extern_data``, without copying any tensor.

    :param batch: a :class:`returnn_ray.data.ray_data.Batch` (``data[key]`` padded ``[B, T, ...]``,
        ``lens[key]`` int32 ``[B]``), or anything with such ``data`` and ``lens`` dicts
    :param specs: key -> :class:`returnn_ray.data.base.DataSpec` (``dim``, ``sparse``): which keys
        to include and their dims. None: every key of ``batch.data``, sparse when it has no feature axis.
    :param seq_tags: if given, also ``extern_data["seq_tag"]`` (a numpy string array ``[B]``), as RETURNN has.

    Each key gets its own time dim, whose ``dyn_size_ext.raw_tensor`` is ``batch.lens[key]``
    as it is (RETURNN keeps the lengths on the CPU, where ``pack_padded_sequence`` needs them;
    move only ``batch.data`` to the device).

    >>> import torch
    >>> from types import SimpleNamespace
    >>> lens = torch.tensor([4, 2], dtype=torch.int32)
    >>> b = SimpleNamespace(data={"data": torch.zeros(2, 4, 9), "classes": torch.zeros(2, 4, dtype=torch.int32)},
    ...                     lens={"data": lens, "classes": lens})
    >>> ed = extern_data_from_batch(b)
    >>> ed["data"].dims[1].dyn_size_ext.raw_tensor.tolist(), ed["data"].dim, ed["classes"].sparse, ed["classes"].dtype
    ([4, 2], 9, True, 'int32')
    """
    keys = list(specs) if specs is not None else list(batch.data)
    out = TensorDict()
    for key in keys:
        if key not in batch.data:
            raise DataError(f"extern_data key {key!r} is not in the batch; the dataset provides {sorted(batch.data)}")
        raw = batch.data[key]
        spec = specs[key] if specs is not None else None
        sparse = spec.sparse if spec is not None else raw.dim() == 2
        if raw.dim() < 2 or (sparse and raw.dim() != 2):
            raise DataError(
                f"extern_data[{key!r}]: expected a padded batch [B, T{'' if sparse else ', ...'}], "
                f"got shape {tuple(raw.shape)}"
            )
        if spec is not None and not sparse and raw.shape[-1] != spec.dim:
            raise DataError(f"extern_data[{key!r}]: feature dim is {raw.shape[-1]}, extern_data says {spec.dim}")
        time = Dim(None, f"{key}:time")
        time.dyn_size_ext.raw_tensor = batch.lens[key]
        time.dyn_size_ext.dtype = _dtype_name(batch.lens[key].dtype)
        dims = [batch_dim, time] + [
            Dim(int(n), f"{key}:feature" if i == raw.dim() - 3 else f"{key}:dim{i + 2}")
            for i, n in enumerate(raw.shape[2:])
        ]
        sparse_dim = None
        if sparse:
            name = f"{key}:classes"
            sparse_dim = Dim(spec.dim, name) if spec is not None else _dim_without_sizes(name)
        out.data[key] = Tensor(key, dims=dims, dtype=_dtype_name(raw.dtype), sparse_dim=sparse_dim, raw_tensor=raw)
    if seq_tags is not None:
        out.data["seq_tag"] = Tensor("seq_tag", dims=(batch_dim,), dtype="string", raw_tensor=np.asarray(seq_tags))
    return out


_TENSOR_OPTS = {"dim", "shape", "sparse", "sparse_dim", "dtype", "dims", "dim_tags", "available_for_inference", "vocab"}


def tensor_dict_from_config(opts: Mapping[str, Any], *, what: str = "model_outputs") -> TensorDict:
    """Templates (no raw tensors) from a config dict like ``model_outputs = {"output": {"dim": 2}}``.

    Entry options, as RETURNN reads them: ``dim``, ``shape`` (without the batch axis; None is a
    dynamic axis; default ``(None, dim)`` dense, ``(None,)`` sparse), ``sparse`` / ``sparse_dim``,
    ``dtype``, or ``dims`` (a list of :class:`Dim`, batch included). Dynamic dims are fresh per
    call, with an empty ``dyn_size_ext`` a forward_step fills in.

    >>> td = tensor_dict_from_config({"output": {"dim": 2}})
    >>> out = td["output"]
    >>> out.dims[0] is batch_dim, out.dims[1].dyn_size_ext.raw_tensor, out.dims[2].dimension, out.dtype
    (True, None, 2, 'float32')
    """
    if not isinstance(opts, Mapping):
        raise ConfigError(f"{what} must be a dict of name -> options, got {type(opts).__name__}")
    out = TensorDict()
    for name, entry in opts.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{what}[{name!r}] must be a dict like {{'dim': 2}}, got {entry!r}")
        unknown = set(entry) - _TENSOR_OPTS
        if unknown:
            raise ConfigError(
                f"{what}[{name!r}]: unsupported option(s) {sorted(unknown)}; supported: {sorted(_TENSOR_OPTS)}"
            )
        sparse_dim = entry.get("sparse_dim")
        sparse = bool(entry.get("sparse", False)) or sparse_dim is not None
        dim = entry.get("dim")
        if isinstance(dim, Dim):
            dim = dim.dimension
        if not sparse and dim is None and all(entry.get(k) is None for k in ("shape", "dims", "dim_tags")):
            raise ConfigError(f"{what}[{name!r}]: a dense entry needs 'dim' (the feature dimension), e.g. {{'dim': 2}}")
        dims = entry.get("dims") or entry.get("dim_tags")
        if dims is not None:
            if not all(isinstance(d, Dim) for d in dims):
                raise ConfigError(f"{what}[{name!r}]: 'dims' must be a list of returnn_ray.tensor.Dim, got {dims!r}")
            for d in dims:  # a config's own Dim objects live across steps: forget last step's sizes
                if d is not batch_dim and d.dyn_size_ext is not None:
                    d.dyn_size_ext.raw_tensor = None
            dims = tuple(dims)
        else:
            shape = entry.get("shape")
            if shape is None:
                shape = (None,) if sparse else (None, dim)
            dims = (batch_dim,) + tuple(
                (
                    Dim(None, f"{name}:time" if i == 0 else f"{name}:dyn{i}")
                    if n is None
                    else Dim(int(n), f"{name}:dim{i}")
                )
                for i, n in enumerate(shape)
            )
        if sparse and not isinstance(sparse_dim, Dim):
            num_classes = sparse_dim if isinstance(sparse_dim, int) else dim
            if num_classes is None:
                raise ConfigError(f"{what}[{name!r}]: a sparse entry needs 'dim' (the number of classes)")
            sparse_dim = Dim(num_classes, f"{name}:classes")
        if not sparse and dim is not None and dims[-1].dimension != dim:
            raise ConfigError(f"{what}[{name!r}]: dim {dim} does not match the last axis of its shape/dims {dims}")
        dtype = entry.get("dtype") or ("int32" if sparse else "float32")
        out.data[name] = Tensor(
            name,
            dims=dims,
            dtype=dtype,
            sparse_dim=sparse_dim if sparse else None,
            available_for_inference=entry.get("available_for_inference", True),
        )
    return out
