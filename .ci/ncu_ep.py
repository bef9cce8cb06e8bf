"""EP combine launches for Nsight Compute (stage `ncuep` of .ci/gpu_check.sh): the
expert-side and over-ranks combines of benchmarks/ep.py at 128 tokens per rank
(R 8, H 7168 bf16, E 256, top-8), three calls each."""
import sys

import jax, jax.numpy as jnp, numpy as np
from jax_moe import _ep_kernels as K_

R, H, E, K = 8, 7168, 256, 8
t = int(sys.argv[1]) if len(sys.argv) > 1 else 128
rng = np.random.default_rng(0)
ids = jnp.asarray(np.stack([rng.permutation(E)[:K] for _ in range(t)]).astype(np.int32))
x = jnp.asarray(rng.standard_normal((t, H)), jnp.bfloat16)
send_rows, send_local, token_index = K_.layout_p.bind(ids, num_experts=E, num_ranks=R)
recv_index, row_src, *_ = K_.route_p.bind(send_local, num_local=E // R, mode=K_.NORMAL,
                                          num_rows=R * t * K)
expanded = K_.gather_p.bind(K_.gather_p.bind(x, send_rows), row_src)
w = jnp.asarray(rng.random(recv_index.shape), jnp.float32)
combine = jax.jit(K_.combine_p.bind)
part = combine(expanded, recv_index, w)
ones = jnp.ones(token_index.shape, jnp.float32)
for _ in range(3):
    jax.block_until_ready(combine(expanded, recv_index, w))
    jax.block_until_ready(combine(part, token_index, ones))
