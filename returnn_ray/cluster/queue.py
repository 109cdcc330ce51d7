"""A run that fits the cluster but finds it busy waits its turn, as under a scheduler.

:func:`~returnn_ray.cluster.placement.check_placeable` has made sure the cluster's *total*
resources hold the run; other jobs may still hold them now. Left to Ray Train, such a run would
sit in a placement group that it gives up and re-creates every 60 s
(``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``), silently and losing its place each time; a forward's
actor pool would wait silently. So before the run starts its workers, :func:`wait_for_room` puts
a placement group of the run's bundles into Ray's queue (Ray places pending groups in turn) and
waits for it, saying once where the run stands in line and what it waits for, and again only when
its place in line changes (or every few minutes). Once placed, the group is handed back and the run's own
workers take the room at once. ``ray_placement_timeout`` bounds the wait when set.

Ray is imported inside functions, as in :mod:`returnn_ray.cluster.placement`.
"""

# Imports inside functions: Ray loads only when waiting for room (start-up time).
from __future__ import annotations

import time
from typing import Callable

from returnn_ray.cluster import ray_internals
from returnn_ray.errors import UserError

POLL_S = 1.0
"""How often the line is looked at while waiting (Ray places the group the moment room frees)."""
REPEAT_S = 300.0
"""A line unchanged for this long is printed again, so a long wait shows it is alive."""
QUEUE_NAME = "returnn-ray queue"
"""The name of the waiting placement group (``ray list placement-groups`` shows it)."""


def wait_for_room(
    bundles: list[dict[str, float]],
    timeout: float | None,
    *,
    what: str,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Return once the cluster's nodes have room for ``bundles`` now, waiting in Ray's queue for it.

    ``timeout``: ``ray_placement_timeout`` (None: as long as it takes); after it, one line.
    """
    if ray_internals.fits_now(bundles):
        return
    from ray.util.placement_group import placement_group, remove_placement_group

    ahead = set(_pending_groups())  # waiting before us: ahead in line
    group = placement_group(bundles, strategy="PACK", name=QUEUE_NAME)
    start, shown, shown_at = time.monotonic(), None, 0.0
    try:
        while not group.wait(POLL_S):
            waited = time.monotonic() - start
            pending = _pending_groups()
            ahead &= set(pending)
            if len(ahead) != shown or time.monotonic() - shown_at >= REPEAT_S:  # the free room comes and goes
                say(_queue_line(bundles, what, [pending[g] for g in ahead], timeout))
                shown, shown_at = len(ahead), time.monotonic()
            if timeout is not None and waited >= timeout:
                raise UserError(
                    f"the Ray cluster is busy: no room for {len(bundles)} {what} ({_need_text(bundles)}) after"
                    f" {waited:.0f} s of waiting (ray_placement_timeout {timeout:g}): run again when the cluster"
                    " is less busy, or unset ray_placement_timeout to wait as long as it takes"
                )
    finally:
        remove_placement_group(group)  # the run's own workers take the room from here on
    if shown is not None:
        say(f"returnn-ray: room for the {what} after {time.monotonic() - start:.0f} s in line; starting")


def _pending_groups() -> dict[str, list[dict[str, float]]]:
    """Ray's waiting placement groups (other jobs', other returnn-ray runs' in line): id -> bundles."""
    from ray.util import placement_group_table

    return {
        gid: list(info.get("bundles", {}).values())
        for gid, info in placement_group_table().items()
        if info.get("state") in ("PENDING", "RESCHEDULING")
    }


def _queue_line(bundles: list[dict[str, float]], what: str, ahead: list[list[dict[str, float]]],
                timeout: float | None) -> str:
    """Where the run stands in line and what it waits for, in one line."""
    kinds = sorted({name for bundle in bundles for name in bundle})
    import ray

    free = ray.available_resources()
    free_text = ", ".join(f"{free.get(kind, 0.0):g} {kind}" for kind in kinds)
    place = "first in line" if not ahead else (
        f"{len(ahead)} job{'s' if len(ahead) != 1 else ''} ahead in line (needing {_need_text(sum(ahead, []))})")
    bound = "as long as it takes" if timeout is None else f"up to {timeout:g} s (ray_placement_timeout)"
    return (
        f"returnn-ray: the Ray cluster is busy: {len(bundles)} {what} ({_need_text(bundles)}) wait for room,"
        f" {place}; free now: {free_text}; waiting {bound}"
    )


def _need_text(bundles: list[dict[str, float]]) -> str:
    """``[{'CPU': 1}, {'CPU': 1, 'GPU': 1}]`` -> ``2 CPU + 1 GPU`` (the total the bundles hold)."""
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + float(amount)
    return " + ".join(f"{amount:g} {name}" for name, amount in sorted(total.items())) or "nothing"
