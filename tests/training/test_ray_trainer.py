"""The trainer returnn-ray runs: Ray Train's callbacks minus the Ray Data hand-off it does not use."""

import pytest
from ray.train import RunConfig, ScalingConfig

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


def _address(ray) -> str:
    """The tests' own Ray, for the State API, even where another Ray runs on the machine."""
    return ray.get_runtime_context().gcs_address


def test_the_controller_is_killed_once_fit_has_its_result(ray_session, tmp_path):
    # killed (ray.kill), not left to end when the driver's handle goes: that ending shuts its
    # Python down on the CPU the next run starts on
    from ray.util.state import list_actors

    def controllers() -> dict[str, dict]:
        return {a.actor_id: a for a in list_actors(address=_address(ray_session), filters=[("class_name", "=", "TrainController")], detail=True)}

    before = set(controllers())
    result = ReturnnTorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.error is None
    new = {i: a for i, a in controllers().items() if i not in before}
    assert len(new) == 1
    (actor,) = new.values()
    assert actor.state == "DEAD"
    assert "ray.kill" in str(actor.death_cause), actor.death_cause



def test_a_run_starts_no_placement_group_cleaner_and_its_placement_group_goes_with_it(ray_session, tmp_path):
    # the cleaner (a detached actor per run, polling the State API) guards a controller that dies
    # while its job lives on; a returnn-ray run is a job of its own, and Ray removes a job's groups
    import ray
    from ray.util.state import list_actors

    def cleaners() -> set[str]:
        return {a.actor_id for a in list_actors(address=_address(ray_session), filters=[("class_name", "=", "PlacementGroupCleaner")], detail=True)}

    def live_groups() -> set[str]:
        return {gid for gid, g in ray.util.placement_group_table().items() if g["state"] != "REMOVED"}

    before, groups_before = cleaners(), live_groups()
    result = ReturnnTorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.error is None
    assert cleaners() == before
    assert live_groups() <= groups_before  # the run's worker group is removed once it is done


def test_a_sweep_trials_run_keeps_the_cleaner_as_its_job_outlives_it(ray_session):
    # fit() in a Tune actor (a Ray task here, as far as the mode goes): Tune may kill it while the sweep's job lives on, and then only the
    # cleaner removes the run's placement group
    import ray

    @ray.remote(num_cpus=0)
    def names_in_an_actor_process() -> list[str]:
        from ray.train import ScalingConfig

        from returnn_ray.training.ray_trainer import ReturnnTorchTrainer

        trainer = ReturnnTorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
        return [type(cb).__name__ for cb in trainer._create_default_callbacks()]

    assert "PlacementGroupCleanerCallback" in ray.get(names_in_an_actor_process.remote())
    assert "PlacementGroupCleanerCallback" not in _callback_names()  # this process: the job's driver
