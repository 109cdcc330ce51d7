"""Every config of RETURNN's ``demos/`` folder (its PyPI sdist, unchanged) that returnn-ray does not run
is refused in one line: exit code 2, one ``returnn-ray: error:`` line naming the culprit, no traceback,
nothing written. docs/returnn_configs.md lists the same demos with the reasons.

Each demo runs as RETURNN's ``demos/demo.sh`` runs it: from its own folder, trained for one epoch,
with the output paths on the command line pointing into a temporary folder. The demos that run are
tests/tasks/test_returnn_demos.py and test_returnn_demo_configs.py. Refusal happens before Ray starts
and before anything is trained, so this is cheap: Python start-up and the config, two at a time.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.returnn_demos import demos_dir

#: demo (relative to demos/) -> a fragment of the one error line (the first blocker returnn-ray meets)
REFUSED: dict[str, str] = {
    "demo-hyper-param-tuning.config": "No module named 'HyperParamTuning'",
    "demo-lua-torch-layer.config": "network layer 'fw0': unknown class 'torch'",
    "demo-pretrain.config": "config key 'adadelta' is not supported",
    "demo-rhn-enwik8.config": "batch_size must be > 0, got 0",
    "demo-tf-att-copy.config": "config key 'gradient_noise' is not supported",
    "demo-tf-attention.config": "config key 'gradient_nan_inf_filter' is not supported",
    "demo-tf-enc-dec.config": "network layer 'input_last': unknown class 'get_last_hidden_state'",
    "demo-tf-hard-att-copy.config": "config key 'pretrain' is not supported",
    "demo-tf-native-lstm2.12ax.tuned.config": "config key 'gradient_clip_norm' is not supported",
    "demo-tf-neural-transducer.12ax.config": "config key 'gradient_nan_inf_filter' is not supported",
    "demo-tf-rec-explicit-lstm.config": "config key 'gradient_noise' is not supported",
    "demo-tf-rec-explicit-rnn.config": "config key 'gradient_noise' is not supported",
    "demo-tf-rec-self-att.config": "network layer 'rnn': a 'unit' dict (a subnetwork of layers run frame by frame",
    "demo-timit-lstm-ctc.config": "config key 'gradient_noise' is not supported",
    "demo-upd-mult-model.lstm.12ax.config": "SyntaxError: Missing parentheses in call to 'print'",
    **dict.fromkeys(
        [f"mdlstm/{d}/{c}" for d in ("artificial", "artificial_rgb") for c in ("trainconfig", "forwardconfig")]
        + [f"mdlstm/IAM/{c}" for c in ("config_demo", "config_fwd", "config_real")],
        "config key 'device': expected one of 'cpu', 'gpu' or None, got 'gpuX'",
    ),
}

#: demos that run (tests/tasks/test_returnn_demos.py, test_returnn_demo_configs.py)
RUN = {
    "demo-torch.config", "demo-rf.config", "demo-fwd.config", "demo-tf-native-lstm.12ax.config",
    "demo-tf-native-lstm2.12ax.config", "demo-tf-vanilla-lstm.12ax.config", "demo-tf-chunking-blstm.12ax.config",
    # they run; their model path calls os.getlogin(), which fails without a login terminal (as under RETURNN)
    "demo-tf-contribrnn-lstm.12ax.config", "demo-tf-native-lstm-lowmem.12ax.config",
    "demo-tf-maxgradnorm-lstm.12ax.config",  # maximize_grad_norm by double backward (a smaller train set there: slow)
}


def _run(name: str, out: Path) -> subprocess.CompletedProcess:
    config = demos_dir() / name
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [str(config), "++num_epochs", "1", "++model", str(out / "model"), "++learning_rate_file", str(out / "lr"),
            "++output_file", str(out / "out.hdf"), "++log", str(out / "log")]
    return subprocess.run([sys.executable, "-m", "returnn_ray", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=config.parent)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    base = tmp_path_factory.mktemp("demos")
    outs = {name: base / name.replace("/", "_") for name in REFUSED}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        procs = dict(zip(outs, pool.map(lambda name: _run(name, outs[name]), outs)))
    return {name: (procs[name], outs[name]) for name in outs}


def test_the_survey_covers_every_config_of_the_demos_folder():
    """A new RETURNN release with a new demo fails here until docs/returnn_configs.md and REFUSED/RUN list it."""
    demos = demos_dir()
    configs = {str(p.relative_to(demos)) for p in demos.rglob("*") if p.is_file() and "config" in p.name}
    assert configs == set(REFUSED) | RUN
    doc = (Path(__file__).resolve().parents[2] / "docs" / "returnn_configs.md").read_text()
    assert all(f"`{name}`" in doc for name in configs), [n for n in configs if f"`{n}`" not in doc]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_demo_is_one_line_exit_2_nothing_written(results, name):
    proc, out = results[name]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("returnn-ray: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(errors) == 1 and REFUSED[name] in errors[0], proc.stderr[-2000:]
    assert list(out.iterdir()) == []
