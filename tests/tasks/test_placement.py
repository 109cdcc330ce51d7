"""More workers or actors than the Ray cluster can place (e.g. GPU workers on a cluster without
GPUs): one line after a bounded wait (``ray_placement_timeout``), never an endless PENDING; and a
node that joins during the wait ends it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

from returnn_ray.cli import main


def more_gpus_than_the_cluster_has() -> str:
    import ray

    return str(int(ray.cluster_resources().get("GPU", 0)) + 1)  # also on a CI machine with GPUs


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("returnn-ray: error:")]


def test_gpu_workers_on_a_joined_cluster_without_them_fail_in_one_line_after_the_timeout(ray_session, tmp_path):
    # Its own driver, joined to the shared Ray by address: a cluster that might grow, so it waits.
    workers = more_gpus_than_the_cluster_has()
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "returnn_ray", write_config(tmp_path), "++device", "gpu", "++ray_num_workers", workers,
           "++ray_address", address, "++ray_placement_timeout", "2"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"waiting up to 2 s for the Ray cluster to have room for {workers} training workers" in proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines == proc.stderr.strip().splitlines()[-1:], proc.stderr
    have = int(workers) - 1
    assert lines[0].startswith(
        f"returnn-ray: error: ray_num_workers {workers} needs {workers} GPU{'' if workers == '1' else 's'} but the"
        f" Ray cluster has {have} (after 2 s of waiting, ray_placement_timeout); the training workers cannot start: "
    ), lines
    assert wall < 60
    assert not (tmp_path / "learning_rates").exists()


def test_forward_and_sweep_with_more_gpus_than_the_cluster_has_fail_in_one_line(ray_session, tmp_path):
    # As for training: drivers of their own, joined to the shared Ray by address (a cluster that might
    # grow), so both wait ray_placement_timeout and then fail; run side by side to share the wait.
    config = write_config(tmp_path, num_epochs=1, eval={"class": "Task12AXDataset", "num_seqs": 4},
                          output_file=str(tmp_path / "fwd.hdf"))
    assert main([config, "++ray_local_mode", "True"]) == 0  # a checkpoint to forward
    workers = more_gpus_than_the_cluster_has()
    joined = ["++device", "gpu", "++ray_num_workers", workers, "++ray_placement_timeout", "1",
              "++ray_address", ray_session.get_runtime_context().gcs_address]
    commands = {
        "forward": [config, "++task", "forward", *joined],
        "sweep": ["sweep", config, "--grid", "learning_rate=0.01,0.02", "--dir", str(tmp_path / "sweep"), *joined],
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "returnn_ray", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    out = {name: proc.communicate(timeout=180) for name, proc in procs.items()}

    stdout, stderr = out["forward"]
    assert procs["forward"].returncode == 2, stderr[-3000:]
    assert f"waiting up to 1 s for the Ray cluster to have room for {workers} forward actors (1 CPU + 1 GPU each" in stdout
    (line,) = error_lines(stderr)
    assert line == stderr.strip().splitlines()[-1], stderr
    assert f"ray_num_workers {workers} needs {workers} GPU" in line and "(after 1 s of waiting, ray_placement_timeout)" in line, line
    assert line.endswith("the forward actors cannot start: " + (
        "set device cpu or add nodes with GPUs" if workers == "1" else "lower ray_num_workers or add nodes")), line
    assert not (tmp_path / "fwd.hdf").exists()

    stdout, stderr = out["sweep"]
    assert procs["sweep"].returncode == 2, stderr[-3000:]
    assert f"waiting up to 1 s for the Ray cluster to have room for {workers} workers of a sweep trial" in stdout
    (line,) = error_lines(stderr)
    assert line == stderr.strip().splitlines()[-1], stderr
    assert f"needs {workers} GPU" in line and "(after 1 s of waiting, ray_placement_timeout)" in line, line
    assert "the workers of a sweep trial cannot start" in line, line
    assert not (tmp_path / "sweep" / "trials").exists()


def test_a_local_ray_started_by_the_command_fails_at_once_and_says_so(ray_session, tmp_path, capsys):
    workers = more_gpus_than_the_cluster_has()
    start = time.monotonic()
    assert main([write_config(tmp_path), "++device", "gpu", "++ray_num_workers", workers]) == 2
    assert time.monotonic() - start < 30  # no 60 s wait: nothing can join a Ray that ray.init started
    out, err = capsys.readouterr()
    assert "waiting" not in out
    (line,) = error_lines(err)
    assert "(the local Ray this command started)" in line and "(ray_address)" in line, line


# A head with one CPU and no GPU; a GPU node (no CPU) joins 2 s into a wait for one GPU worker.
# Then a forward actor (1 CPU + 1 GPU on one node) fits on neither node, though the cluster has both.
GROWING_CLUSTER = """
import threading, time
import ray
from ray.cluster_utils import Cluster
from returnn_ray.errors import UserError
from returnn_ray.cluster.placement import check_placeable

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
try:
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    start, failed = time.monotonic(), []

    def wait_for_a_gpu():
        try:
            check_placeable(1, True, 120)
        except UserError as exc:
            failed.append(exc)

    waiting = threading.Thread(target=wait_for_a_gpu)
    waiting.start()
    time.sleep(2.0)
    cluster.add_node(num_cpus=0, num_gpus=1)  # here: Ray starts nodes from the main thread only
    waiting.join()
    print(f"PLACEABLE AFTER {time.monotonic() - start:.1f}" if not failed else f"FAILED {failed}", flush=True)
    try:
        check_placeable(1, True, 1, bundle={"CPU": 1, "GPU": 1}, what="forward actors")
    except UserError as exc:
        print("ERROR", exc, flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.ray  # a Ray cluster of its own
def test_a_node_joining_during_the_wait_ends_it_and_per_node_room_counts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", GROWING_CLUSTER], capture_output=True, text=True, env=env,
                          timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    waited = float(proc.stdout.split("PLACEABLE AFTER ")[1].split()[0])
    assert 2 <= waited < 60, proc.stdout
    assert "waiting up to 120 s for the Ray cluster to have room for 1 training workers (1 GPU each" in proc.stdout
    error = proc.stdout.split("ERROR ", 1)[1].strip()
    assert error.startswith(
        "ray_num_workers 1 needs 1 GPU but the Ray cluster has 1 GPU, but its nodes have room for only 0 forward"
        " actors of 1 CPU + 1 GPU each (after 1 s of waiting, ray_placement_timeout); the forward actors cannot start"
    ), error


def placement_groups(state: str) -> list[dict]:
    from ray.util import placement_group_table

    return [info for info in placement_group_table().values() if info["state"] == state]


@pytest.mark.ray  # two drivers of their own, joined by address to the shared 2-CPU Ray
def test_a_run_on_a_busy_cluster_waits_its_turn_and_a_timeout_bounds_the_wait(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    joined = ["++ray_num_workers", "2", "++device", "cpu", "++ray_address", address]  # each run holds both CPUs
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    created_before = len(placement_groups("CREATED"))
    first = subprocess.Popen([sys.executable, "-m", "returnn_ray", write_config(tmp_path / "a", num_epochs=6), *joined],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(placement_groups("CREATED")) == created_before and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until the first run's workers hold the CPUs
    second = subprocess.run([sys.executable, "-m", "returnn_ray", write_config(tmp_path / "b", num_epochs=1), *joined],
                            capture_output=True, text=True, timeout=300)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-3000:]
    assert "busy" not in first_out
    assert second.returncode == 0, second.stderr[-3000:]
    queue_lines = [line for line in second.stdout.splitlines() if "the Ray cluster is busy" in line]
    assert queue_lines and queue_lines[0].startswith(
        "returnn-ray: the Ray cluster is busy: 2 training workers (2 CPU) wait for room, first in line; free now: 0 CPU;"
        " waiting as long as it takes"), second.stdout
    assert len(queue_lines) == 1, queue_lines  # said once, not every second
    assert "returnn-ray: room for the training workers after " in second.stdout
    assert (tmp_path / "b" / "model.001.pt").exists() and (tmp_path / "a" / "model.006.pt").exists()


@pytest.mark.ray
def test_with_ray_placement_timeout_a_busy_cluster_is_one_line_after_it(ray_session, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    other_job = placement_group([{"CPU": 1}, {"CPU": 1}])  # another job holds both CPUs
    assert other_job.wait(60)
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "returnn_ray", write_config(tmp_path), "++ray_num_workers", "1", "++device", "cpu",
             "++ray_placement_timeout", "5", "++ray_address", ray_session.get_runtime_context().gcs_address],
            capture_output=True, text=True, timeout=120)
        wall = time.monotonic() - start
    finally:
        remove_placement_group(other_job)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 training workers (1 CPU) wait for room, first in line; free now: 0 CPU; waiting up to 5 s" in proc.stdout
    (line,) = error_lines(proc.stderr)
    assert line == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert line == (
        "returnn-ray: error: the Ray cluster is busy: no room for 1 training workers (1 CPU) after 5 s of waiting"
        " (ray_placement_timeout 5): run again when the cluster is less busy, or unset ray_placement_timeout to wait"
        " as long as it takes"), line
    assert wall < 60 and not (tmp_path / "learning_rates").exists()
    assert not [g for g in placement_groups("PENDING") if g["name"] == "returnn-ray queue"]  # none left behind


def lose_the_turn_in_the_hand_over(address: str, tmp_path, *args: str, hold_s: float):
    """A run that waits for both CPUs of the shared Ray gets its turn, and at that moment a third job
    asks for them; Ray tries a new group at once, while Ray Train's group comes 1-3 s after the
    hand-over, so the third job takes the room for ``hold_s``. Returns the run's exit code, stdout, stderr."""
    from ray.util.placement_group import placement_group, remove_placement_group

    def queue_groups() -> dict[str, str]:
        """The queue's placement groups, earlier tests' (removed) too, by id: their states. By id, as
        the table's order is not the order the groups were made in."""
        from ray.util import placement_group_table

        return {gid: g["state"] for gid, g in placement_group_table().items() if g["name"] == "returnn-ray queue"}

    queued_before = set(queue_groups())
    other_job = placement_group([{"CPU": 1}, {"CPU": 1}])  # holds both CPUs while the run starts
    assert other_job.wait(60)
    run = subprocess.Popen(
        [sys.executable, "-m", "returnn_ray", write_config(tmp_path, num_epochs=1), "++ray_num_workers", "2",
         "++device", "cpu", "++ray_address", address, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not set(queue_groups()) - queued_before and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # until the run waits in line
    (runs,) = set(queue_groups()) - queued_before
    remove_placement_group(other_job)
    while queue_groups()[runs] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.02)  # until the run's turn comes
    third_job = placement_group([{"CPU": 1}, {"CPU": 1}])
    try:
        assert third_job.wait(10), "the third job did not get the room in the hand-over"
        time.sleep(hold_s)
    finally:
        remove_placement_group(third_job)
    out, err = run.communicate(timeout=300)
    return run.returncode, out, err


@pytest.mark.ray
def test_a_run_that_loses_its_turn_in_the_hand_over_says_it_waits_again_and_finishes(ray_session, tmp_path):
    code, out, err = lose_the_turn_in_the_hand_over(ray_session.get_runtime_context().gcs_address, tmp_path, hold_s=25)
    assert code == 0, err[-3000:]
    again = [line for line in out.splitlines() if "busy again" in line]
    assert len(again) == 1 and again[0].startswith(
        "returnn-ray: the Ray cluster is busy again: another job took the room before the run's own placement group;"
        " 2 training workers (2 CPU) wait for room; free now: ") and again[0].endswith(
        " CPU; waiting as long as it takes"), out  # free now: a moment's count
    starts = [line for line in out.splitlines() if line.startswith("returnn-ray: room for the training workers after")]
    assert len(starts) == 1 and out.index(again[0]) < out.index(starts[0]), out  # the queue's wait: under 1 s, no line
    assert (tmp_path / "model.001.pt").exists()


@pytest.mark.ray
def test_ray_placement_timeout_bounds_the_wait_again_after_a_lost_turn(ray_session, tmp_path):
    start = time.monotonic()
    code, out, err = lose_the_turn_in_the_hand_over(ray_session.get_runtime_context().gcs_address, tmp_path,
                                                    "++ray_placement_timeout", "20", hold_s=45)
    assert code == 2, err[-3000:]
    assert "busy again" in out and "waiting up to 20 s (ray_placement_timeout)" in out, out
    (line,) = error_lines(err)
    assert line == err.strip().splitlines()[-1], err
    assert line.startswith("returnn-ray: error: the Ray cluster is busy: no room for 2 training workers (2 CPU) after 2"), line
    assert "(ray_placement_timeout 20)" in line, line
    assert time.monotonic() - start < 180
    assert not (tmp_path / "model.001.pt").exists()
