"""Where a run's workers go, decided once per run, and whether the Ray cluster can hold them.

:func:`place` makes the one decision of a run (:class:`Placement`: in this process or on Ray, GPU or
not, how many workers or actors of what size); the tasks call it once and hand it down, and every
part that used to decide reads it. :func:`runs_here` and :func:`decide` are its pure halves (the
settings and the resources in, the answer out), so the rules are tested without Ray or GPUs.

Ray queues a request it cannot place as PENDING, for ever on a cluster that will not grow. So
training workers, forward/search actors and sweep trials are checked first against the cluster's
total resources (:func:`check_placeable`): a run that can never fit fails at once in one line (what
was asked, what the cluster has, what to do), unless an autoscaler could add the room or
``ray_placement_timeout`` says to wait for nodes to join. A run that fits but finds the cluster busy
waits its turn (:func:`returnn_ray.cluster.queue.wait_for_room`).

Ray and torch are imported inside functions: ``returnn-ray`` imports this module before it knows
whether the run needs either.
"""

# Imports inside functions: Ray and torch load only when placing (the CLI imports this module) (start-up time).
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Literal, Mapping, Protocol

from returnn_ray.cluster import env, ray_internals
from returnn_ray.cluster.queue import wait_for_room
from returnn_ray.cluster.start import init_ray
from returnn_ray.errors import UserError


class RunSettings(Protocol):
    """What the decision reads of :class:`returnn_ray.config.settings.RunSettings` (cluster/
    imports nothing of config/)."""

    task: str
    device: str | None
    ray_address: str | None
    ray_num_workers: int | None
    ray_local_mode: bool | None
    ray_placement_timeout: float | None

Per = Literal["worker", "actor"]
"""What a run places: Ray Train workers (DDP ranks; train, eval, sweep trials) or Ray Data actors
(forward, search)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """A run's placement: made once (:func:`place`), read by everything that starts workers."""

    local: bool
    """In this process (local mode, one worker): no Ray started or joined."""
    use_gpu: bool
    """Each worker holds a GPU (``device gpu``; unset: when the cluster, or this machine in local mode, has one)."""
    num_workers: int
    """Workers (DDP ranks) or actors."""
    bundle: Mapping[str, float]
    """What each one holds on its node: Ray Train's worker (one GPU, else one CPU) or an actor (a CPU, and a GPU)."""
    waited_since: float | None = dataclasses.field(default=None, compare=False)
    """On Ray: when the wait for room began (``time.monotonic()``), from which ``ray_placement_timeout``
    counts until the workers' own group is placed (:class:`~returnn_ray.cluster.queue.Watch`)."""

    @property
    def kind(self) -> str:
        """``GPU`` or ``CPU``: the resource that counts the workers."""
        return "GPU" if self.use_gpu else "CPU"


def runs_here(run: RunSettings, *, joins_ray: bool, gpus_here: int) -> bool:
    """Whether a train/eval run's one worker runs in this process (local mode).

    Starting a Ray cluster costs a 2-core machine 15-20 s before the first step, RETURNN none; a
    run that can only ever use one worker (no ``ray_num_workers``, no cluster to join, at most one
    GPU) gets nothing for it. Same loop, same batches, same files; ``ray_local_mode False`` forces
    Ray. ``joins_ray``: ``ray_address``, ``RAY_ADDRESS`` or a Ray this process already runs (a
    notebook, a test, a sweep trial's actor).
    """
    if run.ray_local_mode is not None:
        return run.ray_local_mode
    if run.ray_num_workers is not None or joins_ray:
        return False
    return run.device == "cpu" or gpus_here <= 1


def decide(run: RunSettings, resources: Mapping[str, float], *, local: bool, per: Per = "worker") -> Placement:
    """The placement for ``resources`` (the Ray cluster's; in local mode this machine's ``GPU``s).

    RETURNN picks the GPU when there is one and ``device`` is unset. Unless ``ray_num_workers``
    says: a local run has one worker; training one per GPU with a GPU, else one; forward and search
    one actor per GPU, or per CPU.
    """
    gpus = float(resources.get("GPU", 0))
    use_gpu = run.device == "gpu" or (run.device is None and gpus > 0)
    if local:
        num = 1
    elif run.ray_num_workers:
        num = run.ray_num_workers
    elif per == "actor":
        num = max(1, int(resources.get("GPU" if use_gpu else "CPU", 0)))
    else:
        num = max(1, int(gpus)) if use_gpu else 1
    if per == "actor":  # Ray Data's actor holds a CPU (and a GPU) on one node
        bundle = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    else:  # Ray Train's worker: one GPU with use_gpu, else one CPU
        bundle = {"GPU": 1} if use_gpu else {"CPU": 1}
    return Placement(local=local, use_gpu=use_gpu, num_workers=num, bundle=bundle)


def place(
    run: RunSettings,
    *,
    per: Per = "worker",
    may_run_here: bool = True,
    what: str = "training workers",
    env_vars: Mapping[str, str] | None = None,
    state_api: bool = False,
) -> Placement:
    """The run's one placement decision. Off this process it starts or joins Ray (``env_vars``
    reach its workers; ``state_api``: with the dashboard's modules, :func:`~returnn_ray.cluster.start.init_ray`)
    and checks that the cluster holds the workers (:func:`check_placeable`). ``may_run_here``:
    False for the tasks that always run on Ray (forward, search, sweep)."""
    local = may_run_here and runs_here(run, joins_ray=_joins_ray(run), gpus_here=_gpus_here(run))
    if local:
        return decide(run, {"GPU": _gpus_here(run)}, local=True, per=per)
    import ray

    init_ray(run.ray_address, env_vars=env_vars, state_api=state_api)
    placement = decide(run, ray.cluster_resources(), local=False, per=per)
    check_placeable(
        placement.num_workers, placement.use_gpu, run.ray_placement_timeout, bundle=dict(placement.bundle), what=what
    )
    since = wait_for_room([dict(placement.bundle)] * placement.num_workers, run.ray_placement_timeout, what=what)
    return dataclasses.replace(placement, waited_since=since)


def lacks_local_gpu(run: RunSettings) -> bool:
    """Whether a train/eval run asks for a GPU in this process (``device gpu`` in local mode) on a
    machine where torch has none: it would quietly run on the CPU. Runs on Ray workers are checked
    when Ray places them (:func:`check_placeable`)."""
    if run.device != "gpu" or run.task not in ("train", "eval"):
        return False
    gpus = _gpus_here(run)
    return runs_here(run, joins_ray=_joins_ray(run), gpus_here=gpus) and gpus == 0


def _joins_ray(run: RunSettings) -> bool:
    """A cluster to join: ``ray_address``, ``RAY_ADDRESS``, or the Ray this process runs already
    (not imported: not running, and not imported here for the question)."""
    ray = sys.modules.get("ray")
    return bool(run.ray_address or os.environ.get(env.ADDRESS) or (ray is not None and ray.is_initialized()))


def _gpus_here(run: RunSettings) -> int:
    """The GPUs torch can use in this process; not asked (torch not imported) with ``device cpu``,
    where the answer changes nothing."""
    if run.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_placeable(
    num_workers: int,
    use_gpu: bool,
    timeout: float | None = 0.0,
    *,
    bundle: dict[str, float] | None = None,
    what: str = "training workers",
) -> None:
    """Fail with one line, instead of an endless PENDING, when the cluster cannot hold ``num_workers``
    workers of ``bundle`` each (Ray Train's: one GPU with device gpu, else one CPU).

    A cluster this process joined may grow (an autoscaler, ``ray start --address`` on more
    machines): wait up to ``timeout`` seconds (``ray_placement_timeout``) for the room, asking an
    autoscaler for it meanwhile (``request_resources``, withdrawn after the wait; a cluster-wide
    request, it replaces another driver's). ``timeout`` None (the default setting): as long as it
    takes where an autoscaler could add the room, else no wait. A local Ray this process started
    itself cannot grow: no wait.
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
    if timeout is None and limit is not None:
        timeout = float("inf")  # an autoscaler that can add the room: wait for it, as a scheduler would
    if can_grow and timeout and not too_big:
        bound = "as long as it takes" if timeout == float("inf") else f"up to {timeout:g} s"
        print(
            f"returnn-ray: waiting {bound} for the Ray cluster to have room for {num_workers} {what}"
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
