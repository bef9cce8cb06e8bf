"""Align launches for Nsight Compute (stage `ncualign` of .ci/gpu_check.sh), three
calls per shape. Shapes: `T,K,E,bs` arguments, or by default the small, seed and
multi-block shapes of the benchmark."""
import sys

import jax, jax.numpy as jnp, numpy as np, jax_moe

DEFAULT = [(1, 2, 8, 16), (1, 2, 64, 128), (4, 8, 1024, 64), (128, 2, 64, 128),
           (4096, 2, 64, 128), (4096, 8, 256, 64), (65536, 8, 256, 64)]
shapes = [tuple(int(v) for v in a.split(",")) for a in sys.argv[1:]] or DEFAULT
rng = np.random.default_rng(0)
for T, K, E, bs in shapes:
    ids = jnp.asarray(rng.integers(0, E, size=(T, K), dtype=np.int32))
    f = jax.jit(lambda x: jax_moe.moe_align_block_size(x, E, bs))
    for _ in range(3):
        jax.block_until_ready(f(ids))
