"""returnn_ray.training.optim: optimizer from the config, clipping, AMP, accumulation; against RETURNN's updater."""

from __future__ import annotations

import ast
import pathlib
import warnings

import pytest
import torch

from returnn_ray.errors import ConfigError
from returnn_ray.training.optim import (
    AmpSettings,
    amp_context,
    apply_update,
    build_optimizer,
    clip_gradients,
    make_grad_scaler,
    set_learning_rate,
    should_step,
)
from tests.cpu_features import cpu_runs_a_bfloat16_lstm


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)
    )


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adam", torch.optim.Adam),
        ("AdamW", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("nadam", torch.optim.NAdam),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
        ("torch.optim.Adamax", torch.optim.Adamax),
        (torch.optim.RAdam, torch.optim.RAdam),
        (lambda: torch.optim.Adadelta, torch.optim.Adadelta),  # RETURNN: a callable returns the class
    ],
)
def test_optimizer_class_by_name(name, cls):
    opt = build_optimizer(_model(), optimizer={"class": name}, learning_rate=0.25)
    assert type(opt) is cls
    assert [g["lr"] for g in opt.param_groups] == [0.25]


def test_optimizer_options_and_epsilon():
    opt = build_optimizer(
        _model(), optimizer={"class": "adam", "epsilon": 1e-5, "betas": (0.8, 0.9)}, learning_rate=0.1
    )
    assert opt.param_groups[0]["eps"] == 1e-5 and opt.param_groups[0]["betas"] == (0.8, 0.9)


@pytest.mark.parametrize(
    "optimizer, message",
    [
        ({"class": "adam", "learning_rate": 0.1}, "found 'learning_rate'"),
        ({"class": "adam", "lr": 0.1}, "found 'lr'"),
        ({"class": "adamww"}, "not a torch.optim optimizer; did you mean 'adamw'?"),
        ({"class": "adam", "beta": (0.9, 0.99)}, "unknown option 'beta'; did you mean 'betas'?"),
        ({"class": "rprop", "weight_decay": 0.1}, "unknown option 'weight_decay'"),
        ({"betas": (0.9, 0.99)}, "has no 'class'"),
        ({"class": "mypackage_that_does_not_exist.Lion"}, "cannot be imported"),
        ({"class": "torch.nn.Linear"}, "not a torch.optim.Optimizer subclass"),
        (42, "must be a dict"),
    ],
)
def test_optimizer_config_errors(optimizer, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(_model(), optimizer=optimizer, learning_rate=0.1)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": {"class": "adam", "betas": (0.9, 0.98), "epsilon": 1e-8}},
        {"optimizer": {"class": "adamw", "weight_decay": 0.01}},
        {"adam": True},
        {},
        {"optimizer": {"class": "adam", "betas": (1.5, 0.9)}},  # torch's Adam refuses beta 1.5
        {"optimizer": {"class": "sgd", "momentum": -1.0}},
        {"optimizer": {"class": "sgd", "nesterov": True}},  # nesterov needs momentum
        {"optimizer": {"class": "adam", "epsilon": -1.0}},
        {"optimizer_epsilon": -1.0, "adam": True},  # the flags' Adam with a bad eps: not a ConfigError in the build either
        {"optimizer": {"class": "adam", "beta": (0.9, 0.99)}},
        # Refused only once they hold params: the check builds them (and imports dynamo)
        {"optimizer": {"class": "adam", "fused": True, "differentiable": True}, "built": True},
        {"optimizer": {"class": "sgd", "fused": True, "foreach": True}, "built": True},
        {"optimizer": {"class": "muon"}, "built": True},  # refuses the 1-D bias
    ],
)
def test_the_driver_check_says_what_building_says_without_importing_dynamo(options):
    # The driver checks the optimizer before any worker starts, without building it (building
    # imports torch._dynamo: 1-1.4 s of start-up); it must refuse exactly what the build refuses.
    import subprocess
    import sys

    options = dict(options)
    built = options.pop("built", False)
    code = (
        "import sys, torch\n"
        "from returnn_ray.training.optim import build_optimizer, check_optimizer\n"
        f"options = {{'optimizer': None, **{options!r}}}\n"
        "def outcome(call):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as exc:\n"
        "        return f'{type(exc).__name__}: {exc}'\n"
        "    return 'ok'\n"
        "checked = outcome(lambda: check_optimizer(**options, learning_rate=0.1))\n"
        "print('dynamo after check:', 'torch._dynamo' in sys.modules)\n"
        "print('check:', checked)\n"
        "print('build:', outcome(lambda: build_optimizer(torch.nn.Linear(1, 1), **options, learning_rate=0.1)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    if out[2] == "build: ok":  # a good config: checked without building it (unless it must be built)
        assert out[0] == f"dynamo after check: {built}", out
    assert out[1].replace("check:", "build:") == out[2], out


def _returnn_tf_epsilon_default() -> float:
    """RETURNN TF updater's default ``optimizer_epsilon``, read from its source (TensorFlow is not installed)."""
    returnn = pytest.importorskip("returnn")
    tree = ast.parse((pathlib.Path(returnn.__file__).parent / "tf" / "updater.py").read_text())
    defaults = {
        call.args[1].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "float"
        and len(call.args) == 2 and isinstance(call.args[0], ast.Constant) and call.args[0].value == "optimizer_epsilon"
    }
    assert len(defaults) == 1, defaults
    return defaults.pop()


def test_defaults_and_old_flags():
    """Network dicts follow RETURNN's TF engine: adam/nadam flags and the dict's default epsilon are
    ``optimizer_epsilon`` (RETURNN's default read from its source), an explicit ``epsilon`` wins."""
    model = _model()
    sgd = build_optimizer(model, learning_rate=0.5)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["lr"] == 0.5  # RETURNN TF's default
    with pytest.raises(ConfigError, match=r"no optimizer set; set e.g. optimizer = \{'class': 'adam'\}"):
        build_optimizer(model, learning_rate=0.5, default="error")  # RETURNN's torch engine
    adam = build_optimizer(model, adam=True, learning_rate=0.1)
    nadam = build_optimizer(model, nadam=True, learning_rate=0.1)
    assert type(adam) is torch.optim.Adam and type(nadam) is torch.optim.NAdam
    tf_eps = _returnn_tf_epsilon_default()
    assert adam.param_groups[0]["eps"] == nadam.param_groups[0]["eps"] == tf_eps
    assert build_optimizer(model, optimizer={"class": "adam"}, learning_rate=0.1).param_groups[0]["eps"] == tf_eps
    for form in ({"adam": True}, {"optimizer": {"class": "adam"}}, {"optimizer": {"class": "adamw"}}):
        opt = build_optimizer(model, **form, optimizer_epsilon=1e-5, learning_rate=0.1)
        assert [g["eps"] for g in opt.param_groups] == [1e-5], form
    explicit = build_optimizer(model, optimizer={"class": "adam", "epsilon": 1e-3}, optimizer_epsilon=1e-5, learning_rate=0.1)
    assert explicit.param_groups[0]["eps"] == 1e-3
    # Adafactor's eps is a pair, not TF's epsilon: left at its default
    assert build_optimizer(model, optimizer={"class": "adafactor"}, learning_rate=0.1).param_groups[0]["eps"] == (None, 1e-3)
    with pytest.raises(ConfigError, match="both adam = True and nadam = True"):
        build_optimizer(model, adam=True, nadam=True, learning_rate=0.1)
    with pytest.warns(UserWarning, match="the 'optimizer' dict is used"):
        assert type(build_optimizer(model, optimizer={"class": "sgd"}, adam=True, learning_rate=0.1)) is torch.optim.SGD


def _group_names(model, opt) -> list[tuple[list[str], float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["weight_decay"]) for g in opt.param_groups]


def test_weight_decay_groups():
    model = _model()
    opt = build_optimizer(model, optimizer={"class": "adamw", "weight_decay": 0.1}, learning_rate=0.1)
    assert _group_names(model, opt) == [
        (["1.weight", "3.weight"], 0.1),
        (["0.weight", "1.bias", "2.bias", "2.weight"], 0.0),
    ]
    opt = build_optimizer(
        model,
        optimizer={"class": "adamw", "weight_decay": 0.1, "weight_decay_modules_blacklist": ["torch.nn.Linear"]},
        learning_rate=0.1,
    )
    # the blacklist replaces the default one; biases never get weight decay
    assert _group_names(model, opt) == [
        (["0.weight", "2.weight"], 0.1),
        (["1.bias", "1.weight", "2.bias", "3.weight"], 0.0),
    ]
    with pytest.raises(ConfigError, match="cannot import 'torch.nn.NoSuchNorm'"):
        build_optimizer(
            model,
            optimizer={
                "class": "adamw",
                "weight_decay": 0.1,
                "weight_decay_modules_blacklist": ["torch.nn.NoSuchNorm"],
            },
            learning_rate=0.1,
        )


def _not_linear_weights(*, module, full_param_name, **_):
    """A weight_decay_custom_include_check: no decay for Linear weights; 'bias': decided by the name it gets."""
    if isinstance(module, torch.nn.Linear) and full_param_name == "weight":
        return False
    return True if full_param_name == "bias" else None


@pytest.mark.parametrize(
    "optimizer, extra",
    [
        ({"class": "adamw", "weight_decay": 0.1, "epsilon": 1e-5}, {}),
        ({"class": "adam", "weight_decay": 0.01, "weight_decay_modules_blacklist": ["torch.nn.Linear"]}, {}),
        ({"class": "sgd", "momentum": 0.9}, {}),
        ({"class": "adam"}, {}),  # torch's epsilon (1e-8), not the TF engine's 1e-16
        ({"class": "adam"}, {"optimizer_epsilon": 1e-5}),  # RETURNN's torch engine ignores optimizer_epsilon
        ({"class": "adam", "amsgrad": True, "betas": (0.8, 0.99)}, {}),
        ({"class": "nadam", "weight_decay": 0.1, "decoupled_weight_decay": True}, {}),
        ({"class": "adamw", "weight_decay": 0.1, "weight_decay_custom_include_check": _not_linear_weights}, {}),
    ],
)
def test_optimizer_like_returnn(optimizer, extra):
    """Differential, torch-style configs: same class, param groups (members, order, every
    hyperparameter) as RETURNN's torch Updater from the same config."""
    returnn_config = pytest.importorskip("returnn.config")
    returnn_updater = pytest.importorskip("returnn.torch.updater")
    model = _model()
    updater = returnn_updater.Updater(
        config=returnn_config.Config({"optimizer": dict(optimizer), **extra}),
        network=model,
        device="cpu",
        initial_learning_rate=0.3,
    )
    updater.create_optimizer()
    theirs = updater.optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimizer_epsilon: warned as ignored
        ours = build_optimizer(model, optimizer=optimizer, learning_rate=0.3, default="error", **extra)
    assert type(ours) is type(theirs)
    assert len(ours.param_groups) == len(theirs.param_groups)
    for o, t in zip(ours.param_groups, theirs.param_groups):
        assert [id(p) for p in o["params"]] == [id(p) for p in t["params"]]
        assert {k: v for k, v in o.items() if k != "params"} == {k: v for k, v in t.items() if k != "params"}


@pytest.mark.parametrize("flag", ["adam", "nadam"])
def test_old_flags_refused_for_torch_style_configs_like_returnn(flag):
    """RETURNN's torch engine does not read adam/nadam and refuses to run without an optimizer dict."""
    returnn_config = pytest.importorskip("returnn.config")
    returnn_updater = pytest.importorskip("returnn.torch.updater")
    updater = returnn_updater.Updater(
        config=returnn_config.Config({flag: True}), network=_model(), device="cpu", initial_learning_rate=0.3
    )
    with pytest.raises(ValueError, match="'optimizer' needs to be set"):
        updater.create_optimizer()
    with pytest.raises(ConfigError, match=rf"{flag} = True is not read by RETURNN's torch engine.*'class': '{flag}', 'epsilon': 1e-16"):
        build_optimizer(_model(), **{flag: True}, learning_rate=0.3, default="error")


def test_param_groups_custom_and_lr_multiplier():
    model = _model()

    def groups(*, model, optimizer_class, optimizer_opts, **_):
        return [
            {"params": list(model[0].parameters()), "learning_rate_multiplier": 0.1},
            {"params": [p for m in list(model)[1:] for p in m.parameters()]},
        ]

    opt = build_optimizer(model, optimizer={"class": "sgd", "param_groups_custom": groups}, learning_rate=2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 2.0])
    set_learning_rate(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    # the multiplier survives a checkpoint round trip
    fresh = build_optimizer(model, optimizer={"class": "sgd", "param_groups_custom": groups}, learning_rate=1.0)
    fresh.load_state_dict(opt.state_dict())
    set_learning_rate(fresh, 1.0)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx([0.1, 1.0])


def test_plain_params_get_uniform_weight_decay():
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], optimizer={"class": "adamw", "weight_decay": 0.2}, learning_rate=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2]


def _params_with_grads():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([3.0, -10.0])
    b.grad = torch.tensor([0.5])
    return [a, b]


def test_clip_gradients():
    params = _params_with_grads()
    assert clip_gradients(params, 0.0, None) is None and params[0].grad.tolist() == [3.0, -10.0]  # 0: off
    norm = clip_gradients(params, 4.0, 2.5)  # value first: [3, -4], 0.5 -> norm 5.0249
    assert norm.item() == pytest.approx((9 + 16 + 0.25) ** 0.5)
    total = torch.cat([p.grad for p in params]).norm()
    assert total.item() == pytest.approx(2.5, rel=1e-5)
    with pytest.raises(ConfigError, match="gradient_clip must be >= 0"):
        clip_gradients(params, -1.0, None)


def test_clipping_like_returnn():
    """Differential: the update after clipping equals RETURNN's Updater.step with the same options."""
    returnn_config = pytest.importorskip("returnn.config")
    returnn_updater = pytest.importorskip("returnn.torch.updater")

    def run(ours: bool) -> list[torch.Tensor]:
        model = _model()
        for i, p in enumerate(model.parameters()):
            p.grad = torch.full_like(p, float(i + 1)) * torch.linspace(-2, 2, p.numel()).view_as(p)
        opts = {"optimizer": {"class": "sgd"}, "gradient_clip": 1.5, "gradient_clip_global_norm": 3.0}
        if ours:
            opt = build_optimizer(model, optimizer=opts["optimizer"], learning_rate=0.1)
            apply_update(opt, model, gradient_clip=1.5, gradient_clip_global_norm=3.0)
        else:
            updater = returnn_updater.Updater(
                config=returnn_config.Config(opts), network=model, device="cpu", initial_learning_rate=0.1
            )
            updater.create_optimizer()
            updater.step()
        return [p.detach().clone() for p in model.parameters()]

    for o, t in zip(run(True), run(False)):
        torch.testing.assert_close(o, t)


def test_amp_settings():
    assert AmpSettings.from_config(None) is None
    assert AmpSettings.from_config("bfloat16") == AmpSettings(torch.bfloat16, {})
    assert AmpSettings.from_config({"dtype": "float16"}) == AmpSettings(torch.float16, {})
    assert AmpSettings.from_config({"dtype": None}) == AmpSettings(None, {})
    assert AmpSettings.from_config("bfloat16", grad_scaler=None) == AmpSettings(torch.bfloat16, None)
    assert AmpSettings.from_config({"dtype": "float16", "grad_scaler": {"init_scale": 8.0}}).grad_scaler == {
        "init_scale": 8.0
    }
    with pytest.raises(ConfigError, match="torch_amp dtype 'float8' is not one of"):
        AmpSettings.from_config("float8")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['enabled'\]"):
        AmpSettings.from_config({"dtype": "bfloat16", "enabled": True})
    with pytest.raises(ConfigError, match="grad_scaler must be a dict"):
        AmpSettings.from_config("float16", grad_scaler=True)


def test_amp_context_on_cpu():
    lin = torch.nn.Linear(4, 3)
    x = torch.ones(2, 4)
    with amp_context("bfloat16", "cpu"):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    with amp_context(None, "cpu"):
        assert lin(x).dtype == torch.float32
    with amp_context(AmpSettings.from_config({"dtype": "bfloat16"}), "cpu"):
        loss = lin(x).float().sum()
    loss.backward()
    assert lin.weight.grad.dtype == torch.float32  # params and their grads stay float32


def test_amp_on_a_cpu_without_a_bfloat16_lstm_is_a_config_error():
    """Some CPUs' oneDNN has no bfloat16 LSTM (this machine's AMD EPYC VM): one line naming
    torch_amp; where the CPU has it, the LSTM runs in bfloat16."""
    lstm, x = torch.nn.LSTM(3, 5, batch_first=True), torch.ones(1, 2, 3)
    if cpu_runs_a_bfloat16_lstm():
        with amp_context("bfloat16", "cpu"):
            assert lstm(x)[0].dtype == torch.bfloat16
    else:
        with pytest.raises(ConfigError, match=r"^torch_amp bfloat16: this CPU cannot run .*remove torch_amp"):
            with amp_context("bfloat16", "cpu"):
                lstm(x)
    with pytest.raises(RuntimeError, match="other"):  # any other error passes as it is
        with amp_context("bfloat16", "cpu"):
            raise RuntimeError("other")


def test_grad_scaler_only_on_cuda():
    assert make_grad_scaler("float16", "cpu") is None
    assert make_grad_scaler(None, "cuda") is None
    assert make_grad_scaler({"dtype": "float16", "grad_scaler": None}, "cuda") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
        scaler = make_grad_scaler({"dtype": "float16", "grad_scaler": {"init_scale": 8.0}}, "cuda")
    assert isinstance(scaler, torch.amp.GradScaler)


def test_accumulation_drops_the_partial_step_at_epoch_end():
    """accum_grad_multiple_step=2, epochs of 3 steps: an update after step 1 of each epoch; step 2's grads dropped."""
    assert [should_step(i, 1) for i in range(3)] == [True, True, True]
    assert [should_step(i, 2) for i in range(3)] == [False, True, False]
    with pytest.raises(ConfigError, match="accum_grad_multiple_step must be >= 1"):
        should_step(0, 0)

    w = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([w], lr=1.0)
    grads = [[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]]  # per epoch, per step
    for epoch_grads in grads:
        opt.zero_grad()  # each epoch starts from zero grads
        for i, g in enumerate(epoch_grads):
            (w * g).backward()
            if should_step(i, 2):
                opt.step()
                opt.zero_grad()
    assert w.item() == -(1 + 2) - (3 + 4)  # summed over the accumulation, the 100s never applied
