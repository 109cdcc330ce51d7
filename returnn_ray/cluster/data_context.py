"""The settings returnn-ray makes in Ray Data's global ``DataContext``, in one place.

Ray Data keeps one ``DataContext`` per process and every dataset built afterwards in that
process uses it, so these are process-wide: the training workers' readers
(:mod:`returnn_ray.data.ray_data`) and the forward/search driver
(:mod:`returnn_ray.inference.run`) set them right before they build their dataset. Seen on Ray 2.60.
"""

# Imports inside functions: Ray loads only when Ray Data is configured (start-up time).
from __future__ import annotations


def configure_ray_data(*, preserve_order: bool, announce_start: bool = True) -> None:
    """Sets this process's Ray Data context for the dataset about to be built.

    - ``preserve_order``: rows in block order (training: the planned batch order, the same in
      every run; Ray's default may reorder blocks), or as they come (inference: results are keyed
      by batch id, and waiting for order would hold fast actors back).
    - ``announce_start``: Ray Data's line at each execution start (training: off, a line per epoch
      and rank; inference: left to the ``ray.data`` logger, which is quiet unless ``++debug True``).
    - No progress bars: returnn-ray prints its own progress.
    - No per-operator resource reservation: it keeps half the CPUs back for other operators of a
      pipeline; ours has one (the read, or the actor pool), which it would then cap at half the
      node (on a 2-CPU node one read task at a time instead of two).
    """
    import ray.data  # here, not at the top: importing Ray Data takes seconds

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = preserve_order
    ctx.enable_progress_bars = False
    ctx.op_resource_reservation_enabled = False
    if not announce_start:
        ctx.print_on_execution_start = False
