"""Losses of a network dict (``ce``, ``ctc``, ``mse``) and how they are reported, RETURNN TF style.

Every loss is reported like RETURNN's TF engine does it: a *sum* over frames (what the
gradient uses, times ``scale``) and the number of frames it was summed over (what the
reported value is divided by: ``sum / num_frames``, accumulated per epoch as
``Σ sum / Σ num_frames``). The number of frames is the summed *target* length, as in
RETURNN's ``Loss.init`` (``loss_norm_factor = 1 / sum(target_seq_lens)``); for ``ce``/``mse``
that equals the output length, for ``ctc`` it is the number of labels.

Names, as RETURNN TF names them (``TFEngine.Runner``): the loss of layer ``output`` is
``cost:output``, its error ``error:output``. RETURNN TF computes an error for every loss: the
frame error rate (``ce``, ``mse``: argmax vs target) or the label error rate (``ctc``:
greedy-decoding edit distance / number of target labels). In the learning-rate file these
become ``dev_score`` / ``dev_error`` when the network has a single loss, else
``dev_score_<layer>`` / ``dev_error_<layer>``: see :func:`learning_rate_file_keys`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
import torch.nn.functional as F

from returnn_ray.errors import DataError

__all__ = [
    "LossValue",
    "ce_sums",
    "ctc_greedy_decode",
    "ctc_sums",
    "edit_distance",
    "learning_rate_file_keys",
    "mse_sums",
    "seq_mask",
]


@dataclasses.dataclass
class LossValue:
    """One reported loss of a step: ``sum`` over ``num_frames`` frames.

    The objective is ``Σ scale * sum`` over the losses with ``as_error=False`` (plus the L2
    term, :meth:`Network.l2_loss`); every loss is reported as ``sum / num_frames``.
    """

    name: str
    """Report name, e.g. ``cost:output`` or ``error:output`` (see the module docstring)."""
    sum: torch.Tensor
    """Scalar float tensor: the loss summed over frames (and seqs), not yet scaled."""
    num_frames: torch.Tensor
    """Scalar int tensor: the number of frames ``sum`` is over (the summed target lengths)."""
    scale: float = 1.0
    """``loss_scale`` of the layer: the gradient uses ``scale * sum``; the report is unscaled."""
    as_error: bool = False
    """An error measure: reported, never optimised."""


def learning_rate_file_keys(dataset_name: str, loss_names: Iterable[str]) -> dict[str, str]:
    """The keys under which ``learning_rate_file`` stores each loss, as RETURNN writes them.

    RETURNN TF (``LearningRateControl.set_epoch_error``) stores ``{"dev_score": {"cost:output": x}}``
    as ``dev_score`` when there is one loss, else one ``dev_score_<layer>`` per loss; the same for
    errors. Other names (from torch-style configs: ``ce``, ``fer``) get the torch engine's
    ``<dataset>_loss_<name>``.

    >>> learning_rate_file_keys("dev", ["cost:output", "error:output"])
    {'cost:output': 'dev_score', 'error:output': 'dev_error'}
    >>> learning_rate_file_keys("dev", ["cost:ctc", "error:ctc", "cost:output", "error:output"])
    {'cost:ctc': 'dev_score_ctc', 'error:ctc': 'dev_error_ctc', 'cost:output': 'dev_score_output', 'error:output': 'dev_error_output'}
    >>> learning_rate_file_keys("train", ["ce", "fer"])
    {'ce': 'train_loss_ce', 'fer': 'train_loss_fer'}
    """
    names = list(loss_names)
    groups = {"cost:": "score", "error:": "error"}
    out = {}
    for name in names:
        prefix = next((p for p in groups if name.startswith(p)), None)
        if prefix is None:
            out[name] = f"{dataset_name}_loss_{name}"
            continue
        group_size = sum(n.startswith(prefix) for n in names)
        key = f"{dataset_name}_{groups[prefix]}"
        out[name] = key if group_size == 1 else f"{key}_{name[len(prefix):]}"
    return out


def seq_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` bool: True on the real frames of each seq.

    >>> seq_mask(torch.tensor([2, 0, 3]), 3).int().tolist()
    [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    """
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def _log_probs(scores: torch.Tensor, scores_are_logits: bool) -> torch.Tensor:
    if scores_are_logits:
        return F.log_softmax(scores.float(), dim=-1)
    # Probability-space output (a layer without a softmax activation): RETURNN's safe_log.
    scores = scores.float()
    return torch.log(scores.clamp_min(torch.finfo(scores.dtype).tiny))


def ce_sums(
    scores: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    scores_are_logits: bool,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-wise cross entropy and frame errors, each summed over the frames in ``mask``.

    :param scores: ``[B, T, C]`` logits (``scores_are_logits``) or probabilities
    :param target: ``[B, T]`` class indices (sparse) or ``[B, T, C]`` soft targets (dense)
    :param mask: ``[B, T]`` bool, the real frames
    :param label_smoothing: RETURNN's: the target class gets ``1 - ls``, every other ``ls / (C - 1)``,
        and the best achievable value is subtracted

    >>> logits = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    >>> loss, err = ce_sums(logits, torch.tensor([[0, 1]]), torch.tensor([[True, False]]), scores_are_logits=True)
    >>> round(loss.item(), 4), err.item()  # only frame 0 counts: -log(1/2)
    (0.6931, 0)
    """
    num_classes = scores.shape[-1]
    if target.dim() == scores.dim() - 1:  # sparse
        tgt = target.long().masked_fill(~mask, 0)  # padding may hold anything; keep it a valid index
        if scores_are_logits and not label_smoothing:
            per_frame = F.cross_entropy(scores.float().flatten(0, -2), tgt.flatten(), reduction="none")
            per_frame = per_frame.view(tgt.shape)
        else:
            log_probs = _log_probs(scores, scores_are_logits)
            target_lp = log_probs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            per_frame = -target_lp
            if label_smoothing:
                conf = 1.0 - label_smoothing
                low = label_smoothing / (num_classes - 1)
                others = log_probs.sum(-1) - target_lp
                per_frame = -(conf * target_lp + low * others)
                # RETURNN subtracts the best achievable value, so a perfect model scores 0.
                best = -(conf * math.log(conf) + (num_classes - 1) * low * math.log(low + 1e-20))
                per_frame = per_frame - best
        wrong = scores.argmax(-1) != tgt
    else:  # dense soft targets
        per_frame = -(target.float() * _log_probs(scores, scores_are_logits)).sum(-1)
        wrong = scores.argmax(-1) != target.argmax(-1)
    return (per_frame * mask).sum(), (wrong & mask).sum()


def mse_sums(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RETURNN's ``mse``: per frame the mean over features of ``(output - target)²``, summed over frames.

    A sparse target is compared as one-hot. The error is RETURNN's default frame error
    (argmax of output vs argmax/index of target).

    >>> out = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    >>> loss, err = mse_sums(out, torch.tensor([[[0.0, 1.0], [9.0, 9.0]]]), torch.tensor([[True, False]]))
    >>> loss.item(), err.item()  # ((1-0)² + (3-1)²) / 2
    (2.5, 0)
    """
    if target.dim() == output.dim() - 1:
        tgt_index = target.long().masked_fill(~mask, 0)
        tgt = F.one_hot(tgt_index, output.shape[-1]).to(output.dtype)
    else:
        tgt = target.to(output.dtype)
        tgt_index = tgt.argmax(-1)
    per_frame = ((output.float() - tgt.float()) ** 2).mean(-1)
    wrong = output.argmax(-1) != tgt_index
    return (per_frame * mask).sum(), (wrong & mask).sum()


def ctc_greedy_decode(log_probs: torch.Tensor, lens: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks (``tf.nn.ctc_greedy_decoder``).

    Runs batched on the tensors' device (no host sync). Returns labels ``[B, T]`` (valid up to
    the returned lengths) and the lengths ``[B]``.

    >>> lp = torch.log(torch.eye(3)[[0, 0, 2, 0, 1, 1, 2]]).unsqueeze(0)  # a a _ a b b _
    >>> hyp, n = ctc_greedy_decode(lp, torch.tensor([7]), blank=2)
    >>> hyp[0, : n[0]].tolist()
    [0, 0, 1]
    """
    best = log_probs.argmax(-1)  # [B, T]
    batch, time = best.shape
    prev = torch.cat([torch.full_like(best[:, :1], -1), best[:, :-1]], dim=1)
    keep = (best != blank) & (best != prev) & seq_mask(lens, time)
    hyp_lens = keep.sum(1)
    pos = torch.where(keep, keep.cumsum(1) - 1, torch.full_like(best, time))  # dropped frames go to a spare column
    hyp = torch.full((batch, time + 1), -1, dtype=best.dtype, device=best.device)
    hyp.scatter_(1, pos, best)
    return hyp[:, :time], hyp_lens


def edit_distance(hyp: torch.Tensor, hyp_lens: torch.Tensor, ref: torch.Tensor, ref_lens: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance per seq, batched on the tensors' device.

    One DP row per reference position over all hypothesis positions at once; the insertion
    chain within a row is resolved with a running minimum (``cummin(row - j) + j``).

    >>> edit_distance(torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0]]), torch.tensor([3, 1]),
    ...               torch.tensor([[1, 3, 0], [5, 6, 7]]), torch.tensor([2, 3])).tolist()
    [1, 2]
    """
    batch, hyp_time = hyp.shape
    j = torch.arange(hyp_time + 1, device=hyp.device)
    row = j.expand(batch, hyp_time + 1).clone()  # distance from the empty reference
    hyp_idx = hyp_lens.long().clamp(max=hyp_time).unsqueeze(1)
    result = torch.where(ref_lens == 0, hyp_lens.long(), torch.zeros_like(hyp_lens, dtype=torch.long))
    for i in range(1, ref.shape[1] + 1):
        cost = (hyp != ref[:, i - 1 : i]).long()  # [B, H]
        new = row + 1  # deletion of ref[i-1]
        new[:, 1:] = torch.minimum(new[:, 1:], row[:, :-1] + cost)  # substitution / match
        new[:, 0] = i
        row = torch.cummin(new - j, dim=1).values + j  # insertions of hyp labels
        result = torch.where(ref_lens == i, row.gather(1, hyp_idx).squeeze(1), result)
    return result


def ctc_sums(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    target: torch.Tensor,
    target_lens: torch.Tensor,
    *,
    blank: int,
    layer: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC loss summed over seqs, and the summed edit distance of greedy decoding to the target.

    :param log_probs: ``[B, T, C]`` log probabilities (or logits: normalised here)
    :param lens: ``[B]`` output lengths
    :param target: ``[B, S]`` labels, ``target_lens`` ``[B]``
    :param blank: the blank index, RETURNN's convention is the last one (``C - 1``)
    :param layer: for the error message when a seq is too short for its labels

    RETURNN TF's error uses beam search (width 100) when not training; we always decode
    greedily (RETURNN's training-time error), which can only give a higher error.
    """
    target = target.long()
    s_max = int(target.shape[1])
    tmask = seq_mask(target_lens, s_max)
    # CTC needs one frame per label plus one blank between repeated labels; RETURNN TF stops
    # with "Not enough time for target transition sequence" here, torch would return inf.
    repeats = ((target[:, 1:] == target[:, :-1]) & tmask[:, 1:]).sum(1) if s_max > 1 else torch.zeros_like(target_lens)
    need = target_lens.to(repeats.device) + repeats
    too_short = lens.to(need.device) < need
    if bool(too_short.any()):
        b = int(too_short.nonzero()[0, 0])
        raise DataError(
            f"network layer {layer!r}: ctc loss: seq {b} of the batch has {int(lens[b])} output frames but needs "
            f"at least {int(need[b])} for its {int(target_lens[b])} target labels; shorten the targets or "
            f"downsample the time axis less"
        )
    log_probs = F.log_softmax(log_probs.float(), dim=-1)
    loss = F.ctc_loss(
        log_probs.transpose(0, 1),
        target.masked_fill(~tmask, 0),
        lens.long(),
        target_lens.long(),
        blank=blank,
        reduction="sum",
        zero_infinity=False,
    )
    with torch.no_grad():
        hyp, hyp_lens = ctc_greedy_decode(log_probs, lens.to(log_probs.device), blank)
        errors = edit_distance(hyp, hyp_lens, target.to(hyp.device), target_lens.to(hyp.device)).sum()
    return loss, errors
