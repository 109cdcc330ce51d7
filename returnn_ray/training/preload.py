"""Weights from other files: ``import_model_train_epoch1`` and ``preload_from_files``, as RETURNN's
torch engine applies them (``returnn.torch.engine.Engine._load_model``).

- ``import_model_train_epoch1 = "path[.pt]"``: a training that starts from scratch (no checkpoint of
  ``model`` yet) starts from this file's weights, at epoch 1; the global train step continues from
  the file's ``step``, as in RETURNN. A resumed training ignores it.
- ``preload_from_files = {name: {"filename": ..., ...}}``: entries are applied in reversed sorted
  order of their names (so the first name wins where two load the same parameter), each with
  RETURNN's options: ``prefix``, ``pattern`` (only with ``filename`` None: parameters left at their
  fresh values), ``ignore_missing``, ``ignore_params``, ``ignore_params_prefixes``,
  ``var_name_mapping``, ``checkpoint_key`` (default ``"model"``; None: the file is the state dict),
  ``custom_missing_load_func`` and ``init_for_train``: False (default) applies to
  forward/search/eval only, True to the first training epoch only (a fresh start), ``"always"`` to
  every start; those parameters are then frozen and not saved (RETURNN turns them into buffers).
- A checkpoint loads leniently (unexpected keys are a note), but every parameter of the model must
  come from somewhere: a missing one is an error unless a preload entry gives it or marks it fresh.
- ``load_ignore_missing_vars`` is read by RETURNN's TF engine only; its torch engine, which
  returnn-ray follows, does not apply it (the error about missing parameters says so).

Shape mismatches, missing files and missing parameters are :class:`UserError` lines naming the file
and the parameter. torch is imported inside the functions that load (start-up time of the CLI).
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from returnn_ray.errors import ConfigError, UserError
from returnn_ray.training.checkpoints import load_checkpoint_file

if TYPE_CHECKING:
    import torch

    from returnn_ray.config import Settings

Log = Callable[[str], None]

OPTIONS = frozenset({
    "filename", "prefix", "pattern", "init_for_train", "ignore_missing", "ignore_params", "ignore_params_prefixes",
    "var_name_mapping", "checkpoint_key", "custom_missing_load_func",
})
"""The options of a ``preload_from_files`` entry that RETURNN's torch engine reads."""


@dataclass(frozen=True)
class PreloadEntry:
    """One checked ``preload_from_files`` entry."""

    name: str
    filename: str | None
    init_for_train: bool | Literal["always"] = False
    prefix: str = ""
    pattern: str | None = None
    ignore_missing: bool = False
    ignore_params: tuple[str, ...] = ()
    ignore_params_prefixes: tuple[str, ...] = ()
    var_name_mapping: Mapping[str, str] = field(default_factory=dict)
    checkpoint_key: str | None = "model"
    custom_missing_load_func: Callable | None = None

    def applies(self, *, training: bool, first_train_epoch: bool) -> bool:
        """RETURNN: ``init_for_train`` True: first training epoch only; False: not in training."""
        if self.init_for_train == "always":
            return True
        if self.init_for_train:
            return training and first_train_epoch
        return not training

    @property
    def what(self) -> str:
        return f"preload_from_files[{self.name!r}]"


def preload_entries(preload_from_files: Mapping[str, Any] | None) -> list[PreloadEntry]:
    """The entries of ``preload_from_files`` in the order they are applied (reversed sorted names)."""
    if not preload_from_files:
        return []
    if not isinstance(preload_from_files, Mapping):
        raise ConfigError(f"preload_from_files must be a dict {{name: {{'filename': ...}}}}, got {preload_from_files!r:.80}")
    return [_entry(str(name), opts) for name, opts in reversed(sorted(preload_from_files.items()))]


def _entry(name: str, opts: Any) -> PreloadEntry:
    what = f"preload_from_files[{name!r}]"
    if not isinstance(opts, Mapping) or "filename" not in opts:
        raise ConfigError(f"{what} must be a dict with 'filename' (a checkpoint file, or None), got {opts!r:.80}")
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(OPTIONS))}")
    init = opts.get("init_for_train", False)
    if not (isinstance(init, bool) or init == "always"):
        raise ConfigError(f"{what}: init_for_train must be True, False or 'always', got {init!r}")
    filename = opts["filename"]
    if filename is not None and not isinstance(filename, (str, os.PathLike)):
        raise ConfigError(f"{what}: filename must be a path or None, got {filename!r:.80}")
    if filename is None and opts.get("pattern") is None and opts.get("prefix") is None:
        raise ConfigError(f"{what}: filename None (parameters left fresh) needs 'pattern' or 'prefix'")
    mapping = opts.get("var_name_mapping") or {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what}: var_name_mapping must be a dict {{name in model: name in file}}, got {mapping!r:.80}")
    return PreloadEntry(
        name=name,
        filename=os.fspath(filename) if filename is not None else None,
        init_for_train=init,
        prefix=opts.get("prefix") or "",
        pattern=opts.get("pattern"),
        ignore_missing=bool(opts.get("ignore_missing", False)),
        ignore_params=tuple(opts.get("ignore_params") or ()),
        ignore_params_prefixes=tuple(opts.get("ignore_params_prefixes") or ()),
        var_name_mapping=dict(mapping),
        checkpoint_key=opts.get("checkpoint_key", "model"),
        custom_missing_load_func=opts.get("custom_missing_load_func"),
    )


def import_file(import_model_train_epoch1: str) -> str:
    """The ``.pt`` file ``import_model_train_epoch1`` names (RETURNN strips and re-adds ``.pt``)."""
    path = import_model_train_epoch1[: -len(".pt")] if import_model_train_epoch1.endswith(".pt") else import_model_train_epoch1
    path += ".pt"
    if not os.path.isfile(path):
        raise UserError(f"import_model_train_epoch1: checkpoint {path!r} does not exist; fix import_model_train_epoch1")
    return path


def check_preload_files(settings: Settings, *, training: bool, fresh_start: bool = True) -> None:
    """Before Ray starts: the entries are well-formed and every file that this start reads exists."""
    run = settings.run
    if training and fresh_start and run.import_model_train_epoch1:
        import_file(run.import_model_train_epoch1)
    for entry in preload_entries(run.preload_from_files):
        if entry.filename is not None and entry.applies(training=training, first_train_epoch=fresh_start):
            if not os.path.isfile(entry.filename):
                raise UserError(f"{entry.what}: file {entry.filename!r} does not exist; fix its 'filename'")


def load_weights(
    settings: Settings,
    model: torch.nn.Module,
    checkpoint: Mapping[str, Any] | None,
    *,
    checkpoint_path: str | None = None,
    training: bool,
    log: Log = lambda line: None,
) -> int | None:
    """Give ``model`` (freshly built) its weights as RETURNN's ``Engine._load_model`` does.

    ``checkpoint``: the dict of the checkpoint to resume from (training) or to run (forward/search/
    eval), ``checkpoint_path`` its file; None in training: a fresh start, where
    ``import_model_train_epoch1`` applies. Then the ``preload_from_files`` entries that apply.
    Returns the global train step to start at when ``import_model_train_epoch1`` gave the weights
    (the file's ``step``, as RETURNN continues it), else None.
    """
    first_train_epoch = training and checkpoint is None
    start_step = None
    source = f"checkpoint {checkpoint_path!r}" if checkpoint_path else "the checkpoint"
    if first_train_epoch and settings.run.import_model_train_epoch1:
        checkpoint_path = import_file(settings.run.import_model_train_epoch1)
        checkpoint = load_checkpoint_file(checkpoint_path)
        source = f"import_model_train_epoch1 {checkpoint_path!r}"
        start_step = int(checkpoint.get("step", 1))  # RETURNN: step - 1 on load, + 1 as training continues
        log(f"Import model {checkpoint_path} for epoch 1, global train step {start_step}")
    state = _LoadState(model, log)
    if checkpoint is not None:
        state.load_main(checkpoint.get("model", checkpoint), source)
    for entry in preload_entries(settings.run.preload_from_files):
        if entry.applies(training=training, first_train_epoch=first_train_epoch):
            state.preload(entry)
    state.freeze_always()
    state.check_complete(load_ignore_missing_vars=settings.run.load_ignore_missing_vars)
    return start_step


class _LoadState:
    """What has been loaded into a model so far, and which of its parameters are still missing
    (each with the source that left it missing), as ``Engine._load_model`` tracks them."""

    def __init__(self, model: torch.nn.Module, log: Log):
        self.model = model
        self.log = log
        self.model_keys = set(model.state_dict())
        self.loaded: set[str] = set()
        self.missing: dict[str, str] = {}
        self.always: set[str] = set()

    def load_main(self, model_state: Mapping[str, Any], source: str) -> None:
        missing, unexpected = self._load(dict(model_state), source)
        for key in missing:
            self.missing.setdefault(key, source)
        self.loaded.update(model_state)
        if unexpected:
            self.log(f"Note: While loading {source}, unexpected key(s) in state_dict: {', '.join(map(repr, sorted(unexpected)))}")

    def preload(self, entry: PreloadEntry) -> None:
        if entry.filename is None:
            self._mark_fresh(entry)
            return
        self.log(f"Pre-load weights for key '{entry.name}' from {entry.filename}")
        source = f"{entry.what} file {entry.filename!r}"
        state = self._read(entry)
        if entry.var_name_mapping:
            state = _renamed(state, entry)
        if entry.init_for_train == "always":
            self.always.update(set(state) & self.model_keys)
        missing, unexpected = self._load(state, source)
        self.loaded.update(state)
        for key in state:
            self.missing.pop(key, None)
        if entry.custom_missing_load_func is not None and missing:
            state.update(self._custom(entry, missing, state))
            missing, unexpected = self._load(state, source)
            self.loaded.update(state)
            for key in state:
                self.missing.pop(key, None)
        self._after_preload(entry, state, missing, unexpected, source)

    def _read(self, entry: PreloadEntry) -> dict[str, Any]:
        if not os.path.isfile(entry.filename):
            raise UserError(f"{entry.what}: file {entry.filename!r} does not exist; fix its 'filename'")
        if entry.filename.endswith(".safetensors"):
            raise UserError(f"{entry.what}: {entry.filename!r}: .safetensors files are not supported; save it with torch.save")
        state: Any = load_checkpoint_file(entry.filename)
        if entry.checkpoint_key is not None:
            if entry.checkpoint_key not in state:
                raise UserError(
                    f"{entry.what}: file {entry.filename!r} has no key {entry.checkpoint_key!r} (it has "
                    f"{', '.join(map(repr, sorted(state)[:5]))}); set 'checkpoint_key' (None: the file is the state dict)"
                )
            state = state[entry.checkpoint_key]
        if not isinstance(state, Mapping):
            raise UserError(f"{entry.what}: file {entry.filename!r}: the state under {entry.checkpoint_key!r} is not a dict")
        state = {entry.prefix + key: value for key, value in state.items()}
        for key in list(state):
            if key in entry.ignore_params or any(key.startswith(p) for p in entry.ignore_params_prefixes):
                self.log(f"Ignoring variable {key}")
                del state[key]
        return state

    def _custom(self, entry: PreloadEntry, missing: list[str], state: Mapping[str, Any]) -> dict[str, Any]:
        own = self.model.state_dict()
        values = {}
        for name in missing:
            value = entry.custom_missing_load_func(name=name, shape=own[name].shape, preload_model_state=state)
            if value is not None:
                if tuple(value.shape) != tuple(own[name].shape):
                    raise UserError(
                        f"{entry.what}: custom_missing_load_func gave {name!r} shape {tuple(value.shape)}, "
                        f"the model has {tuple(own[name].shape)}"
                    )
                values[name] = value
        return values

    def _after_preload(self, entry: PreloadEntry, state: Mapping[str, Any], missing, unexpected, source: str) -> None:
        if entry.prefix:
            prefix_keys = {k for k in self.model_keys if k.startswith(entry.prefix)}
            if not prefix_keys:
                raise UserError(f"{entry.what}: no parameter of the model starts with prefix {entry.prefix!r}; fix 'prefix'")
        else:
            prefix_keys = self.model_keys
        if not set(state) & prefix_keys:
            raise UserError(
                f"{entry.what}: file {entry.filename!r} holds none of the model's parameters"
                f"{f' under prefix {entry.prefix!r}' if entry.prefix else ''} (file has e.g. "
                f"{', '.join(map(repr, sorted(state)[:3]))}; model has e.g. {', '.join(map(repr, sorted(self.model_keys)[:3]))})"
            )
        missing_here = (prefix_keys & set(missing)) - self.loaded
        unexpected_here = (prefix_keys & set(unexpected)) - self.loaded
        if missing_here and not entry.ignore_missing:
            for key in missing_here:
                self.missing.setdefault(key, source)
        if missing_here:
            self.log(f"Missing keys: {sorted(missing_here)}")
        if unexpected_here:
            self.log(f"Note: While loading {source}, unexpected key(s) in state_dict: {', '.join(map(repr, sorted(unexpected_here)))}")

    def _mark_fresh(self, entry: PreloadEntry) -> None:
        """A ``filename`` None entry: parameters matching ``pattern``/``prefix`` may stay at their fresh values."""
        self.log(f"Pre-load (initialize) weights for key '{entry.name}'")
        if entry.pattern is not None:
            match = re.compile(fnmatch.translate(entry.pattern)).match
        else:
            match = re.compile(re.escape(entry.prefix) + ".*").fullmatch
        fresh = [k for k in self.model.state_dict() if match(k) and k in self.missing]
        for key in fresh:
            del self.missing[key]
        self.log(f"Randomly initialize params: {fresh}" if fresh else "(No relevant parameters matching.)")

    def _load(self, state: dict[str, Any], source: str) -> tuple[list[str], list[str]]:
        """``load_state_dict(strict=False)``, with a shape mismatch as one line naming the parameter."""
        own = self.model.state_dict()
        for key, value in state.items():
            if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
                raise UserError(
                    f"{source}: parameter {key!r} has shape {tuple(value.shape)}, the config's model has "
                    f"{tuple(own[key].shape)}; the file was made for another model"
                )
        result = self.model.load_state_dict(state, strict=False)
        return list(result.missing_keys), list(result.unexpected_keys)

    def freeze_always(self) -> None:
        """``init_for_train: "always"`` parameters become non-persistent buffers: not trained, not saved."""
        for name in sorted(self.always):
            module_path, _, attr = name.rpartition(".")
            module = self.model.get_submodule(module_path) if module_path else self.model
            param = getattr(module, attr)
            if not isinstance(param, _parameter_class()):
                continue
            delattr(module, attr)
            param.requires_grad = False
            module.register_buffer(attr, param, persistent=False)

    def check_complete(self, *, load_ignore_missing_vars: bool) -> None:
        if not self.missing:
            return
        by_source: dict[str, list[str]] = {}
        for key, source in self.missing.items():
            by_source.setdefault(source, []).append(key)
        source, keys = sorted(by_source.items())[0]
        shown = ", ".join(map(repr, sorted(keys)[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        note = (
            " (load_ignore_missing_vars is read by RETURNN's TF engine only; its torch engine, as returnn-ray,"
            " does not apply it)" if load_ignore_missing_vars else ""
        )
        raise UserError(
            f"{source} lacks model parameter(s) {shown}; load them with a preload_from_files entry, or let them"
            f" start fresh with {{'filename': None, 'prefix': ...}} (or 'ignore_missing': True on a preload entry){note}"
        )


def _renamed(state: dict[str, Any], entry: PreloadEntry) -> dict[str, Any]:
    for new_name, name_in_file in entry.var_name_mapping.items():
        if name_in_file not in state:
            raise UserError(
                f"{entry.what}: var_name_mapping maps {new_name!r} to {name_in_file!r}, which file {entry.filename!r} lacks"
            )
        state[new_name] = state.pop(name_in_file)
    return state


def _parameter_class() -> type:
    import torch

    return torch.nn.Parameter
