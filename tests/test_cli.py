"""Tests of the returnn-ray command line: parsing, dispatch, exit codes, error output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from returnn_ray import cli
from returnn_ray.cli import DumpDatasetArgs, main, parse_argv
from returnn_ray.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


@pytest.fixture
def good_config(tmp_path) -> str:
    return write(tmp_path, "good.config", "#!returnn.py\ntask = 'train'\nbatch_size = 100\nnum_epochs = 2\n")


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces the train task by one that records its call."""
    calls = []

    def run(settings, config):
        calls.append((settings, config))
        return 3

    monkeypatch.setitem(cli.TASKS, "train", run)
    return calls


# ------------------------------------------------------------------ parsing


def test_parse_config_files_and_options():
    inv = parse_argv(["a.config", "b.py", "++learning_rate", "+-0.1", "-n", "3", "--device=gpu", "-v5"])
    assert inv.action == "run" and inv.dump is None and not inv.debug
    assert inv.config_files == ("a.config", "b.py")
    assert inv.config_args == ("++learning_rate", "+-0.1", "-n", "3", "--device=gpu", "-v5")


def test_parse_dump_dataset():
    inv = parse_argv(["dump-dataset", "a.config", "++x", "1", "--dataset", "dev", "--epoch=3", "--shard", "1/4",
                      "--batches", "-e", "2"])
    assert inv.config_files == ("a.config",)
    assert inv.config_args == ("++x", "1", "-e", "2")  # -e stays RETURNN's epoch option
    assert inv.dump == DumpDatasetArgs(dataset="dev", epoch=3, shard=(1, 4), batches=True)
    assert parse_argv(["dump-dataset", "a.config"]).dump == DumpDatasetArgs()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dump-dataset", "a.config", "--shard", "4/4"], "--shard K/W needs 0 <= K < W, got '4/4'"),
        (["dump-dataset", "a.config", "--shard", "x"], "--shard must be K/W"),
        (["dump-dataset", "a.config", "--epoch", "0"], "--epoch must be an int >= 1, got '0'"),
        (["dump-dataset", "a.config", "--dataset"], "--dataset needs a value"),
        (["++x", "1"], "no config file given"),
    ],
)
def test_parse_errors(argv, message):
    with pytest.raises(UserError) as err:
        parse_argv(argv)
    assert message in str(err.value)


def test_parse_help_version_debug():
    assert parse_argv(["a.config", "-h"]).action == "help"
    assert parse_argv(["--help"]).action == "help"
    assert parse_argv(["-V"]).action == "version"
    inv = parse_argv(["a.config", "--debug"])
    assert inv.debug and inv.config_args == ("++debug", "True")
    assert parse_argv(["a.config", "++debug", "true"]).debug
    assert not parse_argv(["a.config", "++debug", "False"]).debug


# ------------------------------------------------------------------ main in-process


def test_help_and_usage(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: returnn-ray CONFIG")
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: returnn-ray CONFIG")


def test_dispatches_on_task_with_settings(good_config, fake_train):
    assert main([good_config, "++num_epochs", "4"]) == 3
    (settings, config), = fake_train
    assert settings.run.num_epochs == 4 and settings.batching.batch_size == 100
    assert config.typed_value("num_epochs") == 4


def test_missing_task_module_is_a_user_error(good_config, monkeypatch, capsys):
    monkeypatch.setitem(cli.TASKS, "train", cli._task_module("train", "returnn_ray.tasks.no_such_task_module"))
    assert main([good_config]) == 2
    err = capsys.readouterr().err
    assert err == "returnn-ray: error: task 'train' is not available yet in this returnn-ray version\n"


def test_user_error_is_one_line_with_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, "bad.config", "#!returnn.py\nbatch_size = 0\n")
    assert main([path]) == 2
    assert capsys.readouterr().err == "returnn-ray: error: batch_size must be > 0, got 0\n"


def test_debug_shows_traceback(tmp_path, capsys):
    path = write(tmp_path, "bad.config", "#!returnn.py\ndebug = True\nbatch_size = 0\n")
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("returnn-ray: error: batch_size must be > 0, got 0\n")


def test_unread_key_warning_after_setup(good_config, fake_train, caplog):
    assert main([good_config, "++learning_rte", "0.1"]) == 3
    assert "config key 'learning_rte' is not used by returnn-ray (did you mean 'learning_rate'?)" in caplog.text


def test_dump_dataset_calls_the_task_with_its_options(good_config, monkeypatch):
    calls = []
    fake = types.ModuleType("returnn_ray.tasks.dump_dataset")
    fake.run = lambda settings, config, **kwargs: calls.append(kwargs) or 0
    monkeypatch.setitem(sys.modules, "returnn_ray.tasks.dump_dataset", fake)
    assert main(["dump-dataset", good_config, "--dataset", "dev", "--epoch", "2", "--shard", "0/2"]) == 0
    assert calls == [{"dataset": "dev", "epoch": 2, "shard": (0, 2), "batches": False}]


def test_other_exceptions_propagate(good_config, monkeypatch):
    def broken(settings, config):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.TASKS, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main([good_config])


# ------------------------------------------------------------------ a real process


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "returnn_ray", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_process_exit_code_and_single_error_line(tmp_path):
    write(tmp_path, "bad.config", "#!returnn.py\nx = 1\ny = undefined_name + 1\n")
    result = _run(["bad.config"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "returnn-ray: error: bad.config:3: NameError: name 'undefined_name' is not defined"
    ]

    result = _run(["bad.config", "++debug", "True"], tmp_path)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("returnn-ray: error: bad.config:3: NameError")


def test_process_help_is_fast_and_imports_no_torch_or_ray(tmp_path):
    code = "import sys; from returnn_ray.cli import main; main(['--help']); " \
           "print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]")
