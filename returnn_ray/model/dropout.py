"""Input dropout of network-dict layers, with RETURNN's noise shape.

RETURNN's TF layers (``concat_sources_with_opt_dropout``) draw the dropout mask with a noise shape
from ``Data.get_bc_shape``: by default it broadcasts over the batch and every dynamic (time) axis,
so one mask per feature is shared by all frames and seqs of a batch. ``dropout_noise_shape`` (a dict
axis -> ``1``/``"x"``: broadcast, ``None``/``-1``: own noise; ``"*"`` sets the default for all axes)
and ``dropout_axis`` (the axes that get their own noise) change that. Here every layer value is
``[B, T, F]``, so those options are taken as far as they name batch, time and feature; anything
else is a one-line error naming the layer.
"""

from __future__ import annotations

import torch

from returnn_ray.errors import ConfigError

__all__ = ["DROPOUT_KEYS", "apply_dropout", "dropout_noise_axes"]

DROPOUT_KEYS = frozenset({"dropout", "dropout_noise_shape", "dropout_axis"})
"""The dropout options of a layer that concatenates its sources."""

_B, _T, _F = 0, 1, 2
# RETURNN's axis descriptions (Data.get_axes_from_description, lower-cased) that name axes of a
# [B, T, F] value without depending on the axis order.
_AXIS_NAMES: dict[str, tuple[int, ...]] = {
    "b": (_B,),
    "batch": (_B,),
    "t": (_T,),
    "time": (_T,),
    "f": (_F,),
    "feature": (_F,),
    "*": (_B, _T, _F),
    "except_batch": (_T, _F),
    "except_time": (_F,),
}
DEFAULT_NOISE_AXES = (False, False, True)
"""RETURNN's default: broadcast over batch and time, one mask value per feature."""


def _error(layer: str, msg: str) -> ConfigError:
    return ConfigError(f"network layer {layer!r}: {msg}")


def _axes(layer: str, key: str, desc) -> tuple[int, ...]:
    """The axes of ``[B, T, F]`` that an axis description names."""
    if isinstance(desc, str):
        name = desc.lower()
        if name in _AXIS_NAMES:
            return _AXIS_NAMES[name]
        if name and all(c in "btf" for c in name):  # RETURNN: "bt" = ["b", "t"]
            return tuple(sorted({"btf".index(c) for c in name}))
    elif isinstance(desc, (list, tuple)) and desc and all(isinstance(d, str) for d in desc):
        return tuple(sorted({a for d in desc for a in _axes(layer, key, d)}))
    raise _error(
        layer,
        f"{key} axis {desc!r} is not supported here (a layer's value is [batch, time, feature]); "
        f"use one of {', '.join(repr(n) for n in _AXIS_NAMES)}",
    )


def dropout_noise_axes(layer: str, opts: dict) -> tuple[bool, bool, bool]:
    """Which of batch, time, feature draw their own dropout noise (the others share one mask).

    >>> dropout_noise_axes("h", {"dropout": 0.1})
    (False, False, True)
    >>> dropout_noise_axes("h", {"dropout": 0.1, "dropout_noise_shape": {"*": None}})
    (True, True, True)
    >>> dropout_noise_axes("h", {"dropout": 0.1, "dropout_axis": ["T", "F"]})
    (False, True, True)
    """
    shape, axis = opts.get("dropout_noise_shape"), opts.get("dropout_axis")
    if axis is not None:
        if shape:
            raise _error(layer, "set 'dropout_axis' or 'dropout_noise_shape', not both (RETURNN refuses both)")
        chosen = _axes(layer, "dropout_axis", axis)
        return tuple(a in chosen for a in (_B, _T, _F))  # type: ignore[return-value]
    if not shape:
        return DEFAULT_NOISE_AXES
    if not isinstance(shape, dict):
        raise _error(
            layer,
            f"'dropout_noise_shape' {shape!r}: only the dict form (axis -> 1 or None) is supported; "
            f"a tuple depends on TF's axis order",
        )
    noise = list(DEFAULT_NOISE_AXES)
    if "*" in shape:
        noise = [_own_noise(layer, "*", shape["*"])] * 3
    done: set[int] = set()
    for key, value in shape.items():
        if key == "*":
            continue
        for a in _axes(layer, "dropout_noise_shape", key):
            if a in done:
                raise _error(layer, f"'dropout_noise_shape' names an axis twice ({key!r}); RETURNN refuses that")
            done.add(a)
            noise[a] = _own_noise(layer, key, value)
    return tuple(noise)  # type: ignore[return-value]


def _own_noise(layer: str, key, value) -> bool:
    """RETURNN's values: ``1``/``"x"`` broadcast (shared mask), ``None``/``-1`` own noise."""
    if value in (1, "x") and value is not True:
        return False
    if value is None or (value == -1 and not isinstance(value, bool)):
        return True
    raise _error(layer, f"'dropout_noise_shape' value {value!r} for {key!r} must be 1 or 'x' (broadcast) or None")


def apply_dropout(x: torch.Tensor, rate: float, noise_axes: tuple[bool, bool, bool]) -> torch.Tensor:
    """Dropout of ``x`` ``[B, T, F]`` with the mask drawn only over ``noise_axes``, scaled by
    ``1 / (1 - rate)`` (TF's ``dropout``); call it in training only."""
    shape = [n if own else 1 for n, own in zip(x.shape, noise_axes)]
    keep = torch.rand(shape, device=x.device) >= rate
    return x * keep.to(x.dtype) / (1.0 - rate)
