"""The trainer returnn-ray runs: Ray Train's callbacks minus the Ray Data hand-off it does not use."""

import pytest
from ray.train import ScalingConfig

from returnn_ray.training.ray_trainer import ReturnnTorchTrainer


def _callback_names(**kwargs) -> list[str]:
    trainer = ReturnnTorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1), **kwargs)
    return [type(cb).__name__ for cb in trainer._create_default_callbacks()]


def test_no_dataset_manager_without_datasets():
    names = _callback_names()
    assert "DatasetsCallback" not in names
    assert "BackendSetupCallback" in names  # the process group is still set up


@pytest.mark.ray  # ray.data.range starts a local Ray when none is running
def test_datasets_keep_ray_trains_hand_off():
    import ray.data

    names = _callback_names(datasets={"train": ray.data.range(3)})
    assert "DatasetsCallback" in names
