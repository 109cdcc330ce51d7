"""The config's ``extern_data`` (or old ``num_inputs``/``num_outputs``) as DataSpecs, and the check
that a dataset provides them.

RETURNN declares the model's inputs and targets in ``extern_data``: a dict of ``Data`` kwargs per
data key. Only each key's feature dim and sparsity matter here; a dataset whose keys disagree is
caught by :func:`check_extern_data` before any worker starts, not as a shape error in the model.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from returnn_ray.data.base import DataSpec, Dataset
from returnn_ray.errors import ConfigError, DataError

__all__ = ["check_extern_data", "convert_data_dims", "extern_data_from_config"]


def convert_data_dims(data_dims: int | Mapping[str, Any], *, what: str, target: str = "classes") -> dict[str, tuple]:
    """RETURNN's ``convert_data_dims``: ``num_outputs`` style dims to ``{key: (dim, ndim)}``.

    Also reads the ``output_dim`` of DummyDataset and StaticDataset. An int value is sparse
    (ndim 1), except for ``data``; a dict value is read like an ``extern_data`` entry.

    >>> convert_data_dims({"classes": 5, "data": 9, "feats": [4, 2]}, what="num_outputs")
    {'classes': (5, 1), 'data': (9, 2), 'feats': (4, 2)}
    """
    if isinstance(data_dims, (int, np.integer)):
        data_dims = {target: int(data_dims)}
    if not isinstance(data_dims, Mapping):
        raise ConfigError(f"{what} must be an int or a dict, got {data_dims!r}")
    out = {}
    for key, value in data_dims.items():
        if isinstance(value, (int, np.integer)):
            value = (int(value), 2 if key == "data" else 1)
        if isinstance(value, Mapping):
            dim, sparse = _extern_entry(key, value, what=what)
            value = (dim, 1 if sparse else 2)
        if not isinstance(value, (tuple, list)) or len(value) != 2 or int(value[1]) < 1:
            raise ConfigError(f"{what}: entry {key!r} must be dim or [dim, ndim] with ndim >= 1, got {value!r}")
        out[key] = (None if value[0] is None else int(value[0]), int(value[1]))
    return out


def _dim_value(dim: Any) -> int | None:
    """An int from an int or a RETURNN ``Dim`` (its ``dimension``); None if unknown."""
    if dim is None or isinstance(dim, (int, np.integer)):
        return None if dim is None else int(dim)
    value = getattr(dim, "dimension", None)
    return int(value) if value is not None else None


def _extern_entry(key: str, opts: Any, *, what: str = "extern_data") -> tuple[int | None, bool]:
    """``(dim, sparse)`` of one ``extern_data`` entry (a dict of Data kwargs or ``[dim, ndim]``)."""
    if isinstance(opts, (tuple, list)) and len(opts) == 2:
        return _dim_value(opts[0]), int(opts[1]) <= 1
    if not isinstance(opts, Mapping):
        raise ConfigError(f"{what}[{key!r}] must be a dict like {{'dim': 40, 'sparse': False}}, got {opts!r}")
    sparse_dim = opts.get("sparse_dim")
    sparse = bool(opts.get("sparse", False)) or sparse_dim is not None
    dim = _dim_value(opts.get("dim")) if opts.get("dim") is not None else _dim_value(sparse_dim)
    if dim is None and not sparse:
        shape = opts.get("shape")
        dims = opts.get("dims") or opts.get("dim_tags")
        if shape:
            dim = _dim_value(shape[-1])
        elif dims:
            dim = _dim_value(dims[-1])
    return dim, sparse


def extern_data_from_config(
    extern_data: Mapping[str, Any] | None = None,
    num_inputs: int | None = None,
    num_outputs: int | Mapping[str, Any] | None = None,
    *,
    target: str = "classes",
) -> dict[str, DataSpec]:
    """The config's data keys as DataSpecs: from ``extern_data``, else old-style ``num_inputs``/``num_outputs``.

    ``num_outputs`` is an int (the ``classes`` dim) or a dict like RETURNN's
    ``{"classes": [dim, ndim], "data": [dim, 2]}`` (an int value means sparse, except for
    ``data``). ``num_inputs`` gives dense ``data`` unless ``num_outputs`` has ``data``.
    Empty when the config sets none of these (the caller may then take the train data's specs).

    >>> extern_data_from_config(num_inputs=9, num_outputs=2)
    {'classes': DataSpec(dim=2, sparse=True, dtype='int32'), 'data': DataSpec(dim=9, sparse=False, dtype='float32')}
    >>> extern_data_from_config({"data": {"dim": 40}, "classes": {"dim": 5, "sparse": True}})["classes"]
    DataSpec(dim=5, sparse=True, dtype='int32')
    """
    if extern_data is not None:
        if not isinstance(extern_data, Mapping):
            raise ConfigError(f"extern_data must be a dict of data key -> options, got {type(extern_data).__name__}")
        out = {}
        for key, opts in extern_data.items():
            dim, sparse = _extern_entry(key, opts)
            if dim is None:
                raise ConfigError(
                    f"extern_data[{key!r}] has no dim; set 'dim' (or a 'shape' ending in the feature dim)"
                )
            dtype = opts.get("dtype") if isinstance(opts, Mapping) else None
            out[key] = DataSpec(dim=dim, sparse=sparse, dtype=dtype or ("int32" if sparse else "float32"))
        return out
    dims = convert_data_dims(num_outputs, what="num_outputs", target=target) if num_outputs is not None else {}
    if num_inputs is not None and "data" not in dims:
        dims["data"] = (int(num_inputs), 2)
    out = {}
    for key, (dim, ndim) in dims.items():
        if dim is None:
            raise ConfigError(f"num_outputs[{key!r}] has no dim")
        sparse = ndim <= 1
        out[key] = DataSpec(dim=dim, sparse=sparse, dtype="int32" if sparse else "float32")
    return out


def check_extern_data(
    dataset: Dataset, extern_data: Mapping[str, Any], *, keys: Sequence[str] | None = None
) -> None:
    """Raise DataError unless ``dataset`` provides ``extern_data``'s keys with the same dim and sparsity.

    :param extern_data: the config's ``extern_data`` (Data kwargs dicts or DataSpecs)
    :param keys: check only these keys (e.g. the inputs, for forwarding); default all

    A dataset dim of 0 means unknown (a StaticDataset sparse key without ``output_dim``) and is
    not compared.
    """
    for key in keys if keys is not None else list(extern_data):
        opts = extern_data[key]
        dim, sparse = (opts.dim, opts.sparse) if isinstance(opts, DataSpec) else _extern_entry(key, opts)
        got = dataset.specs.get(key)
        if got is None:
            raise DataError(
                f"dataset {dataset.name!r} has no key {key!r} that extern_data declares "
                f"(it has {list(dataset.specs)}); fix extern_data or the dataset"
            )
        if got.sparse != sparse:
            kind = {True: "sparse", False: "dense"}
            raise DataError(
                f"dataset {dataset.name!r} key {key!r} is {kind[got.sparse]} but extern_data says {kind[sparse]} "
                f"(fix extern_data or the data file)"
            )
        if dim is not None and got.dim and got.dim != dim:
            raise DataError(
                f"dataset {dataset.name!r} key {key!r} has dim {got.dim} but extern_data says {dim} "
                f"(fix extern_data or the data file)"
            )
