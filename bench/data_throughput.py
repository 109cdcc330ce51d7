"""Benchmark: frames/s delivered to one rank through the Ray Data path vs reading the same
batches straight from h5py in one process; and the time to plan an epoch of 1M seqs.

    .venv/bin/python bench/data_throughput.py              # 20k seqs, 50-1500 frames, 80-dim (~5 GB HDF)
    .venv/bin/python bench/data_throughput.py --num-seqs 2000   # quick look

All paths produce the same thing: padded torch tensors and seq lengths per planned batch.
The direct path reads and pads in the consuming process; the Ray Data path reads and pads in
Ray tasks (``returnn_ray.data.ray_data``); the rank reader is what a training rank on Ray
iterates: its batches read in the rank until Ray Data's stream has one ready, then the stream's.
Each round runs the rank reader before Ray Data alone, so the first epoch of the rank reader
includes Ray Data's cold start (a read task's process starting), Ray Data alone's does not.
One direct epoch runs untimed first: a process's first pass over an HDF file is ~1.7x slower
than its later ones (HDF5 loads the file's chunk index; pages first touched), for every path,
so the baseline is this process warm. Ray Data's read tasks still start cold in the rank
reader's first epoch. Before the rounds this process imports Ray Train (and so Ray Data), as a
training rank, a Ray Train worker, has. The corpus file is generated once and cached.
Prints absolute figures and the ratio against the direct baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from returnn_ray.data import BatchingOptions, DataSpec, HDFDataset, HDFWriter, plan_epoch, seq_order_for_epoch
from returnn_ray.data.ray_data import Batch, iter_batches, pad_batch, rank_batches, rank_dataset


def make_corpus(path: str, num_seqs: int, dim: int, min_len: int, max_len: int) -> None:
    if os.path.exists(path):
        return
    rng = np.random.RandomState(42)
    specs = {"data": DataSpec(dim), "classes": DataSpec(100, sparse=True, dtype="int32")}
    with HDFWriter(path, specs) as writer:
        for i in range(num_seqs):
            t = int(rng.randint(min_len, max_len + 1))
            feats = rng.standard_normal((t, dim)).astype("float32")
            writer.add_seq(f"seq-{i}", {"data": feats, "classes": rng.randint(0, 100, size=t // 4).astype("int32")})


def direct_epoch(ds: HDFDataset, batches) -> tuple[float, int]:
    start, frames = time.perf_counter(), 0
    for indices in batches:
        batch = Batch.from_columns(pad_batch(ds, indices), ds.data_keys)
        frames += batch.num_frames()
    return time.perf_counter() - start, frames


def ray_epoch(ds: HDFDataset, batches) -> tuple[float, int]:
    """Every batch through Ray Data's read tasks."""
    start, frames = time.perf_counter(), 0
    for batch in iter_batches(rank_dataset(ds, batches), ds.data_keys):
        frames += batch.num_frames()
    return time.perf_counter() - start, frames


def rank_epoch(ds: HDFDataset, batches) -> tuple[float, int]:
    """What a training rank iterates (``rank_batches``): read in the rank until Ray Data's stream
    has a batch ready, then the stream's."""
    start, frames = time.perf_counter(), 0
    for batch in rank_batches(ds, batches, ds.data_keys):
        frames += batch.num_frames()
    return time.perf_counter() - start, frames


def plan_time(num_seqs: int) -> float:
    rng = np.random.RandomState(0)
    lens = {"data": rng.randint(50, 1500, size=num_seqs), "classes": rng.randint(10, 300, size=num_seqs)}
    start = time.perf_counter()
    order = seq_order_for_epoch("laplace:.1000", lens["data"], epoch=3)
    plan_epoch(order, lens, BatchingOptions(batch_size=20000, max_seqs=200), num_ranks=8)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=80)
    parser.add_argument("--min-len", type=int, default=50)
    parser.add_argument("--max-len", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=20000, help="padded frames per batch")
    parser.add_argument("--max-seqs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="epochs timed per path (best counts)")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args()

    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"corpus-{args.num_seqs}-{args.dim}-{args.min_len}-{args.max_len}.hdf")
    start = time.perf_counter()
    make_corpus(path, args.num_seqs, args.dim, args.min_len, args.max_len)
    print(f"corpus: {path} ({os.path.getsize(path) / 1e9:.2f} GB, ready in {time.perf_counter() - start:.1f} s)")

    ds = HDFDataset([path], name="train", seq_ordering="laplace:.100")
    plan = plan_epoch(ds.seq_order_for_epoch(1), ds.seq_lens, BatchingOptions(args.batch_size, args.max_seqs))
    batches = plan.for_rank(0)
    print(f"plan: {len(batches)} batches, {plan.num_seqs} seqs")

    from returnn_ray.cluster.start import init_ray

    start = time.perf_counter()
    init_ray()
    print(f"ray.init: {time.perf_counter() - start:.1f} s")

    import ray.train  # noqa: F401 - as in a training rank, whose Ray Train imports Ray Data, see the docstring

    start = time.perf_counter()
    direct_epoch(ds, batches)  # untimed: warms this process (HDF5 chunk index, pages), see the docstring
    print(f"warm-up epoch (direct, untimed): {time.perf_counter() - start:.1f} s")
    direct, via_ray, via_rank = [], [], []
    for _ in range(args.rounds):  # interleaved, so all see the same page-cache state and machine noise
        direct.append(direct_epoch(ds, batches))
        via_rank.append(rank_epoch(ds, batches))
        via_ray.append(ray_epoch(ds, batches))
    for name, runs in (("direct h5py", direct), ("rank reader", via_rank), ("Ray Data", via_ray)):
        print(f"{name:12s} " + "  ".join(f"{f / t / 1e6:.2f}M frames/s ({t:.1f} s)" for t, f in runs))
    best_direct = max(f / t for t, f in direct)
    for name, runs in (("rank_reader", via_rank), ("ray_data", via_ray)):
        best, first = max(f / t for t, f in runs), runs[0][1] / runs[0][0]
        print(f"RATIO {name}/direct (best epoch): {best / best_direct:.2f}   (goal >= 0.8)")
        print(f"RATIO {name}/direct (first epoch, incl. pipeline start): {first / best_direct:.2f}   (goal >= 0.9)")

    seconds = plan_time(1_000_000)
    print(f"plan 1M seqs (laplace:.1000, 2 keys, 8 ranks): {seconds:.2f} s   (goal < 2 s)")


if __name__ == "__main__":
    main()
