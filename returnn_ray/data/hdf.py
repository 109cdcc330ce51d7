"""RETURNN's HDF dataset format: a lazy reader (:class:`HDFDataset`) and a streaming writer (:class:`HDFWriter`).

The layout (what RETURNN's ``HDFDataset`` reads and its ``SimpleHDFWriter`` writes):

- ``seqTags``: ``[N]`` strings; ``seqLengths``: ``[N, C]`` int32, column 0 = length of
  ``inputs`` (the ``data`` key), column ``1 + j`` = length of ``sorted(target keys)[j]``.
  A file without ``targets`` still has 2 columns (RETURNN counts a dummy ``classes``).
  A file without ``inputs`` has only the target columns.
- ``inputs``: ``[sum_T, dim]`` dense or ``[sum_T]`` sparse (root attr ``inputPattSize`` = dim).
- ``targets/data/<key>`` concatenated over seqs, ``targets/size`` attr ``<key>`` =
  ``[dim, ndim]`` (ndim 1 = sparse; older files store only ``dim``), ``targets/labels/<key>``
  label strings. A root ``labels`` dataset holds the labels of ``inputs``.
- Root attrs ``numSeqs``, ``numTimesteps``, ``inputPattSize``, ``numDims``, ``numLabels``.

Reading opens the files only for metadata at construction; data is read lazily in
whichever process calls :meth:`HDFDataset.get_seqs` (handles are never pickled).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from returnn_ray.atomic import temp_path_for
from returnn_ray.data.base import DataSpec, Dataset, OrderOptions
from returnn_ray.errors import DataError

__all__ = ["HDFDataset", "HDFWriter", "write_hdf"]

_INPUTS = "inputs"
_DUMMY_LABELS = ["dummy-label"]  # SimpleHDFWriter's placeholder when a key has no vocabulary
_FLUSH_BYTES = 16 * 1024 * 1024  # writer: append buffered seqs to the file in blocks of about this size


def _decode(s: str | bytes) -> str:
    """A string as RETURNN decodes it: utf-8, cut at the first NUL (fixed-size ``S<n>`` strings)."""
    if isinstance(s, bytes):
        s = s.decode("utf-8")
    return str(s).split("\0")[0]  # str(): a file with int tags (RETURNN fails on them) has tags "1", "2"


def _h5_key(key: str) -> str:
    """Where a data key lives in the file."""
    return _INPUTS if key == "data" else f"targets/data/{key}"


class _FileMeta:
    """What construction learned about one file: its seq count and per-key frame offsets."""

    def __init__(self, path: str, num_seqs: int, offsets: dict[str, np.ndarray]):
        self.path = path
        self.num_seqs = num_seqs
        self.offsets = offsets  # key -> int64 [num_seqs + 1], start row of each seq (cumsum of lengths)


def _read_file_meta(path: str) -> tuple[dict[str, DataSpec], dict[str, np.ndarray], list[str], dict[str, list[str]]]:
    """Read specs, per-key lengths, tags and labels of one HDF file; DataError for anything unusable."""
    if not os.path.exists(path):
        raise DataError(f"HDF file {path!r} does not exist (check the dataset's files)")
    try:
        fin = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path!r} is not a readable HDF5 file ({_one_line(exc)}); check the dataset's files") from None
    try:
        with fin:
            return _parse_file(path, fin)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise DataError(f"HDF file {path!r} is corrupt or not in RETURNN's layout ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _parse_file(path: str, fin: h5py.File):
    def need(name: str) -> Any:
        if name not in fin:
            raise DataError(f"HDF file {path!r} has no {name!r} dataset; it is not a RETURNN HDF file")
        return fin[name]

    seq_lengths = np.asarray(need("seqLengths")[...])
    tags = [_decode(t) for t in need("seqTags")[...].tolist()]
    num_seqs = len(tags)
    has_inputs = _INPUTS in fin
    has_targets = "targets" in fin
    if has_targets:
        # Like RETURNN: keys from targets/data and targets/size, sorted (that is also the column order).
        size_keys = list(fin["targets/size"].attrs.keys()) if "targets/size" in fin else []
        data_keys = list(fin["targets/data"].keys()) if "targets/data" in fin else []
        target_keys = sorted(set(data_keys) | set(size_keys))
        for key in target_keys:
            if key not in data_keys:
                raise DataError(
                    f"HDF file {path!r} declares target {key!r} in targets/size but has no targets/data/{key}"
                )
    else:
        target_keys = []
    if has_inputs and "data" in target_keys:
        raise DataError(f"HDF file {path!r} has both 'inputs' and a target named 'data'; rename the target")
    if not has_inputs and not target_keys:
        raise DataError(f"HDF file {path!r} has neither 'inputs' nor 'targets/data'; it holds no data")

    keys = (["data"] if has_inputs else []) + target_keys
    num_cols = len(keys) if (target_keys or not has_inputs) else 2  # no targets: RETURNN's dummy 'classes' column
    if seq_lengths.ndim == 1:  # very old files: one length for every key
        seq_lengths = np.repeat(seq_lengths[:, None], num_cols, axis=1)
    if seq_lengths.ndim != 2 or seq_lengths.shape[0] != num_seqs or seq_lengths.shape[1] < len(keys):
        raise DataError(
            f"HDF file {path!r}: seqLengths has shape {seq_lengths.shape}, expected ({num_seqs}, {num_cols}) "
            f"for {num_seqs} seqTags and keys {keys}; the file is corrupt"
        )
    if num_seqs and seq_lengths.min() < 0:
        raise DataError(f"HDF file {path!r}: seqLengths has negative entries; the file is corrupt")

    specs: dict[str, DataSpec] = {}
    lens: dict[str, np.ndarray] = {}
    for col, key in enumerate(keys):
        ds = fin[_h5_key(key)]
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"HDF file {path!r}: {_h5_key(key)!r} is not a dataset; the file is corrupt")
        key_lens = seq_lengths[:, col].astype(np.int64)
        total = int(key_lens.sum())
        if ds.ndim == 0 or ds.shape[0] != total:
            # Rows and lengths must agree exactly (RETURNN's writers write both in step): with more rows
            # than the lengths say, seqs would be read from the wrong offsets, each holding another's frames.
            rows = ds.shape[0] if ds.ndim else "no"
            raise DataError(
                f"HDF file {path!r}: {_h5_key(key)!r} has {rows} rows but seqLengths sum to {total} for key "
                f"{key!r} (column {col}); the file is truncated or corrupt: rewrite it"
            )
        specs[key] = _spec_of(fin, key, ds)
        lens[key] = key_lens

    labels: dict[str, list[str]] = {}
    if has_targets and "targets/labels" in fin:
        for key in fin["targets/labels"]:
            labels[key] = [_decode(s) for s in fin["targets/labels"][key][...].tolist()]
    if has_inputs and "labels" in fin:
        labels["data"] = [_decode(s) for s in fin["labels"][...].tolist()]
    # Keep only real vocabularies: drop empty lists and SimpleHDFWriter's "dummy-label" placeholder.
    labels = {k: v for k, v in labels.items() if k in specs and v and v != _DUMMY_LABELS}
    return specs, lens, tags, labels


def _spec_of(fin: h5py.File, key: str, ds: h5py.Dataset) -> DataSpec:
    """The DataSpec of one key, by RETURNN's rules (sparse = integer dtype and ndim 1)."""
    dtype = str(ds.dtype)
    is_int = np.issubdtype(ds.dtype, np.integer)
    if key == "data":
        if ds.ndim == 1:
            return DataSpec(dim=int(fin.attrs.get("inputPattSize", 1)), sparse=is_int, dtype=dtype)
        return DataSpec(dim=int(ds.shape[-1]), sparse=False, dtype=dtype)
    size_attrs = fin["targets/size"].attrs if "targets/size" in fin else {}
    if key in size_attrs:
        value = np.asarray(size_attrs[key])
        if value.ndim == 0:
            dim, ndim = int(value), ds.ndim
        else:
            dim, ndim = int(value[0]), int(value[1])
    else:
        dim, ndim = (1 if ds.ndim == 1 else int(ds.shape[-1])), ds.ndim
    if ds.ndim >= 2:
        dim = int(ds.shape[-1])
    return DataSpec(dim=dim, sparse=bool(is_int and ndim <= 1), dtype=dtype)


class HDFDataset(Dataset):
    """One or several RETURNN HDF files as one corpus (files concatenated in the given order).

    Only metadata (lengths, tags, dims, labels) is read at construction; :meth:`get_seqs` opens
    the files lazily in the calling process.

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/a.hdf"
    >>> write_hdf(path, [{"data": np.zeros((3, 2), "float32")}], ["s1"], {"data": DataSpec(2)})
    >>> ds = HDFDataset([path], name="train")
    >>> ds.num_seqs, ds.seq_tags, ds.get_seqs([0])[0]["data"].shape
    (1, ['s1'], (3, 2))
    """

    supports_sorting = True  # RETURNN's HDFDataset.supports_seq_order_sorting()

    def __init__(
        self,
        files: Sequence[str],
        *,
        name: str = "HDFDataset",
        seq_ordering: str = "default",
        partition_epoch: int | None = 1,
        fixed_random_seed: int | None = None,
        random_seed_offset: int | None = 0,
        # Accepted for RETURNN configs, without effect here:
        use_cache_manager: bool = False,  # RETURNN copies files to a local cache first; we read them in place
        cache_byte_size: int | None = None,  # RETURNN's in-memory seq cache; we read lazily, seq by seq
    ):
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        if not isinstance(files, (list, tuple)) or not all(isinstance(f, (str, os.PathLike)) for f in files):
            raise DataError(f"dataset {name!r}: HDFDataset files must be a list of HDF file paths, got {files!r}")
        if not files:
            raise DataError(f"dataset {name!r}: HDFDataset got no files (set 'files' to a list of HDF paths)")
        self.name = name
        # Absolute paths: Ray workers that read the files run in another working directory.
        self.files = [os.path.abspath(os.fspath(f)) for f in files]
        self.order = OrderOptions(
            seq_ordering=seq_ordering,
            partition_epoch=partition_epoch or 1,
            fixed_random_seed=fixed_random_seed,
            random_seed_offset=random_seed_offset or 0,
        )
        self.specs = {}
        self.labels = {}
        self.seq_tags = []
        per_key_lens: dict[str, list[np.ndarray]] = {}
        self._metas: list[_FileMeta] = []
        for path in self.files:
            specs, lens, tags, labels = _read_file_meta(path)
            if self._metas:
                self._check_same_layout(path, specs)
            else:
                self.specs = specs
            for key, vocab in labels.items():
                self.labels.setdefault(key, vocab)  # like RETURNN: the first file's labels win
            offsets = {}
            for key in specs:
                offsets[key] = np.zeros(len(tags) + 1, dtype=np.int64)
                np.cumsum(lens[key], out=offsets[key][1:])
                per_key_lens.setdefault(key, []).append(lens[key])
            self._metas.append(_FileMeta(path, len(tags), offsets))
            self.seq_tags.extend(tags)
        self.seq_lens = {key: np.concatenate(parts) for key, parts in per_key_lens.items()}
        self._file_seq_start = np.cumsum([0] + [m.num_seqs for m in self._metas], dtype=np.int64)
        self._reset_handles()

    def _check_same_layout(self, path: str, specs: dict[str, DataSpec]) -> None:
        first = self._metas[0].path
        if list(specs) != list(self.specs):
            raise DataError(
                f"HDF files {first!r} and {path!r} hold different data keys ({list(self.specs)} vs {list(specs)}); "
                f"all files of dataset {self.name!r} must have the same keys"
            )
        for key, spec in specs.items():
            ref = self.specs[key]
            if (spec.dim, spec.sparse) != (ref.dim, ref.sparse):
                raise DataError(
                    f"HDF files {first!r} and {path!r} disagree on key {key!r}: dim {ref.dim} sparse {ref.sparse} "
                    f"vs dim {spec.dim} sparse {spec.sparse}; all files of dataset {self.name!r} must match"
                )

    def seq_source(self, index: int) -> str | None:
        """The file seq ``index`` is stored in."""
        return self._metas[int(np.searchsorted(self._file_seq_start, index, side="right")) - 1].path

    # -- lazy file handles -------------------------------------------------------------------

    def _reset_handles(self) -> None:
        self._handles: dict[int, h5py.File] = {}
        self._h5_datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        # Open h5py handles cannot be pickled; the receiving process opens its own on first read.
        state = self.__dict__.copy()
        for attr in ("_handles", "_h5_datasets", "_pid"):
            state.pop(attr, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def close(self) -> None:
        """Close the open file handles (they reopen on the next read)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._reset_handles()

    def _h5_dataset(self, file_idx: int, key: str) -> h5py.Dataset:
        if self._pid != os.getpid():  # forked: the parent's HDF5 handles are not ours to use
            self._reset_handles()
        ds = self._h5_datasets.get((file_idx, key))
        if ds is None:
            path = self._metas[file_idx].path
            try:
                if file_idx not in self._handles:
                    self._handles[file_idx] = h5py.File(path, "r")
                ds = self._handles[file_idx][_h5_key(key)]
            except (OSError, KeyError) as exc:
                msg = f"HDF file {path!r} can no longer be read ({_one_line(exc)}); was it changed?"
                raise DataError(msg) from None
            self._h5_datasets[(file_idx, key)] = ds  # h5py's lookup by name is slow; keep the object
        return ds

    # -- reading -------------------------------------------------------------------------------

    def get_seqs(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Read the seqs with these corpus indices, returned in the given order.

        Reads are grouped per file and sorted by file offset; neighbouring seqs are read
        with one HDF5 call per key (also across small gaps), then sliced.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_seqs):
            raise IndexError(f"dataset {self.name!r}: seq index out of range [0, {self.num_seqs})")
        out: list[dict[str, np.ndarray]] = [{} for _ in range(idx.size)]
        file_of = np.searchsorted(self._file_seq_start, idx, side="right") - 1
        for file_idx in np.unique(file_of):
            positions = np.nonzero(file_of == file_idx)[0]
            local = idx[positions] - self._file_seq_start[file_idx]
            meta = self._metas[file_idx]
            for key, spec in self.specs.items():
                starts = meta.offsets[key][local]
                ends = meta.offsets[key][local + 1]
                ds = self._h5_dataset(int(file_idx), key)
                check = _value_check(self, int(file_idx), key, spec)
                for pos, arr in self._read_runs(meta.path, ds, starts, ends, check):
                    if arr.dtype != spec.dtype:
                        arr = arr.astype(spec.dtype)  # a later file may store another float width
                    out[positions[pos]][key] = arr
        return out

    @staticmethod
    def _read_runs(path: str, ds: h5py.Dataset, starts: np.ndarray, ends: np.ndarray, check=None):
        """Yield ``(i, rows)`` for each requested ``[starts[i], ends[i])``, reading merged runs.

        A following seq joins the current run when the gap before it is at most as long as
        the run so far, so at most half of what is read is unused. ``check(block, first_row)``
        sees each block read (:func:`_value_check`).
        """
        order = np.argsort(starts, kind="stable")
        i = 0
        n = len(order)
        while i < n:
            run_start, run_end = int(starts[order[i]]), int(ends[order[i]])
            j = i + 1
            while j < n:
                s, e = int(starts[order[j]]), int(ends[order[j]])
                if s - run_end > run_end - run_start:
                    break
                run_end = max(run_end, e)
                j += 1
            try:
                block = ds[run_start:run_end]
            except OSError as exc:
                msg = f"HDF file {path!r}: reading rows {run_start}:{run_end} failed ({_one_line(exc)})"
                raise DataError(msg) from None
            if check is not None:
                check(block, run_start)
            for k in order[i:j]:
                yield int(k), block[int(starts[k]) - run_start : int(ends[k]) - run_start]
            i = j

    def __repr__(self) -> str:
        return f"<HDFDataset {self.name!r} files={self.files} num_seqs={self.num_seqs}>"


def _value_check(dataset: HDFDataset, file_idx: int, key: str, spec: DataSpec):
    """A check of each block read for ``key``: float values finite, sparse labels in ``[0, dim)``.

    Bad values in a data file would otherwise show up as a NaN training score an epoch later or
    as an index error in the loss (a device-side assert on a GPU). The check runs where the rows
    are read (Ray Data's reader tasks, or the local reader thread), on the block just read: one
    vectorised pass (a sum for floats, min/max for labels), so it costs far less than the read
    itself and nothing on the training step. Only a failing block is searched for the seq.
    """
    dtype = np.dtype(spec.dtype)
    if spec.sparse and np.issubdtype(dtype, np.integer):
        dim = spec.dim if spec.dim > 1 else 0  # 0 or 1: no dim in the file (RETURNN's default 1); only >= 0

        def bad_mask(block: np.ndarray) -> np.ndarray | None:
            if block.min() >= 0 and (not dim or block.max() < dim):
                return None
            return (block < 0) | (block >= dim) if dim else block < 0

        what = f"label {{value}} outside [0, {dim}) of its dim {dim}" if dim else "negative label {value}"
        advice = "fix the data, or the dim (targets/size, extern_data, num_outputs)"
    elif not spec.sparse and np.issubdtype(dtype, np.floating):

        def bad_mask(block: np.ndarray) -> np.ndarray | None:
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(np.add.reduce(block, axis=None)):  # NaN or inf anywhere makes the sum non-finite
                    return None
            mask = ~np.isfinite(block)
            return mask if mask.any() else None  # the sum merely overflowed

        what = "non-finite value {value}"
        advice = "features must be finite; fix or drop the seq"
    else:
        return None

    def check(block: np.ndarray, first_row: int) -> None:
        if block.size == 0:
            return
        mask = bad_mask(block)
        if mask is None:
            return
        frames = mask.reshape(len(block), -1).any(axis=1)
        row = int(np.argmax(frames))
        value = block[row][mask[row]].flat[0] if block.ndim > 1 else block[row]
        meta = dataset._metas[file_idx]
        global_row = first_row + row
        local = int(np.searchsorted(meta.offsets[key], global_row, side="right")) - 1
        tag = dataset.seq_tags[int(dataset._file_seq_start[file_idx]) + local]
        frame = global_row - int(meta.offsets[key][local])
        raise DataError(
            f"HDF file {meta.path!r}: seq {tag!r} key {key!r} has a {what.format(value=value)} at frame {frame}; "
            f"{advice}"
        )

    return check


class HDFWriter:
    """Write seqs one by one into a RETURNN HDF file; readable by RETURNN's ``HDFDataset``.

    The file appears at ``path`` only on a successful :meth:`close` (written to a temp file in
    the same directory, then renamed); :meth:`abort`, or leaving a ``with`` block by an
    exception, removes the temp file. ``data`` goes to ``inputs``, every other key to
    ``targets/data/<key>``.

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/out.hdf"
    >>> with HDFWriter(path, {"data": DataSpec(2), "classes": DataSpec(5, sparse=True, dtype="int32")}) as w:
    ...     w.add_seq("seq-0", {"data": np.ones((4, 2)), "classes": np.array([1, 2])})
    >>> HDFDataset([path]).seq_lens["classes"].tolist()
    [2]
    """

    def __init__(
        self,
        path: str,
        specs: Mapping[str, DataSpec],
        labels: Mapping[str, Sequence[str]] | None = None,
    ):
        if not specs:
            raise ValueError("HDFWriter needs at least one data key")
        self.path = os.path.abspath(os.fspath(path))
        self.specs = dict(specs)
        self.labels = {k: list(v) for k, v in (labels or {}).items()}
        for key in self.labels:
            if key not in self.specs:
                raise ValueError(f"HDFWriter {self.path!r}: labels given for unknown key {key!r}")
        self._target_keys = sorted(k for k in self.specs if k != "data")
        self._columns = (["data"] if "data" in self.specs else []) + self._target_keys
        self._tags: list[str] = []
        self._lens: list[list[int]] = []
        self._buffer: dict[str, list[np.ndarray]] = {k: [] for k in self.specs}
        self._buffer_bytes = 0
        self._rows = {k: 0 for k in self.specs}
        self._tmp_path = temp_path_for(self.path)  # same directory, so the final rename stays on one file system
        # O_EXCL reserves the name. Mode 0o666 minus the umask, as open() gives, not mkstemp's 0o600:
        # the renamed file is what other users on a shared cluster read.
        os.close(os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            self._file: h5py.File | None = h5py.File(self._tmp_path, "w")
            self._create_datasets()
        except BaseException:
            self.abort()
            raise

    def _create_datasets(self) -> None:
        f = self._file
        for key, spec in self.specs.items():
            shape = (0,) if spec.sparse else (0, spec.dim)
            maxshape = (None,) if spec.sparse else (None, spec.dim)
            if key == "data":
                f.create_dataset(_INPUTS, shape=shape, maxshape=maxshape, dtype=spec.dtype, chunks=True)
            else:
                f.create_dataset(_h5_key(key), shape=shape, maxshape=maxshape, dtype=spec.dtype, chunks=True)
        if self._target_keys:
            size = f.require_group("targets/size")
            labels = f.require_group("targets/labels")
            for key in self._target_keys:
                spec = self.specs[key]
                size.attrs[key] = np.array([spec.dim, 1 if spec.sparse else 2], dtype=np.int32)
                # Older RETURNN versions found the target keys through targets/labels, so every key gets one.
                _write_strings(labels, key, self.labels.get(key) or _DUMMY_LABELS)
        if "data" in self.labels:
            _write_strings(f, "labels", self.labels["data"])

    @property
    def num_seqs(self) -> int:
        return len(self._tags)

    def add_seq(self, tag: str, seq: Mapping[str, np.ndarray]) -> None:
        """Append one seq: ``seq[key]`` is ``[T]`` (sparse) or ``[T, dim]`` (dense) for every key of ``specs``."""
        if self._file is None:
            raise ValueError(f"HDFWriter {self.path!r} is closed")
        if set(seq) != set(self.specs):
            raise ValueError(
                f"HDFWriter {self.path!r}: seq {tag!r} has keys {sorted(seq)}, expected {sorted(self.specs)}"
            )
        arrays = {}
        for key, spec in self.specs.items():
            arr = np.asarray(seq[key], dtype=spec.dtype)
            expected = "[T]" if spec.sparse else f"[T, {spec.dim}]"
            if (spec.sparse and arr.ndim != 1) or (not spec.sparse and (arr.ndim != 2 or arr.shape[1] != spec.dim)):
                raise ValueError(
                    f"HDFWriter {self.path!r}: seq {tag!r} key {key!r} has shape {arr.shape}, expected {expected}"
                )
            arrays[key] = arr
        for key, arr in arrays.items():
            self._buffer[key].append(arr)
            self._buffer_bytes += arr.nbytes
        self._tags.append(str(tag))
        self._lens.append([len(arrays[k]) for k in self._columns])
        if self._buffer_bytes >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        for key, parts in self._buffer.items():
            if not parts:
                continue
            block = np.concatenate(parts, axis=0)
            ds = self._file[_h5_key(key)]
            start = self._rows[key]
            ds.resize(start + len(block), axis=0)
            ds[start:] = block
            self._rows[key] += len(block)
            parts.clear()
        self._buffer_bytes = 0

    def close(self) -> None:
        """Write the index datasets and attributes, then move the file into place."""
        if self._file is None:
            return
        try:
            self._flush()
            f = self._file
            n = len(self._tags)
            lens = np.asarray(self._lens, dtype=np.int32).reshape(n, len(self._columns))
            if not self._target_keys and "data" in self.specs:
                # RETURNN counts a dummy 'classes' column when a file has no targets (SimpleHDFWriter writes zeros).
                lens = np.concatenate([lens, np.zeros((n, 1), np.int32)], axis=1)
            f.create_dataset("seqLengths", data=lens, dtype=np.int32)
            _write_strings(f, "seqTags", self._tags)
            data_spec = self.specs.get("data")
            data_dim = data_spec.dim if data_spec else 1
            classes = self.specs.get("classes")
            f.attrs["numSeqs"] = n
            f.attrs["numTimesteps"] = int(lens[:, 0].sum()) if n else 0
            f.attrs["inputPattSize"] = data_dim
            f.attrs["numDims"] = 1
            # Old configs without num_outputs take the classes dim from numLabels of the train HDF.
            f.attrs["numLabels"] = classes.dim if classes is not None and classes.sparse else data_dim
            f.close()
            self._file = None
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left untouched."""
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            except Exception:  # already broken; the temp file goes anyway
                pass
        self._file = None
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)

    def __enter__(self) -> HDFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=h5py.string_dtype("utf-8"))


def write_hdf(
    path: str,
    seqs: Sequence[Mapping[str, np.ndarray]],
    tags: Sequence[str],
    specs: Mapping[str, DataSpec],
    labels: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Write a whole list of seqs at once (see :class:`HDFWriter`); atomic."""
    if len(seqs) != len(tags):
        raise ValueError(f"write_hdf {path!r}: {len(seqs)} seqs but {len(tags)} tags")
    with HDFWriter(path, specs, labels) as writer:
        for tag, seq in zip(tags, seqs):
            writer.add_seq(tag, seq)
