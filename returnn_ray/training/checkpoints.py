"""Checkpoint files: their names, which exist, which to load, which to delete, and writing them.

``model`` (config key) is a path prefix. Epoch ``e`` is two files, named as RETURNN's torch
engine names them: ``<model>.%03d.pt`` (``model.001.pt``, ..., ``model.1000.pt``) holding
``{"model": state_dict, "epoch", "step", "effective_learning_rate", "returnn_ray_version"}``, and
``<model>.%03d.opt.pt`` holding ``{"optimizer": optimizer.state_dict(), "epoch", "step",
"effective_learning_rate", "returnn_ray_version"}``. Both are written atomically, the optimizer
state first, so a ``.pt`` whose ``.opt.pt`` exists is a complete checkpoint a training can
resume from; forward/search/eval need only the ``.pt``.

Everything but :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`load_optimizer_state`
is plain Python over file names and numbers (torch is imported inside those three only).

>>> checkpoint_path("out/net", 7), opt_path("out/net", 7), checkpoint_path("net", 1234)
('out/net.007.pt', 'out/net.007.opt.pt', 'net.1234.pt')
>>> should_save(3, save_interval=2, num_epochs=5), should_save(5, save_interval=2, num_epochs=5)
(False, True)
"""

# Imports inside functions: torch loads only when a checkpoint is read (start-up time).
from __future__ import annotations

import contextlib
import os
import re
import zipfile
from dataclasses import dataclass, fields
from itertools import count
from typing import Any, Mapping, Sequence

from returnn_ray import __version__
from returnn_ray.atomic import atomic_torch_save, atomic_write, is_temp_path
from returnn_ray.config.validators import cleanup_options
from returnn_ray.errors import ConfigError, UserError

__all__ = [
    "checkpoint_path",
    "opt_path",
    "find_checkpoints",
    "newest_complete_epoch",
    "CheckpointToLoad",
    "checkpoint_to_load",
    "models_to_delete",
    "default_keep_epochs",
    "optimizer_state_to_delete",
    "should_save",
    "save_checkpoint",
    "load_checkpoint",
    "load_optimizer_state",
    "delete_checkpoint",
    "check_model_dir_writable",
    "partial_path",
    "MidEpochState",
    "save_partial",
    "load_partial",
    "delete_partials",
]


def checkpoint_path(model: str, epoch: int) -> str:
    """``<model>.%03d.pt``: the model state of ``epoch``."""
    return f"{model}.{epoch:03d}.pt"


def opt_path(model: str, epoch: int) -> str:
    """``<model>.%03d.opt.pt``: the optimizer state of ``epoch``."""
    return f"{model}.{epoch:03d}.opt.pt"


def partial_path(model: str, epoch: int) -> str:
    """``<model>.%03d.partial.pt``: the mid-epoch state of ``epoch`` (``save_interval_steps``).

    Not a name RETURNN or :func:`find_checkpoints` takes for a checkpoint of a finished epoch.

    >>> partial_path("out/net", 3)
    'out/net.003.partial.pt'
    """
    return f"{model}.{epoch:03d}.partial.pt"


# ---------------------------------------------------------------------------------------------
# What exists, and what to load


def find_checkpoints(model: str, *, for_training: bool = True, max_epoch: int | None = None) -> list[int]:
    """Epochs with a checkpoint of ``model``, ascending.

    ``for_training``: only epochs whose ``.pt`` and ``.opt.pt`` both exist (a training resumes with
    the optimizer state, as RETURNN's ``get_existing_models``); else every epoch with a ``.pt``.
    Temp files of an interrupted write never count. ``max_epoch``: ignore later epochs (RETURNN
    only looks at epochs up to ``num_epochs``).
    """
    directory, prefix = os.path.split(model)
    try:
        names = os.listdir(directory or ".")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise UserError(f"cannot list the checkpoint directory of model {model!r}: {exc.strerror or exc}") from exc
    pattern = re.compile(re.escape(prefix) + r"\.(\d{3,})(\.opt)?\.pt")
    models: set[int] = set()
    opts: set[int] = set()
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or is_temp_path(name):
            continue
        epoch = int(m.group(1))
        if f"{epoch:03d}" != m.group(1) or epoch < 1:  # "model.0001.pt" is not RETURNN's name for epoch 1
            continue
        (opts if m.group(2) else models).add(epoch)
    epochs = models & opts if for_training else models
    return sorted(e for e in epochs if max_epoch is None or e <= max_epoch)


def newest_complete_epoch(model: str, *, max_epoch: int | None = None) -> int | None:
    """The newest epoch with both files (where ``task=train`` resumes), None if there is none."""
    epochs = find_checkpoints(model, for_training=True, max_epoch=max_epoch)
    return epochs[-1] if epochs else None


@dataclass(frozen=True)
class CheckpointToLoad:
    """A checkpoint file forward/search/eval load."""

    path: str
    """The ``.pt`` file."""
    epoch: int | None
    """Its epoch; None for a ``load`` file whose name has no epoch."""


def checkpoint_to_load(
    model: str | None, load_epoch: int | None = None, *, load: str | None = None
) -> CheckpointToLoad:
    """Which checkpoint forward/search/eval use (RETURNN's ``get_epoch_model`` for task != train).

    ``load`` (a file, with or without ``.pt``) wins, its epoch being ``load_epoch`` if set, else the
    number in its name; else epoch ``load_epoch`` of ``model``; else the newest epoch that has a
    ``.pt`` (the optimizer state is not needed). ``load_epoch`` < 1 means unset (RETURNN's
    ``load_epoch 0``). What is asked for and missing is a :class:`UserError` naming the path.
    """
    if load_epoch is not None and load_epoch < 1:
        load_epoch = None
    if load:
        path = load if load.endswith(".pt") or not os.path.exists(load + ".pt") else load + ".pt"
        if not os.path.isfile(path):
            raise UserError(f"checkpoint {path!r} given by `load` does not exist; fix `load` (-L)")
        m = re.fullmatch(r".*\.(\d+)\.pt", os.path.basename(path))
        return CheckpointToLoad(path, load_epoch or (int(m.group(1)) if m else None))
    if not model:
        raise UserError("no checkpoint to load: set `model` (the checkpoint path prefix) or `load`")
    if load_epoch is not None:
        path = checkpoint_path(model, load_epoch)
        if not os.path.isfile(path):
            have = find_checkpoints(model, for_training=False)
            hint = f"existing epochs: {_epoch_summary(have)}" if have else "there are no checkpoints of this model"
            raise UserError(f"checkpoint {path!r} (load_epoch {load_epoch}) does not exist; {hint}")
        return CheckpointToLoad(path, load_epoch)
    epochs = find_checkpoints(model, for_training=False)
    if not epochs:
        raise UserError(f"no checkpoint found for model {model!r} (train first or set load_epoch)")
    return CheckpointToLoad(checkpoint_path(model, epochs[-1]), epochs[-1])


# ---------------------------------------------------------------------------------------------
# When to save, what to delete


def should_save(epoch: int, save_interval: int, num_epochs: int) -> bool:
    """Whether epoch ``epoch`` writes a checkpoint: every ``save_interval`` epochs, and always the last."""
    if save_interval < 1:
        raise ConfigError(f"save_interval must be >= 1, got {save_interval}")
    return epoch % save_interval == 0 or epoch == num_epochs


def optimizer_state_to_delete(epoch: int, *, apply_cleanup_old_models_to_optim_states: bool = False) -> int | None:
    """After saving ``epoch``, the epoch whose ``.opt.pt`` RETURNN deletes: ``epoch - 2``.

    RETURNN keeps only the last two optimizer states (two in case one is corrupt); older
    checkpoints stay loadable for forward, not resumable. With
    ``apply_cleanup_old_models_to_optim_states`` the optimizer states are kept and deleted
    together with their models by :func:`models_to_delete`.

    >>> optimizer_state_to_delete(5), optimizer_state_to_delete(2)
    (3, None)
    >>> print(optimizer_state_to_delete(5, apply_cleanup_old_models_to_optim_states=True))
    None
    """
    if apply_cleanup_old_models_to_optim_states or epoch - 2 < 1:
        return None
    return epoch - 2


def models_to_delete(
    existing: Sequence[int],
    *,
    cleanup_old_models: bool | Mapping[str, Any] | None,
    scores: Mapping[int, Mapping[str, float]],
) -> list[int]:
    """Epochs whose checkpoints RETURNN's ``cleanup_old_models`` deletes, ascending.

    ``existing``: epochs that have a ``.pt``. ``cleanup_old_models``: the config value; False,
    None or ``{}`` mean no cleanup, True the defaults, a dict sets ``keep_last_n`` (2),
    ``keep_best_n`` (4), ``keep`` (epochs; replaces the default pattern). ``scores``: epoch →
    scores, i.e. the ``error`` dicts of the ``learning_rate_file``.

    Kept: the ``keep_last_n`` newest, the ``keep`` epochs, and for every score key the
    ``keep_best_n`` lowest (ties: the earlier epoch; an epoch missing the key counts as the worst
    value). Keys that no existing epoch has, or where all have the same value, are ignored.
    Nothing is deleted while there are at most ``max(keep_last_n, keep_best_n)`` checkpoints.

    >>> scores = {e: {"dev_loss_ce": 1 / e} for e in range(1, 11)}
    >>> models_to_delete(range(1, 11), cleanup_old_models=True, scores=scores)  # keep 9, 10; 7..10; 4, 5, 8, 10
    [1, 2, 3, 6]
    """
    if not cleanup_old_models:
        return []
    opts = cleanup_options(cleanup_old_models)
    epochs = sorted(set(existing))
    keep_last_n, keep_best_n = opts["keep_last_n"], opts["keep_best_n"]
    if not epochs or max(keep_last_n, keep_best_n) >= len(epochs):
        return []
    keep = set(default_keep_epochs(epochs[-1]) if opts["keep"] is None else opts["keep"])
    keep.update(epochs[-keep_last_n:])
    # Every key any epoch of the file has (also epochs without a checkpoint), as RETURNN collects them.
    keys = sorted({k for s in scores.values() for k in s})
    for key in keys:
        values = [scores[e][key] for e in epochs if key in scores.get(e, {})]
        if not values or min(values) == max(values):
            continue  # says nothing about which epoch is better
        worst = max(values)
        ranked = sorted((scores.get(e, {}).get(key, worst), e) for e in epochs)
        keep.update(e for _, e in ranked[:keep_best_n])
    return sorted(set(epochs) - keep)


def default_keep_epochs(last_epoch: int) -> list[int]:
    """RETURNN's default ``keep`` pattern, from the newest stored epoch: multiples of ``keep_every``
    and ``keep_doubles_of * 2**i``, with (every, doubles) = (4, 5) up to epoch 10, (20, 5) up to 50,
    (40, 10) up to 100, else (80 * next_power_of_two(1 + last // 240), 20).

    >>> default_keep_epochs(10), default_keep_epochs(100)
    ([4, 5, 8, 10], [10, 20, 40, 80])
    """
    if last_epoch <= 10:
        every, doubles = 4, 5
    elif last_epoch <= 50:
        every, doubles = 20, 5
    elif last_epoch <= 100:
        every, doubles = 40, 10
    else:
        every, doubles = 80 * _next_power_of_two(1 + last_epoch // 240), 20
    keep: set[int] = set()
    for i in count(1):
        if every * i > last_epoch:
            break
        keep.add(every * i)
    for i in count():
        if doubles * 2**i > last_epoch:
            break
        keep.add(doubles * 2**i)
    return sorted(keep)


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 0 else 1


def _epoch_summary(epochs: Sequence[int]) -> str:
    if len(epochs) > 6:
        return f"{', '.join(map(str, epochs[:3]))}, ..., {', '.join(map(str, epochs[-3:]))}"
    return ", ".join(map(str, epochs))


# ---------------------------------------------------------------------------------------------
# Files


def check_model_dir_writable(model: str, *, key: str = "model") -> None:
    """Fail early, before training starts, if checkpoints of ``model`` cannot be written.

    Creates the directory if needed (as RETURNN does when saving) and writes and removes a small
    file there: permission bits alone do not tell (root ignores them; read-only mounts). ``key``:
    the config key that gave the path (``learning_rate_file`` is checked the same way), named in
    the error.
    """
    what = f"checkpoints of model {model!r}" if key == "model" else f"{key} {model!r}"
    if not model:
        raise UserError(f"`{key}` is not set: set it to a checkpoint path prefix, e.g. {key} = 'out/net'")
    directory = os.path.dirname(model) or "."
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"the directory {directory!r} of {what} is a file, not a directory; fix `{key}`")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the directory {directory!r} of {what}: {exc.strerror or exc}; fix `{key}`"
        ) from exc
    probe = os.path.join(directory, f".{os.path.basename(model)}.write-check-{os.getpid()}")
    try:
        atomic_write(probe, b"")
    except UserError as exc:
        reason = str(exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc)
        raise UserError(f"cannot write {what} in {directory!r}: {reason}; fix `{key}`") from exc
    try:
        os.unlink(probe)
    except OSError:
        pass


def save_checkpoint(
    model: str,
    epoch: int,
    *,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    step: int,
    effective_learning_rate: float | None,
    extra: Mapping[str, Any] | None = None,
    optimizer_extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``<model>.NNN.opt.pt`` then ``<model>.NNN.pt``, each atomically; returns the ``.pt`` path.

    ``step``: global train steps done so far (RETURNN's ``global_train_step`` at save time; its
    loader subtracts one and its trainer adds it back). ``extra`` / ``optimizer_extra``: more keys for
    the two dicts (e.g. ``param_names`` and ``optimizer_class_name`` as RETURNN writes them); they may
    not replace the standard keys. Unwritable directory or full disk: :class:`UserError`; each file
    is then either its old version or the new one, never partly written (when an epoch is saved
    over, a failure on the ``.pt`` leaves the new ``.opt.pt`` next to the old ``.pt``).
    """
    common = {"epoch": epoch, "step": step, "effective_learning_rate": effective_learning_rate}
    common["returnn_ray_version"] = __version__
    model_dict = {"model": model_state, **common}
    opt_dict = {"optimizer": optimizer_state, **common}
    for name, target, more in (("extra", model_dict, extra), ("optimizer_extra", opt_dict, optimizer_extra)):
        clash = sorted(set(more or ()) & set(target))
        if clash:
            raise ValueError(f"save_checkpoint: {name} may not replace {clash}")
        target.update(more or {})
    # Optimizer first: a .pt next to its .opt.pt then always means a complete checkpoint.
    atomic_torch_save(opt_dict, opt_path(model, epoch))
    atomic_torch_save(model_dict, checkpoint_path(model, epoch))
    return checkpoint_path(model, epoch)


def load_checkpoint(model: str, epoch: int, *, map_location: Any = "cpu", weights_only: bool = True) -> dict[str, Any]:
    """The dict of ``<model>.NNN.pt`` (``model``, ``epoch``, ``step``, ``effective_learning_rate``, ...).

    ``weights_only``: torch's safe loader (tensors, numbers, strings, containers), as RETURNN uses it.
    """
    return _torch_load(checkpoint_path(model, epoch), map_location, weights_only)


def load_checkpoint_file(path: str, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict of a checkpoint file (e.g. :func:`checkpoint_to_load`'s ``path``), safe loader."""
    return _torch_load(path, map_location, True)


def load_optimizer_state(
    model: str, epoch: int, *, map_location: Any = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """The dict of ``<model>.NNN.opt.pt``. RETURNN's old format (a bare optimizer state dict) is
    returned as ``{"optimizer": state}``."""
    state = _torch_load(opt_path(model, epoch), map_location, weights_only)
    if "optimizer" not in state and "param_groups" in state and "state" in state:
        state = {"optimizer": state}
    return state


@dataclass(frozen=True)
class MidEpochState:
    """Where an epoch stopped mid-way: ``<model>.NNN.partial.pt`` (``save_interval_steps``).

    The cursor counts seqs of the epoch's order after the length filter (``seqs_done`` of
    ``num_seqs``), so the rest of the order can be dealt again to any number of workers;
    ``order_digest`` names that order, a state of another order is not resumed. The file holds
    :meth:`to_dict`, a plain dict (torch's safe loader reads it), keys in this order.
    """

    model: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    grad_scaler: Mapping[str, Any] | None
    """The AMP grad scaler's state (``torch_amp`` float16), else None."""
    step: int
    """The global train step after the saved step."""
    seqs_done: int
    num_seqs: int
    order_digest: str
    scores: Mapping[str, Any]
    """The epoch's score sums so far (:meth:`ScoreAccumulator.totals`)."""
    world_size: int
    rng: Sequence[Mapping[str, Any]]
    """Every rank's RNG states, rank order; restored only on the same world size."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MidEpochState:
        """The state from a file's dict; keys a file may lack get the value that resumes safely
        (no digest: no order matches; no world size or RNG: fresh per-rank seeds)."""
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            grad_scaler=state.get("grad_scaler") or None,
            step=int(state["step"]),
            seqs_done=int(state["seqs_done"]),
            num_seqs=int(state["num_seqs"]),
            order_digest=state.get("order_digest") or "",
            scores=state["scores"],
            world_size=int(state.get("world_size", 0)),
            rng=list(state.get("rng") or []),
        )


def save_partial(model: str, epoch: int, state: MidEpochState) -> str:
    """Write the mid-epoch state of ``epoch`` atomically."""
    path = partial_path(model, epoch)
    atomic_torch_save({**state.to_dict(), "epoch": epoch, "returnn_ray_version": __version__}, path)
    return path


def load_partial(model: str, epoch: int, *, map_location: Any = "cpu") -> MidEpochState | None:
    """The mid-epoch state of ``epoch``, or None if there is none."""
    path = partial_path(model, epoch)
    if not os.path.isfile(path):
        return None
    state = _torch_load(path, map_location, True)
    if state.get("epoch") != epoch:
        raise UserError(f"mid-epoch checkpoint {path!r} holds epoch {state.get('epoch')!r}, not {epoch}; delete it")
    return MidEpochState.from_dict(state)


def delete_partials(model: str, *, up_to_epoch: int) -> None:
    """Delete the mid-epoch states of epochs ``<= up_to_epoch`` (done: their epoch checkpoint exists)."""
    directory, prefix = os.path.split(model)
    pattern = re.compile(re.escape(prefix) + r"\.(\d{3,})\.partial\.pt")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is not None and int(m.group(1)) <= up_to_epoch:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def delete_checkpoint(model: str, epoch: int) -> int:
    """Delete the ``.pt`` and (if there) the ``.opt.pt`` of ``epoch``; returns the bytes freed.

    The ``.pt`` goes first, so an interruption leaves a lone ``.opt.pt``, which no scan counts.
    """
    freed = 0
    for path in (checkpoint_path(model, epoch), opt_path(model, epoch)):
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(f"cannot delete old checkpoint {path!r}: {exc.strerror or exc}") from exc
        freed += size
    return freed


def _torch_load(path: str, map_location: Any, weights_only: bool) -> dict[str, Any]:
    import torch

    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ... for a bad file
        raise UserError(f"cannot load checkpoint {path!r}: {_load_failure(path, exc)}") from exc
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path!r} holds a {type(state).__name__}, not a dict")
    return state


def _load_failure(path: str, exc: Exception) -> str:
    """Why torch.load failed, in one line (torch's own messages run over many lines)."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one is no zip either
        return "not a complete torch checkpoint (the file is damaged, truncated, or not a checkpoint)"
    text = " ".join(str(exc).split())
    if text.startswith("Weights only load failed"):
        return "it holds objects torch's safe loader refuses; load it with weights_only=False only if you trust it"
    return (text.split(". ")[0] or type(exc).__name__)[:200]
