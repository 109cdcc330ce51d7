"""A run that fits the cluster but finds it busy waits its turn, as under a scheduler.

:func:`~returnn_ray.cluster.placement.check_placeable` has made sure the cluster's *total*
resources hold the run; other jobs may still hold them now. Left to Ray Train, such a run would
wait silently in a placement group of its own; a forward's actor pool too. So before the run
starts its workers, :func:`wait_for_room` puts a placement group of the run's bundles into Ray's
queue and waits for it, saying once where the run stands in line and what it waits for, and again
only when its place in line changes (or every few minutes). Once placed, the group is handed back
and the run's own workers (Ray Train's placement group) take the room.

Ray cannot hand a placed group over, and its GCS does not place pending groups first come, first
served: it retries each one on a backoff of 0.1-1 s, in the order the retries fall due, and a new
group is tried at once. So in the second or two before Ray Train's group exists, another job's
group can take the freed room. The run then goes back in line visibly: :class:`Watch` (Ray Train
runs) sees its own group wait, says so and what for, and says when it is placed. Ray Train's group
keeps its place meanwhile (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` is a year,
:mod:`returnn_ray.cluster.env`). ``ray_placement_timeout`` bounds the whole wait when set: at the
deadline the watch removes the run's waiting group, Ray Train gives up its start (no controller
retries then, :mod:`returnn_ray.training.driver`) and the driver fails with :func:`Watch.error`'s line.

Ray is imported inside functions, as in :mod:`returnn_ray.cluster.placement`.
"""

# Imports inside functions: Ray loads only when waiting for room (start-up time).
from __future__ import annotations

import threading
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
GRACE_S = 5.0
"""How long the run's own group may wait after the hand-over before the run says it waits again
(placed at once when the room is still free; Ray Train creates it 1-3 s after the hand-over)."""
WAITING = ("PENDING", "RESCHEDULING")


def wait_for_room(
    bundles: list[dict[str, float]],
    timeout: float | None,
    *,
    what: str,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> float:
    """Return once the cluster's nodes have room for ``bundles`` now, waiting in Ray's queue for it;
    returns when the wait began (``time.monotonic()``; :class:`Watch` counts the timeout from there).

    ``timeout``: ``ray_placement_timeout`` (None: as long as it takes); after it, one line.
    """
    start = time.monotonic()
    if ray_internals.fits_now(bundles):
        return start
    from ray.util.placement_group import placement_group, remove_placement_group

    ahead = set(_pending_groups())  # waiting before us: ahead in line
    group = placement_group(bundles, strategy="PACK", name=QUEUE_NAME)
    shown, shown_at = None, 0.0
    try:
        while not group.wait(POLL_S):
            waited = time.monotonic() - start
            pending = _pending_groups()
            ahead &= set(pending)
            if len(ahead) != shown or time.monotonic() - shown_at >= REPEAT_S:  # the free room comes and goes
                say(_queue_line(bundles, what, [pending[g] for g in ahead], timeout))
                shown, shown_at = len(ahead), time.monotonic()
            if timeout is not None and waited >= timeout:
                raise _busy_error(bundles, what, waited, timeout)
    finally:
        remove_placement_group(group)  # the run's own workers take the room from here on
    if shown is not None:
        say(f"returnn-ray: room for the {what} after {time.monotonic() - start:.0f} s in line; starting")
    return start


def _busy_error(bundles: list[dict[str, float]], what: str, waited: float, timeout: float) -> UserError:
    return UserError(
        f"the Ray cluster is busy: no room for {len(bundles)} {what} ({_need_text(bundles)}) after"
        f" {waited:.0f} s of waiting (ray_placement_timeout {timeout:g}): run again when the cluster"
        " is less busy, or unset ray_placement_timeout to wait as long as it takes"
    )


class Watch(threading.Thread):
    """Watches a Ray Train run's own placement group from the hand-over until it is placed: says
    when it waits in line again (another job took the room first) and when it is placed, and at
    ``ray_placement_timeout`` (counted from ``since``, the start of the whole wait) removes it,
    so that Ray Train gives up its start (:func:`error` then says why, in one line).

    The run's groups are told from other jobs' by the job id that Ray puts at the end of every
    placement group id (Ray Train's controller creates its group in the driver's job)."""

    def __init__(self, bundles: list[dict[str, float]], timeout: float | None, *, what: str, since: float,
                 say: Callable[[str], None]):
        super().__init__(name="returnn-ray placement watch", daemon=True)
        self.bundles, self.timeout, self.what, self.since, self.say = bundles, timeout, what, since, say
        self._stop_event = threading.Event()
        self._error: UserError | None = None

    def stop(self) -> None:
        """The run is over (or never made a group): stop watching."""
        self._stop_event.set()

    def error(self) -> UserError | None:
        """The one-line error when the watch gave up the run's wait at ``ray_placement_timeout``."""
        return self._error

    def run(self) -> None:
        import ray

        job = ray.get_runtime_context().get_job_id()
        waiting_since, said = None, False
        while not self._stop_event.wait(POLL_S):
            states = _own_groups(job)
            if "CREATED" in states.values():
                if said:
                    self.say(f"returnn-ray: room for the {self.what} after {time.monotonic() - self.since:.0f} s;"
                             " starting")
                return
            waiting = [gid for gid, state in states.items() if state in WAITING]
            if not waiting:
                continue
            waiting_since = waiting_since or time.monotonic()
            if not said and time.monotonic() - waiting_since >= GRACE_S:
                self.say(self._again_line())
                said = True
            waited = time.monotonic() - self.since
            if self.timeout is not None and waited >= self.timeout:
                self._give_up(waiting, waited)
                return

    def _again_line(self) -> str:
        line = _queue_line(self.bundles, self.what, [], self.timeout).replace(", first in line", "")
        return line.replace("the Ray cluster is busy:", "the Ray cluster is busy again: another job took the room"
                            " before the run's own placement group;", 1)

    def _give_up(self, waiting: list[str], waited: float) -> None:
        self._error = _busy_error(self.bundles, self.what, waited, self.timeout or 0.0)
        for gid in waiting:
            ray_internals.remove_placement_group(gid)


def _own_groups(job_hex: str) -> dict[str, str]:
    """This job's placement groups but the queue's (Ray Train's): id -> state."""
    return {gid: info.get("state", "") for gid, info in ray_internals.job_placement_groups(job_hex).items()
            if info.get("name") != QUEUE_NAME}


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
