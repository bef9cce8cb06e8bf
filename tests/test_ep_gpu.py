"""EP kernels on CUDA equal the CPU kernels bit for bit (marker `gpu`), and the EP
layer on the local GPUs equals the same layer on virtual CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import jax_moe
from jax_moe import _ep_kernels as K_
from backends import assert_same_bits, cpu_and_cuda

pytestmark = pytest.mark.gpu


def same_on_both(fn, *args):
    cpu, gpu = cpu_and_cuda(fn, *args)
    assert_same_bits(cpu, gpu)
    return cpu


def routes(rng, t, e, k, drop=0.2):
    ids = np.stack([rng.permutation(e)[:k] for _ in range(t)]).astype(np.int32)
    ids[rng.random(ids.shape) < drop] = -1
    return ids


@pytest.mark.parametrize("t,e,r,k", [(1, 8, 8, 2), (300, 16, 4, 4), (4096, 256, 8, 8),
                                     (9000, 64, 16, 3)])  # several 4096-token tiles
def test_layout_matches_cpu(rng, t, e, r, k):
    ids = routes(rng, t, e, k)
    ids[0, 0] = e + 5  # out of range: dropped, never read out of bounds
    same_on_both(lambda i: K_.layout_p.bind(i, num_experts=e, num_ranks=r), ids)


# The CUDA layout (cc/ep/ep_layout_plan.h): tiles of 64 tokens (one tile of up to 256
# when T <= 256, no count launch), chunks of tiles, groups of 64 ranks, ids staged in
# shared memory while a tile has at most 8192 of them.
@pytest.mark.parametrize("t,e,r,k", [
    (1, 4, 1, 1), (128, 8, 1, 3), (4096, 256, 1, 8),   # R = 1
    (257, 16, 2, 4), (4096, 256, 2, 8),                # R = 2; 257: 5 tiles, the last of 1
    (1000, 256, 8, 8), (4095, 256, 8, 8),              # 16 / 64 tiles, the last one partial
    (5000, 128, 64, 4),                                # 64 ranks: 2 tiles per chunk
    (700, 200, 100, 3),                                # 100 ranks: 2 rank groups
    (300, 512, 8, 130),                                # K > 128: ids read from global memory
    (200, 64, 2, 40)])                                 # one 224-token tile, K > 32: same
def test_layout_wild_ids_match_cpu(rng, t, e, r, k):
    ids = rng.integers(-3, e + 3, (t, k)).astype(np.int32)  # repeats; out of range both sides
    ids[0, 0], ids[-1, -1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    ids[1::7] = -1  # tokens sent nowhere: every rank has empty slots
    send_rows = same_on_both(lambda i: K_.layout_p.bind(i, num_experts=e, num_ranks=r), ids)[0]
    # Slot order is ascending token order on every rank.
    for rows in send_rows.reshape(r, t):
        used = rows[rows >= 0]
        assert (np.diff(used) > 0).all()


@pytest.mark.parametrize("mode", [K_.LOW_LATENCY, K_.NORMAL])
@pytest.mark.parametrize("m,k,el,cap", [(8, 2, 1, None), (1200, 4, 4, None), (1200, 4, 4, 700),
                                        (32768, 8, 32, None)])
def test_route_matches_cpu(rng, mode, m, k, el, cap):
    local = rng.integers(-1, el, (m, k)).astype(np.int32)  # duplicates included
    n = el * m if mode == K_.LOW_LATENCY else (cap if cap is not None else m * min(k, el))
    out = same_on_both(lambda a: K_.route_p.bind(a, num_local=el, mode=mode, num_rows=n), local)
    if mode == K_.NORMAL and cap is not None:
        assert out[4][0] > 0  # the capacity case does drop


@pytest.mark.parametrize("dtype,h", [(np.float32, 64), (jnp.bfloat16, 7168), (jnp.float16, 33),
                                     (jnp.float8_e4m3fn, 256), (np.float32, 3)])
def test_gather_matches_cpu(rng, dtype, h):
    x = jnp.asarray(rng.standard_normal((50, h)), dtype)
    rows = rng.integers(-2, 60, 77).astype(np.int32)  # invalid rows give zeros
    out = same_on_both(lambda a, r: K_.gather_p.bind(a, r), x, rows)
    ok = (rows >= 0) & (rows < 50)
    np.testing.assert_array_equal(out[ok].view(np.uint8), np.asarray(x)[rows[ok]].view(np.uint8))


@pytest.mark.parametrize("dtype,h", [(np.float32, 512), (jnp.bfloat16, 512), (jnp.float16, 512),
                                     (jnp.bfloat16, 7168), (np.float32, 128)])  # half a warp
def test_pack_fp8_matches_cpu(rng, dtype, h):
    x = rng.standard_normal((40, h)) * rng.uniform(1e-6, 1e3, (40, 1))
    x[3, :128] = 0.0  # amax floor
    x = jnp.asarray(x, dtype)
    rows = rng.integers(-1, 40, 64).astype(np.int32)
    same_on_both(lambda a, r: K_.pack_fp8_p.bind(a, r), x, rows)


def test_pack_fp8_rounding_edges_match_cpu():
    # Group amax 448 makes the multiplier exactly 1, so the other channels hit the
    # encoder as they are: every e4m3 magnitude, the midpoints between neighbours
    # (ties to even) and the floats just around them, normal and subnormal.
    mags = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(jnp.float8_e4m3fn)
                            .astype(np.float32)))
    mags = mags[np.isfinite(mags)]
    mids = (mags[:-1] + mags[1:]) / 2
    vals = np.concatenate([mags, mids, np.nextafter(mids, 0), np.nextafter(mids, 1000),
                           [2.0**-10, 2.0**-11, 1e-30, 1e-42]]).astype(np.float32)
    vals = np.concatenate([vals, -vals])
    vals = vals[np.abs(vals) <= 448]
    rows = -(-len(vals) // 127)
    x = np.zeros((rows, 128), np.float32)
    x[:, 0] = 448.0
    x[:, 1:].flat[:len(vals)] = vals
    q, s = same_on_both(lambda a, r: K_.pack_fp8_p.bind(a, r), x,
                        np.arange(rows, dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(s), np.float32(1.0))
    np.testing.assert_array_equal(np.asarray(q).view(np.uint8),
                                  x.astype(jnp.float8_e4m3fn).view(np.uint8))


@pytest.mark.parametrize("dtype,h", [(np.float32, 256), (jnp.bfloat16, 7168), (jnp.float16, 24),
                                     (jnp.bfloat16, 13), (np.float32, 7168)])
@pytest.mark.parametrize("j", [8, 300])  # 300: several staging rounds of 256 entries
def test_combine_matches_cpu(rng, dtype, h, j):
    y = jnp.asarray(rng.standard_normal((300, h)), dtype)
    index = rng.integers(-1, 310, (120, j)).astype(np.int32)
    w = rng.random((120, j)).astype(np.float32)
    same_on_both(lambda a, i, b: K_.combine_p.bind(a, i, b), y, index, w)


# The CUDA combine (cc/ep/ep_rows.cu): for J <= 32 each warp reads a group of 32 // J
# rows' entries, one per lane (groups of several rows once M outgrows one resident wave,
# several groups per block, the last group partial); J > 32 stages entries in shared
# memory. H not a multiple of 16 bytes takes the scalar (V = 1) kernels.
@pytest.mark.parametrize("dtype,h,m,j,empty", [
    (jnp.bfloat16, 7168, 1024, 8, 1 / 3),  # expert side at T = 128: a third of the rows empty
    (jnp.bfloat16, 7168, 128, 8, 0.0),     # over ranks at T = 128: one row per group
    (jnp.bfloat16, 256, 5001, 8, 1 / 3),   # 4-row groups, several per block
    (jnp.float16, 200, 5001, 3, 0.5),      # 10-row groups (30 of 32 lanes)
    (np.float32, 36, 3001, 1, 0.2),        # 32-row groups
    (jnp.bfloat16, 512, 2000, 32, 0.1),    # all lanes one row's entries
    (jnp.float16, 24, 64, 0, 0.0),         # no entries at all: zeros
    (jnp.bfloat16, 13, 3000, 5, 0.3),      # scalar kernel, 6-row groups
    (np.float32, 5, 999, 8, 0.3),          # scalar kernel
    (jnp.float16, 7168, 300, 33, 0.1),     # staged, just past the direct bound
    (np.float32, 100, 50, 700, 0.0)])      # staged, three rounds
def test_combine_wild_ids_match_cpu(rng, dtype, h, m, j, empty):
    n = 300
    y = jnp.asarray(rng.standard_normal((n, h)), dtype)
    index = rng.integers(-3, n + 3, (m, j)).astype(np.int32)  # out of range both sides
    index[rng.random(m) < empty] = -1                         # rows with nothing to sum
    if index.size:
        index[0, 0], index[-1, -1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    w = rng.standard_normal((m, j)).astype(np.float32)
    out = same_on_both(lambda a, i, b: K_.combine_p.bind(a, i, b), y, index, w)
    none = ((index < 0) | (index >= n)).all(axis=1)
    assert none.any() == (empty > 0 or j == 0)
    np.testing.assert_array_equal(np.asarray(out[none], np.float32), 0.0)


def test_ep_on_gpus_equals_ep_on_cpu(rng):
    gpus = jax.devices("cuda")
    if len(gpus) < 2:
        pytest.skip("needs 2+ GPUs")
    r, t, h, k = len(gpus), 64, 256, 4
    e = 4 * r
    ids = routes(rng, r * t, e, k)
    x = jnp.asarray(rng.standard_normal((r * t, h)), jnp.bfloat16)
    w = rng.random((r * t, k)).astype(np.float32)

    def run(devices, mode, fp8):
        def body(x, ids, w):
            recv, handle = jax_moe.ep_dispatch(x, ids, w, num_experts=e, axis_name="ep",
                                               mode=mode, fp8=fp8)
            rows = recv.x[0].astype(x.dtype) if fp8 else recv.x
            return jax_moe.ep_combine(rows * 2, handle), recv.counts[None]
        f = jax.shard_map(body, mesh=Mesh(np.array(devices), ("ep",)),
                          in_specs=(P("ep"),) * 3, out_specs=(P("ep"), P("ep")))
        return jax.tree.map(np.asarray, jax.jit(f)(x, ids, w))

    for mode in ("normal", "low_latency"):
        for fp8 in (False, True):
            a = run(gpus, mode, fp8)
            b = run(jax.devices("cpu")[:r], mode, fp8)
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u.view(np.uint8), v.view(np.uint8))


def test_ragged_transport_equals_dense_on_gpus(rng):
    gpus = jax.devices("cuda")
    if len(gpus) < 2:
        pytest.skip("needs 2+ GPUs")
    r, t, h, k = len(gpus), 96, 256, 4
    e = 2 * r
    ids = routes(rng, r * t, e, k, drop=0.3)
    x = jnp.asarray(rng.standard_normal((r * t, h)), jnp.float32)
    w = rng.random((r * t, k)).astype(np.float32)
    mesh = Mesh(np.array(gpus), ("ep",))

    def run(transport, mode):
        def body(x, ids, w):
            recv, handle = jax_moe.ep_dispatch(x, ids, w, num_experts=e, axis_name="ep",
                                               mode=mode, transport=transport)
            return jax_moe.ep_combine(jnp.sin(recv.x), handle)
        f = jax.shard_map(body, mesh=mesh, in_specs=(P("ep"),) * 3, out_specs=P("ep"))
        loss = lambda x, w: jnp.sum(f(x, ids, w) ** 2)
        out = jax.jit(f)(x, ids, w)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
        return [np.asarray(a) for a in (out, *grads)]

    for mode in ("normal", "low_latency"):
        for a, b in zip(run("ragged_all_to_all", mode), run("all_to_all", mode)):
            np.testing.assert_array_equal(a, b)
