"""The ``TorchTrainer`` returnn-ray runs: Ray Train's, with two changes for how we use it.

- Ctrl-C and SIGTERM abort the run (Ray Train's own abort: the workers stop) and then raise in
  the driver (:mod:`returnn_ray.cluster.interrupts`), instead of Ray's handler exiting without a word.
- No Ray Data hand-off when the trainer gets no ``datasets``: each worker builds its own Ray
  Dataset of its share of the batch plan (:mod:`returnn_ray.data.ray_data`), so Ray Train's
  ``DatasetsCallback`` would only start its ``DatasetManager`` actor for nothing, a whole Ray
  worker process on the path to the first step (about 2 s of the start-up on a 2-core machine,
  ``bench/startup.py``).
"""

from __future__ import annotations

import ray
from ray.train.torch import TorchTrainer

from returnn_ray.cluster import interrupts


class ReturnnTorchTrainer(TorchTrainer):
    def _register_sigint_handler(self, controller) -> None:  # Ray Train 2.x's hook, main thread only
        interrupts.abort_on_signal(lambda: ray.get(controller.abort.remote(), timeout=interrupts.ABORT_TIMEOUT_S))

    def _create_default_callbacks(self) -> list:  # Ray Train 2.x (V2)
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [cb for cb in callbacks if type(cb).__name__ != "DatasetsCallback"]
