#!/usr/bin/env bash
# Everything the H200 session runs, in one call of the device tool:
#   bash .ci/gpu_check.sh [build] [tests|alltests] [sortab] [memcheck] [bench|benchalign|onepassab|gridsyncab|gridsynctune|gridsyncscatter|buildab|benchep|benchdispatch|benchmulti] [ncualign|ncustalls|ncuep] [alignphases (last)] [racecheck]
# (default: build tests memcheck bench racecheck, about 7 minutes). Offline build
# against the jax there, the GPU tests, compute-sanitizer on a small workload
# (.ci/sanitize.py), and the benchmarks (align, ep, dispatch; benchmulti: EP over all
# GPUs against the plain-JAX baseline, for the multi-GPU kinds).
# Logs and results go under $OUT (default ./gpu_out); each stage has a time cap.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
stages=${*:-build tests memcheck bench racecheck}
root=$(pwd)
for stage in $stages; do
  echo "=== $stage"
  case $stage in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
      python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
      python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log"; exit 1; } ;;
    tests)  # GPU-marked files, plus the CPU suites most sensitive to the backend
      (cd tests && timeout 240 python3 -m pytest -q -p no:cacheprovider test_*_gpu.py \
          test_align.py 2>&1 | tail -12 | tee "$OUT/tests.txt") ;;
    alltests)  # the whole suite (what `make test` runs), when time allows
      (cd tests && timeout 300 python3 -m pytest -q -p no:cacheprovider . 2>&1 | tail -12 | tee "$OUT/alltests.txt") ;;
    sortab)  # the align GPU tests again with the sort ranking forced
      (cd tests && JAX_MOE_ALIGN_RANKING=sort timeout 60 python3 -m pytest -q -p no:cacheprovider test_align_gpu.py 2>&1 | tail -3) ;;
    memcheck)
      timeout 70 compute-sanitizer --tool memcheck --print-limit 5 python3 .ci/sanitize.py ${SANITIZE_PARTS:-} 2>&1 | tail -6 ;;
    racecheck)
      timeout 50 compute-sanitizer --tool racecheck --print-limit 5 python3 .ci/sanitize.py ${SANITIZE_PARTS:-} 2>&1 | tail -2 ;;
    bench)
      timeout 60 python3 benchmarks/ep.py 2>&1 | tail -22 | tee "$OUT/ep.txt"
      timeout 90 python3 benchmarks/align.py --tokens 1 128 4096 65536 --out "$OUT" > "$OUT/align.txt" 2>&1
      grep -v "^  measured" "$OUT/align.txt" | tail -20
      timeout 180 python3 benchmarks/dispatch.py --out "$OUT" > "$OUT/dispatch.txt" 2>&1
      grep "^|" "$OUT/dispatch.txt" | tail -45 ;;
    benchalign)  # the align table over every token count of the issue
      # (the H100 of the seventh session needed more than 200 s for the whole table)
      timeout 300 python3 benchmarks/align.py --out "$OUT" > "$OUT/align.txt" 2>&1
      grep -v "^  measured" "$OUT/align.txt" | tail -32 ;;
    onepassab)  # the one-pass align path's rule against forcing it everywhere / off
      for v in "" "JAX_MOE_ALIGN_ONEPASS=all" "JAX_MOE_ALIGN_ONEPASS=0" \
               "JAX_MOE_ALIGN_ONEPASS=all JAX_MOE_ALIGN_AGGREGATE_BITS=0" \
               "JAX_MOE_ALIGN_ONEPASS=all JAX_MOE_ALIGN_ONEPASS_CHUNK=256"; do
        echo "--- ${v:-default}"
        env $v timeout 90 python3 benchmarks/align.py --ours-only --tokens ${AB_TOKENS:-16 128 1024 4096 16384} \
            --out "$OUT/ab" 2>&1 | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|"
      done ;;
    gridsyncab)  # the grid-sync align path against the one-pass and multi-block ones
      for v in "" "JAX_MOE_ALIGN_GRIDSYNC=0"; do
        echo "--- ${v:-default}"
        env $v timeout 90 python3 benchmarks/align.py --ours-only --tokens ${AB_TOKENS:-16 128 1024 4096 16384 65536} \
            --out "$OUT/ab" 2>&1 | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|"
      done ;;
    gridsyncscatter)  # the grid sync's two scatters (default rule, forced direct, forced sorted)
      for v in "" "JAX_MOE_ALIGN_GRIDSYNC_SCATTER=direct" "JAX_MOE_ALIGN_GRIDSYNC_SCATTER=sorted"; do
        echo "--- ${v:-default}"
        env $v timeout 60 python3 benchmarks/align.py --ours-only --tokens ${AB_TOKENS:-4096 16384 65536} \
            --out "$OUT/ab" 2>&1 | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|"
      done ;;
    gridsynctune)  # the grid sync's CTA count: routes per CTA at least, G x L cap
      for v in "" "JAX_MOE_ALIGN_GRIDSYNC_MIN_CHUNK=1024" "JAX_MOE_ALIGN_GRIDSYNC_MIN_CHUNK=2048" \
               "JAX_MOE_ALIGN_GRIDSYNC_ROW_WORDS=32768" "JAX_MOE_ALIGN_GRIDSYNC_ROW_WORDS=65536"; do
        echo "--- ${v:-default}"
        env $v timeout 60 python3 benchmarks/align.py --ours-only --tokens ${AB_TOKENS:-1024 4096 16384 65536} \
            --out "$OUT/ab" 2>&1 | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|"
      done ;;
    buildab)  # an A/B build of the align kernels (AB_BUILD: its environment, default
      # the walk at 128 routes per warp), ours only; run after the stages that use
      # the default build (alignphases rebuilds)
      env ${AB_BUILD:-JAX_MOE_ALIGN_WALK_ROUTES=128} python3 -m pip install -q --no-build-isolation \
          --no-deps . > "$OUT/build_ab.log" 2>&1 || { tail -30 "$OUT/build_ab.log"; exit 1; }
      echo "--- ${AB_BUILD:-JAX_MOE_ALIGN_WALK_ROUTES=128}"
      timeout 90 python3 benchmarks/align.py --ours-only --tokens ${AB_TOKENS:-16 128 1024 4096 16384 65536} \
          --out "$OUT/ab" 2>&1 | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|" ;;
    alignphases)  # per-phase cycles of the one-pass, grid-sync and staged align kernels: a profiling build
      # (run it last: later stages would time the instrumented kernel)
      JAX_MOE_ALIGN_PHASES=ON python3 -m pip install -q --no-build-isolation --no-deps . \
          > "$OUT/build_phases.log" 2>&1 \
        || { tail -30 "$OUT/build_phases.log"; exit 1; }
      for k in ${PHASE_KERNELS:-onepass gridsync staged}; do
        timeout 90 python3 .ci/align_phases.py --kernel $k ${PHASE_SHAPES:-} 2>&1 | tail -12 | tee -a "$OUT/align_phases.txt"
      done ;;
    ncualign)  # stall reasons of the align kernels (device memory not preallocated: replay)
      timeout ${NCU_CAP:-200} ncu --clock-control none --kernel-name regex:Align --launch-count 21 --section LaunchStats \
          --section SpeedOfLight --section WarpStateStats --section SourceCounters \
          python3 .ci/ncu_align.py ${NCU_SHAPES:-} > "$OUT/ncu_align.txt" 2>&1
      grep -E "Align|Duration|Stall|Warp Cycles" "$OUT/ncu_align.txt" | head -60 ;;
    ncustalls)  # why the align kernels' warps wait: every stall reason per issued instruction
      timeout ${NCU_CAP:-150} ncu --clock-control none --kernel-name regex:Align --launch-count ${NCU_LAUNCHES:-9} \
          --metrics "gpu__time_duration.sum,smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
          python3 .ci/ncu_align.py ${NCU_SHAPES:-} > "$OUT/ncu_stalls.txt" 2>&1
      # kernel name, duration, instructions, and the stall reasons above 0.2
      awk '/Align[A-Za-z]*Kernel/ {match($0, /Align[A-Za-z]*Kernel/); print substr($0, RSTART, RLENGTH)}
           /gpu__time_duration|inst_executed/ {print "  " $1, $(NF)}
           /issue_stalled/ && $(NF) + 0 > 0.2 {sub(/smsp__average_warps_issue_stalled_/, "", $1);
                                                 sub(/_per_issue_active.ratio/, "", $1); print "  " $1, $(NF)}' \
          "$OUT/ncu_stalls.txt" | head -120 ;;
    ncuep)  # the EP combines at 128 tokens per rank (memory throughput, stalls)
      timeout ${NCU_CAP:-120} ncu --clock-control none --kernel-name regex:EpCombine --launch-count 6 \
          --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy \
          --section MemoryWorkloadAnalysis python3 .ci/ncu_ep.py > "$OUT/ncu_ep.txt" 2>&1
      grep -E "EpCombine|Duration|Throughput|Stall|Warp Cycles|Achieved|Block Limit|Grid Size|Registers" "$OUT/ncu_ep.txt" | head -60 ;;
    benchep)
      timeout 90 python3 benchmarks/ep.py 2>&1 | tail -30 | tee "$OUT/ep.txt" ;;
    benchdispatch)
      timeout 180 python3 benchmarks/dispatch.py --out "$OUT" > "$OUT/dispatch.txt" 2>&1
      grep "^|" "$OUT/dispatch.txt" | tail -45 ;;
    benchmulti)  # ep_dispatch/ep_combine vs the MaxText-style path, all local GPUs
      timeout 240 python3 benchmarks/ep_multi.py --out "$OUT" > "$OUT/ep_multi.txt" 2>&1 \
        || tail -25 "$OUT/ep_multi.txt"
      grep -E "^(devices|R=|\|)" "$OUT/ep_multi.txt" | tail -30 ;;
  esac
done
