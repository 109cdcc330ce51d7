"""Benchmark: forward throughput (seqs/s) of `returnn-ray ++task forward` with 1 and 2 CPU
actors, against a plain single-process PyTorch loop over the same batches with the same model.

    .venv/bin/python bench/forward_throughput.py             # 3000 seqs, 100-400 frames, 80-dim, BLSTM
    .venv/bin/python bench/forward_throughput.py --quick     # a small look
    python bench/forward_throughput.py --device gpu --json r.json  # bench/gpu/run.sh: the loop and 1 actor on the GPU

Goals (issue 4): 2 actors >= 1.6x one actor on a 2-core machine; one actor >= 0.9x the plain
loop. Actors and the plain loop each use one thread (an actor holds one CPU). The returnn-ray
figure is its steady rate, so actor start-up is not counted: from the moment every actor has
given its first result to the last result (``seqs_per_s_all_actors`` in the metrics file); the
rate from the first result on (``seqs_per_s_after_first``, which with 2 actors still holds the
later one's start-up) and the whole command's wall time are printed too. With
``--device gpu`` the plain loop and one actor (holding the one GPU) run on the GPU, and the
actor-scaling figure is not measured.
"""

from __future__ import annotations

import os

# One thread for the plain loop, set as Ray sets it for a one-CPU actor (before torch is imported).
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from returnn_ray.data import BatchingOptions, HDFDataset, plan_epoch
from returnn_ray.data.ray_data import Batch, pad_batch
from returnn_ray.metrics import FILE_NAME, last_run, read_metrics
from returnn_ray.model import build_network

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_throughput import make_corpus  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "forward")
NETWORK = {
    "fw": {"class": "rec", "unit": "lstm", "n_out": 192, "direction": 1},
    "bw": {"class": "rec", "unit": "lstm", "n_out": 192, "direction": -1},
    "output": {"class": "softmax", "loss": "ce", "from": ["fw", "bw"], "n_out": 100},
}
BATCHING = {"batch_size": 8000, "max_seqs": 40}


def setup(num_seqs: int, device: str = "cpu") -> tuple[str, str]:
    os.makedirs(OUT, exist_ok=True)
    corpus = os.path.join(OUT, f"corpus-{num_seqs}.hdf")
    make_corpus(corpus, num_seqs, dim=80, min_len=100, max_len=400)
    ds = HDFDataset([corpus])
    torch.manual_seed(0)
    model = build_network(NETWORK, ds.specs)
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 0}, os.path.join(OUT, "model.001.pt"))
    config = os.path.join(OUT, "forward.json")
    with open(config, "w") as f:
        json.dump({"task": "forward", "eval": corpus, "network": NETWORK, "model": os.path.join(OUT, "model"),
                   "device": device, "log_verbosity": 4, **BATCHING}, f)
    return corpus, config


def plain_loop(corpus: str, device: str = "cpu") -> float:
    """seqs/s of the same model over the same planned batches, one process, one thread, no Ray
    (after the first batch, like the returnn-ray figure); each batch's output back on the CPU."""
    torch.set_num_threads(1)
    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    ds = HDFDataset([corpus])
    model = build_network(NETWORK, ds.specs)
    model.load_state_dict(torch.load(os.path.join(OUT, "model.001.pt"), weights_only=True)["model"])
    model.to(dev).eval()
    opts = BatchingOptions(batch_size=BATCHING["batch_size"], max_seqs=BATCHING["max_seqs"])
    batches = plan_epoch(ds.seq_order_for_epoch(1), ds.seq_lens, opts, 1).for_rank(0)
    start, seqs = 0.0, 0
    with torch.no_grad():
        for i, indices in enumerate(batches):
            batch = Batch.from_columns(pad_batch(ds, indices), ds.data_keys)
            data = {k: v.to(dev) for k, v in batch.data.items()}
            lens_in = {k: v.to(dev) for k, v in batch.lens.items()}
            out = model(data, lens_in)["output"]
            values, lens = out.value.float().cpu().numpy(), out.lens.cpu().numpy()
            np.concatenate([values[b, :n] for b, n in enumerate(lens)])
            if i == 0:  # as for the actors: the rate after the first result
                start = time.perf_counter()
            else:
                seqs += batch.num_seqs
    return seqs / (time.perf_counter() - start)


def returnn_ray(config: str, actors: int) -> tuple[float, float, float]:
    """(steady seqs/s once all actors ran, seqs/s after the first result, whole command seconds) of
    `returnn-ray ++task forward` with ``actors`` actors; the rates from the run's metrics file
    (``metrics.jsonl`` next to the output, docs/metrics.md)."""
    out = os.path.join(OUT, f"out-{actors}.hdf")
    shutil.rmtree(out + ".parts", ignore_errors=True)  # a killed earlier run's parts (else it resumes them)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", config, "++ray_num_workers", str(actors), "++output_file", out,
         "++forward_override_hdf_output", "True"],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"returnn-ray failed:\n{proc.stderr[-3000:]}")
    ends = [e for e in last_run(read_metrics(os.path.join(OUT, FILE_NAME))) if e["event"] == "inference_end"]
    if not ends or ends[-1].get("seqs_per_s_all_actors") is None:
        sys.exit(f"no inference_end with seqs_per_s_all_actors in {os.path.join(OUT, FILE_NAME)}:\n{proc.stdout[-3000:]}")
    return ends[-1]["seqs_per_s_all_actors"], ends[-1]["seqs_per_s_after_first"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-seqs", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="200 seqs")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--actors", type=int, choices=[1, 2], default=2,
                        help="2: also the 2-actor run (CPU only; a GPU machine here has one GPU)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    num_seqs = 200 if args.quick else args.num_seqs
    corpus, config = setup(num_seqs, args.device)
    plain = plain_loop(corpus, args.device)
    one, one_first, one_wall = returnn_ray(config, 1)
    figures = {"device": args.device, "num_seqs": num_seqs, "plain_seqs_per_s": plain, "one_actor_seqs_per_s": one,
               "one_actor_command_s": one_wall, "one_actor_vs_plain": one / plain}
    print(f"plain PyTorch loop, 1 thread:   {plain:8.2f} seqs/s")
    print(f"returnn-ray, 1 actor:           {one:8.2f} seqs/s  (command {one_wall:.1f} s)")
    two_actors = args.device == "cpu" and args.actors == 2
    if two_actors:
        two, two_first, two_wall = returnn_ray(config, 2)
        figures.update(two_actors_seqs_per_s=two, two_actors_command_s=two_wall, two_vs_one=two / one,
                       two_actors_seqs_per_s_after_first=two_first, two_vs_one_after_first=two_first / one_first)
        print(f"returnn-ray, 2 actors:          {two:8.2f} seqs/s once both ran, {two_first:.2f} after the first"
              f" result  (command {two_wall:.1f} s)")
    print(f"1 actor / plain loop:  {one / plain:.2f}x  (goal >= 0.9)")
    if two_actors:
        print(f"2 actors / 1 actor:    {two / one:.2f}x once both ran  (goal >= 1.6; issue 17: >= 1.8);"
              f" {two_first / one_first:.2f}x from the first result, the second actor's start-up included")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
