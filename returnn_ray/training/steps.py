"""The padding step: what a rank runs when the batch plan has no batch left for it.

The model and its training step are built by :mod:`returnn_ray.model.build`, for training and
inference alike; only this training-specific input lives here.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch


def dummy_batch(specs: Mapping[str, DataSpec], device: torch.device) -> Batch:
    """One seq of one frame per key (zeros, label 0, seq tag ``returnn-ray-no-batch``).

    Used to learn a model's loss names on a rank that saw no batch; training's padding steps
    run no data at all (:class:`~returnn_ray.model.build.Padded`).
    """
    data, lens = {}, {}
    for key, spec in specs.items():
        shape = (1, 1) if spec.sparse else (1, 1, spec.dim)
        data[key] = torch.zeros(shape, dtype=getattr(torch, spec.dtype), device=device)
        lens[key] = torch.ones((1,), dtype=torch.int32, device=device)
    # a tag as every batch has one: a train_step that reads extern_data["seq_tag"] works here too
    return Batch(seq_idx=np.zeros((0,), dtype=np.int64), data=data, lens=lens, seq_tags=["returnn-ray-no-batch"])
