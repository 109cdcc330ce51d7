"""Every Ray environment variable returnn-ray sets, with its value and the reason, in one table.

Ray reads many settings from the environment, some only when it is imported or when a node
starts, so where a variable is set matters as much as its value: each entry says which
processes get it. A variable the user has set already is left alone (:func:`set_defaults`,
:func:`~returnn_ray.cluster.start.head_env`), except where an entry says otherwise. ``seen_on``
is the Ray version on which the reason was measured or read in Ray's source: check the entry
again when the pin in ``pyproject.toml`` moves. Add a new variable here, never as a string
literal elsewhere (``tests/test_cluster_env.py`` checks that).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, MutableMapping


@dataclasses.dataclass(frozen=True)
class RayEnvVar:
    name: str
    value: str
    """What we set it to; for a value computed per run, how (the code that computes it is named)."""
    reason: str
    where: str
    """Which processes get it, and who sets it."""
    seen_on: str = "2.60.0"

    def as_env(self) -> dict[str, str]:
        return {self.name: self.value}


# --- Ray Train (train, eval, sweep trials): the driver's environment and every worker's ---

TRAIN_HEALTH_CHECK_INTERVAL = RayEnvVar(
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2",
    "Ray Train V2 polls its workers, and drains report(), at this interval; at the default 2 s every"
    " report at the end of an epoch waits up to 2 s (docs/ray.md).",
    "train, eval and sweep: driver (unless set) and Ray Train workers (runtime env)",
)
TRAIN_PREEMPTION_WATCHER = RayEnvVar(
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0",
    "The preemption watcher is for cloud spot nodes; off, a run starts sooner.",
    "train, eval and sweep: driver (unless set) and Ray Train workers (runtime env)",
)
TRAIN_WORKER_GROUP_START_TIMEOUT = RayEnvVar(
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "31536000",
    "A year: Ray Train's placement group waits in Ray's queue, keeping its place, as long as the room takes."
    " At the default 60 s, Ray Train's controller gives the group up and makes a new one, silently and for"
    " ever (controller_failure_limit -1), at the back of the line each time. The driver says when the group"
    " waits, and ray_placement_timeout bounds the wait (cluster/queue.py, Watch).",
    "train, eval and sweep: driver (unless set) and Ray Train workers and controller (runtime env)",
)
CHDIR_TO_TRIAL_DIR = RayEnvVar(
    "RAY_CHDIR_TO_TRIAL_DIR", "0",
    "Ray Train and Tune would run workers and trials in their own artifacts directory; relative paths"
    " in a config (model, HDF files) must mean what they mean for `returnn-ray CONFIG`, as with RETURNN.",
    "train, eval and sweep: driver (unless set) and Ray Train workers (runtime env)",
)

# --- Tune (sweep): the driver, and the trials' actors ---

TUNE_TRIAL_ERRORS = RayEnvVar(
    "TUNE_PRINT_ALL_TRIAL_ERRORS", "0",
    "Tune prints each failed trial's whole traceback (~60 lines) on the sweep's console; the sweep's"
    " table gives its one line, and the trial's train.log the whole.",
    "sweep: driver, unless set",
)
TUNE_THREAD_TIMEOUT = RayEnvVar(
    "TUNE_FUNCTION_THREAD_TIMEOUT_S", "60",
    "Tune gives a finished or stopped trial's thread 2 s to end before its actor runs the next trial;"
    " a stopped Ray Train trial's thread first aborts its run (sweep/reports.py), which can take longer"
    " on a busy node. Past the timeout Tune marks the next trial failed without running it.",
    "sweep: Tune trial actors (runtime env), unless set",
)

AIR_NEW_OUTPUT = RayEnvVar(
    "RAY_AIR_NEW_OUTPUT", "0",
    "Tune's new console output prints its experiment box and paths in Ray's temp dir even at"
    " verbose=0; the legacy reporter is silent there. The sweep prints its own table at the end.",
    "sweep: driver, unless set",
)

# --- Ray Data actors (forward, search): the driver ---

BACKEND_LOG_LEVEL = RayEnvVar(
    "RAY_BACKEND_LOG_LEVEL", "fatal",
    "Ray's C++ warning that an actor pool's constructor arguments live in the object store:"
    " nothing a returnn-ray user can act on.",
    "forward and search: driver, unless set or ++debug True",
)

# --- A Ray node that returnn-ray starts (embedded Ray, private head): the raylet ---

WORKER_SOFT_LIMIT = RayEnvVar(
    "RAY_num_workers_soft_limit", "4 x the node's CPUs + 8 (cluster.start.worker_soft_limit)",
    "Ray keeps one idle worker process per CPU and kills the others after 1 s idle: Ray Data's"
    " read-task processes died between epochs and every epoch waited 1-2 s for new ones"
    " (2 CPUs: epochs of 5.7-6.2 s instead of 3.5 s).",
    "embedded Ray and private head: the raylet's environment, unless set",
)
PRESTART_WORKERS = RayEnvVar(
    "RAY_prestart_worker_first_driver", "0",
    "When the first driver connects, Ray starts one idle worker per CPU for plain tasks; nothing of a"
    " run can use them (Ray Train's and Ray Data's processes have runtime envs of their own) and their"
    " start takes CPU from the run's (2 CPUs, DDP over 2: 22.6 s -> 19.6 s to the first step).",
    "embedded Ray and private head: the raylet's environment, unless set",
)

# --- Token authentication of a Ray that returnn-ray starts (docs/ray.md, Authentication) ---

AUTH_MODE = RayEnvVar(
    "RAY_AUTH_MODE", "token",
    "Ray turns token auth on for a local Ray and then needs a token in ~/.ray, which ray.init writes"
    " and `ray start` fails without; a Ray of ours gets a token of its own instead. Joining a cluster"
    " by address: set when ~/.ray/auth_token exists, which Ray does not do by itself then.",
    "embedded Ray (driver, raylet), private head and its drivers; a joining driver with ~/.ray/auth_token;"
    " never when the user set it (`disabled` turns auth off)",
)
AUTH_TOKEN = RayEnvVar(
    "RAY_AUTH_TOKEN", "64 random hex digits (cluster.start.private_auth_env)",
    "The token of an embedded Ray, known only to its own processes; Ray reads it before any file.",
    "embedded Ray: driver and raylet; removed for a private head's drivers (it would win over the head's file)",
)
AUTH_TOKEN_PATH = RayEnvVar(
    "RAY_AUTH_TOKEN_PATH", "<the head's temp dir>/auth_token (cluster.head.driver_env)",
    "A private head's token, in a file (mode 600) that drivers started later can read; never ~/.ray.",
    "private head and its drivers",
)

# --- Drivers of a private head ---

USAGE_STATS = RayEnvVar(
    "RAY_USAGE_STATS_ENABLED", "0",
    "Off, as for the head (`ray start --disable-usage-stats`); else Ray Data starts a usage-collection"
    " actor for the driver.",
    "drivers of a private head, unless set",
)

ALL: tuple[RayEnvVar, ...] = (
    TRAIN_HEALTH_CHECK_INTERVAL, TRAIN_PREEMPTION_WATCHER, TRAIN_WORKER_GROUP_START_TIMEOUT, CHDIR_TO_TRIAL_DIR,
    AIR_NEW_OUTPUT, TUNE_TRIAL_ERRORS, TUNE_THREAD_TIMEOUT, BACKEND_LOG_LEVEL,
    WORKER_SOFT_LIMIT, PRESTART_WORKERS, AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH, USAGE_STATS,
)

ADDRESS = "RAY_ADDRESS"
"""Read, never set by a returnn-ray command: the cluster to join, as ``ray_address`` (scripts such as
``experiments/asr.py`` and the benchmarks set it for the commands they start)."""

OVERRIDE_RESOURCES = "RAY_OVERRIDE_RESOURCES"
"""Read, never set: resources a Ray started here counts instead of its own detection; where it
names GPUs, :func:`~returnn_ray.cluster.ray_internals.local_gpus` cannot tell how many Ray will count."""

TRAIN_ENV: dict[str, str] = {v.name: v.value for v in (TRAIN_HEALTH_CHECK_INTERVAL, TRAIN_PREEMPTION_WATCHER,
                                                     TRAIN_WORKER_GROUP_START_TIMEOUT, CHDIR_TO_TRIAL_DIR)}
"""What Ray Train runs need, in the driver and (as ``init_ray(env_vars=...)``) in every worker."""

SWEEP_ENV: dict[str, str] = {**TRAIN_ENV, **TUNE_THREAD_TIMEOUT.as_env()}
"""What a sweep needs, in the driver and every worker (its trials are Ray Train runs in Tune actors)."""


def set_defaults(env: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets each of ``env`` in ``environ`` unless the user has set it already.

    >>> environ = {"RAY_AIR_NEW_OUTPUT": "1"}
    >>> set_defaults({"RAY_AIR_NEW_OUTPUT": "0", "RAY_BACKEND_LOG_LEVEL": "fatal"}, environ)
    >>> environ
    {'RAY_AIR_NEW_OUTPUT': '1', 'RAY_BACKEND_LOG_LEVEL': 'fatal'}
    """
    for key, value in env.items():
        environ.setdefault(key, value)
