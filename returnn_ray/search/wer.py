"""Edit distance and error rates of hypotheses against references.

Over words this gives the word error rate (WER = edits / reference words), over labels the
label error rate (LER), e.g. characters or BPE units. Rates are summed over the corpus first
and divided once, so long seqs weigh more, as scoring tools do:

>>> edits, ref_len = error_rate([("the cat sat".split(), "the cat sat down".split()), ("a b".split(), "a c".split())])
>>> edits, ref_len, round(edits / ref_len, 2)
(2, 5, 0.4)
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

__all__ = ["edit_distance", "error_rate"]


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """The Levenshtein distance: the fewest substitutions, deletions and insertions turning ``ref`` into ``hyp``.

    Keeps one row of the dynamic programme, so memory is O(len(hyp)).

    >>> edit_distance("kitten", "sitting"), edit_distance([], ["a"])
    (3, 1)
    """
    # previous[j]: distance between the ref prefix so far and hyp[:j].
    previous = list(range(len(hyp) + 1))
    for i, ref_token in enumerate(ref, start=1):
        current = [i]
        for j, hyp_token in enumerate(hyp, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_token != hyp_token))
            )
        previous = current
    return previous[-1]


def error_rate(pairs: Iterable[tuple[Sequence[Hashable], Sequence[Hashable]]]) -> tuple[int, int]:
    """Total edits and total reference length over ``(ref, hyp)`` pairs; their ratio is the WER or LER.

    Returned as two counts, not a ratio, so that per-worker results add up exactly.
    """
    edits = ref_len = 0
    for ref, hyp in pairs:
        edits += edit_distance(ref, hyp)
        ref_len += len(ref)
    return edits, ref_len
