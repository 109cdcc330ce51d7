"""The ``learning_rate_file``: per epoch the learning rate and the scores, in RETURNN's format.

A resumed training continues its lr schedule from this file, and RETURNN and returnn-ray read each
other's files, so the text is written byte for byte as RETURNN writes it, and read without executing
it (tests/training/test_lr_file.py; against RETURNN in tests/training/test_lr_control.py). The
policies that fill it are in :mod:`returnn_ray.training.lr_control`.

The file, as RETURNN writes it (:func:`format_learning_rate_file`; RETURNN's ``better_repr``):
``{`` newline, then per epoch in order ``<epoch>: EpochData(learningRate=<repr>, error=<dict>),``
newline, then ``}`` and a newline. ``<dict>`` holds the scores and the ``':meta:<name>'`` entries,
keys sorted; it is written on one line (``{'dev_loss_ce': 0.5, 'train_loss_ce': 0.7}``) when its
``key: value`` texts add up to fewer than 40 characters, else one entry a line, each ending in a
comma. NaN and infinity are written ``float('nan')``, ``float('inf')``, ``float('-inf')``.

>>> print(format_learning_rate_file({1: EpochData(0.1, {"dev_loss_ce": 2.0, "train_loss_ce": 2.5})}), end="")
{
1: EpochData(learningRate=0.1, error={'dev_loss_ce': 2.0, 'train_loss_ce': 2.5}),
}
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from returnn_ray.atomic import atomic_write
from returnn_ray.errors import UserError

__all__ = [
    "EpochData",
    "format_learning_rate_file",
    "parse_learning_rate_file",
    "load_learning_rate_file",
    "save_learning_rate_file",
]

_META_PREFIX = ":meta:"


@dataclass(repr=False)
class EpochData:
    """What the ``learning_rate_file`` holds for one epoch."""

    learning_rate: float
    """The lr the epoch was (or will be) trained with."""
    error: dict[str, float] = field(default_factory=dict)
    """Scores, ``<dataset>_loss_<name>`` (e.g. ``dev_loss_ce``); lower is better."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else (written as ``':meta:<name>'`` keys in ``error``), e.g. ``epoch_train_time_secs``."""

    def __repr__(self) -> str:
        # RETURNN parses exactly this, so the text must not change: learningRate, one joined dict.
        joined = {**self.error, **{_META_PREFIX + k: v for k, v in self.meta.items()}}
        return f"EpochData(learningRate={_better_repr(self.learning_rate)}, error={_better_repr(joined)})"


def format_learning_rate_file(epochs: Mapping[int, EpochData]) -> str:
    """The text of a ``learning_rate_file``, byte for byte as RETURNN writes it (see the module doc)."""
    return _better_repr(dict(epochs)) + "\n"


def _better_repr(o: Any) -> str:
    """RETURNN's ``util.basic.better_repr``: deterministic (sorted dicts), long containers one item a line."""
    if isinstance(o, list):
        return "[\n%s]" % "".join(_better_repr(v) + ",\n" for v in o)
    if isinstance(o, tuple):
        if len(o) == 1:
            return "(%s,)" % (o[0],)  # sic: RETURNN uses str() here
        return "(%s)" % ", ".join(map(_better_repr, o))
    if isinstance(o, dict):
        items = [_better_repr(k) + ": " + _better_repr(v) for k, v in sorted(o.items())]
        if sum(len(s) for s in items) >= 40:
            return "{\n%s}" % "".join(s + ",\n" for s in items)
        return "{%s}" % ", ".join(items)
    if isinstance(o, set):
        return "set([\n%s])" % "".join(_better_repr(v) + ",\n" for v in o)
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return "float('%r')" % (o,)
    return repr(o)


def parse_learning_rate_file(text: str, path: str = "learning_rate_file") -> dict[int, EpochData]:
    """Read the text of a ``learning_rate_file`` without executing it.

    RETURNN ``eval``\\ s the file; here it is parsed with :mod:`ast` and only literals and the calls
    RETURNN's files contain are accepted: ``EpochData(...)``, ``float('nan')``, ``np.float64(x)``.
    Old files with a plain float ``error`` keep it as ``{'old_format_score': x}``.
    Anything else raises a :class:`UserError` naming ``path``.

    >>> parse_learning_rate_file("{1: EpochData(learningRate=0.5, error={'dev_loss_ce': 1.0, ':meta:t': 3})}")
    {1: EpochData(learningRate=0.5, error={':meta:t': 3, 'dev_loss_ce': 1.0})}
    """
    if not text.strip():
        raise _corrupt(path, "the file is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise _corrupt(path, f"line {exc.lineno}: {exc.msg}" if exc.lineno else str(exc.msg)) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
    body = tree.body
    if not isinstance(body, ast.Dict):
        raise _corrupt(path, "expected a dict {epoch: EpochData(...), ...}")
    epochs: dict[int, EpochData] = {}
    for key_node, value_node in zip(body.keys, body.values):
        if key_node is None:
            raise _corrupt(path, f"line {value_node.lineno}: unexpected '**'")
        epoch = _literal(key_node, path)
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise _corrupt(path, f"line {key_node.lineno}: epoch {epoch!r} is not an int")
        epochs[epoch] = _epoch_data(value_node, path)
    return epochs


def load_learning_rate_file(path: str) -> dict[int, EpochData]:
    """Read and parse ``path``; a missing or unreadable file is a :class:`UserError` too."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"cannot read learning_rate_file {path!r}: {reason}") from exc
    return parse_learning_rate_file(text, path)


def save_learning_rate_file(path: str, epochs: Mapping[int, EpochData]) -> None:
    """Write ``epochs`` to ``path`` atomically (creating its directory, as RETURNN does)."""
    directory = os.path.dirname(path)
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the directory of learning_rate_file {path!r}: {exc.strerror or exc}")
    atomic_write(path, format_learning_rate_file(epochs))


def _corrupt(path: str, what: str) -> UserError:
    return UserError(
        f"corrupt learning_rate_file {path!r}: {what}; fix the file or restore it "
        "(it holds the lr schedule and scores a resumed training continues from)"
    )


def _epoch_data(node: ast.expr, path: str) -> EpochData:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "EpochData"):
        raise _corrupt(path, f"line {node.lineno}: expected EpochData(...)")
    # RETURNN writes keywords; very old files passed (learningRate, error) positionally.
    if len(node.args) > 2:
        raise _corrupt(path, f"line {node.lineno}: EpochData takes at most 2 positional arguments")
    args = dict(zip(("learningRate", "error"), (_literal(a, path) for a in node.args)))
    for kw in node.keywords:
        name = {"learning_rate": "learningRate"}.get(kw.arg or "", kw.arg)
        if name not in ("learningRate", "error", "meta") or name in args:
            raise _corrupt(path, f"line {node.lineno}: unexpected EpochData argument {kw.arg!r}")
        args[name] = _literal(kw.value, path)
    lr = args.get("learningRate")
    if not _is_number(lr):
        raise _corrupt(path, f"line {node.lineno}: learningRate {lr!r} is not a number")
    error = args.get("error")
    if _is_number(error):
        error = {"old_format_score": error}  # RETURNN's old format: one float
    elif error is None:
        error = {}
    meta = args.get("meta")
    if not isinstance(error, dict) or not (meta is None or isinstance(meta, dict)):
        raise _corrupt(path, f"line {node.lineno}: EpochData error/meta must be dicts")
    is_meta = {k: isinstance(k, str) and k.startswith(_META_PREFIX) for k in error}
    if meta is not None and any(is_meta.values()):
        raise _corrupt(path, f"line {node.lineno}: ':meta:' keys in error and a meta argument")
    if meta is None:
        meta = {k[len(_META_PREFIX) :]: v for k, v in error.items() if is_meta[k]}
    scores = {k: v for k, v in error.items() if not is_meta[k]}
    for k, v in scores.items():
        if not isinstance(k, str) or not _is_number(v):
            raise _corrupt(path, f"line {node.lineno}: score {k!r}: {v!r} is not a name and a number")
    return EpochData(float(lr), {k: float(v) for k, v in scores.items()}, meta)


_NUMPY_SCALARS = {"float64", "float32", "float16", "float_", "int64", "int32", "int16", "int8", "bool_"}


def _literal(node: ast.expr, path: str) -> Any:
    """A Python literal, plus the few names and calls RETURNN's learning-rate files contain."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, path)
        if _is_number(v):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):  # RETURNN's eval namespace has these
        return float(node.id)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, path): _literal(v, path) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
    if isinstance(node, ast.List):
        return [_literal(v, path) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(v, path) for v in node.elts)
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func = node.func
        arg = _literal(node.args[0], path)
        if isinstance(func, ast.Name) and func.id == "float" and isinstance(arg, (str, int, float)):
            try:
                return float(arg)
            except ValueError:
                pass
        elif isinstance(func, ast.Name) and func.id == "set" and isinstance(arg, list):
            return set(arg)
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("np", "numpy")
            and func.attr in _NUMPY_SCALARS
            and _is_number(arg)
        ):
            # numpy >= 2 writes np.float64(0.5) for a numpy score that reached RETURNN's file
            return bool(arg) if func.attr == "bool_" else (float(arg) if "float" in func.attr else int(arg))
    raise _corrupt(path, f"line {getattr(node, 'lineno', '?')}: unexpected {ast.unparse(node)[:60]!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
