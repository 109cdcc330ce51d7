"""What a sweep varies: config keys and their values, from ``--grid`` and the ``sweep`` dict.

A ``sweep`` entry is ``key: [v1, v2]`` (a grid), ``{"grid": [...]}``, ``{"choice": [...]}``
(sampled), ``{"uniform": [lo, hi]}``, ``{"loguniform": [lo, hi]}`` or ``{"randint": [lo, hi]}``
(``hi`` excluded). ``--grid key=v1,v2`` adds a grid; its values are typed as RETURNN types
``++key value`` (numbers, bools, Python literals; anything else stays a string).
A trial's variant reaches its training run as ``++key value`` arguments, after the base config.

>>> space = parse_space({"learning_rate": [0.001, 0.003]}, ["batch_size=2000,5000"])
>>> [(d.key, d.kind, d.values) for d in space]
[('learning_rate', 'grid', (0.001, 0.003)), ('batch_size', 'grid', (2000, 5000))]
>>> override_args({"learning_rate": 0.001, "optimizer": {"class": "adam"}, "batching": "sorted"})
['++learning_rate', '0.001', '++optimizer', "{'class': 'adam'}", '++batching', 'sorted']
>>> variant_name({"learning_rate": 0.001, "batch_size": 2000})
'learning_rate=0.001+batch_size=2000'
"""

# Imports inside functions: Ray Tune loads only when the Tune search space is made (start-up time).
from __future__ import annotations

import ast
import dataclasses
import difflib
import itertools
import logging
import re
from typing import Any, Iterable, Mapping, Sequence

from returnn_ray.errors import ConfigError

logger = logging.getLogger("returnn_ray")

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
"""How a key's values are given."""

VARIANT_KEY = "variant"
"""The pseudo key of ``--variants``: which config file a trial loads after the base config."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One swept key."""

    key: str
    kind: str
    values: tuple
    """The grid/choice values, or ``(lo, hi)`` of a range."""


def parse_space(sweep: Mapping[str, Any] | None, grid_args: Sequence[str] = (), variants: Sequence[str] = ()) -> list[Dimension]:
    """The sweep's dimensions: the config's ``sweep`` dict, then each ``--grid key=v1,v2``."""
    dims: dict[str, Dimension] = {}
    for key, spec in (sweep or {}).items():
        dims[str(key)] = _dimension(str(key), spec)
    given: set[str] = set()
    for text in grid_args:
        key, values = parse_grid_arg(text)
        if key in given:
            raise ConfigError(f"--grid {key!r} is given twice; give all its values in one: --grid {key}=v1,v2,...")
        given.add(key)
        dims[key] = Dimension(key, "grid", values)  # a --grid replaces the config's sweep entry of its key
    for key in dims:
        _check_sweepable(key)
    if variants:
        dims[VARIANT_KEY] = Dimension(VARIANT_KEY, "grid", tuple(variants))
    if not dims:
        raise ConfigError("the sweep varies nothing: give --grid key=v1,v2, --variants FILES, or a `sweep` dict")
    return list(dims.values())


PER_TRIAL_KEYS = ("task", "model", "learning_rate_file", "log", "metrics_file", "ray_local_mode")
"""Keys each trial sets itself (it trains, in its own directory): sweeping them would change nothing."""


def _check_sweepable(key: str) -> None:
    if key == VARIANT_KEY:
        raise ConfigError(f"sweep key {key!r} is reserved for config files: give them with --variants FILE ... (sweep_variants)")
    if key in PER_TRIAL_KEYS:
        raise ConfigError(
            f"sweep key {key!r} cannot be swept: each trial sets it itself (it trains, in its own directory"
            " <sweep_dir>/trials/...); sweep other keys"
        )
    if key == "sweep" or key.startswith("sweep_"):
        raise ConfigError(f"sweep key {key!r} configures the sweep itself and cannot be swept; sweep other keys")


def check_points(space: Sequence[Dimension]) -> list[dict[str, Any]]:
    """Values that stand for every trial, to check each trial's config before the sweep starts:
    every grid combination (exactly the sweep's trials), and each sampled key at each of its
    choices and at both ends of its range (with the other keys at their first values).

    >>> check_points([Dimension("a", "grid", (1, 2)), Dimension("b", "randint", (3, 6))])
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}, {'a': 1, 'b': 5}]
    """
    grid = [d for d in space if d.kind == "grid"]
    picks = {d.key: _picks(d) for d in space if d.kind != "grid"}
    order = [d.key for d in space]
    first = {key: values[0] for key, values in picks.items()}
    points = []
    for combo in itertools.product(*(d.values for d in grid)):
        values = {**dict(zip((d.key for d in grid), combo)), **first}
        points.append({key: values[key] for key in order})
    for key, values in picks.items():
        points += [{**points[0], key: value} for value in values[1:]]
    return points


def _picks(d: Dimension) -> tuple:
    if d.kind == "choice":
        return d.values
    if d.kind == "randint":
        return (d.values[0], d.values[1] - 1)  # high is excluded
    return tuple(float(v) for v in d.values)


def parse_grid_arg(text: str) -> tuple[str, tuple]:
    """``key=v1,v2,...`` -> ``(key, (v1, v2, ...))`` with typed values."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"--grid {text!r}: expected key=value1,value2,... (e.g. learning_rate=0.001,0.003)")
    parsed = tuple(_typed(v.strip()) for v in _split_values(values) if v.strip())
    if not parsed:
        raise ConfigError(f"--grid {text!r}: no values for {key!r}")
    return key, parsed


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets and quotes, so ``{'a': 1, 'b': 2}`` stays one value."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _typed(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _dimension(key: str, spec: Any) -> Dimension:
    if isinstance(spec, (list, tuple)):
        spec = {"grid": list(spec)}
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(
            f"sweep[{key!r}] must be a list of values or one of {{{', '.join(k + ': ...' for k in KINDS)}}}, got {spec!r}"
        )
    kind, values = next(iter(spec.items()))
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values:
        raise ConfigError(f"sweep[{key!r}]: no values")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"sweep[{key!r}]: {kind} needs [low, high] numbers, got {list(values)}")
        if not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise ConfigError(f"sweep[{key!r}]: {kind} needs low < high (and low > 0 for loguniform), got {list(values)}")
    return Dimension(key, kind, values)


def warn_unknown_keys(space: Iterable[Dimension], known: Iterable[str], config_keys: Iterable[str]) -> list[str]:
    """A swept key that neither returnn-ray nor the config knows is likely a typo: warn, with the closest key."""
    known, config_keys = set(known), set(config_keys)
    messages = []
    for d in space:
        if d.key == VARIANT_KEY or d.key in known or d.key in config_keys:
            continue
        close = difflib.get_close_matches(d.key, sorted(known | config_keys), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"swept key {d.key!r} is neither a returnn-ray key nor in the config{hint}"
        logger.warning(message)
        messages.append(message)
    return messages


def tune_param_space(space: Sequence[Dimension]) -> dict[str, Any]:
    """Ray Tune's ``param_space``: ``{"values": {key: <Tune domain>}}``."""
    from ray import tune

    make = {
        "grid": lambda v: tune.grid_search(list(v)),
        "choice": lambda v: tune.choice(list(v)),
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }
    return {"values": {d.key: make[d.kind](d.values) for d in space}}


def override_args(values: Mapping[str, Any]) -> list[str]:
    """A variant as ``++key value`` arguments (strings as they are, anything else as a literal)."""
    args = []
    for key, value in values.items():
        if key == VARIANT_KEY:
            continue
        args += [f"++{key}", value if isinstance(value, str) else repr(value)]
    return args


def variant_name(values: Mapping[str, Any]) -> str:
    """A short, file-system-safe name of a variant, e.g. ``learning_rate=0.001+batch_size=2000``."""
    parts = []
    for key, value in values.items():
        if key == VARIANT_KEY:
            value = re.sub(r"\.config$|\.py$|\.json$", "", str(value).rsplit("/", 1)[-1])
        elif isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    # No commas: the trial's paths go through `++key value`, where a comma splits a list.
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "+".join(parts))[:120]
