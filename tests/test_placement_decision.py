"""The run's one placement decision (:mod:`returnn_ray.cluster.placement`): in this process or on
Ray, GPU or not, how many workers or actors. The rules are the settings' documented ones
(README: ``device``, ``ray_num_workers``, ``ray_local_mode``), checked on the pure halves with
resource dicts as a Ray cluster or this machine reports them; no Ray is started."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from returnn_ray.cluster import env

from returnn_ray.cluster.placement import Placement, decide, lacks_local_gpu, place, runs_here
from returnn_ray.config import load_config, load_settings


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_settings(*args: str):
    return load_settings(load_config([], list(args))).run


@pytest.mark.parametrize(
    "args, joins_ray, gpus_here, local",
    [
        ([], False, 0, True),  # one worker is all the run can use: no Ray to start
        ([], False, 1, True),
        ([], False, 2, False),  # two GPUs here: one worker per GPU, on Ray
        (["++device", "cpu"], False, 2, True),  # device cpu: the GPUs do not count
        (["++ray_num_workers", "1"], False, 0, False),  # asking for workers asks for Ray
        ([], True, 0, False),  # ray_address, RAY_ADDRESS or a running Ray: joined
        (["++ray_local_mode", "False"], False, 0, False),
        (["++ray_local_mode", "True"], True, 4, True),  # the setting wins over everything
        (["++ray_local_mode", "True", "++ray_num_workers", "3"], False, 0, True),
    ],
)
def test_runs_here_only_when_one_worker_is_all_the_run_can_use(args, joins_ray, gpus_here, local):
    assert runs_here(run_settings(*args), joins_ray=joins_ray, gpus_here=gpus_here) is local


@pytest.mark.parametrize(
    "args, resources, per, expected",
    [
        # device unset: GPU when the cluster has one (RETURNN's choice); one training worker per GPU
        ([], {"CPU": 8}, "worker", (False, 1, {"CPU": 1})),
        ([], {"CPU": 8, "GPU": 4}, "worker", (True, 4, {"GPU": 1})),
        (["++device", "cpu"], {"CPU": 8, "GPU": 4}, "worker", (False, 1, {"CPU": 1})),
        (["++device", "gpu"], {"CPU": 8}, "worker", (True, 1, {"GPU": 1})),  # check_placeable says no
        (["++ray_num_workers", "3"], {"CPU": 8, "GPU": 4}, "worker", (True, 3, {"GPU": 1})),
        # forward/search: one actor per GPU, else per CPU; each holds a CPU too
        ([], {"CPU": 8}, "actor", (False, 8, {"CPU": 1})),
        ([], {"CPU": 8, "GPU": 2}, "actor", (True, 2, {"CPU": 1, "GPU": 1})),
        (["++device", "cpu"], {"CPU": 8, "GPU": 2}, "actor", (False, 8, {"CPU": 1})),
        (["++ray_num_workers", "2"], {"CPU": 8}, "actor", (False, 2, {"CPU": 1})),
        ([], {"CPU": 0.5}, "actor", (False, 1, {"CPU": 1})),  # at least one
    ],
)
def test_decide_on_ray(args, resources, per, expected):
    placement = decide(run_settings(*args), resources, local=False, per=per)
    assert (placement.use_gpu, placement.num_workers, dict(placement.bundle)) == expected
    assert not placement.local and placement.kind == ("GPU" if expected[0] else "CPU")


@pytest.mark.parametrize(
    "args, gpus_here, use_gpu",
    [([], 0, False), ([], 1, True), (["++device", "cpu"], 1, False), (["++device", "gpu"], 1, True)],
)
def test_decide_in_this_process_is_one_worker_on_this_machine(args, gpus_here, use_gpu):
    placement = decide(run_settings("++ray_num_workers", "4", *args), {"GPU": gpus_here}, local=True)
    assert placement == Placement(local=True, use_gpu=use_gpu, num_workers=1, bundle=placement.bundle)


def test_a_placement_is_frozen_and_pickles():
    placement = decide(run_settings(), {"CPU": 2}, local=False)
    assert pickle.loads(pickle.dumps(placement)) == placement
    with pytest.raises(AttributeError):
        placement.num_workers = 2  # type: ignore[misc]


def _in_a_fresh_process(code: str) -> str:
    """``code``'s output in a new Python process: the questions below depend on whether Ray runs in
    the process, and other tests of this session may have started one here."""
    environ = {k: v for k, v in os.environ.items() if k != env.ADDRESS}
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


SETTINGS = "from returnn_ray.config import load_config, load_settings\n" \
    "def run_settings(*args): return load_settings(load_config([], list(args))).run\n"


def test_place_in_local_mode_starts_no_ray():
    placement = place(run_settings("++ray_local_mode", "True", "++device", "cpu"))
    assert placement == Placement(local=True, use_gpu=False, num_workers=1, bundle={"CPU": 1})
    out = _in_a_fresh_process(SETTINGS + (
        "import ray\n"
        "from returnn_ray.cluster.placement import place\n"
        "place(run_settings('++ray_local_mode', 'True', '++device', 'cpu'))\n"
        "print(ray.is_initialized())\n"
    ))
    assert out == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without a GPU")
def test_device_gpu_in_this_process_without_a_gpu_is_caught(monkeypatch):
    monkeypatch.delenv(env.ADDRESS, raising=False)
    # without a Ray running in the process (with one, a run joins it and its workers are placed by Ray)
    out = _in_a_fresh_process(SETTINGS + (
        "from returnn_ray.cluster.placement import lacks_local_gpu\n"
        "print(lacks_local_gpu(run_settings('++device', 'gpu')),"
        " lacks_local_gpu(run_settings('++device', 'gpu', '++task', 'eval', '++ray_local_mode', 'True')))\n"
    ))
    assert out == "True True"
    assert not lacks_local_gpu(run_settings("++device", "gpu", "++task", "forward"))  # its actors are placed by Ray
    assert not lacks_local_gpu(run_settings("++device", "gpu", "++ray_num_workers", "1"))
    assert not lacks_local_gpu(run_settings("++device", "gpu", "++ray_local_mode", "False"))
    assert not lacks_local_gpu(run_settings("++device", "cpu"))
    monkeypatch.setenv(env.ADDRESS, "auto")
    assert not lacks_local_gpu(run_settings("++device", "gpu"))
