"""A config's ``forward_callback`` (RETURNN's ``ForwardCallbackIface``), as RETURNN's torch engine calls it.

RETURNN's ``Engine.forward_with_callback`` runs in one process: ``init(model=...)``, then
``process_seq(seq_tag=..., outputs=...)`` for every seq in the dataset's order (longest first,
``sorted_reverse``, where the dataset can sort and ``sort_dataset`` is on), then ``finish()``.
``outputs`` is a ``TensorDict`` of the marked outputs of that seq without the batch axis: numpy
raw tensors, padding cut off, and each dim whose sizes depend on the batch replaced by a copy
with that seq's size.

Here the actors compute the batches in parallel; each returns its seqs' outputs already cut per
seq (:func:`callback_payload`) into the run's parts directory. The driver calls the callback
once the parts are complete, over the parts in plan order (:func:`run_callback`): every seq
exactly once, in RETURNN's order, also after a resumed run (a rerun calls a new callback over
all seqs again). No output file is written, as in RETURNN.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from returnn.forward_iface import ForwardCallbackIface
from returnn.tensor import Dim, Tensor, TensorDict

from returnn_ray.config import Settings
from returnn_ray.data.base import Dataset
from returnn_ray.errors import ConfigError
from returnn_ray.model import torch_engine

__all__ = ["callback_payload", "forward_order", "load_callback", "load_part", "run_callback"]


def load_callback(settings: Settings, *, search: bool) -> ForwardCallbackIface | None:
    """The config's callback as RETURNN's ``__main__`` makes it: a class (or any callable) is called first."""
    callback = settings.forward.forward_callback
    if search or callback is None:
        return None
    if settings.training.network is not None:
        raise ConfigError(
            "forward_callback needs a torch-style config (get_model and forward_step marking outputs);"
            " with a network dict, forward writes output_file"
        )
    if callable(callback):
        callback = torch_engine.call_user(callback)
    if not isinstance(callback, ForwardCallbackIface):
        raise ConfigError(
            f"forward_callback must be a returnn.forward_iface.ForwardCallbackIface (instance or class),"
            f" got {type(callback).__name__}"
        )
    return callback


def forward_order(dataset: Dataset, settings: Settings) -> np.ndarray:
    """The seq order of RETURNN's ``forward_with_callback``: ``sorted_reverse`` where the dataset
    can sort and ``sort_dataset`` is on (set on the dataset, as RETURNN does), else the configured one."""
    if settings.forward.sort_dataset and dataset.supports_sorting and dataset.order.seq_ordering != "sorted_reverse":
        inner = dataset
        while inner is not None:  # a seq_list_filter_file wrapper orders through its inner dataset
            inner.order = dataclasses.replace(inner.order, seq_ordering="sorted_reverse")
            inner = getattr(inner, "inner", None)
    return dataset.seq_order_for_epoch(1)


def callback_payload(indices: np.ndarray, outputs: TensorDict, batch_dim: Dim) -> bytes:
    """One batch's outputs per seq (RETURNN's ``_get_tensor_wo_batch_numpy``) as ``.npz`` bytes:
    ``seq_idx``, ``<name>:<b>`` per output and seq, and ``meta`` (JSON: each output's dims, dtype)."""
    arrays: dict[str, np.ndarray] = {"seq_idx": np.asarray(indices, dtype=np.int64)}
    meta: dict[str, Any] = {}
    for name, x in outputs.data.items():
        if batch_dim not in x.dims:
            raise ConfigError(f"forward_callback: model output {name!r} has no batch axis ({x}); mark per-batch outputs")
        if x.dims.index(batch_dim) != 0:
            x = x.copy_move_axis(x.dims.index(batch_dim), 0)
        dims = x.dims[1:]
        per_seq = [d.dyn_size_ext is not None and batch_dim in d.dyn_size_ext.dims for d in dims]
        meta[name] = {
            "dims": [{"name": d.name, "size": d.dimension, "per_seq": p} for d, p in zip(dims, per_seq)],
            "dtype": x.dtype,
            "sparse_dim": [x.sparse_dim.name, x.sparse_dim.dimension] if x.sparse_dim is not None else None,
        }
        raw = _numpy(x.raw_tensor)
        sizes = [_numpy(d.dyn_size_ext.copy_move_axis(d.dyn_size_ext.dims.index(batch_dim), 0).raw_tensor)
                 if p else None for d, p in zip(dims, per_seq)]
        for b in range(len(indices)):
            cut = tuple(slice(None, int(s.reshape(len(indices), -1)[b, 0])) if s is not None else slice(None) for s in sizes)
            arrays[f"{name}:{b}"] = raw[b][cut] if raw.ndim > 1 else raw[b : b + 1].reshape(())
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _numpy(raw: Any) -> np.ndarray:
    """A raw tensor as numpy, bfloat16 as float32 (as RETURNN does for the callback)."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu()
        return (raw.float() if raw.dtype == torch.bfloat16 else raw).numpy()
    return np.asarray(raw)


def load_part(payload: bytes) -> dict[str, Any]:
    """A part written by :func:`callback_payload`: its arrays and its parsed ``meta``."""
    with np.load(io.BytesIO(payload)) as f:
        part = {k: f[k] for k in f.files}
    part["meta"] = json.loads(part["meta"].tobytes().decode("utf-8"))
    return part


def run_callback(
    callback: ForwardCallbackIface, model: Any, dataset: Dataset, parts: Iterable[Mapping[str, Any]],
    model_outputs: Mapping[str, Any] | None,
) -> int:
    """``init``, ``process_seq`` per seq of the parts (in their order), ``finish``; returns the seqs."""
    templates = torch_engine.expected_outputs(model_outputs)
    count = 0
    torch_engine.call_user(callback.init, model=torch_engine.orig_model(model))
    for part in parts:
        for b, seq in enumerate(part["seq_idx"]):
            outputs = TensorDict()
            for name, info in part["meta"].items():
                template = templates.data.get(name) if templates is not None else None
                outputs.data[name] = _seq_tensor(name, info, part[f"{name}:{b}"], template)
            torch_engine.call_user(callback.process_seq, seq_tag=dataset.seq_tags[int(seq)], outputs=outputs)
            count += 1
    torch_engine.call_user(callback.finish)
    return count


def _seq_tensor(name: str, info: Mapping[str, Any], raw: np.ndarray, template: Tensor | None) -> Tensor:
    """One seq's output as RETURNN hands it: the config's own ``Dim`` objects from ``model_outputs``
    where declared (a per-seq dim as a copy with the seq's size), else dims rebuilt by name and size."""
    dims = []
    declared = list(template.dims[1:]) if template is not None and len(template.dims) == len(info["dims"]) + 1 else None
    for axis, d in enumerate(info["dims"]):
        dim = declared[axis] if declared is not None else Dim(d["size"], name=d["name"])
        if d["per_seq"]:
            dim = dim.copy()
            dim.dyn_size_ext = Tensor(f"{dim.name}:size", dims=[], dtype="int32",
                                      raw_tensor=np.array(raw.shape[axis], dtype=np.int32))
        dims.append(dim)
    sparse = info["sparse_dim"]
    sparse_dim = None
    if sparse is not None:
        sparse_dim = template.sparse_dim if template is not None and template.sparse_dim is not None else Dim(sparse[1], name=sparse[0])
    return Tensor(name, dims=dims, dtype=info["dtype"], sparse_dim=sparse_dim, raw_tensor=raw)
