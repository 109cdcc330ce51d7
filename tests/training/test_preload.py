"""returnn_ray.training.preload: ``import_model_train_epoch1`` / ``preload_from_files``, against RETURNN's torch
engine (``Engine._load_model`` run in a subprocess on the same files), and in real training runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from returnn_ray.config import Config, load_settings
from returnn_ray.errors import UserError
from returnn_ray.training import checkpoints
from returnn_ray.training.memory import memory_usage_line
from returnn_ray.training.preload import load_weights

MODEL_SRC = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(3, 4)
            self.lm = torch.nn.Linear(4, 2)

    def get_model(**_):
        torch.manual_seed(0)
        return Net()
    """
)
_ns: dict = {}
exec(MODEL_SRC, _ns)  # the same class on both sides
get_model = _ns["get_model"]

RETURNN_SCRIPT = MODEL_SRC + textwrap.dedent(
    """
    import sys
    from returnn.config import Config
    from returnn.torch.engine import Engine
    from returnn.util.basic import BackendEngine

    if __name__ == "__main__":
        BackendEngine.select_engine(engine=BackendEngine.Torch)
        cases = torch.load(sys.argv[1], weights_only=False)
        out = {}
        for name, opts in cases.items():
            engine = Engine(Config({"device": "cpu", "get_model": get_model, "extern_data": {"data": {"dim": 3}}, **opts}))
            engine._device = "cpu"
            try:
                engine._load_model()
            except Exception as exc:
                out[name] = {"error": str(exc)}
                continue
            model = engine.get_pt_model()
            out[name] = {
                "state": model.state_dict(), "params": sorted(n for n, _ in model.named_parameters()),
                "step": engine.global_train_step, "epoch": engine.epoch,
            }
        torch.save(out, sys.argv[2])
    """
)


def _net_state(seed: int, prefix: str = "") -> dict:
    torch.manual_seed(seed)
    return {prefix + k: v for k, v in _ns["Net"]().state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("preload")
    f = {name: str(d / f"{name}.pt") for name in ("imp", "lm", "raw", "other")}
    torch.save({"model": _net_state(1), "epoch": 3, "step": 17}, f["imp"])
    torch.manual_seed(2)
    torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, f["lm"])
    raw = {k.replace("enc.", "encoder."): v for k, v in _net_state(3).items() if k.startswith("enc.")}
    torch.save({**raw, "head.w": torch.zeros(1)}, f["raw"])
    torch.save({"model": _net_state(6), "step": 5}, f["other"])
    f["main"] = str(d / "main.002.pt")  # forward's checkpoint: the encoder only (an LM comes from preload)
    torch.save({"model": {k: v for k, v in _net_state(4).items() if k.startswith("enc.")}, "epoch": 2, "step": 9}, f["main"])
    f["model"] = str(d / "out" / "m")
    os.makedirs(d / "out")
    checkpoints.save_checkpoint(f["model"], 1, model_state=_net_state(5), optimizer_state={}, step=30,
                                effective_learning_rate=0.1)
    return f


def _cases(f: dict[str, str]) -> dict[str, dict]:
    lm = {"filename": f["lm"], "prefix": "lm."}
    mapped = {"filename": f["raw"], "checkpoint_key": None, "ignore_params": ["head.w"], "init_for_train": True,
              "var_name_mapping": {"enc.weight": "encoder.weight", "enc.bias": "encoder.bias"}}
    return {
        "import": {"task": "train", "import_model_train_epoch1": f["imp"]},
        "preload_train": {"task": "train", "preload_from_files": {"lm": {**lm, "init_for_train": True}}},
        "mapped": {"task": "train", "preload_from_files": {"a": {**mapped, "ignore_missing": True}}},
        "mapped_missing": {"task": "train", "preload_from_files": {"a": mapped}},
        "order": {"task": "train", "preload_from_files": {
            "a": {"filename": f["imp"], "init_for_train": True}, "b": {"filename": f["other"], "init_for_train": True}}},
        "import_and_preload": {"task": "train", "import_model_train_epoch1": f["imp"],
                               "preload_from_files": {"lm": {**lm, "init_for_train": True}}},
        "forward": {"task": "forward", "load": f["main"], "preload_from_files": {
            "lm": lm, "z": {"filename": f["other"], "init_for_train": True}}},
        "forward_missing": {"task": "forward", "load": f["main"]},
        "resume": {"task": "train", "model": f["model"], "import_model_train_epoch1": f["imp"],
                   "preload_from_files": {"b": {"filename": f["other"], "init_for_train": True}}},
        "always": {"task": "train", "preload_from_files": {"lm": {**lm, "init_for_train": "always"}}},
        "fresh_pattern": {"task": "train", "preload_from_files": {
            "a": {"filename": f["raw"], "checkpoint_key": None, "ignore_params": ["head.w"], "init_for_train": True,
                  "var_name_mapping": mapped["var_name_mapping"]},
            "b": {"filename": None, "pattern": "lm.*", "init_for_train": True}}},
    }


@pytest.fixture(scope="module")
def returnn_results(files, tmp_path_factory) -> dict[str, dict]:
    pytest.importorskip("returnn.torch.engine")
    d = tmp_path_factory.mktemp("returnn")
    (d / "run.py").write_text(RETURNN_SCRIPT)
    torch.save(_cases(files), d / "cases.pt")
    result = subprocess.run([sys.executable, str(d / "run.py"), str(d / "cases.pt"), str(d / "out.pt")],
                            capture_output=True, text=True, timeout=600, cwd=d)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(d / "out.pt", weights_only=False)


def _ours(case: dict, f: dict[str, str]) -> dict:
    settings = load_settings(Config({k: v for k, v in case.items() if k != "load"}))
    model = get_model()
    training = case["task"] == "train"
    checkpoint, path = None, None
    if not training:
        path = case["load"]
        checkpoint = checkpoints.load_checkpoint_file(path)
    elif "model" in case and checkpoints.newest_complete_epoch(case["model"]):
        path = checkpoints.checkpoint_path(case["model"], 1)
        checkpoint = checkpoints.load_checkpoint_file(path)
    try:
        step = load_weights(settings, model, checkpoint, checkpoint_path=path, training=training)
    except UserError as exc:
        return {"error": str(exc)}
    return {"state": model.state_dict(), "params": sorted(n for n, _ in model.named_parameters()), "step": step}


@pytest.mark.parametrize("name", list(_cases({k: k for k in ("imp", "lm", "raw", "other", "main", "model")})))
def test_weights_as_returnn_loads_them(name, files, returnn_results):
    """The same weights (or an error in both) as RETURNN's Engine._load_model on the same config and files."""
    theirs, ours = returnn_results[name], _ours(_cases(files)[name], files)
    assert ("error" in ours) == ("error" in theirs), (ours.get("error"), theirs.get("error"))
    if "error" in ours:
        return
    assert ours["params"] == theirs["params"]
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for key, value in theirs["state"].items():
        assert torch.equal(ours["state"][key], value), key
    if name.startswith("import"):  # RETURNN continues the global train step of the imported file, at epoch 1
        assert (theirs["epoch"], theirs["step"]) == (1, 17)
        assert ours["step"] == theirs["step"]


def test_errors_name_the_file_and_parameter(files, tmp_path):
    out = _ours(_cases(files)["mapped_missing"], files)
    assert out["error"].startswith(f"preload_from_files['a'] file {files['raw']!r} lacks model parameter(s) 'lm.bias', 'lm.weight'")
    out = _ours({**_cases(files)["forward_missing"], "load_ignore_missing_vars": True}, files)
    assert f"checkpoint {files['main']!r} lacks model parameter(s) 'lm.bias', 'lm.weight'" in out["error"]
    assert "load_ignore_missing_vars is read by RETURNN's TF engine only" in out["error"]
    bad = str(tmp_path / "bad.pt")
    torch.save({"model": {**_net_state(1), "enc.weight": torch.zeros(5, 3)}}, bad)
    out = _ours({"task": "train", "import_model_train_epoch1": bad}, files)
    assert out["error"] == (f"import_model_train_epoch1 {bad!r}: parameter 'enc.weight' has shape (5, 3), the config's"
                            " model has (4, 3); the file was made for another model")
    out = _ours({"task": "train", "import_model_train_epoch1": str(tmp_path / "nope")}, files)
    assert out["error"] == (f"import_model_train_epoch1: checkpoint {str(tmp_path / 'nope.pt')!r} does not exist;"
                            " fix import_model_train_epoch1")


def test_memory_usage_logs_nothing_on_cpu_as_returnn():
    assert memory_usage_line(torch.device("cpu")) is None


def _train(tmp_path, name: str, extra: str, *, num_epochs: int = 1) -> subprocess.CompletedProcess:
    (tmp_path / f"{name}.config").write_text(
        "#!rnn.py\n"
        "task = 'train'\ntrain = {'class': 'Task12AXDataset', 'num_seqs': 12}\n"
        "dev = {'class': 'Task12AXDataset', 'num_seqs': 8, 'fixed_random_seed': 3}\nnum_inputs = 9\nnum_outputs = 2\n"
        "network = {'output': {'class': 'softmax', 'loss': 'ce'}}\nbatch_size = 2000\nmax_seqs = 4\n"
        f"num_epochs = {num_epochs}\nmodel = '{name}/model'\nlearning_rate_file = '{name}/lr.txt'\n" + extra
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "returnn_ray", f"{name}.config"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _dev_score(tmp_path, name: str, epoch: int) -> float:
    return checkpoints_scores(tmp_path / name / "lr.txt")[epoch]


def checkpoints_scores(path) -> dict[int, float]:
    from returnn_ray.training.lr_file import load_learning_rate_file

    return {e: next(v for k, v in sorted(info.error.items()) if k.startswith("dev_")) for e, info in load_learning_rate_file(str(path)).items()}


def test_training_starts_from_the_imported_model_and_resume_does_not_reimport(tmp_path):
    """A model trained one epoch, imported into a new model dir with learning rate 0: the new epoch 1 scores on dev
    what the imported one did (its weights are used), at the imported global step; resuming never reads the file."""
    _train(tmp_path, "a", "learning_rate = 0.05\n")
    imported = checkpoints.load_checkpoint(str(tmp_path / "a" / "model"), 1)
    _train(tmp_path, "b", "learning_rate = 0.0\nimport_model_train_epoch1 = 'a/model.001.pt'\n")
    b = checkpoints.load_checkpoint(str(tmp_path / "b" / "model"), 1)
    for key, value in imported["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert _dev_score(tmp_path, "b", 1) == pytest.approx(_dev_score(tmp_path, "a", 1), rel=1e-6)
    assert b["step"] == 2 * imported["step"]  # continued from the imported step, as RETURNN
    _train(tmp_path, "c", "learning_rate = 0.0\n")  # the same without the import: a fresh model scores otherwise
    assert _dev_score(tmp_path, "c", 1) != pytest.approx(_dev_score(tmp_path, "a", 1), rel=1e-3)
    os.rename(tmp_path / "a", tmp_path / "a-moved")  # resuming b must not need (or load) the import again
    _train(tmp_path, "b", "learning_rate = 0.0\nimport_model_train_epoch1 = 'a/model.001.pt'\n", num_epochs=2)
    b2 = checkpoints.load_checkpoint(str(tmp_path / "b" / "model"), 2)
    assert b2["step"] == b["step"] + imported["step"]
