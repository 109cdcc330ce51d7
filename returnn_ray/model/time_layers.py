"""Network-dict layers that change the time axis: ``pool``, ``time_chunking``, ``time_unchunking``.

- ``pool`` (RETURNN's ``PoolLayer``, 1-D over time): ``mode`` ``max``/``avg``, ``pool_size``,
  ``padding`` ``valid`` (RETURNN's default) or ``same``, ``strides`` (default: ``pool_size``),
  ``dilation_rate``. Lengths as RETURNN's ``ConvLayer.calc_out_dim``. Each seq is pooled as
  RETURNN pools it in a batch of its own: frames beyond its length count as TF's padding (left out
  of a max and of an average's count), and ``same`` splits the padding from the seq's own length.
  (RETURNN in a padded batch lets the batch's padding frames into the windows at a seq's end.)
- ``time_chunking`` (``TimeChunkingLayer``, RETURNN's native ``chunk`` op): windows of
  ``chunk_size`` frames every ``chunk_step`` frames, each a seq of its own: the batch of ``B``
  seqs becomes ``B * n_chunks`` chunks, seq ``b``'s chunk ``c`` at ``b * n_chunks + c``, where
  ``n_chunks = max(T - chunk_size + chunk_step - 1, 0) // chunk_step + 1`` for the batch's longest
  seq ``T``; a chunk's length is its frames within the seq (0 for chunks past a short seq's end).
- ``time_unchunking`` (``TimeUnChunkingLayer``, the native ``unchunk`` op): back to ``[B, T]``
  given ``chunking_layer``; a frame covered by several chunks is their mean.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from returnn_ray.model.dropout import DROPOUT_KEYS
from returnn_ray.model.layers import Layer, LayerOutput, OutSpec, layer_error
from returnn_ray.model.losses import seq_mask

__all__ = ["Pool", "TimeChunking", "TimeUnchunking", "TIME_LAYER_CLASSES", "chunk_starts", "pool_out_lens"]


def _positive_int(layer: str, key: str, value, *, one_of_seq: bool = False) -> int:
    if one_of_seq and isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        what = "a positive int or a tuple of one (1-D pooling over time)" if one_of_seq else "a positive int"
        raise layer_error(layer, f"{key!r} must be {what}, got {value!r}")
    return value


def pool_out_lens(lens: torch.Tensor, size: int, stride: int, dilation: int, padding: str) -> torch.Tensor:
    """Seq lengths after pooling (RETURNN's ``ConvLayer.calc_out_dim``): ``same``: ``ceil(T/s)``;
    ``valid``: ``ceil(max(T - d*(f-1), 0) / s)``."""
    n = lens if padding == "same" else (lens - dilation * (size - 1)).clamp(min=0)
    return torch.div(n + stride - 1, stride, rounding_mode="floor")


class Pool(Layer):
    """``pool``: max or average over windows of time (see the module docstring)."""

    extra_keys = frozenset({"mode", "pool_size", "padding", "strides", "dilation_rate"}) | DROPOUT_KEYS

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        mode = opts.get("mode")
        self.mode = mode.lower() if isinstance(mode, str) else mode
        if self.mode not in ("max", "avg"):
            raise layer_error(name, f"pool 'mode' must be 'max' or 'avg', got {mode!r}")
        if "pool_size" not in opts:
            raise layer_error(name, "class 'pool' needs 'pool_size' (e.g. (2,))")
        self.size = _positive_int(name, "pool_size", opts["pool_size"], one_of_seq=True)
        strides = opts.get("strides")
        self.stride = self.size if strides is None else _positive_int(name, "strides", strides, one_of_seq=True)
        self.dilation = _positive_int(name, "dilation_rate", opts.get("dilation_rate", 1), one_of_seq=True)
        if self.dilation > 1 and self.stride > 1:
            raise layer_error(name, "'dilation_rate' > 1 with 'strides' > 1 is refused by TF's pool; set one of them to 1")
        padding = opts.get("padding", "valid")
        self.padding = padding.lower() if isinstance(padding, str) else padding
        if self.padding not in ("same", "valid"):
            raise layer_error(name, f"pool 'padding' must be 'same' or 'valid' here, got {padding!r}")
        if self.in_sparse:
            raise layer_error(name, "class 'pool' needs a dense input, not class indices")
        dim = self.in_dim
        if n_out is not None and n_out != dim:
            raise layer_error(name, f"n_out {n_out} does not match its output dim {dim} (pool keeps the input dim)")
        keeps_time = self.size == 1 and self.stride == 1
        self.out = OutSpec(dim, False, self.time if keeps_time else (*self.time, name))

    def forward(self, sources):
        x, lens = self.concat(sources)
        lens = lens.to(x.device)
        out_lens = pool_out_lens(lens, self.size, self.stride, self.dilation, self.padding)
        t_out = int(out_lens.max()) if out_lens.numel() else 0
        span = self.dilation * (self.size - 1)
        if self.padding == "same":  # TF: total (out-1)*s + span + 1 - T, the smaller half on the left
            left = ((out_lens - 1) * self.stride + span + 1 - lens).clamp(min=0) // 2
        else:
            left = torch.zeros_like(lens)
        i = torch.arange(t_out, device=x.device)
        k = torch.arange(self.size, device=x.device) * self.dilation
        pos = i[None, :, None] * self.stride - left[:, None, None] + k[None, None, :]  # [B, T', f]
        valid = (pos >= 0) & (pos < lens[:, None, None])
        if x.shape[1] == 0:
            x = x.new_zeros(x.shape[0], 1, x.shape[2])
        idx = pos.clamp(0, x.shape[1] - 1)
        win = x.gather(1, idx.reshape(x.shape[0], -1, 1).expand(-1, -1, x.shape[2]))
        win = win.view(x.shape[0], t_out, self.size, x.shape[2])
        mask = valid.unsqueeze(-1)
        if self.mode == "max":
            y = win.masked_fill(~mask, -math.inf).amax(2)
        else:
            y = (win * mask).sum(2) / valid.sum(2, keepdim=True).clamp(min=1)
        y = torch.where(seq_mask(out_lens, t_out).unsqueeze(-1), y, torch.zeros_like(y))
        return LayerOutput(y, out_lens)


def n_chunks(n_time: int, size: int, step: int) -> int:
    """RETURNN's native ``Chunking``: ``max(T - size + step - 1, 0) // step + 1`` chunks."""
    return max(n_time - size + step - 1, 0) // step + 1


def chunk_starts(n_time: int, size: int, step: int) -> list[int]:
    """First frame of each chunk.

    >>> chunk_starts(5, 4, 2), chunk_starts(1, 50, 10), chunk_starts(61, 50, 10)
    ([0, 2], [0], [0, 10, 20])
    """
    return [c * step for c in range(n_chunks(n_time, size, step))]


def _chunk_frames(lens: torch.Tensor, size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, valid)``: frame index ``[C, size]`` of each chunk position, and ``[B, C, size]`` whether
    it is a frame of the seq."""
    n = n_chunks(int(lens.max()) if lens.numel() else 0, size, step)
    t = torch.arange(n, device=lens.device)[:, None] * step + torch.arange(size, device=lens.device)[None, :]
    return t, t[None] < lens[:, None, None]


class TimeChunking(Layer):
    """``time_chunking``: overlapping windows of time as seqs of their own (see the module docstring)."""

    extra_keys = frozenset({"chunk_size", "chunk_step"}) | DROPOUT_KEYS
    accepts_sparse = True

    def __init__(self, name, opts, sources, n_out):
        super().__init__(name, opts, sources, n_out)
        for key in ("chunk_size", "chunk_step"):
            if key not in opts:
                raise layer_error(name, "class 'time_chunking' needs 'chunk_size' and 'chunk_step'")
        self.size = _positive_int(name, "chunk_size", opts["chunk_size"])
        self.step = _positive_int(name, "chunk_step", opts["chunk_step"])
        if n_out is not None and n_out != self.in_dim:
            raise layer_error(name, f"n_out {n_out} does not match its output dim {self.in_dim} (chunking keeps it)")
        self.out = OutSpec(self.in_dim, self.in_sparse, (*self.time, name))

    def forward(self, sources):
        x, lens = self.concat(sources)
        lens = lens.to(x.device)
        t, valid = _chunk_frames(lens, self.size, self.step)  # [C, S], [B, C, S]
        b, c, s = valid.shape
        flat = t.reshape(-1).clamp(max=max(x.shape[1] - 1, 0))
        if x.shape[1] == 0:
            x = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        chunks = x.index_select(1, flat).reshape(b, c, s, *x.shape[2:])
        keep = valid.view(b, c, s, *([1] * (x.dim() - 2)))
        chunks = torch.where(keep, chunks, torch.zeros_like(chunks))
        return LayerOutput(chunks.reshape(b * c, s, *x.shape[2:]), valid.sum(-1).reshape(b * c).to(lens.dtype))


class TimeUnchunking(Layer):
    """``time_unchunking``: the chunks of ``chunking_layer`` back to one seq each, overlaps averaged.

    Besides its ``from``, it reads the chunking layer's first input (the batch and lengths to
    restore), appended to its sources by :meth:`links`.
    """

    extra_keys = frozenset({"chunking_layer"}) | DROPOUT_KEYS

    @classmethod
    def links(cls, name: str, opts: dict, network: Mapping[str, dict], sources: Mapping[str, list[str]]):
        chunker = opts.get("chunking_layer")
        if not isinstance(chunker, str) or chunker not in network:
            raise layer_error(name, f"class 'time_unchunking' needs 'chunking_layer', a layer name; got {chunker!r}")
        layer = network[chunker]
        if not isinstance(layer, dict) or layer.get("class") != "time_chunking":
            raise layer_error(name, f"'chunking_layer' {chunker!r} is not a 'time_chunking' layer")
        params = {k: layer.get(k) for k in ("chunk_size", "chunk_step")}
        return [sources[chunker][0]], {**params, "chunking_layer": chunker}

    def __init__(self, name, opts, sources, n_out):
        original = sources[-1]  # the chunking layer's input (from links)
        super().__init__(name, opts, sources[:-1], n_out)
        chunker = opts["chunking_layer"]
        if self.time[-1:] != (chunker,):
            raise layer_error(
                name,
                f"its input is on time axis {sources[0].describe_time()}, not the chunks of {chunker!r}; "
                f"unchunk the output of layers that keep {chunker!r}'s chunks",
            )
        self.size, self.step = opts["chunk_size"], opts["chunk_step"]
        if isinstance(self.size, int) and isinstance(self.step, int) and self.step > self.size:
            raise layer_error(name, f"chunk_step {self.step} > chunk_size {self.size} leaves frames in no chunk, "
                              f"which RETURNN's unchunking fails on; use chunk_step <= chunk_size")
        if n_out is not None and n_out != self.in_dim:
            raise layer_error(name, f"n_out {n_out} does not match its output dim {self.in_dim} (unchunking keeps it)")
        self.out = OutSpec(self.in_dim, False, original.time)

    def forward(self, sources):
        *chunked, original = sources
        y, chunk_lens = self.concat(chunked)
        lens = original.lens.to(y.device)
        t, _ = _chunk_frames(lens, self.size, self.step)
        b, (c, s) = lens.shape[0], t.shape
        if y.shape[0] != b * c:
            raise layer_error(self.layer_name, f"got {y.shape[0]} chunks, want {b} seqs x {c} chunks; "
                              f"layers between chunking and unchunking must keep the chunks")
        y = y[:, :s]
        if y.shape[1] < s:
            y = torch.nn.functional.pad(y, (0, 0, 0, s - y.shape[1]))
        valid = seq_mask(chunk_lens.to(y.device), s).view(b, c * s)
        vals = y.reshape(b, c * s, -1) * valid.unsqueeze(-1).to(y.dtype)
        n_time = int(t.max()) + 1
        out = vals.new_zeros(b, n_time, vals.shape[-1]).index_add(1, t.reshape(-1), vals)
        count = vals.new_zeros(b, n_time).index_add(1, t.reshape(-1), valid.to(vals.dtype))
        out = out / count.clamp(min=1).unsqueeze(-1)
        t_max = int(lens.max()) if lens.numel() else 0
        return LayerOutput(out[:, :t_max], original.lens)


TIME_LAYER_CLASSES: dict[str, type[Layer]] = {
    "pool": Pool,
    "time_chunking": TimeChunking,
    "time_unchunking": TimeUnchunking,
}
