"""Whether the Ray cluster can hold the workers or actors a task asks for, before asking Ray.

Ray queues a request it cannot place as PENDING, for ever on a cluster that will not grow. So
training workers, forward/search actors and sweep trials are checked first: on a local Ray this
process started, at once; on a joined cluster (which an autoscaler or ``ray start --address`` may
grow) after up to ``ray_placement_timeout`` seconds of waiting. Either way one line says what was
asked, what the cluster has, and what to do.
"""

from __future__ import annotations

import time

from returnn_ray.cluster import ray_internals
from returnn_ray.errors import UserError


def check_placeable(
    num_workers: int,
    use_gpu: bool,
    timeout: float = 0.0,
    *,
    bundle: dict[str, float] | None = None,
    what: str = "training workers",
) -> None:
    """Fail with one line, instead of an endless PENDING, when the cluster cannot hold ``num_workers``
    workers of ``bundle`` each (Ray Train's: one GPU with device gpu, else one CPU).

    A cluster this process joined may grow (an autoscaler, ``ray start --address`` on more
    machines): wait up to ``timeout`` seconds (``ray_placement_timeout``) for the room, asking an
    autoscaler for it meanwhile (``request_resources``, withdrawn after the wait; a cluster-wide
    request, it replaces another driver's). A local Ray this process started itself cannot grow: no wait.
    """
    bundle = bundle or ({"GPU": 1} if use_gpu else {"CPU": 1})
    kind = "GPU" if use_gpu else "CPU"
    room, have = _placeable_workers(bundle), _cluster_amount(kind)
    if room >= num_workers:
        return
    need = num_workers * bundle.get(kind, 0)
    can_grow = _cluster_can_grow()
    limit = _autoscaler_max(kind) if can_grow else None
    too_big = limit is not None and limit < need
    waited = 0.0
    if can_grow and timeout > 0 and not too_big:
        print(
            f"returnn-ray: waiting up to {timeout:g} s for the Ray cluster to have room for {num_workers} {what}"
            f" ({_bundle_text(bundle)} each; it has {have:g} {kind}s now; ray_placement_timeout)",
            flush=True,
        )
        start = time.monotonic()
        _request_resources([bundle] * num_workers)
        try:
            while room < num_workers and time.monotonic() - start < timeout:
                time.sleep(min(1.0, max(0.0, timeout - (time.monotonic() - start))))
                room, have = _placeable_workers(bundle), _cluster_amount(kind)
        finally:
            _request_resources([])  # the workers' own placement group holds the nodes from here on
        waited = time.monotonic() - start
        if room >= num_workers:
            return
    plural = "" if need == 1 else "s"
    found = f"the Ray cluster has {have:g}"
    if have >= need:  # enough in all, but not together on single nodes
        found += f" {kind}{plural}, but its nodes have room for only {room} {what} of {_bundle_text(bundle)} each"
    if too_big:
        found += f" and its autoscaler can grow it to at most {limit:g}"
    elif waited:
        found += f" (after {waited:.0f} s of waiting, ray_placement_timeout)"
    elif not can_grow:
        found += " (the local Ray this command started)"
    if not can_grow:
        fix = "set device cpu, or join a cluster with GPUs (ray_address)" if use_gpu and have == 0 else (
            "lower ray_num_workers, or join a bigger cluster (ray_address)")
    else:
        fix = "set device cpu or add nodes with GPUs" if use_gpu and have == 0 else "lower ray_num_workers or add nodes"
        if not waited and not too_big:
            fix += ", or set ray_placement_timeout to wait for them"
    raise UserError(
        f"ray_num_workers {num_workers} needs {need:g} {kind}{plural} but {found};"
        f" the {what} cannot start: {fix}"
    )


def _bundle_text(bundle: dict[str, float]) -> str:
    """``{'CPU': 1, 'GPU': 1}`` -> ``1 CPU + 1 GPU``."""
    return " + ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def _cluster_amount(kind: str) -> float:
    import ray

    return float(ray.cluster_resources().get(kind, 0))


def _placeable_workers(bundle: dict[str, float]) -> int:
    """How many ``bundle``-sized workers the alive nodes hold, each worker on one node (busy or not)."""
    import ray

    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        total += min((int(have.get(name, 0) // amount) for name, amount in bundle.items() if amount > 0), default=0)
    return total


def _cluster_can_grow() -> bool:
    """False for a Ray that ``ray.init`` started in this process (no other node can join it)."""
    return not ray_internals.ray_started_here()


def _autoscaler_max(kind: str) -> float | None:
    """The most of ``kind`` the cluster's autoscaler may bring up (None: no autoscaler config known)."""
    limits = ray_internals.autoscaler_max_resources()
    return float(limits.get(kind, 0)) if limits else None


def _request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask an autoscaler for room (a no-op without one); ``[]`` withdraws the request."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - only a hint to the autoscaler
        pass
