"""The training worker's own check of each epoch it plans: an empty epoch is the reason in one line,
not a NaN score that reads as a diverged model. (The driver checks the epochs before Ray starts,
``tests/data/test_epochs.py``; this is what catches a later full epoch of a random order, or a
dataset the driver did not see, such as the epoch an ``eval`` task scores.)"""

from __future__ import annotations

import json

import pytest
import torch

from returnn_ray.config import load_config, load_settings
from returnn_ray.data.from_settings import data_specs, open_dataset
from returnn_ray.errors import DataError
from returnn_ray.model.build import model_spec
from returnn_ray.training.epoch import epoch_batches, eval_epoch
from returnn_ray.training.worker import WorkerContext

CONFIG = {
    "task": "train",
    "train": {"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 5},
    "dev": {"class": "Task12AXDataset", "num_seqs": 3, "partition_epoch": 5},
    "num_inputs": 9,
    "num_outputs": 2,
    "batch_size": 400,
    "num_epochs": 3,
    "network": {"output": {"class": "softmax", "loss": "ce"}},
}


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CONFIG))
    return load_settings(load_config([str(path)]))


CTX = WorkerContext(rank=0, world_size=1, device=torch.device("cpu"), local=True)


def test_the_worker_refuses_an_empty_epoch_it_plans(settings):
    train = open_dataset(settings, "train")
    assert epoch_batches(settings, CTX, train, 3, None).plan.num_seqs == 1
    with pytest.raises(DataError, match=r"dataset 'train': epoch 4 \(sub-epoch 4 of partition_epoch 5\) has no seqs: "
                                        r"partition_epoch 5 > 3 seqs"):
        epoch_batches(settings, CTX, train, 4, None)


def test_an_empty_evaluation_epoch_is_refused_too(settings):
    dev = open_dataset(settings, "dev")
    specs = data_specs(settings, dev)
    spec = model_spec(settings, specs)
    model = spec.build(1, 0)
    scores = eval_epoch(settings, CTX, spec, model, dev, "dev", specs, 3, 0)
    assert scores and all(v == v for v in scores.values())  # one seq: finite scores
    with pytest.raises(DataError, match=r"dataset 'dev': epoch 5 \(sub-epoch 5 of partition_epoch 5\) has no seqs"):
        eval_epoch(settings, CTX, spec, model, dev, "dev", specs, 5, 0)
