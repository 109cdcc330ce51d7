"""Every use of Ray's private APIs, and the user's error dug out of Ray's exceptions.

Private parts of Ray change without notice between versions: each function here names the Ray
version it was written against (the pin in ``pyproject.toml``) and what goes wrong without it;
docs/ray.md lists them. Check them all when the pin moves. (Ray Train's private trainer hooks
that :class:`returnn_ray.training.ray_trainer.ReturnnTorchTrainer` overrides are the one other
place: an override has to sit in its subclass.)

Importing this module imports no Ray: ``returnn-ray`` imports it on every start (the command
line's one-line errors), so each function imports what it needs of Ray itself.
"""

# Imports inside functions: Ray's private modules load only when called (the CLI imports this module) (start-up time).
from __future__ import annotations

import contextlib
import logging
import os
import re

from returnn_ray import errors
from returnn_ray.cluster import env
from returnn_ray.errors import UserError

AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
"""The private logger with which Ray 2.60 announces on every start that token auth is on."""


def quiet_auth_notice() -> None:
    """Ray's notice that token auth is on, on every start: nothing for a returnn-ray user to act on."""
    logging.getLogger(AUTH_SETUP_LOGGER).setLevel(logging.ERROR)


def reload_auth_settings() -> None:
    """Makes this process's Ray see the auth settings just put in ``os.environ``.

    Ray 2.60 reads ``RAY_AUTH_MODE`` into its C++ config once, when imported, and caches the token
    it loaded; ``ray.init`` reloads both only when it turns token auth on by itself
    (``ray._private.authentication.authentication_token_setup._enable_token_auth``). The same two
    private calls here; without them the driver of a Ray we start cannot talk to its own GCS.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ray_started_here() -> bool:
    """Whether the connected Ray is one that ``ray.init`` started in this process (no other node can
    join it, so it never grows). ``ray._private.worker._global_node``, private but stable since Ray
    2.0; where it is missing, False (assume a cluster that may grow)."""
    from ray._private import worker

    return bool(getattr(getattr(worker, "_global_node", None), "ray_init_cluster", False))


def local_gpus() -> int | None:
    """The GPUs a Ray started on this machine would count, asked as Ray 2.60 counts them
    (``ray._private.accelerators``: the GPU manager's count on the node, capped by the visible
    ids), without starting it or importing torch; None where that cannot be asked (then assume
    there may be some)."""
    if "GPU" in os.environ.get(env.OVERRIDE_RESOURCES, ""):  # Ray counts what that says
        return None
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = int(manager.get_current_node_num_accelerators())
        visible = manager.get_current_process_visible_accelerator_ids()
        return min(count, len(visible)) if visible is not None else count
    except Exception:  # noqa: BLE001 - private API
        return None


@contextlib.contextmanager
def without_monitors():
    """While ``ray.init`` starts a Ray in this process: without the autoscaler's monitor and the log
    monitor, as ``ray start --no-monitor --include-log-monitor false`` (:func:`returnn_ray.cluster.head.start_head`).
    One machine's fixed Ray has nothing to autoscale, and our drivers take no logs
    (``log_to_driver=False``); the two processes poll the GCS and the log files all run long, on 2
    cores ~1 s of CPU in a 20 s forward. ``ray.init`` has no arguments for them: Ray 2.60's
    ``RayParams`` (private) gets ``no_monitor`` and ``include_log_monitor`` set after its
    ``__init__``, which ``ray.init`` calls with neither."""
    from ray._private import parameter

    original = parameter.RayParams.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.no_monitor = True
        self.include_log_monitor = False

    parameter.RayParams.__init__ = init
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original


class RayOfOurs:
    """The Ray that ``ray.init`` started in this process, taken over for a stop at once
    (:meth:`disconnect`, then :meth:`pids` killed, then :meth:`clean_up`).

    ``ray.shutdown()`` would stop it politely: SIGTERM and up to 1 s for each of Ray's daemons,
    and at exit a 0.5 s sleep first for log lines to print (ours: none, ``log_to_driver=False``).
    ``ray._private.worker._global_node`` (private, Ray 2.60): with it None, ``ray.shutdown()``
    only disconnects; the node object knows its daemons (``all_processes``) and its spilled
    objects' storage."""

    def __init__(self, node):
        self._node = node

    @classmethod
    def take_over(cls) -> "RayOfOurs | None":
        """The connected Ray's node where ``ray.init`` started it here; None otherwise."""
        from ray._private import worker

        node = getattr(worker, "_global_node", None)
        return cls(node) if ray_started_here() and hasattr(node, "all_processes") else None

    def pids(self) -> list[int]:
        """The daemons this process started for the Ray (gcs_server, raylet, dashboard, monitors)."""
        return [info.process.pid for infos in self._node.all_processes.values() for info in infos if info.process is not None]

    def disconnect(self) -> None:
        import ray
        from ray._private import worker

        worker._global_node = None
        ray.shutdown()

    def clean_up(self) -> None:
        """What ``ray.shutdown()`` does after its processes are gone: the spilled objects' files go."""
        try:
            if self._node.is_head():
                self._node.destroy_external_storage()
        except Exception:  # noqa: BLE001 - private API; only disk space is at stake
            pass


def autoscaler_max_resources() -> dict | None:
    """The most of each resource the cluster's autoscaler may bring up (None: no autoscaler config
    known). ``ray._private.state.state.get_max_resources_from_cluster_config``, Ray 2.60."""
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config() or None
    except Exception:  # noqa: BLE001 - private API; without it the wait is all we do
        return None


def job_placement_groups(job_hex: str) -> dict[str, dict]:
    """The placement groups of the job ``job_hex`` (``ray.get_runtime_context().get_job_id()``),
    Ray Train's among them: id -> ``placement_group_table`` entry. Ray 2.60's table names no creator
    job, but a placement group id ends with its job's id (``PlacementGroupID::Of(job_id)``); without
    this, the driver could not tell its run's waiting group from another job's."""
    from ray.util import placement_group_table

    return {gid: info for gid, info in placement_group_table().items() if gid.endswith(job_hex)}


def actor_handle(actor_hex: str):
    """The handle of the actor of id ``actor_hex`` (``ray.get_runtime_context().get_actor_id()``), which
    this process owns (Ray 2.60's ``CoreWorker.get_actor_handle``: Ray's public API finds named actors
    only, and Ray Train's controller has no name; its handle, sent instead of its id, took ~2 s)."""
    import ray
    from ray._raylet import ActorID

    return ray._private.worker.global_worker.core_worker.get_actor_handle(ActorID.from_hex(actor_hex))


def remove_placement_group(group_hex: str) -> None:
    """Removes the placement group of id ``group_hex`` (``ray._raylet.PlacementGroupID``, Ray 2.60:
    Ray's public API removes only a group whose handle one holds, and Ray Train keeps its own)."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group as remove

    remove(PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex))))


def start_shared_helpers(timeout: float = 60.0) -> list[str]:
    """Starts now the detached helper actors that Ray Train and Ray Data otherwise start on their
    first use in a cluster, one of each per cluster, each in a process of its own: the autoscaling
    coordinator (Ray Train's controller asks it for the workers' resources, blocking about 1.3 s
    while it starts; Ray Data too), Ray Data's stats actor and its actor location tracker (both
    started by every first ``map_batches`` over an actor pool: forward and search). Returns the
    names of those now running. Ray 2.60's ``get_or_create_*`` functions, which make each with
    ``get_if_exists``: a later run finds the same actor. A Ray without them: those are skipped
    (each run then starts them itself, as before)."""
    import importlib

    import ray

    made = {}
    for module, function in (
        ("ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator", "get_or_create_autoscaling_coordinator"),
        ("ray.data._internal.stats", "get_or_create_stats_actor"),
        ("ray.data._internal.execution.node_trackers.actor_location", "get_or_create_actor_location_tracker"),
    ):
        try:
            made[function.removeprefix("get_or_create_")] = getattr(importlib.import_module(module), function)()
        except (ImportError, AttributeError):
            continue
    ray.get([handle.__ray_ready__.remote() for handle in made.values()], timeout=timeout)
    return sorted(made)


def fits_now(bundles: list[dict[str, float]]) -> bool:
    """Whether the alive nodes' free resources hold ``bundles`` now, each bundle on one node (packed
    greedily: a run's bundles are all alike). ``ray._private.state.available_resources_per_node``,
    a DeveloperAPI of Ray 2.60; where it fails, False: the run then waits in Ray's queue
    (:mod:`returnn_ray.cluster.queue`), which only costs a placement group more."""
    try:
        from ray._private.state import available_resources_per_node

        free = [dict(node) for node in available_resources_per_node().values()]
    except Exception:  # noqa: BLE001 - private API
        return False
    for bundle in bundles:
        node = next((n for n in free if all(n.get(k, 0.0) >= v for k, v in bundle.items())), None)
        if node is None:
            return False
        for name, amount in bundle.items():
            node[name] -= amount
    return True


_REMOTE_ERROR_LINE = re.compile(r"(?<![\w.])returnn_ray\.errors\.(\w+): (.+)")


def user_error_in(exc: BaseException) -> UserError | None:
    """The :class:`UserError` (bad data, non-finite loss, ...) that a Ray task, actor or Train
    worker raised, wherever Ray wrapped it; None when the failure is no user error.

    Ray hands a remote error to the driver as ``RayTaskError(X)``, a subclass of both Ray's
    ``RayTaskError`` and ``X`` whose text is the remote traceback and whose ``cause`` is the
    original error; Ray Train and Ray Data wrap that again (``__cause__``, ``__context__``). So the
    chain is searched, through ``cause`` first. Where only text is left (Ray Data's
    ``UserCodeException``; a ``RayTaskError`` rebuilt from its text), the last
    ``returnn_ray.errors.<Class>: <message>`` line of the traceback is the error. Errors seen on Ray 2.60.
    """
    seen: list[BaseException] = []
    todo: list = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, UserError) and not _is_ray_wrapper(e):
            return e
        todo += [e.__context__, e.__cause__, getattr(e, "cause", None)]  # popped from the end: cause first
    for e in seen:
        found = _REMOTE_ERROR_LINE.findall(str(e))
        if found:
            name, message = found[-1]
            cls = getattr(errors, name, UserError)
            return (cls if isinstance(cls, type) and issubclass(cls, UserError) else UserError)(message.strip())
    return None


def user_message(exc: BaseException) -> str:
    """The one line a :class:`UserError` prints.

    A UserError raised in a Ray task reaches the driver as Ray's ``RayTaskError(UserError)``,
    whose text is the remote traceback: the message is that of the original error
    (:func:`user_error_in`). Any other line breaks are joined,
    so the error stays one line.
    """
    exc = user_error_in(exc) or exc
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _is_ray_wrapper(e: BaseException) -> bool:
    """Ray's ``RayTaskError(X)``: an ``X`` in name only, its text the remote traceback."""
    return any(c.__name__ == "RayTaskError" for c in type(e).__mro__) or isinstance(getattr(e, "cause", None), BaseException)
