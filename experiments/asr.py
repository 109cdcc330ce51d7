#!/usr/bin/env python3
"""A complete small ASR experiment on Ray: data, a sweep, DDP training, forward, search, WER.

    python experiments/asr.py                  # default scale: a few minutes on 2 CPU cores
    python experiments/asr.py --scale 10       # 10x the data, a bigger model: for a GPU cluster
    RAY_ADDRESS=auto python experiments/asr.py --scale 10 --out /shared/asr   # on a cluster's head node

Stages, each the command a user would type (printed, and its output kept in ``<out>/logs/``),
all with ``experiments/asr.config``:

1. **data**: train/dev/eval HDF files of the synthetic speech corpus
   (``python -m returnn_ray.corpus.synthetic``); kept if already there.
2. **sweep**: ``returnn-ray sweep --variants`` over learning rate x batch size (one small variant
   config per grid point, ``<out>/sweep/variants/``; on CPUs two batch sizes, on GPUs 2 x 2 points),
   trials of one worker each (one epoch on CPUs; on GPUs enough for ~400 updates), as many at
   once as the cluster holds; the best one is named in ``<out>/sweep/best.json``.
3. **train**: ``returnn-ray`` with the best values and DDP over ``--workers`` workers (default:
   every GPU of the cluster, else every CPU). The swept ``batch_size`` is the frames of one update,
   so each of W workers gets ``batch_size / W``
   (:func:`returnn_ray.data.batching.per_worker_batch_size`: returnn-ray's update over W workers
   equals one worker accumulating their batches).
4. **forward**: ``++task forward``, the eval set through the model into an HDF file, on all nodes.
5. **search**: ``++task search``, CTC beam search on the eval set; its WER is the result.
   Forward and search run at once, each with half the workers: both need only the trained model,
   and their start-ups (actors loading torch and the model) overlap.

Ray starts once: unless ``--address`` or ``RAY_ADDRESS`` names a cluster, a local head
(``ray start --head`` with a private temp dir and free ports) serves every stage and is stopped
at the end by killing exactly its processes (never ``ray stop``, which stops every Ray of the
user); it starts while the data stage runs, which needs no Ray (the table counts only the wait
after the data as Ray's start-up), and so do the helper actors Ray Train and Ray Data start in a
cluster on first use (:class:`returnn_ray.cluster.head.Helpers`: else the training run's and
forward's start-ups start them). Meanwhile this script imports torch, Ray and returnn_ray once; on Linux each
returnn-ray command then runs in a fork of it (:mod:`returnn_ray.experiment.warm_start`: the same command,
its own process and Ray job, without 3-4 s of imports each; ``--cold`` starts them afresh).
At the end a table gives each stage's wall time and how much of it was Ray start-up or
scheduling rather than work, estimated from the events each stage writes to its metrics file
(``<out>/logs/<stage>.metrics.jsonl``; a sweep trial's in its directory; :mod:`returnn_ray.metrics`,
:func:`returnn_ray.experiment.stages.print_table`); the WER comes from the search's. Rerunning the same
command reuses what is done (data, sweep trials, checkpoints). ``--scale`` multiplies the corpus
sizes and the epochs (by its square root).
On a cluster of several nodes ``--out`` must be on storage every node reads (datasets, models);
inside ``ray job submit`` RAY_ADDRESS is set already.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Sequence

from returnn_ray.cluster import ray_internals
from returnn_ray.cluster.head import Helpers, start_head, stop_head, use_head
from returnn_ray.cluster.start import usable_cpus
from returnn_ray.data.batching import per_worker_batch_size
from returnn_ray.experiment import warm_start
from returnn_ray.experiment.stages import (
    Command, CommandOutput, Runner, StageFailed, StageResult, busy_seconds, inference_work, print_table, training_interval,
)
from returnn_ray.metrics import FILE_NAME, read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
# `ray submit cluster.yaml experiments/asr.py` copies only this file (to ~ on the head); the config
# then comes from the project checkout returnn_ray is installed from (cluster.yaml's file mount).
CONFIG = os.path.join(HERE, "asr.config")
if not os.path.exists(CONFIG):
    import returnn_ray

    CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(returnn_ray.__file__))), "experiments", "asr.config")
DEFAULT_OUT = "out/asr"  # asr.config's default asr_dir
BIN = os.path.dirname(sys.executable)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The experiment's sizes, from ``--scale`` (and the options that override them)."""

    train_seqs: int
    dev_seqs: int
    eval_seqs: int
    epochs: int
    sweep_epochs: int
    lstm_units: int
    lstm_layers: int
    grid: tuple[str, ...]
    """``key=v1,v2`` for ``returnn-ray sweep --grid``."""
    defaults: dict
    """learning_rate and batch_size (frames per update) when the sweep is skipped or leaves them out."""
    max_seqs: int = 32
    """Seqs per batch at most (asr.config's 32); on GPUs high enough that the swept frames bind."""

    @classmethod
    def for_scale(cls, scale: float) -> "Plan":
        """Scale 1: a few minutes on 2 CPU cores. From scale 4 up, a model and batches for GPUs.

        >>> p = Plan.for_scale(1); (p.train_seqs, p.epochs, p.lstm_units, p.grid, p.max_seqs)
        (600, 16, 96, ('learning_rate=0.005', 'batch_size=1000,1500'), 32)
        >>> p = Plan.for_scale(4); (p.train_seqs, p.epochs, p.sweep_epochs, p.lstm_units, p.lstm_layers, p.max_seqs)
        (2400, 16, 6, 256, 3, 256)
        >>> Plan.for_scale(10).sweep_epochs
        3
        """
        if scale <= 0:
            raise ValueError(f"--scale must be > 0, got {scale}")
        gpu_sized = scale >= 4
        # A short trial prefers a low learning rate (CTC first learns to emit blanks, where a small
        # step scores best), so the grid starts at rates that do well over the whole training.
        # On CPUs (scale < 4) two trials, one per core at once, over the batch size only: 1000
        # frames per update is ahead of 1500 after one epoch and stays ahead (dev frame error 0.18
        # vs 0.24 after 8 epochs), while 3000 frames (0.39) and rate 0.01 (still at the blank
        # plateau after 9 epochs) lag; a second round of trials would cost more than it tells.
        # On GPUs the 3x256 BLSTM needs ~150-200 updates to leave the blank plateau (on CPUs, 2500
        # frames per update: dev error still 100% after 105 updates at either rate; at 140 updates
        # 0.98 with rate 0.01, 1.00 with 0.004; at 175-210 updates 0.85 vs 0.99), so the trials
        # run >= ~400 updates (24 / scale epochs, at least 2: 6 at scale 4, where 5000 frames make
        # 75 steps per epoch) at rates 0.004 and 0.01. max_seqs 256 never binds before the swept
        # frames (asr.config's 32 did: 10000 and 20000 frames made the same 75 batches).
        rates = (0.004, 0.01) if gpu_sized else (0.005,)
        batches = (2500, 5000) if gpu_sized else (1000, 1500)
        return cls(
            train_seqs=max(8, round(600 * scale)),
            dev_seqs=max(4, round(100 * scale)),
            eval_seqs=max(4, round(100 * scale)),
            # CPU scale: 16 epochs of ~6-9 s (dev frame error ~0.08 from epoch 13 on, no gain after
            # 16 in a 20-epoch run); the fixed start-up of the stages is then a smaller share.
            epochs=max(1, round((8 if gpu_sized else 16) * math.sqrt(scale))),
            sweep_epochs=max(2, math.ceil(24 / scale)) if gpu_sized else 1,
            lstm_units=256 if gpu_sized else 96,
            lstm_layers=3 if gpu_sized else 2,
            grid=("learning_rate=" + ",".join(map(str, rates)), "batch_size=" + ",".join(map(str, batches))),
            defaults={"learning_rate": rates[0], "batch_size": batches[0]},
            max_seqs=256 if gpu_sized else 32,
        )

    def config_args(self) -> list[str]:
        """``++key value`` for what differs from asr.config's defaults (2x96 BLSTM, max_seqs 32)."""
        args = []
        if (self.lstm_units, self.lstm_layers) != (96, 2):
            args += ["++lstm_units", str(self.lstm_units), "++lstm_layers", str(self.lstm_layers)]
        if self.max_seqs != 32:
            args += ["++max_seqs", str(self.max_seqs)]
        return args


# -- the Ray head ----------------------------------------------------------------------------------


def cluster_resources(address: str) -> dict[str, float]:
    import ray

    ray_internals.quiet_auth_notice()
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()


# -- the experiment --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:5]),
    )
    parser.add_argument("--scale", type=float, default=1.0,
                        help="corpus sizes x SCALE, epochs x sqrt(SCALE); from 4 up a GPU-sized model (default 1)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where data, models and outputs go (default {DEFAULT_OUT})")
    parser.add_argument("--workers", type=int,
                        help="DDP workers and forward/search actors (default: every GPU, else every CPU)")
    parser.add_argument("--address", help="Ray cluster to use (default: RAY_ADDRESS, else a local head started here)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local head (default: all cores)")
    parser.add_argument("--skip-sweep", action="store_true", help="train with the default learning rate and batch size")
    parser.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                        help="sweep these values instead of the default grid (repeatable)")
    parser.add_argument("--epochs", type=int, help="training epochs (default from --scale)")
    parser.add_argument("--sweep-epochs", type=int, help="epochs of each sweep trial (default from --scale)")
    parser.add_argument("--cold", action="store_true",
                        help="start each returnn-ray command as a new process instead of a warm fork of this one "
                             "(which imported torch and Ray once; Linux)")
    parser.add_argument("--config", default=CONFIG, help=f"the RETURNN config every stage runs (default {CONFIG})")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    if not os.path.isfile(args.config):
        print(f"asr.py: error: config {args.config!r} does not exist; give --config a RETURNN config file "
              "(experiments/asr.config is the default)", file=sys.stderr)
        raise SystemExit(2)
    return args


def grid_points(grid: Sequence[str]) -> list[dict]:
    """Every combination of ``key=v1,v2`` values.

    >>> grid_points(["learning_rate=0.002,0.005", "batch_size=1500"])
    [{'learning_rate': 0.002, 'batch_size': 1500}, {'learning_rate': 0.005, 'batch_size': 1500}]
    """
    points: list[dict] = [{}]
    for text in grid:
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise SystemExit(f"asr.py: error: --grid {text!r}: expected KEY=V1,V2")
        points = [{**p, key.strip(): ast.literal_eval(v.strip())} for p in points for v in values.split(",")]
    return points


def write_variants(points: Sequence[dict], directory: str) -> dict[str, dict]:
    """One line-based config per grid point, for ``returnn-ray sweep --variants``; path -> values.

    Not ``--grid`` for each key: a trial of a grid over two keys is named ``a=1,b=2``, and
    returnn-ray reads the comma in the trial's ``++log`` path as a list separator.
    """
    os.makedirs(directory, exist_ok=True)
    variants = {}
    for values in points:
        name = "+".join(f"{k}={v}" for k, v in values.items())
        path = os.path.join(directory, f"{name}.config")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{k} {v!r}\n" for k, v in values.items())
        variants[path] = values
    return variants


def check_out_dir(out: str, identity: dict) -> None:
    """An output dir serves one experiment: a rerun with other sizes would resume the wrong models."""
    path = os.path.join(out, "experiment.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != identity:
            changed = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in identity.items() if old.get(k) != v)
            sys.exit(f"asr.py: error: {out} holds an experiment with other settings ({changed}); "
                     f"choose another --out or delete it")
    os.makedirs(out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(identity, f, indent=1)


def hdf_num_seqs(path: str) -> int | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return len(f["seqTags"])
    except (OSError, KeyError):
        return None


class Experiment:
    """The stages, each run as the command a user would type, with what they share."""

    def __init__(self, plan: Plan, out: str, runner: Runner, config: str = CONFIG):
        self.plan, self.out, self.runner = plan, out, runner
        self.cli = [os.path.join(BIN, "returnn-ray")]
        if not os.path.exists(self.cli[0]):
            self.cli = [sys.executable, "-m", "returnn_ray"]
        relative = os.path.relpath(config)
        self.config = config if relative.startswith("..") else relative
        self.base = ["++log_verbosity", "4"]  # 4: start-up timings for people (the table reads the metrics files)
        if os.path.normpath(out) != os.path.normpath(DEFAULT_OUT):
            self.base += ["++asr_dir", out]
        self.base += plan.config_args()
        self.workers = 1

    def returnn_ray(self, stage: str, args: list[str]) -> CommandOutput:
        return self.runner.run(stage, self.cli + args, ["returnn-ray", *args], returnn_ray_args=args)

    def metrics_file(self, stage: str) -> str:
        """Where a stage's events go (``++metrics_file``): next to its log."""
        return os.path.join(self.runner.log_dir, f"{stage}.metrics.jsonl")

    def events(self, stage: str, result: CommandOutput) -> list[dict]:
        """The events of this run of the stage (a rerun appends to the file)."""
        return read_metrics(self.metrics_file(stage), since=result.start)

    def data(self) -> StageResult:
        start = time.monotonic()
        data = os.path.join(self.out, "data")
        os.makedirs(data, exist_ok=True)  # the corpus writer does not make it
        p = self.plan
        # The training corpus first, alone: the Ray head starts beside it and takes the other core.
        # Then the small dev and eval corpora at once, on the cores the head has left by then.
        for group in ((("train", p.train_seqs, 1),), (("dev", p.dev_seqs, 2), ("eval", p.eval_seqs, 3))):
            commands = []
            for name, num, seed in group:
                path = os.path.join(data, f"{name}.hdf")
                if hdf_num_seqs(path) == num:
                    print(f"== data: {path} is there ({num} seqs)", flush=True)
                    continue
                cmd = ["-m", "returnn_ray.corpus.synthetic", path, "--num-seqs", str(num), "--seed", str(seed)]
                commands.append(Command("data", [sys.executable, *cmd], ["python", *cmd]))
            if commands:
                self.runner.run_together(commands)
        return StageResult("data", time.monotonic() - start, None, "(no Ray)")

    def sweep(self) -> tuple[dict, StageResult]:
        """Short trials of one worker each; returns the best variant's values."""
        sweep_dir = os.path.join(self.out, "sweep")
        variants = write_variants(grid_points(self.plan.grid), os.path.join(sweep_dir, "variants"))
        args = ["sweep", self.config, "--variants", *variants, "--dir", sweep_dir, *self.base,
                "++num_epochs", str(self.plan.sweep_epochs), "++ray_num_workers", "1"]
        result = self.returnn_ray("sweep", args)
        with open(os.path.join(sweep_dir, "best.json"), encoding="utf-8") as f:
            chosen = os.path.abspath(json.load(f)["values"]["variant"])
        best = next(values for path, values in variants.items() if os.path.abspath(path) == chosen)
        print(f"best: {', '.join(f'{k} {v}' for k, v in best.items())}", flush=True)
        # each trial writes its metrics file in its own directory
        trial_files = glob.glob(os.path.join(glob.escape(sweep_dir), "trials", "*", FILE_NAME))
        intervals = [iv for path in trial_files if (iv := training_interval(read_metrics(path, since=result.start)))]
        work = busy_seconds(intervals)
        how = f"time with a trial between its first step and last epoch's end ({len(intervals)} trials)"
        return best, StageResult("sweep", result.wall, result.wall - work, how)

    def train(self, values: dict) -> StageResult:
        """DDP over all workers; the swept batch_size is the frames of one update, split over them."""
        args = [self.config, *self.base, "++num_epochs", str(self.plan.epochs), "++ray_num_workers", str(self.workers),
                "++metrics_file", self.metrics_file("train")]
        for key, value in values.items():
            if key == "batch_size":
                value = per_worker_batch_size(value, self.workers)
            args += [f"++{key}", str(value)]
        result = self.returnn_ray("train", args)
        interval = training_interval(self.events("train", result))
        work = interval[1] - interval[0] if interval else 0.0
        return StageResult("train", result.wall, result.wall - work, "first training step .. last epoch's end")

    def inference_args(self, task: str, workers: int) -> list[str]:
        """``forward`` or ``search`` of the eval set with ``workers`` actors over all nodes."""
        args = [self.config, "++task", task, *self.base, "++ray_num_workers", str(workers),
                "++metrics_file", self.metrics_file(task)]
        if task == "forward":
            args += ["++forward_override_hdf_output", "True"]  # a rerun writes it anew
        return args

    def inference(self) -> tuple[StageResult, list[dict]]:
        """Forward and search at once (both need only the trained model), each with half the
        workers, as two returnn-ray commands; one row of the table, with the search's events.

        Their work is each one's seqs over its seqs/s after the first result, ending at its
        ``inference_end``; where the two overlap, that time counts once."""
        tasks = ("forward", "search")
        each = max(1, self.workers // len(tasks))
        argss = {task: self.inference_args(task, each) for task in tasks}
        outputs = self.runner.run_together(
            [Command(task, self.cli + args, ["returnn-ray", *args], args) for task, args in argss.items()]
        )
        events = {task: self.events(task, out) for task, out in zip(tasks, outputs)}
        start = min(out.start for out in outputs)
        wall = max(out.start + out.wall for out in outputs) - start
        intervals = []
        for task in tasks:
            end = next((e["time"] for e in reversed(events[task]) if e["event"] == "inference_end"), None)
            work = inference_work(events[task])
            if end is None or work is None:
                return StageResult("fwd+search", wall, None, "(work not known)"), events["search"]
            intervals.append((end - work, end))
        overhead = max(0.0, wall - busy_seconds(intervals))
        how = f"at once, {each} actor(s) each; seqs / (seqs/s after the first result), overlap once"
        return StageResult("fwd+search", wall, overhead, how), events["search"]


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The sizes of ``--scale``, with what ``--epochs``, ``--sweep-epochs`` and ``--grid`` override."""
    plan = Plan.for_scale(args.scale)
    return dataclasses.replace(
        plan,
        epochs=args.epochs or plan.epochs,
        sweep_epochs=args.sweep_epochs or plan.sweep_epochs,
        grid=tuple(args.grid) if args.grid else plan.grid,
    )


@dataclasses.dataclass
class LocalHead:
    """The Ray head this script started (None: a cluster was named), for stopping it at the end."""

    head: object | None = None
    temp_dir: str | None = None

    def stop(self) -> StageResult | None:
        if self.head is None:
            return None
        t = time.monotonic()
        stop_head(self.head, self.temp_dir)
        return StageResult("ray stop", time.monotonic() - t, time.monotonic() - t, "(all shut-down)")


def connect_ray(args: argparse.Namespace, env: dict, exp: Experiment, local: LocalHead, meanwhile=lambda: None):
    """Ray, once for all stages: the cluster named, else a local head (kept in ``local``), started
    in a thread while ``meanwhile`` runs here (the data stage: the head does not need its files).
    Meanwhile this process also imports what every returnn-ray command needs, once (``runner.warm``:
    the stages are its forks). Sets the workers and the address of every stage. Returns what
    ``meanwhile`` returned and the Ray stage, whose wall time is only the wait after ``meanwhile``."""
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:  # before the imports: Ray reads it then, and the stages run with it
        local.temp_dir = f"/tmp/asr-ray-{os.getpid()}"  # short: Ray's socket paths live under it
        use_head(env, local.temp_dir)
        use_head(os.environ, local.temp_dir)
    preloading = warm_start.Preload() if exp.runner.warm else None
    head = None if address else _HeadStart(local.temp_dir, args.num_cpus or usable_cpus())
    try:
        before = meanwhile()
    finally:
        t = time.monotonic()
        if head is not None:  # also when meanwhile failed: the head must be stopped (local.stop)
            local.head, address = head.join()
    if head is not None:
        print(f"\n== ray: a local head for all stages (started with the data stage; {time.monotonic() - t:.1f} s after it)",
              flush=True)
    else:
        print(f"\n== ray: using the cluster at {address}", flush=True)
    env["RAY_ADDRESS"] = address
    resources = head.resources() if head is not None else None  # the helpers' process asked the head
    if preloading is not None:  # this process stays free of Ray: its forks run the stages
        preloaded = preloading.join()
        resources = resources or warm_start.call_in_fork(cluster_resources, address)
    else:
        resources = resources or cluster_resources(address)
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    exp.workers = args.workers or gpus or cpus
    print(f"cluster {address}: {cpus} CPUs, {gpus} GPUs -> {exp.workers} worker(s)", flush=True)
    exp.base += ["++ray_address", address]
    how = "(all start-up, after the data stage it ran alongside)"
    if preloading is not None:
        print(f"warm start: torch, Ray and returnn_ray imported once in {preloaded:.1f} s, "
              "each returnn-ray command below runs in a fork of this process", flush=True)
        how = "(all start-up after the data stage; with the imports of the warm start and Ray's helpers)"
    wall = time.monotonic() - t
    return before, StageResult("ray start" if local.head is not None else "ray attach", wall, wall, how)


def may_have_gpus() -> bool:
    """Whether this machine shows an NVIDIA or AMD GPU driver (a look at /proc and /dev, not Ray's
    count: importing Ray for it held up the head's start by ~0.4 s)."""
    nvidia = "/proc/driver/nvidia/gpus"
    return (os.path.isdir(nvidia) and bool(os.listdir(nvidia))) or os.path.exists("/dev/kfd")


class _HeadStart(threading.Thread):
    """``start_head`` in a thread (it waits on ``ray start``, a process); :meth:`join` returns its
    result or raises its error."""

    def __init__(self, temp_dir: str, num_cpus: int):
        super().__init__(name="ray-head-start", daemon=True)
        self.args, self.result, self.error, self.helpers = (temp_dir, num_cpus), None, None, None
        self.start()

    def run(self) -> None:
        try:
            self.helpers = Helpers()  # imports Ray while the head starts
            # With GPUs here the sweep's trials run Ray Train, whose placement-group cleaner needs
            # the dashboard's State API (returnn_ray.training.ray_trainer); else no dashboard.
            self.result = start_head(*self.args, dashboard=may_have_gpus())
        except BaseException as exc:  # noqa: BLE001 - raised by join()
            self.error = exc
            return
        try:
            self.helpers.start(self.result[1])
        except OSError:  # the helpers' process died already: join() says so; only a speed-up is lost
            pass

    def join(self, timeout: float | None = None):
        """The head and its address, once the helper actors it started are up (or failed: then the
        runs start them, as on any cluster, and a line says so)."""
        super().join(timeout)
        ok, output = self.helpers.join() if self.helpers is not None else (True, "")
        if self.error is not None:
            raise self.error
        if not ok:
            print(f"(Ray's helper actors not started ahead: {output.splitlines()[-1] if output else ''})", flush=True)
        return self.result

    def resources(self) -> dict[str, float] | None:
        """The head's resources, as the helpers' process saw them (None if it did not say); after :meth:`join`."""
        return self.helpers.resources if self.helpers is not None else None


def run_stages(args: argparse.Namespace, exp: Experiment, best: dict, stages: list[StageResult]) -> dict | None:
    """Sweep (unless skipped; ``best`` takes its values), train, forward, search; the WER scores."""
    if not args.skip_sweep:
        values, stage = exp.sweep()
        best.update(values)
        stages.append(stage)
    stages.append(exp.train(best))
    stage, search = exp.inference()
    stages.append(stage)
    return next((e["scores"] for e in search if e["event"] == "inference_end" and "wer" in e["scores"]), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from_args(args)
    check_out_dir(args.out, json.loads(json.dumps({"scale": args.scale, **dataclasses.asdict(plan)})))
    start = time.monotonic()
    env = dict(os.environ)
    runner = Runner(os.path.join(args.out, "logs"), env, warm=not args.cold and warm_start.available())
    exp = Experiment(plan, args.out, runner, args.config)
    stages: list[StageResult] = []
    best = dict(plan.defaults)
    local = LocalHead()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        data, ray_start = connect_ray(args, env, exp, local, meanwhile=exp.data)
        stages += [data, ray_start]
        wer = run_stages(args, exp, best, stages)
    except StageFailed as exc:
        print(f"asr.py: error: {exc}", file=sys.stderr)
        return exc.code
    except RuntimeError as exc:  # the local head did not start
        print(f"asr.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        runner.stop()
        print("asr.py: interrupted; rerun the same command to go on", file=sys.stderr)
        return 130
    finally:
        stopped = local.stop()
        if stopped is not None:
            stages.append(stopped)

    print_table(stages)
    whole = time.monotonic() - start
    ray_part = sum(s.overhead for s in stages if s.overhead is not None)
    print(f"whole experiment: {whole:.1f} s, of it Ray start-up/scheduling {ray_part:.1f} s ({100 * ray_part / whole:.0f}%)")
    if wer is None:
        print("WER: the search printed none (no reference transcriptions?)")
        return 1
    print(f"WER {wer['wer']:.2f}% ({wer['word_edits']}/{wer['words']} words) on the eval set ({plan.eval_seqs} seqs); "
          f"{plan.lstm_layers}x{plan.lstm_units} BLSTM-CTC, {plan.epochs} epoch(s), {exp.workers} worker(s), "
          + ", ".join(f"{k} {v}" for k, v in best.items()) + " (batch_size: frames per update)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
