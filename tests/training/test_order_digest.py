"""The mid-epoch resume digest (``order_digest``) covers what the cursor counts in: with
``chunking`` the chunks, so a ``chunking`` changed between save and resume starts the epoch anew."""

from __future__ import annotations

from returnn_ray.config import Config, load_settings
from returnn_ray.data.from_settings import open_dataset
from returnn_ray.training.epoch import order_digest

NETWORK = {"output": {"class": "softmax", "loss": "ce", "from": ["data"]}}


def _digest(**extra) -> str:
    settings = load_settings(Config({
        "task": "train", "num_inputs": 9, "num_outputs": 2, "network": NETWORK,
        "train": {"class": "Task12AXDataset", "num_seqs": 20}, **extra,
    }))
    return order_digest(settings, open_dataset(settings, "train"), 1)


def test_changed_chunking_changes_the_digest():
    plain, chunked, other = _digest(), _digest(chunking="10:10"), _digest(chunking="10:5")
    assert len({plain, chunked, other}) == 3
    assert _digest(chunking="10:5") == other  # and it is a digest: the same config gives the same one


def test_chunking_that_cuts_nothing_else_keeps_the_seq_order_digest():
    """Without chunking the digest is the filtered seq order's, as partial checkpoints saved before have it."""
    assert _digest() == _digest(chunking="0")
