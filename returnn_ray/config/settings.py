"""The one place where the loose config becomes types.

:func:`load_settings` reads every key returnn-ray understands, once, into a few small frozen
dataclasses (:class:`RunSettings`, :class:`DataSettings`, :class:`BatchingSettings`,
:class:`TrainingSettings`, :class:`ForwardSettings`). Everything past this boundary reads
those, never ``config.typed_value(...)``. Each field is named after its RETURNN config key
and carries a one-line doc (``field(metadata={"doc": ...})``), from which
:func:`returnn_ray.config.reference.config_reference_markdown` renders the README's config reference.

:func:`warn_unread_keys` then reports keys nothing read: likely typos.

>>> from returnn_ray.config import Config
>>> s = load_settings(Config({"batch_size": 5000, "max_seqs": 10, "task": "train"}))
>>> s.batching.batch_size, s.batching.max_seqs, s.run.num_epochs
(5000, 10, 5)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from returnn_ray.config.files import Config
from returnn_ray.config.returnn_keys import IGNORED_KEYS, check_returnn_keys
from returnn_ray.errors import ConfigError
from returnn_ray.config.validators import (
    LR_CONTROL_CONFIG_KEYS,
    MAX_LEARNING_RATE,
    LrControlKind,
    check_cleanup_old_models,
    check_torch_distributed,
)

logger = logging.getLogger(__name__)

Task = Literal["train", "forward", "search", "eval", "dump-dataset", "sweep"]
"""Tasks a config can name with ``task`` (``-x``)."""

Device = Literal["cpu", "gpu"]
"""Where the model runs; ``None`` (unset) picks ``gpu`` when one is available."""

DatasetSpec = Union[dict, str, Callable, None]
"""A dataset as a config gives it: a dict with ``class``, a comma list of HDF files, or unset."""

Reader = Literal[
    "int", "float", "bool", "bool_or_other", "str", "any", "str_list", "int_first", "int_or_dict",
    "float_or_callable", "typed_or_float_list",
]


def setting(default: Any, doc: str, *, read: Reader = "any", aliases: tuple[str, ...] = ()) -> Any:
    """A settings field: its default, a one-line doc, how to read it from the config.

    ``aliases`` are older config keys read when the field's own key is not set.
    """
    return field(default=default, metadata={"doc": doc, "read": read, "aliases": aliases})


class _Checked:
    """Validates the field types (including ``Literal`` sets) of a settings dataclass."""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"config key {f.name!r}: expected {_type_text(hints[f.name])}, got {value!r}")
        self._validate()

    def _validate(self) -> None:
        """Class-specific checks, after the type checks."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen instance in _validate


@dataclass(frozen=True)
class RunSettings(_Checked):
    """What to run, where, and how much to log."""

    task: Task = setting("train", "What to do: train, forward, search, eval, dump-dataset, sweep.", read="str")
    log_verbosity: int = setting(3, "3: epoch summaries; 4: more; 5: one line per step.", read="int_first")
    log: tuple[str, ...] = setting((), "Log files (a comma list on the command line), besides stdout.", read="str_list")
    metrics_file: str | None = setting(None, "Events as JSON lines (README: Metrics file); unset: metrics.jsonl by the output.", read="str")
    debug: bool = setting(False, "Show tracebacks for user errors.", read="bool")
    device: Device | None = setting(None, "cpu or gpu (also cuda); unset: gpu when available.", read="str")
    model: str | None = setting(None, "Checkpoint path prefix: epoch e is `<model>.%03d.pt`.", read="str")
    load: str | None = setting(None, "A checkpoint file to load instead of `<model>.<epoch>.pt` (-L).", read="str")
    import_model_train_epoch1: str | None = setting(
        None, "A checkpoint (.pt) whose weights a training that starts from scratch starts from (epoch 1; the global"
        " train step continues from the file's); ignored when resuming.", read="str",
    )
    preload_from_files: dict | None = setting(
        None, "{name: {'filename': ..., 'prefix', 'init_for_train', 'ignore_missing', ...}}: weights from other files,"
        " as RETURNN's torch engine loads them (README: Weights from other files).",
    )
    load_ignore_missing_vars: bool = setting(
        False, "Read by RETURNN's TF engine only; its torch engine (and returnn-ray) require every parameter.",
        read="bool",
    )
    torch_log_memory_usage: bool = setting(
        False, "Log the GPU memory use (allocated/reserved, current/peak) at each train epoch's start and end, as"
        " RETURNN does; nothing on CPU.", read="bool",
    )
    num_epochs: int = setting(5, "Number of (sub)epochs to train.", read="int")
    load_epoch: int | None = setting(
        None, "Epoch whose checkpoint forward/search/eval use (-e); default: the newest.",
        read="int", aliases=("epoch",),
    )
    ray_address: str | None = setting(None, "Ray cluster to attach to (e.g. auto); unset: a local Ray.", read="str")
    ray_num_workers: int | None = setting(
        None, "Number of Ray workers (DDP ranks); unset: one per GPU with device gpu, else 1.", read="int"
    )
    ray_local_mode: bool | None = setting(
        None,
        "Train/eval in this process (local mode: no Ray started or imported); unset: when one worker is all the"
        " run can use (ray_num_workers, ray_address and RAY_ADDRESS unset, at most one GPU).",
        read="bool",
    )
    ray_max_failures: int = setting(
        0, "Worker-group restarts Ray Train may do after a failure (each resumes from the last checkpoint).",
        read="int",
    )
    ray_placement_timeout: float | None = setting(
        None,
        "Seconds a run may wait for room on the Ray cluster (busy with other jobs, or nodes still to join) before a"
        " one-line error; unset: a run that fits the cluster waits its turn as long as it takes, printing where it"
        " stands in line, and one that can never fit (no autoscaler to add the room) fails at once.",
        read="float",
    )

    def _validate(self) -> None:
        if self.log_verbosity < 0:
            raise ConfigError(f"log_verbosity must be >= 0, got {self.log_verbosity}")
        if self.num_epochs < 0:
            raise ConfigError(f"num_epochs must be >= 0, got {self.num_epochs}")
        if self.load_epoch is not None and self.load_epoch < 1:
            self._set("load_epoch", None)  # RETURNN's "epoch -1" and "load_epoch 0" mean: the newest
        if self.ray_num_workers is not None and self.ray_num_workers < 1:
            raise ConfigError(f"ray_num_workers must be >= 1, got {self.ray_num_workers}")
        if self.ray_max_failures < -1:
            raise ConfigError(f"ray_max_failures must be >= 0 (or -1: unlimited), got {self.ray_max_failures}")
        if self.ray_placement_timeout is not None and self.ray_placement_timeout < 0:
            raise ConfigError(f"ray_placement_timeout must be >= 0 seconds, got {self.ray_placement_timeout}")


@dataclass(frozen=True)
class DataSettings(_Checked):
    """Which datasets to read and what their data keys are."""

    train: DatasetSpec = setting(None, "Training dataset: a dict with `class`, or a comma list of HDF files.")
    dev: DatasetSpec = setting(None, "Dataset scored after each training epoch (default seq_ordering sorted).")
    eval: DatasetSpec = setting(None, "Dataset for forward/search/eval (-E); also scored after each epoch.")
    forward_data: DatasetSpec = setting(None, "Dataset for forward instead of `eval`.")
    search_data: DatasetSpec = setting(None, "Dataset for search instead of `eval`.")
    eval_datasets: dict | None = setting(None, "More datasets scored after each epoch: {name: dataset}.")
    batching: str | None = setting(None, "Default seq_ordering of a dataset dict that sets none.", read="str")
    extern_data: dict | None = setting(None, "Data keys: {key: {dim, shape, sparse, dtype, available_for_inference}}.")
    num_inputs: int | None = setting(None, "Old style: dense `data` of this dim.", read="int")
    num_outputs: int | dict | None = setting(
        None, "Old style: sparse `classes` of this dim (or {key: (dim, ndim)}).", read="int_or_dict"
    )

    def _validate(self) -> None:
        for name in ("train", "dev", "eval", "forward_data", "search_data"):
            _check_dataset_spec(repr(name), getattr(self, name))
        for name, spec in (self.eval_datasets or {}).items():
            _check_dataset_spec(f"eval_datasets[{name!r}]", spec)
        for key, opts in (self.extern_data or {}).items():
            if not isinstance(opts, dict):
                raise ConfigError(f"config key 'extern_data': entry {key!r} must be a dict, got {opts!r}")
        if self.num_inputs is not None and self.num_inputs <= 0:
            raise ConfigError(f"num_inputs must be > 0, got {self.num_inputs}")


@dataclass(frozen=True)
class BatchingSettings(_Checked):
    """How sequences are grouped into batches (RETURNN's torch engine rule)."""

    batch_size: int | dict = setting(
        1, "Max padded frames per batch (max length x seqs), checked per data key; or {key: frames}.",
        read="int_or_dict",
    )
    batch_size_train: int | dict | None = setting(None, "batch_size for training, if different.", read="int_or_dict")
    batch_size_dev: int | dict | None = setting(None, "batch_size for dev/eval/forward, if different.", read="int_or_dict")
    max_seqs: int = setting(-1, "Max seqs per batch; -1: no limit (-z).", read="int")
    max_seq_length: int | dict | None = setting(None, "Drop seqs longer than this (0/unset: keep all).", read="int_or_dict")
    min_seq_length: int | dict | None = setting(None, "Drop seqs shorter than this (0/unset: keep all).", read="int_or_dict")
    chunking: str | int | tuple | list | dict | Callable | None = setting(
        None,
        "Cut the seqs into chunks as RETURNN's engine does (train; dev/eval too for torch configs): `\"size:step\"`, or {key: size} / ({key: size}, {key: step});"
        " each chunk is a seq of its own in the batches (README: Chunking). 0/unset: whole seqs (-c).",
    )
    min_chunk_size: int | dict = setting(0, "With chunking: drop (end) chunks shorter than this, per RETURNN's rule.", read="int_or_dict")
    chunking_variance: float = setting(
        0.0, "Random chunk sizes: not supported with a network dict (an error); ignored by torch configs, as RETURNN's torch engine.",
        read="float",
    )

    def _validate(self) -> None:
        for name in ("batch_size", "batch_size_train", "batch_size_dev"):
            _check_positive(name, getattr(self, name))
        if self.max_seqs == 0 or self.max_seqs < -1:
            raise ConfigError(f"max_seqs must be > 0 (or -1: no limit), got {self.max_seqs}")
        for name in ("max_seq_length", "min_seq_length"):
            if not getattr(self, name):  # RETURNN: 0 means no limit
                self._set(name, None)
            else:
                _check_positive(name, getattr(self, name))

    def batch_size_for(self, *, train: bool) -> int | dict:
        """The batch size of a phase: ``batch_size_train``/``batch_size_dev`` if set, else ``batch_size``.

        >>> BatchingSettings(batch_size=1000, batch_size_dev=4000).batch_size_for(train=False)
        4000
        """
        override = self.batch_size_train if train else self.batch_size_dev
        return self.batch_size if override is None else override


@dataclass(frozen=True)
class TrainingSettings(_Checked):
    """Model, optimizer, learning-rate control and checkpoints (used by the train task)."""

    network: dict | None = setting(None, "TF-layers style network dict, rebuilt in PyTorch.")
    get_model: Callable | None = setting(None, "`get_model(*, epoch, step, **kwargs)` returns the `torch.nn.Module`.")
    train_step: Callable | None = setting(None, "`train_step(*, model, extern_data, **kwargs)` marks the losses.")
    forward_step: Callable | None = setting(None, "`forward_step(*, model, extern_data, **kwargs)` marks the outputs.")
    search_step: Callable | None = setting(
        None, "`search_step(*, model, extern_data, beam_size, **kwargs)`: per seq [(score, labels), ...], best first."
    )
    learning_rate: float = setting(1.0, "Initial learning rate (-r).", read="float")
    optimizer: dict | None = setting(None, "{'class': 'adam', ...}: a torch.optim class by lower-case name, no lr.")
    adam: bool = setting(False, "Old style: optimizer Adam.", read="bool")
    nadam: bool = setting(False, "Old style: optimizer NAdam.", read="bool")
    optimizer_epsilon: float | None = setting(
        None, "Network dicts (RETURNN's TF engine): eps of adam/nadam and the optimizer dict's default (1e-16).",
        read="float",
    )
    dynamic_learning_rate: Callable | None = setting(
        None, "`f(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs)`: the lr of each step."
    )
    gradient_clip: float = setting(0.0, "Clip each gradient value to +-this; 0: off.", read="float")
    gradient_clip_global_norm: float = setting(0.0, "Clip the global gradient norm to this; 0: off.", read="float")
    accum_grad_multiple_step: int = setting(1, "Accumulate gradients over this many steps.", read="int")
    maximize_grad_norm: float = setting(
        0.0, "Network dicts (RETURNN's TF updater): add the gradient of -this * global gradient norm; 0: off.",
        read="float",
    )
    torch_amp: str | dict | None = setting(None, "Mixed precision: 'bfloat16', 'float16' or {'dtype': ...}; on a CPU whose oneDNN lacks a layer in it, a config error.")
    torch_distributed: dict | None = setting(
        None, "RETURNN's multi-GPU rule: reduce_type 'grad' (mean of gradients) or 'param'; unset: sum over workers."
    )
    learning_rate_control: LrControlKind = setting("constant", "Learning-rate schedule by dev scores.", read="str")
    learning_rates: list | tuple | dict | str | None = setting(
        None, "Fixed lrs that win over the schedule: a list for epochs 1, 2, ... or {epoch: lr}.",
        read="typed_or_float_list",
    )
    learning_rate_control_error_measure: str | list | None = setting(
        None, "Score key newbob watches (or a list, first present wins); default: dev_score, else first dev_ key."
    )
    newbob_relative_error_threshold: float = setting(-0.01, "newbob: decay when the relative change is above.", read="float")
    newbob_relative_error_div_by_old: bool = setting(
        False, "newbob: divide the change by the older error instead of the newer.", read="bool"
    )
    newbob_relative_error_grow_threshold: float | None = setting(
        None, "newbob_multi_epoch: grow when the mean relative change is below (default the decay threshold).",
        read="float",
    )
    newbob_error_threshold: float = setting(-0.01, "newbob_abs: decay when the absolute change is above.", read="float")
    learning_rate_decay: float | Callable = setting(
        0.5, "newbob: multiply the lr by this (or a function of the lr).", read="float_or_callable",
        aliases=("newbob_learning_rate_decay",),
    )
    learning_rate_growth: float | Callable = setting(
        1.0, "newbob: multiply the lr by this when not decaying (or a function of the lr).", read="float_or_callable",
        aliases=("newbob_learning_rate_growth",),
    )
    min_learning_rate: float = setting(0.0, "newbob: never decay below this.", read="float")
    newbob_multi_num_epochs: int = setting(5, "newbob_multi_epoch: epochs averaged per decision.", read="int")
    newbob_multi_update_interval: int | None = setting(
        None, "newbob_multi_epoch: epochs between decisions (default newbob_multi_num_epochs).", read="int"
    )
    learning_rate_control_relative_error_relative_lr: bool = setting(
        False, "newbob: scale the relative error by the lr ratio.", read="bool"
    )
    learning_rate_control_min_num_epochs_per_new_lr: int = setting(
        0, "newbob: keep a new lr at least this many epochs.", read="int"
    )
    learning_rate_file: str | None = setting(None, "Per-epoch lr and scores, in RETURNN's format.", read="str")
    save_interval: int = setting(1, "Save a checkpoint every this many epochs (-i).", read="int")
    save_interval_steps: int = setting(
        0, "Also save a mid-epoch checkpoint every this many steps; a rerun resumes the epoch there (0: off).",
        read="int",
    )
    cleanup_old_models: bool | dict = setting(
        False, "Delete old checkpoints (True or RETURNN's options dict).", read="bool_or_other"
    )
    apply_cleanup_old_models_to_optim_states: bool = setting(
        False, "Keep optimizer states as cleanup_old_models keeps models (default: only the last two).", read="bool"
    )
    use_tensorboard: bool = setting(
        False, "Also write TensorBoard event files (needs the tensorboard extra).", read="bool"
    )
    tensorboard_opts: dict | None = setting(
        None, "log_every_n_train_steps (default 100); log_dir (default <model dir>/tensorboard)."
    )

    def _validate(self) -> None:
        if not 0 <= self.learning_rate <= MAX_LEARNING_RATE:  # torch refuses < 0; NaN trains nothing; inf overflows
            raise ConfigError(f"learning_rate must be a number in [0, {MAX_LEARNING_RATE:g}], got {self.learning_rate!r}")
        if self.save_interval < 1:
            raise ConfigError(f"save_interval must be >= 1 (save every N epochs; -i), got {self.save_interval}")
        check_cleanup_old_models(self.cleanup_old_models)
        check_torch_distributed(self.torch_distributed)
        if self.maximize_grad_norm and self.network is None:  # RETURNN's torch updater raises NotImplementedError
            raise ConfigError("maximize_grad_norm is an option of RETURNN's TF updater, for network dicts; RETURNN's "
                              "torch engine (get_model/train_step) does not support it: remove it or set it to 0")
        if self.save_interval_steps < 0:
            raise ConfigError(
                f"save_interval_steps must be >= 0 (0: no mid-epoch checkpoints), got {self.save_interval_steps}"
            )
        measure = self.learning_rate_control_error_measure
        if isinstance(measure, list) and not all(isinstance(m, str) for m in measure):
            raise ConfigError(
                f"learning_rate_control_error_measure must be a score key or a list of them, got {measure!r}"
            )

    def lr_control_options(self) -> dict[str, Any]:
        """The options of :func:`~returnn_ray.training.lr_control.make_lr_control` (all but the kind).

        Every key the policies read (``LR_CONTROL_CONFIG_KEYS``), older aliases already resolved;
        ``None`` means the policy's default.

        >>> TrainingSettings(learning_rate=0.1).lr_control_options()["learning_rate"]
        0.1
        """
        return {name: getattr(self, name) for name in _LR_CONTROL_FIELDS}


@dataclass(frozen=True)
class ForwardSettings(_Checked):
    """Outputs of the forward and search tasks."""

    output_file: str | None = setting(None, "forward: HDF file to write (-k).", read="str")
    forward_override_hdf_output: bool = setting(False, "forward: overwrite an existing output_file.", read="bool")
    model_outputs: dict | None = setting(None, "forward_step outputs: {name: {dim, shape, ...}}.")
    forward_callback: Any = setting(
        None, "forward: RETURNN's ForwardCallbackIface (instance or class), called per seq instead of writing output_file."
    )
    sort_dataset: bool = setting(
        True, "forward with forward_callback: seqs longest first where the dataset can sort (as RETURNN).", read="bool"
    )
    beam_size: int = setting(12, "search: beam size.", read="int")
    search_output_file: str | None = setting(None, "search: results file.", read="str")
    search_output_file_format: Literal["py", "txt"] = setting("py", "search: py (a dict by seq tag) or txt.", read="str")
    search_output_beam: bool = setting(False, "search, py format: the whole beam [(score, hyp), ...].", read="bool")
    ctc_blank_index: int | None = setting(None, "search, CTC output layer: the blank's label index; default the last.", read="int")
    eval_output_file: str | None = setting(None, "eval: file for the scores ({dataset: {key: value}}).", read="str")

    def _validate(self) -> None:
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {self.beam_size}")


@dataclass(frozen=True)
class SweepSettings(_Checked):
    """Hyperparameter sweeps (``returnn-ray sweep``): one Ray Tune trial per config variant."""

    sweep: dict | None = setting(
        None,
        "{key: [values] or {grid/choice: [...]} or {uniform/loguniform/randint: [lo, hi]}}; also --grid key=v1,v2.",
    )
    sweep_variants: tuple[str, ...] = setting(
        (), "Config files, one trial each, loaded after the base config (--variants).", read="str_list"
    )
    sweep_num_samples: int = setting(1, "Trials per grid point (random ranges are sampled anew each).", read="int")
    sweep_metric: str | None = setting(
        None, "Score key the sweep ranks by; default: the first dev_ key, as newbob picks it.", read="str"
    )
    sweep_mode: Literal["min", "max"] = setting("min", "Whether a lower or higher sweep_metric is better.", read="str")
    sweep_scheduler: Literal["fifo", "asha"] = setting(
        "fifo", "fifo: run every trial to the end; asha: stop weak trials early.", read="str"
    )
    sweep_grace_period: int = setting(1, "asha: epochs every trial runs before it can be stopped.", read="int")
    sweep_max_concurrent_trials: int | None = setting(
        None, "Trials at once; default: as many as the cluster can place.", read="int"
    )
    sweep_dir: str | None = setting(None, "Where trials, results and the best config go; default <model dir>/sweep.", read="str")

    def _validate(self) -> None:
        if self.sweep_num_samples < 1:
            raise ConfigError(f"sweep_num_samples must be >= 1, got {self.sweep_num_samples}")
        if self.sweep_grace_period < 1:
            raise ConfigError(f"sweep_grace_period must be >= 1, got {self.sweep_grace_period}")
        if self.sweep_max_concurrent_trials is not None and self.sweep_max_concurrent_trials < 1:
            raise ConfigError(f"sweep_max_concurrent_trials must be >= 1, got {self.sweep_max_concurrent_trials}")


@dataclass(frozen=True)
class Settings:
    """All settings of one run, read once by :func:`load_settings`."""

    run: RunSettings
    data: DataSettings
    batching: BatchingSettings
    training: TrainingSettings
    forward: ForwardSettings
    sweep: SweepSettings


_LR_CONTROL_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainingSettings) if f.name in LR_CONTROL_CONFIG_KEYS
)
"""The TrainingSettings fields :meth:`TrainingSettings.lr_control_options` passes on."""

SETTINGS_CLASSES: tuple[type, ...] = (
    RunSettings, DataSettings, BatchingSettings, TrainingSettings, ForwardSettings, SweepSettings
)

#: Every key a settings class reads (aliases included) and every ignored key.
KNOWN_KEYS: frozenset[str] = frozenset(
    [f.name for cls in SETTINGS_CLASSES for f in dataclasses.fields(cls)]
    + [a for cls in SETTINGS_CLASSES for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())]
    + list(IGNORED_KEYS)
)


def load_settings(config: Config) -> Settings:
    """Reads every known key of ``config`` into typed, validated settings.

    >>> from returnn_ray.config import Config
    >>> c = Config({"learning_rate": 0.01})
    >>> c.parse_cmd_args(["-x", "forward", "++device", "cuda", "++max_seqs", "0"])
    >>> load_settings(c)
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: max_seqs must be > 0 (or -1: no limit), got 0
    """
    check_returnn_keys(config, known=KNOWN_KEYS)
    return Settings(
        run=_read_class(RunSettings, config),
        data=_read_class(DataSettings, config),
        batching=_read_class(BatchingSettings, config),
        training=_read_class(TrainingSettings, config),
        forward=_read_class(ForwardSettings, config),
        sweep=_read_class(SweepSettings, config),
    )


_PY_TYPO_CUTOFF = 0.8
"""How close (difflib ratio) a Python config's own global must be to a known key to be warned
about: ``learning_rte``/``learning_rate`` 0.96, ``base_dir``/``sweep_dir`` 0.71 (a helper)."""


def warn_unread_keys(config: Config) -> list[str]:
    """Warns about keys that nothing read and returnn-ray does not know: likely typos.

    Skipped: known keys, keys starting with ``_``, and values that are not plain data
    (functions, classes, modules a Python config defines). A Python config's own globals
    (``demo_name``, paths, lists that build other keys) are normal there: one is warned about
    only when it is close to a known key; keys from JSON, ``key value`` lines and ``++`` always
    are. Returns the messages, each also logged as a warning.

    >>> from returnn_ray.config import Config
    >>> warn_unread_keys(Config({"learning_rte": 0.1, "_helper": 1, "np": dataclasses}))
    ["config key 'learning_rte' is not used by returnn-ray (did you mean 'learning_rate'?)"]
    """
    messages = []
    for key in config.unread_keys():
        if key in KNOWN_KEYS or key.startswith("_") or not _is_plain_data(config.raw(key)):
            continue
        close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
        if key in config.python_keys and not difflib.get_close_matches(key, close, cutoff=_PY_TYPO_CUTOFF):
            continue
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        messages.append(f"config key {key!r} is not used by returnn-ray{hint}")
    for message in messages:
        logger.warning(message)
    return messages


# -------------------------------------------------------------------- reading and checking


def _read_class(cls: type, config: Config) -> Any:
    values = {}
    for f in dataclasses.fields(cls):
        for key in (f.name, *f.metadata.get("aliases", ())):
            if config.has(key):
                value = _read(config, key, f.metadata.get("read", "any"))
                if value is not None:  # None in a config means: unset (then try the older name)
                    values[f.name] = value
                    break
    return cls(**values)


def _read(config: Config, key: str, read: Reader) -> Any:
    if read == "int":
        return config.int(key, None)
    if read == "int_first":  # RETURNN reads log_verbosity as an int list (one per log file)
        values = config.int_list(key, None)
        return values[0] if values else None
    if read == "float":
        value = config.float(key, None)
        return None if value is None else float(value)
    if read == "bool":
        return config.bool(key, None)
    if read == "bool_or_other":
        return config.bool_or_other(key, None)
    if read == "str":
        value = config.typed_value(key) if config.is_typed(key) else config.value(key, None)
        if value is None or isinstance(value, str):
            return value if key != "device" else _device(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    if read == "str_list":
        return tuple(str(v) for v in config.list(key, []))
    if read == "int_or_dict":
        if config.is_typed(key):
            return config.typed_value(key)
        return config.int(key, None)
    if read == "float_or_callable":  # learning_rate_decay = lambda lr: ... in a Python config
        if config.is_typed(key) and callable(config.typed_value(key)):
            return config.typed_value(key)
        value = config.float(key, None)
        return None if value is None else float(value)
    if read == "typed_or_float_list":  # RETURNN: typed_value(key) or float_list(key)
        if config.is_typed(key):
            return config.typed_value(key)
        return config.float_list(key) or None
    return config.opt_typed_value(key, None)


def _device(value: str | None) -> str | None:
    if value is not None and (value == "cuda" or value.startswith("cuda:")):
        return "gpu"
    return value


def _check_dataset_spec(label: str, spec: Any) -> None:
    if isinstance(spec, dict) and "class" not in spec:
        raise ConfigError(f"config key {label}: a dataset dict needs a 'class' entry, got {spec!r}")


def _check_positive(name: str, value: int | dict | None) -> None:
    if value is None:
        return
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for key, v in items:
        label = name if key is None else f"{name}[{key!r}]"
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{label} must be an int, got {v!r}")
        if v <= 0:
            raise ConfigError(f"{label} must be > 0, got {v}")


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (the few forms settings use)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)  # dict[...], tuple[...], Callable: their origin class


def _type_text(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_text(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _is_plain_data(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))
