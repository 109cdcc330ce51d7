"""Starting or joining Ray, once per process, with the settings returnn-ray relies on."""

# Imports inside functions: Ray loads only when it starts (the CLI imports this module) (start-up time).
from __future__ import annotations

import os
from typing import Mapping

from returnn_ray.cluster import env, interrupts, ray_internals
from returnn_ray.cluster.reaper import start_reaper
from returnn_ray.errors import UserError


def init_ray(
    address: str | None = None, *, num_cpus: int | None = None, env_vars: Mapping[str, str] | None = None,
    state_api: bool = False,
) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start an embedded local Ray.

    ``env_vars`` reach every Ray worker process of this job (e.g. what workers need to
    rebuild a Python config, :meth:`returnn_ray.config.Config.worker_env`). An embedded Ray starts
    without the dashboard's modules (Ray's ``include_dashboard=False`` keeps only its head) unless
    ``state_api``: only Ray Train's placement-group cleaner uses them (the State API), which runs
    for a sweep's Ray Train trials alone (:mod:`returnn_ray.training.ray_trainer`), and their
    processes (~2.5 s of CPU in a one-minute sweep on 2 cores) compete with the run; nor the
    autoscaler's monitor and the log monitor (:func:`~returnn_ray.cluster.ray_internals.without_monitors`).
    A no-op if this process is already connected.
    """
    import ray

    ray_internals.quiet_auth_notice()
    if ray.is_initialized():
        return
    address = address or os.environ.get(env.ADDRESS) or None
    kwargs: dict = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(env_vars)}
    embedded = address in (None, "local")
    if embedded:
        # "local": a Ray of our own even where a `ray start` runs on this machine (a bare
        # ray.init() would join the newest one, which the docs promise we never do).
        address = "local"
        kwargs["num_cpus"] = num_cpus
        kwargs["include_dashboard"] = None if state_api else False  # None: Ray's default, all of it
        # The raylet started here reads these from the environment it inherits.
        os.environ.update(head_env(num_cpus or usable_cpus()))
        auth = private_auth_env()
        if auth:
            os.environ.update(auth)
            ray_internals.reload_auth_settings()
    else:
        _check_reachable(address)
    try:
        if embedded:
            with ray_internals.without_monitors():  # no autoscaler and no log monitor: nothing for them here
                ray.init(address=address, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:  # e.g. "auto" with no Ray running on this machine
        raise UserError(f"cannot join the Ray cluster {address!r}: {str(exc).strip().splitlines()[0]}") from exc
    except ValueError as exc:  # e.g. "http://...": Ray's text is a page of advice about RAY_ADDRESS
        if embedded:
            raise
        why = str(exc).strip().splitlines()[0].split(" To fix this")[0]
        raise UserError(
            f"invalid Ray address {address!r} (ray_address / RAY_ADDRESS): {why} Give the cluster's GCS address"
            " (host:6379), auto, or leave it unset for a local Ray"
        ) from exc
    interrupts.install()  # ray.init replaced our SIGTERM handler with one that exits without a word
    if embedded:  # the Ray we just started must not outlive this process, even after kill -9

        start_reaper()


def _check_reachable(address: str) -> None:
    """A ``host:port`` nobody listens on would keep ``ray.init`` retrying for minutes: fail in seconds.

    Also: a cluster started with ``ray start --head`` uses token auth when ``~/.ray/auth_token``
    exists, which a driver given an explicit address does not turn on by itself.
    """
    import socket

    if address == "auto":  # the address of the newest `ray start` on this machine, if any
        current = os.path.join("/tmp", "ray", "ray_current_cluster")
        if os.path.exists(current):
            with open(current, encoding="utf-8") as f:
                address = f.read().strip() or "auto"
    host, sep, port = address.rpartition(":")
    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")) or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address} (ray_address / RAY_ADDRESS): {exc.strerror or exc};"
            " start it (`ray start --head`), fix the address, or leave it unset for a local Ray"
        ) from exc
    if env.AUTH_MODE.name not in os.environ and os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        os.environ[env.AUTH_MODE.name] = env.AUTH_MODE.value
        ray_internals.reload_auth_settings()  # Ray was imported before: it would still connect without a token


def private_auth_env(token_path: str | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Token authentication for a Ray that returnn-ray starts itself, with a token of its own.

    Ray 2.60 turns token auth on for every local Ray and, when no token is configured, has
    ``ray.init`` write one to ``~/.ray/auth_token`` while ``ray start`` fails for want of it. A
    Ray of ours needs neither: it gets a fresh random token that only its own processes know,
    in their environment (``RAY_AUTH_TOKEN``, which Ray reads before any file), or with
    ``token_path`` in that file (mode 600; a private head's temp dir, so that drivers started
    later can read it). Nothing goes to the user's home. ``RAY_AUTH_MODE=disabled`` in
    ``environ`` is respected: then no token at all (``RAY_AUTH_TOKEN`` stays unset).

    >>> auth = private_auth_env(environ={})
    >>> auth["RAY_AUTH_MODE"], len(auth["RAY_AUTH_TOKEN"])
    ('token', 64)
    >>> private_auth_env(environ={"RAY_AUTH_MODE": "disabled"})
    {}
    """
    import secrets

    mode = env.AUTH_MODE
    if environ.get(mode.name, mode.value).lower() == "disabled":
        return {}
    if token_path is None:
        return {mode.name: mode.value, env.AUTH_TOKEN.name: secrets.token_hex(32)}
    if not os.path.exists(token_path):
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    # The file's token, not one a user's environment holds for another cluster (Ray reads the
    # variable first): callers remove RAY_AUTH_TOKEN where they apply this.
    return {mode.name: mode.value, env.AUTH_TOKEN_PATH.name: token_path}


CONNECT_TIMEOUT_S = 5.0
"""How long a TCP connect to the cluster's GCS port may take."""


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_soft_limit(num_cpus: int) -> int:
    """How many worker processes a node of a Ray we start keeps before it kills idle ones.

    Ray's default is one per CPU, and a worker idle for 1 s above it is killed. A training run
    has more processes than that on a small node (per DDP worker: the worker and its Ray Data
    read tasks; then Ray Train's controller and helpers), so between two epochs the read
    tasks' processes were killed, and every epoch waited 1-2 s for new ones to start and import
    Ray Data (a 2x2 BLSTM on 600 seqs, 2 CPUs: epochs of 5.7-6.2 s instead of 3.5 s). Idle
    workers cost memory only (about 100 MB each).

    >>> worker_soft_limit(2)
    16
    """
    return 4 * num_cpus + 8


def head_env(num_cpus: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment for a Ray node of ours with ``num_cpus`` CPUs (:func:`worker_soft_limit`,
    :data:`~returnn_ray.cluster.env.PRESTART_WORKERS`), less what the user set in ``environ``.

    >>> head_env(2, environ={"RAY_prestart_worker_first_driver": "1"})
    {'RAY_num_workers_soft_limit': '16'}
    """
    ours = {
        env.WORKER_SOFT_LIMIT.name: str(worker_soft_limit(num_cpus)),
        env.PRESTART_WORKERS.name: env.PRESTART_WORKERS.value,
    }
    return {key: value for key, value in ours.items() if key not in environ}
