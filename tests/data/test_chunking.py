"""RETURNN's ``chunking`` in the batch plan and the reader: chunk for chunk and batch for batch
against RETURNN's own code (``Dataset._generate_batches`` / ``iterate_seqs`` for network-dict
configs, ``ChunkingIterDataPipe`` + ``BatchingIterDataPipe`` for torch configs), and the
sharding and resume contracts of the plan with chunks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from returnn_ray.data.batching import BatchingOptions, plan_epoch
from returnn_ray.data.chunking import parse_chunking
from returnn_ray.data.datasets import StaticDataset
from returnn_ray.data.epochs import empty_epoch_reason
from returnn_ray.data.ray_data import pad_batch
from returnn_ray.data.seq_order import seq_order_for_epoch
from returnn_ray.errors import ConfigError, DataError

returnn_basic = pytest.importorskip("returnn.datasets.generating")
pipeline = pytest.importorskip("returnn.torch.data.pipeline")


def _seqs(seed: int, num_seqs: int = 40, max_len: int = 45, *, classes_ratio: int = 1, speaker: bool = False):
    """Random seqs: dense ``data`` [T, 2] holding (seq, t), sparse ``classes`` of T // ratio frames."""
    rng = np.random.RandomState(seed)
    seqs = []
    for i in range(num_seqs):
        t = int(rng.randint(1, max_len)) * classes_ratio
        seq = {
            "data": np.stack([np.full(t, i), np.arange(t)], axis=1).astype(np.float32),
            "classes": (np.arange(t // classes_ratio) + 1000 * i).astype(np.int32),
        }
        if speaker:
            seq["speaker"] = np.array([i % 3], np.int32)
        seqs.append(seq)
    return seqs


def _ours(seqs, chunking, rule, order=None, **options) -> list[list[tuple]]:
    ds = StaticDataset(data=seqs)
    opts = BatchingOptions(chunking=parse_chunking(chunking, options.pop("min_chunk_size", 0), rule=rule), **options)
    order = np.arange(len(seqs)) if order is None else order
    return [[tuple(r) for r in b.tolist()] for b in plan_epoch(order, ds.seq_lens, opts).batches]


def _returnn_tf(seqs, chunking, *, min_chunk_size=0, batch_size, max_seqs=-1, max_seq_length=None, min_seq_length=0):
    """RETURNN's TF-engine batches: ``StaticDataset(chunking=...)._generate_batches``, as
    ``(seq, start, end, ...)`` per data key in the seqs' key order."""
    keys = list(seqs[0])
    ds = returnn_basic.StaticDataset(data=seqs, chunking=chunking, min_chunk_size=min_chunk_size)
    ds.init_seq_order(epoch=1)
    batches = ds._generate_batches(
        recurrent_net=True, batch_size=batch_size, max_seqs=max_seqs, max_seq_length=max_seq_length,
        min_seq_length=min_seq_length, used_data_keys=set(keys),
    )
    out = []
    for batch in batches:
        rows = []
        for part in batch.seqs:
            row = [part.seq_idx]
            for key in keys:
                start = part.seq_start_frame[key]
                row += [start, start + part.frame_length[key]]
            rows.append(tuple(row))
        out.append(rows)
    return out


TF_CASES = [
    ("10:5", {}),
    ("10", {}),
    (7, {"min_chunk_size": 3}),
    ((12, 4), {"min_chunk_size": 2, "max_seq_length": 10}),
    (({"data": 10, "classes": 10}, {"data": 5, "classes": 5}), {"min_seq_length": 4}),
    ("200:200", {}),  # the 12AX demos' setting: most seqs are one chunk
]


@pytest.mark.parametrize("chunking, extra", TF_CASES)
@pytest.mark.parametrize("batch_size, max_seqs", [(40, -1), (100, 3), (15, 8)])
def test_tf_rule_matches_returnn_generate_batches(chunking, extra, batch_size, max_seqs):
    seqs = _seqs(batch_size + max_seqs)
    theirs = _returnn_tf(seqs, chunking, batch_size=batch_size, max_seqs=max_seqs, **extra)
    ours = _ours(seqs, chunking, "tf", batch_size=batch_size, max_seqs=max_seqs, **extra)
    assert ours == theirs
    assert sum(map(len, ours)) > (len(seqs) if chunking != "200:200" else 0)


def test_tf_rule_keys_with_their_own_step_and_length_one_keys_match_returnn():
    # classes at half the frame rate with half the chunk size and step: the chunk counts agree
    seqs = _seqs(3, classes_ratio=2)
    chunking = ({"data": 20, "classes": 10}, {"data": 10, "classes": 5})
    assert _ours(seqs, chunking, "tf", batch_size=60) == _returnn_tf(seqs, chunking, batch_size=60)
    # a key of length 1 is whole in every chunk (and, as in RETURNN, ends the seq's chunks)
    seqs = _seqs(4, speaker=True)
    assert _ours(seqs, "10:5", "tf", batch_size=60) == _returnn_tf(seqs, "10:5", batch_size=60)


def test_tf_rule_refuses_what_returnn_refuses_in_one_line():
    seqs = _seqs(5, classes_ratio=2)
    with pytest.raises(DataError, match="give 'classes' its own chunk size and step"):
        _ours(seqs, "10:5", "tf", batch_size=60)
    with pytest.raises(ConfigError, match="names no size for data key 'classes'"):
        _ours(seqs, {"data": 10}, "tf", batch_size=60)


def _returnn_torch(seqs, chunking, order, *, min_chunk_size=0, batch_size, max_seqs=-1, **limits):
    """RETURNN's torch-engine pipeline: LenFilterDataPipe, ChunkingIterDataPipe, BatchingIterDataPipe."""
    stream = [seqs[i] for i in order]
    if limits:
        stream = pipeline.LenFilterDataPipe(stream, **limits)
    stream = pipeline.ChunkingIterDataPipe(stream, chunking, min_chunk_size=min_chunk_size)
    return list(pipeline.BatchingIterDataPipe(stream, batch_size=batch_size, max_seqs=max_seqs))


def _as_rows(batch) -> list[tuple]:
    """(seq, start, end of data, start, end of classes) of RETURNN's chunks, read off their values."""
    rows = []
    for chunk in batch:
        data, classes = chunk["data"], chunk["classes"]
        start = int(data[0, 1])
        c_start = int(classes[0]) % 1000 if len(classes) else 0
        rows.append((int(data[0, 0]), start, start + len(data), c_start, c_start + len(classes)))
    return rows


TORCH_CASES = [
    ("10:5", {}),
    (7, {"min_chunk_size": 3}),
    ((12, 4), {"min_chunk_size": 2, "max_seq_length": 30}),
    ({"data": 10}, {"min_seq_length": 4}),  # classes is not chunked: whole in every chunk
    (({"data": 9, "classes": 9}, {"data": 9, "classes": 9}), {}),
]


@pytest.mark.parametrize("chunking, extra", TORCH_CASES)
@pytest.mark.parametrize("batch_size, max_seqs", [(40, -1), (100, 3)])
def test_torch_rule_matches_returnn_chunking_pipeline(chunking, extra, batch_size, max_seqs):
    seqs = _seqs(7 + batch_size)
    order = seq_order_for_epoch("laplace:.10", StaticDataset(data=seqs).seq_lens["data"], epoch=2)
    theirs = _returnn_torch(seqs, chunking, order, batch_size=batch_size, max_seqs=max_seqs, **extra)
    ours = _ours(seqs, chunking, "torch", order=order, batch_size=batch_size, max_seqs=max_seqs, **extra)
    assert ours == [_as_rows(b) for b in theirs]
    # the reader gives each chunk as a seq of its own: RETURNN's chunk arrays, padded
    ds = StaticDataset(data=seqs)
    opts = BatchingOptions(batch_size, max_seqs, chunking=parse_chunking(chunking, extra.get("min_chunk_size", 0)),
                           **{k: v for k, v in extra.items() if k != "min_chunk_size"})
    for rows, batch in zip(plan_epoch(order, ds.seq_lens, opts).batches, theirs):
        cols = pad_batch(ds, rows)
        assert cols["seq_idx"].tolist() == [int(c["data"][0, 0]) for c in batch]
        for key in ("data", "classes"):
            assert cols[key + ":lens"].tolist() == [len(c[key]) for c in batch]
            for j, chunk in enumerate(batch):
                np.testing.assert_array_equal(cols[key][j, : len(chunk[key])], chunk[key])


@pytest.mark.parametrize("num_ranks", [1, 2, 3, 5])
@pytest.mark.parametrize("rule", ["tf", "torch"])
def test_chunks_keep_the_sharding_contract_and_resume_mid_epoch(num_ranks, rule):
    seqs = _seqs(11, num_seqs=23)
    ds = StaticDataset(data=seqs)
    order = np.random.RandomState(num_ranks).permutation(len(seqs))
    opts = BatchingOptions(batch_size=50, max_seqs=4, chunking=parse_chunking("12:6", rule=rule))
    plan = plan_epoch(order, ds.seq_lens, opts, num_ranks)
    single = [tuple(r) for b in plan_epoch(order, ds.seq_lens, opts, 1).batches for r in b.tolist()]
    seq_col = [row[0] for row in single]
    assert [s for i, s in enumerate(seq_col) if i == 0 or seq_col[i - 1] != s] == order.tolist()  # seq order kept
    dealt = [tuple(r) for b in plan.batches for r in b.tolist()]
    assert dealt == single  # every chunk once, in the global order
    assert {len(plan.for_rank(k)) for k in range(num_ranks)} == {plan.num_steps}
    assert all(b.shape[1:] == (5,) for b in plan.batches)  # empty padding pieces too
    for k in range(plan.num_steps):  # resume after k steps: exactly the chunks not yet used
        rest = plan_epoch(order, ds.seq_lens, opts, num_ranks, skip_seqs=plan.seqs_in_steps(k))
        assert [b.tolist() for b in rest.batches] == [b.tolist() for b in plan.batches[k * num_ranks :]]


def test_parse_chunking_forms_and_errors():
    assert parse_chunking("200:200").size == 200
    assert parse_chunking(50).step == 50
    assert parse_chunking(None) is None and parse_chunking(0) is None and parse_chunking("0") is None
    both = parse_chunking(({"data": 20, "classes": 10}, {"data": 10, "classes": 5}), 2, rule="tf")
    assert (both.size, both.step, both.min_chunk_size, both.rule) == (
        {"data": 20, "classes": 10}, {"data": 10, "classes": 5}, 2, "tf")
    for bad, match in [
        ("ab", "expected 'size:step'"),
        ("-5:3", "must be an int > 0"),
        (lambda **kw: iter(()), "custom chunking function is not supported"),
        (({"data": 5}, {"classes": 5}), "must name the same data keys"),
        ((5, 3, 1), r"expected \(size, step\)"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_chunking(bad)


def test_an_epoch_without_chunks_is_refused_before_it_runs():
    ds = StaticDataset(data=_seqs(1, max_len=10))
    opts = BatchingOptions(batch_size=50, chunking=parse_chunking("20:10", min_chunk_size=30))
    assert "has no chunks" in empty_epoch_reason(ds, np.arange(ds.num_seqs), opts, 1)
    ok = dataclasses.replace(opts, chunking=parse_chunking("20:10"))
    assert empty_epoch_reason(ds, np.arange(ds.num_seqs), ok, 1) is None


def _settings(**config):
    from returnn_ray.config import Config, load_settings

    return load_settings(Config({"train": {"class": "Task12AXDataset", "num_seqs": 5}, **config}))


def test_dev_of_a_torch_config_is_chunked_as_returnns_torch_engine_chunks_it():
    # RETURNN's torch engine chunks every data loader (Engine._create_data_loader), dev and eval too,
    # batched with batch_size_dev
    from returnn_ray.data.from_settings import batching_options

    settings = _settings(chunking="10:5", min_chunk_size=3, batch_size=40, batch_size_dev=100, max_seqs=7)
    seqs = _seqs(5)
    order = np.arange(len(seqs))[::-1]
    ds = StaticDataset(data=seqs)
    for name, batch_size in (("dev", 100), ("eval", 100), ("train", 40)):
        options = batching_options(settings, name)
        theirs = _returnn_torch(seqs, "10:5", order, min_chunk_size=3, batch_size=batch_size, max_seqs=7)
        ours = [[tuple(r) for r in b.tolist()] for b in plan_epoch(order, ds.seq_lens, options).batches]
        assert ours == [_as_rows(b) for b in theirs], name


def test_dev_of_a_network_dict_is_whole_as_returnns_tf_engine_gives_it():
    from returnn.config import Config as ReturnnConfig
    from returnn.datasets.basic import Dataset as ReturnnDataset

    from returnn_ray.data.from_settings import batching_options

    network = {"output": {"class": "softmax", "n_out": 2, "loss": "ce"}}
    settings = _settings(chunking="10:5", network=network)
    theirs = ReturnnDataset.get_default_kwargs_eval(ReturnnConfig({"chunking": "10:5"}))["chunking"]
    assert parse_chunking(theirs) is None  # RETURNN: "0"
    assert batching_options(settings, "dev").chunking is None
    assert batching_options(settings, "train").chunking == parse_chunking("10:5", rule="tf")


@pytest.mark.parametrize("task", ["forward", "search"])
def test_forward_of_a_chunked_torch_config_is_refused_in_one_line(task):
    from returnn_ray.data.from_settings import batching_options

    settings = _settings(chunking="10:5", task=task)
    with pytest.raises(ConfigError, match=rf"chunking 10:5: RETURNN's torch engine would {task} each chunk of dataset 'eval'"):
        batching_options(settings, "eval")
    assert batching_options(_settings(chunking="0", task=task), "eval").chunking is None
