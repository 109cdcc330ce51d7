"""Benchmark: start-up, from process start to the first training step, of returnn-ray against a bare
Ray Train TorchTrainer script (default settings, 1 worker), with an embedded local Ray and attached
to a running Ray. Goals on a 2-core machine: under 15 s embedded, under 8 s attached.
Three returnn-ray figures: `default` (the plain command on a machine with one worker to give:
local mode, in-process, no Ray started or imported), `embedded` (RAY_ADDRESS=local: a local Ray
started by the command, the worker a Ray actor) and `attached` (a running `ray start --head`).

    .venv/bin/python bench/startup.py               # 3 repeats per figure (~8 min)
    .venv/bin/python bench/startup.py --quick       # 1 repeat (~2-3 min)

returnn-ray trains a tiny config (Task12AXDataset, 100 seqs, one small layer, 1 epoch) with
``++log_verbosity 4`` and prints when its worker came up (the time to its first step comes from
its metrics file, docs/metrics.md); the bare script
(written to bench/out) records the same two times from its train function, measured from the
process's start (``psutil``). Attached mode starts its own head (``ray start --head``) with a
private temp dir and non-default ports in a new session, and kills exactly that process group
afterwards: ``ray stop`` would stop every Ray of this user on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from returnn_ray.cluster.head import start_head, stop_head, use_head
from returnn_ray.cluster.start import private_auth_env
from returnn_ray.metrics import FILE_NAME, last_run, read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)

BARE_SCRIPT = '''
import os, sys, time
import ray, ray.train
# When this process started, counted as returnn-ray counts its own start (psutil's create_time is up to 1 s early).
from returnn_ray.metrics import process_started_at
T0 = process_started_at()
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def train_func(config):
    import torch
    up = time.time() - config["t0"]
    model = ray.train.torch.prepare_model(torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(16, 8)).pow(2).mean().backward()
    opt.step()
    return {"up": up, "first_step": time.time() - config["t0"]}

ray.init()  # RAY_ADDRESS decides: "local" starts an embedded Ray, host:port attaches
result = TorchTrainer(train_func, train_loop_config={"t0": T0}, scaling_config=ScalingConfig(num_workers=1),
                      run_config=RunConfig(name="bare", storage_path=sys.argv[1])).fit()
r = result.return_value
print(f"bare worker up {r['up']:.1f} s, first step {r['first_step']:.1f} s", flush=True)
'''

TINY_CONFIG = {
    "task": "train",
    "train": {"class": "Task12AXDataset", "num_seqs": 100},
    "num_inputs": 9,
    "num_outputs": 2,
    "network": {
        "hidden": {"class": "linear", "activation": "relu", "n_out": 32},
        "output": {"class": "softmax", "loss": "ce", "from": ["hidden"]},
    },
    "batch_size": 5000,
    "max_seqs": 10,
    "adam": True,
    "learning_rate": 0.01,
    "num_epochs": 1,
    "log_verbosity": 4,
}

# Token auth: the private head and its drivers share the head's own token (cluster.head.use_head); the
# bare embedded Ray gets one of its own in its environment, as returnn-ray's embedded Ray does.


def run(cmd: list[str], env: dict, patterns: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; returns its wall time and each pattern's float from its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = {"wall": time.perf_counter() - start}
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        sys.exit(f"{' '.join(cmd[:2])} failed with exit code {proc.returncode}")
    for name, pattern in patterns.items():
        found = re.search(pattern, proc.stdout)
        if not found:
            print(proc.stdout[-3000:], file=sys.stderr)
            sys.exit(f"{' '.join(cmd[:2])}: no line matching {pattern!r}")
        out[name] = float(found.group(1))
    return out


def bare(out_dir: str, env: dict) -> dict[str, float]:
    shutil.rmtree(os.path.join(out_dir, "bare_results"), ignore_errors=True)
    cmd = [sys.executable, os.path.join(out_dir, "bare_trainer.py"), os.path.join(out_dir, "bare_results")]
    return run(cmd, env, {"up": r"bare worker up ([\d.]+) s", "first_step": r"first step ([\d.]+) s"})


def returnn_ray(out_dir: str, env: dict, address: str | None) -> dict[str, float]:
    """The command's wall time, the time to its first step (its metrics file's ``first_step``,
    docs/metrics.md) and when its worker came up (a log line: the metrics file has no event for it)."""
    model_dir = os.path.join(out_dir, "model")
    shutil.rmtree(model_dir, ignore_errors=True)  # else it resumes: nothing to train
    cmd = [os.path.join(BIN, "returnn-ray"), os.path.join(out_dir, "tiny.json")]
    cmd += ["++ray_address", address] if address else []
    out = run(cmd, env, {"up": r"training worker 0 up ([\d.]+) s"})
    first = [e["since_start"] for e in last_run(read_metrics(os.path.join(model_dir, FILE_NAME)))
             if e["event"] == "first_step"]
    if not first:
        sys.exit(f"returnn-ray: no first_step event in {os.path.join(model_dir, FILE_NAME)}")
    return {**out, "first_step": first[0]}


def summary(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    each = ", ".join(f"{r['first_step']:.1f}" for r in runs)
    print(f"{name:22s} worker up {med['up']:5.1f} s  first step {med['first_step']:5.1f} s  wall {med['wall']:5.1f} s"
          f"   (first step per run: {each})")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "out", "startup"))
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "bare_trainer.py"), "w") as f:
        f.write(BARE_SCRIPT)
    with open(os.path.join(args.out_dir, "tiny.json"), "w") as f:
        json.dump({**TINY_CONFIG, "model": os.path.join(args.out_dir, "model", "model")}, f, indent=1)

    # RAY_ADDRESS=local: an embedded Ray even if another Ray runs on this machine (ray.init() would join it)
    embedded_env = {**os.environ, **private_auth_env(), "RAY_ADDRESS": "local"}
    # The default command on a laptop: one worker, no cluster named -> local mode, in-process.
    default_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    results: dict[str, list] = {f"{who} {mode}": [] for mode in ("embedded", "attached") for who in ("bare", "returnn-ray")}
    results["returnn-ray default"] = []
    for _ in range(repeats):  # alternating, so all see the same machine noise
        results["bare embedded"].append(bare(args.out_dir, embedded_env))
        results["returnn-ray embedded"].append(returnn_ray(args.out_dir, embedded_env, None))
        results["returnn-ray default"].append(returnn_ray(args.out_dir, default_env, None))

    temp_dir = f"/tmp/rrb-{os.getpid()}"  # short: Ray's socket paths live under it
    start = time.perf_counter()
    head, address = start_head(temp_dir, 2)
    print(f"ray start --head: {time.perf_counter() - start:.1f} s ({address}, temp dir {temp_dir})")
    try:
        attached_env = dict(os.environ, RAY_ADDRESS=address)
        use_head(attached_env, temp_dir)
        for _ in range(repeats):
            results["bare attached"].append(bare(args.out_dir, attached_env))
            results["returnn-ray attached"].append(returnn_ray(args.out_dir, attached_env, address))
    finally:
        stop_head(head, temp_dir)

    med = {name: summary(name, runs) for name, runs in results.items()}
    for mode, goal in (("default", 15), ("embedded", 15), ("attached", 8)):
        rr, base = med[f"returnn-ray {mode}"]["first_step"], med[f"bare {'embedded' if mode == 'default' else mode}"]["first_step"]
        print(f"RATIO returnn-ray/bare first step, {mode}: {rr / base:.2f}   "
              f"(returnn-ray {rr:.1f} s, goal < {goal} s: {'met' if rr < goal else 'NOT met'})")


if __name__ == "__main__":
    main()
