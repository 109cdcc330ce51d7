"""A cluster the user started, the way ``cluster.yaml`` starts one: ``ray start --head`` with
``RAY_AUTH_MODE=token`` and the shared token in ``~/.ray/auth_token``. ``returnn-ray`` given its
address, with nothing about tokens in its own environment (as in a fresh shell on the head),
turns token auth on from that file and trains there.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

from returnn_ray.cluster.head import free_port, stop_head

pytestmark = pytest.mark.ray  # starts a Ray of its own

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
AUTH = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def test_returnn_ray_joins_a_token_cluster_through_the_users_token_file(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in AUTH}
    env["HOME"] = str(home)
    temp_dir = f"/tmp/rr-own-{os.getpid()}"  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [RAY, "start", "--head", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", temp_dir,
         "--port", str(free_port()), "--dashboard-port", str(free_port()),
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())],
        env={**env, "RAY_AUTH_MODE": "token"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output = head.communicate(timeout=180)[0]
        assert head.returncode == 0, output[-3000:]
        with open(os.path.join(temp_dir, "ray_current_cluster")) as f:
            address = f.read().strip()
        config = write_config(tmp_path, num_epochs=1)
        proc = subprocess.run(
            [sys.executable, "-m", "returnn_ray", config, "++ray_address", address, "++ray_num_workers", "1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        stop_head(head, temp_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training with 1 worker(s) on Ray" in proc.stdout + proc.stderr
    assert (tmp_path / "model.001.pt").exists()
