"""Epochs with nothing to train on: found from lengths alone, refused with the reason, and only those
that RETURNN's own seq order leaves empty too."""

from __future__ import annotations

import numpy as np
import pytest

from returnn_ray.data import BatchingOptions, StaticDataset, Task12AXDataset, init_dataset
from returnn_ray.data.epochs import check_epochs, empty_epoch_reason
from returnn_ray.data.seq_order import SEQ_ORDERING_MODES
from returnn_ray.errors import DataError

OPTIONS = BatchingOptions(batch_size=10_000)


def _reason(dataset, epoch, options=OPTIONS):
    return empty_epoch_reason(dataset, dataset.seq_order_for_epoch(epoch), options, epoch)


def test_partition_epoch_above_the_seq_count_empties_the_last_sub_epochs():
    ds = Task12AXDataset(3, name="train", partition_epoch=5)
    assert [_reason(ds, e) is None for e in range(1, 11)] == [True, True, True, False, False] * 2
    assert _reason(ds, 4) == (
        "dataset 'train': epoch 4 (sub-epoch 4 of partition_epoch 5) has no seqs: partition_epoch 5 > 3 seqs: "
        "each full epoch is cut into 5 slices and only 3 of them get a seq; set partition_epoch to at most 3, "
        "or use more data"
    )
    check_epochs(ds, OPTIONS, 3)  # a run of 3 epochs never reaches an empty one: not refused
    with pytest.raises(DataError, match=r"epoch 4 \(sub-epoch 4 of partition_epoch 5\) has no seqs"):
        check_epochs(ds, OPTIONS, 4)


def test_length_limits_that_drop_every_seq():
    ds = Task12AXDataset(20, name="train")  # lengths 15 .. 97
    cases = [
        (dict(max_seq_length=10), "max_seq_length 10 drops all 20 seqs (the shortest has 15 frames of 'data'); "
         "change max_seq_length"),
        (dict(min_seq_length=98), "min_seq_length 98 drops all 20 seqs (the longest has 97 frames of 'data'); "
         "change min_seq_length"),
        (dict(max_seq_length={"classes": 14}), "max_seq_length['classes'] 14 drops all 20 seqs"),
        (dict(min_seq_length=60, max_seq_length=59), "max_seq_length and min_seq_length together drop all 20 seqs"),
    ]
    for limits, reason in cases:
        assert f"dataset 'train': epoch 1 has no seqs: {reason}" in _reason(ds, 1, BatchingOptions(10_000, **limits))
    assert _reason(ds, 1, BatchingOptions(batch_size=10_000, max_seq_length=15)) is None  # one seq left: a run


def test_a_sub_epoch_whose_seqs_are_all_too_long():
    ds = Task12AXDataset(20, name="train", partition_epoch=4)  # sub-epoch 3: lengths 38, 75, 96, 53, 41
    options = BatchingOptions(batch_size=10_000, max_seq_length=37)
    assert [_reason(ds, e, options) is None for e in range(1, 5)] == [True, True, False, True]
    assert "epoch 3 (sub-epoch 3 of partition_epoch 4) has no seqs: max_seq_length 37 drops all 5 seqs " \
        "(the shortest has 38 frames of 'data')" in _reason(ds, 3, options)
    with pytest.raises(DataError, match="epoch 3"):
        check_epochs(ds, options, 10)


def test_only_zero_length_seqs():
    seqs = [{"data": np.zeros((0, 2), "float32"), "classes": np.zeros(0, "int32")} for _ in range(4)]
    ds = StaticDataset(seqs, name="train")
    assert _reason(ds, 1) == (
        "dataset 'train': epoch 1 has no frames: all 4 of its seqs have length 0 for 'data'; fix the data"
    )
    seqs[2] = {"data": np.zeros((1, 2), "float32"), "classes": np.zeros(1, "int32")}
    assert _reason(StaticDataset(seqs, name="train"), 1) is None  # some empty seqs among others: fine


def test_default_every_n_above_the_seq_count():
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "seq_ordering": "default_every_n:5"}, name="train")
    assert _reason(ds, 1) == (
        "dataset 'train': epoch 1 has no seqs: seq_ordering 'default_every_n:5' uses 3 // 5 * 5 = 0 of its 3 seqs; "
        "use n <= 3"
    )
    ds = init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "seq_ordering": "default_every_n:3"}, name="train")
    assert _reason(ds, 1) is None


def test_a_seq_list_that_lists_no_seq_of_a_sub_epoch(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("seq-0\nseq-1\n")
    spec = {"class": "Task12AXDataset", "num_seqs": 6, "partition_epoch": 2, "seq_list_filter_file": str(listed)}
    ds = init_dataset(spec, name="train")
    (order2,) = [o for i, o in enumerate(ds.sub_epoch_orders(1)) if i == 1]
    assert "seq_list_filter_file" in empty_epoch_reason(ds, order2, OPTIONS, 2)
    with pytest.raises(DataError, match=r"epoch 2 \(sub-epoch 2 of partition_epoch 2\) has no seqs.*list\.txt"):
        check_epochs(ds, OPTIONS, 2)


def test_later_full_epochs_of_a_random_order_are_checked_too():
    # 10 seqs, 3 of them short enough, 2 sub-epochs: a random order puts all 3 in one half in some full epoch.
    lens = [5, 5, 5] + [50] * 7
    seqs = [{"data": np.zeros((t, 1), "float32")} for t in lens]
    ds = StaticDataset(seqs, name="train", seq_ordering="random", partition_epoch=2)
    options = BatchingOptions(batch_size=10_000, max_seq_length=10)
    empty = [e for e in range(1, 41) if _reason(ds, e, options)]
    assert empty and empty[0] > 2  # the first full epoch is fine; a later one is not
    check_epochs(ds, options, empty[0] - 1)
    with pytest.raises(DataError, match=f"epoch {empty[0]} "):
        check_epochs(ds, options, 40)


@pytest.mark.parametrize("mode", [m for m in SEQ_ORDERING_MODES if m != "default_every_n"] + ["default_every_n:3"])
@pytest.mark.parametrize("partition_epoch", [1, 2, 5])
def test_sub_epoch_orders_are_the_epochs_orders(mode, partition_epoch):
    lens = np.random.RandomState(1).randint(1, 30, 23)
    ds = StaticDataset([{"data": np.zeros((t, 1), "float32")} for t in lens], seq_ordering=mode,
                       partition_epoch=partition_epoch)
    for full_epoch in (1, 2, 3):
        first = (full_epoch - 1) * partition_epoch + 1
        got = ds.sub_epoch_orders(full_epoch)
        assert len(got) == partition_epoch
        for epoch, order in enumerate(got, start=first):
            assert order.tolist() == ds.seq_order_for_epoch(epoch).tolist(), epoch


def test_what_is_refused_is_what_returnns_order_leaves_empty():
    """Differential: an epoch we call empty (no length limits) is one RETURNN's own
    ``get_seq_order_for_epoch`` gives no seq, and every other epoch has seqs in RETURNN too."""
    pytest.importorskip("returnn")
    from returnn.datasets.basic import Dataset as ReturnnDataset

    checked = 0
    for num_seqs in (1, 2, 3, 4, 6):
        for mode in ("default", "random", "laplace:2", "default_every_n:2", "default_every_n:4"):
            for partition_epoch in (1, 2, 3, 5, 7):
                ds = init_dataset(
                    {"class": "DummyDataset", "input_dim": 1, "output_dim": 2, "num_seqs": num_seqs,
                     "seq_ordering": mode, "partition_epoch": partition_epoch}, name="train",
                )
                theirs = ReturnnDataset(seq_ordering=mode, partition_epoch=partition_epoch)
                for epoch in range(1, 2 * partition_epoch + 1):
                    order = theirs.get_seq_order_for_epoch(epoch, num_seqs, lambda i: 2)
                    assert (_reason(ds, epoch) is None) == (len(order) > 0), (num_seqs, mode, partition_epoch, epoch)
                    checked += 1
    assert checked == 5 * 5 * (2 + 4 + 6 + 10 + 14)
