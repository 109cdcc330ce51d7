"""DDP at the edges of the data, on 2 workers of the shared local Ray: fewer seqs than workers (a
rank with nothing to train or score), one very long seq, a sub-epoch that is a single batch.

Each must end every epoch on every rank (no DDP hang: pytest-timeout would fail the test) and use
every seq exactly once: the frames the epoch's loss was computed over, summed over both ranks,
equal the frames of the seqs the (sub)epoch holds.
"""

from __future__ import annotations

import ast
import re

import pytest

from returnn_ray.cli import main
from test_train import NETWORK, scores  # tests/tasks is on sys.path (rootdir import)


def write_config(tmp_path, lens, *, dev_lens=None, partition_epoch=1, num_epochs=2, **extra) -> str:
    def dataset(lens, seed):
        return (
            f"{{'class': 'StaticDataset', 'partition_epoch': {partition_epoch}, 'seq_ordering': 'laplace:.2', 'data': ["
            f"{{'data': numpy.random.RandomState(({seed}, i)).randn(n, 5).astype('float32'), "
            f"'classes': numpy.random.RandomState(({seed}, i)).randint(0, 3, n).astype('int32')}} "
            f"for i, n in enumerate({list(lens)!r})], 'output_dim': {{'data': (5, 2), 'classes': (3, 1)}}}}"
        )

    lines = [
        "#!returnn.py",
        "import numpy",
        f"train = {dataset(lens, 1)}",
        f"dev = {dataset(dev_lens, 2)}" if dev_lens else "",
        "extern_data = {'data': {'dim': 5}, 'classes': {'dim': 3, 'sparse': True}}",
        f"network = {NETWORK!r}",
        f"model = {str(tmp_path / 'model')!r}",
        f"learning_rate_file = {str(tmp_path / 'learning_rates')!r}",
        f"log = {str(tmp_path / 'train.log')!r}",
        "log_verbosity = 4",
        f"num_epochs = {num_epochs}",
        "learning_rate = 0.01",
        *(f"{k} = {v!r}" for k, v in extra.items()),
    ]
    path = tmp_path / "edge.config"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def frames_per_epoch(tmp_path) -> dict[int, int]:
    """epoch -> frames of the training loss over all ranks (the worker's level-4 epoch line)."""
    out = {}
    for m in re.finditer(r"epoch (\d+): \d+ seqs, frames per loss (\{.*\})", (tmp_path / "train.log").read_text()):
        out[int(m.group(1))] = ast.literal_eval(m.group(2))["cost:output"]
    return out


@pytest.mark.parametrize(
    "lens, dev_lens, options, frames",
    [
        # one seq, two ranks: rank 1 trains on padding steps only and scores an empty dev shard
        pytest.param([6], [4], dict(batch_size=100, max_seqs=2), {1: 6, 2: 6}, id="fewer-seqs-than-workers"),
        # a seq 20x batch_size forms its own batch; the other rank's step is short
        pytest.param([3, 2000, 5, 2, 9], [3], dict(batch_size=100, max_seqs=2), {1: 2019, 2: 2019}, id="one-very-long-seq"),
        # 6 seqs in 3 sub-epochs of 2, each a single batch cut into one piece per rank
        pytest.param(
            [3, 4, 5, 6, 7, 8], None, dict(batch_size=1000, max_seqs=10, partition_epoch=3, num_epochs=3), None,
            id="single-batch-sub-epochs",
        ),
    ],
)
def test_two_workers_end_every_epoch_and_use_every_seq_once(ray_session, tmp_path, lens, dev_lens, options, frames):
    options = dict(options)
    partition_epoch = options.pop("partition_epoch", 1)
    num_epochs = options.pop("num_epochs", 2)
    config = write_config(tmp_path, lens, dev_lens=dev_lens, partition_epoch=partition_epoch, num_epochs=num_epochs, **options)
    assert main([config, "++ray_num_workers", "2"]) == 0
    assert scores(tmp_path).keys() == set(range(1, num_epochs + 1))
    seen = frames_per_epoch(tmp_path)
    if frames is not None:
        assert seen == frames
    else:  # sub-epochs: together they are the whole corpus, each seq once
        assert sorted(seen) == list(range(1, num_epochs + 1)) and sum(seen.values()) == sum(lens)
        assert all(v > 0 for v in seen.values())
    if dev_lens:
        assert all("dev_score" in s for s in scores(tmp_path).values())
