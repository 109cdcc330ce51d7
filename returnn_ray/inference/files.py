"""The files a forward/search run reads and writes: which they are, whether they changed since
the finished parts were written, and that the output file is none of them.

A rerun after an interruption reuses the parts in ``<output>.parts/``; they are only right if
the data they were computed from is still the data. Reading the whole corpus again on every
resume would cost as much as the run, so there are two levels:

- **File identity** (:func:`file_identity`): path, size, inode, ``mtime_ns`` and ``ctime_ns`` of
  each data file, kept in the parts' manifest. Any write to a file, a ``cp`` over it, a rename
  onto it or a ``touch`` changes its ``ctime`` (which no user call can set back), so an equal
  identity means the bytes are the ones the parts read.
- **Input digests** (:func:`batch_digest`): each part holds a digest of the padded arrays its
  actor read. When a file's identity changed (or the dataset has no files to identify, as a
  generated or in-memory one), the driver reads the finished batches' seqs again and reruns
  every batch whose digest differs; a copied or touched file with the same content keeps its
  parts.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

import numpy as np

from returnn_ray.atomic import same_file_among
from returnn_ray.data.base import Dataset
from returnn_ray.errors import UserError

DIGEST_BYTES = 32


def data_files(dataset: Dataset) -> list[str] | None:
    """The files ``dataset`` reads its seqs from (absolute), or None if it has none we know of
    (a generated or in-memory dataset, or a user's class): then the data is checked seq by seq."""
    files: list[str] = []
    while hasattr(dataset, "inner"):  # SeqListFilteredDataset: its tag list and the inner dataset
        filter_file = getattr(dataset, "seq_list_filter_file", None)
        if filter_file:
            files.append(os.path.abspath(filter_file))
        dataset = dataset.inner
    inner = getattr(dataset, "files", None)
    if not isinstance(inner, (list, tuple)) or not inner:
        return None
    return files + [os.path.abspath(f) for f in inner]


def file_identity(paths: Sequence[str] | None) -> list[dict[str, Any]] | None:
    """Size, inode, mtime and ctime of each file (JSON-ready); None for a dataset without files."""
    if paths is None:
        return None
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UserError(f"cannot read data file {path!r}: {exc.strerror}") from exc
        out.append(
            {"path": path, "size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
        )
    return out


def changed_file(before: list[dict[str, Any]] | None, now: list[dict[str, Any]] | None) -> str | None:
    """Why the data may differ from ``before`` (a file's name and what changed), or None if it cannot."""
    if before is None or now is None:
        return "the dataset has no files to compare" if before == now else "the dataset's files changed"
    if [f["path"] for f in before] != [f["path"] for f in now]:
        return "the dataset's files changed"
    for old, new in zip(before, now):
        diff = [k for k in ("size", "inode", "mtime_ns", "ctime_ns") if old.get(k) != new.get(k)]
        if diff:
            return f"data file {new['path']!r} changed ({', '.join(diff)})"
    return None


def batch_digest(cols: Mapping[str, np.ndarray]) -> bytes:
    """A digest of a padded batch (:func:`~returnn_ray.data.ray_data.pad_batch`'s columns): every
    key's dtype, shape and bytes, so other values, lengths or seqs give another digest."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for key in sorted(cols):
        a = np.ascontiguousarray(cols[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest()


def check_output_file(path: str, setting: str, inputs: Sequence[str]) -> None:
    """One line, before anything runs, if ``path`` cannot be the output: a directory, in a folder
    that cannot be made or written, or the same file as one of the run's ``inputs`` (data,
    checkpoint). A folder that does not exist yet is made with the results (as for ``model``),
    so only its nearest existing parent is checked here, and nothing is created."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{setting} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'out')!r}")
    while not os.path.isdir(directory):
        if os.path.exists(directory):
            raise UserError(f"{setting} {path!r}: {directory!r} is a file, not a directory; fix {setting}")
        directory = os.path.dirname(directory)
    same = same_file_among(path, inputs)
    if same is not None:
        raise UserError(f"{setting} {path!r} is an input of this run ({same!r}); choose another {setting}")
    if not os.access(directory, os.W_OK):
        raise UserError(f"{setting} {path!r}: cannot write in {directory!r}; fix {setting} or the permissions")
