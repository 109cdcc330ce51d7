"""Starting or joining Ray, once per process, with the settings returnn-ray relies on."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start an embedded local Ray.

    A no-op if this process is already connected.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
