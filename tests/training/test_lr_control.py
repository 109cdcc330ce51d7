"""Learning-rate control: the policies, and agreement with RETURNN's returnn.learning_rate_control
(lrs per epoch, the file byte for byte, both readers). The file format alone: test_lr_file.py."""

from __future__ import annotations

import math
import random

import pytest

from returnn_ray.errors import ConfigError
from returnn_ray.training.lr_control import (
    LR_CONTROL_CONFIG_KEYS,
    NewbobMultiEpoch,
    NewbobRelative,
    error_key_for_scores,
    make_lr_control,
)
from returnn_ray.training.lr_file import EpochData, format_learning_rate_file, save_learning_rate_file

# ------------------------------------------------------------------------------------------------
# Policies, by hand


def _run(control, dev_scores, *, train=True):
    """Train epochs 1..len(dev_scores) as the training loop does; returns the lr of each epoch."""
    lrs = []
    for epoch, dev in enumerate(dev_scores, start=1):
        lrs.append(control.learning_rate_for_epoch(epoch))
        if train:
            control.set_epoch_error(epoch, {"train_loss_ce": 3.0 - 0.1 * epoch})
        if dev is not None:
            control.set_epoch_error(epoch, {"dev_loss_ce": dev})
    return lrs


def test_constant_ignores_scores():
    c = make_lr_control(learning_rate=0.3)
    assert not c.needs_scores
    assert _run(c, [1.0, 1.0, 1.0]) == [0.3, 0.3, 0.3]


def test_newbob_decays_when_not_improving_enough():
    c = make_lr_control("newbob", learning_rate=1.0, min_learning_rate=0.3)
    # rel before epoch 3: -0.25 (keep); 4: -0.005/0.995 > -0.01 (decay); 5: +0.005 (decay, floored at 0.3);
    # 6: -1.0 (keep)
    lrs = _run(c, [1.25, 1.0, 0.995, 1.0, 0.5, 0.4])
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.3, 0.3]
    assert c.epochs[6].learning_rate == 0.3


def test_lr_is_fixed_once_written():
    c = make_lr_control("newbob", learning_rate=1.0)
    _run(c, [1.0, 1.0])
    assert c.learning_rate_for_epoch(3) == 0.5
    c.set_epoch_error(2, {"dev_loss_ce": 0.1})  # a late, much better score changes nothing for epoch 3
    assert c.learning_rate_for_epoch(3) == 0.5


def test_newbob_abs_and_growth():
    c = make_lr_control("newbob_abs", learning_rate=1.0, newbob_error_threshold=-0.1, learning_rate_growth=2.0)
    assert _run(c, [2.0, 1.5, 1.45, 1.0]) == [1.0, 1.0, 2.0, 1.0]


def test_newbob_multi_epoch_decides_every_interval():
    c = make_lr_control("newbob_multi_epoch", learning_rate=1.0, newbob_multi_num_epochs=2)
    assert isinstance(c, NewbobMultiEpoch) and c.update_interval == 2
    # decisions only at epochs 3, 5, 7 (epoch % 2 == 1), on the mean rel change over the last 3 epochs:
    # 3: mean(0) decay; 5: mean(0, -1) keep; 7: mean(0, 0) decay; 4, 6 and 8 are no decision epochs
    assert _run(c, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_error_key_rules():
    assert error_key_for_scores({}) is None
    assert error_key_for_scores({"old_format_score": 1.0}) == "old_format_score"
    scores = {"train_loss_ce": 1.0, "dev_loss_fer": 0.3, "dev_loss_ce": 0.5, "devtrain_loss_ce": 0.1}
    assert error_key_for_scores(scores) == "dev_loss_ce"
    assert error_key_for_scores({**scores, "dev_score": 2.0}) == "dev_score"
    assert error_key_for_scores(scores, "dev_loss_fer") == "dev_loss_fer"
    assert error_key_for_scores({**scores, "dev_loss_x_output": 1.0}, "dev_loss_x") == "dev_loss_x_output"
    assert error_key_for_scores(scores, ["missing", "dev_loss_fer"]) == "dev_loss_fer"
    assert error_key_for_scores(scores, "missing") == "dev_loss_ce"  # an absent measure falls back
    assert error_key_for_scores({"train_loss_ce": 1.0, "train_score": 2.0}) == "train_score"
    assert error_key_for_scores({"train_loss_fer": 1.0, "train_loss_ce": 2.0}) == "train_loss_ce"


def test_scores_of_different_keys_are_not_compared():
    c = make_lr_control("newbob", learning_rate=1.0)
    # epoch 2 has no dev score: judged by train_loss_ce, not comparable with epoch 1's dev_loss_ce
    assert _run(c, [1.0, None, 1.0]) == [1.0, 1.0, 1.0]


def test_learning_rates_preset_and_min_epochs_per_lr():
    c = make_lr_control("newbob", learning_rate=1.0, learning_rates=[0.1, 0.2, 0.3])
    assert sorted(c.epochs) == [1, 2, 3]  # RETURNN writes all preset epochs into the file at once
    assert _run(c, [1.0, 1.0, 1.0, 1.0]) == [0.1, 0.2, 0.3, 0.15]
    c = make_lr_control("newbob", learning_rate=1.0, learning_rate_control_min_num_epochs_per_new_lr=3)
    assert _run(c, [1.0] * 8) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    c = make_lr_control("constant", learning_rates="{1: 0.5, 3: 0.25}")
    assert _run(c, [None] * 4) == [0.5, 0.5, 0.25, 0.25]


def test_nested_scores_are_flattened():
    c = make_lr_control("newbob")
    c.set_epoch_error(1, {"dev_score": {"output": 1.0}, "dev_error": {"cost:out1": 0.5, "cost:out2": 0.25}})
    assert c.epochs[1].error == {"dev_score": 1.0, "dev_error_out1": 0.5, "dev_error_out2": 0.25}
    with pytest.raises(TypeError):
        c.set_epoch_error(1, {"dev_score": "1.0"})


def test_zero_error_does_not_crash():
    # RETURNN raises ZeroDivisionError here; a perfect dev FER happens on small data.
    c = make_lr_control("newbob", learning_rate=1.0)
    assert _run(c, [0.0, 0.0, 0.0, 0.5]) == [1.0, 1.0, 0.5, 0.25]
    assert c.relative_error(3, 4) == 1.0 and c.relative_error(1, 2) == 0.0


def test_make_lr_control_options():
    assert type(make_lr_control("newbob_rel")) is NewbobRelative
    with pytest.raises(ConfigError, match="'newbbo' is unknown"):
        make_lr_control("newbbo")
    with pytest.raises(TypeError):
        make_lr_control("newbob", learning_rte=0.1)
    # other policies' keys and None (unset) are fine; the old decay key is an alias
    c = make_lr_control(
        "newbob", newbob_multi_num_epochs=3, newbob_multi_update_interval=None, newbob_learning_rate_decay=0.7
    )
    assert c.decay == 0.7
    assert make_lr_control("newbob", learning_rate_decay=0.9, newbob_learning_rate_decay=0.7).decay == 0.9
    assert {"learning_rate", "learning_rates", "newbob_relative_error_grow_threshold"} <= set(LR_CONTROL_CONFIG_KEYS)
    with pytest.raises(ConfigError, match="grow_threshold"):
        make_lr_control("newbob_multi_epoch", newbob_relative_error_grow_threshold=0.5)
    with pytest.raises(ConfigError, match="learning_rates"):
        make_lr_control("constant", learning_rates=["a"])
    with pytest.raises(ConfigError, match="learning_rate_decay"):
        make_lr_control("newbob", learning_rate_decay="half")


def test_resume_from_file_equals_uninterrupted(tmp_path):
    scores = _score_sequence(random.Random(3), 12)
    full = make_lr_control("newbob", learning_rate=0.1)
    expected = _run_scores(full, scores)
    path = str(tmp_path / "lr.txt")
    first = make_lr_control("newbob", learning_rate=0.1)
    got = _run_scores(first, scores[:5])
    first.save(path)
    resumed = make_lr_control("newbob", learning_rate=0.1)
    assert resumed.load(path)
    got += _run_scores(resumed, scores[5:], first_epoch=6)
    assert got == expected
    assert resumed.epochs == full.epochs


# ------------------------------------------------------------------------------------------------
# Against RETURNN


def _score_sequence(rng, num_epochs):
    """Per epoch: (train scores, dev scores or None). Dev improves by about -5%..+2% an epoch, so the
    relative change falls on both sides of -0.01; some epochs have no dev score (different error key)."""
    dev, out = rng.uniform(1.0, 3.0), []
    for epoch in range(1, num_epochs + 1):
        dev *= rng.choice([rng.uniform(0.95, 1.02), 1.0, 0.99, 0.995, 0.98])
        train = {"train_loss_ce": dev * 1.1 + rng.random() * 0.01}
        dev_scores = None if rng.random() < 0.1 else {"dev_loss_ce": dev, "dev_loss_fer": rng.uniform(0.1, 0.5)}
        out.append((train, dev_scores))
    return out


def _run_scores(control, scores, *, first_epoch=1, returnn=False):
    lrs = []
    for epoch, (train, dev) in enumerate(scores, start=first_epoch):
        lrs.append(control.get_learning_rate_for_epoch(epoch) if returnn else control.learning_rate_for_epoch(epoch))
        control.set_epoch_error(epoch, train)
        if dev:
            control.set_epoch_error(epoch, dev)
    return lrs


def _returnn_control(kind, opts, filename=None):
    from returnn.config import Config
    from returnn.learning_rate_control import load_learning_rate_control_from_config

    config = Config()
    config.update({"learning_rate_control": kind, **opts, **({"learning_rate_file": filename} if filename else {})})
    return load_learning_rate_control_from_config(config)


POLICIES = [
    ("constant", {}),
    ("constant", {"learning_rate": 0.5, "learning_rates": [0.1, 0.2, 0.3]}),
    ("newbob", {}),
    ("newbob", {"learning_rate": 0.001, "min_learning_rate": 0.0002}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_decay": 0.7, "learning_rate_growth": 1.05}),
    ("newbob", {"learning_rate": 0.1, "newbob_learning_rate_decay": 0.8, "newbob_relative_error_threshold": -0.005}),
    ("newbob_rel", {"learning_rate": 0.1, "newbob_relative_error_div_by_old": True}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_control_error_measure": "dev_loss_fer"}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_control_error_measure": ["dev_score", "dev_loss_ce"]}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_control_relative_error_relative_lr": True}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_control_min_num_epochs_per_new_lr": 3}),
    ("newbob", {"learning_rate": 0.1, "learning_rates": [0.01, 0.05, 0.1]}),
    ("newbob", {"learning_rate": 0.1, "learning_rate_decay": lambda lr: lr * 0.3}),
    ("newbob_abs", {"learning_rate": 0.1}),
    ("newbob_abs", {"learning_rate": 0.1, "newbob_error_threshold": -0.02, "learning_rate_growth": 1.1}),
    ("newbob_multi_epoch", {"learning_rate": 0.1}),
    ("newbob_multi_epoch", {"learning_rate": 0.1, "newbob_multi_num_epochs": 3, "newbob_multi_update_interval": 1}),
    (
        "newbob_multi_epoch",
        {
            "learning_rate": 0.1,
            "newbob_multi_num_epochs": 2,
            "newbob_relative_error_threshold": -0.005,
            "newbob_relative_error_grow_threshold": -0.03,
            "learning_rate_growth": 1.2,
        },
    ),
    ("newbob_multi_epoch", {"learning_rate": 0.1, "newbob_multi_num_epochs": 9, "newbob_multi_update_interval": 2}),
]


@pytest.mark.parametrize("kind, opts", POLICIES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(POLICIES)])
def test_learning_rates_match_returnn(kind, opts):
    pytest.importorskip("returnn")
    decided = 0
    for seed in range(6):
        scores = _score_sequence(random.Random(seed), 14)
        theirs = _returnn_control(kind, opts)
        ours = make_lr_control(kind, **opts)
        expected = _run_scores(theirs, scores, returnn=True)
        assert _run_scores(ours, scores) == expected, f"seed {seed}"
        assert format_learning_rate_file(ours.epochs) == format_learning_rate_file(
            {e: EpochData(d.learning_rate, d.error, d.meta) for e, d in theirs.epoch_data.items()}
        )
        decided += len(set(expected))
    if kind != "constant" or "learning_rates" in opts:
        assert decided > 6, "the scores never changed the lr: the test would not see a difference"


def test_file_is_byte_identical_and_both_readers_agree(tmp_path):
    pytest.importorskip("returnn")
    scores = _score_sequence(random.Random(7), 10)
    theirs_path, ours_path = str(tmp_path / "returnn.txt"), str(tmp_path / "ours.txt")
    theirs = _returnn_control("newbob", {"learning_rate": 0.01}, theirs_path)
    ours = make_lr_control("newbob", learning_rate=0.01)
    _run_scores(theirs, scores, returnn=True)
    _run_scores(ours, scores)
    meta = {"global_train_step": 120, "epoch_train_time_secs": 3, "hostname": "node-1", "distributed": None,
            "effective_learning_rate": 0.01, "bad": math.nan}
    for e in (1, 5, 10):
        theirs.epoch_data[e].meta.update(meta)
        ours.set_epoch_meta(e, meta)
    theirs.save()
    ours.save(ours_path)
    with open(theirs_path) as f1, open(ours_path) as f2:
        assert f1.read() == f2.read()

    # RETURNN reads our file
    reread = _returnn_control("newbob", {"learning_rate": 0.01}, ours_path)
    assert sorted(reread.epoch_data) == sorted(ours.epochs)
    for e, d in ours.epochs.items():
        r = reread.epoch_data[e]
        assert (r.learning_rate, r.error) == (d.learning_rate, d.error)
        assert repr(sorted(r.meta.items())) == repr(sorted(d.meta.items()))  # nan != nan: compare the text
    # ... and we read RETURNN's
    mine = make_lr_control("newbob", learning_rate=0.01)
    assert mine.load(theirs_path)
    assert format_learning_rate_file(mine.epochs) == format_learning_rate_file(ours.epochs)
    # both continue the same way after the reload
    assert mine.learning_rate_for_epoch(11) == reread.get_learning_rate_for_epoch(11)


def test_preset_learning_rates_after_load_like_returnn(tmp_path):
    pytest.importorskip("returnn")
    path = str(tmp_path / "lr.txt")
    save_learning_rate_file(path, {1: EpochData(0.7, {"dev_loss_ce": 1.0}), 2: EpochData(0.0, {"dev_loss_ce": 1.0})})
    opts = {"learning_rate": 0.1, "learning_rates": [0.01, 0.02, 0.03, 0.04]}
    theirs = _returnn_control("newbob", opts, path)
    ours = make_lr_control("newbob", **opts)
    ours.load(path)
    assert {e: d.learning_rate for e, d in ours.epochs.items()} == {
        e: d.learning_rate for e, d in theirs.epoch_data.items()
    }
    expected = [theirs.get_learning_rate_for_epoch(e) for e in range(1, 7)]
    assert [ours.learning_rate_for_epoch(e) for e in range(1, 7)] == expected


def test_mean_relative_error_matches_numpy():
    np = pytest.importorskip("numpy")
    from returnn_ray.training.lr_control import _numpy_mean

    rng = random.Random(0)
    for n in [1, 2, 5, 7, 8, 9, 16, 17, 127, 128, 129, 300]:
        for _ in range(20):
            v = [rng.uniform(-1, 1) * 10 ** rng.randint(-4, 4) for _ in range(n)]
            assert _numpy_mean(v) == float(np.mean(v))
