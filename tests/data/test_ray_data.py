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


def _logged(tmp_path, num_seqs: int, slow: float):
    """A dataset whose reads are logged, one file per batch read (a file: Ray's read tasks are
    other processes), named ``<pid>-<first seq>-<unique>``, and whose reads in the test's process
    take ``slow`` s more and, after a few, wait until a read task has read (so that Ray Data's
    stream takes part, however long its start takes). Defined here: Ray's workers get it by value."""
    import os

    from returnn_ray.data.datasets import StaticDataset

    class Logged(StaticDataset):
        def get_seqs(self, indices):
            import os
            import time
            import uuid

            if os.getpid() == self.driver and self.slow:
                time.sleep(self.slow)
                deadline = time.monotonic() + 60  # a loaded machine: Ray's read tasks take long to start
                while (len(os.listdir(self.log)) > self.before_tasks
                       and not any(not name.startswith(f"{self.driver}-") for name in os.listdir(self.log))
                       and time.monotonic() < deadline):
                    time.sleep(0.05)  # reading here stalls after a few batches until a read task has read one
            open(os.path.join(self.log, f"{os.getpid()}-{indices[0]}-{uuid.uuid4().hex[:6]}"), "w").close()
            return super().get_seqs(indices)

    rng = np.random.RandomState(3)
    ds = Logged([{"data": rng.randn(int(rng.randint(1, 9)), 2).astype("float32")} for _ in range(num_seqs)])
    ds.driver, ds.slow, ds.log, ds.before_tasks = os.getpid(), slow, str(tmp_path / "reads"), 8
    os.makedirs(ds.log)
    return ds


def _reads(ds) -> dict[int, list[int]]:
    """First seq of each batch read -> the pids that read it."""
    import os

    reads: dict[int, list[int]] = {}
    for name in os.listdir(ds.log):
        pid, first, _ = name.split("-")
        reads.setdefault(int(first), []).append(int(pid))
    return reads


def _check_plan(got, ds, batches):
    assert [b.seq_idx.tolist() for b in got] == [b.tolist() for b in batches]
    for batch, planned in zip(got, batches):
        assert batch.lens["data"].tolist() == ds.seq_lens["data"][planned].tolist()
        for row, seq in enumerate(ds.get_seqs(planned.tolist())):
            np.testing.assert_array_equal(batch.data["data"][row, : len(seq["data"])].numpy(), seq["data"])


def test_a_rank_and_ray_data_share_the_reading_each_batch_once_in_plan_order(ray_session, tmp_path):
    # The rank reads while Ray Data's stream has not got its next batch (here: slowly, so the
    # stream takes over); read tasks skip what the rank took. Every batch arrives once, in plan
    # order, and (both sides sharing one node's claims) no read task reads a batch another process
    # took: a batch read twice is one the rank read again after waiting for a task holding it.
    import glob
    import os

    from returnn_ray.data.shared_read import read_shared

    ds = _logged(tmp_path, 240, slow=0.05)
    batches = [np.array([i + 1, i]) for i in range(0, 240, 2)]
    before = set(glob.glob("/dev/shm/returnn-ray-claims-*") + glob.glob("/tmp/returnn-ray-claims-*"))
    got = list(read_shared(ds, batches, ["data"], 2, read_task_bytes=200))
    reads = _reads(ds)
    ds.log = str(tmp_path)  # the check's reads are not the epoch's
    _check_plan(got, ds, batches)
    assert sorted(reads) == [int(b[0]) for b in batches]
    by_rank = [first for first, pids in reads.items() if os.getpid() in pids]
    by_tasks = [first for first, pids in reads.items() if any(pid != os.getpid() for pid in pids)]
    assert by_rank and by_tasks, "both the rank and Ray's read tasks read"
    twice = [first for first, pids in reads.items() if len(pids) > 1]
    assert all(os.getpid() in reads[first] for first in twice), "a read task read a batch another process took"
    print(f"rank {len(by_rank)}, tasks {len(by_tasks)}, both {len(twice)} of {len(batches)} batches")
    after = set(glob.glob("/dev/shm/returnn-ray-claims-*") + glob.glob("/tmp/returnn-ray-claims-*"))
    assert after <= before, "the claims went with the epoch"


def test_batches_taken_but_never_brought_are_read_by_the_rank(ray_session, tmp_path):
    # A read task that took batches and died (its retry finds them taken), or claims no read task
    # sees: the stream never brings those batches, and the rank must read them, not wait forever.
    from returnn_ray.data.shared_read import Claims, read_shared

    ds = _logged(tmp_path, 60, slow=0.0)
    batches = [np.array([i]) for i in range(60)]
    claims = Claims.create()
    lost = [5, 6, 7, 30, 59]
    for position in lost:
        assert claims.take(position)
    got = list(read_shared(ds, batches, ["data"], 2, read_task_bytes=100, claims=claims))
    reads = _reads(ds)
    ds.log = str(tmp_path)  # the check's reads are not the epoch's
    _check_plan(got, ds, batches)
    for position in lost:
        assert len(reads[position]) == 1, reads[position]


def test_read_tasks_skip_taken_batches_only_where_they_see_the_claims(ray_session, tmp_path):
    # On the rank's node a read task skips what is taken; on another node (claims made there) it
    # reads everything, and the rank drops the batches it has.
    import os

    from returnn_ray.data.ray_data import iter_positioned
    from returnn_ray.data.shared_read import Claims

    ds = _logged(tmp_path, 30, slow=0.0)
    batches = [np.array([i]) for i in range(30)]
    here = Claims.create()
    elsewhere = Claims(here.path, "another-node")
    try:
        for position in range(0, 30, 3):
            assert here.take(position)
        skipped = [p for p, _ in iter_positioned(rank_dataset(ds, batches, read_task_bytes=100, claims=here), ["data"])]
        assert skipped == [p for p in range(30) if p % 3]
        assert all(not here.take(p) for p in range(30)), "the read tasks took what they read"
        everything = [p for p, _ in iter_positioned(rank_dataset(ds, batches, read_task_bytes=100, claims=elsewhere), ["data"])]
        assert everything == list(range(30))
    finally:
        here.remove()
    assert not os.path.exists(here.path)
    assert not here.take(0), "claims removed: nothing is taken any more"


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


def test_a_rank_whose_stream_fails_reads_the_rest_itself(ray_session, tmp_path, capfd):
    # Ray Data's read tasks fail (here: in every process but the rank's) with an error that is no
    # bad data: the rank says so in one line and reads the rest of its epoch itself.
    import os

    from returnn_ray.data.datasets import StaticDataset
    from returnn_ray.data.shared_read import read_shared

    driver = os.getpid()

    class Broken(StaticDataset):
        def get_seqs(self, indices):
            import time

            if os.getpid() != driver:
                raise RuntimeError("a reader's disk went away")
            time.sleep(self.slow)  # the rank reads slowly: the stream's failure comes before the end
            return super().get_seqs(indices)

    ds = Broken([{"data": np.full((i % 5 + 1, 2), i, "float32")} for i in range(200)])
    batches = [np.array([i]) for i in range(200)]
    ds.slow = 0.05
    got = list(read_shared(ds, batches, ["data"], 2, read_task_bytes=50))
    ds.slow = 0.0
    _check_plan(got, ds, batches)
    err = capfd.readouterr().err
    assert "Ray Data's stream failed (" in err and "this rank reads the rest of its epoch itself" in err, err[-2000:]


def test_a_rank_leaving_early_stops_its_stream_and_ends_the_claims(ray_session, tmp_path):
    import threading
    import time

    from returnn_ray.data.shared_read import Claims, read_shared

    ds = _logged(tmp_path, 200, slow=0.02)
    batches = [np.array([i]) for i in range(200)]
    claims = Claims.create()
    reader = read_shared(ds, batches, ["data"], 2, read_task_bytes=100, claims=claims)
    got = [next(reader) for _ in range(20)]
    assert [b.seq_idx.tolist() for b in got] == [[i] for i in range(20)]
    reader.close()
    assert not claims.take(100), "the claims end with the reader"
    deadline = time.monotonic() + 30
    while any(t.name == "returnn-ray-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(t.name == "returnn-ray-stream" for t in threading.enumerate()), "the stream's thread ended"
    read = len(_reads(ds))
    time.sleep(1)
    assert len(_reads(ds)) == read, "no read task goes on reading after the rank left"


def test_what_one_read_task_would_read_whole_the_rank_reads_without_a_stream(ray_session, tmp_path):
    # A read task hands its batches over once it has read them all: where that is the whole plan
    # (a small dev set), a stream could bring nothing before the rank has read it, so none starts.
    import os
    import threading

    from returnn_ray.data.shared_read import read_shared

    ds = _logged(tmp_path, 30, slow=0.0)
    batches = [np.array([i]) for i in range(30)]
    got = list(read_shared(ds, batches, ["data"], 2))
    reads = _reads(ds)
    ds.log = str(tmp_path)
    _check_plan(got, ds, batches)
    assert reads == {i: [os.getpid()] for i in range(30)}
    assert not any(t.name == "returnn-ray-stream" for t in threading.enumerate())
