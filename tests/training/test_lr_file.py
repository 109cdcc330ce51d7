"""The learning_rate_file: RETURNN's layout byte for byte, and a parser that executes nothing."""

from __future__ import annotations

import math
import os

import pytest

from returnn_ray.errors import UserError
from returnn_ray.training.lr_control import make_lr_control
from returnn_ray.training.lr_file import (
    EpochData,
    format_learning_rate_file,
    load_learning_rate_file,
    parse_learning_rate_file,
    save_learning_rate_file,
)


def test_format_matches_returnn_layout():
    epochs = {
        1: EpochData(0.01, {"dev_loss_ce": 0.05, "train_loss_ce": 0.1}),
        2: EpochData(
            0.005, {"dev_loss_ce": 0.04, "dev_loss_fer": 0.25, "train_loss_ce": 0.08}, {"epoch_train_time_secs": 12}
        ),
        10: EpochData(0.005),
    }
    assert format_learning_rate_file(epochs) == (
        "{\n"
        # under 40 characters of "key: value" text: one line
        "1: EpochData(learningRate=0.01, error={'dev_loss_ce': 0.05, 'train_loss_ce': 0.1}),\n"
        "2: EpochData(learningRate=0.005, error={\n"
        "':meta:epoch_train_time_secs': 12,\n"
        "'dev_loss_ce': 0.04,\n"
        "'dev_loss_fer': 0.25,\n"
        "'train_loss_ce': 0.08,\n"
        "}),\n"
        "10: EpochData(learningRate=0.005, error={}),\n"
        "}\n"
    )


def test_format_special_floats_and_meta_values():
    scores = {"dev_loss_ce": math.inf, "train_loss_ce": -math.inf, "x": math.nan}
    ed = EpochData(1e-05, scores, {"host": "h1", "d": None})
    text = format_learning_rate_file({3: ed})
    assert "learningRate=1e-05" in text
    assert "'dev_loss_ce': float('inf')" in text and "float('-inf')" in text and "float('nan')" in text
    back = parse_learning_rate_file(text)[3]
    assert back.meta == {"host": "h1", "d": None}
    assert back.error["dev_loss_ce"] == math.inf and back.error["train_loss_ce"] == -math.inf
    assert math.isnan(back.error["x"])


def test_roundtrip_and_save(tmp_path):
    epochs = {e: EpochData(0.1 / e, {"dev_loss_ce": 1.0 / e, "train_loss": 2.0 / e}, {"step": e}) for e in range(1, 13)}
    path = str(tmp_path / "sub" / "lr.txt")
    save_learning_rate_file(path, epochs)  # creates the directory, as RETURNN does
    assert load_learning_rate_file(path) == epochs
    assert os.listdir(tmp_path / "sub") == ["lr.txt"]


def test_parser_accepts_returnn_variants():
    text = (
        "{1: EpochData(learningRate=1, error=0.5),\n"  # old format: a float error, an int lr
        " 2: EpochData(learningRate=np.float64(0.25),"
        " error={'dev_loss_ce': np.float64(1.5), ':meta:n': np.int64(3)}),\n"
        " 3: EpochData(learning_rate=0.1, error={'dev_loss_ce': inf, 'x': -nan}, meta={'a': [1, (2, 3)]}),\n"
        " 4: EpochData(0.1, {'dev_loss_ce': +1.0}),\n"
        "}"
    )
    epochs = parse_learning_rate_file(text)
    assert epochs[1] == EpochData(1.0, {"old_format_score": 0.5})
    assert epochs[2] == EpochData(0.25, {"dev_loss_ce": 1.5}, {"n": 3})
    assert epochs[3].meta == {"a": [1, (2, 3)]} and epochs[3].error["dev_loss_ce"] == math.inf
    assert epochs[4] == EpochData(0.1, {"dev_loss_ce": 1.0})
    assert isinstance(epochs[1].learning_rate, float)


@pytest.mark.parametrize(
    "text, what",
    [
        ("", "empty"),
        (" \n", "empty"),
        ("{1: \x00}", "null bytes"),
        ("{1: EpochData(learningRate=0.1, error={})", "line 1"),
        ("[1, 2]", "expected a dict"),
        ("{1: __import__('os').system('echo pwned')}", "expected EpochData"),
        ("{1: EpochData(learningRate=__import__('os').getpid(), error={})}", "unexpected"),
        ("{1: EpochData(learningRate=0.1, error={'a': open('/etc/passwd').read()})}", "unexpected"),
        ("{'x': EpochData(learningRate=0.1, error={})}", "is not an int"),
        ("{1: EpochData(learningRate='0.1', error={})}", "is not a number"),
        ("{1: EpochData(learningRate=0.1, error={'dev': 'bad'})}", "is not a name and a number"),
        ("{1: EpochData(learningRate=0.1, typo={})}", "unexpected EpochData argument 'typo'"),
        ("{1: EpochData(learningRate=0.1, error={':meta:a': 1}, meta={})}", "':meta:' keys"),
        ("{\n1: EpochData(learningRate=0.1, error={}),\n2: Epoch(learningRate=0.1),\n}", "line 3"),
    ],
)
def test_corrupt_file_is_a_user_error_naming_the_file(text, what):
    with pytest.raises(UserError) as info:
        parse_learning_rate_file(text, "/exp/newbob.data")
    msg = str(info.value)
    assert "'/exp/newbob.data'" in msg and what in msg and "\n" not in msg


def test_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="cannot read learning_rate_file"):
        load_learning_rate_file(str(tmp_path / "missing.txt"))
    c = make_lr_control("newbob")
    assert c.load(str(tmp_path / "missing.txt")) is False
    with pytest.raises(UserError, match="does not exist"):
        c.load(str(tmp_path / "missing.txt"), missing_ok=False)
