"""Benchmark: returnn-ray's steady-state epoch time against the same model on the same batches
in a plain PyTorch loop (one process, one thread, no Ray). Goal: within 1.10x on 1 CPU worker.

    .venv/bin/python bench/train_overhead.py            # 1000 seqs, 50-400 frames x 80 dims, BLSTM 2x256 (~6 min)
    .venv/bin/python bench/train_overhead.py --quick    # 300 seqs, BLSTM 2x128, 2 epochs (~1 min)
    python bench/train_overhead.py --device gpu --amp bfloat16 --json r.json   # bench/gpu/run.sh's GPU run

The workload is a network-dict config (written as JSON to bench/out) of a 2-layer BLSTM with
a framewise softmax/ce output, trained with Adam on a synthetic HDF corpus (cached). The plain
loop builds the model from that config (``model_spec``, same seed as the worker), plans each
epoch as the worker does (``plan_epoch`` over ``seq_order_for_epoch``), reads and pads each
batch in-process (``pad_batch``) and runs the worker's step (losses -> ``objective`` ->
backward -> ``apply_update``). So the only difference is Ray: the Train worker, Ray Data
reading, the log queue and the per-epoch report. Epoch 1 of returnn-ray includes the Ray Data
pipeline start, so the steady state is the best of epochs >= 2, for both paths.

``--device gpu``: both paths train on the GPU (returnn-ray: one Ray Train worker holding the GPU,
its process group on NCCL), ``--amp`` sets ``torch_amp`` for both (the plain loop runs the step
under the same ``amp_context``), and the plain loop waits for the GPU at each epoch's end.
``--json`` writes the figures (also frames/s: the corpus's frames over the epoch time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from returnn_ray.metrics import FILE_NAME, last_run, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ``python -m returnn_ray``, not the console script: on the GPU machine returnn-ray is not
# installed, only put on PYTHONPATH (bench/gpu/run.sh).
RETURNN_RAY = [sys.executable, "-m", "returnn_ray"]


def make_corpus(path: str, num_seqs: int, dim: int, num_classes: int, min_len: int, max_len: int) -> None:
    from returnn_ray.data import DataSpec, HDFWriter

    if os.path.exists(path):
        return
    rng = np.random.RandomState(42)
    specs = {"data": DataSpec(dim), "classes": DataSpec(num_classes, sparse=True, dtype="int32")}
    with HDFWriter(path, specs) as writer:
        for i in range(num_seqs):
            t = int(rng.randint(min_len, max_len + 1))
            feats = rng.standard_normal((t, dim)).astype("float32")
            writer.add_seq(f"seq-{i}", {"data": feats, "classes": rng.randint(0, num_classes, size=t).astype("int32")})


def make_config(path: str, corpus: str, args, model_dir: str) -> None:
    network = {}
    sources = ["data"]
    for i in range(args.layers):
        for name, direction in ((f"lstm{i}_fw", 1), (f"lstm{i}_bw", -1)):
            network[name] = {"class": "rec", "unit": "lstm", "n_out": args.units, "direction": direction}
            network[name]["from"] = sources
        sources = [f"lstm{i}_fw", f"lstm{i}_bw"]
    network["output"] = {"class": "softmax", "loss": "ce", "from": sources}
    config = {
        "task": "train",
        "train": {"class": "HDFDataset", "files": [corpus], "seq_ordering": "laplace:.100"},
        "extern_data": {"data": {"dim": args.dim}, "classes": {"dim": args.num_classes, "sparse": True}},
        "network": network,
        "batch_size": args.batch_size,
        "max_seqs": args.max_seqs,
        "adam": True,
        "learning_rate": 0.001,
        "num_epochs": args.epochs,
        "log_verbosity": 4,
        "model": os.path.join(model_dir, "model"),
        "device": args.device,
    }
    if args.amp:
        config["torch_amp"] = args.amp
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


def plain_loop(config_path: str, epochs: int) -> list[tuple[float, float, float]]:
    """(epoch seconds, of which reading+padding seconds, train loss) per epoch: the worker's loop without Ray."""
    import torch

    from returnn_ray.training.optim import amp_context, make_grad_scaler

    from returnn_ray.config import load_config, load_settings, set_global_config
    from returnn_ray.data import plan_epoch
    from returnn_ray.data.from_settings import batching_options, data_specs, open_dataset
    from returnn_ray.data.ray_data import Batch, pad_batch
    from returnn_ray.model.build import model_spec
    from returnn_ray.training.optim import apply_update, build_optimizer
    from returnn_ray.training.scores import ScoreAccumulator, objective

    torch.set_num_threads(1)  # a Ray worker gets OMP_NUM_THREADS=1 (one CPU)
    config = load_config([config_path])
    set_global_config(config)
    settings = load_settings(config)
    train = open_dataset(settings, "train")
    spec = model_spec(settings, data_specs(settings, train))
    device = torch.device("cuda", 0) if settings.run.device == "gpu" else torch.device("cpu")
    torch.manual_seed(42)  # the worker's seed
    model = spec.build(1, 0).to(device)
    t = settings.training
    grad_scaler = make_grad_scaler(t.torch_amp, device.type)
    optimizer = build_optimizer(model, optimizer=t.optimizer, adam=t.adam, nadam=t.nadam, learning_rate=t.learning_rate)
    model.train()
    times, step = [], 0
    for epoch in range(1, epochs + 1):
        start, reading = time.monotonic(), 0.0
        plan = plan_epoch(train.seq_order_for_epoch(epoch), train.seq_lens, batching_options(settings, "train"), 1)
        acc = ScoreAccumulator()
        optimizer.zero_grad(set_to_none=True)
        for indices in plan.for_rank(0):
            read_start = time.monotonic()
            batch = _to_device(Batch.from_columns(pad_batch(train, indices), list(train.specs)), device)
            reading += time.monotonic() - read_start
            with amp_context(t.torch_amp, device.type):
                losses = spec.step(model, batch, epoch=epoch, step=step)
                loss = objective(losses)
            (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
            apply_update(optimizer, model, grad_scaler=grad_scaler, gradient_clip=t.gradient_clip,
                         gradient_clip_global_norm=t.gradient_clip_global_norm)
            optimizer.zero_grad(set_to_none=True)
            acc.add(losses)
            step += 1
        scores = acc.reduce()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.monotonic() - start, reading, next(iter(scores.values()))))
        print(f"  plain epoch {epoch}: {times[-1][0]:.2f} s (reading {reading:.2f} s) train loss {scores}", flush=True)
    return times


def _to_device(batch, device):
    """The batch's tensors on ``device``, as the worker moves them (non-blocking copies)."""
    if device.type == "cpu":
        return batch
    return type(batch)(
        seq_idx=batch.seq_idx,
        data={k: v.to(device, non_blocking=True) for k, v in batch.data.items()},
        lens={k: v.to(device, non_blocking=True) for k, v in batch.lens.items()},
    )


def returnn_ray_run(config_path: str, model_dir: str, *, local_mode: bool = False) -> dict:
    """Run the CLI on the config; returns epoch train times, train losses and the time to the first
    step, from the run's metrics file (``metrics.jsonl`` next to the model, docs/metrics.md).

    Default: a Ray Train worker on an embedded Ray. ``local_mode``: the plain command, which with
    one worker to give trains in-process (local mode), held to one thread like the
    plain loop and the Ray worker (Ray gives a one-CPU worker OMP_NUM_THREADS=1).
    """
    shutil.rmtree(model_dir, ignore_errors=True)  # else it resumes and trains nothing
    if local_mode:
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "OMP_NUM_THREADS": "1"}
    else:
        env = {**os.environ, "RAY_ADDRESS": "local"}  # an embedded Ray even when another Ray runs here
    start = time.perf_counter()
    proc = subprocess.run([*RETURNN_RAY, config_path], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        sys.exit(f"returnn-ray failed with exit code {proc.returncode}")
    events = last_run(read_metrics(os.path.join(model_dir, FILE_NAME)))
    ends = [e for e in events if e["event"] == "epoch_end"]
    epochs = {e["epoch"]: e["epoch_time"] for e in ends}
    losses = {e["epoch"]: e["scores"]["train_score"] for e in ends}  # the network's one loss: train_score
    first = [e["since_start"] for e in events if e["event"] == "first_step"]
    first_step = first[0] if first else float("nan")
    return {"epochs": epochs, "losses": losses, "wall": wall, "first_step": first_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny corpus and model, 2 epochs")
    parser.add_argument("--num-seqs", type=int, default=1000)
    parser.add_argument("--min-len", type=int, default=50)
    parser.add_argument("--max-len", type=int, default=400)
    parser.add_argument("--dim", type=int, default=80)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--layers", type=int, default=2, help="BLSTM layers")
    parser.add_argument("--units", type=int, default=256, help="LSTM units per direction")
    parser.add_argument("--batch-size", type=int, default=5000, help="padded frames per batch")
    parser.add_argument("--max-seqs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="alternating plain / returnn-ray runs")
    parser.add_argument("--local-mode", action="store_true", help="also time the plain command (local mode)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where both paths train")
    parser.add_argument("--amp", help="torch_amp for both paths, e.g. bfloat16")
    parser.add_argument("--loss-tol", type=float, default=0.002,
                        help="largest train loss difference between the paths (printed with 3 decimals)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args()
    if args.quick:
        args.num_seqs, args.units, args.epochs = 300, 128, 2

    os.makedirs(args.out_dir, exist_ok=True)
    name = f"blstm-{args.num_seqs}-{args.dim}-{args.num_classes}-{args.min_len}-{args.max_len}.hdf"
    corpus = os.path.join(args.out_dir, name)
    start = time.perf_counter()
    make_corpus(corpus, args.num_seqs, args.dim, args.num_classes, args.min_len, args.max_len)
    print(f"corpus: {corpus} ({os.path.getsize(corpus) / 1e6:.0f} MB, ready in {time.perf_counter() - start:.1f} s)")
    model_dir = os.path.join(args.out_dir, "train_overhead")
    config_path = os.path.join(args.out_dir, "train_overhead.json")
    make_config(config_path, corpus, args, model_dir)
    print(f"config: {config_path} ({args.layers}x BLSTM {args.units}, batch_size {args.batch_size}, "
          f"{args.epochs} epochs)")

    plain, rr, local = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(config_path, args.epochs))
        if args.local_mode:
            local_run = returnn_ray_run(config_path, model_dir, local_mode=True)
            print(f"  returnn-ray local mode epochs: {local_run['epochs']}", flush=True)
            local.append(local_run)
        run = returnn_ray_run(config_path, model_dir)
        print(f"  returnn-ray epochs: {run['epochs']}  wall {run['wall']:.1f} s  "
              f"first step {run['first_step']:.1f} s", flush=True)
        if len(run["epochs"]) != args.epochs:
            sys.exit(f"returnn-ray's metrics file has {len(run['epochs'])} epoch_end events, expected {args.epochs}")
        rr.append(run)
        # Same model, same batches: the losses must agree, else the comparison is unfair.
        diff = max(abs(run["losses"].get(e + 1, float("inf")) - loss) for e, (_, _, loss) in enumerate(plain[-1]))
        if diff > args.loss_tol:
            sys.exit(f"train losses differ: plain {[round(x[2], 3) for x in plain[-1]]}, returnn-ray {run['losses']}")

    steady = slice(1, None) if args.epochs > 1 else slice(None)
    plain_best = min(t for times in plain for t, _, _ in times[steady])
    compute_best = min(t - r for times in plain for t, r, _ in times[steady])
    rr_steady = [s for run in rr for e, s in sorted(run["epochs"].items())[steady]]
    rr_best, rr_median = min(rr_steady), statistics.median(rr_steady)
    print(f"plain PyTorch epoch (best of epochs >= 2): {plain_best:.2f} s   "
          f"(compute only, without reading: {compute_best:.2f} s)")
    print(f"returnn-ray epoch (epochs >= 2): best {rr_best:.2f} s, median {rr_median:.2f} s")
    print(f"returnn-ray wall {statistics.median(r['wall'] for r in rr):.1f} s, "
          f"time to first step {statistics.median(r['first_step'] for r in rr):.1f} s")
    print(f"RATIO returnn-ray/plain (best epoch): {rr_best / plain_best:.3f}   (goal <= 1.10)")
    print(f"RATIO returnn-ray/plain (median epoch): {rr_median / plain_best:.3f}")
    print(f"RATIO returnn-ray/plain compute only (best epoch): {rr_best / compute_best:.3f}")
    if local:
        local_best = min(s for run in local for e, s in sorted(run["epochs"].items())[steady])
        print(f"RATIO returnn-ray local mode (plain command, 1 thread)/plain (best epoch): {local_best / plain_best:.3f}")
    frames = corpus_frames(corpus)
    print(f"frames/s (best epoch): plain {frames / plain_best:.0f}, returnn-ray {frames / rr_best:.0f}   "
          f"returnn-ray/plain {plain_best / rr_best:.3f}")
    if args.json:
        figures = {
            "device": args.device, "amp": args.amp, "num_seqs": args.num_seqs, "frames_per_epoch": frames,
            "layers": args.layers, "units": args.units, "batch_size": args.batch_size, "epochs": args.epochs,
            "plain_epoch_s": plain_best, "returnn_ray_epoch_s": rr_best, "returnn_ray_epoch_median_s": rr_median,
            "plain_frames_per_s": frames / plain_best, "returnn_ray_frames_per_s": frames / rr_best,
            "throughput_ratio": plain_best / rr_best,
            "plain_losses": [x[2] for x in plain[-1]], "returnn_ray_losses": rr[-1]["losses"],
            "returnn_ray_wall_s": statistics.median(r["wall"] for r in rr),
            "time_to_first_step_s": statistics.median(r["first_step"] for r in rr),
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


def corpus_frames(path: str) -> int:
    """Frames in the corpus: one epoch trains on each of them once."""
    from returnn_ray.data import HDFDataset

    return int(HDFDataset([path]).seq_lens["data"].sum())


if __name__ == "__main__":
    main()
