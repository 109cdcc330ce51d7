"""Accumulating the losses of an epoch into RETURNN's scores, over steps and over ranks.

A step yields :class:`~returnn_ray.model.losses.LossValue` objects (a sum over frames and the
frame count). An epoch's score is ``Σ sum / Σ frames`` over all steps of all ranks, as
RETURNN accumulates it; the sums stay on the device during the epoch (no host sync per
step) and are all-reduced once at its end.
"""

from __future__ import annotations

from typing import Mapping

import torch

from returnn_ray.model.losses import LossValue, learning_rate_file_keys


class ScoreAccumulator:
    """``Σ sum`` and ``Σ frames`` per loss name over the steps of one epoch on one rank."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._frames: dict[str, torch.Tensor] = {}
        self.num_steps = 0

    def add(self, losses: Mapping[str, LossValue], *, weight: float = 1.0) -> None:
        """Add one step's losses; ``weight`` 0 for a padding step (an empty batch)."""
        for name, loss in losses.items():
            s = loss.sum.detach().double() * weight
            f = torch.as_tensor(loss.num_frames, device=s.device).detach().double() * weight
            if name in self._sums:
                self._sums[name] += s
                self._frames[name] += f
            else:
                self._sums[name], self._frames[name] = s, f
        self.num_steps += 1

    def reduce(self, names: list[str] | None = None) -> dict[str, float]:
        """``name -> Σ sum / Σ frames`` over all ranks (all ranks must call this, with the same names).

        ``names`` fixes the order of the all-reduce; a rank that saw no step of some loss
        contributes zeros for it.
        """
        totals = self.totals(names)
        return {n: (s / f if f else float("nan")) for n, (s, f) in totals.items()}

    def totals(self, names: list[str] | None = None) -> dict[str, tuple[float, float]]:
        """``name -> (Σ sum, Σ frames)`` over all ranks (a collective, as :meth:`reduce`)."""
        names = sorted(self._sums) if names is None else names
        if not names:
            return {}
        device = next(iter(self._sums.values())).device if self._sums else torch.device("cpu")
        zero = torch.zeros((), dtype=torch.float64, device=device)
        stacked = torch.stack(
            [torch.stack([self._sums.get(n, zero), self._frames.get(n, zero)]) for n in names]
        ).to(device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
        return {n: (s, f) for n, (s, f) in zip(names, stacked.cpu().tolist())}

    def restore(self, totals: Mapping[str, tuple[float, float]], device: torch.device | str = "cpu") -> None:
        """Start from :meth:`totals` saved mid-epoch (on one rank only: the others start at zero)."""
        for name, (s, f) in totals.items():
            self._sums[name] = torch.tensor(float(s), dtype=torch.float64, device=device)
            self._frames[name] = torch.tensor(float(f), dtype=torch.float64, device=device)

    def names(self) -> list[str]:
        return sorted(self._sums)

    def local_mean(self, name: str) -> float | None:
        """This rank's running ``Σ sum / Σ frames`` of ``name`` so far (no collective; for progress display)."""
        if name not in self._sums:
            return None
        frames = float(self._frames[name])
        return float(self._sums[name]) / frames if frames else None


def score_keys(dataset_name: str, scores: Mapping[str, float]) -> dict[str, float]:
    """Scores under the keys RETURNN's learning_rate_file uses (``dev_score``, ``train_loss_ce``, ...).

    >>> score_keys("dev", {"cost:output": 0.5, "error:output": 0.25})
    {'dev_score': 0.5, 'dev_error': 0.25}
    """
    keys = learning_rate_file_keys(dataset_name, list(scores))
    return {keys[name]: value for name, value in scores.items()}


def objective(losses: Mapping[str, LossValue], *, scale: float = 1.0) -> torch.Tensor:
    """The gradient objective of one step on one rank: ``scale × Σ loss_scale·sum`` over non-error losses.

    RETURNN's objective (``RunCtx.total_loss``) is the *sum* over frames, or with
    ``use_normalized_loss`` the mean over this step's frames on this rank (``get_mean_loss``:
    the local count, as one worker accumulating batches divides each by its own). ``scale`` is
    :meth:`~returnn_ray.training.reduction.Reduction.loss_scale`: how the ranks combine.
    """
    terms = []
    for loss in losses.values():
        if loss.as_error or loss.scale == 0.0:
            continue
        term = loss.sum
        if getattr(loss, "use_normalized_loss", False):
            frames = torch.as_tensor(loss.num_frames, device=term.device).to(term.dtype)
            term = term / frames.clamp(min=1)
        terms.append(loss.scale * term.reshape(()))
    if not terms:
        raise ValueError("no loss to optimise")
    return scale * torch.stack(terms).sum()
