"""Small CUDA workload for compute-sanitizer: the align paths with wild ids and
maps; permute/unpermute forward and backward with dropped routes; silu_and_mul
(plain, fp8, counts, backward); the EP local kernels."""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_moe

# Sections to run (default: all): python .ci/sanitize.py [align] [permute] [silu] [ep]
parts = set(sys.argv[1:]) or {"align", "permute", "silu", "ep"}
rng = np.random.default_rng(1)

if "align" in parts:
    for numel, E, bs in [(7, 8, 4), (1000, 64, 128), (8192, 256, 64), (40000, 64, 16),
                         (20000, 6000, 8), (8, 1024, 4097), (8192, 1024, 25), (1100000, 64, 16)]:
        ids = rng.integers(-5, E + 5, size=numel).astype(np.int32)
        ids[:3] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max, -1]
        out = jax.jit(lambda x: jax_moe.moe_align_block_size(x, E, bs))(ids)
        emap = rng.integers(-1, E // 2 + 3, size=E).astype(np.int32)
        out2 = jax.jit(lambda x, m: jax_moe.moe_align_block_size(
            x, E, bs, expert_map=m, num_local_experts=max(E // 2, 1)))(ids, emap)
        jax.block_until_ready((out, out2))
    # The one-warp path (<= 32 routes, <= 1024 local experts): no routes, wild
    # ids and maps, bs 4097 (P over ~130 CTAs), a vmapped batch.
    for numel, E, bs in [(0, 8, 4), (1, 64, 128), (2, 8, 1), (32, 1024, 4097), (32, 1100, 64)]:
        ids = rng.integers(-5, E + 5, size=numel).astype(np.int32)
        ids[:3] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max, -1][:numel]
        emap = rng.integers(-1, E // 2 + 3, size=E).astype(np.int32)
        out = jax.jit(lambda x, m: jax_moe.moe_align_block_size(
            x, E, bs, expert_map=m, num_local_experts=max(E // 2, 1), pad_sorted_ids=True))(ids, emap)
        out2 = jax.jit(jax.vmap(lambda x: jax_moe.moe_align_block_size(x, min(E, 1024), bs)))(
            np.stack([ids, ids[::-1]]))
        jax.block_until_ready((out, out2))
    # The single-CTA path (33 routes), the one-pass path (512 < numel < 8192,
    # <= 1024 local experts) and the grid sync (from 8192): both bounds, a last
    # chunk of one route, P over many CTAs (bs 4097), int64 ids, vmap; the grid
    # sync's sorted scatter (chunks of >= 1024 routes over >= 64 experts).
    for numel, E, bs in [(33, 1024, 4097), (513, 64, 128), (2048, 1024, 4097), (2049, 8, 1),
                         (8192, 1024, 4097), (31745, 256, 64), (8192, 8, 3), (32768, 40, 3),
                         (131072, 128, 64), (262144, 512, 5)]:
        ids = rng.integers(-5, E + 5, size=numel).astype(np.int32)
        ids[:3] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max, -1]
        emap = rng.integers(-1, E // 2 + 3, size=E).astype(np.int32)
        out = jax.jit(lambda x, m: jax_moe.moe_align_block_size(
            x, E, bs, expert_map=m, num_local_experts=max(E // 2, 1), pad_sorted_ids=True))(ids, emap)
        out2 = jax.jit(jax.vmap(lambda x: jax_moe.moe_align_block_size(x, E, bs)))(
            np.stack([ids, ids[::-1]]))
        jax.block_until_ready((out, out2))
    with jax.enable_x64(True):
        ids = rng.integers(-8, 72, size=3000).astype(np.int64)
        ids[:2] = [2**40, -2**40]
        jax.block_until_ready(jax.jit(lambda x: jax_moe.moe_align_block_size(x, 64, 16))(ids))
    print("sanitize workload done")

if "permute" in parts:
    # permute / unpermute (and their backward kernels) with dropped routes.
    for T, H, E, K, dt in [(5, 8, 4, 2, jnp.float32), (300, 256, 16, 4, jnp.bfloat16),
                           (77, 130, 8, 2, jnp.float16), (40, 64, 16, 11, jnp.bfloat16)]:
        ids = rng.integers(-2, E + 2, size=(T, K)).astype(np.int32)
        x = jnp.asarray(rng.normal(size=(T, H)), dt)
        w = jnp.asarray(rng.random((T, K)), jnp.float32)

        def loss(x, w):
            xs, plan = jax_moe.permute(x, ids, E, block_size=4)
            return jnp.sum(jax_moe.unpermute(xs * 2, plan, w).astype(jnp.float32))

        jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w))
    print("sanitize permute done")

if "silu" in parts:
    # silu_and_mul: plain, fp8, counts mask (rows past the count are never read).
    for shape, dt in [((33, 2 * 256), jnp.bfloat16), ((4, 50, 2 * 384), jnp.float32)]:
        h = jnp.asarray(rng.normal(size=shape), dt)
        jax.block_until_ready(jax.jit(jax_moe.silu_and_mul)(h))
        jax.block_until_ready(jax.jit(lambda h: jax_moe.silu_and_mul(h, fp8=True))(h))
        jax.block_until_ready(jax.jit(jax.grad(lambda h: jnp.sum(jax_moe.silu_and_mul(h).astype(jnp.float32))))(h))
    counts = jnp.asarray([0, 50, 7, 99], jnp.int32)
    h = jnp.asarray(rng.normal(size=(4, 50, 256)), jnp.bfloat16)
    jax.block_until_ready(jax.jit(lambda h, c: jax_moe.silu_and_mul(h, counts=c, fp8=True))(h, counts))
    print("sanitize silu done")

if "ep" in parts:
    # EP local kernels at R = 8 shapes (the exchange replaced by this rank's own
    # buffer), fp8 pack, both route modes, combine; ids include -1.
    from jax_moe import _ep_kernels as K_

    for t, e, k, h in [(5, 16, 2, 128), (40, 64, 4, 256)]:
        r = 8
        ids = rng.integers(-1, e, size=(t, k)).astype(np.int32)
        x = jnp.asarray(rng.normal(size=(t, h)), jnp.bfloat16)
        send_rows, send_local, token_index = K_.layout_p.bind(jnp.asarray(ids), num_experts=e, num_ranks=r)
        sent = K_.gather_p.bind(x, send_rows)
        q, s = K_.pack_fp8_p.bind(x, send_rows)
        for mode, n in [(K_.NORMAL, r * t * min(k, e // r)), (K_.NORMAL, 7), (K_.LOW_LATENCY, (e // r) * r * t)]:
            recv_index, row_src, *_ = K_.route_p.bind(send_local, num_local=e // r, mode=mode, num_rows=n)
            rows = K_.gather_p.bind(sent, row_src)
            w = jnp.asarray(rng.random(recv_index.shape), jnp.float32)
            part = K_.combine_p.bind(rows, recv_index, w)
            out = K_.combine_p.bind(part, token_index, jnp.ones(token_index.shape, jnp.float32))
            jax.block_until_ready((q, s, out))
    # combine kernels: multi-row groups with several per block (the next group's
    # entries in flight), the scalar kernel, J = 0, staged entries (J > 32); wild ids.
    for m, j, h, dt in [(5000, 8, 8, jnp.bfloat16), (3001, 3, 13, jnp.float16),
                        (100, 0, 16, jnp.float32), (50, 40, 24, jnp.bfloat16)]:
        y = jnp.asarray(rng.normal(size=(30, h)), dt)
        index = rng.integers(-3, 33, size=(m, j)).astype(np.int32)
        index[::3] = -1
        if index.size:
            index[0, 0], index[-1, -1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        w = jnp.asarray(rng.random((m, j)), jnp.float32)
        jax.block_until_ready(K_.combine_p.bind(y, jnp.asarray(index), w))
    # ep_layout plans: count + write launches, 2 tiles per chunk, 2 rank groups,
    # ids not staged (K > 128), wild ids.
    for t, e, r, k in [(300, 16, 2, 4), (5000, 128, 64, 4), (700, 200, 100, 3), (300, 512, 8, 130)]:
        ids = rng.integers(-3, e + 3, size=(t, k)).astype(np.int32)
        ids[0, 0] = np.iinfo(np.int32).max
        jax.block_until_ready(K_.layout_p.bind(jnp.asarray(ids), num_experts=e, num_ranks=r))
    print("sanitize ep done")
