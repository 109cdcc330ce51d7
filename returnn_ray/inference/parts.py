"""The finished batches of a forward/search run, kept until the output file is complete.

A run's results go to ``<output>.parts/`` first: one file per planned batch, written atomically
by the driver as the batch's result arrives, plus ``manifest.json`` naming what the run is
(checkpoint, dataset, batch plan, options, and the data files' identity). Each part starts with
the digest of the input arrays its batch was computed from (:mod:`returnn_ray.inference.files`).
Rerunning the same command after an interruption finds the directory, checks that the manifest
matches, drops the parts whose input digest no longer matches the data (checked only when a data
file changed, see :mod:`~returnn_ray.inference.files`), and only runs the batches that have no
part file; when all are there, the output file is assembled (atomically) and the directory
removed. Because a batch's part is written once under its batch id and the plan is fixed by
the manifest, every seq ends up in the output exactly once, however often a batch was run.

Parts are written atomically (temp file, rename) but not fsynced: they are deleted seconds after
the run, and an fsync per part made the driver write every result to disk at once (with 2 actors
on 2 cores, 5-10 ms of CPU per 3 MB part that the actors lacked). A kill of the run leaves whole
parts (the rename); only an OS crash or power cut can leave a renamed part whose data never
reached the disk. So each part's header also holds its payload's length and CRC-32, and a rerun
checks the parts it finds: a torn one is deleted and its batch runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from returnn_ray.atomic import atomic_write, is_temp_path
from returnn_ray.errors import UserError
from returnn_ray.inference.files import DIGEST_BYTES

_PART = re.compile(r"(\d{8})\.part")
FORMAT = 3
"""Part files start with the input digest, the payload's CRC-32 and length (format 3); a parts dir of
an older format is refused."""
_CHECK = struct.Struct(">IQ")
"""After the input digest: the payload's CRC-32 and its length in bytes."""
HEADER_BYTES = DIGEST_BYTES + _CHECK.size
DATA_FILES = "data_files"
"""The manifest entry of the data files' identity: compared apart, a change means 'check the parts'."""


def plan_digest(batches: Sequence[np.ndarray]) -> str:
    """A digest of a batch plan: which seqs, in which batches, in which order."""
    h = hashlib.sha256()
    for indices in batches:
        h.update(np.asarray(indices, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def tags_digest(tags: Sequence[str]) -> str:
    """A digest of a dataset's seq tags."""
    return hashlib.sha256("\n".join(tags).encode("utf-8")).hexdigest()


_DIGESTS = {
    "dataset_tags": "other seq tags in the dataset",
    "plan": "another plan (the batches: batch_size, max_seqs, seq order)",
}
"""Manifest entries that are digests: what differs, in words (the digests say nothing)."""


class PartStore:
    """``<output>.parts/``: one part file per finished batch, and the run's manifest."""

    def __init__(self, output_path: str, manifest: Mapping[str, Any]) -> None:
        self.dir = os.path.abspath(output_path) + ".parts"
        self.manifest = {"format": FORMAT, **manifest}
        self.previous_data_files: Any = None
        """The data files' identity when the finished parts were written (after :meth:`open`)."""
        self.torn: set[int] = set()
        """Batch ids whose part :meth:`open` found torn (an OS crash while it was new) and deleted."""

    def open(self) -> set[int]:
        """Create the directory, or check a previous run's manifest; the batch ids already done."""
        path = os.path.join(self.dir, "manifest.json")
        if not os.path.isdir(self.dir):
            try:
                os.makedirs(self.dir)
            except OSError as exc:
                raise UserError(f"cannot create {self.dir!r} for the results in progress: {exc.strerror}") from exc
            atomic_write(path, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")
            return set()
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.dir!r} holds no readable manifest.json; delete the directory to start over") from exc
        for key in sorted((set(previous) | set(self.manifest)) - {DATA_FILES}):
            if previous.get(key) != self.manifest.get(key):
                what = _DIGESTS.get(key) or f"{key} was {previous.get(key)!r}, now {self.manifest.get(key)!r}"
                raise UserError(
                    f"{self.dir!r} holds results of another run ({what}); rerun with the same config to finish it,"
                    " or delete the directory"
                )
        self.previous_data_files = previous.get(DATA_FILES)
        done = self.done()
        self.torn = {i for i in done if not self._whole(i)}
        self.drop(self.torn)
        return done - self.torn

    def record_data_files(self) -> None:
        """Make the manifest name the data files as they are now (after the parts were checked)."""
        atomic_write(os.path.join(self.dir, "manifest.json"), json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    def done(self) -> set[int]:
        ids = set()
        for name in os.listdir(self.dir):
            m = _PART.fullmatch(name)
            if m:
                ids.add(int(m.group(1)))
            elif is_temp_path(name):
                os.unlink(os.path.join(self.dir, name))  # a write cut short by a kill
        return ids

    def put(self, batch_id: int, payload: bytes, input_digest: bytes) -> None:
        """Write a batch's result, headed by the digest of the input arrays it was computed from and
        the payload's CRC-32 and length (not fsynced: see the module's docstring)."""
        if len(input_digest) != DIGEST_BYTES:
            raise ValueError(f"input digest of {len(input_digest)} bytes, expected {DIGEST_BYTES}")
        check = _CHECK.pack(zlib.crc32(payload), len(payload))
        atomic_write(self._path(batch_id), [input_digest, check, payload], durable=False)

    def get(self, batch_id: int) -> bytes:
        with open(self._path(batch_id), "rb") as f:
            return f.read()[HEADER_BYTES:]

    def _whole(self, batch_id: int) -> bool:
        """Whether a part holds the payload its header describes, byte for byte (CRC-32)."""
        with open(self._path(batch_id), "rb") as f:
            data = f.read()
        if len(data) < HEADER_BYTES:
            return False
        crc, length = _CHECK.unpack_from(data, DIGEST_BYTES)
        payload = memoryview(data)[HEADER_BYTES:]
        return len(payload) == length and zlib.crc32(payload) == crc

    def input_digest(self, batch_id: int) -> bytes:
        with open(self._path(batch_id), "rb") as f:
            return f.read(DIGEST_BYTES)

    def drop(self, batch_ids) -> None:
        """Delete these parts (computed from data that has changed since): they run again."""
        for batch_id in batch_ids:
            os.unlink(self._path(batch_id))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _path(self, batch_id: int) -> str:
        return os.path.join(self.dir, f"{batch_id:08d}.part")
