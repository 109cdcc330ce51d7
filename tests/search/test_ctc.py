"""CTC decoding against brute force: with a beam that never prunes, the sum search finds every
labelling with its exact probability and the max search every labelling with its best alignment;
max search with beam 1 is greedy decoding, ties included; input errors are ValueErrors."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from returnn_ray.search import Hypothesis, ctc_beam_search, ctc_greedy


def random_log_probs(rng: np.random.Generator, time_steps: int, vocab: int, sharpness: float = 2.0) -> np.ndarray:
    logits = rng.normal(size=(time_steps, vocab)) * sharpness
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def collapse(alignment: tuple[int, ...], blank: int) -> tuple[int, ...]:
    merged = [label for i, label in enumerate(alignment) if i == 0 or label != alignment[i - 1]]
    return tuple(label for label in merged if label != blank)


def brute_force(log_probs: np.ndarray, blank: int, merge: str) -> list[tuple[tuple[int, ...], float]]:
    """Every labelling with the sum (or max) over all V**T alignments, best first."""
    time_steps, vocab = log_probs.shape
    scores: dict[tuple[int, ...], float] = {}
    combine = np.logaddexp if merge == "sum" else max
    for alignment in itertools.product(range(vocab), repeat=time_steps):
        score = float(log_probs[np.arange(time_steps), alignment].sum())
        labels = collapse(alignment, blank)
        scores[labels] = float(combine(scores[labels], score)) if labels in scores else score
    return sorted(scores.items(), key=lambda item: -item[1])


TINY_CASES = [(seed, t, v) for seed in range(3) for t in range(1, 6) for v in range(2, 5)]


@pytest.mark.parametrize("merge", ["sum", "max"])
@pytest.mark.parametrize("seed,time_steps,vocab", TINY_CASES)
def test_full_beam_equals_brute_force(seed, time_steps, vocab, merge):
    rng = np.random.default_rng(seed)
    log_probs = random_log_probs(rng, time_steps, vocab)
    blank = int(rng.integers(vocab))  # the blank anywhere, not only last
    expected = brute_force(log_probs, blank, merge)
    hyps = ctc_beam_search(log_probs, beam_size=vocab**time_steps, blank=blank, merge=merge)
    assert [h.labels for h in hyps] == [labels for labels, _ in expected]
    np.testing.assert_allclose([h.score for h in hyps], [score for _, score in expected], rtol=1e-10)


@pytest.mark.parametrize("merge", ["sum", "max"])
@pytest.mark.parametrize("beam_size", [1, 2, 3, 5])
def test_small_beam_is_sorted_and_never_overestimates(beam_size, merge):
    # A pruned search loses alignments, so a hypothesis scores at most its true (brute-force) score.
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        vocab = int(rng.integers(2, 5))
        log_probs = random_log_probs(rng, 5, vocab)
        blank = int(rng.integers(vocab))
        truth = dict(brute_force(log_probs, blank, merge))
        hyps = ctc_beam_search(log_probs, beam_size=beam_size, blank=blank, merge=merge)
        assert 1 <= len(hyps) <= beam_size
        assert len({h.labels for h in hyps}) == len(hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.score <= truth[h.labels] + 1e-9


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 30.0])
def test_max_beam_one_is_greedy(sharpness):
    for seed in range(40):
        rng = np.random.default_rng(seed)
        vocab = int(rng.integers(2, 8))
        log_probs = random_log_probs(rng, int(rng.integers(1, 60)), vocab, sharpness)
        blank = int(rng.integers(vocab))
        greedy = ctc_greedy(log_probs, blank=blank)
        (hyp,) = ctc_beam_search(log_probs, beam_size=1, blank=blank, merge="max")
        assert hyp.labels == greedy.labels
        np.testing.assert_allclose(hyp.score, greedy.score, rtol=1e-10)


@pytest.mark.parametrize("blank", [0, 1, 2, 3])
def test_max_beam_one_is_greedy_with_ties(blank):
    # Coarse probabilities tie often; both must then take the lowest label id, like np.argmax.
    rng = np.random.default_rng(blank)
    log_probs = np.log(rng.integers(1, 3, size=(30, 4)) / 4.0)
    greedy = ctc_greedy(log_probs, blank=blank)
    (hyp,) = ctc_beam_search(log_probs, beam_size=1, blank=blank, merge="max")
    assert hyp.labels == greedy.labels
    assert (hyp.labels, greedy.labels) != ((), ())


def test_hand_computed_example():
    # Per frame p(a) = 0.4, p(blank) = 0.6: the best path is "_ _", but "a" has three alignments.
    log_probs = np.log([[0.6, 0.4], [0.6, 0.4]])  # blank = 0, "a" = 1
    assert ctc_greedy(log_probs, blank=0) == Hypothesis((), pytest.approx(np.log(0.36)))
    assert ctc_beam_search(log_probs, beam_size=2, blank=0) == [
        Hypothesis((1,), pytest.approx(np.log(0.64))),
        Hypothesis((), pytest.approx(np.log(0.36))),
    ]
    # Only a blank between them makes "a a" out of two a's.
    three = np.log([[0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    assert ctc_greedy(three, blank=0).labels == (1, 1)
    assert ctc_beam_search(three, beam_size=1, blank=0, merge="max")[0].labels == (1, 1)


def test_results_are_plain_python_values():
    log_probs = random_log_probs(np.random.default_rng(0), 10, 5).astype(np.float32)
    for hyp in [ctc_greedy(log_probs, blank=4), *ctc_beam_search(log_probs, beam_size=4, blank=4)]:
        assert type(hyp.score) is float
        assert all(type(label) is int for label in hyp.labels)


@pytest.mark.parametrize("merge", ["sum", "max"])
def test_no_frames_gives_empty_labelling(merge):
    empty = np.zeros((0, 5))
    assert ctc_beam_search(empty, beam_size=3, blank=0, merge=merge) == [Hypothesis((), 0.0)]
    assert ctc_greedy(empty, blank=0) == Hypothesis((), 0.0)


@pytest.mark.parametrize(
    "log_probs,kwargs,message",
    [
        (np.zeros((3, 4)), {"blank": 4}, "blank=4"),
        (np.zeros((3, 4)), {"blank": -1}, "blank=-1"),
        (np.zeros((3, 4)), {"blank": 0, "beam_size": 0}, "beam_size must be at least 1, got 0"),
        (np.zeros(4), {"blank": 0}, "must be 2-D"),
        (np.zeros((1, 3, 4)), {"blank": 0}, "must be 2-D"),
        (np.zeros((3, 4)), {"blank": 0, "merge": "avg"}, "merge must be 'sum' or 'max', got 'avg'"),
        (np.full((3, 4), np.nan), {"blank": 0}, "NaN"),
        (np.array([[0.0, 0.0], [-np.inf, -np.inf]]), {"blank": 0}, "frame 1 has no finite"),
    ],
)
def test_invalid_input(log_probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ctc_beam_search(log_probs, **{"beam_size": 2, **kwargs})
    if "beam_size" not in kwargs and "merge" not in kwargs:
        with pytest.raises(ValueError, match=message):
            ctc_greedy(log_probs, blank=kwargs["blank"])


@pytest.mark.parametrize("merge", ["sum", "max"])
def test_speed(merge):
    log_probs = random_log_probs(np.random.default_rng(0), 200, 30)
    timings = []
    for _ in range(3):  # the best of three, so that a busy machine does not fail the test
        start = time.perf_counter()
        ctc_beam_search(log_probs, beam_size=12, blank=0, merge=merge)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.1
