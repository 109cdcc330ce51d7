"""Ray Train's and Ray Data's helper actors started ahead (cluster/ray_internals.start_shared_helpers,
cluster/head.Helpers: what experiments/asr.py does while its data stage runs)."""

from __future__ import annotations

import time

from ray.train import RunConfig, ScalingConfig

from returnn_ray.cluster.head import Helpers
from returnn_ray.training.ray_trainer import ReturnnTorchTrainer


HELPERS = {
    "autoscaling_coordinator": ("AutoscalingCoordinator", "AutoscalingCoordinator"),
    "stats_actor": ("datasets_stats_actor", "_dataset_stats_actor"),
    "actor_location_tracker": ("ActorLocationTracker", "ActorLocationTracker"),
}


def test_helpers_started_ahead_are_the_ones_ray_train_and_ray_data_use(ray_session, tmp_path):
    import ray
    import ray.data

    from returnn_ray.cluster.ray_internals import start_shared_helpers

    def ids() -> dict[str, str]:
        found = {}
        for key, (name, namespace) in HELPERS.items():
            try:
                found[key] = ray.get_actor(name, namespace=namespace)._actor_id.hex()
            except ValueError:
                pass
        return found

    for name, namespace in HELPERS.values():  # earlier tests' runs may have started them
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:
            pass
    deadline = time.monotonic() + 30
    while ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ids() == {}
    assert start_shared_helpers() == sorted(HELPERS)
    ahead = ids()
    assert ahead.keys() == HELPERS.keys()
    # a training run and an actor-pool map (forward's) find them: no new ones
    ReturnnTorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1),
                        run_config=RunConfig(storage_path=str(tmp_path))).fit()

    class Double:
        def __call__(self, batch):
            return {"id": batch["id"] * 2}

    assert sorted(ray.data.range(4).map_batches(Double, concurrency=1, num_cpus=0.5).to_pandas()["id"]) == [0, 2, 4, 6]
    assert ids() == ahead


def test_helpers_never_given_an_address_end_at_once():
    # asr.py joins them whatever happened to the head start: a failed start must not hang it
    start = time.monotonic()
    ok, output = Helpers().join(timeout=60)
    assert not ok and "not done in" not in output and time.monotonic() - start < 60


def test_the_helpers_process_tells_the_cluster_resources_so_that_asr_py_need_not_connect_to_ask(ray_session):
    import ray

    helpers = Helpers()
    helpers.start(ray.get_runtime_context().gcs_address)
    ok, output = helpers.join(timeout=120)
    assert ok, output
    assert " ".join(sorted(HELPERS)) in output.splitlines() and "resources " not in output  # that line taken off
    assert helpers.resources is not None and helpers.resources["CPU"] == ray.cluster_resources()["CPU"] == 2
