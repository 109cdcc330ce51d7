"""The ``TorchTrainer`` returnn-ray runs: Ray Train's, with two changes for how we use it.

- Ctrl-C and SIGTERM abort the run (Ray Train's own abort: the workers stop) and then raise in
  the driver (:mod:`returnn_ray.cluster.interrupts`), instead of Ray's handler exiting without a word.
- No Ray Data hand-off when the trainer gets no ``datasets``: each worker builds its own Ray
  Dataset of its share of the batch plan (:mod:`returnn_ray.data.ray_data`), so Ray Train's
  ``DatasetsCallback`` would only start its ``DatasetManager`` actor for nothing, a whole Ray
  worker process on the path to the first step (about 2 s of the start-up on a 2-core machine,
  ``bench/startup.py``).
- No placement-group cleaner where ``fit()`` runs in the job's driver (a ``returnn-ray`` run):
  Ray Train starts a detached ``PlacementGroupCleaner`` actor per run that removes the workers'
  placement group should the controller die while its job lives on, and polls Ray's State API
  (the dashboard) every second to know. Ray removes a job's placement groups once the job and
  the group's creator are both gone, and a run's job ends with its command (``fit()`` raises,
  the command exits); the cleaner was one more Ray worker process on the path to the first step
  (~1.8 s of CPU on a 2-core machine) and the polling ran all through training. A sweep trial's
  ``fit()`` runs in its Tune actor, which Tune may kill while the sweep's job lives on: there
  the cleaner stays (and the sweep's own Ray has the State API, ``cluster/start.init_ray``).
- Once ``fit()`` has its result, the controller actor (its run done, its workers gone) is killed
  rather than left to Ray to end when the driver's handle goes: that ending shuts its Python down,
  about 0.9 s of CPU, which fell into the start-up of the next run of a script
  (``experiments/asr.py``: its forward and search). Not after Ctrl-C/SIGTERM: that path keeps
  Ray Train's own abort.
"""

from __future__ import annotations

import ray
from ray.train.torch import TorchTrainer

from returnn_ray.cluster import interrupts


class ReturnnTorchTrainer(TorchTrainer):
    _controller = None

    def fit(self):
        try:
            result = super().fit()
        except Exception:
            self._kill_controller()
            raise
        self._kill_controller()
        return result

    def _kill_controller(self) -> None:
        if self._controller is not None:
            ray.kill(self._controller, no_restart=True)
            self._controller = None

    def _register_sigint_handler(self, controller) -> None:  # Ray Train 2.x's hook, main thread only
        self._controller = controller
        interrupts.abort_on_signal(lambda: ray.get(controller.abort.remote(), timeout=interrupts.ABORT_TIMEOUT_S))

    def _create_default_callbacks(self) -> list:  # Ray Train 2.x (V2)
        dropped = set() if self.datasets else {"DatasetsCallback"}
        if not ray.is_initialized() or ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE:  # the job's driver
            dropped.add("PlacementGroupCleanerCallback")
        return [cb for cb in super()._create_default_callbacks() if type(cb).__name__ not in dropped]
