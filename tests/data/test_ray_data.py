"""The Ray Data path: a rank's planned batches arrive as padded torch tensors, in plan order."""

from __future__ import annotations

import numpy as np
import pytest

from returnn_ray.data import BatchingOptions, DataSpec, HDFDataset, init_dataset, plan_epoch, write_hdf
from returnn_ray.data.ray_data import iter_batches, rank_dataset


@pytest.fixture(scope="module")
def hdf_dataset(tmp_path_factory):
    rng = np.random.RandomState(7)
    seqs, tags = [], []
    for i in range(37):
        t = int(rng.randint(1, 40))
        seqs.append({"data": rng.randn(t, 5).astype("float32"), "classes": rng.randint(0, 4, size=t).astype("int32")})
        tags.append(f"utt-{i}")
    path = tmp_path_factory.mktemp("hdf") / "corpus.hdf"
    specs = {"data": DataSpec(5), "classes": DataSpec(4, sparse=True, dtype="int32")}
    write_hdf(str(path), seqs, tags, specs)
    ds = HDFDataset([str(path)], name="train", seq_ordering="laplace:3")
    return ds, seqs


def _read_rank(ds, batches):
    return list(iter_batches(rank_dataset(ds, batches, read_task_bytes=2000), ds.data_keys))


def test_each_rank_gets_its_plan_as_padded_tensors(ray_session, hdf_dataset):
    ds, seqs = hdf_dataset
    plan = plan_epoch(ds.seq_order_for_epoch(2), ds.seq_lens, BatchingOptions(batch_size=60, max_seqs=4), num_ranks=2)
    seen = []
    for rank in range(2):
        got = _read_rank(ds, plan.for_rank(rank))
        assert len(got) == plan.num_steps
        for batch, planned in zip(got, plan.for_rank(rank)):
            assert batch.seq_idx.tolist() == planned.tolist()
            for key in ("data", "classes"):
                assert batch.lens[key].tolist() == [len(seqs[i][key]) for i in planned]
                for row, i in enumerate(planned):
                    n = len(seqs[i][key])
                    np.testing.assert_array_equal(batch.data[key][row, :n].numpy(), seqs[i][key])
                    assert not batch.data[key][row, n:].any(), "padding must be zeros"
            seen.extend(batch.seq_idx.tolist())
    assert sorted(seen) == list(range(ds.num_seqs))


def test_same_rows_in_the_same_order_across_runs(ray_session, hdf_dataset):
    ds, _ = hdf_dataset
    plan = plan_epoch(ds.seq_order_for_epoch(1), ds.seq_lens, BatchingOptions(batch_size=50), num_ranks=3)
    first = [b.seq_idx.tolist() for b in _read_rank(ds, plan.for_rank(1))]
    second = [b.seq_idx.tolist() for b in _read_rank(ds, plan.for_rank(1))]
    assert first == second == [b.tolist() for b in plan.for_rank(1)]


def test_empty_padding_batch_arrives_as_an_empty_step(ray_session, hdf_dataset):
    ds, _ = hdf_dataset
    # One seq, three ranks: two ranks get an empty batch so every rank runs one step.
    plan = plan_epoch(np.array([5]), ds.seq_lens, BatchingOptions(batch_size=1000), num_ranks=3)
    sizes = [[b.num_seqs for b in _read_rank(ds, plan.for_rank(r))] for r in range(3)]
    assert sorted(sizes) == [[0], [0], [1]]
    empty = next(b for r in range(3) for b in _read_rank(ds, plan.for_rank(r)) if b.num_seqs == 0)
    assert tuple(empty.data["data"].shape) == (0, 0, 5)


def test_a_rank_reads_its_first_batches_itself_until_ray_data_has_one_ready(ray_session):
    # Ray Data hands over an epoch's first batch only once its pipeline has started and its first
    # read task has read its whole share; the rank reads its batches itself meanwhile (at least
    # that share), then takes Ray Data's: every batch once, in plan order.
    import os
    import time

    from returnn_ray.data.datasets import StaticDataset
    from returnn_ray.data.ray_data import _head_then_stream, head_batches

    driver = os.getpid()

    class WhoRead(StaticDataset):  # each frame holds the id of the process that read it
        def get_seqs(self, indices):
            if os.getpid() == driver:
                time.sleep(0.1)  # reading here is slow: Ray Data gets ready long before the end
            return [{**seq, "data": np.full_like(seq["data"], os.getpid())} for seq in super().get_seqs(indices)]

    rng = np.random.RandomState(3)
    ds = WhoRead([{"data": rng.randn(int(rng.randint(1, 9)), 2).astype("float32")} for _ in range(240)])
    batches = [np.array([i + 1, i]) for i in range(0, 240, 2)]
    head = head_batches(ds, batches, read_task_bytes=200)
    assert 1 < head < 10, head
    got = list(_head_then_stream(ds, batches, ["data"], 2, read_task_bytes=200))
    assert [b.seq_idx.tolist() for b in got] == [b.tolist() for b in batches]
    readers = []
    for batch, planned in zip(got, batches):
        lens = batch.lens["data"].tolist()
        assert lens == ds.seq_lens["data"][planned].tolist()
        readers.append({int(batch.data["data"][row, :n].min()) for row, n in enumerate(lens)}
                       | {int(batch.data["data"][row, :n].max()) for row, n in enumerate(lens)})
    read_here = next((i for i, r in enumerate(readers) if r != {driver}), None)  # batches read in this process
    assert read_here is not None, "Ray Data's stream never took over in 12 s of reading here"
    assert head <= read_here < len(batches), (head, read_here)
    print(f"read here: {read_here} of {len(batches)} batches (first read task's share: {head})")
    assert all(len(r) == 1 and driver not in r for r in readers[read_here:]), readers


def test_in_process_reader_gives_the_ray_data_batches_without_ray(hdf_dataset):
    # Ray Train's local mode (no Ray running) reads the plan in a background thread instead.
    from returnn_ray.data.ray_data import _prefetched, pad_batch

    ds, _ = hdf_dataset
    plan = plan_epoch(ds.seq_order_for_epoch(2), ds.seq_lens, BatchingOptions(batch_size=60, max_seqs=4), num_ranks=2)
    batches = plan.for_rank(1)
    got = list(_prefetched(ds, batches, ds.data_keys))
    assert len(got) == len(batches)
    for batch, planned in zip(got, batches):
        want = pad_batch(ds, planned)
        assert batch.seq_idx.tolist() == planned.tolist()
        for key in ("data", "classes"):
            np.testing.assert_array_equal(batch.data[key].numpy(), want[key])
            np.testing.assert_array_equal(batch.lens[key].numpy(), want[key + ":lens"])


def test_batches_carry_their_seqs_tags_and_each_chunk_its_seqs(hdf_dataset):
    # RETURNN gives every train/dev step extern_data["seq_tag"]; the corpus wrote tag utt-<i> for seq i
    from returnn_ray.data.ray_data import rank_batches

    ds, _ = hdf_dataset
    chunks = np.array([[4, 0, 1, 0, 1], [4, 1, 2, 1, 2], [9, 0, 1, 0, 1]])  # two chunks of seq 4, one of seq 9
    got = list(rank_batches(ds, [np.array([3, 0, 11]), chunks], ds.data_keys, in_process=True))
    assert [b.seq_tags for b in got] == [["utt-3", "utt-0", "utt-11"], ["utt-4", "utt-4", "utt-9"]]


def test_in_process_reader_stops_early_and_passes_errors_on(hdf_dataset):
    import threading

    from returnn_ray.data.ray_data import _prefetched

    ds, _ = hdf_dataset
    batches = [np.array([i]) for i in range(ds.num_seqs)]
    reader = _prefetched(ds, batches, ds.data_keys)
    next(reader)
    reader.close()  # the consumer leaves after one batch: the reader thread must end too
    assert not any(t.name == "returnn-ray-reader" for t in threading.enumerate())
    with pytest.raises(IndexError):
        list(_prefetched(ds, [np.array([0]), np.array([10_000])], ds.data_keys))


def test_returnn_class_and_meta_dataset_read_by_ray_tasks(ray_session, tmp_path):
    """RETURNN's OggZipDataset (built again in each Ray read task) and a MetaDataset pairing it with
    an HDF of the same tags: the padded rows hold what the dataset gives in this process."""
    pytest.importorskip("returnn.datasets.basic")
    from tests.data.test_returnn_generic import write_ogg_zip  # here: that module skips without returnn

    zip_path = write_ogg_zip(str(tmp_path / "corpus.zip"), [0.3, 0.21, 0.25, 0.4, 0.22])
    ogg = {"class": "OggZipDataset", "path": zip_path, "audio": {"num_feature_filters": 3}, "targets": None}
    tags = [f"rec/{i}" for i in range(5)]
    align = str(tmp_path / "align.hdf")
    write_hdf(align, [{"data": np.full(i + 1, i, "int32")} for i in range(5)][::-1], tags[::-1],
              {"data": DataSpec(5, sparse=True, dtype="int32")})
    meta = {"class": "MetaDataset", "datasets": {"ogg": ogg, "align": {"class": "HDFDataset", "files": [align]}},
            "data_map": {"data": ("ogg", "data"), "classes": ("align", "data")}, "seq_ordering": "sorted"}
    for spec in ({**ogg, "seq_ordering": "random"}, meta):
        ds = init_dataset(spec, name="train")
        plan = plan_epoch(ds.seq_order_for_epoch(1), ds.seq_lens, BatchingOptions(batch_size=200, max_seqs=2))
        got = _read_rank(ds, plan.for_rank(0))
        assert [b.seq_idx.tolist() for b in got] == [b.tolist() for b in plan.for_rank(0)]
        for batch in got:
            for row, want in enumerate(ds.get_seqs(batch.seq_idx.tolist())):
                for key, value in want.items():
                    np.testing.assert_array_equal(batch.data[key][row, : len(value)].numpy(), value)


def test_a_started_reader_dropped_unread_closes_its_iterator():
    # A rank that read its whole epoch itself drops the Ray Data stream it started: the stream must
    # stop (its generator closed), at once if its first item is here, else as soon as it is.
    import threading

    from returnn_ray.data.ray_data import StartedReader

    release, closed = threading.Event(), threading.Event()

    def stream():
        try:
            release.wait(10)
            yield from range(5)
        finally:
            closed.set()

    early = StartedReader(stream)
    assert not early.ready()
    early.close()  # still starting: closed by its thread once the first item is here
    assert not closed.is_set()
    release.set()
    assert closed.wait(5)

    closed.clear()
    late = StartedReader(stream)
    late._thread.join(5)
    assert late.ready() and not closed.is_set()
    late.close()
    assert closed.is_set()
    assert list(StartedReader(lambda: iter(range(3)))) == [0, 1, 2]
