"""``task = train`` end to end on the shared local Ray: DDP, scores, checkpoints, resume."""

from __future__ import annotations

import io
import json
import os
import re
import sys

import pytest
import torch

from returnn_ray.cli import main
from returnn_ray.training.checkpoints import checkpoint_path, find_checkpoints
from returnn_ray.training.lr_file import load_learning_rate_file

NETWORK = {
    "hidden": {"class": "linear", "activation": "tanh", "n_out": 16},
    "output": {"class": "softmax", "loss": "ce", "from": ["hidden"]},
}


def write_config(tmp_path, name: str = "train.json", **overrides) -> str:
    config = {
        "task": "train",
        # 40 seqs of <= 99 frames, 4 per batch: 10 full batches, an even count (see below)
        "train": {"class": "Task12AXDataset", "num_seqs": 40, "seq_ordering": "laplace:.10"},
        "dev": {"class": "Task12AXDataset", "num_seqs": 10, "fixed_random_seed": 1},
        "num_inputs": 9,
        "num_outputs": 2,
        "network": NETWORK,
        "batch_size": 400,
        "max_seqs": 4,
        "adam": True,
        "learning_rate": 0.01,
        "model": str(tmp_path / "model"),
        "learning_rate_file": str(tmp_path / "learning_rates"),
        "num_epochs": 2,
        "log_verbosity": 3,
    }
    config.update(overrides)
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


def scores(tmp_path) -> dict[int, dict[str, float]]:
    epochs = load_learning_rate_file(str(tmp_path / "learning_rates"))
    return {e: {k: v for k, v in d.error.items() if not k.startswith(":meta:")} for e, d in epochs.items()}


def params(tmp_path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path(str(tmp_path / "model"), epoch), weights_only=True)["model"]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("l2", [None, 0.05], ids=["no-l2", "l2"])
def test_two_workers_equal_one_worker_accumulating_the_same_batches(ray_session, tmp_path, capsys, l2):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # W=2 runs batch 2s on rank 0 and 2s+1 on rank 1 in step s; W=1 accumulating 2 steps
    # sums the same two batches' gradients: RETURNN's objective is a sum over frames, so the
    # updates must be equal (returnn-ray's default rule without torch_distributed), the L2 term
    # included. (An even batch count: RETURNN drops an unfinished accumulation.)
    network = {**NETWORK, "hidden": {**NETWORK["hidden"], "L2": l2}} if l2 else NETWORK
    assert main([write_config(one, accum_grad_multiple_step=2, network=network)]) == 0
    capsys.readouterr()
    assert main([write_config(two, network=network), "++ray_num_workers", "2", "++log_verbosity", "4"]) == 0
    # 2 workers on the session's 2-CPU Ray: no CPU left for Ray Data's read tasks, each rank reads
    # its batches itself (the 1-worker Ray run of test_local_mode_... goes through Ray Data)
    assert capsys.readouterr().out.count("it reads its batches itself") == 2
    s1, s2 = scores(one), scores(two)
    assert s1.keys() == s2.keys() == {1, 2}
    for epoch in (1, 2):
        assert set(s1[epoch]) == {"train_score", "train_error", "dev_score", "dev_error"}
        for key in s1[epoch]:
            assert s2[epoch][key] == pytest.approx(s1[epoch][key], rel=1e-5, abs=1e-6), (epoch, key)
    assert_same_params(params(one, 2), params(two, 2))
    assert find_checkpoints(str(two / "model")) == [1, 2]


def test_rerun_resumes_and_equals_an_uninterrupted_run(ray_session, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    full.mkdir(), split.mkdir()
    assert main([write_config(full, num_epochs=3)]) == 0
    assert main([write_config(split, num_epochs=2)]) == 0
    assert main([write_config(split, num_epochs=2), "++num_epochs", "3"]) == 0
    assert scores(split).keys() == {1, 2, 3}
    for epoch in (1, 2, 3):
        for key, value in scores(full)[epoch].items():
            assert scores(split)[epoch][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (epoch, key)
    assert_same_params(params(full, 3), params(split, 3))


def test_returnn_reads_our_learning_rate_file(ray_session, tmp_path):
    lrc = pytest.importorskip("returnn.learning_rate_control")
    from returnn.config import Config as ReturnnConfig

    assert main([write_config(tmp_path, num_epochs=1, learning_rate_control="newbob")]) == 0
    ours = load_learning_rate_file(str(tmp_path / "learning_rates"))
    config = ReturnnConfig({"learning_rate_file": str(tmp_path / "learning_rates"), "learning_rate": 0.01})
    theirs = lrc.load_learning_rate_control_from_config(config)
    assert sorted(theirs.epoch_data) == sorted(ours) == [1]
    assert theirs.epoch_data[1].learning_rate == pytest.approx(0.01)
    assert theirs.epoch_data[1].error["dev_score"] == pytest.approx(ours[1].error["dev_score"])


def test_uneven_data_ends_the_epoch_on_every_rank(ray_session, tmp_path):
    # 7 seqs, one longer than batch_size, 2 workers: 5 batches, so the last step's single seq
    # is cut into a piece for rank 0 and an empty padding step for rank 1; every rank must
    # finish the epoch (no DDP hang) and score it.
    path = tmp_path / "uneven.config"
    path.write_text(
        "#!returnn.py\n"
        "import numpy\n"
        "rng = numpy.random.RandomState(3)\n"
        "lens = [3, 250, 5, 2, 9, 4, 6]\n"
        "train = {'class': 'StaticDataset', 'data': [\n"
        "    {'data': rng.randn(n, 5).astype('float32'), 'classes': rng.randint(0, 3, n).astype('int32')} for n in lens],\n"
        "    'output_dim': {'data': (5, 2), 'classes': (3, 1)}}\n"
        "extern_data = {'data': {'dim': 5}, 'classes': {'dim': 3, 'sparse': True}}\n"
        f"network = {NETWORK!r}\n"
        "batch_size = 100\n"
        "max_seqs = 2\n"
        f"model = {str(tmp_path / 'model')!r}\n"
        f"learning_rate_file = {str(tmp_path / 'learning_rates')!r}\n"
        "num_epochs = 1\n"
        "learning_rate = 0.01\n"
    )
    assert main([str(path), "++ray_num_workers", "2"]) == 0
    assert set(scores(tmp_path)[1]) == {"train_score", "train_error"}


def test_more_workers_than_the_cluster_can_place_is_a_clear_error(ray_session, tmp_path, capsys):
    assert main([write_config(tmp_path), "++ray_num_workers", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("returnn-ray: error: ray_num_workers 64 needs 64 CPUs")
    assert not (tmp_path / "learning_rates").exists()


def test_returnn_torch_demo_config_runs_with_only_its_imports_changed(ray_session, tmp_path):
    # experiments/demo-torch.config is RETURNN's demos/demo-torch.config with `returnn`
    # imports replaced by ours: get_model, train_step marking losses, extern_data surface.
    demo = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "demo-torch.config")
    args = [
        demo,
        "++num_epochs", "1",
        "++log_verbosity", "3",
        "++train", "{'class': 'Task12AXDataset', 'num_seqs': 60}",
        "++dev", "{'class': 'Task12AXDataset', 'num_seqs': 10, 'fixed_random_seed': 1}",
        "++model", str(tmp_path / "model"),
        "++learning_rate_file", str(tmp_path / "learning_rates"),
    ]
    assert main(args) == 0
    assert set(scores(tmp_path)[1]) == {"train_loss_ce", "train_loss_fer", "dev_loss_ce", "dev_loss_fer"}
    assert find_checkpoints(str(tmp_path / "model")) == [1]


def test_eval_task_scores_a_checkpoint_like_training_did(ray_session, tmp_path):
    config = write_config(tmp_path, num_epochs=1)
    assert main([config]) == 0
    out = tmp_path / "eval_scores.txt"
    assert main([config, "++task", "eval", "++eval_output_file", str(out), "++ray_num_workers", "2"]) == 0
    import ast

    written = ast.literal_eval(out.read_text())
    trained = scores(tmp_path)[1]
    assert set(written) == {"dev"}
    for key, value in written["dev"].items():
        assert value == pytest.approx(trained[key], rel=1e-5), key
    from returnn_ray.metrics import read_metrics

    end = read_metrics(str(tmp_path / "metrics.jsonl"), event="eval_end")
    assert len(end) == 1 and end[0]["task"] == "eval" and end[0]["epoch"] == 1 and end[0]["scores"] == written["dev"]


def test_the_metrics_file_holds_an_epoch_end_per_epoch_with_the_learning_rate_files_scores(ray_session, tmp_path):
    from returnn_ray.metrics import last_run, read_metrics

    assert main([write_config(tmp_path), "++ray_num_workers", "2"]) == 0
    path = str(tmp_path / "metrics.jsonl")  # default: next to the model
    events = read_metrics(path)
    assert [e["event"] for e in events] == ["run_start", "first_step", "epoch_end", "epoch_end", "run_end"]
    assert {e["task"] for e in events} == {"train"} and len({e["run"] for e in events}) == 1
    assert events[0]["workers"] == 2 and events[1]["step"] == 0 and events[1]["since_start"] > 0
    lr_file = load_learning_rate_file(str(tmp_path / "learning_rates"))
    ends = [e for e in events if e["event"] == "epoch_end"]
    assert [e["epoch"] for e in ends] == [1, 2]
    for end in ends:
        assert end["scores"] == pytest.approx(scores(tmp_path)[end["epoch"]], rel=1e-12)
        assert end["learning_rate"] == pytest.approx(lr_file[end["epoch"]].learning_rate, rel=1e-12)
        assert end["epoch_time"] > 0 and end["step"] == 5 * end["epoch"]  # 10 batches over 2 ranks
    assert events[1]["time"] <= ends[0]["time"] <= ends[1]["time"]
    # a rerun with more epochs appends its own run, from its first step (of epoch 3) on
    assert main([write_config(tmp_path), "++ray_num_workers", "2", "++num_epochs", "3"]) == 0
    rerun = last_run(read_metrics(path))
    assert [(e["event"], e.get("epoch")) for e in rerun] == [
        ("run_start", None), ("first_step", 3), ("epoch_end", 3), ("run_end", None)
    ]
    assert rerun[1]["step"] == 10 and rerun[2]["scores"] == pytest.approx(scores(tmp_path)[3], rel=1e-12)


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main([write_config(tmp_path), "++task", "eval"]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


class _Terminal(io.StringIO):
    """What an interactive terminal is to the driver's log: a stream that says it is a tty."""

    def isatty(self) -> bool:
        return True


def test_tensorboard_curves_and_a_live_progress_line_on_a_terminal(ray_session, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    config = write_config(tmp_path, use_tensorboard=True, tensorboard_opts={"log_every_n_train_steps": 2})
    assert main([config]) == 0
    shown = terminal.getvalue()
    # the bar is redrawn in place (\r) with steps, the running loss and time remaining, then cleared
    assert re.search(r"\rep 1 \[[#-]{30}\] step \d+/10 loss \d\.\d{3} remaining \d+:\d\d:\d\d", shown), shown
    assert "\r\033[K" in shown

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # a network dict's losses, named as RETURNN names them (score/error in the lr file)
    losses = ("cost:output", "error:output")
    assert tags == {"train/learning_rate"} | {f"{ds}/{n}" for ds in ("train", "dev") for n in losses}, tags
    # 10 steps an epoch, 2 epochs: global steps 2, 4, ..., 20; dev once an epoch at its last step
    assert [e.step for e in events.Scalars("train/cost:output")] == list(range(2, 21, 2))
    assert [e.step for e in events.Scalars("dev/cost:output")] == [10, 20]
    dev = scores(tmp_path)
    assert [e.value for e in events.Scalars("dev/cost:output")] == pytest.approx(
        [dev[1]["dev_score"], dev[2]["dev_score"]], rel=1e-5
    )


def test_ray_workers_log_through_files_beside_the_model_that_go_with_the_run(ray_session, tmp_path, monkeypatch):
    # rank 0 on a Ray worker: its lines, events and (on a terminal) progress reach the driver
    # through the run's log channel, a directory in <model dir>/ray_train
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main([write_config(tmp_path), "++ray_num_workers", "2", "++num_epochs", "1"]) == 0
    shown = terminal.getvalue()
    assert re.search(r"\rep 1 \[[#-]{30}\] step \d+/5 loss \d\.\d{3} remaining", shown), shown
    assert re.search(r"Epoch 1 evaluation: dev: cost:output \d\.\d{3}", shown), shown
    assert not (tmp_path / "ray_train").exists()  # made for the run, gone with it
    # a ray_train directory that was there before is not ours: only the run's channel goes
    (tmp_path / "ray_train").mkdir()
    (tmp_path / "ray_train" / "keep").write_text("x")
    assert main([write_config(tmp_path), "++ray_num_workers", "2"]) == 0
    left = os.listdir(tmp_path / "ray_train")
    assert "keep" in left and not [name for name in left if name.startswith("log-")], left
    assert "Epoch 2 evaluation: dev" in terminal.getvalue()


RUN_AND_SAY_IF_RAY_WAS_IMPORTED = (
    "import sys; from returnn_ray.cli import main; rc = main(sys.argv[1:]); "
    "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
)


def test_local_mode_trains_exactly_like_one_ray_worker(ray_session, tmp_path):
    # The plain command with one worker to give runs the loop in its own process (as Ray Train's
    # local mode would, but without importing Ray: about 1 s of a short run's start-up); the same
    # config on a Ray worker must give the same scores and weights.
    import subprocess

    ray_dir, local_dir = tmp_path / "ray", tmp_path / "local"
    ray_dir.mkdir(), local_dir.mkdir()
    assert main([write_config(ray_dir), "++ray_num_workers", "1"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_SAY_IF_RAY_WAS_IMPORTED, write_config(local_dir), "++log_verbosity", "4"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "worker(s) in this process (cpu)" in proc.stdout
    assert proc.stdout.rstrip().endswith("ray imported: False"), proc.stdout[-500:]
    assert proc.stderr == "", proc.stderr  # Ray Train's local-mode notices stay out of the way
    assert scores(local_dir).keys() == scores(ray_dir).keys() == {1, 2}
    for epoch in (1, 2):
        for key, value in scores(ray_dir)[epoch].items():
            assert scores(local_dir)[epoch][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (epoch, key)
    assert_same_params(params(local_dir, 2), params(ray_dir, 2))
