"""Benchmark: sweep overhead. Total wall time of `returnn-ray sweep` over N variants, against the
sum of the same N trainings run one by one as plain `returnn-ray` commands, divided by the
number of trials the sweep runs at once. Each standalone run and the sweep run twice; the
faster of each counts (the machine is noisy).

    .venv/bin/python bench/sweep_overhead.py            # 4 variants of a small Task12AX LSTM, 10 epochs
    .venv/bin/python bench/sweep_overhead.py --quick    # 2 variants, 1 epoch

Goal (issue 5): at most 1.2x. On a 2-core machine a trial's single worker holds one CPU, so
the sweep runs 2 trials at once; both sides are the commands a user would run (a standalone
one-worker run trains in-process, local mode; the sweep starts Ray and Tune).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "sweep")
LEARNING_RATES = [0.01, 0.005, 0.02, 0.003]


def write_config(epochs: int) -> str:
    config = {
        "task": "train",
        "train": {"class": "Task12AXDataset", "num_seqs": 1000},
        "dev": {"class": "Task12AXDataset", "num_seqs": 100, "fixed_random_seed": 1},
        "num_inputs": 9,
        "num_outputs": 2,
        "network": {
            "lstm": {"class": "rec", "unit": "lstm", "n_out": 64},
            "output": {"class": "softmax", "loss": "ce", "from": ["lstm"]},
        },
        "batch_size": 5000,
        "max_seqs": 10,
        "adam": True,
        "num_epochs": epochs,
        "model": os.path.join(OUT, "base", "model"),
    }
    path = os.path.join(OUT, "base.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (longer trials: less fixed cost)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    lrs = LEARNING_RATES[:2] if args.quick else LEARNING_RATES
    config = write_config(1 if args.quick else args.epochs)
    cli = [sys.executable, "-m", "returnn_ray"]
    # A trial holds one CPU (Ray gives its process OMP_NUM_THREADS=1); the standalone run of the
    # same training gets the same, else "sum / concurrency" would count 2 cores per run.
    one_cpu = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = []
    for lr in lrs:  # each standalone run twice, the faster counts (the machine is noisy)
        runs = []
        for attempt in range(2):
            model = os.path.join(OUT, f"alone-{lr}-{attempt}", "model")
            runs.append(timed(cli + [config, "++learning_rate", str(lr), "++model", model], env=one_cpu))
        alone.append(min(runs))
        print(f"standalone learning_rate={lr}: {alone[-1]:.1f} s (runs: {', '.join(f'{r:.1f}' for r in runs)})", flush=True)
    concurrency = min(2, len(lrs))  # one CPU per trial's worker, 2 CPUs
    grid = "learning_rate=" + ",".join(map(str, lrs))
    sweeps = []  # twice as well, the faster counts: the same rule as the standalone runs'
    for attempt in range(2):
        sweep_dir = os.path.join(OUT, f"sweep-{attempt}")
        sweeps.append(timed(cli + ["sweep", config, "--grid", grid, "--dir", sweep_dir, "--max-concurrent", str(concurrency)]))
    sweep = min(sweeps)
    ideal = sum(alone) / concurrency
    print(f"sweep of {len(lrs)} trials, {concurrency} at once: {sweep:.1f} s (runs: {', '.join(f'{r:.1f}' for r in sweeps)})")
    print(f"sum of standalone runs / {concurrency}: {ideal:.1f} s")
    print(f"RATIO sweep / (sum standalone / concurrency): {sweep / ideal:.2f}   (goal <= 1.2; issue 17: <= 1.15)")


if __name__ == "__main__":
    main()
