"""Tests of returnn_ray.config.settings and .reference: the typed boundary, validation, unread-key warnings, reference."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
import typing
from pathlib import Path

import pytest

from returnn_ray.config import Config, load_config
from returnn_ray.config.reference import config_reference_markdown
from returnn_ray.config import validators
from returnn_ray.config.settings import (
    IGNORED_KEYS,
    KNOWN_KEYS,
    SETTINGS_CLASSES,
    BatchingSettings,
    TrainingSettings,
    load_settings,
    warn_unread_keys,
)
from returnn_ray.errors import ConfigError
from returnn_ray.training.lr_control import LR_CONTROL_CONFIG_KEYS, LR_CONTROL_KINDS, make_lr_control


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def test_defaults():
    s = load_settings(Config())
    assert s.run.task == "train" and s.run.log_verbosity == 3 and s.run.debug is False
    assert s.run.device is None and s.run.num_epochs == 5 and s.run.ray_num_workers is None
    assert s.batching.batch_size == 1 and s.batching.max_seqs == -1
    assert s.training.learning_rate == 1.0 and s.training.learning_rate_control == "constant"
    assert s.training.newbob_relative_error_threshold == -0.01 and s.training.learning_rate_decay == 0.5
    assert s.forward.beam_size == 12 and s.forward.search_output_file_format == "py"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.run.task = "forward"  # type: ignore[misc]


def test_python_config_values(tmp_path):
    path = write(
        tmp_path,
        "exp.config",
        """
        #!returnn.py
        task = "train"
        train = {"class": "Task12AXDataset", "num_seqs": 1000}
        dev = {"class": "Task12AXDataset", "num_seqs": 100, "fixed_random_seed": 1}
        extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True}}
        batching = "random"
        batch_size = 5000
        max_seqs = 10
        optimizer = {"class": "adam"}
        learning_rate = 0.01
        learning_rate_control = "newbob"
        newbob_learning_rate_decay = 0.9
        model = "/tmp/model"
        num_epochs = 3
        log_verbosity = 5
        def get_model(*, epoch, step, **kwargs):
            return None
        """,
    )
    s = load_settings(load_config([path], ["-n", "4", "++learning_rate", "0.02"]))
    assert s.data.train == {"class": "Task12AXDataset", "num_seqs": 1000}
    assert s.data.extern_data["classes"]["sparse"] is True and s.data.batching == "random"
    assert (s.batching.batch_size, s.batching.max_seqs) == (5000, 10)
    assert s.training.optimizer == {"class": "adam"} and s.training.learning_rate == 0.02
    assert s.training.learning_rate_decay == 0.9  # read from the older alias
    assert callable(s.training.get_model)
    assert (s.run.model, s.run.num_epochs, s.run.log_verbosity) == ("/tmp/model", 4, 5)


def test_line_config_strings_become_types(tmp_path):
    path = write(
        tmp_path,
        "exp.config",
        """
        train a.hdf,b.hdf
        num_inputs 9
        num_outputs 2
        batch_size 2000
        max_seqs 10
        learning_rate 1
        adam true
        log a.log,b.log
        device cuda
        cleanup_old_models true
        """,
    )
    s = load_settings(load_config([path], ["-e", "7", "-v", "4"]))
    assert s.data.train == "a.hdf,b.hdf"
    assert (s.data.num_inputs, s.data.num_outputs) == (9, 2)
    assert (s.batching.batch_size, s.batching.max_seqs) == (2000, 10)
    assert s.training.learning_rate == 1.0 and isinstance(s.training.learning_rate, float)
    assert s.training.adam is True and s.training.cleanup_old_models is True
    assert s.run.log == ("a.log", "b.log") and s.run.device == "gpu"
    assert s.run.load_epoch == 7  # `epoch` (-e) is the older name of load_epoch
    assert s.run.log_verbosity == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["++batch_size", "0"], "batch_size must be > 0, got 0"),
        (["++batch_size_dev", "-5"], "batch_size_dev must be > 0, got -5"),
        (["++max_seqs", "0"], "max_seqs must be > 0 (or -1: no limit), got 0"),
        (["-x", "trian"], "config key 'task': expected one of 'train', 'forward'"),
        (["-u", "tpu"], "config key 'device': expected one of 'cpu', 'gpu' or None, got 'tpu'"),
        (["-n", "many"], "config key 'num_epochs': expected an int, got 'many'"),
        (["++ray_num_workers", "0"], "ray_num_workers must be >= 1, got 0"),
        (["++search_output_file_format", "json"], "'search_output_file_format': expected one of 'py', 'txt'"),
        (["++learning_rate_control", "cosine"], "'learning_rate_control': expected one of 'constant'"),
    ],
)
def test_validation_errors_name_the_key(args, message):
    with pytest.raises(ConfigError) as err:
        load_settings(load_config([], args))
    assert message in str(err.value)


def test_typed_validation_errors():
    with pytest.raises(ConfigError, match=r"batch_size\['classes'\] must be > 0, got 0"):
        load_settings(Config({"batch_size": {"data": 1000, "classes": 0}}))
    with pytest.raises(ConfigError, match="'train': a dataset dict needs a 'class' entry"):
        load_settings(Config({"train": {"files": ["a.hdf"]}}))
    with pytest.raises(ConfigError, match=r"config key eval_datasets\['devtrain'\]: a dataset dict needs a 'class'"):
        load_settings(Config({"eval_datasets": {"devtrain": {"x": 1}}}))
    with pytest.raises(ConfigError, match="config key 'num_epochs': expected int, got True"):
        load_settings(Config({"num_epochs": True}))
    with pytest.raises(ConfigError, match="config key 'get_model'"):
        load_settings(Config({"get_model": 3}))


def test_zero_seq_length_limits_mean_none_and_phase_batch_sizes():
    b = load_settings(Config({"max_seq_length": 0, "min_seq_length": 0, "batch_size_train": 300})).batching
    assert b.max_seq_length is None and b.min_seq_length is None
    assert b.batch_size_for(train=True) == 300 and b.batch_size_for(train=False) == 1
    assert BatchingSettings(batch_size={"data": 100}).batch_size_for(train=True) == {"data": 100}


def test_none_in_config_means_default():
    s = load_settings(Config({"num_epochs": None, "device": None, "learning_rate": None}))
    assert s.run.num_epochs == 5 and s.run.device is None and s.training.learning_rate == 1.0


def test_load_settings_reads_every_known_key():
    config = Config({key: None for key in KNOWN_KEYS})
    load_settings(config)
    assert set(config.unread_keys()) == set(IGNORED_KEYS)


# ------------------------------------------------------------------ unread keys


def test_unknown_key_warning_suggests_closest_known_key(caplog):
    config = load_config([], ["++learning_rte", "0.1", "++zzz_unrelated", "1", "++batch_size", "10"])
    load_settings(config)
    with caplog.at_level(logging.WARNING):
        messages = warn_unread_keys(config)
    assert messages == [
        "config key 'learning_rte' is not used by returnn-ray (did you mean 'learning_rate'?)",
        "config key 'zzz_unrelated' is not used by returnn-ray",
    ]
    assert [r.getMessage() for r in caplog.records] == messages


def test_no_warning_for_helpers_imports_private_known_and_read_keys(tmp_path):
    path = write(
        tmp_path,
        "exp.config",
        """
        #!returnn.py
        import os
        from os.path import join
        _private = 3
        use_tensorflow = True
        chunking = "0"
        my_flag = config.bool("my_flag", False)   # read by the config itself
        def helper():
            return 1
        class Net:
            pass
        helper_result = helper
        """,
    )
    config = load_config([path])
    load_settings(config)
    assert warn_unread_keys(config) == []


def test_python_config_helpers_are_quiet_but_typos_of_known_keys_warned(tmp_path):
    """A Python config's own globals are normal; only one close to a known key is likely a typo."""
    path = write(tmp_path, "exp.py", "demo_name = 'x'\nbase_dir = '/data'\nlayers = [1, 2]\nlearning_rte = 0.1\n")
    config = load_config([path], ["++zzz_unrelated", "1"])
    load_settings(config)
    assert warn_unread_keys(config) == [
        "config key 'learning_rte' is not used by returnn-ray (did you mean 'learning_rate'?)",
        "config key 'zzz_unrelated' is not used by returnn-ray",  # from ++: always warned
    ]


@pytest.mark.parametrize("text", ['{"demo_name": "x", "learning_rte": 0.1}', "demo_name x\nlearning_rte 0.1\n"])
def test_json_and_line_configs_warn_every_unknown_key(tmp_path, text):
    config = load_config([write(tmp_path, "exp.config", text)])
    load_settings(config)
    assert [m.split("'")[1] for m in warn_unread_keys(config)] == ["demo_name", "learning_rte"]


# ------------------------------------------------------------------ reference


def test_every_field_has_a_one_line_doc_and_a_reader():
    for cls in SETTINGS_CLASSES:
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc", "")
            assert doc and "\n" not in doc, (cls.__name__, f.name)
            assert f.default is not dataclasses.MISSING, (cls.__name__, f.name)


def test_known_keys_cover_spec_keys():
    spec_keys = {
        "task", "device", "log_verbosity", "log", "model", "num_epochs", "load_epoch", "learning_rate",
        "train", "dev", "eval", "eval_datasets", "batching", "extern_data", "num_inputs", "num_outputs",
        "batch_size", "batch_size_train", "batch_size_dev", "max_seqs", "max_seq_length", "min_seq_length",
        "output_file", "forward_override_hdf_output", "beam_size", "search_output_file",
        "search_output_file_format", "search_output_beam", "save_interval", "cleanup_old_models",
        "learning_rate_file", "learning_rate_control", "learning_rate_control_error_measure",
        "newbob_relative_error_threshold", "learning_rate_decay", "min_learning_rate", "optimizer", "adam",
        "nadam", "gradient_clip", "gradient_clip_global_norm", "accum_grad_multiple_step", "torch_amp",
        "get_model", "train_step", "forward_step", "network", "backend", "use_tensorflow", "chunking",
    }
    assert spec_keys <= KNOWN_KEYS


def test_reference_markdown_lists_every_key():
    text = config_reference_markdown()
    for key in KNOWN_KEYS:
        assert f"`{key}`" in text, key
    assert "| `batch_size` | int \\| dict | `1` |" in text
    assert "### RunSettings" in text and "### Accepted and ignored" in text


# ------------------------------------------------------------------ learning-rate control


def test_every_lr_control_key_and_kind_is_a_setting():
    fields = {f.name: f for f in dataclasses.fields(TrainingSettings)}
    aliases = {a for f in fields.values() for a in f.metadata["aliases"]}
    assert set(LR_CONTROL_CONFIG_KEYS) <= set(fields) | aliases
    hint = typing.get_type_hints(TrainingSettings)["learning_rate_control"]
    assert set(typing.get_args(hint)) == set(LR_CONTROL_KINDS)
    for kind in LR_CONTROL_KINDS:  # each is accepted, and the defaults build every policy
        t = load_settings(Config({"learning_rate_control": kind})).training
        assert make_lr_control(t.learning_rate_control, **t.lr_control_options()).learning_rate_for_epoch(1) == 1.0


def test_config_layer_lr_keys_are_the_policies_keys():
    """settings.py passes on the keys config/validators.py lists; the policies read theirs from
    their own signatures: a key added to a policy but not to the list would never reach it."""
    assert set(validators.LR_CONTROL_CONFIG_KEYS) == set(LR_CONTROL_CONFIG_KEYS)
    assert set(typing.get_args(validators.LrControlKind)) == set(LR_CONTROL_KINDS)


def test_lr_control_options_from_a_python_config(tmp_path):
    path = write(
        tmp_path,
        "exp.config",
        """
        #!returnn.py
        learning_rate = 0.1
        learning_rate_control = "newbob_relative"
        learning_rates = [0.01, 0.05]
        learning_rate_control_error_measure = ["dev_score", "dev_loss_fer"]
        learning_rate_decay = lambda lr: lr * 0.3
        newbob_learning_rate_growth = 1.5
        newbob_relative_error_div_by_old = True
        newbob_relative_error_grow_threshold = -0.05
        apply_cleanup_old_models_to_optim_states = True
        """,
    )
    config = load_config([path])
    t = load_settings(config).training
    assert warn_unread_keys(config) == []
    opts = t.lr_control_options()
    assert set(opts) <= set(LR_CONTROL_CONFIG_KEYS) and "newbob_learning_rate_growth" not in opts
    assert opts["learning_rate_growth"] == 1.5 and opts["newbob_relative_error_grow_threshold"] == -0.05
    assert t.apply_cleanup_old_models_to_optim_states is True
    c = make_lr_control(t.learning_rate_control, **opts)
    assert c.preset_learning_rates == {1: 0.01, 2: 0.05} and c.relative_error_div_by_old
    assert c.error_measure == ["dev_score", "dev_loss_fer"] and c.growth == 1.5
    assert c.decay(1.0) == 0.3
    # epoch 3: rel = (1.0 - 1.0) / 1.0 = 0 > -0.01, so the decay function applies to epoch 2's lr
    for epoch in (1, 2):
        c.learning_rate_for_epoch(epoch)
        c.set_epoch_error(epoch, {"dev_loss_fer": 1.0})
    assert c.learning_rate_for_epoch(3) == pytest.approx(0.015)


def test_lr_control_settings_from_the_command_line():
    t = load_settings(
        load_config(
            [],
            ["++learning_rates", "0.5,0.25", "++learning_rate_decay", "0.7", "++learning_rate_growth", "1.1",
             "++learning_rate_control_error_measure", "dev_loss_fer", "++newbob_relative_error_div_by_old", "1"],
        )
    ).training
    assert t.learning_rates == [0.5, 0.25] and t.learning_rate_decay == 0.7 and t.learning_rate_growth == 1.1
    assert t.learning_rate_control_error_measure == "dev_loss_fer" and t.newbob_relative_error_div_by_old is True
    defaults = TrainingSettings()
    assert defaults.learning_rate_growth == 1.0 and defaults.newbob_relative_error_grow_threshold is None
    assert defaults.apply_cleanup_old_models_to_optim_states is False and defaults.learning_rates is None
    with pytest.raises(ConfigError, match="learning_rate_control_error_measure must be a score key or a list"):
        load_settings(Config({"learning_rate_control_error_measure": ["dev_score", 3]}))
    with pytest.raises(ConfigError, match="config key 'learning_rate_growth': expected a float"):
        load_settings(Config({"learning_rate_growth": "fast"}))
