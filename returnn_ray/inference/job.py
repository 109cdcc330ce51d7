"""What a forward/search run hands each of its actors: one typed, frozen spec, built in one place.

Ray pickles it (with cloudpickle) into every :class:`~returnn_ray.inference.run.InferenceActor`'s
constructor. The large parts (the batch plan, the checkpoint's state) go in as object refs, put in
Ray's object store once, so nodes need no shared disk for the checkpoint. The settings travel
pickled on their own: a Python config's functions in them unpickle only after the actor has
rebuilt the config (:meth:`ForwardJob.load_settings`).

Ray is imported inside :meth:`ForwardJob.build`: only a run that reaches its actors needs it.
"""

# Imports inside functions: Ray loads only when a job is built or read (start-up time).
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from returnn_ray.cluster.placement import Placement
from returnn_ray.config import Config, Settings
from returnn_ray.config.workers import use_worker_config


@dataclasses.dataclass(frozen=True)
class ForwardJob:
    """A forward or search run, as each of its actors sees it."""

    settings: bytes
    """The run's settings, cloudpickled (see :meth:`load_settings`)."""
    worker_env: Mapping[str, str]
    """What rebuilds the config in the actor (:meth:`returnn_ray.config.Config.worker_env`)."""
    dataset: str
    """The dataset's config key (``eval``, ``forward_data``, ``search_data``)."""
    plan: Any
    """Ray object ref of the planned batches (``list[np.ndarray]`` of seq indices): a batch id indexes it."""
    state: Any
    """Ray object ref of the checkpoint's state dict (``model``, ``step``)."""
    use_gpu: bool
    """Run the model on the actor's GPU (the run's :class:`~returnn_ray.cluster.placement.Placement`)."""
    epoch: int
    """The checkpoint's epoch (the model's ``epoch`` argument)."""
    search: bool
    """Beam search (CTC) instead of forward."""
    callback: bool = False
    """Forward for a config's forward_callback: each seq's outputs cut as RETURNN hands them to it."""

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: Config,
        *,
        dataset: str,
        plan: list[np.ndarray],
        state: Mapping[str, Any],
        placement: Placement,
        epoch: int,
        search: bool,
        callback: bool = False,
    ) -> ForwardJob:
        """The job of a run whose Ray is up: the plan and the state go to the object store here."""
        import ray
        from ray import cloudpickle

        # The callback itself runs on the driver only (it may hold files, state): the actors do not get it.
        settings = dataclasses.replace(settings, forward=dataclasses.replace(settings.forward, forward_callback=None))
        return cls(
            settings=cloudpickle.dumps(settings),
            worker_env=config.worker_env(),
            dataset=dataset,
            plan=ray.put(plan),
            state=ray.put(state),
            use_gpu=placement.use_gpu,
            epoch=epoch,
            search=search,
            callback=callback,
        )

    def load_settings(self) -> Settings:
        """The settings, in an actor: first the config is rebuilt there (``worker_env``), so that
        its functions, which the settings may hold, unpickle."""
        from ray import cloudpickle

        use_worker_config(self.worker_env)
        return cloudpickle.loads(self.settings)
