"""The sharded data path: one rank's planned batches as a Ray Dataset.

The batch plan (``returnn_ray.data.batching``) decides, in numpy, which seqs form which
batch and which rank gets it. This module turns one rank's list of batches into a Ray
Dataset whose rows are those batches, read and padded in parallel by Ray tasks, and
iterates it as torch tensors in plan order.

Why one row per batch: Ray Data has no frames-based batching of its own, and it
re-chunks blocks freely; with one row per planned batch, ``iter_batches(batch_size=1)``
yields exactly the plan whatever Ray does with block boundaries. Why a custom
datasource: the order is ours (RETURNN's seq order), so read tasks are cut from the plan
in order and ``preserve_order`` keeps Ray from reordering their outputs (Ray Data's
``sort()`` and default ordering are not run-to-run stable; see RAY_NOTES.md).

>>> import numpy as np
>>> from returnn_ray.data.datasets import StaticDataset
>>> ds = StaticDataset(data=[{"data": np.ones((3, 2), "float32")}, {"data": np.ones((1, 2), "float32")}])
>>> cols = pad_batch(ds, np.array([1, 0]))
>>> cols["data"].shape, cols["data:lens"].tolist(), cols["seq_idx"].tolist()
((2, 3, 2), [1, 3], [1, 0])
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from returnn_ray.data.base import Dataset

if TYPE_CHECKING:
    import ray.data
    import torch

BATCHES_PER_READ_TASK = 4
"""Planned batches read by one Ray task: small enough to start streaming at once and to
spread over the node's CPUs, large enough that task overhead stays negligible."""

PREFETCH_BATCHES = 4
"""Batches Ray Data keeps ready ahead of the training step."""


def pad_batch(dataset: Dataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Read the seqs ``indices`` and pad them into batch arrays.

    Returns the columns of one batch row: per data key ``key`` the zero-padded array
    ``[B, T_max, ...]`` and ``key + ":lens"`` (int32 ``[B]``), plus ``seq_idx`` (int64 corpus
    indices ``[B]``). An empty ``indices`` gives empty arrays (a rank's padding step).
    """
    indices = np.asarray(indices, dtype=np.int64)
    seqs = dataset.get_seqs(indices.tolist()) if len(indices) else []
    cols: dict[str, np.ndarray] = {"seq_idx": indices}
    for key, spec in dataset.specs.items():
        lens = np.array([seq[key].shape[0] for seq in seqs], dtype=np.int32)
        feature_shape = () if spec.sparse else (spec.dim,)
        dtype = seqs[0][key].dtype if seqs else np.dtype(spec.dtype)
        out = np.zeros((len(seqs), int(lens.max(initial=0)), *feature_shape), dtype=dtype)
        for i, seq in enumerate(seqs):
            out[i, : lens[i]] = seq[key]
        cols[key] = out
        cols[key + ":lens"] = lens
    return cols


@dataclasses.dataclass
class Batch:
    """One planned batch on the training side: padded tensors and seq lengths per data key."""

    seq_idx: np.ndarray
    """Corpus indices of the seqs, in plan order."""
    data: dict[str, "torch.Tensor"]
    """Data key -> padded tensor ``[B, T, ...]``."""
    lens: dict[str, "torch.Tensor"]
    """Data key -> int32 seq lengths ``[B]``."""

    @property
    def num_seqs(self) -> int:
        return len(self.seq_idx)

    def num_frames(self, key: str = "data") -> int:
        """Real (unpadded) frames of ``key`` in this batch."""
        return int(self.lens[key].sum())

    @classmethod
    def from_columns(cls, cols: dict[str, Any], keys: Sequence[str]) -> "Batch":
        import torch

        # Ray hands out read-only views of its shared-memory objects; copy so that a
        # model writing into its input in place cannot touch the object store.
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a, copy=True))

        return cls(
            seq_idx=np.asarray(cols["seq_idx"]),
            data={k: tensor(cols[k]) for k in keys},
            lens={k: tensor(cols[k + ":lens"]) for k in keys},
        )


def _batch_row(dataset: Dataset, indices: np.ndarray):
    """A one-row Arrow table holding one padded batch."""
    import pyarrow as pa
    from ray.data.extensions import ArrowVariableShapedTensorArray

    cols = pad_batch(dataset, indices)
    return pa.Table.from_pydict({name: ArrowVariableShapedTensorArray.from_numpy([a]) for name, a in cols.items()})


_READER_DATASETS: dict[str, Dataset] = {}
"""Per-process cache of datasets fetched by read tasks: a Ray worker process that runs
many read tasks deserialises the dataset and opens its files once."""


def _reader_dataset(dataset_ref) -> Dataset:
    import ray

    key = dataset_ref.hex()
    if key not in _READER_DATASETS:
        _READER_DATASETS[key] = ray.get(dataset_ref)
    return _READER_DATASETS[key]


def _make_datasource(dataset: Dataset, batches: Sequence[np.ndarray], batches_per_task: int):
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    # The dataset goes to the object store once; read tasks carry only its reference.
    dataset_ref = ray.put(dataset)
    frame_bytes = {
        key: np.dtype(spec.dtype).itemsize * (1 if spec.sparse else spec.dim) for key, spec in dataset.specs.items()
    }

    def padded_bytes(indices: np.ndarray) -> int:
        if not len(indices):
            return 0
        return sum(int(dataset.seq_lens[k][indices].max()) * len(indices) * b for k, b in frame_bytes.items())

    class PlannedBatchDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(padded_bytes(b) for b in batches)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks = []
            for start in range(0, len(batches), batches_per_task):
                group = list(batches[start : start + batches_per_task])

                def read(group=group):
                    ds = _reader_dataset(dataset_ref)
                    for indices in group:
                        yield _batch_row(ds, indices)

                meta = BlockMetadata(
                    num_rows=len(group),
                    size_bytes=sum(padded_bytes(b) for b in group),
                    input_files=None,
                    exec_stats=None,
                )
                tasks.append(ReadTask(read, meta))
            return tasks

    return PlannedBatchDatasource()


def rank_dataset(
    dataset: Dataset, batches: Sequence[np.ndarray], *, batches_per_task: int = BATCHES_PER_READ_TASK
) -> "ray.data.Dataset":
    """A Ray Dataset with one row per planned batch of one rank, in plan order.

    Needs a connected Ray (``ray.init``). Build it in the process that iterates it (a
    Train worker builds the dataset for its own rank and epoch).
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # Row order = plan order, identical across runs; Ray's default may reorder blocks.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    source = _make_datasource(dataset, batches, batches_per_task)
    return ray.data.read_datasource(source, override_num_blocks=max(1, -(-len(batches) // batches_per_task)))


def iter_batches(ray_dataset: "ray.data.Dataset", keys: Sequence[str]) -> Iterator[Batch]:
    """Iterate a :func:`rank_dataset` as :class:`Batch` objects, one per planned batch."""
    for row in ray_dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES):
        yield Batch.from_columns({name: col[0] for name, col in row.items()}, keys)
