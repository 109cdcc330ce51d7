#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with returnn-ray,
# its dependencies and the test extras (RETURNN itself, the reference for differential tests).
# Idempotent: rerunning it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# Without a GPU, take the CPU build of torch first: a bare "torch" requirement pulls a
# multi-GB CUDA build. Set TORCH_SPEC to pick another build (e.g. TORCH_SPEC=torch on a GPU box).
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "${TORCH_SPEC:-torch>=2.2}"
  else
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" \
      || python -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"
  fi
fi
python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# The cluster-launcher test (tests/test_ray_up.py: `ray up` / `ray submit` / `ray down` over ssh to
# this machine) needs an sshd and rsync. Installed where that is possible (root with apt-get, as in
# CI); elsewhere the test skips and says why. Nothing is started here: the test runs its own sshd.
if ! { command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || ! command -v rsync >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server rsync >/dev/null; }
    apt_install 2>/dev/null || { apt-get update -q >/dev/null && apt_install; } \
      || echo "warning: could not install openssh-server and rsync; tests/test_ray_up.py will skip" >&2
  else
    echo "note: no sshd or rsync (install openssh-server and rsync for tests/test_ray_up.py; it skips without them)" >&2
  fi
fi
python -c "import returnn_ray, torch, ray, h5py" 
echo "set-up done: $(python -c 'import torch, ray; print(f"torch {torch.__version__}, ray {ray.__version__}")')"
