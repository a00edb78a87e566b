#!/usr/bin/env bash
# One prepared run for a machine with a GPU (device time is scarce: everything in one call).
# Usage: benchmarks/gpu_check.sh [cifar10_reduced.npz]   (results also land in $OUT when it is set)
# 1. the GPU tests (CUDA graphs, attacks on CUDA, workers per device), 2. the GPU benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gmsearch-gpu}"
mkdir -p "$out"
if ! python -c "import torch, optuna, deap" 2>/dev/null; then
    pip install -q -e '.[test]' >"$out/install.log" 2>&1 || { tail -5 "$out/install.log"; exit 1; }
fi
[ -n "${1:-}" ] && export GMSEARCH_BENCH_CIFAR="$1"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 240 python -m pytest -q -x tests/test_graphs.py tests/test_training.py "tests/test_attacks.py" \
    2>&1 | tail -15 | tee "$out/tests.txt"
timeout 420 python benchmarks/run.py --device cuda --only children,gm,epoch,workers,bookkeeping \
    2>&1 | tee "$out/bench.txt" | grep -v '^  \.\.'
