"""A RETURNN network dict (TF-layers style) as one ``torch.nn.Module``.

:func:`build_network` checks the whole dict up front (before any worker starts), so a typo
is one clear ``ConfigError`` naming the layer, not a stack trace on a remote worker.

Like RETURNN TF, only the layers that matter are built: ``output``, every layer with a
``loss``, every ``is_output_layer``, and what they read from. Others are checked, then
dropped (they would get no gradient, which DDP refuses). Parameter names are
``layers.<layer name>.<torch name>``, e.g. ``layers.lstm0_fw.lstm.weight_ih_l0``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import torch
from torch import nn

from returnn_ray.data.base import DataSpec
from returnn_ray.errors import ConfigError, DataError
from returnn_ray.model.layers import LAYER_CLASSES, Layer, LayerOutput, OutSpec, did_you_mean, layer_error
from returnn_ray.model.time_layers import TIME_LAYER_CLASSES
from returnn_ray.model.losses import LossValue, ce_sums, ctc_sums, mse_sums, seq_mask

__all__ = ["LossSpec", "Network", "build_network"]

OUTPUT_LAYER = "output"
CLASSES: dict[str, type[Layer]] = {**LAYER_CLASSES, **TIME_LAYER_CLASSES}
"""Every layer class a network dict may name."""

# Keys every layer class takes.
_COMMON_KEYS = frozenset(
    {"class", "from", "n_out", "loss", "target", "loss_scale", "loss_opts", "L2", "is_output_layer", "trainable"}
)
# TF-only keys that change nothing in PyTorch; accepted and ignored so TF configs run as they are.
_IGNORED_TF_KEYS = frozenset(
    {
        "collocate_with",  # TF device placement hint
        "name_scope",  # TF variable scope; our parameter names come from the layer name
        "loss_only_on_non_search",  # network dicts here are never run inside a TF search
    }
)
# use_fused: TF's fused softmax + cross-entropy kernel; the same maths (our ce always uses the logits).
_LOSS_OPTS = {
    "ce": frozenset({"label_smoothing", "use_fused"}), "ctc": frozenset({"output_in_log_space"}), "mse": frozenset()
}


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The loss of one layer, checked against ``extern_data``."""

    kind: str
    """``ce``, ``ctc`` or ``mse``."""
    target: str
    """The data key of the target (``classes`` by default)."""
    scale: float = 1.0
    """``loss_scale``: the gradient uses ``scale * sum``."""
    label_smoothing: float = 0.0
    """``ce`` ``loss_opts``: RETURNN's label smoothing."""
    output_in_log_space: bool = False
    """``ctc`` ``loss_opts``: the layer outputs log probabilities (else probabilities or logits)."""


def _sources(name: str, opts: dict, network: Mapping, extern_data: Mapping[str, DataSpec]) -> list[str]:
    """The layer's ``from`` as a list of layer names and ``data:<key>`` entries, each checked."""
    src = opts.get("from", ["data"])
    if isinstance(src, str):
        src = [src]
    if not isinstance(src, (list, tuple)) or not all(isinstance(s, str) for s in src):
        raise layer_error(name, f"'from' must be a layer name or a list of them, got {src!r}")
    if not src:
        raise layer_error(name, "'from' is empty; name at least one layer or 'data'")
    out = []
    for s in src:
        if s == "data" or s.startswith("data:"):
            key = "data" if s == "data" else s[len("data:") :]
            if key not in extern_data:
                what = "defaults to 'data'" if "from" not in opts else f"names {s!r}"
                hint = did_you_mean(key, extern_data)
                raise layer_error(
                    name,
                    f"'from' {what}, but extern_data has no key {key!r}{hint} "
                    f"(it has: {', '.join(extern_data) or 'nothing'})",
                )
            out.append(f"data:{key}")
        elif s in network:
            out.append(s)
        else:
            known = [*network, *(f"data:{k}" for k in extern_data)]
            raise layer_error(name, f"'from' names unknown layer {s!r}{did_you_mean(s, known)}")
    return out


def _topological_order(sources: Mapping[str, list[str]]) -> list[str]:
    """Layers so that each comes after what it reads from; a cycle is a ConfigError naming it."""
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            raise layer_error(name, f"'from' forms a cycle: {' -> '.join(cycle)}; a layer cannot read its own output")
        state[name] = "visiting"
        for src in sources[name]:
            if not src.startswith("data:"):
                visit(src, path + [name])
        state[name] = "done"
        order.append(name)

    for name in sources:
        visit(name, [])
    return order


def _loss_spec(name: str, opts: dict, extern_data: Mapping[str, DataSpec]) -> LossSpec | None:
    kind = opts.get("loss")
    if kind is None:
        for key in ("loss_scale", "loss_opts"):
            if key in opts:
                raise layer_error(name, f"{key!r} is set but the layer has no 'loss'")
        return None
    if kind not in _LOSS_OPTS:
        hint = did_you_mean(kind, _LOSS_OPTS)
        raise layer_error(name, f"unknown loss {kind!r}{hint}; supported: {', '.join(_LOSS_OPTS)}")
    target = opts.get("target", "classes")
    if target not in extern_data:
        raise layer_error(
            name,
            f"loss {kind!r} needs target {target!r}, which extern_data does not have "
            f"(it has: {', '.join(extern_data) or 'nothing'}); set 'target' or add it to extern_data",
        )
    if kind == "ctc" and not extern_data[target].sparse:
        raise layer_error(name, f"loss 'ctc' needs a sparse target (label indices), but {target!r} is dense")
    scale = opts.get("loss_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise layer_error(name, f"'loss_scale' must be a number, got {scale!r}")
    loss_opts = opts.get("loss_opts") or {}
    if not isinstance(loss_opts, dict):
        raise layer_error(name, f"'loss_opts' must be a dict, got {loss_opts!r}")
    for key in loss_opts:
        if key not in _LOSS_OPTS[kind]:
            allowed = ", ".join(sorted(_LOSS_OPTS[kind])) or "none"
            hint = did_you_mean(key, _LOSS_OPTS[kind])
            raise layer_error(
                name,
                f"unsupported loss_opts key {key!r} for loss {kind!r}{hint} "
                f"(supported: {allowed})",
            )
    ls = loss_opts.get("label_smoothing", 0.0)
    if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0.0 <= ls < 1.0:
        raise layer_error(name, f"loss_opts label_smoothing must be a number in [0, 1), got {ls!r}")
    if not isinstance(loss_opts.get("use_fused", True), bool):
        raise layer_error(name, f"loss_opts use_fused must be True or False, got {loss_opts['use_fused']!r}")
    log_space = loss_opts.get("output_in_log_space", False)
    if not isinstance(log_space, bool):
        raise layer_error(name, f"loss_opts output_in_log_space must be True or False, got {log_space!r}")
    return LossSpec(kind, target, float(scale), float(ls), log_space)


def _expected_n_out(loss: LossSpec, extern_data: Mapping[str, DataSpec]) -> int:
    # RETURNN's Loss.get_auto_output_layer_dim: CTC adds one class, the blank (the last index).
    dim = extern_data[loss.target].dim
    return dim + 1 if loss.kind == "ctc" else dim


def _layer_class(name: str, opts) -> type[Layer]:
    if not isinstance(opts, dict):
        raise layer_error(name, f"must be a dict like {{'class': 'linear', ...}}, got {type(opts).__name__}")
    cls = opts.get("class")
    if cls is None:
        raise layer_error(name, "has no 'class'")
    if cls not in CLASSES:
        hint = did_you_mean(cls, CLASSES)
        raise layer_error(name, f"unknown class {cls!r}{hint}; supported: {', '.join(CLASSES)}")
    layer_cls = CLASSES[cls]
    allowed = _COMMON_KEYS | _IGNORED_TF_KEYS | layer_cls.extra_keys
    for key in opts:
        if key not in allowed:
            raise layer_error(
                name,
                f"unknown key {key!r} for class {cls!r}{did_you_mean(key, allowed)}; "
                f"it takes: {', '.join(sorted(_COMMON_KEYS | layer_cls.extra_keys))}",
            )
    return layer_cls


def _make_layer(cls, name: str, opts: dict, in_specs: list, n_out: int | None) -> "Layer":
    """The layer's module; torch's "can't allocate memory" (beyond :func:`_check_size`'s estimate)
    as one line naming the layer."""
    try:
        return cls(name, opts, in_specs, n_out)
    except (RuntimeError, MemoryError) as exc:
        if "alloc" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        raise layer_error(name, f"cannot allocate its parameters (n_out {n_out}): {str(exc).splitlines()[0]}")


def _l2_and_flags(name: str, opts: dict) -> float:
    """The layer's ``L2`` scale (0: none), after checking it and ``is_output_layer``/``trainable``."""
    l2_scale = opts.get("L2") or 0
    if isinstance(l2_scale, bool) or not isinstance(l2_scale, (int, float)) or l2_scale < 0:
        raise layer_error(name, f"'L2' must be a number >= 0, got {l2_scale!r}")
    for key in ("is_output_layer", "trainable"):
        if key in opts and not isinstance(opts[key], bool):
            raise layer_error(name, f"{key!r} must be True or False, got {opts[key]!r}")
    return float(l2_scale)


def _add_links(network: Mapping[str, dict], classes: Mapping[str, type[Layer]], sources: dict[str, list[str]]):
    """Appends to ``sources`` what each layer reads besides ``from`` (``time_unchunking``: the
    chunking layer's input); returns the options each layer takes from those links."""
    own_sources = dict(sources)
    link_opts: dict[str, dict] = {}
    for name, opts in network.items():
        linked, link_opts[name] = classes[name].links(name, opts, network, own_sources)
        sources[name] = sources[name] + linked
    return link_opts


def build_network(network: Mapping[str, dict], extern_data: Mapping[str, DataSpec]) -> Network:
    """Check the network dict against ``extern_data`` and build it as a :class:`Network`.

    >>> specs = {"data": DataSpec(4), "classes": DataSpec(3, sparse=True, dtype="int32")}
    >>> net = build_network({"output": {"class": "softmax", "loss": "ce"}}, specs)
    >>> net.out_spec("output").dim, sum(p.numel() for p in net.parameters())  # 4*3 + 3
    (3, 15)
    >>> build_network({"output": {"class": "softmx", "loss": "ce"}}, specs)
    Traceback (most recent call last):
    ...
    returnn_ray.errors.ConfigError: network layer 'output': unknown class 'softmx' (did you mean 'softmax'?); supported: linear, hidden, forward, softmax, rec, copy, dropout, activation, combine, conv, pool, time_chunking, time_unchunking
    """
    _check_layer_names(network)
    classes = {name: _layer_class(name, opts) for name, opts in network.items()}
    sources = {name: _sources(name, opts, network, extern_data) for name, opts in network.items()}
    link_opts = _add_links(network, classes, sources)
    order = _topological_order(sources)

    specs: dict[str, OutSpec] = {
        f"data:{key}": OutSpec(spec.dim, spec.sparse, (key,)) for key, spec in extern_data.items()
    }
    modules: dict[str, Layer] = {}
    losses: dict[str, LossSpec] = {}
    l2: dict[str, float] = {}
    params = 0  # estimated parameters of the layers so far
    for name in order:
        opts = network[name]
        loss = _loss_spec(name, opts, extern_data)
        n_out = opts.get("n_out")
        if n_out is not None and (isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1):
            raise layer_error(name, f"'n_out' must be a positive int, got {n_out!r}")
        if loss is not None:
            want = _expected_n_out(loss, extern_data)
            if n_out is None and classes[name].own_n_out:
                n_out = want
        params += _check_size(name, classes[name], opts, sum(specs[s].dim for s in sources[name]), n_out, params)
        module = _make_layer(classes[name], name, {**opts, **link_opts[name]}, [specs[s] for s in sources[name]], n_out)
        out = module.out
        if loss is not None:
            if out.sparse:
                raise layer_error(name, f"loss {loss.kind!r} needs a dense output, but this layer outputs class ids")
            if out.dim != want:
                blank = f" ({loss.kind} needs target dim + 1 for the blank)" if loss.kind == "ctc" else ""
                raise layer_error(
                    name,
                    f"output dim {out.dim} does not match target {loss.target!r} dim "
                    f"{extern_data[loss.target].dim} for loss {loss.kind!r}: want {want}{blank}"
                    + (f"; set n_out {want}" if opts.get("n_out") is not None else ""),
                )
            losses[name] = loss
        l2[name] = _l2_and_flags(name, opts)  # 0: none (left out of the Network below)
        if opts.get("trainable", True) is False:
            module.requires_grad_(False)
        specs[name] = out
        modules[name] = module

    # Like RETURNN TF, build only what output, losses and is_output_layer need.
    needed: set[str] = set()
    stack = [n for n in network if n == OUTPUT_LAYER or n in losses or network[n].get("is_output_layer")]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(s for s in sources[name] if not s.startswith("data:"))
    order = [n for n in order if n in needed]
    return Network(
        {n: modules[n] for n in order},
        {n: sources[n] for n in order},
        {n: specs[n] for n in order},
        {n: losses[n] for n in sorted(losses) if n in needed},
        {n: l2[n] for n in l2 if n in needed and l2[n]},
        dict(extern_data),
    )


def _check_layer_names(network: Mapping[str, dict]) -> None:
    """A non-empty dict of plain layer names (no RETURNN '#' entries) with an ``output`` layer."""
    if not isinstance(network, Mapping) or not network:
        raise ConfigError(f"config key 'network' must be a non-empty dict of layer name -> layer dict, got {network!r}")
    for name in network:
        if isinstance(name, str) and name.startswith("#"):
            raise ConfigError(
                f"network key {name!r}: RETURNN's '#' entries of a network dict (TensorFlow network construction "
                "and pretraining: '#config', '#repetition', ...) are not supported; remove it"
            )
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"network layer name {name!r} must be a non-empty string without '.'")
    if OUTPUT_LAYER not in network:
        raise ConfigError(f"network has no {OUTPUT_LAYER!r} layer{did_you_mean(OUTPUT_LAYER, network)}; "
                          f"name the final layer 'output' (layers: {', '.join(network)})")


def _check_size(name: str, cls: type[Layer], opts: dict, in_dim: int, n_out: int | None, before: int) -> int:
    """The layer's parameter count (an upper estimate from its dims), checked before torch
    allocates it: a network whose float32 parameters exceed this machine's memory is refused,
    naming the layer, instead of an allocation failure (or the OOM killer) in every worker."""
    if n_out is None or not cls.own_n_out:
        return 0
    if issubclass(cls, LAYER_CLASSES["rec"]):
        count = 4 * (in_dim + n_out + 2) * n_out  # LSTM: 4 gates (GRU 3, RNN 1)
    elif issubclass(cls, LAYER_CLASSES["conv"]):
        size = opts.get("filter_size")
        size = size[0] if isinstance(size, (list, tuple)) and size else size
        count = (in_dim * (size if isinstance(size, int) and size > 0 else 1) + 1) * n_out
    else:
        count = (in_dim + 1) * n_out
    limit = memory_bytes()
    if (before + count) * 4 > limit:
        raise layer_error(
            name,
            f"n_out {n_out} (input dim {in_dim}) makes about {count:.3g} parameters ({_bytes_text(count * 4)} as"
            f" float32), {'with the layers before it ' if before else ''}more than this machine's memory"
            f" ({_bytes_text(limit)}); make the layer smaller",
        )
    return count


def memory_bytes() -> int:
    """This machine's physical memory in bytes (the bound of :func:`build_network`'s size check)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no estimate, no check
        return 1 << 62


def _bytes_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} TB"


class _LayerDict(nn.Module):
    """Holds the layers under their own names (a ``ModuleDict`` would refuse names like ``update``)."""

    def __init__(self, layers: Mapping[str, Layer]):
        super().__init__()
        for name, layer in layers.items():
            self._modules[name] = layer

    def __getitem__(self, name: str) -> Layer:
        return self._modules[name]  # type: ignore[return-value]


class Network(nn.Module):
    """A built network dict: :meth:`forward` gives every layer's output, :meth:`losses` its losses.

    Attributes:
      layers: the layer modules by name (parameter names ``layers.<name>.<param>``)
      order: layer names in computation order
      sources: layer name -> what it reads (layer names, ``data:<key>``)
      loss_specs: layer name -> :class:`LossSpec`, sorted by layer name (as RETURNN TF)
      l2: layer name -> ``L2`` scale
      extern_data: the data keys the network was built for
    """

    output_layer_name = OUTPUT_LAYER

    def __init__(self, layers, sources, specs, loss_specs, l2, extern_data):
        super().__init__()
        self.layers = _LayerDict(layers)
        self.order: list[str] = list(layers)
        self.sources: dict[str, list[str]] = sources
        self._specs: dict[str, OutSpec] = specs
        self.loss_specs: dict[str, LossSpec] = loss_specs
        self.l2: dict[str, float] = l2
        self.extern_data: dict[str, DataSpec] = extern_data

    @property
    def input_keys(self) -> list[str]:
        """The data keys :meth:`forward` reads, in ``extern_data`` order."""
        used = {s[len("data:") :] for srcs in self.sources.values() for s in srcs if s.startswith("data:")}
        return [k for k in self.extern_data if k in used]

    @property
    def target_keys(self) -> list[str]:
        """The data keys :meth:`losses` reads as targets."""
        return sorted({spec.target for spec in self.loss_specs.values()})

    def out_spec(self, name: str = OUTPUT_LAYER) -> OutSpec:
        """Dim, sparsity and time axis of a layer's output (e.g. to write ``output`` to HDF)."""
        return self._specs[name]

    def forward(self, data: Mapping[str, torch.Tensor], lens: Mapping[str, torch.Tensor]) -> dict[str, LayerOutput]:
        """Every layer's output, batch-major ``[B, T, F]`` with seq lengths; unpack as ``value, lens``.

        :param data: data key -> padded ``[B, T, dim]`` (dense) or ``[B, T]`` (sparse) tensor
        :param lens: data key -> ``[B]`` seq lengths
        """
        values: dict[str, LayerOutput] = {}
        for key in self.input_keys:
            if key not in data or key not in lens:
                raise DataError(f"network input {key!r} is missing from the batch (it has: {', '.join(data)})")
            x = data[key]
            values[f"data:{key}"] = LayerOutput(x.long() if self.extern_data[key].sparse else x, lens[key])
        for name in self.order:
            values[name] = self.layers[name]([values[s] for s in self.sources[name]])
        return {name: values[name] for name in self.order}

    def losses(
        self,
        outputs: Mapping[str, LayerOutput],
        data: Mapping[str, torch.Tensor],
        lens: Mapping[str, torch.Tensor],
    ) -> dict[str, LossValue]:
        """The loss and the error of every layer with a ``loss``: ``cost:<layer>`` and ``error:<layer>``.

        See :mod:`returnn_ray.model.losses` for the naming and what is summed.
        """
        result: dict[str, LossValue] = {}
        for name, spec in self.loss_specs.items():
            out = outputs[name]
            if spec.target not in data or spec.target not in lens:
                raise DataError(f"network layer {name!r}: loss target {spec.target!r} is missing from the batch "
                                f"(it has: {', '.join(data)})")
            target, target_lens = data[spec.target], lens[spec.target]
            if spec.kind == "ctc":
                scores = out.logits
                if scores is None:  # outputs in probability space unless the config says log space
                    scores = out.value if spec.output_in_log_space else _safe_log(out.value)
                loss, err = ctc_sums(scores, out.lens, target, target_lens, blank=out.value.shape[-1] - 1, layer=name)
            else:
                # Frame-wise: the target must have the output's frames, seq by seq.
                if bool((target_lens.to(out.lens.device) != out.lens).any()):
                    raise DataError(
                        f"network layer {name!r}: loss {spec.kind!r} is frame-wise, but target {spec.target!r} "
                        f"lengths {target_lens.tolist()} differ from the output lengths {out.lens.tolist()}; "
                        f"the target must be aligned to the output frames"
                    )
                # Equal lengths: both hold every real frame, whatever padding each was given.
                t = min(target.shape[1], out.value.shape[1])
                target, out = target[:, :t], LayerOutput(out.value[:, :t], out.lens, _crop(out.logits, t))
                mask = seq_mask(out.lens, out.value.shape[1])
                if spec.kind == "ce":
                    scores = out.logits if out.logits is not None else out.value
                    loss, err = ce_sums(scores, target, mask, scores_are_logits=out.logits is not None,
                                        label_smoothing=spec.label_smoothing)
                else:
                    loss, err = mse_sums(out.value, target, mask)
            frames = target_lens.sum()
            result[f"cost:{name}"] = LossValue(f"cost:{name}", loss, frames, scale=spec.scale)
            result[f"error:{name}"] = LossValue(f"error:{name}", err.float(), frames, as_error=True)
        return result

    def l2_loss(self) -> torch.Tensor:
        """``Σ L2 * Σ‖p‖²`` over the layers with ``L2``, for the objective.

        RETURNN TF adds ``L2 * 2 * tf.nn.l2_loss(p)`` (the same) for every parameter of the layer,
        biases included. It is not part of any reported loss.
        """
        total = None
        for name, scale in self.l2.items():
            for p in self.layers[name].parameters():
                term = scale * p.pow(2).sum()
                total = term if total is None else total + term
        if total is None:
            device = next((p.device for p in self.parameters()), None)
            return torch.zeros((), device=device)
        return total


def _crop(x: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    return None if x is None else x[:, :frames]


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))

