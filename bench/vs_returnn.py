"""Benchmark: total wall time of returnn-ray against RETURNN itself on RETURNN's torch demo
(demos/demo-torch.config: Task12AX, 1000 seqs, conv model, batch_size 5000, max_seqs 10, 3 epochs),
same machine, same run. Goal: returnn-ray at most 1.0x RETURNN's wall time.

    .venv/bin/python bench/vs_returnn.py            # 3 epochs, 3 repeats (~6 min)
    .venv/bin/python bench/vs_returnn.py --quick    # 1 epoch, 1 repeat (~1 min)

Both commands run as a user would type them: ``returnn-ray experiments/demo-torch.config`` and
``python -m returnn`` on the same config (the ``returnn`` package ships no demos). Both copies are written to bench/out with ``num_epochs`` and
fresh model/learning-rate paths set on the command line, and a few lines that note each process's
torch thread count: RETURNN trains in its main process with torch's default threads (all cores),
a returnn-ray worker holds one Ray CPU and runs with OMP_NUM_THREADS=1. Runs alternate in order.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from returnn_ray.metrics import FILE_NAME, last_run, read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEMO = os.path.join(ROOT, "experiments", "demo-torch.config")

NOTE_THREADS = '''

# Added by bench/vs_returnn.py: every process that loads this config notes its torch threads.
def _bench_note_threads():
    out_dir = os.environ.get("BENCH_THREADS_DIR")
    if out_dir:
        with open(os.path.join(out_dir, str(os.getpid())), "w") as f:
            f.write(str(torch.get_num_threads()))


_bench_note_threads()
'''

def write_configs(out_dir: str) -> tuple[str, str]:
    """The demo twice (it imports RETURNN's own modules; both sides run it unchanged)."""
    with open(DEMO) as f:
        text = f.read()
    paths = os.path.join(out_dir, "demo-torch.returnn-ray.config"), os.path.join(out_dir, "demo-torch.returnn.config")
    for path in paths:
        with open(path, "w") as f:
            f.write(text + NOTE_THREADS)
    return paths


def timed_run(name: str, cmd: list[str], out_dir: str, cwd: str) -> dict:
    """Wall time of ``cmd`` from a fresh model dir, and the torch threads of each process that loaded the config."""
    model_dir = os.path.join(out_dir, name)
    shutil.rmtree(model_dir, ignore_errors=True)  # else both resume and train nothing
    threads_dir = os.path.join(model_dir, "threads")
    os.makedirs(threads_dir)
    cmd = cmd + ["++model", os.path.join(model_dir, "model")]
    cmd += ["++learning_rate_file", os.path.join(model_dir, "learning_rates")]
    # the command as a user types it: no RAY_ADDRESS (one worker to give: local mode)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "BENCH_THREADS_DIR": threads_dir}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(stdout[-3000:], stderr[-3000:], sep="\n", file=sys.stderr)
        sys.exit(f"{name} failed with exit code {proc.returncode}")
    threads = {int(p): int(open(os.path.join(threads_dir, p)).read()) for p in os.listdir(threads_dir)}
    return {"wall": wall, "main_threads": threads.pop(proc.pid, None), "other_threads": sorted(threads.values()),
            "last_loss": last_train_loss(name, model_dir, stdout)}


def last_train_loss(name: str, model_dir: str, stdout: str) -> str:
    """The last epoch's train scores: returnn-ray's from its metrics file (docs/metrics.md), RETURNN's
    from its log (it writes no metrics file)."""
    if name == "returnn-ray":
        ends = [e for e in last_run(read_metrics(os.path.join(model_dir, FILE_NAME))) if e["event"] == "epoch_end"]
        train = {k: v for k, v in ends[-1]["scores"].items() if k.startswith("train_")} if ends else {}
        return " ".join(f"{k.removeprefix('train_').removeprefix('loss_')} {v:.3f}" for k, v in train.items()) or "?"
    losses = re.findall(r"Epoch \d+: Total train loss: (.*?)(?:  \(|$)", stdout, re.MULTILINE)
    return losses[-1].strip() if losses else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "out", "vs_returnn"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeats = 1, 1

    os.makedirs(args.out_dir, exist_ok=True)
    ours, theirs = write_configs(args.out_dir)
    bin_dir = os.path.dirname(sys.executable)
    commands = {
        "returnn-ray": ([os.path.join(bin_dir, "returnn-ray"), ours, "++num_epochs", str(args.epochs)], ROOT),
        "RETURNN": ([sys.executable, "-m", "returnn", theirs, "++num_epochs", str(args.epochs)], args.out_dir),
    }
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for i in range(args.repeats):
        for name in list(commands)[:: 1 if i % 2 else -1]:  # alternate which goes first; RETURNN first in round 1
            cmd, cwd = commands[name]
            run = timed_run(name, cmd, args.out_dir, cwd)
            runs[name].append(run)
            print(f"  {name:12s} {run['wall']:6.1f} s   last train loss: {run['last_loss']}", flush=True)

    med = {name: statistics.median(r["wall"] for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        r = rs[-1]
        threads = f"torch threads: main process {r['main_threads']}"
        threads += f", other processes {r['other_threads']}" if r["other_threads"] else ""
        print(f"{name:12s} wall median {med[name]:6.1f} s over {len(rs)} run(s), {args.epochs} epoch(s)   ({threads})")
    print(f"RATIO returnn-ray/RETURNN wall: {med['returnn-ray'] / med['RETURNN']:.2f}   (goal <= 1.0)")


if __name__ == "__main__":
    main()
