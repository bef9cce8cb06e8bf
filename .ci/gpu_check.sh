#!/usr/bin/env bash
# Everything the H200 session runs, in one call of the device tool:
#   bash .ci/gpu_check.sh [build] [tests] [sanitize] [bench]   (default: all)
# Offline build against the jax there, the whole test suite (gpu-marked tests
# included) plus the align GPU tests again with the sort ranking, compute-
# sanitizer memcheck/racecheck on a small workload, and the benchmarks.
# Logs and results go under $OUT (default ./gpu_out); each stage has a time cap.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
stages=${*:-build tests sanitize bench}
root=$(pwd)
for stage in $stages; do
  echo "=== $stage"
  case $stage in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
      python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
      python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log"; exit 1; } ;;
    tests)
      (cd tests && timeout 240 python3 -m pytest -q -p no:cacheprovider . 2>&1 | tail -12 | tee "$OUT/tests.txt")
      (cd tests && JAX_MOE_ALIGN_RANKING=sort timeout 60 python3 -m pytest -q -p no:cacheprovider test_align_gpu.py 2>&1 | tail -3) ;;
    sanitize)
      timeout 90 compute-sanitizer --tool memcheck --print-limit 5 python3 .ci/sanitize.py 2>&1 | tail -5
      timeout 60 compute-sanitizer --tool racecheck --print-limit 5 python3 .ci/sanitize.py 2>&1 | tail -2 ;;
    bench)
      timeout 120 python3 benchmarks/align.py --tokens 1 128 4096 65536 --out "$OUT" > "$OUT/align.txt" 2>&1
      grep -v "^  measured" "$OUT/align.txt" | tail -20
      for b in benchmarks/ep.py; do
        [ -f "$b" ] && timeout 90 python3 "$b" --out "$OUT" 2>&1 | tail -12
      done ;;
  esac
done
