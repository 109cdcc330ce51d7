"""``returnn-ray dump-dataset``: what an epoch (or one rank's shard of it) reads, as JSON lines.

Per seq ``{"seq_idx": ..., "seq_tag": ..., "len": {key: n}}`` in the order the (shard of the)
epoch yields them, or with ``--batches`` per batch ``{"batch": i, "seq_tags": [...],
"padded_frames": n}``. Computed from the seq lengths and the batch plan alone: nothing is
trained, no Ray is started, so a user can check the data before spending GPU hours.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from returnn_ray.config import Config, Settings
from returnn_ray.data import plan_epoch
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
    for i, indices in enumerate(plan.for_rank(rank)):
        if batches:
            padded = int(ds.seq_lens[first_key][indices].max(initial=0)) * len(indices)
            line = {"batch": i, "seq_tags": [ds.seq_tags[j] for j in indices], "padded_frames": padded}
            out.write(json.dumps(line) + "\n")
            continue
        for j in indices.tolist():
            lens = {key: int(ds.seq_lens[key][j]) for key in ds.data_keys}
            out.write(json.dumps({"seq_idx": j, "seq_tag": ds.seq_tags[j], "len": lens}) + "\n")
    return 0
