"""Starting or joining Ray, once per process, with the settings returnn-ray relies on."""

from __future__ import annotations

import os
from typing import Mapping


def init_ray(
    address: str | None = None, *, num_cpus: int | None = None, env_vars: Mapping[str, str] | None = None
) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start an embedded local Ray.

    ``env_vars`` reach every Ray worker process of this job (e.g. what workers need to
    rebuild a Python config, :meth:`returnn_ray.config.Config.worker_env`). A no-op if this
    process is already connected.
    """
    import logging

    import ray

    # Ray announces on every start that token auth is on; nothing for a returnn-ray user to act on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(env_vars)}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
