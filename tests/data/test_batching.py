"""plan_batches / deal_to_ranks / plan_epoch: RETURNN's batching rule, the dealing invariants
for 1..8 ranks, and seq-for-seq agreement with RETURNN's BatchingIterDataPipe."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from returnn_ray.data.batching import (
    BatchingOptions,
    BatchPlan,
    deal_to_ranks,
    filter_by_length,
    per_worker_batch_size,
    plan_batches,
    plan_epoch,
)
from returnn_ray.data.seq_order import seq_order_for_epoch
from returnn_ray.errors import ConfigError


def _plan(lens, **options):
    """plan_batches over the default order of one key ``data``, as lists."""
    seq_lens = {"data": np.asarray(lens)}
    return [b.tolist() for b in plan_batches(np.arange(len(lens)), seq_lens, BatchingOptions(**options))]


# ---------------------------------------------------------------- the batching rule by hand


def test_batches_are_limited_by_padded_frames():
    # 4*2 = 8 <= 10; adding 9 would make 9*3 = 27; 20 alone exceeds 10 but is not dropped.
    assert _plan([4, 4, 9, 20, 3, 3], batch_size=10) == [[0, 1], [2], [3], [4, 5]]


def test_padding_counts_the_longest_seq():
    # [1, 5] is 5*2 = 10 frames padded; adding a 1 makes 5*3 = 15 > 10.
    assert _plan([1, 5, 1, 1], batch_size=10) == [[0, 1], [2, 3]]
    assert _plan([5, 5], batch_size=10) == [[0, 1]]  # exactly batch_size fits


def test_a_seq_longer_than_batch_size_forms_its_own_batch():
    assert _plan([20], batch_size=10) == [[0]]
    assert _plan([3, 20, 3], batch_size=10) == [[0], [1], [2]]
    assert _plan([20, 20], batch_size=10) == [[0], [1]]


def test_max_seqs():
    assert _plan([1] * 5, batch_size=100, max_seqs=2) == [[0, 1], [2, 3], [4]]
    assert _plan([1] * 3, batch_size=100, max_seqs=1) == [[0], [1], [2]]
    assert _plan([1] * 5, batch_size=100, max_seqs=-1) == [[0, 1, 2, 3, 4]]


def test_every_data_key_is_checked():
    seq_lens = {"data": np.array([2, 2, 2, 2]), "classes": np.array([1, 1, 5, 1])}
    batches = plan_batches(np.arange(4), seq_lens, BatchingOptions(batch_size=8))
    # data alone would fit all four (2*4 = 8); classes: 5*3 = 15 > 8, then 5*2 = 10 > 8.
    assert [b.tolist() for b in batches] == [[0, 1], [2], [3]]


def test_batch_size_per_key_checks_only_the_keys_it_names():
    seq_lens = {"data": np.array([2, 2, 2, 2]), "classes": np.array([1, 1, 5, 1])}
    only_data = plan_batches(np.arange(4), seq_lens, BatchingOptions(batch_size={"data": 8}))
    assert [b.tolist() for b in only_data] == [[0, 1, 2, 3]]
    both = plan_batches(np.arange(4), seq_lens, BatchingOptions(batch_size={"data": 8, "classes": 10}))
    assert [b.tolist() for b in both] == [[0, 1], [2, 3]]


def test_batches_follow_the_order_and_hold_corpus_indices():
    seq_lens = {"data": np.array([1, 2, 3, 4, 5])}
    batches = plan_batches(np.array([4, 3, 2, 1, 0]), seq_lens, BatchingOptions(batch_size=10))
    assert [b.tolist() for b in batches] == [[4, 3], [2, 1, 0]]
    assert all(b.dtype == np.int64 for b in batches)


def test_empty_order_gives_no_batches():
    assert plan_batches(np.zeros((0,), dtype=np.int64), {"data": np.array([3])}, BatchingOptions(batch_size=5)) == []


def test_planning_does_not_alias_or_modify_its_inputs():
    order = np.array([0, 1, 2])
    lens = {"data": np.array([1, 1, 1])}
    batches = plan_batches(order, lens, BatchingOptions(batch_size=10))
    order[0] = 2
    assert batches[0].tolist() == [0, 1, 2]
    assert not batches[0].flags.writeable


# ---------------------------------------------------------------- max_seq_length / min_seq_length


def test_max_and_min_seq_length_drop_seqs_outside_inclusive_bounds():
    lens = [1, 2, 5, 6, 3]
    assert _plan(lens, batch_size=100, max_seq_length=5) == [[0, 1, 2, 4]]
    assert _plan(lens, batch_size=100, min_seq_length=2) == [[1, 2, 3, 4]]
    assert _plan(lens, batch_size=100, min_seq_length=2, max_seq_length=5) == [[1, 2, 4]]


def test_max_seq_length_zero_means_no_limit_as_in_returnn():
    assert BatchingOptions(batch_size=10, max_seq_length=0).max_seq_length is None
    assert _plan([1, 2, 3], batch_size=100, max_seq_length=0) == [[0, 1, 2]]


def test_seq_length_limits_apply_to_any_key_or_to_the_keys_named():
    seq_lens = {"data": np.array([10, 10, 50]), "classes": np.array([2, 9, 3])}
    opts = BatchingOptions(batch_size=1000, max_seq_length=8)  # a number applies to every key
    assert filter_by_length(np.arange(3), seq_lens, opts).tolist() == []
    opts = BatchingOptions(batch_size=1000, max_seq_length={"classes": 8})
    assert filter_by_length(np.arange(3), seq_lens, opts).tolist() == [0, 2]
    opts = BatchingOptions(batch_size=1000, max_seq_length={"data": 20}, min_seq_length={"classes": 3})
    assert filter_by_length(np.arange(3), seq_lens, opts).tolist() == [1]


def test_unknown_data_key_in_a_limit_is_a_config_error():
    seq_lens = {"data": np.array([1, 2])}
    for opts in (
        BatchingOptions(batch_size={"dta": 10}),
        BatchingOptions(batch_size=10, max_seq_length={"clases": 3}),
        BatchingOptions(batch_size=10, min_seq_length={"clases": 3}),
    ):
        with pytest.raises(ConfigError, match="unknown data keys"):
            plan_batches(np.arange(2), seq_lens, opts)


def test_plan_epoch_counts_dropped_seqs():
    seq_lens = {"data": np.array([1, 20, 3, 30])}
    plan = plan_epoch(np.arange(4), seq_lens, BatchingOptions(batch_size=100, max_seq_length=10))
    assert plan.num_dropped == 2 and plan.num_seqs == 2


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-5), "batch_size"),
        (dict(batch_size="1000"), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(batch_size={}), "batch_size"),
        (dict(batch_size={"data": 0}), "batch_size\\['data'\\]"),
        (dict(batch_size=10, max_seqs=0), "max_seqs"),
        (dict(batch_size=10, max_seqs=-2), "max_seqs"),
        (dict(batch_size=10, max_seqs=2.5), "max_seqs"),
        (dict(batch_size=10, max_seq_length=-1), "max_seq_length"),
        (dict(batch_size=10, min_seq_length="3"), "min_seq_length"),
    ],
)
def test_invalid_options_raise_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        BatchingOptions(**kwargs)


def test_options_are_frozen():
    opts = BatchingOptions(batch_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.batch_size = 5  # type: ignore[misc]


# ---------------------------------------------------------------- dealing to ranks


def _check_invariants(plan: BatchPlan, order: np.ndarray, seq_lens, options: BatchingOptions, num_ranks: int):
    batches = plan_batches(order, seq_lens, options)
    used = filter_by_length(order, seq_lens, options)
    assert plan.num_ranks == num_ranks
    assert len(plan.batches) == plan.num_steps * num_ranks
    # (c) every rank runs the same number of steps
    assert {len(plan.for_rank(k)) for k in range(num_ranks)} == {plan.num_steps}
    assert plan.num_steps == -(-len(batches) // num_ranks)  # ceil: never more steps than needed
    # (a) + order: the batches in plan order are the global order, cut into pieces
    flat = np.concatenate(plan.batches) if plan.batches else np.zeros((0,), np.int64)
    assert flat.tolist() == used.tolist()
    assert plan.num_seqs == len(used)
    # (b) each rank's stream is a subsequence of the global order
    position = {idx: pos for pos, idx in enumerate(used.tolist())}
    for k in range(num_ranks):
        stream = [position[i] for b in plan.for_rank(k) for i in b.tolist()]
        assert stream == sorted(stream)
    # the full steps are the planned batches; the last step's pieces are subsets of planned batches
    num_full = len(batches) // num_ranks * num_ranks
    assert [b.tolist() for b in plan.batches[:num_full]] == [b.tolist() for b in batches[:num_full]]
    tail = set(map(tuple, (b.tolist() for b in batches[num_full:])))
    for piece in plan.batches[num_full:]:
        if len(piece):
            assert any(set(piece.tolist()) <= set(t) for t in tail)
    # every batch with more than one seq keeps within batch_size (per key, as planned)
    frames = plan.padded_frames(seq_lens)
    for j, batch in enumerate(plan.batches):
        if len(batch) > 1:
            assert all(frames[key][j] <= options.batch_size for key in seq_lens)
    # (d) a pure function of its inputs
    again = plan_epoch(order, seq_lens, options, num_ranks)
    assert [b.tolist() for b in again.batches] == [b.tolist() for b in plan.batches]
    assert all(b.dtype == np.int64 for b in plan.batches)


@pytest.mark.parametrize("num_ranks", range(1, 9))
@pytest.mark.parametrize("mode", ["default", "sorted", "laplace:.20", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dealing_invariants_on_random_lengths(num_ranks, mode, seed):
    rng = np.random.RandomState(seed)
    num_seqs = rng.randint(1, 300)
    seq_lens = {"data": rng.randint(1, 100, num_seqs), "classes": rng.randint(1, 20, num_seqs)}
    options = BatchingOptions(batch_size=int(rng.choice([50, 300, 2000])), max_seqs=int(rng.choice([-1, 3, 20])),
                              max_seq_length=int(rng.choice([0, 90])))
    order = seq_order_for_epoch(mode, seq_lens["data"], epoch=seed + 1)
    _check_invariants(plan_epoch(order, seq_lens, options, num_ranks), order, seq_lens, options, num_ranks)


@pytest.mark.parametrize("num_ranks", range(1, 9))
@pytest.mark.parametrize("lens, batch_size", [
    ([], 10),  # empty order
    ([5], 10),  # one seq
    ([20], 10),  # one seq longer than batch_size
    ([1, 1, 1], 10),  # fewer seqs than ranks, one batch
    ([1] * 10, 100),  # one batch
    ([9, 9, 9, 9, 9], 10),  # one seq per batch
    ([1] * 17, 4),  # batches of 4 and a tail
])
def test_dealing_invariants_on_edge_cases(num_ranks, lens, batch_size):
    seq_lens = {"data": np.array(lens, dtype=np.int64)}
    options = BatchingOptions(batch_size=batch_size)
    order = np.arange(len(lens))
    _check_invariants(plan_epoch(order, seq_lens, options, num_ranks), order, seq_lens, options, num_ranks)


def test_empty_order_gives_zero_steps():
    plan = plan_epoch(np.zeros((0,), np.int64), {"data": np.array([], np.int64)}, BatchingOptions(batch_size=5), 4)
    assert plan.num_steps == 0 and plan.batches == () and plan.for_rank(3) == []


def test_fewer_seqs_than_ranks_gives_the_last_ranks_an_empty_batch():
    plan = plan_epoch(np.arange(3), {"data": np.ones(3, np.int64)}, BatchingOptions(batch_size=100), num_ranks=5)
    assert plan.num_steps == 1
    assert [plan.for_rank(k)[0].tolist() for k in range(5)] == [[0], [1], [2], [], []]


def test_one_seq_on_eight_ranks():
    plan = plan_epoch(np.arange(1), {"data": np.array([7])}, BatchingOptions(batch_size=5), num_ranks=8)
    assert [b.tolist() for b in plan.step(0)] == [[0], [], [], [], [], [], [], []]


def test_one_batch_is_cut_into_even_contiguous_pieces():
    plan = plan_epoch(np.arange(10), {"data": np.ones(10, np.int64)}, BatchingOptions(batch_size=100), num_ranks=4)
    assert [b.tolist() for b in plan.batches] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def test_tail_pieces_go_to_the_batches_with_more_seqs():
    batches = [np.arange(0, 6), np.arange(6, 8)]
    plan = deal_to_ranks(batches, 4)
    assert [b.tolist() for b in plan.batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_tail_pieces_follow_padded_frames_when_lengths_are_given():
    # Batch A: 2 seqs of 50 frames (100 padded); batch B: 10 seqs of 10 frames (100 padded).
    lens = {"data": np.array([50, 50] + [10] * 10)}
    batches = [np.arange(0, 2), np.arange(2, 12)]
    by_count = deal_to_ranks(batches, 4)
    assert [len(b) for b in by_count.batches] == [2, 4, 3, 3]  # B gets 3 pieces
    by_frames = deal_to_ranks(batches, 4, lens)
    assert [len(b) for b in by_frames.batches] == [1, 1, 5, 5]  # equal frames: 2 pieces each


def test_full_steps_are_dealt_round_robin():
    batches = [np.array([i]) for i in range(6)]
    plan = deal_to_ranks(batches, 3)
    assert plan.num_steps == 2
    assert [b.tolist() for b in plan.for_rank(1)] == [[1], [4]]
    assert [b.tolist() for b in plan.step(1)] == [[3], [4], [5]]


def test_one_rank_equals_plan_batches():
    rng = np.random.RandomState(5)
    seq_lens = {"data": rng.randint(1, 200, 1000)}
    options = BatchingOptions(batch_size=1000, max_seqs=16)
    order = seq_order_for_epoch("laplace:.50", seq_lens["data"], epoch=2)
    plan = plan_epoch(order, seq_lens, options, num_ranks=1)
    assert [b.tolist() for b in plan.batches] == [b.tolist() for b in plan_batches(order, seq_lens, options)]


def test_deal_and_plan_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_ranks"):
        deal_to_ranks([np.array([0])], 0)
    with pytest.raises(ValueError, match="empty"):
        deal_to_ranks([np.array([], dtype=np.int64)], 1)
    with pytest.raises(ValueError, match="multiple|fill"):
        BatchPlan((np.array([0]),), 2)
    with pytest.raises(ValueError, match="rank"):
        deal_to_ranks([np.array([0])], 2).for_rank(2)


def test_padded_frames():
    plan = BatchPlan((np.array([0, 1]), np.array([2]), np.array([], dtype=np.int64), np.array([3])), 2)
    frames = plan.padded_frames({"data": np.array([3, 5, 7, 1]), "classes": np.array([1, 1, 2, 9])})
    assert frames["data"].tolist() == [10, 7, 0, 1]
    assert frames["classes"].tolist() == [2, 2, 0, 9]


# ---------------------------------------------------------------- speed


@pytest.mark.parametrize("num_keys", [1, 2])
def test_planning_a_million_seqs_is_fast(num_keys):
    rng = np.random.RandomState(0)
    lens = rng.randint(50, 3000, 1_000_000).astype(np.int32)
    seq_lens = {"data": lens, "classes": (lens // 20 + rng.randint(0, 5, len(lens))).astype(np.int32)}
    seq_lens = dict(list(seq_lens.items())[:num_keys])
    order = seq_order_for_epoch("laplace:.1000", lens, epoch=1)
    start = time.perf_counter()
    plan = plan_epoch(order, seq_lens, BatchingOptions(batch_size=20_000, max_seqs=100), num_ranks=8)
    elapsed = time.perf_counter() - start
    assert plan.num_seqs == 1_000_000
    assert elapsed < 1.5, f"{elapsed:.2f} s"


# ---------------------------------------------------------------- differential: RETURNN


def _returnn_batches(order, seq_lens, batch_size, max_seqs, max_seq_length=None, min_seq_length=None):
    """RETURNN's torch engine pipeline (LenFilterDataPipe, BatchingIterDataPipe) over dicts of
    numpy arrays in ``order``; returns the corpus indices of every batch."""
    pipeline = pytest.importorskip("returnn.torch.data.pipeline")
    dicts = [
        {
            **{key: np.zeros((int(lens[i]), 3), np.float32) for key, lens in seq_lens.items()},
            "corpus_idx": np.array(i),  # shape (): not a length, as seq_idx in RETURNN
        }
        for i in order.tolist()
    ]
    stream = dicts
    if max_seq_length is not None or min_seq_length is not None:
        stream = pipeline.LenFilterDataPipe(dicts, min_seq_length=min_seq_length, max_seq_length=max_seq_length)
    batching = pipeline.BatchingIterDataPipe(stream, batch_size=batch_size, max_seqs=max_seqs)
    return [[int(d["corpus_idx"]) for d in batch] for batch in batching]


@pytest.mark.parametrize("num_keys", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [7, 50, 300, 5000])
@pytest.mark.parametrize("max_seqs", [-1, 1, 3, 16])
def test_matches_returnn_batching_seq_for_seq(num_keys, batch_size, max_seqs):
    pytest.importorskip("returnn")
    rng = np.random.RandomState(batch_size + max_seqs + num_keys)
    num_seqs = 400
    seq_lens = {
        "data": rng.randint(1, 60, num_seqs),
        "classes": rng.randint(1, 15, num_seqs),
        "speaker": rng.randint(1, 4, num_seqs),
    }
    seq_lens = dict(list(seq_lens.items())[:num_keys])
    options = BatchingOptions(batch_size=batch_size, max_seqs=max_seqs)
    for mode in ("default", "sorted", "laplace:.30", "random"):
        order = seq_order_for_epoch(mode, seq_lens["data"], epoch=3)
        ours = [b.tolist() for b in plan_batches(order, seq_lens, options)]
        assert ours == _returnn_batches(order, seq_lens, batch_size, max_seqs), mode
        plan = plan_epoch(order, seq_lens, options, num_ranks=1)
        assert [b.tolist() for b in plan.batches] == ours


@pytest.mark.parametrize(
    "batch_size, max_seq_length, min_seq_length",
    [
        (200, 40, None),
        (200, None, 5),
        (200, 40, 5),
        ({"data": 200}, {"classes": 10}, None),
        ({"data": 200, "classes": 30}, None, {"data": 10}),
    ],
)
def test_matches_returnn_length_filter_and_per_key_limits(batch_size, max_seq_length, min_seq_length):
    pytest.importorskip("returnn")
    rng = np.random.RandomState(1)
    seq_lens = {"data": rng.randint(1, 60, 500), "classes": rng.randint(1, 15, 500)}
    order = seq_order_for_epoch("laplace:.25", seq_lens["data"], epoch=1)
    options = BatchingOptions(batch_size=batch_size, max_seqs=8, max_seq_length=max_seq_length,
                              min_seq_length=min_seq_length)
    ours = [b.tolist() for b in plan_batches(order, seq_lens, options)]
    theirs = _returnn_batches(order, seq_lens, batch_size, 8, max_seq_length, min_seq_length)
    assert ours == theirs
    assert sum(map(len, ours)) < 500  # the filter did drop seqs


@pytest.mark.parametrize("seed", range(6))
def test_a_resumed_epoch_plans_exactly_the_seqs_not_yet_used_on_any_world_size(seed):
    """Mid-epoch resume: after k steps on W ranks, ``skip_seqs=seqs_in_steps(k)`` plans the rest:
    with the same W the very batches the plan had left; with another W the same seqs, each once."""
    rng = np.random.RandomState(seed)
    n = int(rng.randint(1, 60))
    lens = {"data": rng.randint(1, 40, size=n)}
    order = rng.permutation(n)
    options = BatchingOptions(batch_size=int(rng.randint(30, 120)), max_seqs=int(rng.randint(1, 6)), max_seq_length=35)
    for num_ranks in (1, 2, 3):
        plan = plan_epoch(order, lens, options, num_ranks)
        used = filter_by_length(order, lens, options)
        for k in range(plan.num_steps):
            skip = plan.seqs_in_steps(k)
            assert np.array_equal(np.concatenate([used[:skip], *plan.batches[k * num_ranks :]]), used)
            rest = plan_epoch(order, lens, options, num_ranks, skip_seqs=skip)
            assert [b.tolist() for b in rest.batches] == [b.tolist() for b in plan.batches[k * num_ranks :]]
            assert rest.num_dropped == plan.num_dropped
            for other in (1, 2, 4):
                again = plan_epoch(order, lens, options, other, skip_seqs=skip)
                assert np.array_equal(np.concatenate([np.zeros(0, np.int64), *again.batches]), used[skip:])


def test_skip_seqs_out_of_range_is_refused():
    lens = {"data": np.array([3, 4])}
    with pytest.raises(ValueError, match="skip_seqs 3"):
        plan_epoch(np.arange(2), lens, BatchingOptions(batch_size=10), skip_seqs=3)


# ---------------------------------------------------------------- a global batch size over W workers


@pytest.mark.parametrize("num_workers", [1, 2, 3, 5, 7])
def test_a_global_batch_size_split_over_workers_bounds_the_frames_of_one_update(num_workers):
    """batch_size is per rank: the per-worker share of 400 frames per update keeps every DDP step
    (the W ranks' batches together) at about 400 padded frames, never more than rounding adds."""
    lens = np.random.default_rng(num_workers).integers(1, 50, size=300)
    per_worker = per_worker_batch_size(400, num_workers)
    assert abs(per_worker * num_workers - 400) <= num_workers / 2
    plan = plan_epoch(np.arange(len(lens)), {"data": lens}, BatchingOptions(batch_size=per_worker), num_workers)
    for k in range(plan.num_steps):
        frames = sum(len(b) * int(lens[b].max()) for b in plan.step(k) if len(b))
        assert frames <= 400 + num_workers / 2


def test_per_worker_batch_size_is_at_least_one_and_splits_a_dict_key_by_key():
    assert per_worker_batch_size(3, 8) == 1
    assert per_worker_batch_size({"data": 1000, "classes": 90}, 4) == {"data": 250, "classes": 22}
    with pytest.raises(ValueError, match="num_workers"):
        per_worker_batch_size(1000, 0)
