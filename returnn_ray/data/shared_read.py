"""A training rank's batches read by Ray Data's read tasks and by the rank itself, each once.

Ray Data hands a read task's batches over once the task has read them all, and its first read
task in a process starts cold (1.5-5 s on a 2-core machine). A rank that only waited for the
stream would idle then, and whenever the stream falls behind. Here the rank reads its next batch
itself whenever the stream has not got it; rank and read tasks take batches through
:class:`Claims` (files on the node's memory file system), so that each batch is read once on the
node, and the rank yields every batch once, in plan order, whoever read it (:func:`read_shared`).
"""

# Imports inside functions: Ray loads only when a stream starts (start-up time).
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from returnn_ray.data.base import Dataset
from returnn_ray.data.ray_data import (
    MAX_BATCHES_PER_READ_TASK,
    PREFETCH_BATCHES,
    READ_TASK_BYTES,
    Batch,
    _padded_bytes,
    _prefetched,
    group_batches,
    iter_positioned,
    pad_batch,
    rank_dataset,
)


class Claims:
    """Which of one rank's planned batches are taken, shared on one node by the rank and the Ray
    Data read tasks of its stream: one empty file per taken position in a directory of the node's
    memory file system, made with ``O_EXCL`` (so exactly one process takes each position).

    A read task on another node reads without claims; the rank drops what it has already
    (:func:`read_shared`). Removing the directory ends the claims: every later ``take`` fails, so
    read tasks still running skip the rest of their batches once the rank has left.
    """

    def __init__(self, path: str, node_id: str | None):
        self.path, self.node_id = path, node_id

    @classmethod
    def create(cls) -> "Claims":
        import tempfile

        shm = "/dev/shm"
        where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        return cls(tempfile.mkdtemp(prefix="returnn-ray-claims-", dir=where), _node_id())

    def visible(self) -> bool:
        """Whether this process shares these claims: it runs on the rank's node. (Its directory
        gone means the claims have ended, and every ``take`` fails: the rank has left.)"""
        return self.node_id is not None and _node_id() == self.node_id

    def take(self, position: int) -> bool:
        """Take ``position``: ``False`` where another process has it, the claims have ended, or
        the claim cannot be made (a full ``/dev/shm``, say): either way this process does not
        read it, and the rank reads what the stream does not bring."""
        try:
            os.close(os.open(os.path.join(self.path, str(position)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError:
            return False
        return True

    def remove(self) -> None:
        """End the claims: the directory is renamed away at once (a ``take`` after it fails), then removed."""
        import shutil

        gone = f"{self.path}.gone"
        try:
            os.rename(self.path, gone)
        except OSError:
            gone = self.path
        shutil.rmtree(gone, ignore_errors=True)


def _node_id() -> str | None:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def read_shared(
    dataset: Dataset, batches: Sequence[np.ndarray], keys: Sequence[str], concurrency: int,
    *, read_task_bytes: int = READ_TASK_BYTES, claims: Claims | None = None,
) -> Iterator[Batch]:
    """The rank's batches in plan order, read by Ray Data's read tasks and by this process, each
    by whoever takes it first (``claims``: made here unless given).

    This process reads only when its next batch is not there: while Ray Data's pipeline starts
    and whenever the stream falls behind. It then reads its next batch, or, where a read task
    holds that one, the first one nobody has among the next :data:`MAX_BATCHES_PER_READ_TASK`
    (at most ``read_task_bytes`` held ahead). Where it has nothing to take, it waits for the
    stream as long as reading the batch here takes (twice its mean time to read one), then reads
    it too and drops the stream's copy: the rank never idles longer than reading would take. The
    stream brings its batches in plan order, so one past a batch means that batch is not coming
    (a read task retried after its first attempt took it; read tasks on another node read without
    claims): read here. Each batch is yielded once, in plan order, whoever read it.

    The stream is polled by a background thread; it starts once the first batch is read (its
    start in this process would otherwise hold up that batch). Batches that one read task would
    read in full (a small dev set) are all read here, without a stream.
    """
    if not len(batches):
        return
    if len(batches) <= _first_task_share(dataset, batches, read_task_bytes):  # one read task's worth (a dev set, say)
        yield from _prefetched(dataset, batches, keys)  # is read here before a stream could bring any
        return
    reader = _SharedReader(dataset, batches, keys, claims or Claims.create(), read_task_bytes)
    try:
        reader.claims.take(0)
        first = reader.read_here(0)
        reader.start_stream(concurrency)
        yield Batch.from_columns(first, keys)
        for position in range(1, len(batches)):
            yield reader.next_batch(position)
    finally:
        reader.close()


class _SharedReader:
    """The state of :func:`read_shared`: what this process read ahead, what the stream brought."""

    def __init__(self, dataset: Dataset, batches: Sequence[np.ndarray], keys: Sequence[str], claims: Claims, read_task_bytes: int):
        self.dataset, self.batches, self.keys, self.claims = dataset, batches, keys, claims
        self.read_task_bytes = read_task_bytes
        self.stream: _Stream | None = None
        self.here: dict[int, dict] = {}  # taken and read by this process, ahead of their turn
        self.held = 0  # bytes in ``here``
        self.streamed: dict[int, Batch] = {}
        self.last, self.ended = -1, False  # the stream's last position; whether it brings no more
        self.scan = 1  # positions below were offered to the claims by this process
        self.read_time = 0.0  # seconds to read one batch here, a running mean

    def start_stream(self, concurrency: int) -> None:
        dataset, batches, keys, claims, nbytes = self.dataset, self.batches, self.keys, self.claims, self.read_task_bytes
        self.stream = _Stream(lambda: iter_positioned(rank_dataset(
            dataset, batches, read_task_bytes=nbytes, concurrency=concurrency, claims=claims
        ), keys))

    def read_here(self, position: int) -> dict:
        start = time.perf_counter()
        cols = pad_batch(self.dataset, self.batches[position])
        took = time.perf_counter() - start
        self.read_time = 0.8 * self.read_time + 0.2 * took if self.read_time else took
        return cols

    def next_batch(self, position: int) -> Batch:
        deadline = time.perf_counter() + 2 * self.read_time  # read it here, too, once this has passed
        while True:
            if position in self.here:
                cols = self.here.pop(position)
                self.held -= _nbytes(cols)
                return Batch.from_columns(cols, self.keys)
            while position not in self.streamed and not self.ended and self.last < position:
                if not self._take_from_stream(position, block=False):
                    break
            if position in self.streamed:
                return self.streamed.pop(position)
            if self.ended or self.last > position or time.perf_counter() >= deadline:
                return Batch.from_columns(self.read_here(position), self.keys)  # not coming, or late
            if not self._read_ahead(position):  # nothing to take: a read task holds the next batch (and the ones after)
                self._take_from_stream(position, block=True, timeout=max(0.005, deadline - time.perf_counter()))

    def _read_ahead(self, position: int) -> bool:
        """Take and read the first batch nobody has, from ``position`` on; whether there was one."""
        self.scan = max(self.scan, position)
        while self.scan < min(len(self.batches), position + MAX_BATCHES_PER_READ_TASK) and self.held < self.read_task_bytes:
            self.scan += 1
            if self.claims.take(self.scan - 1):
                cols = self.here[self.scan - 1] = self.read_here(self.scan - 1)
                self.held += _nbytes(cols)
                return True
        return False

    def _take_from_stream(self, position: int, *, block: bool, timeout: float = 0.1) -> bool:
        """Take the stream's next item, if one comes (within ``timeout``); whether one came. On a
        failure of Ray's (not bad data, which is raised) the stream ends, and this process reads the rest."""
        try:
            item = self.stream.get(block=block, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - this process can read every batch itself
            from returnn_ray.cluster.ray_internals import user_error_in

            if user_error_in(exc) is not None:
                raise  # bad data: reading it here would only fail again
            print(f"returnn-ray: Ray Data's stream failed ({_one_line(exc)}); this rank reads the rest of its epoch itself",
                  file=sys.stderr, flush=True)
            self.stream.close()
            self.ended = True
            return False
        if item is None:
            return False
        if item is _Stream.END:
            self.ended = True
            return True
        at, batch = item
        self.last = at
        if at >= position and at not in self.here:  # else read here already: dropped
            self.streamed[at] = batch
        return True

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.claims.remove()


class _Stream:
    """An iterator read by a background thread into a short queue, taken from without waiting;
    ``make`` (called in that thread, so that making it overlaps too) makes the iterator."""

    END = object()

    def __init__(self, make: Callable[[], Iterator]):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(make,), name="returnn-ray-stream", daemon=True).start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator]) -> None:
        items = None
        try:
            if self._stop.is_set():
                return
            items = make()
            for item in items:
                if not self._put(item) or self._stop.is_set():
                    return
            self._put(self.END)
        except BaseException as exc:  # noqa: BLE001 - raised in the thread that iterates
            self._put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a Ray Data stream stops its pipeline

    def get(self, *, block: bool, timeout: float = 0.1):
        """The next item, :attr:`END` after the last; ``None`` if none is here (within ``timeout``)."""
        import queue

        try:
            item = self._queue.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading: the thread ends (and closes the iterator) once its current item is here."""
        import queue

        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def _first_task_share(dataset: Dataset, batches: Sequence[np.ndarray], read_task_bytes: int) -> int:
    """How many of ``batches`` Ray Data's first read task would read (:func:`group_batches`)."""
    sizes = [_padded_bytes(dataset, b) for b in batches[: MAX_BATCHES_PER_READ_TASK + 1]]
    groups = group_batches(sizes, max_bytes=read_task_bytes)
    return len(groups[0]) if groups else 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _nbytes(cols: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in cols.values())
