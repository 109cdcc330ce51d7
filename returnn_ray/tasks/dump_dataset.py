"""``returnn-ray dump-dataset``: what an epoch (or one rank's shard of it) reads, as JSON lines.

Per seq ``{"seq_idx": ..., "seq_tag": ..., "len": {key: n}}`` in the order the (shard of the)
epoch yields them, or with ``--batches`` per batch ``{"batch": i, "seq_tags": [...],
"padded_frames": n}``. With ``chunking`` (the train dataset) each entry is a chunk, with
``"chunk": {key: [start, end]}`` and its lengths. Computed from the seq lengths and the batch plan alone: nothing is
trained, no Ray is started, so a user can check the data before spending GPU hours.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from returnn_ray.config import Config, Settings
from returnn_ray.data import plan_epoch
from returnn_ray.data.batching import batch_lens
from returnn_ray.data.epochs import check_epoch
from returnn_ray.data.from_settings import batching_options, open_dataset


def run(
    settings: Settings,
    config: Config,
    *,
    dataset: str,
    epoch: int,
    shard: tuple[int, int] | None,
    batches: bool,
    out: TextIO = sys.stdout,
) -> int:
    ds = open_dataset(settings, dataset)
    rank, num_ranks = shard or (0, 1)
    order, options = ds.seq_order_for_epoch(epoch), batching_options(settings, dataset)
    check_epoch(ds, order, options, epoch)  # what training would refuse: say why, not print nothing
    plan = plan_epoch(order, ds.seq_lens, options, num_ranks)
    first_key = ds.data_keys[0]
    keys = list(ds.seq_lens)
    for i, indices in enumerate(plan.for_rank(rank)):
        seq_idx = indices[:, 0] if indices.ndim == 2 else indices
        if batches:
            padded = int(batch_lens(ds.seq_lens, indices, first_key).max(initial=0)) * len(indices)
            line = {"batch": i, "seq_tags": [ds.seq_tags[j] for j in seq_idx], "padded_frames": padded}
            out.write(json.dumps(line) + "\n")
            continue
        for n, j in enumerate(seq_idx.tolist()):
            line = {"seq_idx": j, "seq_tag": ds.seq_tags[j]}
            if indices.ndim == 2:  # a chunk: its frames of each key
                row = indices[n].tolist()
                line["chunk"] = {key: row[1 + 2 * k : 3 + 2 * k] for k, key in enumerate(keys)}
                line["len"] = {key: row[2 + 2 * k] - row[1 + 2 * k] for k, key in enumerate(keys)}
            else:
                line["len"] = {key: int(ds.seq_lens[key][j]) for key in ds.data_keys}
            out.write(json.dumps(line) + "\n")
    return 0
