"""A sweep trial's Ray Train run: each epoch's report goes to Tune, and the run ends when Tune stops the trial.

Ray 2.60's own bridge, ``ray.tune.integration.ray_train.TuneReportCallback``, hands each report
from the Train controller to the trial through a Ray queue that holds one report, and nothing
tells the Train run when Tune stops the trial (ASHA at a rung, or at ``max_t``). The trial's
``fit()`` then goes on training; the controller's next put waits for ever on the full queue, in
the controller's event loop. Tune, wanting the actor for the next trial, gives up waiting for the
trial's thread after 2 s, marks the *next* trial as failed and terminates the actor, which waits
for the run it started: the sweep hung with the stopped trial's workers holding the CPUs.

Here the controller's callback (:class:`_ToTrial`) puts each report in a queue without bound and
goes on. The trial's thread (:func:`fit_reporting_to_tune`) runs ``fit()`` in a thread of its own
and passes each report on with ``tune.report``, which raises ``SystemExit`` when Tune has stopped
the trial (Tune's way to end a function trainable). The run is then aborted as Ctrl-C aborts one
(the controller's ``abort``: its workers stopped, its placement group removed), and the trial's
thread ends before Tune hands the actor to the next trial; Tune waits for that up to
``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (:data:`returnn_ray.cluster.env.TUNE_THREAD_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Callable

import ray
from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from returnn_ray.cluster import ray_internals
from returnn_ray.cluster.interrupts import ABORT_TIMEOUT_S

POLL_S = 0.5
"""How long the trial's thread waits for a report before it looks whether ``fit()`` has returned."""


@dataclasses.dataclass(frozen=True)
class _Report:
    """One epoch's report, from the Train controller to the trial's thread."""

    metrics: dict[str, Any]
    """Rank 0's metrics."""
    controller: str
    """The Train controller's actor id: what aborts the run. Its id, not its handle: the handle
    took ~2 s to send from the controller's event loop (Ray 2.60, 2 CPUs), holding the report up."""


class _ToTrial(UserCallback):
    """Puts each report of the run in the trial's queue (runs in the Train controller)."""

    def __init__(self, queue: Queue):
        self._queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        report = _Report(dict(metrics[0]), ray.get_runtime_context().get_actor_id())
        # Queued before the controller goes on, so that every report is in the queue once fit()
        # returns; a queue without bound never keeps the controller waiting.
        self._queue.put(report)


def fit_reporting_to_tune(fit: Callable[[list], Any]) -> Any:
    """``fit(callbacks)`` (a Ray Train run with those callbacks), each of its reports passed to
    Tune; the run aborted when Tune stops the trial. Call it in a Tune function trainable."""
    queue = Queue(actor_options={"num_cpus": 0})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit([_ToTrial(queue)])
        except BaseException as exc:  # handed to the trial's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="returnn-ray-trial-fit", daemon=True)
    thread.start()
    controller = None
    try:
        while True:
            try:
                item: _Report = queue.get(timeout=POLL_S)
            except Empty:
                # fit() has returned once its thread has: everything it sent is in the queue by then
                if thread.is_alive() or not queue.empty():
                    continue
                break
            controller = item.controller
            tune.report(item.metrics)  # SystemExit once Tune has stopped the trial
    except BaseException:
        _abort(controller, thread)
        raise
    finally:
        with contextlib.suppress(Exception):
            queue.shutdown()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _abort(controller: str | None, thread: threading.Thread) -> None:
    """Ray Train's own abort of the run (as for Ctrl-C), then ``fit()``'s end, each bounded.
    ``controller``: the controller's actor id, which this process owns (``fit()`` made it here)."""
    if controller is not None:
        with contextlib.suppress(Exception):  # the controller exits in the call: an actor error here is its end
            ray.get(ray_internals.actor_handle(controller).abort.remote(), timeout=ABORT_TIMEOUT_S)
    thread.join(timeout=ABORT_TIMEOUT_S)
