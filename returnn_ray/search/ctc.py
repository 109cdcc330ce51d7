"""CTC decoding of one sequence: greedy (best path) and beam search, in numpy.

Input is ``log_probs`` ``[T, V]``: per frame, natural-log probabilities over the labels, one of
which is the CTC blank. A labelling is what an alignment (one label per frame) collapses to:
repeated labels merged, then blanks dropped, so ``a a _ a`` gives ``a a``.

:func:`ctc_beam_search` keeps, per frame, the best ``beam_size`` hypotheses. Each label prefix
carries two scores, one for alignments that end in blank and one for those that end in the
prefix's last label, because they extend differently: ``a`` after ``..a`` merges into the same
prefix, while ``a`` after ``..a _`` starts a new ``a``.

- ``merge="sum"``: the CTC prefix beam search of Hannun et al. (2014). A prefix scores the sum
  over all its alignments, so the best hypothesis approximates the most probable labelling, and
  equals it when the beam never prunes (``beam_size >= V ** T``).
- ``merge="max"``: the same search with max instead of sum, i.e. a Viterbi beam search over
  alignments. Here a hypothesis is a *state*, (prefix, ended in blank or not), and the beam
  keeps the best ``beam_size`` states, so beam 1 follows exactly the argmax path of
  :func:`ctc_greedy`. A prefix's final score is the best of its two states.

The best path need not give the best labelling: here blank wins each frame (p = 0.36 for
``_ _``), but the three alignments of ``a`` (``a a``, ``a _``, ``_ a``) add up to 0.64.

>>> import numpy as np
>>> log_probs = np.log([[0.4, 0.6], [0.4, 0.6]])  # label 0 = "a", 1 = blank
>>> ctc_greedy(log_probs, blank=1).labels
()
>>> [(h.labels, round(float(np.exp(h.score)), 2)) for h in ctc_beam_search(log_probs, beam_size=4, blank=1)]
[((0,), 0.64), ((), 0.36)]
>>> [(h.labels, round(float(np.exp(h.score)), 2)) for h in ctc_beam_search(log_probs, beam_size=4, blank=1, merge="max")]
[((), 0.36), ((0,), 0.24)]
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

__all__ = ["Hypothesis", "ctc_beam_search", "ctc_greedy"]

Merge = Literal["sum", "max"]
"""How alignments of one labelling combine: ``sum`` (probability of the labelling) or ``max``."""

_COMBINE: dict[str, np.ufunc] = {"sum": np.logaddexp, "max": np.maximum}
"""Log-space sum and max of two scores."""

Beam = dict[tuple[int, ...], tuple[float, float]]
"""Label prefix -> (log p of its alignments that end in blank, of those that end in its last label)."""


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One decoding result."""

    labels: tuple[int, ...]
    """The labelling: label ids, blanks removed and repeats merged."""
    score: float
    """Natural-log probability: of the labelling (``sum``) or of its best alignment (``max``)."""


def ctc_greedy(log_probs: np.ndarray, *, blank: int) -> Hypothesis:
    """Best-path decoding: the argmax label per frame, collapsed; scored by that path's log prob.

    >>> import numpy as np
    >>> ctc_greedy(np.log([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]]), blank=1).labels
    (0,)
    """
    log_probs = _checked_log_probs(log_probs, blank)
    path = np.argmax(log_probs, axis=1)
    score = float(log_probs[np.arange(len(path)), path].sum())
    return Hypothesis(_collapse(path, blank), score)


def ctc_beam_search(
    log_probs: np.ndarray, *, beam_size: int, blank: int, merge: Merge = "sum"
) -> list[Hypothesis]:
    """The best hypotheses of one sequence, best first, at most ``beam_size`` of them.

    ``T == 0`` gives the empty labelling with score 0 (probability 1).
    """
    log_probs = _checked_log_probs(log_probs, blank)
    if beam_size < 1:
        raise ValueError(f"ctc_beam_search: beam_size must be at least 1, got {beam_size}")
    if merge not in ("sum", "max"):
        raise ValueError(f"ctc_beam_search: merge must be 'sum' or 'max', got {merge!r}")
    # Before the first frame: the empty prefix, "ended in blank" with probability 1.
    beam: Beam = {(): (0.0, -np.inf)}
    for frame in log_probs:
        beam = _step(beam, frame, beam_size=beam_size, blank=blank, merge=merge)
    hyps = [Hypothesis(prefix, float(_COMBINE[merge](p_blank, p_label))) for prefix, (p_blank, p_label) in beam.items()]
    hyps.sort(key=lambda h: (-h.score, h.labels))
    return hyps[:beam_size]


def _step(beam: Beam, frame: np.ndarray, *, beam_size: int, blank: int, merge: Merge) -> Beam:
    """Extend every prefix of ``beam`` by one frame; keep the best ``beam_size`` prefixes (sum) or states (max)."""
    combine = _COMBINE[merge]
    prefixes = list(beam)
    last = np.array([prefix[-1] if prefix else -1 for prefix in prefixes])
    stay_blank, stay_label, grow = _extend(beam, last, frame, blank=blank, combine=combine)

    # Candidates: n (prefix, ended in blank), n (prefix, ended in its label), n * V grown prefixes.
    n, vocab = len(prefixes), len(frame)
    if merge == "sum":  # the unit is the prefix: a staying prefix competes with both states summed
        rank = np.concatenate([combine(stay_blank, stay_label), np.full(n, -np.inf), grow.ravel()])
    else:  # the unit is the state, so that beam 1 follows the argmax path
        rank = np.concatenate([stay_blank, stay_label, grow.ravel()])
    via = np.concatenate([np.full(n, blank), np.maximum(last, 0), np.tile(np.arange(vocab), n)])

    new_beam: Beam = {}
    for k in _best(rank, via, beam_size):
        if k < n:
            prefix, state = prefixes[k], (stay_blank[k], stay_label[k] if merge == "sum" else -np.inf)
        elif k < 2 * n:
            prefix, state = prefixes[k - n], (-np.inf, stay_label[k - n])
        else:
            parent, label = divmod(int(k) - 2 * n, vocab)
            prefix, state = prefixes[parent] + (label,), (-np.inf, grow[parent, label])
        # In max mode both states of one prefix may survive, each with its own score.
        old = new_beam.get(prefix, (-np.inf, -np.inf))
        new_beam[prefix] = (max(old[0], float(state[0])), max(old[1], float(state[1])))
    return new_beam


def _extend(
    beam: Beam, last: np.ndarray, frame: np.ndarray, *, blank: int, combine: np.ufunc
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores after one more frame: of each prefix ending in blank ``[n]``, in its last label ``[n]``,
    and of each prefix grown by each label ``[n, V]`` (-inf where that is no new prefix)."""
    p_blank, p_label = (np.array(scores) for scores in zip(*beam.values()))
    rows = np.flatnonzero(last >= 0)
    p_any = combine(p_blank, p_label)

    # Staying on the same prefix: a blank, or the last label again right after itself.
    stay_blank = p_any + frame[blank]
    stay_label = np.full(len(beam), -np.inf)
    stay_label[rows] = p_label[rows] + frame[last[rows]]
    # Growing by label c: from both states, except that a repeated label needs a blank in between.
    grow = p_any[:, None] + frame[None, :]
    grow[:, blank] = -np.inf
    grow[rows, last[rows]] = p_blank[rows] + frame[last[rows]]

    # A grown prefix that is already in the beam is the same hypothesis: fold it into that entry.
    index = {prefix: i for i, prefix in enumerate(beam)}
    folds = [(i, index[prefix[:-1]], prefix[-1]) for i, prefix in enumerate(beam) if prefix and prefix[:-1] in index]
    if folds:
        into, parent, label = (np.array(column) for column in zip(*folds))
        stay_label[into] = combine(stay_label[into], grow[parent, label])
        grow[parent, label] = -np.inf
    return stay_blank, stay_label, grow


def _best(scores: np.ndarray, via: np.ndarray, beam_size: int) -> np.ndarray:
    """Indices of the ``beam_size`` best finite candidates, best first.

    Ties go to the candidate reached by the lower label id, then the earlier one, the way
    ``np.argmax`` breaks them, so that max mode with beam 1 picks exactly the greedy path.
    """
    candidates = np.flatnonzero(scores > -np.inf)
    if len(candidates) > beam_size:
        # Only what can make the cut is sorted; with a large vocabulary that is a small part.
        threshold = np.partition(scores[candidates], -beam_size)[-beam_size]
        candidates = candidates[scores[candidates] >= threshold]
    order = np.lexsort((candidates, via[candidates], -scores[candidates]))
    return candidates[order[:beam_size]]


def _collapse(path: np.ndarray, blank: int) -> tuple[int, ...]:
    """The labelling of an alignment: merge repeated labels, then drop blanks."""
    if len(path) == 0:
        return ()
    keep = np.ones(len(path), dtype=bool)
    keep[1:] = path[1:] != path[:-1]
    return tuple(int(label) for label in path[keep] if label != blank)


def _checked_log_probs(log_probs: np.ndarray, blank: int) -> np.ndarray:
    """``log_probs`` as float64 ``[T, V]``, or a ValueError that says what is wrong with it."""
    array = np.asarray(log_probs, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"CTC decoding: log_probs must be 2-D [time, labels], got shape {array.shape}")
    if not 0 <= blank < array.shape[1]:
        raise ValueError(f"CTC decoding: blank={blank} is not a label id of a vocabulary of size {array.shape[1]}")
    if np.isnan(array).any():
        raise ValueError("CTC decoding: log_probs contains NaN")
    impossible = np.flatnonzero((array == -np.inf).all(axis=1))
    if len(impossible):
        raise ValueError(f"CTC decoding: frame {impossible[0]} has no finite log-probability (all labels impossible)")
    return array
