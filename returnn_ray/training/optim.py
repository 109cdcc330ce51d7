"""The optimizer, gradient clipping, mixed precision and gradient accumulation, as RETURNN's torch engine does them.

Config keys (RETURNN's names): ``optimizer`` (``{"class": "adam", ...}``), the older flags
``adam`` / ``nadam``, ``learning_rate``, ``gradient_clip``, ``gradient_clip_global_norm``,
``accum_grad_multiple_step``, ``torch_amp``. One update, in RETURNN's order
(``returnn.torch.updater.Updater.step``), is :func:`apply_update`: unscale (AMP), clip each
gradient value, clip the global norm, optimizer step. No Ray and no torch.distributed here.

>>> model = torch.nn.Linear(3, 2)
>>> opt = build_optimizer(model, optimizer={"class": "adamw", "weight_decay": 0.01, "epsilon": 1e-6}, learning_rate=0.1)
>>> type(opt).__name__, opt.param_groups[0]["eps"], [g["weight_decay"] for g in opt.param_groups]
('AdamW', 1e-06, [0.01, 0.0])
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import warnings
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping

import torch

from returnn_ray.errors import ConfigError

__all__ = [
    "AmpSettings",
    "amp_context",
    "apply_update",
    "build_optimizer",
    "check_optimizer",
    "clip_gradients",
    "make_grad_scaler",
    "optimizer_class",
    "set_learning_rate",
    "should_step",
]

_OUR_KEYS = ("weight_decay_modules_blacklist", "weight_decay_custom_include_check", "param_groups_custom")
"""Keys of the ``optimizer`` dict that are RETURNN's, not the optimizer class's."""


def _torch_optimizers() -> dict[str, type]:
    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


def optimizer_class(name: str | type | Callable[[], type]) -> type:
    """The optimizer class of an ``optimizer`` dict's ``class`` (RETURNN's ``get_optimizer_class``).

    A torch.optim class by name, any case (``"adam"``, ``"AdamW"``); a dotted path
    (``"mypkg.optim.Lion"``); a class; or a callable returning the class.

    >>> optimizer_class("nadam").__name__, optimizer_class(torch.optim.SGD).__name__
    ('NAdam', 'SGD')
    """
    if isinstance(name, type):
        cls = name
    elif isinstance(name, str) and "." in name:
        module_name, attr = name.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"optimizer class {name!r} cannot be imported: {exc}") from None
    elif isinstance(name, str):
        known = _torch_optimizers()
        if name.lower() not in known:
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f"; did you mean {close[0]!r}? " if close else "; "
            raise ConfigError(
                f"optimizer class {name!r} is not a torch.optim optimizer{hint}known: {', '.join(sorted(known))}"
            )
        cls = known[name.lower()]
    elif callable(name):
        cls = name()  # RETURNN: a callable returns the class
    else:
        raise ConfigError(f"optimizer 'class' must be a name, a class or a callable, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer class {name!r} gives {cls!r}, not a torch.optim.Optimizer subclass")
    return cls


def _init_kwargs(cls: type) -> set[str] | None:
    """Keyword arguments of the class's constructor except ``params``; None if it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n not in ("self", "params")}


def _default_of(cls: type, name: str) -> Any:
    """The default of the constructor argument ``name``; None if it has none."""
    param = inspect.signature(cls.__init__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _resolve_module_types(mods: Any) -> tuple[type, ...]:
    """``weight_decay_modules_blacklist``: module types or ``"torch.nn.LayerNorm"``-style names."""
    if not isinstance(mods, (list, tuple)):
        raise ConfigError(f"optimizer 'weight_decay_modules_blacklist' must be a list of module types, got {mods!r}")
    out = []
    for mod in mods:
        if isinstance(mod, str):
            module_name, _, attr = mod.rpartition(".")
            try:
                resolved = getattr(importlib.import_module(module_name), attr) if module_name else None
            except (ImportError, AttributeError):
                resolved = None
            if resolved is None:
                raise ConfigError(
                    f"optimizer 'weight_decay_modules_blacklist': cannot import {mod!r} (e.g. 'torch.nn.LayerNorm')"
                )
            mod = resolved
        if not (isinstance(mod, type) and issubclass(mod, torch.nn.Module)):
            raise ConfigError(f"optimizer 'weight_decay_modules_blacklist': {mod!r} is not a torch.nn.Module type")
        out.append(mod)
    return tuple(out)


def _param_groups(
    model: torch.nn.Module, weight_decay: float, blacklist: tuple[type, ...], include_check: Callable | None
):
    """RETURNN's weight decay split: biases and blacklisted modules' params get none.

    ``include_check`` gets ``full_param_name`` as RETURNN's torch updater gives it: the param's
    name within its module (``"bias"``, not ``"encoder.0.bias"``).

    Two groups, each sorted by param name (RETURNN's order); a param shared by modules counts once.
    """
    with_wd, without_wd = set(), set()
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            include = None
            if include_check is not None:
                # RETURNN's updater passes the name within the module ("bias") as full_param_name
                include = include_check(module=module, rf_module=None, full_param_name=param_name, param=param)
                if include is not None and not isinstance(include, bool):
                    raise ConfigError(
                        f"optimizer 'weight_decay_custom_include_check' returned {include!r}, not True/False/None"
                    )
            if include is None:
                include = not (param_name.endswith("bias") or isinstance(module, blacklist))
            (with_wd if include else without_wd).add(full_name)
    by_name = dict(model.named_parameters())
    return [
        {"params": [by_name[n] for n in sorted(with_wd)], "weight_decay": weight_decay},
        {"params": [by_name[n] for n in sorted(without_wd)], "weight_decay": 0.0},
    ]


def check_optimizer(
    optimizer: Mapping[str, Any] | str | Callable | None,
    *,
    adam: bool = False,
    nadam: bool = False,
    learning_rate: float = 1.0,
    optimizer_epsilon: float | None = None,
    default: Literal["sgd", "error"] = "sgd",
) -> None:
    """Before training starts: the optimizer settings build an optimizer (class, options, weight
    decay names), here for a 1x1 linear layer, so that a typo is one line before any worker starts.

    The functions that need the real model (``param_groups_custom``,
    ``weight_decay_custom_include_check``) are only checked to be callable.
    """
    if isinstance(optimizer, Mapping):
        optimizer = dict(optimizer)
        for key in ("param_groups_custom", "weight_decay_custom_include_check"):
            value = optimizer.pop(key, None)
            if value is not None and not callable(value):
                raise ConfigError(f"optimizer {key!r} must be callable, got {value!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "both 'optimizer' and adam set" is warned when training builds it
        _build(
            torch.nn.Linear(1, 1), optimizer=optimizer, adam=adam, nadam=nadam, learning_rate=learning_rate,
            optimizer_epsilon=optimizer_epsilon, default=default, probe=True,
        )


_TF_EPSILON = 1e-16
"""RETURNN TF engine's default ``optimizer_epsilon`` (``returnn/tf/updater.py``)."""


def build_optimizer(
    params_or_model: torch.nn.Module | Iterable[Any],
    *,
    optimizer: Mapping[str, Any] | str | Callable | None = None,
    adam: bool = False,
    nadam: bool = False,
    learning_rate: float,
    optimizer_epsilon: float | None = None,
    default: Literal["sgd", "error"] = "sgd",
) -> torch.optim.Optimizer:
    """The optimizer a config asks for, with the learning rate ``learning_rate``.

    ``default`` says whose rules apply: ``"error"`` RETURNN's torch engine (torch-style configs),
    ``"sgd"`` its TF engine (network dicts, rebuilt in PyTorch).

    - ``optimizer = {"class": <name>, **kwargs}``: any torch.optim class by lower-case name, a
      dotted path, a class, or a callable returning the class (a bare name or callable instead of
      the dict also works). The kwargs go to the class; ``epsilon`` is renamed ``eps``.
      ``learning_rate``/``lr`` must not be in the dict: the learning rate is ``learning_rate``
      (and then set per epoch by :func:`set_learning_rate`). The epsilon nobody gave is torch's
      default (1e-8) under the torch engine, and ``optimizer_epsilon`` (1e-16) under the TF engine,
      as each of RETURNN's engines does it.
    - Weight decay, as RETURNN's torch updater: with a model and a non-zero ``weight_decay``, the
      params split into two groups: biases and params of ``weight_decay_modules_blacklist``
      modules (default ``torch.nn.LayerNorm``, ``torch.nn.Embedding``) get none;
      ``weight_decay_custom_include_check(module=, rf_module=None, full_param_name=, param=)``
      may decide per param (True/False, None: the default rule). ``param_groups_custom(model=,
      rf_model=None, optimizer_class=, optimizer_opts=)`` returns the groups itself; a group
      may carry ``learning_rate_multiplier``. With plain params, weight decay is uniform.
    - ``adam = True`` / ``nadam = True`` (RETURNN's TF flags, TF engine only): Adam / NAdam with
      ``eps = optimizer_epsilon`` (default 1e-16). The dict wins over the flags. RETURNN's torch
      engine does not read the flags and wants the dict: an error here.
    - Nothing set: RETURNN TF's plain SGD (``default="sgd"``); RETURNN's torch engine refuses
      instead (``default="error"``).

    >>> build_optimizer(torch.nn.Linear(2, 2), optimizer={"class": "adam", "lr": 0.1}, learning_rate=1.0)
    Traceback (most recent call last):
    returnn_ray.errors.ConfigError: optimizer: found 'lr' in the 'optimizer' dict; set learning_rate = ... instead
    """
    opt = _build(
        params_or_model, optimizer=optimizer, adam=adam, nadam=nadam, learning_rate=learning_rate,
        optimizer_epsilon=optimizer_epsilon, default=default, probe=False,
    )
    assert opt is not None
    return opt


def _build(
    params_or_model: torch.nn.Module | Iterable[Any], *, optimizer: Mapping[str, Any] | str | Callable | None,
    adam: bool, nadam: bool, learning_rate: float, optimizer_epsilon: float | None, default: Literal["sgd", "error"],
    probe: bool,
) -> torch.optim.Optimizer | None:
    """:func:`build_optimizer`; ``probe``: only check, None where the class's own checks passed (:func:`_construct`)."""
    model = params_or_model if isinstance(params_or_model, torch.nn.Module) else None
    params = list(params_or_model.parameters() if model is not None else params_or_model)
    if not params:
        raise ConfigError("optimizer: the model has no parameters")
    tf_epsilon = None if default == "error" else (_TF_EPSILON if optimizer_epsilon is None else optimizer_epsilon)
    if optimizer is None:
        cls, kwargs = _class_from_flags(adam=adam, nadam=nadam, epsilon=tf_epsilon)
        opt = _construct(cls, params, probe, lr=learning_rate, **kwargs)
    else:
        if adam or nadam:
            warnings.warn("config sets both 'optimizer' and the adam/nadam flag; the 'optimizer' dict is used")
        cls, kwargs, ours = _class_and_kwargs(optimizer, tf_epsilon)
        groups = _param_groups_for(model, params, cls, kwargs, ours)
        try:
            opt = _construct(cls, groups, probe, lr=learning_rate, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"optimizer {cls.__name__}({kwargs}): {exc}") from None
    if opt is not None:
        set_learning_rate(opt, learning_rate)
    return opt


_NO_PARAMS = "optimizer got an empty parameter list"
"""What ``torch.optim.Optimizer.__init__`` says to an empty param list, once the class has checked its options."""

_PROBED = tuple(
    getattr(torch.optim, name)
    for name in ("Adam", "AdamW", "SGD", "NAdam", "RAdam", "Adamax", "Adagrad", "Adadelta", "RMSprop", "Rprop", "ASGD")
    if hasattr(torch.optim, name)
)
"""torch's optimizers that check all their options before ``Optimizer.__init__`` (torch 2.13), but
``fused``'s combinations: the check probes these alone, and without ``fused``. Others (LBFGS,
SparseAdam, Muon, a class of the config's own) refuse some options only once they hold params."""


def _construct(cls: type, params: list, probe: bool, **kwargs: Any) -> torch.optim.Optimizer | None:
    """``cls(params, **kwargs)``; ``probe``: None where the class accepts ``kwargs`` without being built.

    Building an optimizer imports ``torch._dynamo`` (``add_param_group``): 1-1.4 s of a driver's
    start, where the check needs no optimizer. torch's optimizers check their options (lr, betas,
    eps, ...) and then hand the params to ``Optimizer.__init__``, which refuses an empty list
    before it adds any group: that refusal says the options passed. Only for the classes that
    check everything there (:data:`_PROBED`); any other class or outcome (another error, a class
    that takes the empty list) builds the optimizer for real, so that the check says what the
    build would.

    >>> _construct(torch.optim.Adam, [], True, lr=0.1) is None
    True
    >>> _construct(torch.optim.Adam, [], True, lr=-1.0)
    Traceback (most recent call last):
    ValueError: Invalid learning rate: -1.0
    """
    if probe and cls in _PROBED and not kwargs.get("fused"):
        try:
            cls([], **kwargs)
        except ValueError as exc:
            if str(exc) == _NO_PARAMS:
                return None
        except Exception:  # noqa: BLE001 - the real build below says what is wrong
            pass
    return cls(params, **kwargs)


def _class_from_flags(*, adam: bool, nadam: bool, epsilon: float | None) -> tuple[type, dict[str, Any]]:
    """No ``optimizer`` dict: the TF engine's flags or its SGD; ``epsilon`` None: the torch engine, which refuses."""
    if epsilon is None:
        flag = "adam = True" if adam else "nadam = True" if nadam else None
        if flag is not None:
            raise ConfigError(
                f"{flag} is not read by RETURNN's torch engine, which needs an optimizer dict; set e.g. "
                f"optimizer = {{'class': {'adam' if adam else 'nadam'!r}, 'epsilon': 1e-16}} (the flag's epsilon)"
            )
        raise ConfigError(
            "no optimizer set; set e.g. optimizer = {'class': 'adam'} (RETURNN's torch engine requires one)"
        )
    if adam and nadam:
        raise ConfigError("both adam = True and nadam = True are set; set one, or optimizer = {'class': ...}")
    if adam or nadam:
        return (torch.optim.Adam if adam else torch.optim.NAdam), {"eps": epsilon}
    return torch.optim.SGD, {}


def _class_and_kwargs(
    optimizer: Mapping[str, Any] | str | Callable, tf_epsilon: float | None
) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """The optimizer class, its checked keyword arguments, and RETURNN's own keys of the dict (:data:`_OUR_KEYS`).

    ``tf_epsilon``: the TF engine's default ``eps`` (``optimizer_epsilon``), None under the torch engine.
    """
    if isinstance(optimizer, Mapping):
        if "class" not in optimizer:
            raise ConfigError(f"optimizer dict has no 'class' (e.g. {{'class': 'adam'}}): {dict(optimizer)!r}")
        kwargs = dict(optimizer)
        cls = optimizer_class(kwargs.pop("class"))
    elif isinstance(optimizer, (str, type)) or callable(optimizer):
        kwargs, cls = {}, optimizer_class(optimizer)
    else:
        raise ConfigError(f"optimizer must be a dict like {{'class': 'adam'}}, got {type(optimizer).__name__}")
    for key in ("learning_rate", "lr"):
        if key in kwargs:
            raise ConfigError(f"optimizer: found {key!r} in the 'optimizer' dict; set learning_rate = ... instead")
    accepted = _init_kwargs(cls)
    if "epsilon" in kwargs and accepted is not None and "eps" in accepted:
        kwargs["eps"] = kwargs.pop("epsilon")
    if tf_epsilon is not None and isinstance(_default_of(cls, "eps"), float):
        kwargs.setdefault("eps", tf_epsilon)  # RETURNN TF: optimizer_opts.setdefault("epsilon", optimizer_epsilon)
    ours = {k: kwargs.pop(k) for k in _OUR_KEYS if k in kwargs}
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            names = accepted | set(_OUR_KEYS) | ({"epsilon"} if "eps" in accepted else set())  # RETURNN's name of eps
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f"; did you mean {close[0]!r}? " if close else "; "
            raise ConfigError(
                f"optimizer {cls.__name__}: unknown option {unknown[0]!r}{hint}"
                f"it accepts: {', '.join(sorted(accepted - {'lr'}))}"
            )
    return cls, kwargs, ours


def _param_groups_for(
    model: torch.nn.Module | None, params: list, cls: type, kwargs: dict[str, Any], ours: Mapping[str, Any]
) -> list[Any]:
    """The params as the optimizer gets them: ``param_groups_custom``'s groups, RETURNN's weight
    decay split (with a model and a non-zero ``weight_decay``), or the plain list."""
    custom = ours.get("param_groups_custom")
    if custom is not None:
        if model is None or not callable(custom):
            raise ConfigError("optimizer 'param_groups_custom' must be a callable and needs the model")
        groups = list(custom(model=model, rf_model=None, optimizer_class=cls, optimizer_opts=kwargs))
        if not groups or not all(isinstance(g, Mapping) for g in groups):
            raise ConfigError(
                f"optimizer 'param_groups_custom' must return a list of param-group dicts, got {groups!r}"
            )
        return [dict(g) for g in groups]
    if not kwargs.get("weight_decay") or model is None:
        return params
    blacklist = ours.get("weight_decay_modules_blacklist")
    blacklist = (torch.nn.LayerNorm, torch.nn.Embedding) if blacklist is None else _resolve_module_types(blacklist)
    check = ours.get("weight_decay_custom_include_check")
    if check is not None and not callable(check):
        raise ConfigError(f"optimizer 'weight_decay_custom_include_check' must be callable, got {check!r}")
    return _param_groups(model, kwargs["weight_decay"], blacklist, check)


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Set every param group's lr: ``learning_rate`` times the group's ``learning_rate_multiplier`` (default 1).

    A tensor lr (capturable optimizers) is filled in place.

    >>> group = {"params": [torch.nn.Parameter(torch.ones(1))], "learning_rate_multiplier": 0.5}
    >>> opt = torch.optim.SGD([group], lr=1.0)
    >>> set_learning_rate(opt, 0.2); opt.param_groups[0]["lr"]
    0.1
    """
    for group in optimizer.param_groups:
        lr = learning_rate * group.get("learning_rate_multiplier", 1.0)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _params(model_or_params: torch.nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(model_or_params, torch.nn.Module):
        return list(model_or_params.parameters())
    return list(model_or_params)


def clip_gradients(
    model_or_params: torch.nn.Module | Iterable[torch.Tensor],
    gradient_clip: float | None,
    gradient_clip_global_norm: float | None,
) -> torch.Tensor | None:
    """RETURNN's clipping: each gradient value to ``±gradient_clip``, then the global L2 norm to
    ``gradient_clip_global_norm`` (0 or None: off).

    Returns the global norm measured before the norm clipping (after the value clipping), or None
    when norm clipping is off. With a GradScaler, unscale first (:func:`apply_update` does).

    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, -4.0])
    >>> norm = clip_gradients([p], None, 1.0)
    >>> norm.item(), [round(g, 4) for g in p.grad.tolist()]  # clip_grad_norm_ scales by 1 / (norm + 1e-6)
    (5.0, [0.6, -0.8])
    """
    for name, value in (("gradient_clip", gradient_clip), ("gradient_clip_global_norm", gradient_clip_global_norm)):
        if value is not None and value < 0:
            raise ConfigError(f"{name} must be >= 0 (0: off), got {value}")
    params = _params(model_or_params)
    if gradient_clip:
        torch.nn.utils.clip_grad_value_(params, gradient_clip)
    if gradient_clip_global_norm:
        return torch.nn.utils.clip_grad_norm_(params, gradient_clip_global_norm)
    return None


def apply_update(
    optimizer: torch.optim.Optimizer,
    model_or_params: torch.nn.Module | Iterable[torch.Tensor],
    *,
    grad_scaler: Any = None,
    gradient_clip: float | None = None,
    gradient_clip_global_norm: float | None = None,
) -> torch.Tensor | None:
    """One optimizer update from the accumulated gradients, in RETURNN's order (``Updater.step``).

    Unscale (if ``grad_scaler``), :func:`clip_gradients`, then ``optimizer.step()`` (through the
    scaler, which skips the step on inf/nan gradients, then ``update()``). Returns the norm
    :func:`clip_gradients` measured. Zeroing the gradients is the caller's (see :func:`should_step`).
    """
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)
    norm = clip_gradients(model_or_params, gradient_clip, gradient_clip_global_norm)
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()
    return norm


def should_step(step_in_epoch: int, accum_grad_multiple_step: int) -> bool:
    """Whether the step ``step_in_epoch`` (0-based, counted per epoch) ends with an optimizer update.

    RETURNN's torch engine (``accum_grad_multiple_step``): gradients of that many steps are
    summed (no averaging), then one update; the count restarts each epoch. An epoch that ends
    inside an accumulation drops it: no update for those last steps, and the next epoch starts by
    zeroing the gradients. So: zero the gradients at each epoch start and after each update.

    >>> [should_step(i, 3) for i in range(7)]
    [False, False, True, False, False, True, False]
    """
    if accum_grad_multiple_step < 1:
        raise ConfigError(f"accum_grad_multiple_step must be >= 1, got {accum_grad_multiple_step}")
    return (step_in_epoch + 1) % accum_grad_multiple_step == 0


# -- mixed precision -------------------------------------------------------------------------

_AMP_DTYPES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16}


class _Unset:
    pass


@dataclasses.dataclass(frozen=True)
class AmpSettings:
    """``torch_amp``, read as RETURNN's torch engine reads it."""

    dtype: torch.dtype | None
    """The autocast dtype; None: autocast's default for the device (float16 on CUDA, bfloat16 on CPU)."""
    grad_scaler: dict | None
    """GradScaler options; None: no GradScaler."""

    @classmethod
    def from_config(cls, torch_amp: str | Mapping[str, Any] | None, grad_scaler: Any = _Unset) -> AmpSettings | None:
        """From ``torch_amp`` (``"bfloat16"``, ``"float16"``, ``{"dtype": ..., "grad_scaler": {...}}``) and the
        config's ``grad_scaler`` (a dict of ``torch.amp.GradScaler`` options, or None for none).

        As in RETURNN, a GradScaler is used whenever AMP is on unless ``grad_scaler`` is None;
        for bfloat16 it changes nothing but skips updates with inf/nan gradients.
        None if ``torch_amp`` is None (no AMP).

        >>> AmpSettings.from_config("bfloat16")
        AmpSettings(dtype=torch.bfloat16, grad_scaler={})
        >>> AmpSettings.from_config({"dtype": "float16", "grad_scaler": None})
        AmpSettings(dtype=torch.float16, grad_scaler=None)
        """
        if torch_amp is None:
            return None
        if isinstance(torch_amp, str):
            dtype_name: Any = torch_amp
        elif isinstance(torch_amp, Mapping):
            unknown = sorted(set(torch_amp) - {"dtype", "grad_scaler"})
            if unknown:
                raise ConfigError(f"torch_amp: unknown option(s) {unknown}; it accepts 'dtype' and 'grad_scaler'")
            dtype_name = torch_amp.get("dtype")
            if "grad_scaler" in torch_amp:
                grad_scaler = torch_amp["grad_scaler"]
        else:
            raise ConfigError(f"torch_amp must be 'bfloat16', 'float16' or a dict {{'dtype': ...}}, got {torch_amp!r}")
        if isinstance(dtype_name, str):
            if dtype_name not in _AMP_DTYPES:
                raise ConfigError(f"torch_amp dtype {dtype_name!r} is not one of {sorted(_AMP_DTYPES)}")
            dtype = _AMP_DTYPES[dtype_name]
        elif dtype_name is None or dtype_name in (torch.float16, torch.bfloat16):
            dtype = dtype_name
        else:
            raise ConfigError(f"torch_amp dtype {dtype_name!r} is not one of {sorted(_AMP_DTYPES)}")
        if grad_scaler is _Unset:
            grad_scaler = {}
        if grad_scaler is not None and not isinstance(grad_scaler, Mapping):
            raise ConfigError(
                f"grad_scaler must be a dict of torch.amp.GradScaler options or None, got {grad_scaler!r}"
            )
        return cls(dtype=dtype, grad_scaler=None if grad_scaler is None else dict(grad_scaler))


def _as_amp(amp: AmpSettings | str | Mapping[str, Any] | None) -> AmpSettings | None:
    return amp if isinstance(amp, AmpSettings) or amp is None else AmpSettings.from_config(amp)


def amp_context(amp: AmpSettings | str | Mapping[str, Any] | None, device_type: str) -> ContextManager:
    """``torch.autocast`` for the forward pass and loss (RETURNN wraps the whole step function), or a no-op.

    :param amp: :class:`AmpSettings`, or the config's ``torch_amp`` value
    :param device_type: ``"cuda"`` or ``"cpu"``

    >>> with amp_context("bfloat16", "cpu"):
    ...     y = torch.nn.Linear(2, 2)(torch.ones(1, 2))
    >>> y.dtype
    torch.bfloat16
    """
    amp = _as_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=amp.dtype) if device_type != "cpu" else _cpu_autocast(amp.dtype)


@contextlib.contextmanager
def _cpu_autocast(dtype: torch.dtype):
    """CPU autocast; a CPU whose oneDNN lacks an op in ``dtype`` (seen: LSTM on an AMD EPYC VM) is a
    ConfigError naming ``torch_amp``, not a traceback from inside torch."""
    try:
        with torch.autocast(device_type="cpu", dtype=dtype):
            yield
    except RuntimeError as exc:
        if "could not create a primitive" not in str(exc):
            raise
        raise ConfigError(f"torch_amp {str(dtype).replace('torch.', '')}: this CPU cannot run the model in it"
                          f" (oneDNN: {str(exc).split('.')[0]}); remove torch_amp for CPU runs") from None


def make_grad_scaler(amp: AmpSettings | str | Mapping[str, Any] | None, device_type: str) -> Any:
    """The GradScaler for ``amp`` on ``device_type``, or None.

    Only on CUDA: RETURNN makes a ``torch.cuda.amp.GradScaler``, which is inactive without CUDA.

    >>> make_grad_scaler("float16", "cpu") is None
    True
    """
    amp = _as_amp(amp)
    if amp is None or amp.grad_scaler is None or device_type != "cuda":
        return None
    return torch.amp.GradScaler("cuda", **amp.grad_scaler)
