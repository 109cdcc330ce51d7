"""edit_distance against known pairs and an independent recursive definition on random short
sequences; error_rate sums edits and reference lengths over a corpus."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from returnn_ray.search import edit_distance, error_rate


def recursive_edit_distance(ref: tuple, hyp: tuple) -> int:
    """The textbook recursion over suffixes, memoised: a different formulation than the row DP."""

    @functools.cache
    def distance(i: int, j: int) -> int:
        if i == len(ref):
            return len(hyp) - j
        if j == len(hyp):
            return len(ref) - i
        if ref[i] == hyp[j]:
            return distance(i + 1, j + 1)
        return 1 + min(distance(i + 1, j), distance(i, j + 1), distance(i + 1, j + 1))

    return distance(0, 0)


@pytest.mark.parametrize(
    "ref,hyp,expected",
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("abc", "cba", 2),
        ("the cat sat on the mat".split(), "the cat sat on mat".split(), 1),
        ("a b c".split(), "x a b c y".split(), 2),
        ([1, 2, 3], [1, 5, 3], 1),
    ],
)
def test_known_pairs(ref, hyp, expected):
    assert edit_distance(ref, hyp) == expected


def test_random_against_recursion():
    rng = np.random.default_rng(0)
    for _ in range(500):
        ref = tuple(rng.integers(3, size=rng.integers(0, 8)).tolist())
        hyp = tuple(rng.integers(3, size=rng.integers(0, 8)).tolist())
        distance = edit_distance(ref, hyp)
        assert distance == recursive_edit_distance(ref, hyp)
        assert distance == edit_distance(hyp, ref)
        assert abs(len(ref) - len(hyp)) <= distance <= max(len(ref), len(hyp))


def test_error_rate_sums_over_corpus():
    pairs = [("the cat sat".split(), "the cat sat down".split()), ("a b".split(), "a c".split()), ([], [])]
    assert error_rate(pairs) == (2, 5)
    assert error_rate(iter(pairs)) == (2, 5)  # any iterable, read once
    assert error_rate([]) == (0, 0)
    assert error_rate([("abcd", "abd")]) == (1, 4)  # over labels (here characters): LER
