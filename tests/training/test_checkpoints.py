"""Checkpoint files: names, discovery (complete pairs only, no temp files), which one forward loads,
RETURNN's cleanup_old_models policy (also against RETURNN's own code), atomic save and load."""

from __future__ import annotations

import os
import random

import pytest

from returnn_ray.errors import ConfigError, UserError
from returnn_ray.training.checkpoints import (
    CheckpointToLoad,
    check_model_dir_writable,
    checkpoint_path,
    checkpoint_to_load,
    default_keep_epochs,
    delete_checkpoint,
    find_checkpoints,
    load_checkpoint,
    load_optimizer_state,
    models_to_delete,
    newest_complete_epoch,
    opt_path,
    optimizer_state_to_delete,
    save_checkpoint,
    should_save,
)


def _touch(*paths):
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"x")


def test_names():
    assert checkpoint_path("/exp/net", 1) == "/exp/net.001.pt"
    assert opt_path("/exp/net", 12) == "/exp/net.012.opt.pt"
    assert checkpoint_path("net", 999) == "net.999.pt" and checkpoint_path("net", 1000) == "net.1000.pt"


def test_find_checkpoints_complete_pairs_only(tmp_path):
    model = str(tmp_path / "net")
    _touch(checkpoint_path(model, 1), opt_path(model, 1))
    _touch(checkpoint_path(model, 2))  # old epoch whose optimizer state RETURNN deleted
    _touch(checkpoint_path(model, 3), opt_path(model, 3))
    _touch(opt_path(model, 4))  # killed between the two writes: the .pt is written last
    _touch(checkpoint_path(model, 1000), opt_path(model, 1000))
    # never checkpoints: temp files, other prefixes, other paddings, other suffixes
    _touch(
        str(tmp_path / ".net.005.pt.tmp-123-abcd1234"),
        str(tmp_path / ".net.005.opt.pt.tmp-123-abcd1234"),
        str(tmp_path / "net2.006.pt"),
        str(tmp_path / "net2.006.opt.pt"),
        str(tmp_path / "net.07.pt"),
        str(tmp_path / "net.07.opt.pt"),
        str(tmp_path / "net.0008.pt"),
        str(tmp_path / "net.0008.opt.pt"),
        str(tmp_path / "net.009.pt.bak"),
        str(tmp_path / "net.000.pt"),
        str(tmp_path / "net.000.opt.pt"),
    )
    os.mkdir(tmp_path / "net.010.pt.tmp_write")
    assert find_checkpoints(model) == [1, 3, 1000]
    assert find_checkpoints(model, for_training=False) == [1, 2, 3, 1000]
    assert find_checkpoints(model, max_epoch=999) == [1, 3]
    assert newest_complete_epoch(model) == 1000
    assert newest_complete_epoch(model, max_epoch=2) == 1
    assert newest_complete_epoch(str(tmp_path / "other")) is None
    assert find_checkpoints(str(tmp_path / "missing-dir" / "net")) == []


def test_find_checkpoints_prefix_with_regex_characters(tmp_path):
    model = str(tmp_path / "net+a.b")
    _touch(checkpoint_path(model, 2), opt_path(model, 2))
    _touch(str(tmp_path / "net+aXb.003.pt"), str(tmp_path / "net+aXb.003.opt.pt"))
    assert find_checkpoints(model) == [2]


def test_find_checkpoints_relative_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch("net.004.pt", "net.004.opt.pt")
    assert find_checkpoints("net") == [4]


def test_checkpoint_to_load(tmp_path):
    model = str(tmp_path / "net")
    with pytest.raises(UserError) as info:
        checkpoint_to_load(model)
    assert str(info.value) == f"no checkpoint found for model {model!r} (train first or set load_epoch)"
    _touch(checkpoint_path(model, 1), opt_path(model, 1), checkpoint_path(model, 2))
    # forward needs no optimizer state: the newest .pt
    assert checkpoint_to_load(model) == CheckpointToLoad(checkpoint_path(model, 2), 2)
    assert checkpoint_to_load(model, 1) == CheckpointToLoad(checkpoint_path(model, 1), 1)
    with pytest.raises(UserError) as info:
        checkpoint_to_load(model, 5)
    assert checkpoint_path(model, 5) in str(info.value) and "existing epochs: 1, 2" in str(info.value)
    assert checkpoint_to_load(model, 0) == CheckpointToLoad(checkpoint_path(model, 2), 2)  # load_epoch 0: unset
    # `load` wins, with or without .pt; its epoch is load_epoch if set (as in RETURNN), else from the name
    assert checkpoint_to_load(model, 5, load=model + ".001") == CheckpointToLoad(checkpoint_path(model, 1), 5)
    assert checkpoint_to_load(None, load=checkpoint_path(model, 2)).epoch == 2
    _touch(str(tmp_path / "pretrained.pt"))
    pretrained = CheckpointToLoad(str(tmp_path / "pretrained.pt"), None)
    assert checkpoint_to_load(None, load=str(tmp_path / "pretrained")) == pretrained
    with pytest.raises(UserError, match="does not exist; fix `load`"):
        checkpoint_to_load(model, load=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="set `model`"):
        checkpoint_to_load(None)


def test_should_save():
    assert [e for e in range(1, 11) if should_save(e, 1, 10)] == list(range(1, 11))
    assert [e for e in range(1, 11) if should_save(e, 3, 10)] == [3, 6, 9, 10]  # the last epoch always
    with pytest.raises(ConfigError):
        should_save(1, 0, 10)


def test_optimizer_state_to_delete():
    assert [optimizer_state_to_delete(e) for e in (1, 2, 3, 10)] == [None, None, 1, 8]
    assert optimizer_state_to_delete(10, apply_cleanup_old_models_to_optim_states=True) is None


# ------------------------------------------------------------------------------------------------
# cleanup_old_models


def _dev(values):
    return {e: {"dev_loss_ce": v} for e, v in enumerate(values, start=1)}


def test_cleanup_off_and_too_few():
    scores = _dev([1.0 / e for e in range(1, 11)])
    for off in (False, None, {}):
        assert models_to_delete(range(1, 11), cleanup_old_models=off, scores=scores) == []
    # at most max(keep_last_n, keep_best_n) = 4 checkpoints: nothing yet
    assert models_to_delete([1, 2, 3, 4], cleanup_old_models=True, scores=scores) == []


def test_cleanup_defaults():
    scores = _dev([1.0 / e for e in range(1, 11)])
    # keep: last 2 (9, 10), best 4 (7..10), default pattern for 10 epochs (4, 5, 8, 10)
    assert models_to_delete(range(1, 11), cleanup_old_models=True, scores=scores) == [1, 2, 3, 6]
    # the best epochs are kept wherever they are: best 4 (13, 1, 2, 6), last 2 (12, 13), pattern for 13 (5, 10)
    scores = _dev([0.1, 0.2, 5, 5, 5, 0.3, 5, 5, 5, 5, 5, 5, 0.05])
    assert models_to_delete(range(1, 14), cleanup_old_models=True, scores=scores) == [3, 4, 7, 8, 9, 11]


def test_cleanup_options():
    scores = _dev([1.0 / e for e in range(1, 11)])
    opts = {"keep_best_n": 0, "keep": []}
    assert models_to_delete(range(1, 11), cleanup_old_models=opts, scores=scores) == list(range(1, 9))
    assert models_to_delete(
        range(1, 11), cleanup_old_models={"keep_last_n": 1, "keep_best_n": 1, "keep": [3]}, scores=scores
    ) == [1, 2, 4, 5, 6, 7, 8, 9]
    # every score key keeps its own best; constant keys and keys of epochs without checkpoints say nothing
    scores = {e: {"dev_loss_ce": 1.0 / e, "dev_loss_fer": float(e), "train_loss_ce": 1.0} for e in range(1, 11)}
    scores[11] = {"dev_loss_x": 1.0}
    opts = {"keep_last_n": 1, "keep_best_n": 2, "keep": []}
    assert models_to_delete(range(1, 11), cleanup_old_models=opts, scores=scores) == [3, 4, 5, 6, 7, 8]
    # an epoch without a score counts as the worst; a lone epoch without any scores is no error
    scores = {e: {"dev_loss_ce": float(e)} for e in range(1, 11) if e != 1}
    assert models_to_delete(range(1, 11), cleanup_old_models=opts, scores=scores) == [1, 4, 5, 6, 7, 8, 9]
    assert models_to_delete(range(1, 11), cleanup_old_models=opts, scores={}) == list(range(1, 10))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"keep_last": 2}, "unknown option"),
        ({"keep_last_n": 0}, "keep_last_n"),
        ({"keep_best_n": -1}, "keep_best_n"),
        ({"keep": "1,2"}, "keep must be"),
        ("yes", "True/False or a dict"),
    ],
)
def test_cleanup_bad_options(bad, match):
    with pytest.raises(ConfigError, match=match):
        models_to_delete(range(1, 11), cleanup_old_models=bad, scores={})


def test_default_keep_epochs():
    assert default_keep_epochs(3) == []
    assert default_keep_epochs(10) == [4, 5, 8, 10]
    assert default_keep_epochs(50) == [5, 10, 20, 40]
    assert default_keep_epochs(100) == [10, 20, 40, 80]
    assert default_keep_epochs(200) == [20, 40, 80, 160]  # every 80, doubles of 20
    assert default_keep_epochs(500) == [20, 40, 80, 160, 320]  # every 80 * next_power_of_two(1 + 500 // 240) = 320


def _returnn_models_to_delete(tmp_path, existing, cleanup, scores, num_epochs):
    """RETURNN's EngineBase.cleanup_old_models on real files, recording instead of deleting."""
    from returnn.config import Config
    from returnn.engine.base import EngineBase
    from returnn.learning_rate_control import load_learning_rate_control_from_config
    from returnn.util.basic import BackendEngine

    BackendEngine.select_engine(engine=BackendEngine.Torch)
    deleted = []

    class Engine(EngineBase):
        @staticmethod
        def delete_model(filename):
            deleted.append(int(filename.rsplit(".", 1)[1]))
            return 1

    model = str(tmp_path / "net")
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)
    for e in existing:
        _touch(checkpoint_path(model, e))
    config = Config()
    config.update({"model": model, "num_epochs": num_epochs, "task": "train", "cleanup_old_models": cleanup, "log": []})
    engine = Engine(config=config)
    engine.learning_rate_control = lrc = load_learning_rate_control_from_config(config)
    for e, s in scores.items():
        lrc.get_learning_rate_for_epoch(e)
        lrc.set_epoch_error(e, dict(s))
    engine.cleanup_old_models()
    return sorted(deleted)


def test_cleanup_matches_returnn(tmp_path):
    pytest.importorskip("returnn")
    rng = random.Random(0)
    options = [True, {"keep_last_n": 1}, {"keep_best_n": 0}, {"keep": [3, 7]}, {"keep_last_n": 3, "keep_best_n": 1}]
    deleted_any = 0
    for case in range(40):
        num_epochs = rng.choice([6, 10, 30, 60, 150, 300])
        last = rng.randint(1, num_epochs)
        existing = sorted(rng.sample(range(1, last + 1), rng.randint(1, last)))
        if last not in existing:
            existing.append(last)
        scores = {}
        for e in range(1, last + 1):
            s = {"dev_loss_ce": round(rng.uniform(0.5, 2.0), 2), "train_loss_ce": 1.0}
            if rng.random() < 0.7:
                s["dev_loss_fer"] = round(rng.uniform(0.1, 0.3), 3)
            scores[e] = s
        cleanup = options[case % len(options)]
        expected = _returnn_models_to_delete(tmp_path, existing, cleanup, scores, num_epochs)
        assert models_to_delete(existing, cleanup_old_models=cleanup, scores=scores) == expected, case
        deleted_any += bool(expected)
    assert deleted_any > 10


# ------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.fixture
def trained():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def _save(prefix, epoch, model, opt):
    return save_checkpoint(
        prefix, epoch, model_state=model.state_dict(), optimizer_state=opt.state_dict(), step=1,
        effective_learning_rate=0.1,
    )


def test_save_and_load_roundtrip(tmp_path, trained):
    import torch

    model, opt = trained
    prefix = str(tmp_path / "out" / "net")
    check_model_dir_writable(prefix)  # creates out/
    path = save_checkpoint(
        prefix, 3, model_state=model.state_dict(), optimizer_state=opt.state_dict(), step=120,
        effective_learning_rate=0.1, optimizer_extra={"param_names": ["weight", "bias"]},
    )
    assert path == checkpoint_path(prefix, 3)
    assert sorted(os.listdir(tmp_path / "out")) == ["net.003.opt.pt", "net.003.pt"]
    ckpt = load_checkpoint(prefix, 3)
    assert set(ckpt) == {"model", "epoch", "step", "effective_learning_rate", "returnn_ray_version"}
    assert (ckpt["epoch"], ckpt["step"], ckpt["effective_learning_rate"]) == (3, 120, 0.1)
    assert torch.equal(ckpt["model"]["weight"], model.state_dict()["weight"])
    # a RETURNN user's plain torch.load finds the same dict
    assert set(torch.load(path, weights_only=True)) == set(ckpt)
    opt_state = load_optimizer_state(prefix, 3)
    assert opt_state["param_names"] == ["weight", "bias"] and opt_state["epoch"] == 3
    new_opt = torch.optim.Adam(model.parameters(), lr=0.1)
    new_opt.load_state_dict(opt_state["optimizer"])
    assert newest_complete_epoch(prefix) == 3


def test_old_format_optimizer_state(tmp_path, trained):
    import torch

    _, opt = trained
    prefix = str(tmp_path / "net")
    torch.save(opt.state_dict(), opt_path(prefix, 1))
    assert set(load_optimizer_state(prefix, 1)) == {"optimizer"}


def test_failed_save_keeps_previous_files(tmp_path, trained):
    model, opt = trained
    prefix = str(tmp_path / "net")
    _save(prefix, 2, model, opt)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    with pytest.raises(Exception):  # a lambda cannot be pickled: the model file fails after the opt file
        save_checkpoint(
            prefix, 2, model_state={"f": lambda: 1}, optimizer_state=opt.state_dict(), step=2,
            effective_learning_rate=0.1,
        )
    assert sorted(os.listdir(tmp_path)) == sorted(before)  # no temp file left
    assert (tmp_path / "net.002.pt").read_bytes() == before["net.002.pt"]
    assert load_checkpoint(prefix, 2)["step"] == 1
    with pytest.raises(ValueError, match="may not replace"):
        save_checkpoint(
            prefix, 2, model_state={}, optimizer_state={}, step=1, effective_learning_rate=0.1, extra={"epoch": 9}
        )


def test_unwritable_model_dir(tmp_path, trained):
    model, opt = trained
    blocker = tmp_path / "file"
    blocker.write_text("")
    prefix = str(blocker / "net")  # a directory below a regular file: cannot exist, even for root
    with pytest.raises(UserError) as info:
        check_model_dir_writable(prefix)
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="cannot write"):
        _save(prefix, 1, model, opt)
    with pytest.raises(UserError, match="/proc"):
        check_model_dir_writable("/proc/returnn_ray_test/net")
    with pytest.raises(UserError, match="`model` is not set"):
        check_model_dir_writable("")
    check_model_dir_writable(str(tmp_path / "ok" / "net"))
    assert os.listdir(tmp_path / "ok") == []  # the probe file is gone


class NotAllowed:
    """Not a tensor, number, string or container: torch's safe loader refuses it."""


def test_damaged_checkpoint_is_a_user_error(tmp_path, trained):
    model, opt = trained
    prefix = str(tmp_path / "net")
    _save(prefix, 1, model, opt)
    data = (tmp_path / "net.001.pt").read_bytes()
    (tmp_path / "net.001.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged, truncated, or not a checkpoint") as info:
        load_checkpoint(prefix, 1)
    assert "net.001.pt" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "net.001.pt").write_bytes(b"")
    with pytest.raises(UserError, match="not a complete torch checkpoint"):
        load_checkpoint(prefix, 1)
    import torch

    torch.save({"model": {}, "x": NotAllowed()}, checkpoint_path(prefix, 1))
    with pytest.raises(UserError, match="weights_only=False only if you trust it"):
        load_checkpoint(prefix, 1)
    assert isinstance(load_checkpoint(prefix, 1, weights_only=False)["x"], NotAllowed)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(prefix, 2)


def test_delete_checkpoint(tmp_path):
    model = str(tmp_path / "net")
    _touch(checkpoint_path(model, 1), opt_path(model, 1), checkpoint_path(model, 2))
    assert delete_checkpoint(model, 1) == 2
    assert delete_checkpoint(model, 2) == 1
    assert delete_checkpoint(model, 3) == 0
    assert os.listdir(tmp_path) == []
