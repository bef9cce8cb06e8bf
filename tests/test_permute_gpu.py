"""CUDA kernels of the permute family equal the CPU kernels.

permute and the plan are pure index/copy work: bitwise equal. unpermute rounds
products and sums separately in increasing k on both backends, so it is
expected bitwise equal too; the test allows 1 ulp (float32 rounding) in case a
backend flushes subnormals. The weight gradient sums over H in a different
order (warp reduction): float32 tolerance.

Plans are computed on the CPU and copied to the GPU, so these tests need only
our kernels; the end-to-end test also needs moe_align_block_size on CUDA.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from jax_moe._permute_prims import permute_p, permute_plan_p, unpermute_p, wgrad_p
from backends import bits, cpu_and_cuda as both

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, jnp.bfloat16, np.float16]
# Widths that take the 16-byte path for every dtype (8, 64, 7168), only for
# some (4: f32 only), or never (1, 7, 130 for f32).
HIDDEN = [1, 4, 7, 8, 64, 130, 7168]


def _devices():
    return jax.devices("cpu")[0], jax.devices("cuda")[0]


def assert_ulp(a, b, ulps=1):
    a, b = bits(a).astype(np.int64), bits(b).astype(np.int64)
    assert np.max(np.abs(a - b), initial=0) <= ulps


def cpu_plan(rng, T, K, E, bs, drop=0.2):
    ids = rng.integers(0, E, size=(T, K))
    ids = np.where(rng.random((T, K)) < drop, -1, ids).astype(np.int32)
    cpu, _ = _devices()
    with jax.default_device(cpu):
        x = jnp.zeros((T, 1), jnp.float32)
        _, plan = jax_moe.permute(x, jnp.asarray(ids), E, block_size=bs)
    return ids, jax.tree.map(np.asarray, plan)


def random_rows(rng, n, H, dtype):
    return rng.normal(size=(n, H)).astype(np.float32).astype(dtype)


# K = 12 takes the kernels' second route chunk (8 routes are loaded at once).
CASES = [(1, 1, 1, 1), (5, 2, 4, 1), (64, 8, 16, 4), (150, 12, 32, 4), (1024, 8, 256, 64),
         (333, 6, 64, 16), (2048, 2, 8, 128)]


@pytest.mark.parametrize("T,K,E,bs", CASES)
def test_plan_equal(rng, T, K, E, bs):
    _, plan = cpu_plan(rng, T, K, E, bs)
    f = lambda s, e: permute_plan_p.bind(s, e, num_batch_dims=0, block_size=bs,
                                         num_tokens=T, topk=K, num_local_experts=E)
    c, g = both(f, plan.sorted_token_ids, plan.expert_ids)
    for a, b in zip(c, g):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g[0], plan.route_rows)
    np.testing.assert_array_equal(g[1], plan.group_sizes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("weighted", [False, True])
def test_permute_bitwise(rng, dtype, H, weighted):
    for T, K, E, bs in CASES[:5]:
        _, plan = cpu_plan(rng, T, K, E, bs)
        x = random_rows(rng, T, H, dtype)
        scale = rng.normal(size=(T, K)).astype(np.float32) if weighted else np.zeros(0, np.float32)
        f = lambda x, s, i, r: permute_p.bind(x, s, i, r, num_batch_dims=0, weighted=weighted)
        c, g = both(f, x, scale, plan.sorted_token_ids, plan.route_rows)
        np.testing.assert_array_equal(bits(c), bits(g))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", HIDDEN)
def test_unpermute_and_wgrad(rng, dtype, H):
    for T, K, E, bs in CASES[:5]:
        _, plan = cpu_plan(rng, T, K, E, bs)
        ys = random_rows(rng, plan.sorted_token_ids.size, H, dtype)
        w = rng.normal(size=(T, K)).astype(np.float32)
        idx = (plan.sorted_token_ids, plan.route_rows)
        for weighted in (True, False):
            ww = w if weighted else np.zeros(0, np.float32)
            f = lambda y, w, i, r: unpermute_p.bind(y, w, i, r, num_batch_dims=0,
                                                    weighted=weighted)
            c, g = both(f, ys, ww, *idx)
            assert_ulp(c, g)
        gt = random_rows(rng, T, H, dtype)
        f = lambda a, b, i, r: wgrad_p.bind(a, b, i, r, num_batch_dims=0)
        c, g = both(f, gt, ys, *idx)
        scale = np.abs(gt.astype(np.float32)).sum(1, keepdims=True) * 4 + 1
        np.testing.assert_allclose(c / scale, g / scale, atol=1e-6)


def test_deterministic_runs(rng):
    T, K, E, bs, H = 2048, 8, 64, 16, 1024
    _, plan = cpu_plan(rng, T, K, E, bs)
    ys = random_rows(rng, plan.sorted_token_ids.size, H, jnp.bfloat16)
    w = rng.normal(size=(T, K)).astype(np.float32)
    _, gpu = _devices()
    f = jax.jit(lambda y, w, i, r: unpermute_p.bind(y, w, i, r, num_batch_dims=0, weighted=True))
    args = jax.device_put((ys, w, plan.sorted_token_ids, plan.route_rows), gpu)
    first = np.asarray(f(*args))
    for _ in range(3):
        np.testing.assert_array_equal(bits(f(*args)), bits(first))


def test_vmapped_batch(rng):
    """Leading batch dims handled inside the kernels (num_batch_dims=1)."""
    B, T, K, E, bs, H = 3, 50, 4, 8, 4, 24
    plans = [cpu_plan(rng, T, K, E, bs)[1] for _ in range(B)]
    plan = jax.tree.map(lambda *a: np.stack(a), *plans)
    x = np.stack([random_rows(rng, T, H, jnp.bfloat16) for _ in range(B)])
    w = rng.normal(size=(B, T, K)).astype(np.float32)

    def f(x, w, sid, eid, rr):
        none = jnp.zeros((0,), jnp.float32)
        rr2, gs = jax.vmap(lambda s, e: permute_plan_p.bind(
            s, e, num_batch_dims=0, block_size=bs, num_tokens=T, topk=K,
            num_local_experts=E))(sid, eid)
        xs = jax.vmap(lambda x, s, r: permute_p.bind(x, none, s, r, num_batch_dims=0,
                                                     weighted=False))(x, sid, rr)
        y = jax.vmap(lambda y, w, s, r: unpermute_p.bind(y, w, s, r, num_batch_dims=0,
                                                         weighted=True))(xs, w, sid, rr)
        return rr2, gs, xs, y

    c, g = both(f, x, w, plan.sorted_token_ids, plan.expert_ids, plan.route_rows)
    for a, b in zip(c[:3], g[:3]):
        np.testing.assert_array_equal(bits(a), bits(b))
    assert_ulp(c[3], g[3])


def test_corrupt_plan_stays_in_bounds(rng):
    """Out-of-range indices read as empty slots / dropped routes on both backends."""
    T, K, H, P = 40, 3, 16, 150
    sid = rng.integers(-5, 3 * T * K, size=P).astype(np.int32)
    # Keep valid sorted ids unique (duplicates would race on the plan kernel).
    seen = set()
    for j, r in enumerate(sid):
        if 0 <= r < T * K and r in seen:
            sid[j] = -1
        seen.add(int(r))
    rr = rng.integers(-3 * P, 3 * P, size=(T, K)).astype(np.int32)
    x = random_rows(rng, T, H, np.float32)
    ys = random_rows(rng, P, H, np.float32)
    w = rng.normal(size=(T, K)).astype(np.float32)
    none = np.zeros(0, np.float32)
    f = lambda x, ys, w, s, r: (
        permute_p.bind(x, none, s, r, num_batch_dims=0, weighted=False),
        unpermute_p.bind(ys, w, s, r, num_batch_dims=0, weighted=True),
        wgrad_p.bind(x, ys, s, r, num_batch_dims=0))
    c, g = both(f, x, ys, w, sid, rr)
    np.testing.assert_array_equal(c[0], g[0])
    assert_ulp(c[1], g[1])
    np.testing.assert_allclose(c[2], g[2], rtol=1e-5, atol=1e-5)
    eids = np.sort(rng.integers(-1, 7, size=20)).astype(np.int32)
    f = lambda s, e: permute_plan_p.bind(s, e, num_batch_dims=0, block_size=4, num_tokens=T,
                                         topk=K, num_local_experts=5)
    c, g = both(f, sid, eids)
    for a, b in zip(c, g):
        np.testing.assert_array_equal(a, b)


def test_grads_cuda_vs_cpu(rng):
    T, K, E, bs, H = 256, 4, 16, 8, 128
    _, plan = cpu_plan(rng, T, K, E, bs)
    ys = random_rows(rng, plan.sorted_token_ids.size, H, jnp.bfloat16)
    w = rng.normal(size=(T, K)).astype(np.float32)
    ct = random_rows(rng, T, H, jnp.bfloat16)

    def f(ys, w, plan, ct):
        y, vjp = jax.vjp(lambda ys, w: jax_moe.unpermute(ys, plan, w), ys, w)
        return vjp(ct)

    c, g = both(f, ys, w, jax_moe.PermutePlan(*plan), ct)
    np.testing.assert_array_equal(bits(c[0]), bits(g[0]))  # a weighted permute
    np.testing.assert_allclose(c[1], g[1], rtol=1e-4, atol=1e-3)


def _has_align_cuda():
    try:
        from jax_moe import _jax_moe_cuda
    except ImportError:
        return False
    return "jax_moe_align_cuda" in _jax_moe_cuda.registrations()


@pytest.mark.skipif(not _has_align_cuda(), reason="moe_align_block_size has no CUDA kernel "
                    "in this build")
@pytest.mark.parametrize("dtype", DTYPES)
def test_end_to_end(rng, dtype):
    T, K, E, bs, H = 1000, 8, 64, 16, 256
    ids = rng.integers(-1, E, size=(T, K)).astype(np.int32)
    x = random_rows(rng, T, H, dtype)
    w = rng.normal(size=(T, K)).astype(np.float32)

    def f(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E, block_size=bs)
        y = jax_moe.unpermute(xs, plan, w)
        grads = jax.grad(lambda x, w: jnp.sum(jax_moe.unpermute(
            jax_moe.permute(x, ids, E, block_size=bs)[0], plan, w).astype(jnp.float32)),
            argnums=(0, 1))(x, w)
        return xs, plan, y, grads

    c, g = both(f, x, ids, w)
    np.testing.assert_array_equal(bits(c[0]), bits(g[0]))
    for a, b in zip(c[1], g[1]):
        np.testing.assert_array_equal(a, b)
    assert_ulp(c[2], g[2])
    assert_ulp(c[3][0], g[3][0])
    np.testing.assert_allclose(c[3][1], g[3][1], rtol=1e-4, atol=1e-3)
