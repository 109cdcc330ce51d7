#!/usr/bin/env bash
# The one command for a GPU machine that has PyTorch but no Ray and no network:
#
#   bash bench/gpu/run.sh              # with bench/gpu/out/bundle-py312.tar.xz carried (build_bundle.py)
#   bash bench/gpu/run.sh --dry-run    # the same steps on the CPU at a tiny size (CI: tests/test_gpu_bundle.py)
#
# It unpacks the bundle (Ray and what the image lacks) into a temp dir on PYTHONPATH, checks
# that torch sees a GPU, then runs, each step bounded by `timeout` so the whole ends in < 7 min:
#   train    bench/train_overhead.py: returnn-ray training of the BLSTM benchmark, one Ray Train
#            worker on the GPU (process group on NCCL), torch_amp bfloat16, against a plain
#            PyTorch loop on the same batches on the same GPU (frames/s; goal >= 0.95x)
#   forward  bench/forward_throughput.py on the GPU (plain loop and one actor)
#   tests    pytest -m gpu (the tests that need a GPU)
# Results: summary.json and summary.txt plus one log per step under $OUT (bench/out/gpu when
# $OUT is unset). A step that fails or times out is recorded and the others still run; the
# exit code is 1 when any failed.
#
# Options: --dry-run; --bundle PATH (default bench/gpu/out/bundle-pyXY.tar.xz for this python;
# without one a dry run uses the Ray this python already has); --no-bundle (that, even when a
# bundle is there); --python PY (default python3).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY=python3
DRY=0
BUNDLE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --bundle) BUNDLE="$2"; shift ;;
        --no-bundle) BUNDLE=none ;;
        --python) PY="$2"; shift ;;
        *) echo "run.sh: unknown option $1 (--dry-run, --bundle PATH, --python PY)" >&2; exit 2 ;;
    esac
    shift
done
OUT="${OUT:-$ROOT/bench/out/gpu}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/rr-gpu-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1

pyver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
[ -n "$BUNDLE" ] || BUNDLE="$ROOT/bench/gpu/out/bundle-py$pyver.tar.xz"
if [ -f "$BUNDLE" ]; then
    mkdir -p "$WORK/site"
    tar -xJf "$BUNDLE" -C "$WORK/site" || { echo "run.sh: cannot unpack $BUNDLE" >&2; exit 1; }
    export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    # The bundle's console scripts (ray) are not installed; Ray starts its processes by module.
    echo "bundle: $BUNDLE ($(du -m "$BUNDLE" | cut -f1) MiB), unpacked to $WORK/site"
elif [ "$DRY" = 1 ]; then
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    echo "bundle: none ($BUNDLE); the dry run uses the Ray of $PY"
else
    echo "run.sh: no bundle at $BUNDLE: build it with 'python bench/gpu/build_bundle.py' and carry bench/gpu/out" >&2
    exit 2
fi

"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import platform, sys
import torch, ray, returnn_ray
print(f"python {platform.python_version()}  torch {torch.__version__}  ray {ray.__version__} ({ray.__file__})")
print(f"returnn_ray {returnn_ray.__file__}")
print(f"cuda available: {torch.cuda.is_available()}" + (f"  {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
import ray.dashboard.optional_deps, ray.train.torch, ray.tune, ray.data  # what a run imports: fail here, not mid-way
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "run.sh: the bundle does not import (see $OUT/env.txt)" >&2; exit 1; }
if [ "$DRY" = 0 ] && ! grep -q "cuda available: True" "$OUT/env.txt"; then
    echo "run.sh: torch sees no GPU here; for a CPU check use --dry-run" >&2
    exit 1
fi

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    TRAIN_ARGS=(--num-seqs 60 --min-len 20 --max-len 60 --units 32 --layers 1 --batch-size 1000 --max-seqs 20 --epochs 2 --loss-tol 0.02)  # bf16: the two paths round differently
    FORWARD_ARGS=(--num-seqs 200 --actors 1)  # enough batches for a rate after the first result
    T_TRAIN=240; T_FORWARD=150; T_TESTS=120  # a loaded 2-core CI machine: Ray starts slowly
else
    DEVICE=gpu
    # Sized for an H200: ~1 M frames an epoch, big enough batches that a step is GPU work, not launches.
    TRAIN_ARGS=(--num-seqs 4000 --units 512 --batch-size 20000 --max-seqs 100 --epochs 3 --loss-tol 0.02)
    FORWARD_ARGS=(--num-seqs 4000)
    T_TRAIN=200; T_FORWARD=90; T_TESTS=90
fi

declare -A RC
step() {  # step NAME SECONDS CMD...: run CMD under timeout, log to $OUT/NAME.log, record its exit code
    local name="$1" secs="$2"; shift 2
    echo "== $name (at most $secs s): $*"
    timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
    RC[$name]="${PIPESTATUS[0]}"
    echo "== $name: exit ${RC[$name]}"
}
AMP=(--amp bfloat16)
# Some CPUs' oneDNN has no reduced-precision LSTM ("could not create a primitive descriptor"): there
# the CPU dry run trains in float32 (a GPU run always uses bfloat16).
BF16_LSTM='import torch
with torch.autocast("cpu", dtype=torch.bfloat16):
    torch.nn.LSTM(4, 4)(torch.zeros(2, 1, 4))'
if [ "$DRY" = 1 ] && ! "$PY" -c "$BF16_LSTM" 2>/dev/null; then
    AMP=()
    echo "train: this CPU runs no bfloat16 LSTM (oneDNN); the dry run trains in float32"
fi
step train "$T_TRAIN" "$PY" "$ROOT/bench/train_overhead.py" --device "$DEVICE" "${AMP[@]}" \
    --out-dir "$WORK/train" --json "$WORK/train.json" "${TRAIN_ARGS[@]}"
step forward "$T_FORWARD" "$PY" "$ROOT/bench/forward_throughput.py" --device "$DEVICE" --json "$WORK/forward.json" \
    "${FORWARD_ARGS[@]}"
step tests "$T_TESTS" "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra" "$ROOT/tests"

"$PY" "$ROOT/bench/gpu/summary.py" --out "$OUT" --work "$WORK" --dry-run "$DRY" \
    --rc "train=${RC[train]}" "forward=${RC[forward]}" "tests=${RC[tests]}"
