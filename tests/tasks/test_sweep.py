"""``returnn-ray sweep`` on the shared local Ray: trials in their own directories, ASHA stopping
a bad variant, a failing trial reported while the others finish, an interrupted sweep resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

from returnn_ray.cli import main
from returnn_ray.config import load_config
from returnn_ray.settings import load_settings
from returnn_ray.training.lr_file import load_learning_rate_file

# Two good learning rates, a variant that cannot even start, and one that never learns (lr 0):
# with 2 trials at once the good ones reach ASHA's rungs first, so the lr-0 trial is cut there.
GRID = "learning_rate=0.02,0.01,'oops',0.0"


def sweep_args(tmp_path) -> list[str]:
    config = write_config(tmp_path, num_epochs=3, log_verbosity=4)
    return ["sweep", config, "--grid", GRID, "--scheduler", "asha", "--dir", str(tmp_path / "sweep")]


def trials_by_lr(sweep_dir) -> dict:
    out = {}
    for name in os.listdir(sweep_dir / "trials"):
        lr = name.split("+")[0].split("=")[1].rsplit("-", 1)[0]
        out[lr] = sweep_dir / "trials" / name
    return out


def test_sweep_runs_each_variant_in_its_own_dir_and_writes_table_best_config_and_plot(ray_session, tmp_path, capsys):
    assert main(sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    # Tune's own console box and paths into Ray's temp dir stay out; the sweep's table says it all
    assert "Configuration for experiment" not in out and "tensorboard --logdir" not in out, out
    sweep_dir = tmp_path / "sweep"
    trials = trials_by_lr(sweep_dir)
    assert set(trials) == {"0.02", "0.01", "oops", "0"}, trials

    for lr in ("0.02", "0.01"):  # each trial trains in its own directory
        assert (trials[lr] / "model.001.pt").exists() and (trials[lr] / "train.log").exists()
    stopped = load_learning_rate_file(str(trials["0"] / "learning_rates"))
    assert 1 <= len(stopped) < 3  # ASHA stopped the variant that does not learn

    table = (sweep_dir / "results.txt").read_text()
    assert table in out
    rows = {line.split()[1]: line for line in table.splitlines()[2:]}
    assert rows["0"].endswith("stopped early"), table
    assert "error: " in rows["oops"] and "cannot set config key 'learning_rate' to 'oops'" in rows["oops"], table
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
    deadline = time.monotonic() + 240
    finished = []
    while time.monotonic() < deadline and not finished:
        time.sleep(0.5)
        if trials_dir.exists():
            finished = [d for d in trials_dir.iterdir() if (d / "model.003.pt").exists()]
    assert finished, "no trial finished in time"
    time.sleep(1.0)  # let Tune record it as terminated
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


def test_more_workers_per_trial_than_the_cluster_has_fails_before_any_trial(ray_session, tmp_path, capsys):
    args = sweep_args(tmp_path) + ["++ray_num_workers", "5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ray_num_workers 5 needs 5 CPUs but the Ray cluster has 2" in err, err
    assert not (tmp_path / "sweep" / "trials").exists()
