"""From typed settings to data: which datasets a run uses, opening them, their batching and keys.

Every layer above reads the config's datasets through these (training, inference, sweep and
the tasks), so this module sits in the data layer and imports only :mod:`returnn_ray.config`.
"""

from __future__ import annotations

import logging
from typing import Mapping

from returnn_ray.config import Settings
from returnn_ray.data import BatchingOptions, DataSpec, Dataset, check_extern_data, extern_data_from_config, init_dataset
from returnn_ray.data.chunking import Chunking, parse_chunking
from returnn_ray.data.epochs import check_epochs
from returnn_ray.errors import ConfigError

logger = logging.getLogger(__name__)

TRAIN_PHASE_DATASETS = ("train",)
"""Datasets batched with ``batch_size_train``; every other one uses ``batch_size_dev``."""

INFERENCE_TASKS = ("forward", "search")
"""Tasks that write one output per seq of their dataset."""


def dataset_spec(settings: Settings, name: str):
    """The config's spec of dataset ``name`` (``train``, ``dev``, ``eval``, ... or an ``eval_datasets`` entry)."""
    data = settings.data
    spec = getattr(data, name, None) if name in ("train", "dev", "eval", "forward_data", "search_data") else None
    if spec is None and name in (data.eval_datasets or {}):
        spec = data.eval_datasets[name]
    if spec is None:
        known = [n for n in ("train", "dev", "eval", "forward_data", "search_data") if getattr(data, n) is not None]
        known += list(data.eval_datasets or {})
        raise ConfigError(f"dataset {name!r} is not set in the config (set: {', '.join(known) or 'none'})")
    return spec


def eval_dataset_names(settings: Settings) -> list[str]:
    """Datasets scored after each epoch: ``dev``, ``eval`` when set, and every ``eval_datasets`` entry."""
    names = [n for n in ("dev", "eval") if getattr(settings.data, n) is not None]
    return names + [n for n in (settings.data.eval_datasets or {}) if n not in names]


def open_dataset(settings: Settings, name: str) -> Dataset:
    """Build dataset ``name`` and check it against ``extern_data`` (or ``num_inputs``/``num_outputs``)."""
    dataset = init_dataset(dataset_spec(settings, name), name=name, batching=settings.data.batching)
    data = settings.data
    extern_data = data.extern_data or extern_data_from_config(None, data.num_inputs, data.num_outputs)
    # A dataset need not carry every key (an eval set without targets), but what it has must agree;
    # the train set needs every key, every set the model's input `data`.
    needed = list(extern_data) if name in TRAIN_PHASE_DATASETS else [k for k in extern_data if _is_input(k, data)]
    check_extern_data(dataset, extern_data, keys=[k for k in extern_data if k in dataset.specs or k in needed])
    return dataset


def _is_input(key: str, data) -> bool:
    """Whether ``key`` is what every dataset must have: ``data``, unless extern_data marks it not
    ``available_for_inference``."""
    opts = (data.extern_data or {}).get(key)
    return key == "data" and not (isinstance(opts, dict) and opts.get("available_for_inference") is False)


def data_specs(settings: Settings, train: Dataset) -> dict[str, DataSpec]:
    """The data keys the model sees: ``extern_data`` (or num_inputs/num_outputs), else the train data's."""
    d = settings.data
    specs = extern_data_from_config(d.extern_data, d.num_inputs, d.num_outputs)
    return {k: train.specs.get(k, s) for k, s in specs.items()} if specs else dict(train.specs)


def batching_options(settings: Settings, name: str) -> BatchingOptions:
    """The batching rule for dataset ``name`` (``batch_size_train`` for train, ``batch_size_dev``
    else; ``chunking`` where RETURNN's engine for the config chunks it, :func:`chunking`)."""
    b = settings.batching
    return BatchingOptions(
        batch_size=b.batch_size_for(train=name in TRAIN_PHASE_DATASETS),
        max_seqs=b.max_seqs,
        max_seq_length=b.max_seq_length,
        min_seq_length=b.min_seq_length,
        chunking=chunking(settings, name),
    )


def chunking(settings: Settings, name: str = "train") -> Chunking | None:
    """The config's ``chunking`` of dataset ``name``, cut by the rule of the RETURNN engine that
    runs such a config, and on the datasets that engine chunks:

    - a network dict: RETURNN's TF engine (``Dataset.iterate_seqs``), train only: it gives dev/eval
      ``chunking="0"`` (``Dataset.get_default_kwargs_eval``);
    - any other config: RETURNN's torch engine (``ChunkingIterDataPipe``) on every data loader it
      makes (``Engine._create_data_loader``): train, dev, eval and ``eval_datasets`` alike, so their
      scores are of the chunks. Its forward is chunked too, each chunk forwarded as a seq under its
      seq's tag; forward/search here write one entry per seq, so a forward or search of a chunked
      torch config is refused (a wrong output is worse than an error).
    """
    b = settings.batching
    rule = "tf" if settings.training.network is not None else "torch"
    result = parse_chunking(b.chunking, b.min_chunk_size, rule=rule)
    if result is None or (rule == "tf" and name not in TRAIN_PHASE_DATASETS):
        return None
    if rule == "tf" and b.chunking_variance:
        raise ConfigError(
            f"chunking_variance {b.chunking_variance}: random chunk sizes are not supported; remove it (or set 0)"
        )
    task = settings.run.task
    if task in INFERENCE_TASKS and name not in TRAIN_PHASE_DATASETS:
        raise ConfigError(
            f"{result}: RETURNN's torch engine would {task} each chunk of dataset {name!r} as a seq of its own"
            f" (several outputs per seq tag), and {task} here writes whole seqs; unset chunking for the"
            f" {task} (++chunking 0)"
        )
    return result


def check_datasets_for_training(settings: Settings, datasets: Mapping[str, Dataset]) -> None:
    """Before Ray starts: every epoch the run trains or evaluates has seqs (one line saying why
    not), and a warning for seq tags that occur twice (a seq list or a forward would confuse them)."""
    for name, dataset in datasets.items():
        check_epochs(dataset, batching_options(settings, name), settings.run.num_epochs)
        duplicates = dataset.duplicate_tags_message()
        if duplicates:
            logger.warning(f"{duplicates}; training uses each seq, but tags should be unique")
