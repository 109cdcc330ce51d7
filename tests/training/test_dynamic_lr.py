"""returnn_ray.training.dynamic_lr: ``dynamic_learning_rate`` per step, against RETURNN's torch Updater."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from returnn_ray.data.batching import BatchPlan
from returnn_ray.errors import ConfigError
from returnn_ray.training.dynamic_lr import StepLearningRate, check_dynamic_learning_rate
from returnn_ray.training.optim import build_optimizer, set_learning_rate

EPOCHS = [(0.5, [3, 1, 2, 4]), (0.25, [2, 2, 5, 1])]
"""Per epoch: the lr the learning-rate control gives, and the seqs of each step (10 seqs an epoch)."""


def schedule(*, global_train_step, epoch, epoch_continuous, learning_rate, **_):
    """Uses every argument, so a wrong one shows in the lr."""
    return learning_rate * (1 + global_train_step) / 10 + epoch_continuous * 0.01 + epoch * 0.001


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))


def _groups(*, model, **_):
    """Two param groups, the first with a learning_rate_multiplier."""
    return [{"params": list(model[0].parameters()), "learning_rate_multiplier": 0.5}, {"params": list(model[1].parameters())}]


OPTIMIZER = {"class": "sgd", "param_groups_custom": _groups}


def _returnn_lrs() -> list[list[float]]:
    """The lr of each param group at each step's update, with RETURNN's Updater driven as its torch engine drives it
    (``init_train_epoch``, then after each step), ``complete_frac`` from RETURNN's Dataset (float32, as its pipeline)."""
    returnn_config = pytest.importorskip("returnn.config")
    returnn_updater = pytest.importorskip("returnn.torch.updater")
    from returnn.datasets.basic import Dataset

    updater = returnn_updater.Updater(
        config=returnn_config.Config({"optimizer": dict(OPTIMIZER), "dynamic_learning_rate": schedule}),
        network=_model(), device="cpu", initial_learning_rate=1.0,
    )
    updater.create_optimizer()
    out, global_step = [], 0
    for epoch, (lr, sizes) in enumerate(EPOCHS, 1):
        updater.set_learning_rate(lr)
        updater.set_current_train_step(global_train_step=global_step, epoch=epoch, epoch_continuous=epoch - 1)
        last_seq = -1
        for size in sizes:
            out.append([g["lr"] for g in updater.optimizer.param_groups])
            last_seq += size
            complete_frac = np.float32(Dataset.generic_complete_frac(last_seq, sum(sizes)))
            global_step += 1
            updater.set_current_train_step(
                global_train_step=global_step, epoch=epoch, epoch_continuous=epoch - 1 + float(complete_frac)
            )
    return out


def _our_lrs(num_ranks: int = 1) -> list[list[float]]:
    """The same through StepLearningRate, as the training loop uses it (``num_ranks``: the epoch's seqs dealt to ranks)."""
    optimizer = build_optimizer(_model(), optimizer=OPTIMIZER, learning_rate=1.0, default="error")
    out, global_step = [], 0
    for epoch, (lr, sizes) in enumerate(EPOCHS, 1):
        set_learning_rate(optimizer, lr)
        # each step's seqs split over the ranks; the fraction is of all ranks' seqs
        batches = [np.arange(n) for size in sizes for n in np.diff(np.linspace(0, size, num_ranks + 1).astype(int))]
        steps = StepLearningRate.for_epoch(schedule, learning_rate=lr, epoch=epoch, plan=BatchPlan(tuple(batches), num_ranks))
        for i in range(len(sizes)):
            set_learning_rate(optimizer, steps(i, global_train_step=global_step))
            out.append([g["lr"] for g in optimizer.param_groups])
            global_step += 1
    return out


def test_lr_per_step_like_returnn():
    """Differential over two epochs (an epoch boundary, a new epoch lr), with a group's multiplier."""
    theirs = _returnn_lrs()
    assert len({tuple(lrs) for lrs in theirs}) == len(theirs)  # every step differs: a lag of one step would show
    assert _our_lrs() == theirs
    assert _our_lrs(num_ranks=2) == theirs  # the fraction is of the whole epoch, whatever the ranks


def test_resumed_epoch_continues_the_fraction():
    plan = BatchPlan(tuple(np.arange(n) for n in (2, 2)), 1)
    seen = []
    steps = StepLearningRate.for_epoch(
        lambda *, epoch_continuous, **_: seen.append(epoch_continuous) or 0.1, learning_rate=1.0, epoch=3, plan=plan, skip_seqs=6
    )
    steps(0, global_train_step=7), steps(1, global_train_step=8)
    assert seen == pytest.approx([2.6, 2.8])  # 6 of 10 seqs done before the resumed run's first step
    assert StepLearningRate.for_epoch(None, learning_rate=1.0, epoch=1, plan=plan) is None


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda global_train_step, learning_rate: learning_rate, r"must take \*\*kwargs"),
        (lambda network, **kwargs: 0.1, "'network' argument is TensorFlow only"),
        (0.1, "must be a function of the step"),
    ],
)
def test_bad_functions_refused_like_returnn(fn, message):
    """RETURNN's Updater refuses these too (when it is created)."""
    returnn_config = pytest.importorskip("returnn.config")
    returnn_updater = pytest.importorskip("returnn.torch.updater")
    with pytest.raises((AssertionError, ValueError, NotImplementedError)):
        returnn_updater.Updater(
            config=returnn_config.Config({"dynamic_learning_rate": fn}), network=_model(), device="cpu"
        )
    with pytest.raises(ConfigError, match=message):
        check_dynamic_learning_rate(fn)


@pytest.mark.parametrize("value", [float("nan"), -0.1, "fast", None])
def test_bad_return_value_names_the_step(value):
    steps = StepLearningRate.for_epoch(lambda **_: value, learning_rate=1.0, epoch=2, plan=BatchPlan((np.arange(3),), 1))
    with pytest.raises(ConfigError, match=r"dynamic_learning_rate returned .* at global_train_step 5 \(epoch 2\)"):
        steps(0, global_train_step=5)


def test_training_run_calls_it_per_step(tmp_path):
    """The training loop applies it: a real (local-mode) run, 12 seqs of at most 4 a step, 2 epochs."""
    (tmp_path / "t.config").write_text(
        "#!rnn.py\n"
        "task = 'train'\ntrain = {'class': 'Task12AXDataset', 'num_seqs': 12}\nnum_inputs = 9\nnum_outputs = 2\n"
        "network = {'output': {'class': 'softmax', 'loss': 'ce'}}\nbatch_size = 2000\nmax_seqs = 4\nnum_epochs = 2\n"
        "learning_rate = 0.01\nmodel = 'out/model'\n"
        "def dynamic_learning_rate(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs):\n"
        "    with open('calls.txt', 'a') as f:\n"
        "        f.write(f'{global_train_step} {epoch} {epoch_continuous} {learning_rate}\\n')\n"
        "    return learning_rate / 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "returnn_ray", "t.config"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert [(int(g), int(e)) for g, e, _, _ in calls] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
    assert [float(c) for _, _, c, _ in calls] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3], rel=1e-6)
    assert {float(lr) for *_, lr in calls} == {0.01}
