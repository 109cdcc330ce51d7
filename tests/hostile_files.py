"""The hostile data files of the bad-input table (tests/test_bad_input.py): RETURNN HDF files with
one thing wrong each, truncated or random files, a pickle that would run code, checkpoints that
fit nothing. Each maker takes the path to write."""

from __future__ import annotations

import os
import pickle
import random
from typing import Callable

import h5py
import numpy as np

from returnn_ray.data import DataSpec, write_hdf

HDF_SPECS = {"data": DataSpec(3), "classes": DataSpec(4, sparse=True, dtype="int32")}


def _seqs(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.RandomState(0)
    return [
        {"data": rng.standard_normal((t, 3)).astype("float32"), "classes": rng.randint(0, 4, t).astype("int32")}
        for t in (5, 7, 4, 6, 3)[:n]
    ]


def hdf(edit: Callable[[list], None] | None = None, *, specs=HDF_SPECS, n: int = 3) -> Callable[[str], None]:
    """A writer of a valid RETURNN HDF file (tags ``seq-0`` ...), after ``edit`` changed its seqs."""

    def write(path: str) -> None:
        seqs = _seqs(n)
        if edit is not None:
            edit(seqs)
        seqs = [{k: v for k, v in seq.items() if k in specs} for seq in seqs]
        write_hdf(path, seqs, [f"seq-{i}" for i in range(len(seqs))], specs)

    return write


def set_value(seq: int, key: str, index, value) -> Callable[[list], None]:
    def edit(seqs: list) -> None:
        seqs[seq][key][index] = value

    return edit


def truncated_hdf(path: str) -> None:
    hdf()(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def random_bytes(path: str) -> None:
    with open(path, "wb") as f:
        f.write(random.Random(0).randbytes(4096))


def wider_data(seqs: list) -> None:
    for seq in seqs:
        seq["data"] = np.zeros((len(seq["data"]), 5), "float32")


class _Touch:
    """Unpickling it would create the file ``path`` (what a malicious pickle does, harmlessly)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def pickle_that_runs_code(path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(["seq-0", _Touch(os.path.join(os.path.dirname(path), "pwned"))], f)


def zero_length(seqs: list) -> None:
    for seq in seqs:
        seq["data"], seq["classes"] = seq["data"][:0], seq["classes"][:0]


def no_targets(seqs: list) -> None:
    for seq in seqs:
        seq["classes"] = seq["classes"][:0]


def hdf_with_extra_row(key: str) -> Callable[[str], None]:
    """A valid HDF file whose ``key`` dataset then gets one row more than its seqLengths sum to."""

    def write(path: str) -> None:
        hdf()(path)
        with h5py.File(path, "r+") as f:
            f[key].resize(f[key].shape[0] + 1, axis=0)

    return write
def checkpoint(path: str) -> None:
    """A checkpoint file, so that forward/search get past looking for one (its weights fit nothing)."""
    import torch

    torch.save({"model": {}, "epoch": 1, "step": 0}, path)


def torch_file(state: dict) -> Callable[[str], None]:
    """Writes ``state`` with torch.save (a checkpoint for preload_from_files rows)."""

    def write(path: str) -> None:
        import torch

        torch.save(state, path)

    return write


def hdf_without_data(path: str) -> None:
    """Index datasets only: seqTags and seqLengths, neither ``inputs`` nor ``targets``."""
    with h5py.File(path, "w") as f:
        f.create_dataset("seqTags", data=np.array(["seq-0"], dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("seqLengths", data=np.array([[5, 5]], dtype=np.int32))
