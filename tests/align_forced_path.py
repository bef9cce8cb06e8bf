"""Run by test_align_gpu's forced-path tests in a process whose environment
moves sizes onto a CUDA align path its default rule gives to other paths
(JAX_MOE_ALIGN_ONEPASS=all with JAX_MOE_ALIGN_GRIDSYNC=0: the one-pass kernel
from 33 to 32768 routes; JAX_MOE_ALIGN_GRIDSYNC_SCATTER=sorted|direct: one
scatter of the grid-sync kernel at all its sizes). The variables are read once
per process. `align_forced_path.py SEED [onepass|gridsync]` picks the sizes.
Every case equals the CPU kernel and the reference; exits 1 on the first
difference."""
import sys

import numpy as np

import jax_moe
from backends import cpu_and_cuda as both
from reference_align import align_reference
from test_align import random_ids

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
CASES = {
    "onepass": [(33, 8, 16), (64, 1, 1), (545, 64, 16), (255, 64, 128), (1000, 256, 64),
                (1024, 1024, 64), (1024, 15, 3), (2049, 64, 128), (4096, 64, 128),
                (8192, 256, 64), (8192, 1024, 1), (5000, 3, 200), (8193, 8, 16),
                (16384, 16, 128), (32768, 8, 16), (20000, 1, 7)],
    # grid-sync sizes: one row per 512 routes up to 128 rows, G x L <= 65536,
    # chunks of 64 to 8192 routes, 1 to 1024 local experts
    "gridsync": [(8192, 64, 128), (8192, 256, 64), (8193, 8, 16), (20000, 16, 7),
                 (40000, 513, 7), (65536, 256, 64), (131073, 1024, 64), (262144, 1024, 3),
                 (300000, 1, 1), (524288, 256, 64), (524288, 1024, 1), (1048577, 8, 16)],
}
cases = CASES[sys.argv[2] if len(sys.argv) > 2 else "onepass"]
for numel, E, bs in cases:
    ids = random_ids(rng, (numel,), E)
    pad = bool(rng.integers(2))
    cpu, gpu = both(lambda x: jax_moe.moe_align_block_size(x, E, bs, pad_sorted_ids=pad), ids)
    ref = align_reference(ids, E, bs, pad_sorted_ids=pad)
    for name, c, g, r in zip(("sorted_token_ids", "expert_ids", "num_tokens_post_pad"),
                             cpu, gpu, ref):
        if not (np.array_equal(c, g) and np.array_equal(g, r)):
            sys.exit(f"numel={numel} E={E} bs={bs} pad={pad}: {name} differs")
print(f"{len(cases)} forced-path cases equal")
