"""What the sweep's driver hands every trial: one typed, frozen spec instead of a dict.

It travels in Tune's ``param_space`` as plain data (:meth:`SweepJob.to_tune`: a restored
experiment gives a dataclass there back as a tuple, Ray 2.60), so a restored sweep gets it back,
and reaches :func:`returnn_ray.sweep.trial.run_trial` in each trial actor; the checks before
Ray starts (:mod:`returnn_ray.sweep.checks`) and the sweep dir's manifest read the same spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SweepJob:
    """A sweep's trials: the base command line, where they write, and how they run."""

    files: tuple[str, ...]
    """The base config files (absolute: trials run in other processes)."""
    args: tuple[str, ...]
    """The base ``++key value`` arguments."""
    model: str | None
    """The base config's ``model``: its file name is each trial's, in the trial's directory."""
    sweep_dir: str
    """Where the sweep keeps its trials, Tune's state and the results."""
    metric: str | None
    """``sweep_metric``: the score that ranks the trials (unset: the first dev score)."""
    data_fingerprint: str | None = None
    """The base config's data settings, when its datasets are shared with the trials that have the same."""
    local_trials: bool = False
    """One CPU worker per trial: it trains inside its Tune actor (local mode)."""

    def to_tune(self) -> dict[str, Any]:
        """The job as Tune's ``param_space`` keeps it across a restore: a dict of plain data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_tune(cls, data: Mapping[str, Any]) -> SweepJob:
        """The job again, from :meth:`to_tune`'s dict (its tuples may come back as lists)."""
        return cls(**{**data, "files": tuple(data["files"]), "args": tuple(data["args"])})
