"""The finished batches of a forward/search run, kept until the output file is complete.

A run's results go to ``<output>.parts/`` first: one file per planned batch, written atomically
by the driver as the batch's result arrives, plus ``manifest.json`` naming what the run is
(checkpoint, dataset, batch plan, options). Rerunning the same command after an interruption
finds the directory, checks that the manifest matches, and only runs the batches that have no
part file; when all are there, the output file is assembled (atomically) and the directory
removed. Because a batch's part is written once under its batch id and the plan is fixed by
the manifest, every seq ends up in the output exactly once, however often a batch was run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from returnn_ray.atomic import atomic_write, is_temp_path
from returnn_ray.errors import UserError

_PART = re.compile(r"(\d{8})\.part")


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


class PartStore:
    """``<output>.parts/``: one part file per finished batch, and the run's manifest."""

    def __init__(self, output_path: str, manifest: Mapping[str, Any]) -> None:
        self.dir = os.path.abspath(output_path) + ".parts"
        self.manifest = dict(manifest)

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
        for key in sorted(set(previous) | set(self.manifest)):
            if previous.get(key) != self.manifest.get(key):
                raise UserError(
                    f"{self.dir!r} holds results of another run ({key} was {previous.get(key)!r}, now"
                    f" {self.manifest.get(key)!r}); rerun with the same config to finish it, or delete the directory"
                )
        return self.done()

    def done(self) -> set[int]:
        ids = set()
        for name in os.listdir(self.dir):
            m = _PART.fullmatch(name)
            if m:
                ids.add(int(m.group(1)))
            elif is_temp_path(name):
                os.unlink(os.path.join(self.dir, name))  # a write cut short by a kill
        return ids

    def put(self, batch_id: int, payload: bytes) -> None:
        atomic_write(self._path(batch_id), payload)

    def get(self, batch_id: int) -> bytes:
        with open(self._path(batch_id), "rb") as f:
            return f.read()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _path(self, batch_id: int) -> str:
        return os.path.join(self.dir, f"{batch_id:08d}.part")
