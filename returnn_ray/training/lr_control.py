"""Learning-rate control (newbob), as RETURNN has it.

Plain Python, no torch: the learning rate of an epoch is a decision made from the scores of the
epochs before it, so it is tested here without a model or a cluster, and differentially against
RETURNN's ``returnn.learning_rate_control`` (tests/training/test_lr_control.py).

Policies (config key ``learning_rate_control``), each a :class:`LearningRateControl`:

- ``constant`` (default): the lr of the previous epoch that has one; else ``learning_rate``.
- ``newbob`` (= ``newbob_rel``, ``newbob_relative``): compare the error of the last two epochs,
  ``rel = (err[e-1] - err[e-2]) / |err[e-1]|`` (``/ |err[e-2]|`` with
  ``newbob_relative_error_div_by_old``); if ``rel > newbob_relative_error_threshold`` (-0.01)
  the lr is multiplied by ``learning_rate_decay`` (0.5; older key ``newbob_learning_rate_decay``)
  and floored at ``min_learning_rate`` (0.0), else multiplied by ``learning_rate_growth`` (1.0).
- ``newbob_abs``: the same with the absolute difference ``err[e-1] - err[e-2]`` against
  ``newbob_error_threshold`` (-0.01).
- ``newbob_multi_epoch``: every ``newbob_multi_update_interval`` epochs (default
  ``newbob_multi_num_epochs``, 5; decisions at epochs 1, 1+n, 1+2n, ...) the mean ``rel`` over the
  last ``newbob_multi_num_epochs`` + 1 epochs is compared: above ``newbob_relative_error_threshold``
  → decay, below ``newbob_relative_error_grow_threshold`` (default the same threshold) → growth.

Options every policy reads: ``learning_rate`` (1.0; epoch 1 and the reference for the next two),
``learning_rates`` (a list for epochs 1, 2, ... or a dict {epoch: lr}; fixed lrs that win over the
policy, written into the file for all their epochs at once, as RETURNN does),
``learning_rate_control_error_measure`` (the score key, or a list of keys tried in order),
``learning_rate_control_relative_error_relative_lr`` (divide ``rel`` by ``lr / learning_rate``),
``learning_rate_control_min_num_epochs_per_new_lr`` (keep a changed lr at least this many epochs).

The error an epoch is judged by (:meth:`LearningRateControl.error_key`): the configured measure
(or ``<measure>_output``), else ``dev_score``/``dev_score_output``, else the first sorted key
starting with ``dev_score_output/``, else the first sorted key starting with ``dev_``, else
``train_score``/``train_score_output``, else the smallest key. An epoch's lr is fixed once it is
computed (it is then in :attr:`~LearningRateControl.epochs` and so in the file).

The ``learning_rate_file`` format (reading and writing) is in :mod:`returnn_ray.training.lr_file`.

>>> c = make_lr_control("newbob", learning_rate=0.1)
>>> c.learning_rate_for_epoch(1)
0.1
>>> c.set_epoch_error(1, {"dev_loss_ce": 2.0, "train_loss_ce": 2.5})
>>> c.learning_rate_for_epoch(2)  # nothing to compare with yet
0.1
>>> c.set_epoch_error(2, {"dev_loss_ce": 1.99, "train_loss_ce": 2.1})
>>> c.learning_rate_for_epoch(3)  # rel = (1.99 - 2.0) / 1.99 = -0.005 > -0.01: decay
0.05
>>> c.epochs[1]  # what the learning_rate_file holds for epoch 1
EpochData(learningRate=0.1, error={'dev_loss_ce': 2.0, 'train_loss_ce': 2.5})
"""

from __future__ import annotations

import ast
import inspect
import math
import os
from typing import Any, Callable, ClassVar, Mapping, Union

from returnn_ray.config.validators import MAX_LEARNING_RATE
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.training.lr_file import EpochData, _is_number, load_learning_rate_file, save_learning_rate_file

__all__ = [
    "LearningRateControl",
    "ConstantLearningRate",
    "NewbobRelative",
    "NewbobAbs",
    "NewbobMultiEpoch",
    "LR_CONTROL_KINDS",
    "LR_CONTROL_CONFIG_KEYS",
    "make_lr_control",
    "error_key_for_scores",
]

LrUpdate = Union[float, Callable[[float], float]]
"""``learning_rate_decay`` / ``learning_rate_growth``: a factor, or a function of the lr (Python configs)."""


# ---------------------------------------------------------------------------------------------
# The policies


class LearningRateControl:
    """The per-epoch learning rates and scores of one training, and the policy for the next lr.

    Use :func:`make_lr_control` to build one from config values. The training loop calls
    :meth:`learning_rate_for_epoch` before an epoch, :meth:`set_epoch_error` after training and
    after each evaluation, and :meth:`save` after each of those.
    """

    kind: ClassVar[str] = "constant"
    needs_scores: ClassVar[bool] = True
    """Whether the policy reads the scores (``constant`` does not)."""

    def __init__(
        self,
        *,
        learning_rate: float = 1.0,
        min_learning_rate: float = 0.0,
        learning_rates: list[float] | tuple[float, ...] | Mapping[int, float] | str | None = None,
        learning_rate_control_error_measure: str | list[str] | None = None,
        learning_rate_control_relative_error_relative_lr: bool = False,
        learning_rate_control_min_num_epochs_per_new_lr: int = 0,
        newbob_relative_error_div_by_old: bool = False,
        learning_rate_decay: LrUpdate = 0.5,
        learning_rate_growth: LrUpdate = 1.0,
    ) -> None:
        self.epochs: dict[int, EpochData] = {}
        """Epoch → its record; what the ``learning_rate_file`` holds."""
        self.default_learning_rate = float(learning_rate)
        self.min_learning_rate = float(min_learning_rate)
        self.preset_learning_rates = _preset_learning_rates(learning_rates)
        self.error_measure = learning_rate_control_error_measure
        self.relative_error_relative_lr = bool(learning_rate_control_relative_error_relative_lr)
        self.min_num_epochs_per_new_lr = int(learning_rate_control_min_num_epochs_per_new_lr)
        self.relative_error_div_by_old = bool(newbob_relative_error_div_by_old)
        self.decay = _check_update("learning_rate_decay", learning_rate_decay)
        self.growth = _check_update("learning_rate_growth", learning_rate_growth)
        if not (self.error_measure is None or isinstance(self.error_measure, (str, list))):
            raise ConfigError(
                f"learning_rate_control_error_measure must be a score key or a list of them, got {self.error_measure!r}"
            )
        self._apply_preset_learning_rates()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind!r}, lr {self.default_learning_rate}, {len(self.epochs)} epochs>"

    # -- the file

    def load(self, path: str, *, missing_ok: bool = True) -> bool:
        """Replace :attr:`epochs` by the content of ``path``; False if it does not exist (and that is ok).

        ``learning_rates`` still fix the epochs the file does not have (RETURNN's order: file first).
        """
        if not os.path.exists(path):
            if missing_ok:
                return False
            raise UserError(f"learning_rate_file {path!r} does not exist")
        self.epochs = load_learning_rate_file(path)
        self._apply_preset_learning_rates()
        return True

    def save(self, path: str) -> None:
        """Write :attr:`epochs` to ``path`` atomically, in RETURNN's format."""
        save_learning_rate_file(path, self.epochs)

    # -- what the training loop calls

    def learning_rate_for_epoch(self, epoch: int) -> float:
        """The lr of ``epoch``: the recorded one, else computed now from the earlier epochs and recorded."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        if epoch in self.epochs:
            return self.epochs[epoch].learning_rate
        lr = self._new_learning_rate(epoch)
        self.epochs[epoch] = EpochData(lr)
        return lr

    def set_epoch_error(self, epoch: int, scores: Mapping[str, float | Mapping[str, float]]) -> None:
        """Record scores of ``epoch`` (merged with earlier ones). The epoch's lr is fixed first if it is not yet.

        A nested ``{"dev_score": {"output": x}}`` becomes ``dev_score`` (one entry) or
        ``dev_score_<name>`` for each entry (the part after a ``:`` in its name), as in RETURNN.
        """
        if epoch not in self.epochs:
            self.learning_rate_for_epoch(epoch)
        flat: dict[str, float] = {}
        for key, value in scores.items():
            if isinstance(value, Mapping):
                if len(value) == 1:
                    flat[key] = _score(key, next(iter(value.values())))
                    continue
                for sub, v in value.items():
                    flat[key + "_" + sub.split(":", 1)[-1]] = _score(sub, v)  # "cost:output1" -> "output1"
            else:
                flat[key] = _score(key, value)
        self.epochs[epoch].error.update(flat)

    def set_epoch_meta(self, epoch: int, meta: Mapping[str, Any]) -> None:
        """Record extra facts about ``epoch`` (written as ``':meta:<name>'`` keys), e.g. the train time."""
        if epoch not in self.epochs:
            self.learning_rate_for_epoch(epoch)
        self.epochs[epoch].meta.update(meta)

    # -- which score decides

    def error_key(self, epoch: int) -> str | None:
        """The score key ``epoch`` is judged by (see the module doc); None if it has no scores."""
        if epoch not in self.epochs:
            if isinstance(self.error_measure, list):
                return self.error_measure[0] if self.error_measure else None
            return self.error_measure
        return error_key_for_scores(self.epochs[epoch].error, self.error_measure)

    def epoch_error(self, epoch: int) -> tuple[str | None, float | None]:
        """(key, value) of the score ``epoch`` is judged by; (None, None) without scores."""
        error = self.epochs[epoch].error if epoch in self.epochs else {}
        if not error:
            return None, None
        key = self.error_key(epoch)
        assert key is not None and key in error
        return key, error[key]

    def relative_error(self, old_epoch: int, new_epoch: int) -> float | None:
        """``(new - old) / |new|`` (``/ |old|`` with ``newbob_relative_error_div_by_old``), None if not comparable.

        Not comparable: either epoch has no score, or they are judged by different keys.
        """
        old_key, old = self.epoch_error(old_epoch)
        new_key, new = self.epoch_error(new_epoch)
        if old is None or new is None or old_key != new_key:
            return None
        denominator = abs(old if self.relative_error_div_by_old else new)
        if denominator == 0.0:
            # RETURNN raises ZeroDivisionError here (e.g. a frame error rate of exactly 0);
            # the limit of the ratio is the natural answer.
            rel = 0.0 if new == old else math.copysign(math.inf, new - old)
        else:
            rel = (new - old) / denominator
        if self.relative_error_relative_lr:
            lr = self._most_recent_learning_rate(new_epoch, exclude_current=False)
            if lr > 0:
                # A smaller lr is expected to give a smaller improvement; correct for that.
                rel /= lr / self.default_learning_rate
        return rel

    # -- the policy

    def _calc_learning_rate(self, epoch: int) -> float:
        """The policy: the lr of a new ``epoch`` from the earlier ones."""
        raise NotImplementedError

    def _new_learning_rate(self, epoch: int) -> float:
        n = self.min_num_epochs_per_new_lr
        if n > 1:
            last_lrs = [self.epochs[e].learning_rate for e in self._last_epochs(epoch, n)]
            # The lr changed within the last n epochs, or there are fewer than n: keep the newest.
            if len(set(last_lrs)) >= 2 or 0 < len(last_lrs) < n:
                return last_lrs[-1]
        return self._calc_learning_rate(epoch)

    def _last_epochs(self, epoch: int, n: int) -> list[int]:
        """The last ``n`` recorded epochs before ``epoch``."""
        return sorted(e for e in self.epochs if e < epoch)[-n:]

    def _last_epoch(self, epoch: int) -> int | None:
        before = [e for e in self.epochs if e < epoch]
        return max(before) if before else None

    def _last_lr_and_pair(self, epoch: int) -> tuple[float, tuple[int, int] | None]:
        """The newest recorded lr before ``epoch`` (else the initial one) and the last two
        recorded epochs ``(older, newer)`` before ``epoch``, if there are two: what newbob compares."""
        last = self._last_epoch(epoch)
        if last is None:
            return self.default_learning_rate, None
        last2 = self._last_epoch(last)
        return self.epochs[last].learning_rate, (None if last2 is None else (last2, last))

    def _most_recent_learning_rate(self, epoch: int, *, exclude_current: bool = True) -> float:
        for e in sorted(self.epochs, reverse=True):
            if e < epoch or (e == epoch and not exclude_current):
                return self.epochs[e].learning_rate
        return self.default_learning_rate

    def _decay_or_grow(self, lr: float, *, decay: bool, grow: bool | None = None) -> float:
        if grow is None:
            grow = not decay
        if decay:
            lr = max(_apply_update(lr, self.decay), self.min_learning_rate)
        if grow:
            lr = _apply_update(lr, self.growth)
        return lr

    def _apply_preset_learning_rates(self) -> None:
        for epoch, lr in self.preset_learning_rates.items():
            if epoch not in self.epochs:
                self.epochs[epoch] = EpochData(lr)
            elif not self.epochs[epoch].learning_rate:  # RETURNN: a recorded 0 lr counts as unset
                self.epochs[epoch].learning_rate = lr


class ConstantLearningRate(LearningRateControl):
    """``constant``: the lr of the last earlier epoch (so the last ``learning_rates`` entry stays),
    else ``learning_rate``."""

    kind = "constant"
    needs_scores = False

    def _calc_learning_rate(self, epoch: int) -> float:
        last = self._last_epoch(epoch)
        return self.default_learning_rate if last is None else self.epochs[last].learning_rate


class NewbobRelative(LearningRateControl):
    """``newbob``: decay when the relative change of the error between the last two epochs is above a threshold."""

    kind = "newbob"

    def __init__(self, *, newbob_relative_error_threshold: float = -0.01, **opts: Any) -> None:
        super().__init__(**opts)
        self.relative_error_threshold = float(newbob_relative_error_threshold)

    def _calc_learning_rate(self, epoch: int) -> float:
        lr, pair = self._last_lr_and_pair(epoch)
        if pair is None:
            return lr
        rel = self.relative_error(*pair)
        if rel is None:
            return lr
        return self._decay_or_grow(lr, decay=rel > self.relative_error_threshold)


class NewbobAbs(LearningRateControl):
    """``newbob_abs``: decay when the error difference between the last two epochs is above a threshold."""

    kind = "newbob_abs"

    def __init__(self, *, newbob_error_threshold: float = -0.01, **opts: Any) -> None:
        super().__init__(**opts)
        self.error_threshold = float(newbob_error_threshold)

    def _calc_learning_rate(self, epoch: int) -> float:
        lr, pair = self._last_lr_and_pair(epoch)
        if pair is None:
            return lr
        last2, last = pair
        old_key, old = self.epoch_error(last2)
        new_key, new = self.epoch_error(last)
        if old is None or new is None or old_key != new_key:
            return lr
        return self._decay_or_grow(lr, decay=new - old > self.error_threshold)


class NewbobMultiEpoch(LearningRateControl):
    """``newbob_multi_epoch``: like ``newbob`` on the mean relative change over several epochs (for
    ``partition_epoch``), deciding only every ``newbob_multi_update_interval`` epochs."""

    kind = "newbob_multi_epoch"

    def __init__(
        self,
        *,
        newbob_multi_num_epochs: int = 5,
        newbob_multi_update_interval: int | None = None,
        newbob_relative_error_threshold: float = -0.01,
        newbob_relative_error_grow_threshold: float | None = None,
        **opts: Any,
    ) -> None:
        super().__init__(**opts)
        self.num_epochs = int(newbob_multi_num_epochs)
        self.update_interval = (
            self.num_epochs if newbob_multi_update_interval is None else int(newbob_multi_update_interval)
        )
        self.relative_error_threshold = float(newbob_relative_error_threshold)
        self.relative_error_grow_threshold = (
            self.relative_error_threshold
            if newbob_relative_error_grow_threshold is None
            else float(newbob_relative_error_grow_threshold)
        )
        if self.num_epochs < 1 or self.update_interval < 1:
            raise ConfigError(
                "newbob_multi_num_epochs and newbob_multi_update_interval must be >= 1, "
                f"got {self.num_epochs} and {self.update_interval}"
            )
        if self.relative_error_grow_threshold > self.relative_error_threshold:
            # Otherwise a mean between the two would ask to decay and grow at once.
            raise ConfigError(
                f"newbob_relative_error_grow_threshold ({self.relative_error_grow_threshold}) must not be above "
                f"newbob_relative_error_threshold ({self.relative_error_threshold})"
            )

    def _calc_learning_rate(self, epoch: int) -> float:
        lr = self._most_recent_learning_rate(epoch)
        if self.update_interval > 1 and epoch % self.update_interval != 1:  # epochs count from 1
            return lr
        mean = self._recent_mean_relative_error(epoch)
        if mean is None:
            return lr
        return self._decay_or_grow(
            lr, decay=mean > self.relative_error_threshold, grow=mean < self.relative_error_grow_threshold
        )

    def _recent_mean_relative_error(self, epoch: int) -> float | None:
        last = self._last_epochs(epoch, self.num_epochs + 1)  # n changes need n + 1 epochs
        if len(last) <= 1:
            return None
        rels = [self.relative_error(a, b) for a, b in zip(last, last[1:])]
        if any(r is None for r in rels):
            return None
        return _numpy_mean(rels)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Building one, and small helpers

_CLASSES: dict[str, type[LearningRateControl]] = {
    "constant": ConstantLearningRate,
    "newbob": NewbobRelative,
    "newbob_rel": NewbobRelative,
    "newbob_relative": NewbobRelative,
    "newbob_abs": NewbobAbs,
    "newbob_multi_epoch": NewbobMultiEpoch,
}

LR_CONTROL_KINDS: tuple[str, ...] = tuple(_CLASSES)
"""Every accepted ``learning_rate_control`` value."""

_ALIASES = {"newbob_learning_rate_decay": "learning_rate_decay", "newbob_learning_rate_growth": "learning_rate_growth"}


def _keys_of(cls: type) -> list[str]:
    keys: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass is not object:
            params = inspect.signature(klass.__init__).parameters.values()
            keys += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in keys]
    return keys


LR_CONTROL_CONFIG_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys([k for cls in _CLASSES.values() for k in _keys_of(cls)] + list(_ALIASES))
)
"""Every config key some policy reads (each policy ignores the others' keys)."""


def make_lr_control(kind: str = "constant", **opts: Any) -> LearningRateControl:
    """Build the policy ``kind`` from config values given by their RETURNN config keys.

    Keys of other policies are accepted and ignored, so a caller can pass every lr key it read;
    ``None`` means unset (the default). An unknown ``kind`` is a :class:`ConfigError`.

    >>> make_lr_control("newbob_multi_epoch", learning_rate=0.1, newbob_multi_num_epochs=3).update_interval
    3
    """
    cls = _CLASSES.get(kind)
    if cls is None:
        raise ConfigError(
            f"learning_rate_control {kind!r} is unknown; use one of {', '.join(repr(k) for k in LR_CONTROL_KINDS)}"
        )
    unknown = sorted(set(opts) - set(LR_CONTROL_CONFIG_KEYS))
    if unknown:
        raise TypeError(f"make_lr_control: unknown options {unknown}")
    for old, new in _ALIASES.items():  # RETURNN: the newer key wins
        value = opts.pop(old, None)
        if opts.get(new) is None and value is not None:
            opts[new] = value
    own = set(_keys_of(cls))
    return cls(**{k: v for k, v in opts.items() if k in own and v is not None})


def check_lr_control(kind: str, options: Mapping[str, Any], learning_rate_file: str | None = None) -> None:
    """Before training starts: the policy builds from its options and an existing
    ``learning_rate_file`` parses (what the training loop does first, so a bad value is one
    line before any worker starts, not an error on each worker)."""
    control = make_lr_control(kind, **options)
    if learning_rate_file:
        control.load(learning_rate_file)


def error_key_for_scores(scores: Mapping[str, float], error_measure: str | list[str] | None = None) -> str | None:
    """The key of ``scores`` an epoch is judged by (RETURNN's ``get_error_key``); None if empty.

    >>> error_key_for_scores({"train_loss_ce": 1.0, "dev_loss_fer": 0.3, "dev_loss_ce": 0.5})
    'dev_loss_ce'
    >>> error_key_for_scores({"dev_loss_ce": 0.5, "dev_loss_fer": 0.3}, "dev_loss_fer")
    'dev_loss_fer'
    """
    if not scores:
        return None
    if len(scores) == 1 and "old_format_score" in scores:
        return "old_format_score"
    measures = error_measure if isinstance(error_measure, list) else [] if error_measure is None else [error_measure]
    candidates = [k for m in measures for k in (m, m + "_output")] + ["dev_score", "dev_score_output"]
    for key in candidates:
        if key in scores:
            return key
    keys = sorted(scores)
    for accept in (
        lambda k: k == "dev_score_output/output" or k.startswith("dev_score_output/output_"),
        lambda k: k.startswith("dev_score_output/"),
        lambda k: k.startswith("dev_"),
    ):
        for key in keys:
            if accept(key):
                return key
    for key in ("train_score", "train_score_output"):
        if key in scores:
            return key
    return keys[0]


def _preset_learning_rates(value: Any) -> dict[int, float]:
    """``learning_rates``: a list for epochs 1, 2, ..., a dict {epoch: lr}, or the text of either."""
    if not value:
        return {}
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"learning_rates {value!r} is not a list or dict of numbers") from None
    if isinstance(value, (list, tuple)):
        value = {i + 1: v for i, v in enumerate(value)}
    if not isinstance(value, Mapping) or not all(
        isinstance(e, int) and e >= 1 and _is_number(v) for e, v in value.items()
    ):
        raise ConfigError(f"learning_rates must be a list of numbers or a dict {{epoch: lr}}, got {value!r}")
    bad = {e: v for e, v in value.items() if not 0 <= v <= MAX_LEARNING_RATE}
    if bad:
        epoch, lr = next(iter(bad.items()))
        raise ConfigError(f"learning_rates: the lr of epoch {epoch} must be a number in [0, {MAX_LEARNING_RATE:g}], got {lr!r}")
    return {e: float(v) for e, v in value.items()}


def _check_update(name: str, update: Any) -> LrUpdate:
    if _is_number(update):
        return float(update)
    if callable(update):
        return update
    raise ConfigError(f"{name} must be a number or a function of the learning rate, got {update!r}")


def _apply_update(lr: float, update: LrUpdate) -> float:
    if isinstance(update, float):
        return lr * update
    new = update(lr)
    if not _is_number(new):
        raise ConfigError(f"learning_rate_decay/growth function returned {new!r} for lr {lr}, expected a float")
    return float(new)


def _score(key: str, value: Any) -> float:
    # Plain floats, or numpy / 0-d torch scalars.
    if isinstance(value, (bool, str)) or not hasattr(value, "__float__"):
        raise TypeError(f"score {key!r} must be a number, got {value!r}")
    return float(value)


def _numpy_mean(values: list[float]) -> float:
    """``float(numpy.mean(values))`` bit for bit, so decisions at the threshold agree with RETURNN's."""
    return _pairwise_sum(values) / len(values)


def _pairwise_sum(v: list[float]) -> float:
    # numpy's pairwise summation (8 accumulators, blocks of 128), as used by np.add.reduce.
    n = len(v)
    if n < 8:
        res = 0.0
        for x in v:
            res += x
        return res
    if n <= 128:
        r = list(v[:8])
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += v[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for x in v[i:]:
            res += x
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(v[:n2]) + _pairwise_sum(v[n2:])
