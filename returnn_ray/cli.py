"""The ``returnn-ray`` command line.

::

    returnn-ray CONFIG [CONFIG2 ...] [++key value ...] [-x task] [-n num_epochs] ...
    returnn-ray dump-dataset CONFIG [++key value ...] [--dataset train] [--epoch 1] [--shard K/W] [--batches]

Config files are the leading arguments up to the first one starting with ``-`` or ``+``.
The run dispatches on the ``task`` setting through :data:`TASKS`. A
:class:`~returnn_ray.errors.UserError` prints one line, ``returnn-ray: error: <message>``,
and exits with its code (2); ``++debug True`` or ``--debug`` adds the traceback. Any other
exception is a bug and shows its traceback.

Importing this module is cheap: task modules (torch, Ray) are imported when a task runs.
"""

# Imports inside functions: Ray loads only where a command runs on it (start-up time).
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import traceback
from typing import Callable, Literal, Sequence

from returnn_ray import __version__
from returnn_ray.cluster import interrupts, ray_internals, reaper
from returnn_ray.cluster.placement import lacks_local_gpu
from returnn_ray.cluster.ray_internals import user_message
from returnn_ray.config import Config, Settings, load_config, load_settings, set_global_config, warn_unread_keys
from returnn_ray.config.command_line import OPTION_KEYS, split_command_line
from returnn_ray.errors import UserError

USAGE = """\
usage: returnn-ray CONFIG [CONFIG2 ...] [++key value ...] [options]
       returnn-ray dump-dataset CONFIG [++key value ...] [--dataset NAME] [--epoch N] [--shard K/W] [--batches]
       returnn-ray sweep CONFIG [++key value ...] --grid KEY=V1,V2 [--grid ...] [--variants FILE ...] [sweep options]

Runs a RETURNN config (task train, forward, search, eval) with Ray.

  CONFIG            config file: Python (starts with #! or ends in .py), JSON (starts with {),
                    or line-based 'key value'
  ++key value       set a config key (a Python literal if the key holds a typed value;
                    write +-0.1 for -0.1)
  -x, --task        task                     -n, --num_epochs     num_epochs
  -b, --batch_size  batch_size               -r, --learning_rate  learning_rate
  -z, --max_sequences max_seqs               -L, --load           load
  -e, --epoch       epoch (= load_epoch)     -u, --device         device (cpu/gpu)
  -v, --verbose     log_verbosity            -i, --save_interval  save_interval
  -k, --output_file output_file              -l, --log            log
  -E, --eval        eval                     --config FILE        load another config file
  --debug           show tracebacks (same as ++debug True)
  -V, --version     print the version
  -h, --help        print this help

dump-dataset options:
  --dataset NAME    train, dev, eval, or a name in eval_datasets (default: train)
  --epoch N         epoch whose seq order to dump (default: 1)
  --shard K/W       only the part of rank K of W workers
  --batches         print the batch plan instead of the sequences

sweep options (each also a config key, see the README):
  --grid KEY=V1,V2  try these values of any config key (repeatable; a grid over all of them)
  --variants FILE.. one trial per config file, loaded after CONFIG
  --num-samples N   sweep_num_samples         --metric KEY        sweep_metric (default: first dev_ score)
  --mode min|max    sweep_mode                --scheduler fifo|asha  sweep_scheduler
  --max-concurrent N  sweep_max_concurrent_trials   --dir DIR     sweep_dir
"""

_SWEEP_OPTIONS = {
    "--num-samples": "sweep_num_samples",
    "--metric": "sweep_metric",
    "--mode": "sweep_mode",
    "--scheduler": "sweep_scheduler",
    "--max-concurrent": "sweep_max_concurrent_trials",
    "--dir": "sweep_dir",
}

TaskFn = Callable[[Settings, Config], int]

MAX_SHARDS = 1 << 20
"""The most workers ``dump-dataset --shard K/W`` can split for (the plan holds one list per worker)."""


def _task_module(name: str, module: str) -> TaskFn:
    """A task that imports ``module`` when it runs and calls its ``run(settings, config)``."""

    def run(settings: Settings, config: Config) -> int:
        return _import_task(name, module).run(settings, config)

    run.__name__ = f"run_{name.replace('-', '_')}"
    run.__qualname__ = run.__name__
    return run


def _import_task(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a missing task module means "not available"; a missing import inside it is a bug.
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UserError(f"task {name!r} is not available yet in this returnn-ray version") from exc
        raise


#: Task name -> function run with the settings and the config; it returns the exit code.
#: Task modules add to or replace entries (:func:`register_task`).
TASKS: dict[str, TaskFn] = {
    name: _task_module(name, f"returnn_ray.tasks.{name}") for name in ("train", "forward", "search", "eval", "sweep")
}


def register_task(name: str, fn: TaskFn) -> None:
    """Makes ``task = name`` run ``fn(settings, config)``."""
    TASKS[name] = fn


@dataclasses.dataclass(frozen=True)
class DumpDatasetArgs:
    """Options of ``returnn-ray dump-dataset``."""

    dataset: str = "train"
    """Dataset to dump: ``train``, ``dev``, ``eval``, or a name in ``eval_datasets``."""
    epoch: int = 1
    """Epoch whose seq order (and batch plan) to dump."""
    shard: tuple[int, int] | None = None
    """``(rank, num_workers)``: only what that rank would read; ``None``: everything."""
    batches: bool = False
    """Dump the batch plan instead of the sequences."""


@dataclasses.dataclass(frozen=True)
class Invocation:
    """A parsed command line."""

    action: Literal["run", "help", "version"]
    """``run`` a task, or print the help or the version."""
    config_files: tuple[str, ...] = ()
    """Config files, in order."""
    config_args: tuple[str, ...] = ()
    """Options for :meth:`Config.parse_cmd_args` (``++key value``, short options)."""
    dump: DumpDatasetArgs | None = None
    """Set for ``returnn-ray dump-dataset``."""
    sweep_grid: tuple[str, ...] = ()
    """``returnn-ray sweep --grid KEY=V1,V2`` texts."""
    sweep_variants: tuple[str, ...] = ()
    """``returnn-ray sweep --variants FILE ...``."""
    debug: bool = False
    """``--debug`` or ``++debug <true>`` was given."""


def parse_argv(argv: Sequence[str]) -> Invocation:
    """Parses the command line (without running anything).

    >>> inv = parse_argv(["dump-dataset", "a.config", "++x", "1", "--epoch", "3", "--shard", "1/4"])
    >>> inv.config_files, inv.config_args, inv.dump
    (('a.config',), ('++x', '1'), DumpDatasetArgs(dataset='train', epoch=3, shard=(1, 4), batches=False))
    """
    argv = list(argv)
    dump = None
    sweep = argv[:1] == ["sweep"]
    grid: list[str] = []
    variants: list[str] = []
    if argv[:1] == ["dump-dataset"]:
        argv = argv[1:]
        dump = DumpDatasetArgs()
    if sweep:
        argv = argv[1:]
    files, rest = split_command_line(argv)
    config_args: list[str] = ["++task", "sweep"] if sweep else []
    debug = False
    dump_opts: dict[str, str | bool] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg in ("-h", "--help"):
            return Invocation("help")
        if arg in ("-V", "--version"):
            return Invocation("version")
        if arg == "--debug":
            debug = True
            config_args += ["++debug", "True"]
            i += 1
            continue
        if sweep and name in ("--grid", "--variants", *_SWEEP_OPTIONS):
            values = [inline] if inline else []
            while i + 1 < len(rest) and not rest[i + 1].startswith(("--", "++")) and (name == "--variants" or not values):
                values.append(rest[i + 1])
                i += 1
            if not values:
                raise UserError(f"sweep: {name} needs a value")
            if name == "--grid":
                grid += values
            elif name == "--variants":
                variants += values
            else:
                config_args += [f"++{_SWEEP_OPTIONS[name]}", values[0]]
            i += 1
            continue
        if dump is not None and arg == "--batches":
            dump_opts["batches"] = True
            i += 1
            continue
        if dump is not None and name in ("--dataset", "--epoch", "--shard"):
            if not inline:
                if i + 1 >= len(rest):
                    raise UserError(f"dump-dataset: {name} needs a value")
                inline = rest[i + 1]
                i += 1
            dump_opts[name[2:]] = inline
            i += 1
            continue
        # ++key value, or an option that takes a value: copy both, Config checks them.
        takes_value = arg.startswith("++") or arg == "--config" or (arg in OPTION_KEYS)
        if arg.startswith("++") and arg[2:] == "debug" and i + 1 < len(rest):
            debug = rest[i + 1].strip().lower() in ("true", "1", "yes", "on")
        config_args.append(arg)
        if takes_value and i + 1 < len(rest) and not rest[i + 1].startswith("++"):
            config_args.append(rest[i + 1])
            i += 1
        i += 1
    has_config = files or "--config" in config_args or any(a.startswith("--config=") for a in config_args)
    if not has_config and not variants:
        raise UserError("no config file given (usage: returnn-ray CONFIG [++key value ...]; --help for more)")
    if dump is not None:
        dump = _dump_args(dump_opts)
    return Invocation(
        "run", tuple(files), tuple(config_args), dump, debug=debug, sweep_grid=tuple(grid), sweep_variants=tuple(variants)
    )


def _dump_args(opts: dict[str, str | bool]) -> DumpDatasetArgs:
    epoch_text = str(opts.get("epoch", "1"))
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise UserError(f"dump-dataset: --epoch must be an int >= 1, got {epoch_text!r}") from None
    if epoch < 1:
        raise UserError(f"dump-dataset: --epoch must be an int >= 1, got {epoch_text!r}")
    shard = None
    if "shard" in opts:
        text = str(opts["shard"])
        try:
            rank, num = (int(x) for x in text.split("/"))
        except ValueError:
            raise UserError(f"dump-dataset: --shard must be K/W (rank K of W workers), got {text!r}") from None
        if not 0 <= rank < num:
            raise UserError(f"dump-dataset: --shard K/W needs 0 <= K < W, got {text!r}")
        if num > MAX_SHARDS:
            raise UserError(f"dump-dataset: --shard K/W needs W <= {MAX_SHARDS} workers, got {text!r}")
        shard = (rank, num)
    return DumpDatasetArgs(str(opts.get("dataset", "train")), epoch, shard, bool(opts.get("batches", False)))


def _truthy(value: object) -> bool:
    if isinstance(value, list):  # untyped: a list of strings
        value = ",".join(value)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def run_dump_dataset(settings: Settings, config: Config, args: DumpDatasetArgs) -> int:
    """Runs ``returnn_ray.tasks.dump_dataset.run`` with the parsed options."""
    module = _import_task("dump-dataset", "returnn_ray.tasks.dump_dataset")
    return module.run(settings, config, dataset=args.dataset, epoch=args.epoch, shard=args.shard, batches=args.batches)


def run_sweep(settings: Settings, config: Config, inv: Invocation) -> int:
    """Runs ``returnn_ray.tasks.sweep.run`` with the base command line and the swept values."""
    module = _import_task("sweep", "returnn_ray.tasks.sweep")
    for path in config.files:
        if os.path.abspath(path) in config.snapshots:
            raise UserError(
                f"sweep: config {path!r} is a pipe, which can be read only once; each trial reads its config files"
                " again: write it to a file and give that"
            )
    files = tuple(os.path.abspath(f) for f in inv.config_files)  # trials run in other processes
    variants = tuple(os.path.abspath(f) for f in inv.sweep_variants)
    args = module.SweepArgs(files, inv.config_args, inv.sweep_grid, variants)  # a trial adds ++task train
    return module.run(settings, config, args)


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def _setup_logging() -> None:
    """Our own messages as ``returnn-ray: warning: ...`` lines on stderr (once per process)."""
    log = logging.getLogger("returnn_ray")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LowerLevelFormatter("returnn-ray: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def check_log_files(paths: Sequence[str]) -> None:
    """Each ``log`` file can be appended to (its directory exists): checked before anything runs,
    without creating the file (a run that stops at a later check leaves nothing behind)."""
    for path in paths:
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UserError(f"log file {path!r} is a directory; fix `log` (-l)")
        if not os.path.isdir(directory):
            raise UserError(f"the directory {directory!r} of log file {path!r} does not exist; create it or fix `log` (-l)")
        target = path if os.path.exists(path) else directory
        if not os.access(target, os.W_OK):
            raise UserError(f"log file {path!r} is not writable (permission denied); fix `log` (-l)")


def check_local_gpu(settings: Settings) -> None:
    """``device gpu`` for a run in this process (local mode: train or eval with one
    worker, no cluster) needs a GPU here; else it would quietly run on the CPU.

    Runs on Ray workers are checked when Ray places them (too few GPUs is an error there).
    """
    if lacks_local_gpu(settings.run):
        raise UserError(
            "device gpu: this machine has no GPU that torch can use (torch.cuda.is_available() is False);"
            " use ++device cpu, or run on a Ray cluster with GPUs (++ray_address, ++ray_num_workers)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``returnn-ray``; returns the exit code.

    Ctrl-C (SIGINT) and SIGTERM end the run with one line and exit code 130 / 143; every file
    written so far is complete (all writes are atomic), so the same command resumes.
    """
    ray_before = _ray_connected()
    with interrupts.installed():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:
            what, code = ("terminated (SIGTERM)", 143) if interrupts.was_terminated(exc) else ("interrupted (Ctrl-C)", 130)
            print(
                f"returnn-ray: {what}: checkpoints and outputs written so far are complete; "
                "rerun the same command to resume",
                file=sys.stderr,
            )
            return code
        finally:
            if not ray_before:
                _stop_ray_of_this_command()


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running here
    return ray is not None and ray.is_initialized()


def _stop_ray_of_this_command() -> None:
    """The Ray this command started for itself goes now, at once, not in Ray's exit hook: this
    process disconnects and SIGKILLs Ray's daemons and everything below them
    (:class:`~returnn_ray.cluster.ray_internals.RayOfOurs`,
    :func:`~returnn_ray.cluster.reaper.kill_trees`), as ``ray stop --force`` would; Ray's own way
    took 1.4-1.7 s on 2 cores. Ctrl-C and SIGTERM wait for this ~0.1 s. A cluster it joined is
    left as it is."""
    import signal
    import threading

    ours = ray_internals.RayOfOurs.take_over() if _ray_connected() else None
    if ours is None:  # none, or one this process joined: Ray's exit hook as before
        return
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        pids = ours.pids()
        ours.disconnect()
        reaper.kill_trees(pids)
        ours.clean_up()
        reaper.release()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _setup_logging()
    debug = "--debug" in argv
    try:
        if not argv:
            print(USAGE, file=sys.stderr, end="")
            return 2
        inv = parse_argv(argv)
        debug = inv.debug
        if inv.action == "help":
            print(USAGE, end="")
            return 0
        if inv.action == "version":
            print(f"returnn-ray {__version__}")
            return 0
        config = load_config(inv.config_files, inv.config_args)
        set_global_config(config)
        debug = debug or _truthy(config.raw("debug"))  # known before the settings are checked
        settings = load_settings(config)
        warn_unread_keys(config)
        check_log_files(settings.run.log)
        if inv.dump is not None or settings.run.task == "dump-dataset":
            return run_dump_dataset(settings, config, inv.dump or DumpDatasetArgs())
        check_local_gpu(settings)
        if settings.run.task == "sweep":
            return run_sweep(settings, config, inv)
        task = TASKS.get(settings.run.task)
        if task is None:
            raise UserError(f"task {settings.run.task!r} is not available in this returnn-ray version")
        return int(task(settings, config) or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"returnn-ray: error: {user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `returnn-ray dump-dataset ... | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0
