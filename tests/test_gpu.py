"""Training on a GPU: what only a machine with CUDA can show (``pytest -m gpu``; bench/gpu/run.sh runs them).

Each test skips without a GPU, also in CI (no CI machine has one). The reference is the CPU run
of the same config, whose training is checked against RETURNN elsewhere (tests/training/); here the
GPU runs (cuDNN's LSTM, autocast on CUDA, Ray Train's NCCL process group) must agree with it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

CONFIG = (
    "#!rnn.py\n"
    "task = 'train'\ntrain = {'class': 'Task12AXDataset', 'num_seqs': 40}\nnum_inputs = 9\nnum_outputs = 2\n"
    "network = {'l': {'class': 'rec', 'unit': 'lstm', 'n_out': 32}, 'output': {'class': 'softmax', 'loss': 'ce', 'from': 'l'}}\n"
    "batch_size = 2000\nmax_seqs = 8\nnum_epochs = 2\nlearning_rate = 0.01\nmodel = 'out/model'\n"
)


@pytest.fixture(autouse=True)
def needs_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU that torch can use (torch.cuda.is_available() is False)")


def train(directory, *args: str, ray: bool = False) -> tuple[str, list[float]]:
    """Run ``returnn-ray`` on CONFIG in ``directory``; its stdout and the train score of each epoch."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "t.config"), "w") as f:
        f.write(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray:
        env["RAY_ADDRESS"] = "local"  # its own embedded Ray, on this machine's GPU
    proc = subprocess.run([sys.executable, "-m", "returnn_ray", "t.config", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(os.path.join(directory, "out", "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return proc.stdout, [e["scores"]["train_score"] for e in events if e["event"] == "epoch_end"]


def test_gpu_training_matches_cpu(tmp_path):
    """Same config, same seed: the GPU run's train scores are the CPU run's (float32 on both)."""
    cpu_out, cpu = train(tmp_path / "cpu", "++device", "cpu")
    gpu_out, gpu = train(tmp_path / "gpu", "++device", "gpu")
    assert "(cpu)" in cpu_out and "(gpu)" in gpu_out
    assert len(gpu) == len(cpu) == 2
    assert gpu == pytest.approx(cpu, rel=2e-3)


def test_gpu_bf16_amp_trains_and_checkpoint_loads_on_cpu(tmp_path):
    """torch_amp bfloat16 on CUDA: finite scores near the float32 run's, float32 checkpoint readable on a CPU."""
    _, fp32 = train(tmp_path / "fp32", "++device", "gpu")
    _, bf16 = train(tmp_path / "bf16", "++device", "gpu", "++torch_amp", "bfloat16")
    assert all(math.isfinite(x) for x in bf16)
    assert bf16 != fp32  # autocast was on: bfloat16 matmuls round differently
    assert bf16 == pytest.approx(fp32, rel=0.05)
    state = torch.load(tmp_path / "bf16" / "out" / "model.002.pt", map_location="cpu", weights_only=True)["model"]
    assert state and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())


@pytest.mark.ray
def test_gpu_ray_worker_on_nccl_matches_local_mode(tmp_path):
    """One Ray Train worker holding the GPU (process group on NCCL) trains as the in-process run does."""
    local_out, local = train(tmp_path / "local", "++device", "gpu")
    ray_out, on_ray = train(tmp_path / "ray", "++device", "gpu", "++ray_local_mode", "False", ray=True)
    assert "in this process" in local_out
    assert "1 worker(s) on Ray (gpu)" in ray_out
    assert on_ray == pytest.approx(local, rel=2e-3)
