"""returnn-ray commands as forks of a process that imported torch and Ray once (returnn_ray.experiment.warm_start).

Each case runs its parent in a fresh interpreter: a fork of the pytest process would inherit the
test session's Ray connection.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from returnn_ray.experiment import warm_start
from returnn_ray.atomic import is_temp_path

pytestmark = pytest.mark.skipif(not warm_start.available(), reason="warm start forks: Linux only")

PARENT = textwrap.dedent(
    """
    import json, os, sys
    from returnn_ray.experiment import warm_start
    try:
        warm_start.preload(["torch", "returnn_ray.cli"])
        cmd = warm_start.WarmCommand(json.loads(sys.argv[1]), dict(os.environ, WARM_TEST="child"))
        out = ""
        if sys.argv[2] == "terminate":  # once the command has printed sys.argv[3]: its run is under way
            for line in iter(cmd.stdout.readline, ""):
                out += line
                if sys.argv[3] in line:
                    cmd.terminate()
                    break
        out += cmd.stdout.read()
        print(json.dumps({"out": out, "code": cmd.wait(), "pid": cmd.pid}))
    finally:
        print("parent finally ran once")
    """
)


def run_parent(args, mode="wait", marker="", cwd=None):
    proc = subprocess.run(
        [sys.executable, "-c", PARENT, json.dumps(args), mode, marker],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # the child ends with os._exit: the parent's finally block (and its prints) never run twice
    assert lines.count("parent finally ran once") == 1, proc.stdout
    return json.loads(lines[0])


def test_version_runs_in_a_fork():
    from returnn_ray import __version__

    result = run_parent(["--version"])
    assert result["code"] == 0
    assert result["out"].strip() == f"returnn-ray {__version__}"


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    result = run_parent([str(tmp_path / "missing.config")])
    assert result["code"] == 2
    lines = result["out"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("returnn-ray: error:") and "missing.config" in lines[0], result


def test_a_command_trains_with_the_childs_environment_and_cwd(tmp_path):
    """A whole (local-mode) training run in the fork: its files land where the command says."""
    config = {
        "task": "train", "train": {"class": "Task12AXDataset", "num_seqs": 20}, "num_inputs": 9, "num_outputs": 2,
        "network": {"output": {"class": "softmax", "loss": "ce"}}, "batch_size": 2000, "max_seqs": 10,
        "adam": True, "learning_rate": 0.01, "num_epochs": 1, "model": "model/net",
        "learning_rate_file": "model/lr.txt",
    }
    (tmp_path / "train.json").write_text(json.dumps(config))
    result = run_parent(["train.json"], cwd=tmp_path)
    assert result["code"] == 0, result["out"]
    assert (tmp_path / "model" / "net.001.pt").exists() and (tmp_path / "model" / "lr.txt").exists()
    assert "finished training" in result["out"]


def test_sigterm_reaches_the_command(tmp_path):
    config = {
        "task": "train", "train": {"class": "Task12AXDataset", "num_seqs": 5000}, "num_inputs": 9, "num_outputs": 2,
        "network": {"output": {"class": "softmax", "loss": "ce"}}, "batch_size": 2000, "max_seqs": 10,
        "adam": True, "learning_rate": 0.01, "num_epochs": 50, "model": "model/net",
    }
    (tmp_path / "train.json").write_text(json.dumps(config))
    # SIGTERM once the first epoch has started: returnn-ray's handler (installed as main() begins) is
    # up, so the command ends with its one line and 143. Sent earlier (between the fork and main(),
    # under the default action the child starts with) it would die of the signal itself (-15).
    result = run_parent(["train.json"], mode="terminate", marker="start epoch 1 ", cwd=tmp_path)
    assert result["code"] == 143, result
    assert "start epoch 1 " in result["out"] and "finished training" not in result["out"], result
    (line,) = [l for l in result["out"].splitlines() if l.startswith("returnn-ray: terminated")]
    assert line.startswith("returnn-ray: terminated (SIGTERM): ") and "rerun" in line, result
    model_dir = tmp_path / "model"
    assert not model_dir.exists() or not [n for n in os.listdir(model_dir) if is_temp_path(str(model_dir / n))]


CALLER = textwrap.dedent(
    """
    import json, os
    from returnn_ray.experiment import warm_start

    def fail(name):
        raise KeyError(name)

    child_pid = warm_start.call_in_fork(os.getpid)
    try:
        warm_start.call_in_fork(fail, "no-such-key")
        raised = None
    except KeyError as exc:
        raised = str(exc)
    print(json.dumps({"parent": os.getpid(), "child": child_pid, "raised": raised}))
    """
)


def test_call_in_fork_returns_the_childs_value_and_raises_its_exception():
    proc = subprocess.run([sys.executable, "-c", CALLER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["child"] != result["parent"]
    assert result["raised"] == "'no-such-key'"


PRELOADER = textwrap.dedent(
    """
    import json, sys
    from returnn_ray.experiment import warm_start

    seconds = warm_start.Preload(["json", "returnn_ray.cli"]).join()
    try:
        warm_start.Preload(["no_such_module_for_returnn_ray"]).join()
        raised = None
    except ModuleNotFoundError as exc:
        raised = exc.name
    print(json.dumps({"seconds": seconds, "cli": "returnn_ray.cli" in sys.modules, "raised": raised}))
    """
)


def test_preload_in_a_thread_imports_and_hands_its_error_to_join():
    proc = subprocess.run([sys.executable, "-c", PRELOADER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["cli"] and result["seconds"] >= 0
    assert result["raised"] == "no_such_module_for_returnn_ray"
