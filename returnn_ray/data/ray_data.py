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
``sort()`` and default ordering are not run-to-run stable; docs/ray.md).

>>> import numpy as np
>>> from returnn_ray.data.datasets import StaticDataset
>>> ds = StaticDataset(data=[{"data": np.ones((3, 2), "float32")}, {"data": np.ones((1, 2), "float32")}])
>>> cols = pad_batch(ds, np.array([1, 0]))
>>> cols["data"].shape, cols["data:lens"].tolist(), cols["seq_idx"].tolist()
((2, 3, 2), [1, 3], [1, 0])
"""

# Imports inside functions: Ray and torch load only when a Ray dataset or a torch batch is made (start-up time).
from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from returnn_ray.cluster.data_context import configure_ray_data
from returnn_ray.data.base import Dataset
from returnn_ray.data.batching import batch_lens

if TYPE_CHECKING:
    import ray.data
    import torch

    from returnn_ray.data.shared_read import Claims

READ_TASK_BYTES = 64 * 2**20
"""Padded bytes read by one Ray task. Each task costs Ray Data ~15-20 ms of bookkeeping,
so a task must carry enough data (several batches) for that to vanish next to the reading;
a task much larger would delay the first batch of an epoch."""

READ_TASK_CONCURRENCY = 2
"""Read tasks in flight per rank, at most (:func:`read_task_concurrency`): two keep one rank fed
(reading overlaps the consumer) without crowding out the other ranks' readers on the same node."""

MAX_BATCHES_PER_READ_TASK = 32
"""Upper bound on batches per task, so small batches still spread over the node's CPUs."""

PREFETCH_BATCHES = 4
"""Batches Ray Data keeps ready ahead of the training step."""


def pad_batch(dataset: Dataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Read the seqs ``indices`` (or chunk rows, :mod:`returnn_ray.data.chunking`) and pad them into batch arrays.

    Returns the columns of one batch row: per data key ``key`` the zero-padded array
    ``[B, T_max, ...]`` and ``key + ":lens"`` (int32 ``[B]``), plus ``seq_idx`` (int64 corpus
    indices ``[B]``). An empty ``indices`` gives empty arrays (a rank's padding step). A chunk
    is a seq of its own: its frames ``start .. end`` of each key, from position 0.
    """
    indices = np.asarray(indices, dtype=np.int64)
    rows = indices if indices.ndim == 2 else None
    seq_idx = rows[:, 0] if rows is not None else indices
    seqs = _read_seqs(dataset, seq_idx)
    keys = list(dataset.seq_lens)
    cols: dict[str, np.ndarray] = {"seq_idx": seq_idx}
    for key, spec in dataset.specs.items():
        if rows is not None:
            i = keys.index(key)
            seqs_key = [seq[key][row[1 + 2 * i] : row[2 + 2 * i]] for seq, row in zip(seqs, rows)]
        else:
            seqs_key = [seq[key] for seq in seqs]
        lens = np.array([x.shape[0] for x in seqs_key], dtype=np.int32)
        feature_shape = () if spec.sparse else (spec.dim,)
        dtype = seqs_key[0].dtype if seqs_key else np.dtype(spec.dtype)
        out = np.zeros((len(seqs_key), int(lens.max(initial=0)), *feature_shape), dtype=dtype)
        for j, x in enumerate(seqs_key):
            out[j, : lens[j]] = x
        cols[key] = out
        cols[key + ":lens"] = lens
    return cols


def _read_seqs(dataset: Dataset, seq_idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The seqs ``seq_idx`` in order, each read once (the chunks of one seq share it)."""
    if not len(seq_idx):
        return []
    unique, where = np.unique(seq_idx, return_inverse=True)
    if len(unique) == len(seq_idx):
        return dataset.get_seqs(seq_idx.tolist())
    read = dataset.get_seqs(unique.tolist())
    return [read[j] for j in where.ravel().tolist()]


@dataclasses.dataclass
class Batch:
    """One planned batch on the training side: padded tensors and seq lengths per data key."""

    seq_idx: np.ndarray
    """Corpus indices of the seqs, in plan order."""
    data: dict[str, "torch.Tensor"]
    """Data key -> padded tensor ``[B, T, ...]``."""
    lens: dict[str, "torch.Tensor"]
    """Data key -> int32 seq lengths ``[B]``."""
    seq_tags: list[str] | None = None
    """The seqs' tags (a chunk: its seq's), as RETURNN's collated batch has them for every step;
    set by :func:`rank_batches` from the dataset, never part of the padded columns (their digests)."""

    @property
    def num_seqs(self) -> int:
        return len(self.seq_idx)

    def num_frames(self, key: str = "data") -> int:
        """Real (unpadded) frames of ``key`` in this batch."""
        return int(self.lens[key].sum())

    @classmethod
    def from_columns(cls, cols: dict[str, Any], keys: Sequence[str]) -> "Batch":
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:
            # Ray hands out read-only views of its shared-memory objects. No copy: a batch
            # object has exactly one reader (this rank) and is dropped after the step, so
            # even a model writing into its input in place harms no one, and a copy of every
            # batch would cost as much as reading it.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.from_numpy(a)

        return cls(
            seq_idx=np.asarray(cols["seq_idx"]),
            data={k: tensor(cols[k]) for k in keys},
            lens={k: tensor(cols[k + ":lens"]) for k in keys},
        )


def _batch_rows(dataset: Dataset, group: Sequence[np.ndarray], positions: Sequence[int], claims: "Claims | None" = None):
    """An Arrow table with one row per planned batch of ``group`` (at ``positions`` in the rank's
    plan), each holding the padded arrays and its ``position``; ``None`` if every batch was taken.

    With ``claims`` (a rank on this node sharing the reading), a batch the rank has taken is
    skipped, and one this task takes is the rank's no more. One table per read task: Ray Data
    would otherwise concatenate (copy) the task's outputs into one block anyway.
    """
    import pyarrow as pa
    from ray.data.extensions import ArrowVariableShapedTensorArray

    rows, kept = [], []
    for position, indices in zip(positions, group):
        if claims is None or claims.take(position):
            rows.append(pad_batch(dataset, indices))
            kept.append(position)
    if not rows:
        return None
    columns = {name: ArrowVariableShapedTensorArray.from_numpy([row[name] for row in rows]) for name in rows[0]}
    return pa.Table.from_pydict({**columns, POSITION: pa.array(kept, type=pa.int64())})


POSITION = "position"
"""The column of a batch row that holds the batch's position in the rank's plan."""


_READER_DATASETS: dict[str, Dataset] = {}
"""Per-process cache of datasets fetched by read tasks: a Ray worker process that runs
many read tasks deserialises the dataset and opens its files once."""


def _reader_dataset(dataset_ref) -> Dataset:
    import ray

    key = dataset_ref.hex()
    if key not in _READER_DATASETS:
        while len(_READER_DATASETS) >= 4:  # one per rank and epoch: keep the latest few
            _READER_DATASETS.pop(next(iter(_READER_DATASETS)))
        _READER_DATASETS[key] = ray.get(dataset_ref)
    return _READER_DATASETS[key]


def _padded_bytes(dataset: Dataset, indices: np.ndarray) -> int:
    """Bytes of the padded arrays of one batch (all data keys)."""
    if not len(indices):
        return 0
    total = 0
    for key, spec in dataset.specs.items():
        frame = np.dtype(spec.dtype).itemsize * (1 if spec.sparse else spec.dim)
        total += int(batch_lens(dataset.seq_lens, indices, key).max()) * len(indices) * frame
    return total


def group_batches(
    sizes: Sequence[int], *, max_bytes: int = READ_TASK_BYTES, max_batches: int = MAX_BATCHES_PER_READ_TASK
) -> list[range]:
    """Cut consecutive batches (of ``sizes`` bytes) into read-task groups of about ``max_bytes``.

    >>> group_batches([40, 40, 40, 10, 10], max_bytes=80)
    [range(0, 2), range(2, 5)]
    """
    groups, start, size = [], 0, 0
    for i, nbytes in enumerate(sizes):
        if i > start and (size + nbytes > max_bytes or i - start >= max_batches):
            groups.append(range(start, i))
            start, size = i, 0
        size += nbytes
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def _make_datasource(dataset: Dataset, batches: Sequence[np.ndarray], max_bytes: int, claims: Claims | None = None):
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    # The dataset goes to the object store once; read tasks carry only its reference.
    dataset_ref = ray.put(dataset)
    sizes = [_padded_bytes(dataset, b) for b in batches]
    groups = group_batches(sizes, max_bytes=max_bytes)

    class PlannedBatchDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(sizes)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks = []
            for group in groups:
                planned = [batches[i] for i in group]

                def read(planned=planned, positions=list(group)):
                    shared = claims if claims is not None and claims.visible() else None
                    table = _batch_rows(_reader_dataset(dataset_ref), planned, positions, shared)
                    if table is not None:
                        yield table

                meta = BlockMetadata(
                    num_rows=len(planned), size_bytes=sum(sizes[i] for i in group), input_files=None, exec_stats=None
                )
                tasks.append(ReadTask(read, meta))
            return tasks

    return PlannedBatchDatasource(), len(groups)


def read_task_concurrency(node_cpus: float, ranks_on_node: int) -> int:
    """Read tasks in flight per rank: :data:`READ_TASK_CONCURRENCY` where the node has a CPU per
    rank besides the ranks' own, else one.

    Where the training workers hold every CPU of the node, a second read task per rank is
    one more process competing with training for the CPUs, and reading a batch costs far less
    than training on it; one task keeps reading ahead as the rank consumes. Measured with DDP
    over 2 workers on 2 CPUs (asr.config): 3 s less to the first step (its read processes start
    with the workers) and no slower epochs.

    >>> read_task_concurrency(2, 2), read_task_concurrency(2, 1), read_task_concurrency(16, 8)
    (1, 2, 2)
    """
    return READ_TASK_CONCURRENCY if node_cpus - ranks_on_node >= ranks_on_node else 1


def reads_in_process(node_cpus: float, ranks_on_node: int, *, use_gpu: bool) -> bool:
    """Whether the ranks of a node read their batches themselves (a background thread in each
    rank's process, as in local mode) rather than through Ray Data's read tasks: where the CPU
    ranks hold every CPU of the node, a read task has no CPU of its own and only competes with
    them, and the reading costs far less than training on what is read. Reading in the rank then
    saves the read tasks' processes (started with the workers, each importing Ray Data), the
    object store copy of every batch and Ray Data's pipeline start each epoch. Measured with DDP
    over 2 workers on 2 CPUs (asr.config): see README "Results". GPU ranks hold no CPU.

    >>> reads_in_process(2, 2, use_gpu=False), reads_in_process(4, 2, use_gpu=False), reads_in_process(2, 2, use_gpu=True)
    (True, False, False)
    """
    return not use_gpu and node_cpus - ranks_on_node < 1


def rank_dataset(
    dataset: Dataset, batches: Sequence[np.ndarray], *, read_task_bytes: int = READ_TASK_BYTES,
    concurrency: int = READ_TASK_CONCURRENCY, claims: Claims | None = None,
) -> "ray.data.Dataset":
    """A Ray Dataset with one row per planned batch of one rank, in plan order, read by up to
    ``concurrency`` Ray tasks at a time; with ``claims``, only the batches no other process on
    the rank's node took (the rank reading too: :mod:`~returnn_ray.data.shared_read`).

    Needs a connected Ray (``ray.init``). Build it in the process that iterates it (a
    Train worker builds the dataset for its own rank and epoch).
    """
    import ray.data

    # Row order = plan order, identical across runs; Ray's default may reorder blocks.
    configure_ray_data(preserve_order=True, announce_start=False)
    source, num_tasks = _make_datasource(dataset, batches, read_task_bytes, claims)
    # Read tasks reserve no CPU: the training workers hold the node's CPUs (on a 2-CPU node,
    # 2 workers hold all of them), and a read task waiting for a CPU would wait forever while
    # its worker waits for the batch. Their number is capped instead.
    return ray.data.read_datasource(
        source, override_num_blocks=max(1, num_tasks), num_cpus=0, concurrency=max(1, min(concurrency, num_tasks))
    )


def iter_batches(ray_dataset: "ray.data.Dataset", keys: Sequence[str]) -> Iterator[Batch]:
    """Iterate a :func:`rank_dataset` as :class:`Batch` objects, one per planned batch."""
    for _, batch in iter_positioned(ray_dataset, keys):
        yield batch


def iter_positioned(ray_dataset: "ray.data.Dataset", keys: Sequence[str]) -> Iterator[tuple[int, Batch]]:
    """:func:`iter_batches` with each batch's position in the rank's plan."""
    for row in ray_dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES):
        yield int(row[POSITION][0]), Batch.from_columns({name: col[0] for name, col in row.items()}, keys)


def rank_batches(
    dataset: Dataset, batches: Sequence[np.ndarray], keys: Sequence[str], *, in_process: bool = False,
    concurrency: int = READ_TASK_CONCURRENCY,
) -> Iterator[Batch]:
    """One rank's planned batches, in plan order: on a Ray worker, through Ray Data and read by
    this process whenever Ray Data's stream has not got the next one ready (:mod:`~returnn_ray.data.shared_read`);
    else read by a background thread in this process (``in_process``: local mode, or no Ray running).

    Both give the same batches (:func:`pad_batch` of the same plan); the in-process reader
    keeps up to :data:`PREFETCH_BATCHES` batches ahead of the consumer.
    """
    ray = None if in_process else sys.modules.get("ray")  # not imported: no Ray running here
    if ray is not None and ray.is_initialized():
        from returnn_ray.data.shared_read import read_shared  # imports this module

        read = read_shared(dataset, batches, keys, concurrency)
    else:
        read = _prefetched(dataset, batches, keys)
    for batch in read:
        yield with_tags(batch, dataset)


class StartedReader:
    """An iterator whose first item is fetched at once by a background thread; iterating it
    (once) yields that item, then the rest from the calling thread. ``items`` may also be a
    function that makes the iterator (called in that thread, so that making it overlaps too)."""

    def __init__(self, items: Iterator | Callable[[], Iterator]):
        import threading

        self._items = items
        self._first: list = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._fetched = self._closing = False
        self._thread = threading.Thread(target=self._fetch_first, name="returnn-ray-first-batch", daemon=True)
        self._thread.start()

    def _fetch_first(self) -> None:
        try:
            if callable(self._items) and not isinstance(self._items, Iterator):
                self._items = self._items()
            self._first.append(next(self._items))
        except StopIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised in the thread that iterates
            self._error = exc
        finally:
            with self._lock:
                self._fetched, closing = True, self._closing
            if closing:
                self._close_items()

    def ready(self) -> bool:
        """Whether the first item (or the error, or the end) is here: iterating will not wait for it."""
        with self._lock:
            return self._fetched

    def close(self) -> None:
        """Not to be iterated after all: the iterator is closed (a Ray Data stream stops) now, or by
        the background thread once its first item is here (a generator cannot be closed while it runs)."""
        with self._lock:
            self._closing, fetched = True, self._fetched
        if fetched:
            self._close_items()

    def _close_items(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._items


def with_tags(batch: Batch, dataset: Dataset) -> Batch:
    """``batch`` with its seqs' tags, looked up here (the reading side) by ``seq_idx``: the tags
    stay out of the padded rows that Ray moves and out of their digests."""
    return dataclasses.replace(batch, seq_tags=[dataset.seq_tags[int(i)] for i in batch.seq_idx])


def _prefetched(dataset: Dataset, batches: Sequence[np.ndarray], keys: Sequence[str]) -> Iterator[Batch]:
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=max(1, PREFETCH_BATCHES))
    stop = threading.Event()
    done = object()

    def read() -> None:
        try:
            for indices in batches:
                if stop.is_set():
                    return
                ready.put(pad_batch(dataset, indices))
            ready.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            ready.put(exc)

    thread = threading.Thread(target=read, name="returnn-ray-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield Batch.from_columns(item, keys)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
