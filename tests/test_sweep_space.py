"""Sweep definitions, trial command lines and the sweep's result files, without Ray."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from returnn_ray.cli import main, parse_argv
from returnn_ray.config import KNOWN_KEYS, load_config, load_settings
from returnn_ray.errors import ConfigError
from returnn_ray.sweep.job import SweepJob
from returnn_ray.sweep.results import TrialSummary, best_config_text, format_table, ranked, write_plot
from returnn_ray.sweep.space import Dimension, override_args, parse_space, warn_unknown_keys
from returnn_ray.sweep.trial import trial_args


def test_sweep_dict_and_grid_args_give_typed_dimensions():
    space = parse_space(
        {"dropout": {"uniform": [0.1, 0.3]}, "unit": ["lstm", "gru"]},
        ["optimizer={'class': 'adam', 'epsilon': 1e-8},{'class': 'sgd'}", "batch_size=2000, 5000"],
    )
    assert space == [
        Dimension("dropout", "uniform", (0.1, 0.3)),
        Dimension("unit", "grid", ("lstm", "gru")),
        Dimension("optimizer", "grid", ({"class": "adam", "epsilon": 1e-8}, {"class": "sgd"})),
        Dimension("batch_size", "grid", (2000, 5000)),
    ]


@pytest.mark.parametrize(
    "sweep, grid, culprit",
    [
        (None, [], "varies nothing"),
        (None, ["learning_rate="], "no values"),
        (None, ["=1,2"], "key=value1"),
        ({"learning_rate": {"uniform": [0.1]}}, [], "low, high"),
        ({"learning_rate": {"loguniform": [0, 1]}}, [], "low > 0"),
        ({"learning_rate": {"normal": [0, 1]}}, [], "one of"),
        (None, ["max_seqs=1", "max_seqs=2"], "'max_seqs' is given twice"),
        ({"variant": ["a.config"]}, [], "--variants"),
        ({"learning_rate_file": ["a", "b"]}, [], "cannot be swept"),
        (None, ["sweep_mode=min,max"], "configures the sweep itself"),
    ],
)
def test_bad_sweeps_name_the_culprit(sweep, grid, culprit):
    with pytest.raises(ConfigError, match=culprit):
        parse_space(sweep, grid)


def test_an_unknown_swept_key_warns_with_the_closest_key(caplog):
    space = parse_space(None, ["learning_rte=0.1,0.2", "my_own_key=1,2"])
    with caplog.at_level(logging.WARNING, logger="returnn_ray"):
        messages = warn_unknown_keys(space, KNOWN_KEYS, config_keys=["my_own_key"])
    assert messages == ["swept key 'learning_rte' is neither a returnn-ray key nor in the config (did you mean 'learning_rate'?)"]


def test_a_variant_reaches_the_trial_as_the_config_a_user_would_get(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"learning_rate": 0.1, "optimizer": {"class": "sgd"}, "model": "/x/net", "batching": "random"}))
    values = {"learning_rate": 0.003, "optimizer": {"class": "adam"}, "batching": "sorted", "max_seqs": 7}
    job = SweepJob(files=(str(base),), args=("++num_epochs", "3"), model="/x/net", sweep_dir=str(tmp_path), metric=None)
    files, args = trial_args(job, values, str(tmp_path / "trial"))
    settings = load_settings(load_config(files, args))
    assert settings.training.learning_rate == 0.003 and settings.training.optimizer == {"class": "adam"}
    assert settings.data.batching == "sorted" and settings.batching.max_seqs == 7 and settings.run.num_epochs == 3
    assert settings.run.model == str(tmp_path / "trial" / "net") and settings.run.task == "train"
    assert override_args({"variant": "a.config", "x": 1}) == ["++x", "1"]


def _trial(name, values, scores, status="done"):
    return TrialSummary(name, f"/s/{name}", values, status, scores, "dev_score")


def test_table_ranks_trials_and_the_best_config_runs(tmp_path):
    trials = [
        _trial("a", {"learning_rate": 0.1}, {1: 0.5, 2: 0.4}),
        _trial("b", {"learning_rate": 0.01}, {1: 0.3, 2: 0.2}),
        _trial("c", {"learning_rate": 1.0}, {1: 0.9}, "stopped early"),
        _trial("d", {"learning_rate": "oops"}, {}, "error: bad"),
    ]
    assert [t.name for t in ranked(trials, "min")] == ["b", "a", "c", "d"]
    assert [t.name for t in ranked(trials, "max")] == ["c", "a", "b", "d"]
    table = format_table(trials, "min").splitlines()
    assert table[0].split() == ["#", "learning_rate", "best", "epoch", "best", "dev_score", "epochs", "status"]
    assert table[2].split() == ["1", "0.01", "2", "0.2000", "2", "done"]
    assert table[-1].split()[-2:] == ["error:", "bad"]

    base = tmp_path / "base.config"
    base.write_text("#!returnn.py\nimport os\nlearning_rate = 0.5\nnum_epochs = 2\nname = os.path.basename(__file__)\n")
    lines = tmp_path / "extra.txt"
    lines.write_text("max_seqs 9\n")
    best = ranked(trials, "min")[0]
    path = tmp_path / "best.config"
    path.write_text(best_config_text(best, [str(base), str(lines)], ["++learning_rate", "0.01", "++task", "train"], "min"))
    settings = load_settings(load_config([str(path)]))
    assert settings.training.learning_rate == 0.01 and settings.batching.max_seqs == 9 and settings.run.num_epochs == 2
    assert "dev_score 0.2 at epoch 2" in path.read_text()

    png = tmp_path / "dev_score.png"
    assert write_plot(str(png), trials)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_command_line():
    inv = parse_argv(["sweep", "b.config", "--grid", "learning_rate=0.1,0.2", "--grid=max_seqs=2,4",
                      "--variants", "x.config", "y.config", "--scheduler", "asha", "--num-samples=2"])
    assert inv.sweep_grid == ("learning_rate=0.1,0.2", "max_seqs=2,4")
    assert inv.sweep_variants == ("x.config", "y.config") and inv.config_files == ("b.config",)
    assert inv.config_args == ("++task", "sweep", "++sweep_scheduler", "asha", "++sweep_num_samples", "2")


@pytest.mark.parametrize(
    "extra, culprit",
    [
        (["--grid"], "--grid needs a value"),
        (["--grid", "learning_rate="], "no values"),
        ([], "varies nothing"),
        (["--grid", "learning_rate=0.1,0.2", "--metric", "dev_nonsense"], "dev_nonsense"),
        (["--variants", "/nonexistent.config"], "/nonexistent.config"),
        # sampled values (a config's sweep dict): each choice and both ends of a range are checked
        (["--config", "{tmp}/sampled.json"], "sweep trial max_seqs=0+batch_size=1: max_seqs must be > 0"),
    ],
)
def test_bad_sweep_input_fails_before_any_trial(tmp_path, capsys, extra, culprit):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({
        "train": {"class": "Task12AXDataset", "num_seqs": 5}, "dev": {"class": "Task12AXDataset", "num_seqs": 5},
        "num_inputs": 9, "num_outputs": 2, "network": {"output": {"class": "softmax", "loss": "ce"}},
        "model": str(tmp_path / "m" / "model"),
    }))
    (tmp_path / "sampled.json").write_text(json.dumps({"sweep": {"max_seqs": {"choice": [2, 0]}, "batch_size": {"randint": [1, 9]}}}))
    assert main(["sweep", str(base), *(a.replace("{tmp}", str(tmp_path)) for a in extra)]) == 2
    err = capsys.readouterr().err
    assert culprit in err and err.count("returnn-ray: error:") == 1, err
    assert not (tmp_path / "m").exists()  # nothing written (no model dir, no sweep dir)


def test_the_sweep_definition_keeps_every_argument_that_decides_the_trials(tmp_path):
    from returnn_ray.sweep import manifest

    args = ["++task", "sweep", "--config=extra.config", "++learning_rate", "0.2", "-n", "3",
            "++ray_address", "auto", "++sweep_dir", "x"]
    assert manifest._overrides(args) == [
        ["++task", "sweep"], ["--config=extra.config"], ["++learning_rate", "0.2"], ["-n"], ["3"],
    ]


def test_a_trial_with_a_mid_epoch_checkpoint_counts_as_progress(tmp_path):
    from returnn_ray.sweep import manifest

    trial = tmp_path / "trials" / "learning_rate=0.1-abc"
    trial.mkdir(parents=True)
    assert not manifest.has_results(str(tmp_path))
    (trial / "model.001.partial.pt").write_bytes(b"")
    assert manifest.has_results(str(tmp_path))


def _trial_settings(tmp_path, base_text: str, suffix: str, *overrides: str) -> list:
    """``(name, Settings)`` of trials loaded as a sweep loads them: each from the base file anew."""
    base = tmp_path / f"base{suffix}"
    base.write_text(base_text)
    return [(" ".join(args), load_settings(load_config([str(base)], list(args)))) for args in overrides]


TASK12AX = {"train": {"class": "Task12AXDataset", "num_seqs": 5}, "num_inputs": 9, "num_outputs": 2,
            "network": {"output": {"class": "softmax", "loss": "ce"}}, "num_epochs": 2}


def test_swept_batch_sizes_that_change_the_batches_pass_and_ones_that_do_not_are_refused(tmp_path):
    from returnn_ray.data.from_settings import open_dataset
    from returnn_ray.sweep.checks import check_batches_differ

    base = json.dumps(TASK12AX)
    # Task12AX's 5 seqs have 84, 15, 65, 97, 45 frames: 100 frames hold one seq, 1000 all of them
    check_batches_differ(_trial_settings(tmp_path, base, ".json", ("++batch_size", "100"), ("++batch_size", "1000")),
                         open_dataset)
    # other learning rates with one batch size: nothing about the batches is swept
    check_batches_differ(_trial_settings(tmp_path, base, ".json", ("++learning_rate", "0.1"), ("++learning_rate", "0.2")),
                         open_dataset)
    # the same batches, but each trial also has its own learning rate: different trainings
    check_batches_differ(_trial_settings(tmp_path, base, ".json", ("++batch_size", "400", "++learning_rate", "0.1"),
                                         ("++batch_size", "800", "++learning_rate", "0.2")), open_dataset)
    same = _trial_settings(tmp_path, base, ".json", ("++batch_size", "400", "++max_seqs", "2"),
                           ("++batch_size", "800", "++max_seqs", "2"))
    with pytest.raises(ConfigError, match="max_seqs 2 binds first: 2 of the 3 batches"):
        check_batches_differ(same, open_dataset)


def test_trials_of_a_python_config_compare_its_functions_by_code_not_identity(tmp_path):
    from returnn_ray.data.from_settings import open_dataset
    from returnn_ray.sweep.checks import check_batches_differ

    # each trial loads the config anew, so its functions are new objects: equal code is the same setting
    text = "#!rnn.py\n" + "".join(f"{k} = {v!r}\n" for k, v in TASK12AX.items()) + (
        "max_seqs = 2\n"
        "def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs):\n"
        "    return learning_rate * min(1.0, (global_train_step + 1) / 10)\n"
    )
    trials = _trial_settings(tmp_path, text, ".config", ("++batch_size", "400"), ("++batch_size", "800"))
    assert trials[0][1].training.dynamic_learning_rate is not trials[1][1].training.dynamic_learning_rate
    culprit = "trials ++batch_size 400 and ++batch_size 800 train on the same batches"
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        check_batches_differ(trials, open_dataset)
    other = text.replace("/ 10)", "/ 20)")  # another function body: another setting, not compared
    trials = _trial_settings(tmp_path, text, ".config", ("++batch_size", "400"))
    trials += _trial_settings(tmp_path, other, "2.config", ("++batch_size", "800"))
    check_batches_differ(trials, open_dataset)


def test_the_sweep_job_comes_back_from_tunes_plain_data(tmp_path):
    job = SweepJob(files=("/a.config",), args=("++x", "1"), model=None, sweep_dir=str(tmp_path), metric="dev_score",
                   data_fingerprint="d", local_trials=True)
    assert SweepJob.from_tune(json.loads(json.dumps(job.to_tune()))) == job
