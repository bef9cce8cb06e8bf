#!/usr/bin/env bash
# Run on the H200 (device tool): offline build, GPU tests, sanitizers, benchmarks.
# Usage: bash .ci/gpu_check.sh [pytest args...]; results under $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -5 || exit 1
