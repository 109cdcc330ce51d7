"""returnn_ray.config.returnn_keys: RETURNN keys refused in one line, checked against the installed RETURNN's source."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from returnn_ray.config import KNOWN_KEYS, Config, load_settings, warn_unread_keys
from returnn_ray.config.returnn_keys import RETURNN_CALLABLE_KEYS, UNIMPLEMENTED_UPDATER_KEYS
from returnn_ray.errors import ConfigError


def _returnn_source(relative: str) -> str:
    returnn = pytest.importorskip("returnn")
    return (pathlib.Path(returnn.__file__).parent / relative).read_text()


def _torch_updater_refused() -> set[str]:
    """The options RETURNN's torch Updater refuses (its ``for opt_name in [...]: raise NotImplementedError`` list)."""
    tree = ast.parse(_returnn_source("torch/updater.py"))
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and getattr(n.target, "id", None) == "opt_name"]
    assert len(loops) == 1
    return {elt.value for elt in loops[0].iter.elts}


def test_every_option_returnns_torch_engine_refuses_is_refused_here():
    assert _torch_updater_refused() <= set(UNIMPLEMENTED_UPDATER_KEYS) | KNOWN_KEYS


def test_every_listed_key_is_one_returnn_reads():
    """No invented names: each key is read by RETURNN (typed, for the functions)."""
    sources = [_returnn_source(p) for p in ("torch/engine.py", "torch/updater.py", "tf/updater.py", "__main__.py",
                                            "engine/base.py", "torch/data/pipeline.py", "tf/engine.py", "tf/network.py",
                                            "learning_rate_control.py", "tf/data_pipeline.py", "tf/layers/base.py")]
    text = "\n".join(sources)
    for key in UNIMPLEMENTED_UPDATER_KEYS:
        assert re.search(rf"[\"']{key}[\"']", text), key
    typed = set(re.findall(r"(?:typed_value|typed_dict\.get|typed_dict\[|opt_typed_value|is_typed)\(?\s*\"(\w+)\"", text))
    typed |= set(re.findall(r"get_.*?\(config, \"(\w+)\"", text))
    assert set(RETURNN_CALLABLE_KEYS) - typed <= {"train", "dev", "eval", "forward_data", "search_data"}, (
        set(RETURNN_CALLABLE_KEYS) - typed  # the datasets: read by name through the engine's dataset helpers
    )


def _helper(**kwargs):
    return None


@pytest.mark.parametrize(
    "items, message",
    [
        ({"epoch_end": _helper}, "'epoch_end' is a function RETURNN calls"),
        ({"startup_callback": _helper}, "'startup_callback' is a function RETURNN calls"),
        ({"gradient_noise": 0.3}, "'gradient_noise' is not supported"),
        ({"grad_clip": 5}, "called gradient_clip_global_norm"),
        ({"momentum": 0.9}, r"optimizer = \{'class': 'sgd', 'momentum'"),
        ({"rmsprop": True}, "'rmsprop' is not supported"),
        ({"pretrain": "default"}, "'pretrain' is not supported: RETURNN's pretraining"),  # RETURNN's demo-pretrain
        ({"pretrain": {"construction_algo": _helper}}, "'pretrain' is not supported"),  # demo-tf-hard-att-copy
        ({"pretrain": True}, "'pretrain' is not supported"),
    ],
)
def test_refused(items, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(Config(items))


def test_what_is_not_refused():
    """Helpers under other names, options set to 0, and functions under keys returnn-ray reads itself."""
    config = Config({"my_schedule": _helper, "gradient_noise": 0.0, "momentum": 0, "dynamic_learning_rate": _helper,
                     "pretrain": None})
    settings = load_settings(config)
    assert settings.training.dynamic_learning_rate is _helper
    assert warn_unread_keys(config) == []  # 0-valued options: read, nothing to warn about


def test_refused_from_the_command_line():
    config = Config({})
    config.parse_cmd_args(["++gradient_noise", "0.1"])
    with pytest.raises(ConfigError, match="'gradient_noise' is not supported"):
        load_settings(config)


def test_pretrain_off_in_a_line_config_is_not_refused():
    """``pretrain false`` (0, off) in a line config: off, as RETURNN's ``bool_or_other`` reads it."""
    for value in ("false", "0", "off"):
        config = Config({})
        config.parse_cmd_args(["++pretrain", value])
        load_settings(config)


def test_pretrain_is_a_key_returnn_reads():
    assert re.search(r"config\.bool_or_other\(\"pretrain\"", _returnn_source("pretrain.py"))
