"""One batch through a loaded model: the outputs forward writes, or the beams search writes.

The model is built by :func:`returnn_ray.model.build.build_model`, as for training; this module
only runs it.

Both ways RETURNN users write models are served:
- a ``network`` dict: forward writes the ``output`` layer (softmax probabilities for a softmax
  layer, as RETURNN's TF backend dumps them); search runs CTC beam search on an ``output``
  layer with a ``ctc`` loss (blank = the last label, or ``ctc_blank_index``);
- RETURNN's torch engine style (:mod:`returnn_ray.model.torch_engine`): ``forward_step(*, model,
  extern_data, **kwargs)`` marks outputs on RETURNN's run context (``mark_as_default_output`` is ``output``); ``search_step(*, model, extern_data,
  beam_size, **kwargs)`` returns, per seq, ``[(score, labels), ...]`` best first.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from returnn.tensor import Dim, TensorDict
from returnn.torch.data.extern_data import get_batch_dim_from_extern_data

from returnn_ray.config import Settings
from returnn_ray.data.base import DataSpec
from returnn_ray.data.ray_data import Batch
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.model import torch_engine
from returnn_ray.model.build import check_model
from returnn_ray.search import ctc_beam_search

Outputs = dict[str, tuple[np.ndarray, np.ndarray]]
"""Output name -> (padded values ``[B, T, ...]``, seq lengths ``[B]``)."""

Beam = list[tuple[float, tuple[int, ...]]]
"""One seq's hypotheses: ``(log score, label ids)``, best first."""


def check_inference_model(settings: Settings, *, search: bool) -> None:
    """What the model must define for forward/search (:func:`returnn_ray.model.build.check_model`);
    checked before Ray starts."""
    check_model(settings, task="search" if search else "forward")


def check_ctc_output(settings: Settings, model: torch.nn.Module) -> None:
    """A network dict searched without ``search_step`` needs a CTC output layer."""
    if settings.training.network is None:
        return
    loss = model.loss_specs.get(model.output_layer_name)
    if loss is None or loss.kind != "ctc":
        raise ConfigError(
            "search with a network dict needs an `output` layer with loss 'ctc' (CTC beam search);"
            " for other models define search_step(*, model, extern_data, beam_size, **kwargs)"
        )


def forward_outputs(
    settings: Settings, specs: Mapping[str, DataSpec], model, batch: Batch, *, epoch: int, seq_tags: Sequence[str]
) -> Outputs:
    """The outputs of one batch, as numpy on the CPU."""
    if settings.training.network is not None:
        out = model(batch.data, batch.lens)[model.output_layer_name]
        return {"output": (out.value.detach().cpu().numpy(), out.lens.cpu().numpy().astype(np.int32))}
    marked, _ = forward_marked(settings, specs, model, batch, epoch=epoch, seq_tags=seq_tags)
    return {name: _per_seq_axis(name, tensor, batch.num_seqs) for name, tensor in marked.data.items()}


def forward_marked(
    settings: Settings, specs: Mapping[str, DataSpec], model, batch: Batch, *, epoch: int, seq_tags: Sequence[str]
) -> tuple[TensorDict, Dim]:
    """What a torch-style ``forward_step`` marked for one batch (``extern_data`` with the seqs' tags,
    as RETURNN's), and the batch dim."""
    expected = torch_engine.expected_outputs(settings.forward.model_outputs)
    if expected is not None:
        expected.reset_content()  # before extern_data fills the sizes of dims the outputs may share
    data = torch_engine.extern_data(
        torch_engine.extern_data_template(settings.data.extern_data, specs), batch, seq_tags=seq_tags,
        with_eval_targets=False,
    )
    with torch.no_grad():
        outputs = torch_engine.run_forward_step(
            settings.training.forward_step, model, data, epoch=epoch, step=0, expected_outputs=expected
        )
    if not outputs.data:
        raise UserError("forward_step marked no output: call rf.get_run_ctx().mark_as_default_output(tensor)")
    return outputs, get_batch_dim_from_extern_data(data)


def _per_seq_axis(name: str, tensor: Any, num_seqs: int) -> tuple[np.ndarray, np.ndarray]:
    """``[B, T, ...]`` values and their lengths; an output without a time axis cannot go to HDF per frame."""
    raw = tensor.raw_tensor.detach()
    time_dim = tensor.dims[1] if raw.dim() >= 2 else None
    if time_dim is None or time_dim.dyn_size_ext is None or time_dim.dyn_size_ext.raw_tensor is None:
        # Padded frames must not reach the HDF: only a dynamic time axis with lengths says which are real.
        raise UserError(
            f"model output {name!r} has shape {tuple(raw.shape)} and no time axis with seq lengths: forward"
            f" writes a sequence per seq; declare model_outputs = {{{name!r}: {{'dim': ...}}}} and set"
            f" rf.get_run_ctx().expected_outputs[{name!r}].dims[1].dyn_size_ext.raw_tensor = <lengths [B]>"
        )
    lens = torch.as_tensor(time_dim.dyn_size_ext.raw_tensor).cpu().numpy().astype(np.int32)
    if raw.dtype in (torch.bfloat16, torch.float16):
        raw = raw.float()
    return raw.cpu().numpy(), lens


def search_beams(
    settings: Settings, specs: Mapping[str, DataSpec], model, batch: Batch, *, epoch: int, beam_size: int,
    seq_tags: Sequence[str],
) -> list[Beam]:
    """Per seq of the batch, its hypotheses best first (at most ``beam_size``)."""
    if settings.training.network is None:
        data = torch_engine.extern_data(
            torch_engine.extern_data_template(settings.data.extern_data, specs), batch, seq_tags=seq_tags,
            with_eval_targets=False,
        )
        result = torch_engine.call_user(
            settings.training.search_step, model=torch_engine.orig_model(model), extern_data=data,
            beam_size=beam_size, epoch=epoch,
        )
        return _checked_beams(result, batch.num_seqs)

    out = model(batch.data, batch.lens)[model.output_layer_name]
    logits = out.logits if out.logits is not None else out.value  # a linear output layer gives logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
    blank = settings.forward.ctc_blank_index
    blank = log_probs.shape[-1] - 1 if blank is None else blank
    beams = []
    for b, length in enumerate(out.lens.tolist()):
        hyps = ctc_beam_search(log_probs[b, :length], beam_size=beam_size, blank=blank)
        beams.append([(h.score, h.labels) for h in hyps])
    return beams


def _checked_beams(result: Any, num_seqs: int) -> list[Beam]:
    what = "search_step must return, per seq of the batch, a list [(score, labels), ...] best first"
    if not isinstance(result, (list, tuple)) or len(result) != num_seqs:
        raise UserError(f"{what}; got {type(result).__name__} for {num_seqs} seqs")
    beams = []
    for hyps in result:
        try:
            beams.append([(float(score), tuple(int(x) for x in np.asarray(labels).reshape(-1))) for score, labels in hyps])
        except (TypeError, ValueError) as exc:
            raise UserError(f"{what}; got {hyps!r:.80}") from exc
    return beams
