"""Per-phase SM cycles of the one-pass, grid-sync or staged align kernel (stage
`alignphases` of .ci/gpu_check.sh; needs a profiling build:
cmake.define.JAX_MOE_ALIGN_PHASES=ON).

`python3 .ci/align_phases.py [--kernel onepass|gridsync|staged] [T,K,E,bs ...]`: for
each shape (default: that kernel's shapes of the benchmark) the op runs a few
times; after each run the marks of every CTA are
read back (cc/align/align_phases.h). Printed per phase: the median and the max
over CTAs of that phase's cycles, medians over runs; 'total' is the last mark - mark 0
of each CTA, 'spread' the last CTA end minus the first CTA start (SM clocks are
not synchronized across SMs, so spread is only indicative)."""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_moe
from jax_moe import _jax_moe_cuda as cuda_module

KERNELS = {
    "onepass": (["zero", "count", "walk", "scan", "fill", "prefix", "scatter"],
                [(128, 8, 256, 64), (1024, 2, 64, 128), (1024, 8, 1024, 64), (128, 8, 1024, 64)]),
    "gridsync": (["stage", "walk", "publish", "barrier", "rowsum", "scan", "fill", "scatter"],
                 [(4096, 2, 64, 128), (4096, 2, 8, 16), (1024, 8, 256, 64), (4096, 8, 256, 64),
                  (4096, 8, 1024, 64), (16384, 2, 64, 128), (65536, 2, 64, 128),
                  (65536, 8, 256, 64)]),
    "staged": (["stage", "walk", "prefix", "scan", "place", "copy"],
               [(128, 2, 8, 16), (128, 2, 64, 128), (16, 8, 256, 64), (64, 2, 64, 128)]),
}
RUNS = 7


def read_marks(kernel, phases):
    slots = cuda_module.align_phase_slots
    m = np.asarray(getattr(cuda_module, f"{kernel}_phases")(), np.int64).reshape(-1, slots)
    grid = int(m[0, slots - 1])
    return m[:grid, : len(phases) + 1]


def main():
    args = sys.argv[1:]
    kernel = "onepass"
    if args[:1] == ["--kernel"]:
        kernel, args = args[1], args[2:]
    PHASES, default = KERNELS[kernel]
    shapes = [tuple(int(v) for v in a.split(",")) for a in args] or default
    rng = np.random.default_rng(0)
    print(f"SM cycles per phase of the {kernel} align kernel (median over CTAs / max over CTAs)")
    print(f"{'shape T x K, E, bs':>22} {'CTAs':>5} | " + " | ".join(f"{p:>11}" for p in PHASES)
          + f" | {'total':>11} | {'spread':>7}")
    for T, K, E, bs in shapes:
        ids = jnp.asarray(rng.integers(0, E, size=(T, K), dtype=np.int32))
        f = jax.jit(lambda x: jax_moe.moe_align_block_size(x, E, bs))
        jax.block_until_ready(f(ids))
        read_marks(kernel, PHASES)  # drop the compile-time runs
        per_run = []
        for _ in range(RUNS):
            jax.block_until_ready(f(ids))
            marks = read_marks(kernel, PHASES)
            if marks.size == 0 or not marks[:, 0].all():
                print(f"{T} x {K}, {E}, {bs}: no {kernel} launch recorded (another path)")
                break
            d = np.diff(marks, axis=1)
            total = marks[:, -1] - marks[:, 0]
            per_run.append(np.concatenate([np.median(d, 0), d.max(0), [np.median(total),
                                           total.max(), marks[:, -1].max() - marks[:, 0].min()]]))
        if not per_run:
            continue
        r = np.median(np.asarray(per_run), 0)
        n = len(PHASES)
        cells = " | ".join(f"{r[i]:5.0f}/{r[n + i]:5.0f}" for i in range(n))
        print(f"{f'{T} x {K}, {E}, {bs}':>22} {len(marks):>5} | {cells} | "
              f"{r[2 * n]:5.0f}/{r[2 * n + 1]:5.0f} | {r[2 * n + 2]:7.0f}")


if __name__ == "__main__":
    main()
