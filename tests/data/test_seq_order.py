"""seq_order_for_epoch: every seq_ordering mode, partition_epoch, seeds, errors, and
index-for-index agreement with RETURNN's Dataset.get_seq_order_for_epoch."""

from __future__ import annotations

import time

import numpy as np
import pytest

from returnn_ray.data.seq_order import SEQ_ORDERING_MODES, seq_order_for_epoch, validate_seq_ordering
from returnn_ray.errors import ConfigError

LENGTH_MODES = [
    "default",
    "reverse",
    "default_every_n:1",
    "default_every_n:3",
    "sorted",
    "sorted_reverse",
    "random",
    "random:1",
    "random:3",
    "random_sample",
    "random_sample:2",
    "sort_bin_shuffle",
    "sort_bin_shuffle:1",
    "sort_bin_shuffle:5",
    "sort_bin_shuffle:5:2",
    "sort_bin_shuffle:.1",
    "sort_bin_shuffle:.7:3",
    "sort_bin_shuffle_x2",
    "sort_bin_shuffle_x2:4",
    "sort_bin_shuffle_x2:.1",
    "sort_bin_shuffle_x2:.2",
    "sort_bin_shuffle_x2:.3:2",
    "sort_bin_shuffle_x2:.9",
    "sort_bin_shuffle_x2:.40",
    "sort_bin_shuffle_x2:300",
    "laplace",
    "laplace:1",
    "laplace:3",
    "laplace:3:2",
    "laplace:.1",
    "laplace:.5",
    "laplace:.20:4",
    "laplace:300",
]


def _lens(num_seqs: int, seed: int = 0, high: int = 6) -> np.ndarray:
    """Random lengths with many ties."""
    return np.random.RandomState(seed).randint(1, high, size=num_seqs).astype(np.int32)


# ---------------------------------------------------------------- each mode by hand


def test_default_and_reverse():
    lens = _lens(5)
    assert seq_order_for_epoch("default", lens, epoch=3).tolist() == [0, 1, 2, 3, 4]
    assert seq_order_for_epoch("reverse", lens, epoch=3).tolist() == [4, 3, 2, 1, 0]
    assert seq_order_for_epoch("default", None, num_seqs=3, epoch=1).tolist() == [0, 1, 2]


def test_default_every_n_interleaves_blocks_and_drops_the_remainder():
    # 7 seqs, n=3: blocks [0,1], [2,3], [4,5]; seq 6 is unused (as in RETURNN).
    assert seq_order_for_epoch("default_every_n:3", None, num_seqs=7, epoch=1).tolist() == [0, 2, 4, 1, 3, 5]


def test_sorted_is_stable_on_ties():
    lens = np.array([3, 1, 2, 1, 3])
    assert seq_order_for_epoch("sorted", lens, epoch=1).tolist() == [1, 3, 2, 0, 4]
    assert seq_order_for_epoch("sorted_reverse", lens, epoch=1).tolist() == [0, 4, 2, 1, 3]


def test_sorted_reverse_with_unsigned_lengths():
    lens = np.array([3, 1, 2], dtype=np.uint32)  # negating uint would wrap around
    assert seq_order_for_epoch("sorted_reverse", lens, epoch=1).tolist() == [0, 2, 1]


def test_random_uses_the_epoch_as_seed():
    order = seq_order_for_epoch("random", _lens(50), epoch=4)
    assert order.tolist() == np.random.RandomState(4).permutation(50).tolist()
    assert order.tolist() != seq_order_for_epoch("random", _lens(50), epoch=5).tolist()


def test_random_n_keeps_one_order_for_n_epochs():
    orders = [seq_order_for_epoch("random:3", None, num_seqs=40, epoch=e).tolist() for e in range(1, 8)]
    assert orders[0] == orders[1] == orders[2] == np.random.RandomState(1).permutation(40).tolist()
    assert orders[3] == orders[4] == orders[5] == np.random.RandomState(2).permutation(40).tolist()
    assert orders[6] == np.random.RandomState(3).permutation(40).tolist()
    assert orders[2] != orders[3]


def test_random_sample_draws_with_replacement():
    order = seq_order_for_epoch("random_sample", None, num_seqs=100, epoch=2)
    assert order.tolist() == np.random.RandomState(2).randint(0, 100, size=100).tolist()
    assert len(set(order.tolist())) < 100  # 100 draws from 100 almost surely repeat


@pytest.mark.parametrize("mode", ["sort_bin_shuffle:4", "sort_bin_shuffle:.25"])
def test_sort_bin_shuffle_visits_sorted_bins_in_random_order(mode):
    lens = np.random.RandomState(3).permutation(100) + 1  # distinct lengths 1..100
    order = seq_order_for_epoch(mode, lens, epoch=2)
    assert sorted(order.tolist()) == list(range(100))
    bins = lens[order].reshape(4, 25)  # 4 bins of 25 seqs, each one contiguous length range
    assert all(np.all(np.diff(b) == 1) for b in bins)
    assert sorted(b[0] for b in bins) == [1, 26, 51, 76]
    assert [b[0] for b in bins] != [1, 26, 51, 76]  # shuffled bin order (true for epoch 2)


def test_sort_bin_shuffle_x2_shuffles_within_bins():
    lens = np.random.RandomState(3).permutation(100) + 1
    order = seq_order_for_epoch("sort_bin_shuffle_x2:4", lens, epoch=2)
    bins = lens[order].reshape(4, 25)
    assert sorted(sorted(b)[0] for b in bins) == [1, 26, 51, 76]  # same bins as without _x2
    assert all(sorted(b) == list(range(min(b), min(b) + 25)) for b in bins)
    assert not all(np.all(np.diff(b) > 0) for b in bins)  # but not sorted within


@pytest.mark.parametrize("mode, bins", [("laplace", 2), ("laplace:5", 5), ("laplace:.20", 5)])
def test_laplace_alternates_ascending_and_descending_bins(mode, bins):
    lens = _lens(100, high=30)
    order = seq_order_for_epoch(mode, lens, epoch=3)
    assert sorted(order.tolist()) == list(range(100))
    perm = np.random.RandomState(3).permutation(100)
    size = 100 // bins
    for i, part in enumerate(np.split(order, bins)):
        assert sorted(part.tolist()) == sorted(perm[i * size : (i + 1) * size].tolist())  # bins of the shuffle
        diffs = np.diff(lens[part])
        assert np.all(diffs >= 0) if i % 2 == 0 else np.all(diffs <= 0)


@pytest.mark.parametrize("mode", LENGTH_MODES)
def test_every_mode_returns_int64_and_handles_an_empty_corpus(mode):
    order = seq_order_for_epoch(mode, _lens(30), epoch=2)
    assert order.dtype == np.int64 and order.ndim == 1
    assert np.all((0 <= order) & (order < 30))
    if not mode.startswith(("random_sample", "default_every_n")):
        assert sorted(order.tolist()) == list(range(30))
    empty = seq_order_for_epoch(mode, np.zeros((0,), dtype=np.int32), epoch=1, partition_epoch=3)
    assert empty.dtype == np.int64 and empty.shape == (0,)


# ---------------------------------------------------------------- partition_epoch and seeds


@pytest.mark.parametrize("mode", ["default", "sorted", "random", "random:2", "laplace:.4", "sort_bin_shuffle_x2:3"])
@pytest.mark.parametrize("num_seqs", [1, 7, 10, 23])
@pytest.mark.parametrize("partition_epoch", [1, 2, 3, 5])
def test_sub_epochs_of_a_full_epoch_are_disjoint_slices_of_its_order(mode, num_seqs, partition_epoch):
    lens = _lens(num_seqs)
    for full_epoch in (1, 2, 3):
        subs = [
            seq_order_for_epoch(mode, lens, epoch=(full_epoch - 1) * partition_epoch + k, partition_epoch=partition_epoch)
            for k in range(1, partition_epoch + 1)
        ]
        size, extra = divmod(num_seqs, partition_epoch)
        assert [len(s) for s in subs] == [size + 1] * extra + [size] * (partition_epoch - extra)
        full = seq_order_for_epoch(mode, lens, epoch=full_epoch)
        assert np.concatenate(subs).tolist() == full.tolist()  # disjoint, covering, in order


def test_fixed_random_seed_gives_the_same_order_every_epoch():
    orders = {
        tuple(seq_order_for_epoch("random", None, num_seqs=30, epoch=e, fixed_random_seed=7)) for e in range(1, 6)
    }
    assert orders == {tuple(np.random.RandomState(7).permutation(30))}


def test_fixed_random_seed_with_partition_epoch_still_slices():
    subs = [
        seq_order_for_epoch("random", None, num_seqs=10, epoch=e, partition_epoch=2, fixed_random_seed=7)
        for e in (1, 2, 3)
    ]
    full = np.random.RandomState(7).permutation(10)
    assert subs[0].tolist() == full[:5].tolist() and subs[1].tolist() == full[5:].tolist()
    assert subs[2].tolist() == subs[0].tolist()


def test_random_seed_offset_shifts_the_seed():
    lens = _lens(40)
    for mode in ("random", "laplace:.5", "sort_bin_shuffle:3"):
        shifted = seq_order_for_epoch(mode, lens, epoch=2, random_seed_offset=5)
        assert shifted.tolist() == seq_order_for_epoch(mode, lens, epoch=7).tolist()
        assert shifted.tolist() != seq_order_for_epoch(mode, lens, epoch=2).tolist()


def test_order_is_a_pure_function_and_does_not_touch_its_input():
    lens = _lens(200, high=50)
    before = lens.copy()
    for mode in ("sorted_reverse", "laplace:.10", "sort_bin_shuffle_x2:.2"):
        a = seq_order_for_epoch(mode, lens, epoch=3, partition_epoch=2)
        b = seq_order_for_epoch(mode, lens, epoch=3, partition_epoch=2)
        assert a.tolist() == b.tolist()
    assert lens.tolist() == before.tolist()


# ---------------------------------------------------------------- errors


def test_unknown_mode_names_the_mode_and_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        seq_order_for_epoch("shuffle", _lens(3), epoch=1)
    message = str(info.value)
    assert "'shuffle'" in message
    assert all(mode in message for mode in SEQ_ORDERING_MODES)


@pytest.mark.parametrize(
    "mode",
    [
        "laplace:abc",
        "laplace:.x",
        "laplace:.0",
        "laplace:0",
        "laplace:2:3:4",
        "laplace:2:",
        "sort_bin_shuffle:",
        "sort_bin_shuffle_x2:-1",
        "random:0",
        "random:-2",
        "random:1:2",
        "random_sample:x",
        "sorted:3",
        "default:1",
        "default_every_n",
        "default_every_n:0",
        "",
        ":",
        "Random",
    ],
)
def test_malformed_modes_raise_config_error(mode):
    with pytest.raises(ConfigError, match=repr(mode) if mode else "seq_ordering ''"):
        validate_seq_ordering(mode)
    with pytest.raises(ConfigError):
        seq_order_for_epoch(mode, _lens(4), epoch=1)


@pytest.mark.parametrize("mode", LENGTH_MODES)
def test_valid_modes_validate(mode):
    validate_seq_ordering(mode)


def test_non_string_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="must be a string"):
        validate_seq_ordering(None)  # type: ignore[arg-type]


def test_bad_arguments():
    with pytest.raises(ValueError, match="epoch"):
        seq_order_for_epoch("default", _lens(3), epoch=0)
    with pytest.raises(ConfigError, match="partition_epoch"):
        seq_order_for_epoch("default", _lens(3), epoch=1, partition_epoch=0)
    with pytest.raises(ValueError, match="needs seq_lens"):
        seq_order_for_epoch("sorted", None, num_seqs=3, epoch=1)
    with pytest.raises(ValueError, match="need seq_lens or num_seqs"):
        seq_order_for_epoch("default", None, epoch=1)
    with pytest.raises(ValueError, match="num_seqs"):
        seq_order_for_epoch("default", _lens(3), num_seqs=4, epoch=1)


# ---------------------------------------------------------------- speed


@pytest.mark.parametrize("mode", ["sorted", "random", "sort_bin_shuffle:.100", "sort_bin_shuffle_x2:.2", "laplace:.1"])
def test_a_million_seqs_take_well_under_a_second(mode):
    lens = np.random.RandomState(0).randint(50, 3000, size=1_000_000).astype(np.int32)
    start = time.perf_counter()
    order = seq_order_for_epoch(mode, lens, epoch=3, partition_epoch=2)
    elapsed = time.perf_counter() - start
    assert len(order) == 500_000
    assert elapsed < 1.0, f"{mode}: {elapsed:.2f} s"


# ---------------------------------------------------------------- differential: RETURNN


def _returnn_order(mode, lens, epoch, partition_epoch, fixed_random_seed, random_seed_offset):
    from returnn.datasets.basic import Dataset

    dataset = Dataset(
        seq_ordering=mode,
        partition_epoch=partition_epoch,
        fixed_random_seed=fixed_random_seed,
        random_seed_offset=random_seed_offset,
    )
    lens_list = lens.tolist()
    return np.asarray(dataset.get_seq_order_for_epoch(epoch, len(lens), lens_list.__getitem__), dtype=np.int64)


@pytest.mark.parametrize("mode", LENGTH_MODES)
def test_matches_returnn_index_for_index(mode):
    pytest.importorskip("returnn")
    checked = 0
    for num_seqs in (1, 2, 3, 7, 50, 257):
        lens = _lens(num_seqs, seed=num_seqs)
        for partition_epoch in (1, 2, 3, 5):
            for fixed_random_seed, random_seed_offset in ((None, 0), (None, 3), (11, 0)):
                for epoch in range(1, 8):
                    kwargs = dict(
                        epoch=epoch,
                        partition_epoch=partition_epoch,
                        fixed_random_seed=fixed_random_seed,
                        random_seed_offset=random_seed_offset,
                    )
                    ours = seq_order_for_epoch(mode, lens, **kwargs)
                    theirs = _returnn_order(mode, lens, epoch, partition_epoch, fixed_random_seed, random_seed_offset)
                    assert ours.tolist() == theirs.tolist(), (num_seqs, kwargs)
                    checked += 1
    assert checked == 6 * 4 * 3 * 7


@pytest.mark.parametrize(
    "mode",
    ["sort_bin_shuffle_x2:.2", "sort_bin_shuffle_x2:.5:2", "sort_bin_shuffle_x2:.8", "sort_bin_shuffle_x2:.9",
     "sort_bin_shuffle_x2:.100", "sort_bin_shuffle:.3", "laplace:.3", "laplace:.100", "sorted", "random"],
)
def test_matches_returnn_on_larger_corpora(mode):
    # Larger corpora exercise the vectorised paths (many small bins, RNG emulation).
    pytest.importorskip("returnn")
    for num_seqs, high in ((4999, 4), (5000, 200)):
        lens = _lens(num_seqs, seed=high, high=high)
        for epoch in (1, 2, 5):
            ours = seq_order_for_epoch(mode, lens, epoch=epoch, partition_epoch=2)
            theirs = _returnn_order(mode, lens, epoch, 2, None, 0)
            assert ours.tolist() == theirs.tolist(), (num_seqs, epoch)
