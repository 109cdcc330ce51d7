"""bench/gpu/: the GPU run's CPU dry run end to end, and the bundle's pruning.

The dry run is the command a GPU machine runs (``bash bench/gpu/run.sh``), at a tiny size on the
CPU with this Python's Ray: both benchmarks (returnn-ray through a Ray Train worker against the
plain loop, whose train losses must agree; forward with one actor) and ``pytest -m gpu``, whose
tests skip here. It shows the script, its timeouts and its summary work before a GPU is lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))
import build_bundle  # noqa: E402
import summary  # noqa: E402
from tests.cpu_features import cpu_runs_a_bfloat16_lstm  # noqa: E402


@pytest.mark.ray
def test_dry_run_writes_a_summary_of_all_steps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OUT"] = str(tmp_path)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu", "run.sh"), "--dry-run", "--no-bundle",
                           "--python", sys.executable], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["dry_run"] is True
    assert result["exit_codes"] == {"train": 0, "forward": 0, "tests": 0}
    train = result["train"]
    assert train["device"] == "cpu" and train["amp"] == ("bfloat16" if cpu_runs_a_bfloat16_lstm() else None)
    assert train["epochs"] == 2
    assert train["plain_frames_per_s"] > 0 and train["returnn_ray_frames_per_s"] > 0
    assert len(train["plain_losses"]) == 2 and len(train["returnn_ray_losses"]) == 2
    assert result["forward"]["one_actor_seqs_per_s"] > 0 and "two_actors_seqs_per_s" not in result["forward"]
    # tests/test_gpu.py's three tests were selected by -m gpu and skipped (no GPU here), none failed
    assert result["tests"].get("skipped", 0) >= 3 and "failed" not in result["tests"], result["tests"]
    text = (tmp_path / "summary.txt").read_text()
    assert "--dry-run" in text and "frames/s" in text
    assert sorted(os.listdir(tmp_path)) == ["env.txt", "forward.log", "summary.json", "summary.txt", "tests.log",
                                            "train.log"]


def test_a_failed_or_timed_out_step_fails_the_summary(tmp_path):
    (tmp_path / "tests.log").write_text("....\n3 passed, 1 skipped in 2.50s\n")
    args = ["--out", str(tmp_path), "--work", str(tmp_path), "--rc", "train=124", "forward=0", "tests=0"]
    sys_argv = sys.argv
    try:
        sys.argv = ["summary.py", *args]
        assert summary.main() == 1
    finally:
        sys.argv = sys_argv
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["tests"] == {"passed": 3, "skipped": 1}
    assert "train: exit 124 (timed out)" in (tmp_path / "summary.txt").read_text()


def test_prune_cuts_what_we_never_import_and_keeps_the_dashboard_startable(tmp_path):
    site = tmp_path / "site"
    for rel in ["ray/rllib/algo.py", "ray/serve/api.py", "ray/jars/ray_dist.jar", "ray/train/tests/test_x.py",
                "ray/dashboard/client/build/static/js/main.js", "ray/dashboard/head.py", "ray/train/torch/config.py",
                "ray/core/src/ray/raylet/raylet", "ray/_private/__pycache__/x.pyc"]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("x")
    build_bundle.prune(str(site))
    left = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    # The dashboard head refuses to start without client/build: an empty one with a page stays.
    assert left == ["ray/core/src/ray/raylet/raylet", "ray/dashboard/client/build/index.html",
                    "ray/dashboard/head.py", "ray/train/torch/config.py"]
    assert (site / "ray/dashboard/client/build/static").is_dir()
