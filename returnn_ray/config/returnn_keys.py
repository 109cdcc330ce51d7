"""RETURNN config keys returnn-ray does not implement: accepted without effect (IGNORED_KEYS), or,
where they would change the training, refused in one line.

Keys nothing reads are only warned about (:func:`returnn_ray.config.settings.warn_unread_keys`),
and functions not at all, since a Python config is full of helper functions. But a function
under a name RETURNN reads (``epoch_start = ...``, ``startup_callback = ...``) is code the user
expects to run, and an updater option RETURNN applies (``gradient_noise``) changes the maths: a
run without them trains something else, silently. So both are errors.

>>> from returnn_ray.config.files import Config
>>> check_returnn_keys(Config({"epoch_start": lambda **kwargs: None}), known=frozenset())
Traceback (most recent call last):
returnn_ray.errors.ConfigError: config key 'epoch_start' is a function RETURNN calls (at each epoch's start), which returnn-ray does not implement; remove it, or rename it if it is only a helper
"""

from __future__ import annotations

from typing import AbstractSet

from returnn_ray.config.files import Config
from returnn_ray.errors import ConfigError

__all__ = [
    "IGNORED_KEYS", "RETURNN_CALLABLE_KEYS", "UNIMPLEMENTED_TRAINING_KEYS", "UNIMPLEMENTED_UPDATER_KEYS", "check_returnn_keys",
]

#: RETURNN keys returnn-ray accepts without effect, with the reason (no "unused key" warning).
IGNORED_KEYS: dict[str, str] = {
    "use_tensorflow": "there is no TensorFlow here; a `network` dict is rebuilt in PyTorch",
    "backend": "always PyTorch; a `network` dict is rebuilt in PyTorch",
    "behavior_version": "RETURNN's behaviour switches do not apply",
    "tf_log_memory_usage": "TensorFlow only",
    "tf_session_opts": "TensorFlow only",
    "debug_print_layer_output_template": "TensorFlow layers only",
    "debug_add_check_numerics_ops": "TensorFlow only",
    "debug_add_check_numerics_on_output": "TensorFlow only",
    "log_batch_size": "step lines (log_verbosity 5) always show the step time",
    "log_format": "one log format",
    "cache_size": "datasets are read lazily",
    "multiprocessing": "data loading is done by Ray",
    "update_on_device": "always",
    "truncation": "no truncated BPTT",
    "stop_on_nonfinite_train_score": "not supported yet",
    "start_epoch": "training resumes from the newest complete checkpoint",
    "use_horovod": "DDP is set up by Ray Train (ray_num_workers)",
    "torch_dataloader_opts": "data loading is done by Ray",
    "watch_memory": "not supported",
    "description": "RETURNN's free-text -d option",
}

RETURNN_CALLABLE_KEYS: dict[str, str] = {
    "epoch_start": "at each epoch's start",
    "epoch_end": "at each epoch's end",
    "startup_callback": "at start-up",
    "forward_callback": "with each forwarded seq",
    "get_network": "for a network dict per epoch",
    "init_new_network_callback": "when a network is built",
    "dataset_pipeline": "to build the data pipeline",
    "dynamic_learning_rate": "for each step's learning rate",
    "load_model_post_hooks": "after a model is loaded",
    "get_model": "to build the model",
    "train_step": "in each training step",
    "forward_step": "in each forward step",
    "optimizer": "for the optimizer class",
    "accum_grad_multiple_step": "for each step's gradient accumulation",
    "batch_size": "for each batch's size",
    "max_seqs": "for each batch's size",
    "learning_rates": "for the learning rates",
    "learning_rate_control_error_measure": "for the score newbob watches",
    "newbob_learning_rate_decay": "for the decayed learning rate",
    "newbob_learning_rate_growth": "for the grown learning rate",
    "preload_from_files": "for the files to load",
    "extern_data": "for the data keys",
    "model_outputs": "for the forward outputs",
    "train": "for the train dataset",
    "dev": "for the dev dataset",
    "eval": "for the eval dataset",
    "eval_datasets": "for the datasets to score",
    "forward_data": "for the dataset to forward",
    "search_data": "for the dataset to search",
    "torch_batching": "to batch the seqs",
    "torch_dataloader_opts": "for the data loader",
    "torch_distributed": "for the distributed training",
    "torch_amp": "for mixed precision",
    "grad_scaler": "for the gradient scaler",
    "extra_updates": "for extra variable updates",
}
"""Keys RETURNN reads as Python values (``config.typed_value``) where a function can stand, with
when RETURNN calls it. Keys returnn-ray reads itself are checked where they are read;
tests/test_returnn_keys.py checks this list against the installed RETURNN's source."""

UNIMPLEMENTED_UPDATER_KEYS: dict[str, str] = {
    "gradient_noise": "returnn-ray adds no gradient noise",
    "num_allowed_consec_invalid_gradient_steps": "returnn-ray does not skip updates with non-finite gradients",
    "gradient_clip_norm": "TensorFlow only (RETURNN's torch engine refuses it too); use gradient_clip_global_norm",
    "gradient_clip_avg_norm": "TensorFlow only (RETURNN's torch engine refuses it too); use gradient_clip_global_norm",
    "global_norm_tag": "TensorFlow only (RETURNN's torch engine refuses it too)",
    "gradient_clip_global_norm_tag": "TensorFlow only (RETURNN's torch engine refuses it too)",
    "grad_norm_to_clip_to_zero": "TensorFlow only (RETURNN's torch engine refuses it too)",
    "gradient_nan_inf_filter": "TensorFlow only (RETURNN's torch engine refuses it too)",
    "debug_grad_summaries": "TensorFlow only (RETURNN's torch engine refuses it too)",
    "grad_clip": "the option is called gradient_clip_global_norm (or gradient_clip for each value)",
    "momentum": "RETURNN's TF flag; set optimizer = {'class': 'sgd', 'momentum': ...}",
    "adadelta": "RETURNN's TF flag; set optimizer = {'class': 'adadelta', ...}",
    "adagrad": "RETURNN's TF flag; set optimizer = {'class': 'adagrad', ...}",
    "rmsprop": "RETURNN's TF flag; set optimizer = {'class': 'rmsprop', ...}",
}
"""RETURNN updater options that change the update, which returnn-ray does not implement: an error
when set to anything but 0/False (as RETURNN's torch updater checks its unsupported ones)."""

UNIMPLEMENTED_TRAINING_KEYS: dict[str, str] = {
    "pretrain": "RETURNN's pretraining (TensorFlow engine: the network dict grows or changes over the first "
    "epochs) is not implemented, and training the final network from epoch 1 is a different training",
}
"""RETURNN training options besides the updater's that returnn-ray does not implement: an error when
set to anything RETURNN reads as on (``config.bool_or_other``: True, ``"default"``, a non-empty dict)."""


def check_returnn_keys(config: Config, *, known: AbstractSet[str]) -> None:
    """Refuses functions under RETURNN's names and updater options that returnn-ray does not implement.

    ``known``: the keys returnn-ray reads (they are checked where they are read).
    """
    _check_window(config)
    for key in config.keys():
        if key in known:
            continue
        if key in UNIMPLEMENTED_UPDATER_KEYS and _is_set(config, key):
            raise ConfigError(
                f"config key {key!r} is not supported: {UNIMPLEMENTED_UPDATER_KEYS[key]}; remove it (or set it to 0)"
            )
        if key in UNIMPLEMENTED_TRAINING_KEYS and config.bool_or_other(key, None):
            raise ConfigError(
                f"config key {key!r} is not supported: {UNIMPLEMENTED_TRAINING_KEYS[key]}; remove it (or set it to None)"
            )
        if key in RETURNN_CALLABLE_KEYS and config.is_typed(key) and callable(config.typed_value(key)):
            raise ConfigError(
                f"config key {key!r} is a function RETURNN calls ({RETURNN_CALLABLE_KEYS[key]}), which returnn-ray "
                "does not implement; remove it, or rename it if it is only a helper"
            )


def _check_window(config: Config) -> None:
    """RETURNN's ``window`` (``config.int("window", 1)``) stacks that many input frames into one: a
    model trained without it sees other inputs, so anything but 1 is refused."""
    if not config.has("window") or config.raw("window") is None:  # None: RETURNN's default, 1
        return
    try:
        window = config.int("window", 1)
    except (ConfigError, TypeError, ValueError):
        window = None
    if window != 1:
        raise ConfigError(
            f"config key 'window' is {window if window is not None else config.raw('window')!r}: returnn-ray does not stack input frames (RETURNN's "
            "input windowing); remove it (or set it to 1)"
        )


def _is_set(config: Config, key: str) -> bool:
    """RETURNN's ``config.float(key, 0.0) != 0`` (a bool counts as 0/1; anything else that is there: set)."""
    try:
        return bool(config.float(key, 0.0))
    except (ConfigError, TypeError, ValueError):
        return config.raw(key) not in (None, "", False)
