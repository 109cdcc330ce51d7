"""The layer classes of a network dict, rebuilt as PyTorch modules.

Each class takes the layer's config dict (already checked for unknown keys by
:func:`returnn_ray.model.network.build_network`), the :class:`OutSpec` of its sources and the
resolved ``n_out``; it checks its options, creates its parameters and sets ``self.out``.
At run time it maps the sources' :class:`LayerOutput` to its own.

Conventions (as RETURNN's TF layers):
- Values are batch-major ``[B, T, F]``; a sparse value is ``[B, T]`` int64 class indices.
- Several sources are concatenated on the feature axis; ``dropout`` applies to that
  concatenated input, in training only (``_ConcatInputLayer``), with one mask per feature shared
  over batch and time unless ``dropout_noise_shape`` / ``dropout_axis`` say otherwise
  (:func:`dropout_noise_axes`).
- A sparse source of ``linear``/``softmax`` is an embedding lookup (a row of the weight
  matrix); ``rec`` and ``conv`` read it as one-hot.
- ``linear`` and ``conv`` weights start as ``glorot_uniform`` with zero bias (RETURNN's
  defaults); recurrent units keep PyTorch's initialisation.
- Padding frames never leak into real frames: ``rec`` with ``direction: -1`` reverses each seq
  within its own length, ``conv`` zeroes the padding before convolving, and outputs of both
  are zero on padding frames.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch.utils._pytree
from torch import nn

from returnn_ray.errors import ConfigError, DataError
from returnn_ray.model.dropout import DROPOUT_KEYS, apply_dropout, dropout_noise_axes
from returnn_ray.model.losses import seq_mask

__all__ = ["LAYER_CLASSES", "RNN_UNITS", "Layer", "LayerOutput", "OutSpec", "activation_function"]


@dataclasses.dataclass(frozen=True)
class OutSpec:
    """What a layer (or a data key) outputs, known when the network is built."""

    dim: int
    """Feature dim (dense) or number of classes (sparse)."""
    sparse: bool = False
    """Class indices ``[B, T]`` instead of features ``[B, T, dim]``."""
    time: tuple[str, ...] = ("data",)
    """Which time axis the frames are on: the data key, then each ``conv`` layer that changed it."""

    def describe_time(self) -> str:
        desc = f"data:{self.time[0]}"
        return desc + "".join(f" after conv {name!r}" for name in self.time[1:])


@dataclasses.dataclass
class LayerOutput:
    """A layer's output at run time: ``value`` and its seq lengths; unpacks as ``value, lens``."""

    value: torch.Tensor
    """``[B, T, F]`` float, or ``[B, T]`` int64 for a sparse output."""
    lens: torch.Tensor
    """``[B]`` seq lengths (frames beyond are padding)."""
    logits: torch.Tensor | None = None
    """The input of the softmax when the layer's activation is ``softmax``: losses use it for stability."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.value, self.lens))


# DDP looks for the tensors in a forward's output with torch's pytree (find_unused_parameters,
# static_graph): let it see inside LayerOutput.
torch.utils._pytree.register_pytree_node(
    LayerOutput,
    lambda out: ([out.value, out.lens, out.logits], None),
    lambda children, _: LayerOutput(*children),
    serialized_type_name="returnn_ray.model.layers.LayerOutput",
)


def layer_error(layer: str, msg: str) -> ConfigError:
    """A one-line ConfigError naming the network layer."""
    return ConfigError(f"network layer {layer!r}: {msg}")


def did_you_mean(name, known) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


# RETURNN's get_activation_function takes any tf / tf.nn function name; these are the usual ones.
# Plain functions, not lambdas: a built network must pickle.
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "swish": F.silu,
    "silu": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "relu6": F.relu6,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "square": torch.square,
    "sqrt": torch.sqrt,
    "negative": torch.neg,
    "neg": torch.neg,
}


def activation_function(name: str | None, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation named ``name`` (``None``, ``"none"``, ``"identity"``: no activation).

    >>> activation_function("tanh", "h1") is torch.tanh
    True
    >>> activation_function("rleu", "h1")
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: network layer 'h1': unknown activation 'rleu' (did you mean 'relu'?); known: abs, elu, exp, gelu, identity, log, log_softmax, neg, negative, none, relu, relu6, selu, sigmoid, silu, softmax, softplus, softsign, sqrt, square, swish, tanh
    """
    if name is None or name in ("none", "identity"):
        return None
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        known = sorted([*_ACTIVATIONS, "none", "identity"])
        raise layer_error(layer, f"unknown activation {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    return _ACTIVATIONS[name]


def _check_number(layer: str, key: str, value, *, low: float, high: float | None = None, high_open=False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        rng = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
        raise layer_error(layer, f"{key!r} must be a number {rng}, got {value!r}")
    return float(value)


def _check_bool(layer: str, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise layer_error(layer, f"{key!r} must be True or False, got {value!r}")
    return value


def _one_int(layer: str, key: str, value, default: int | None = None) -> int:
    """A 1-D conv option: an int or a sequence of one int."""
    if value is None and default is not None:
        return default
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise layer_error(
            layer, f"{key!r} must be a positive int or a tuple of one (only 1-D conv over time), got {value!r}"
        )
    return value


def _mask_padding(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return x * seq_mask(lens, x.shape[1]).unsqueeze(-1).to(x.dtype)


def reverse_padded(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse each seq of ``x`` ``[B, T, ...]`` within its length; padding frames stay in place.

    >>> reverse_padded(torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]]), torch.tensor([3, 4])).tolist()
    [[3, 2, 1, 0], [7, 6, 5, 4]]
    """
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    lens = lens.to(x.device)[:, None]
    idx = torch.where(t < lens, lens - 1 - t, t)  # [B, T]
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class Layer(nn.Module):
    """Base class. Subclasses set ``extra_keys`` (options beyond the common ones) and ``out``."""

    extra_keys: frozenset[str] = frozenset()
    concat_input = True
    """Sources are concatenated on the feature axis (and ``dropout`` is allowed)."""
    accepts_sparse = False
    """A sparse source is allowed (else a build-time ConfigError)."""
    own_n_out = False
    """``n_out`` is free (else it is the input's dim); a layer with a loss takes it from the target."""

    out: OutSpec

    @classmethod
    def links(cls, name: str, opts: dict, network: Mapping[str, dict], sources: Mapping[str, list[str]]):
        """What this layer reads besides ``from``: ``(sources appended to its own, options added to
        its opts)``, taken from other layers' dicts and checked ``sources`` (``time_unchunking``)."""
        return [], {}

    def __init__(self, name: str, opts: dict, sources: Sequence[OutSpec], n_out: int | None):
        super().__init__()
        self.layer_name = name
        self.dropout = 0.0
        if self.concat_input:
            self.dropout = _check_number(name, "dropout", opts.get("dropout", 0.0), low=0.0, high=1.0, high_open=True)
            self.dropout_noise = dropout_noise_axes(name, opts)
        if any(s.sparse for s in sources):
            if not self.accepts_sparse:
                raise layer_error(
                    name,
                    f"class {opts['class']!r} cannot take a sparse input (class indices); "
                    f"put a 'linear' layer (an embedding) in between",
                )
            if len(sources) > 1:
                raise layer_error(name, "cannot concatenate a sparse input (class indices) with other inputs")
            if self.dropout:
                raise layer_error(
                    name,
                    "'dropout' on a sparse input (class indices) is not possible; "
                    "put it on a layer after the embedding",
                )
        self.in_dim = sum(s.dim for s in sources)
        self.in_sparse = any(s.sparse for s in sources)
        self.time, self._check_lens = self._merge_time(sources)

    def _merge_time(self, sources: Sequence[OutSpec]) -> tuple[tuple[str, ...], bool]:
        """The sources' common time axis; whether their lengths must be compared at run time."""
        first = sources[0].time
        for src in sources[1:]:
            if src.time != first and src.time[0] == first[0]:
                # Same data key, but a conv changed the frame rate of one of them: never equal.
                raise layer_error(
                    self.layer_name,
                    f"inputs are on different time axes ({sources[0].describe_time()} "
                    f"vs {src.describe_time()}); they cannot be combined frame by frame",
                )
        # Different data keys (e.g. data and an aligned second input) may have equal lengths.
        return first, any(src.time != first for src in sources)

    def _same_lens(self, sources: Sequence[LayerOutput]) -> None:
        if self._check_lens:
            for src in sources[1:]:
                if src.value.shape[1] != sources[0].value.shape[1] or bool((src.lens != sources[0].lens).any()):
                    raise DataError(f"network layer {self.layer_name!r}: its inputs have different seq lengths "
                                    f"in this batch; they must be frame-aligned")

    def concat(self, sources: Sequence[LayerOutput]) -> LayerOutput:
        """The sources concatenated on the feature axis, with input dropout in training."""
        if len(sources) == 1:
            x, lens = sources[0]
        else:
            self._same_lens(sources)
            x, lens = torch.cat([s.value for s in sources], dim=-1), sources[0].lens
        if self.dropout and self.training:
            x = apply_dropout(x, self.dropout, self.dropout_noise)
        return LayerOutput(x, lens)

    def one_hot_input(self, sources: Sequence[LayerOutput]) -> LayerOutput:
        x, lens = self.concat(sources)
        if self.in_sparse:
            x = F.one_hot(x.long(), self.in_dim).float()
        return LayerOutput(x, lens)

    def set_activation(self, name: str | None) -> None:
        self.activation_name = name
        self.activation = activation_function(name, self.layer_name)

    def activate(self, y: torch.Tensor, lens: torch.Tensor) -> LayerOutput:
        """Apply the layer's ``activation``; a softmax keeps its input as ``logits`` for the losses."""
        if self.activation_name == "softmax":
            return LayerOutput(torch.softmax(y, dim=-1), lens, logits=y)
        return LayerOutput(self.activation(y) if self.activation else y, lens)

    def forward(self, sources: Sequence[LayerOutput]) -> LayerOutput:
        raise NotImplementedError


def _needs_n_out(layer: str, cls: str, n_out: int | None) -> int:
    if n_out is None:
        raise layer_error(layer, f"class {cls!r} needs 'n_out' (or a 'loss', which takes it from the target)")
    return n_out


def _same_dim(layer: str, n_out: int | None, dim: int, why: str) -> int:
    if n_out is not None and n_out != dim:
        raise layer_error(layer, f"n_out {n_out} does not match its output dim {dim} ({why})")
    return dim


class Linear(Layer):
    """``linear`` (``hidden``, ``forward``): ``activation(x W + b)``; a sparse input is an embedding."""

    extra_keys = frozenset({"activation", "with_bias"}) | DROPOUT_KEYS
    accepts_sparse = True
    own_n_out = True
    default_activation: str | None = None

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        n_out = _needs_n_out(name, opts["class"], n_out)
        self.set_activation(opts.get("activation", self.default_activation))
        with_bias = _check_bool(name, "with_bias", opts.get("with_bias", True))
        self.linear = nn.Linear(self.in_dim, n_out, bias=with_bias)
        nn.init.xavier_uniform_(self.linear.weight)
        if with_bias:
            nn.init.zeros_(self.linear.bias)
        self.out = OutSpec(n_out, False, self.time)

    def forward(self, sources):
        x, lens = self.concat(sources)
        if self.in_sparse:
            y = F.embedding(x.long(), self.linear.weight.t())
            if self.linear.bias is not None:
                y = y + self.linear.bias
        else:
            y = self.linear(x)
        return self.activate(y, lens)


class Softmax(Linear):
    """``softmax``: a linear layer with softmax output; losses use its logits."""

    extra_keys = frozenset({"with_bias"}) | DROPOUT_KEYS
    default_activation = "softmax"


# RETURNN unit names (lower case) -> torch module. RETURNN's "lstm" is NativeLstm; all
# LSTM variants compute the same function up to the bias parametrisation (see Rec).
RNN_UNITS: dict[str, type[nn.RNNBase]] = {
    **dict.fromkeys(
        ["lstm", "nativelstm", "nativelstm2", "nativelstmlowmem", "standardlstm", "basiclstm", "lstmblock",
         "lstmblockfused", "cudnnlstm"],
        nn.LSTM,
    ),
    **dict.fromkeys(["gru", "grublock", "cudnngru"], nn.GRU),
    **dict.fromkeys(["rnn", "basicrnn"], nn.RNN),
}
# TF's BasicLSTMCell / LSTMCell add 1.0 to the forget gate; we start its bias there instead.
_DEFAULT_FORGET_BIAS = {"basiclstm": 1.0, "standardlstm": 1.0}


class Rec(Layer):
    """``rec``: one recurrent layer over time, forward (``direction: 1``) or backward (``-1``).

    Parameters are PyTorch's (``lstm.weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``): an LSTM n_in -> n has ``4 * (n_in*n + n*n + 2*n)`` parameters, i.e. ``4*n``
    more than RETURNN's NativeLstm (one bias vector); GRU likewise has two bias vectors.
    """

    # unroll, max_seq_len: how TF builds the loop (a static unroll up to max_seq_len frames);
    # the function is the same, so they only keep RETURNN's limit (see forward).
    extra_keys = frozenset({"unit", "direction", "unit_opts", "unroll", "max_seq_len"}) | DROPOUT_KEYS
    accepts_sparse = True
    own_n_out = True

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        unit = opts.get("unit", "lstm")
        if isinstance(unit, dict):  # checked first: such a layer has no n_out of its own
            raise layer_error(
                name,
                "a 'unit' dict (a subnetwork of layers run frame by frame, RETURNN's TensorFlow RecLayer) is not "
                "supported; use a built-in unit ('lstm', 'gru', 'rnn', ...) or a torch config (get_model/train_step)",
            )
        n_out = _needs_n_out(name, "rec", n_out)
        key = unit.lower() if isinstance(unit, str) else unit
        if not isinstance(key, str) or key not in RNN_UNITS:
            known = ", ".join(sorted(RNN_UNITS))
            raise layer_error(name, f"unknown rec unit {unit!r}{did_you_mean(key, RNN_UNITS)}; known: {known}")
        direction = opts.get("direction", 1)
        if direction not in (1, -1, None):
            raise layer_error(name, f"'direction' must be 1 (forward) or -1 (backward), got {direction!r}")
        self.backward_direction = direction == -1
        self.unroll_limit = _unroll_limit(name, opts)
        rnn_cls = RNN_UNITS[key]
        unit_opts = opts.get("unit_opts") or {}
        supported = {"forget_bias"} if rnn_cls is nn.LSTM else set()
        if not isinstance(unit_opts, dict) or set(unit_opts) - supported:
            raise layer_error(
                name,
                f"unsupported unit_opts {unit_opts!r} for unit {unit!r} "
                f"(supported: {sorted(supported) or 'none'})",
            )
        forget_bias = unit_opts.get("forget_bias", _DEFAULT_FORGET_BIAS.get(key, 0.0))
        _check_number(name, "unit_opts forget_bias", forget_bias, low=-math.inf)
        self.kind = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[rnn_cls]
        # Named by kind so parameter names read e.g. layers.lstm0_fw.lstm.weight_ih_l0.
        setattr(self, self.kind, rnn_cls(self.in_dim, n_out, batch_first=True))
        if rnn_cls is nn.LSTM and forget_bias:
            with torch.no_grad():  # gate order i, f, g, o
                self.lstm.bias_ih_l0[n_out : 2 * n_out].fill_(float(forget_bias))
                self.lstm.bias_hh_l0[n_out : 2 * n_out].zero_()
        self.out = OutSpec(n_out, False, self.time)

    def forward(self, sources):
        x, lens = self.one_hot_input(sources)
        if self.unroll_limit is not None and x.shape[1] and int(lens.max()) > self.unroll_limit:
            raise DataError(
                f"network layer {self.layer_name!r}: 'unroll' with 'max_seq_len' {self.unroll_limit} got a seq of "
                f"{int(lens.max())} frames; RETURNN requires max_seq_len >= seq len there too: raise max_seq_len"
            )
        if self.backward_direction:
            # Reversing within each length puts the real frames first, so they never see padding.
            x = reverse_padded(x, lens)
        y, _ = getattr(self, self.kind)(x)
        if self.backward_direction:
            y = reverse_padded(y, lens)
        return LayerOutput(_mask_padding(y, lens), lens)


def _unroll_limit(name: str, opts: dict) -> int | None:
    """``max_seq_len`` when ``unroll`` is on (RETURNN then fails on longer seqs), else None."""
    unroll = _check_bool(name, "unroll", opts.get("unroll", False))
    limit = opts.get("max_seq_len")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise layer_error(name, f"'max_seq_len' must be a positive int here (no expression strings), got {limit!r}")
    if unroll and limit is None:
        raise layer_error(name, "'unroll' needs 'max_seq_len' (as in RETURNN)")
    return limit if unroll else None


class Copy(Layer):
    """``copy`` / ``dropout``: the (concatenated) input as is (``dropout`` only in training)."""

    extra_keys = DROPOUT_KEYS
    accepts_sparse = True

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        self.out = OutSpec(_same_dim(name, n_out, self.in_dim, "copy keeps the input dim"), self.in_sparse, self.time)

    def forward(self, sources):
        return self.concat(sources)


class Activation(Layer):
    """``activation``: an element-wise function of the (concatenated) input."""

    extra_keys = frozenset({"activation"}) | DROPOUT_KEYS

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        if "activation" not in opts:
            raise layer_error(name, "class 'activation' needs 'activation' (e.g. 'relu')")
        self.set_activation(opts["activation"])
        self.out = OutSpec(_same_dim(name, n_out, self.in_dim, "activation keeps the input dim"), False, self.time)

    def forward(self, sources):
        return self.activate(*self.concat(sources))


_COMBINE_KINDS: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {
    "add": lambda xs: torch.stack(xs).sum(0),
    "sub": lambda xs: xs[0] - xs[1],
    "mul": lambda xs: torch.stack(xs).prod(0),
    "truediv": lambda xs: xs[0] / xs[1],
    "average": lambda xs: torch.stack(xs).mean(0),
    "maximum": lambda xs: torch.stack(xs).amax(0),
    "minimum": lambda xs: torch.stack(xs).amin(0),
}


class Combine(Layer):
    """``combine``: element-wise ``kind`` (add, sub, mul, ...) of inputs of the same dim."""

    extra_keys = frozenset({"kind", "activation"})
    concat_input = False

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        kind = opts.get("kind")
        if kind not in _COMBINE_KINDS:
            raise layer_error(
                name,
                f"combine 'kind' must be one of {', '.join(_COMBINE_KINDS)}, got {kind!r}"
                f"{did_you_mean(kind, _COMBINE_KINDS) if isinstance(kind, str) else ''}",
            )
        if kind in ("sub", "truediv") and len(sources) != 2:
            raise layer_error(name, f"combine kind {kind!r} needs exactly 2 inputs in 'from', got {len(sources)}")
        dims = [s.dim for s in sources]
        if len(set(dims)) > 1:
            raise layer_error(name, f"combine needs inputs of the same dim, got dims {dims}")
        self.kind = kind
        self.set_activation(opts.get("activation"))
        self.out = OutSpec(_same_dim(name, n_out, dims[0], "combine keeps the input dim"), False, self.time)

    def forward(self, sources):
        self._same_lens(sources)
        return self.activate(_COMBINE_KINDS[self.kind]([s.value for s in sources]), sources[0].lens)


class Conv(Layer):
    """``conv``: 1-D convolution over time, ``padding`` ``same`` or ``valid``, with ``strides``.

    Output lengths per seq: ``same``: ``ceil(T / s)``; ``valid``: ``ceil((T - d*(f-1)) / s)``
    (RETURNN's ``ConvLayer.calc_out_dim``). ``same`` pads ``d*(f-1)`` frames in total, half
    (rounded down) on the left: TF's split for stride 1. For strides > 1, TF's split depends on
    the padded batch length; ours does not, so a seq gives the same outputs in any batch.
    """

    extra_keys = frozenset({"filter_size", "padding", "strides", "dilation_rate", "activation", "with_bias"}) | DROPOUT_KEYS
    accepts_sparse = True
    own_n_out = True

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        n_out = _needs_n_out(name, "conv", n_out)
        if "filter_size" not in opts or "padding" not in opts:
            raise layer_error(name, "class 'conv' needs 'filter_size' (e.g. (3,)) and 'padding' ('same' or 'valid')")
        self.filter_size = _one_int(name, "filter_size", opts["filter_size"])
        self.stride = _one_int(name, "strides", opts.get("strides"), default=1)
        self.dilation = _one_int(name, "dilation_rate", opts.get("dilation_rate"), default=1)
        padding = opts["padding"]
        self.padding = padding.lower() if isinstance(padding, str) else padding
        if self.padding not in ("same", "valid"):
            raise layer_error(name, f"conv 'padding' must be 'same' or 'valid', got {padding!r}")
        self.set_activation(opts.get("activation"))
        with_bias = _check_bool(name, "with_bias", opts.get("with_bias", True))
        self.conv = nn.Conv1d(self.in_dim, n_out, self.filter_size, stride=self.stride, dilation=self.dilation,
                              bias=with_bias)
        nn.init.xavier_uniform_(self.conv.weight)
        if with_bias:
            nn.init.zeros_(self.conv.bias)
        keeps_time = self.padding == "same" and self.stride == 1
        self.out = OutSpec(n_out, False, self.time if keeps_time else (*self.time, name))

    def out_lens(self, lens: torch.Tensor) -> torch.Tensor:
        """Seq lengths after this conv.

        With padding ``valid``, a seq shorter than the filter gets length 0.
        """
        span = self.dilation * (self.filter_size - 1)
        n = lens if self.padding == "same" else (lens - span).clamp(min=0)
        return torch.div(n + self.stride - 1, self.stride, rounding_mode="floor")

    def forward(self, sources):
        x, lens = self.one_hot_input(sources)
        x = _mask_padding(x, lens).transpose(1, 2)  # [B, F, T]; zero padding = what the seq alone sees
        span = self.dilation * (self.filter_size - 1)
        if self.padding == "same":
            x = F.pad(x, (span // 2, span - span // 2))
        elif x.shape[-1] <= span:  # every seq is shorter than the filter: all get length 0
            x = F.pad(x, (0, span + 1 - x.shape[-1]))
        y_lens = self.out_lens(lens)
        out = self.activate(self.conv(x).transpose(1, 2), y_lens)
        out.value = _mask_padding(out.value, y_lens)
        return out


LAYER_CLASSES: dict[str, type[Layer]] = {
    "linear": Linear,
    "hidden": Linear,
    "forward": Linear,
    "softmax": Softmax,
    "rec": Rec,
    "copy": Copy,
    "dropout": Copy,
    "activation": Activation,
    "combine": Combine,
    "conv": Conv,
}
