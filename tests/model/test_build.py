"""returnn_ray.model.build: the one place that builds a config's model, for training and inference.

Real configs (a Python file with ``get_model``, a JSON network dict) read by the real config
loader; what each task needs the config to define is checked before Ray starts.
"""

from __future__ import annotations

import json

import pytest
import torch

from returnn_ray.config import load_config, load_settings
from returnn_ray.data.base import DataSpec
from returnn_ray.errors import ConfigError
from returnn_ray.model.build import build_model, check_model, model_spec

SPECS = {"data": DataSpec(dim=3), "classes": DataSpec(dim=2, sparse=True, dtype="int32")}

TORCH_CONFIG = """#!rnn.py
import torch

def get_model(*, epoch, step, **_kwargs):
    return torch.nn.Linear(epoch, step)  # the shape shows which epoch and step it was built for
{steps}
"""

STEP_DEFS = {
    "train_step": "def train_step(*, model, extern_data, **_kwargs):\n    pass\n",
    "forward_step": "def forward_step(*, model, extern_data, **_kwargs):\n    pass\n",
    "search_step": "def search_step(*, model, extern_data, beam_size, **_kwargs):\n    return []\n",
}


def _python_settings(tmp_path, *step_names: str, model: bool = True):
    text = TORCH_CONFIG.format(steps="".join(STEP_DEFS[name] for name in step_names))
    if not model:
        text = text.replace("def get_model", "def _not_get_model")
    path = tmp_path / "c.config"
    path.write_text(text)
    return load_settings(load_config([str(path)]))


@pytest.mark.parametrize("task, needed", [("train", "train_step"), ("forward", "forward_step"), ("search", "search_step")])
def test_each_task_needs_its_own_step_function(tmp_path, task, needed):
    others = [name for name in STEP_DEFS if name != needed]
    with pytest.raises(ConfigError, match=rf"defines get_model but no {needed}\(\*, model, extern_data"):
        check_model(_python_settings(tmp_path, *others), task=task)
    check_model(_python_settings(tmp_path, needed), task=task)


@pytest.mark.parametrize("task, needed", [("train", "train_step"), ("forward", "forward_step"), ("search", "search_step")])
def test_no_model_names_what_to_set(tmp_path, task, needed):
    with pytest.raises(ConfigError, match=rf"defines no model: set `network` \(a layer dict\) or `get_model` and `{needed}`"):
        check_model(_python_settings(tmp_path, *STEP_DEFS, model=False), task=task)


def test_training_refuses_a_get_model_config_without_train_step(tmp_path):
    with pytest.raises(ConfigError, match="no train_step"):
        model_spec(_python_settings(tmp_path, "forward_step", "search_step"), SPECS)


def test_get_model_gets_the_epoch_and_step_for_training_and_inference_alike(tmp_path):
    settings = _python_settings(tmp_path, *STEP_DEFS)
    for model in (build_model(settings, SPECS, epoch=3, step=5), model_spec(settings, SPECS).build(3, 5)):
        assert isinstance(model, torch.nn.Linear) and tuple(model.weight.shape) == (5, 3)


def test_a_network_dict_needs_no_step_function_and_builds_the_same_module_for_both(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"network": {"hidden": {"class": "linear", "activation": "tanh", "n_out": 4},
                                            "output": {"class": "softmax", "loss": "ce", "from": "hidden"}}}))
    settings = load_settings(load_config([str(path)]))
    for task in ("train", "forward", "search"):
        check_model(settings, task=task)
    spec = model_spec(settings, SPECS)  # builds once to check the dict: before seeding
    torch.manual_seed(1)
    for_inference = build_model(settings, SPECS, epoch=1, step=0).state_dict()
    torch.manual_seed(1)
    for_training = spec.build(1, 0).state_dict()
    assert {k: tuple(v.shape) for k, v in for_inference.items()} == {
        "layers.hidden.linear.weight": (4, 3), "layers.hidden.linear.bias": (4,),
        "layers.output.linear.weight": (2, 4), "layers.output.linear.bias": (2,),
    }
    assert all(torch.equal(for_inference[k], for_training[k]) for k in for_inference)
