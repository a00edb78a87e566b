#!/usr/bin/env bash
# The GPU checks in one prepared run (device time is scarce: one call does everything).
#
#   benchmarks/gpu_check.sh [cifar10_reduced.npz]
#
# 1. The tests that need a GPU (CUDA graphs vs eager training, attacks on CUDA) and the training tests.
# 2. The GPU benchmarks: children per hour (eager and CUDA graph), GM step, epoch, workers per GPU, bookkeeping.
# Logs go to $OUT (else /tmp/gmsearch-gpu). On a machine that cannot reach a package index, put wheels of
# the missing packages in .whl/ (see README, "Performance") and carry it; they are installed to /tmp/site.
# DEVICE=cpu QUICK=--quick runs the same script here, as a smoke test of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gmsearch-gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if ! "$py" -c "import optuna, deap, plotly, captum, torchattacks" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    else
        "$py" -m pip install -q -e '.[test]' || exit 1
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -n "${1:-}" ] && export GMSEARCH_BENCH_CIFAR="$1"
device="${DEVICE:-cuda}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$out/gpu.txt"
timeout "${TEST_SECONDS:-200}" "$py" -m pytest -q -x -p no:cacheprovider tests/test_graphs.py tests/test_attacks.py \
    tests/test_training.py 2>&1 | tee "$out/tests.txt" | tail -12
timeout "${BENCH_SECONDS:-330}" "$py" benchmarks/run.py --device "$device" ${QUICK:-} \
    --only "${ONLY:-children,gm,epoch,workers,bookkeeping}" 2>&1 | tee "$out/bench.txt" | grep -v '^  \.\.'
