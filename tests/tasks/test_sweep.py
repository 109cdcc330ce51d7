"""``returnn-ray sweep`` on the shared local Ray: trials in their own directories, ASHA stopping
a bad variant, a failing trial reported while the others finish, an interrupted sweep resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

from returnn_ray.cli import main
from returnn_ray.config import load_config, load_settings
from returnn_ray.training.lr_file import load_learning_rate_file

# Two good learning rates, one that diverges in its first epoch (a trial error: 1e30 is finite and
# passes the config check, which refuses 'oops' or inf before Ray starts) and one that never learns
# (lr 0): with 2 trials at once the good ones reach ASHA's rungs first, so the lr-0 trial is cut there.
GRID = "learning_rate=0.02,0.01,1e30,0.0"


def sweep_args(tmp_path) -> list[str]:
    config = write_config(tmp_path, num_epochs=3, log_verbosity=4)
    return ["sweep", config, "--grid", GRID, "--scheduler", "asha", "--dir", str(tmp_path / "sweep")]


def trials_by_lr(sweep_dir) -> dict:
    out = {}
    for name in os.listdir(sweep_dir / "trials"):
        lr = name.rsplit("-", 1)[0].split("=", 1)[1]  # "learning_rate=1e+30-<trial id>": one swept key
        out[lr] = sweep_dir / "trials" / name
    return out


def wait_for(condition, what: str, timeout: float = 240.0):
    """Polls ``condition`` until it is true (returns its value); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def tune_terminated(sweep_dir) -> set[str]:
    """The trial ids that Tune's newest experiment state records as TERMINATED."""
    states = sorted((sweep_dir / "tune" / "sweep").glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except ValueError:  # being written
        return set()
    return {t["trial_id"] for t in (json.loads(data[0]) for data in trials) if t.get("status") == "TERMINATED"}


def test_sweep_runs_each_variant_in_its_own_dir_and_writes_table_best_config_and_plot(ray_session, tmp_path, capsys):
    assert main(sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    # Tune's own console box and paths into Ray's temp dir stay out; the sweep's table says it all
    assert "Configuration for experiment" not in out and "tensorboard --logdir" not in out, out
    sweep_dir = tmp_path / "sweep"
    trials = trials_by_lr(sweep_dir)
    assert set(trials) == {"0.02", "0.01", "1e+30", "0"}, trials

    for lr in ("0.02", "0.01"):  # each trial trains in its own directory
        assert (trials[lr] / "model.001.pt").exists() and (trials[lr] / "train.log").exists()
    stopped = load_learning_rate_file(str(trials["0"] / "learning_rates"))
    assert 1 <= len(stopped) < 3  # ASHA stopped the variant that does not learn

    table = (sweep_dir / "results.txt").read_text()
    assert table in out
    rows = {line.split()[1]: line for line in table.splitlines()[2:]}
    assert rows["0"].endswith("stopped early"), table
    assert "error: " in rows["1e+30"] and "non-finite training score" in rows["1e+30"], table
    best_row = table.splitlines()[2].split()
    assert best_row[1] in ("0.02", "0.01") and best_row[-1] == "done", table  # ASHA may cut the other good one
    assert sorted(load_learning_rate_file(str(trials[best_row[1]] / "learning_rates"))) == [1, 2, 3]
    # every trial read the datasets the sweep opened once, from Ray's object store
    assert "dataset train: the sweep's shared copy" in (trials[best_row[1]] / "train.log").read_text()

    best_config = str(sweep_dir / "best.config")
    settings = load_settings(load_config([best_config]))
    best_lr = best_row[1]
    assert settings.training.learning_rate == float(best_lr)
    assert settings.run.model == str(trials[best_lr] / "model")
    assert (sweep_dir / "dev_score.png").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    import ray

    args = sweep_args(tmp_path)[:4] + ["--dir", str(tmp_path / "sweep")]  # fifo: every trial to the end
    args[3] = "learning_rate=0.02,0.01,0.005"
    cmd = [sys.executable, "-m", "returnn_ray", *args, "++ray_address", ray.get_runtime_context().gcs_address,
           "++sweep_max_concurrent_trials", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trials_dir = tmp_path / "sweep" / "trials"
    finished = wait_for(lambda: [d for d in trials_dir.glob("*") if (d / "model.003.pt").exists()], "a finished trial")
    trial_id = finished[0].name.rsplit("-", 1)[1]
    # killed once Tune's experiment state records the trial as finished (else the rerun may rerun it)
    wait_for(lambda: trial_id in tune_terminated(tmp_path / "sweep"), f"Tune to record trial {trial_id} as terminated")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_mtime = (finished[0] / "model.003.pt").stat().st_mtime_ns

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the sweep" in rerun.stdout
    assert (finished[0] / "model.003.pt").stat().st_mtime_ns == done_mtime  # not rerun
    rows = (tmp_path / "sweep" / "results.txt").read_text().splitlines()[2:]
    assert len(rows) == 3 and all(r.endswith("done") for r in rows), rows
    for d in trials_dir.iterdir():
        assert sorted(load_learning_rate_file(str(d / "learning_rates"))) == [1, 2, 3]


def test_a_failed_trial_is_a_row_of_the_table_not_a_traceback(ray_session, tmp_path):
    import ray

    from returnn_ray.cluster import env

    config = write_config(tmp_path, num_epochs=1)
    cmd = [sys.executable, "-m", "returnn_ray", "sweep", config, "--grid", "learning_rate=0.02,1e30", "--dir",
           str(tmp_path / "sweep"), "++ray_address", ray.get_runtime_context().gcs_address]
    environ = {k: v for k, v in os.environ.items() if k != env.TUNE_TRIAL_ERRORS.name}  # as a user's shell
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 trials (1 failed)" in run.stdout and "non-finite training score" in run.stdout, run.stdout
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]


def test_more_workers_per_trial_than_the_cluster_has_fails_before_any_trial(ray_session, tmp_path, capsys):
    # the dir holds another sweep's failed start (no results): a refused sweep must leave it as it is
    old_trial = tmp_path / "sweep" / "trials" / "learning_rate=0.5-abc"
    old_trial.mkdir(parents=True)
    (tmp_path / "sweep" / "sweep.json").write_text('{"grid": []}\n')
    args = sweep_args(tmp_path) + ["++ray_num_workers", "5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ray_num_workers 5 needs 5 CPUs but the Ray cluster has 2" in err, err
    assert old_trial.is_dir() and (tmp_path / "sweep" / "sweep.json").read_text() == '{"grid": []}\n'
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["sweep.json", "trials"]


def test_trials_whose_workers_take_every_cpu_of_the_cluster_run(ray_session, tmp_path, capsys):
    # Each trial trains with Ray Train over 2 workers on the 2-CPU Ray: its Tune actor must hold no
    # CPU, or its workers (and so the sweep) wait for room for ever (they did: a hundredth of a CPU).
    config = write_config(tmp_path, num_epochs=1)
    args = ["sweep", config, "--grid", "learning_rate=0.02,0.01", "--dir", str(tmp_path / "sweep"), "++ray_num_workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 worker(s) each" in out and "2 trials (0 failed)" in out, out
    for trial in trials_by_lr(tmp_path / "sweep").values():
        ends = [line for line in (trial / "metrics.jsonl").read_text().splitlines() if '"epoch_end"' in line]
        assert len(ends) == 1, trial


@pytest.mark.timeout(420)
def test_a_trial_asha_stops_ends_its_ray_train_run_and_the_next_trials_run(ray_session, tmp_path, capsys):
    # One trial at a time, each Ray Train over 2 workers on the 2-CPU Ray. ASHA stops the lr-0 trial
    # at its first rung (far worse than lr 0.02 there); its Ray Train run must end then. With Ray's
    # TuneReportCallback it trained on, its controller blocked on Tune's one-report queue; Tune, its
    # actor wanted for the lr-0.01 trial, marked that one failed without running it, and the sweep
    # hung with the CPUs held.
    from ray.util.state import list_actors

    # 400 seqs: epochs of ~100 steps, so that a run left to train on reaches epoch 8 long after it is stopped
    train = {"class": "Task12AXDataset", "num_seqs": 400, "seq_ordering": "laplace:.10"}
    config = write_config(tmp_path, num_epochs=8, train=train)
    args = ["sweep", config, "--grid", "learning_rate=0.02,0.0,0.01", "--scheduler", "asha", "--dir", str(tmp_path / "sweep"),
            "++ray_num_workers", "2", "++sweep_max_concurrent_trials", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 trials (0 failed)" in out, out
    epochs = {}
    for lr, trial in trials_by_lr(tmp_path / "sweep").items():
        epochs[lr] = sum('"epoch_end"' in line for line in (trial / "metrics.jsonl").read_text().splitlines())
    assert epochs["0.02"] == 8 and 1 <= epochs["0"] < 8 and epochs["0.01"] >= 1, epochs
    rows = {line.split()[1]: line for line in (tmp_path / "sweep" / "results.txt").read_text().splitlines()[2:]}
    assert rows["0"].endswith("stopped early") and rows["0.02"].endswith("done"), rows

    def no_train_actor_alive() -> bool:
        address = ray_session.get_runtime_context().gcs_address  # this session's Ray, even where another runs
        alive = {a.class_name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])}
        return not {"TrainController", "RayTrainWorker"} & alive

    wait_for(no_train_actor_alive, "the trials' Ray Train actors to end", timeout=60)


def test_a_second_sweep_in_a_dir_in_use_is_one_line_and_changes_nothing(tmp_path, capsys):
    from returnn_ray.training.run_lock import ModelLock

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    with ModelLock(str(sweep_dir), path=str(sweep_dir / "sweep.lock")):  # as a running sweep (alive: us)
        assert main(sweep_args(tmp_path)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"sweep_dir (--dir) {str(sweep_dir)!r} is used by another run: pid {os.getpid()}" in line, line
    assert sorted(p.name for p in sweep_dir.iterdir()) == []


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_another_sweep_in_a_dir_with_results_is_refused_and_the_same_one_resumes(ray_session, tmp_path, capsys):
    config = write_config(tmp_path, num_epochs=1)
    sweep_dir = tmp_path / "sweep"
    first = ["sweep", config, "--grid", "learning_rate=0.02", "--dir", str(sweep_dir)]
    assert main(first) == 0
    capsys.readouterr()
    kept = {name: (sweep_dir / name).read_bytes() for name in ("results.txt", "best.config", "best.json")}
    trials = sorted(p.name for p in (sweep_dir / "trials").iterdir())

    assert main(["sweep", config, "--grid", "learning_rate=0.05,0.3", "--dir", str(sweep_dir)]) == 2
    out, err = capsys.readouterr()
    error = one_error_line(err)
    for part in ("holds another sweep", "its grid: learning_rate=0.02;", "now: learning_rate=0.05,0.3", "--dir"):
        assert part in error, error
    assert "0.02" not in out  # the old sweep's table is not reported as this one's
    assert {name: (sweep_dir / name).read_bytes() for name in kept} == kept
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == trials

    # an edited base config is another sweep too
    edited = write_config(tmp_path, num_epochs=1, max_seqs=2)
    assert main(["sweep", edited, "--grid", "learning_rate=0.02", "--dir", str(sweep_dir)]) == 2
    assert "its base config: train.json" in one_error_line(capsys.readouterr().err)

    checkpoint = next((sweep_dir / "trials").iterdir()) / "model.001.pt"
    mtime = checkpoint.stat().st_mtime_ns
    write_config(tmp_path, num_epochs=1)  # the same config again: the same sweep, resumed
    assert main(first) == 0
    out = capsys.readouterr().out
    assert "resuming the sweep" in out and "learning_rate=0.02" in out
    assert checkpoint.stat().st_mtime_ns == mtime
    assert (sweep_dir / "results.txt").read_bytes() == kept["results.txt"]


def test_a_failed_sweep_reruns_and_a_corrected_grid_starts_anew(ray_session, tmp_path, capsys):
    config = write_config(tmp_path, num_epochs=1)
    sweep_dir = tmp_path / "sweep"
    failing = ["sweep", config, "--grid", "learning_rate=1e30", "--dir", str(sweep_dir)]
    assert main(failing) == 2
    assert "no trial of the sweep reported a score" in one_error_line(capsys.readouterr().err)
    # the same command again: its failed trial is tried again (and fails again), one line
    assert main(failing) == 2
    out, err = capsys.readouterr()
    assert "resuming the sweep" in out and "no trial of the sweep reported a score" in one_error_line(err)

    assert main(["sweep", config, "--grid", "learning_rate=0.02", "--dir", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "held another sweep without trial results (its grid: learning_rate=1e+30; now: learning_rate=0.02)" in out
    rows = (sweep_dir / "results.txt").read_text().splitlines()[2:]
    assert len(rows) == 1 and rows[0].split()[1] == "0.02" and rows[0].endswith("done"), rows
    assert [p.name.split("-")[0] for p in (sweep_dir / "trials").iterdir()] == ["learning_rate=0.02"]
