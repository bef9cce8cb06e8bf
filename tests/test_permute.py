"""permute / unpermute (shared/spec/dispatch.md section 1) against a numpy
reference written from the spec, plus transformations, AD and sharding."""
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jax_moe

DTYPES = [np.float32, jnp.bfloat16, np.float16]


# --- numpy reference (spec) ---------------------------------------------------

def np_align(ids, num_experts, bs, expert_map=None, num_local=None):
    flat = np.asarray(ids).reshape(-1).astype(np.int64)
    numel = flat.size
    L = num_experts if num_local is None else num_local
    lane = np.full(numel, L)
    for i, e in enumerate(flat):
        if 0 <= e < num_experts:
            le = e if expert_map is None else expert_map[e]
            if 0 <= le < L:
                lane[i] = le
    counts = np.bincount(lane[lane < L], minlength=L)
    padded = -(-counts // bs) * bs
    start = np.concatenate([[0], np.cumsum(padded)[:-1]])
    p = numel + min(numel, L) * (bs - 1)
    sorted_ids = np.full(p, numel, np.int32)
    expert_ids = np.full(-(-p // bs), -1, np.int32)
    for e in range(L):
        sorted_ids[start[e]:start[e] + counts[e]] = np.flatnonzero(lane == e)
        expert_ids[start[e] // bs:(start[e] + padded[e]) // bs] = e
    return sorted_ids, expert_ids, int(padded.sum()), padded.astype(np.int32)


def np_permute(x, ids, num_experts, bs=1, expert_map=None, num_local=None):
    x = np.asarray(x)
    T, K = ids.shape
    sorted_ids, expert_ids, post_pad, group_sizes = np_align(ids, num_experts, bs,
                                                             expert_map, num_local)
    xs = np.zeros((sorted_ids.size, x.shape[1]), x.dtype)
    route_rows = np.full(T * K, -1, np.int32)
    for j, r in enumerate(sorted_ids):
        if r < T * K:
            xs[j] = x[r // K]
            route_rows[r] = j
    plan = dict(sorted_token_ids=sorted_ids, expert_ids=expert_ids, post_pad=post_pad,
                group_sizes=group_sizes, route_rows=route_rows.reshape(T, K))
    return xs, plan


def np_unpermute(ys, route_rows, w):
    """float32 accumulation in increasing k, products rounded separately."""
    ys = np.asarray(ys)
    w = np.asarray(w, np.float32)
    acc = np.zeros((route_rows.shape[0], ys.shape[1]), np.float32)
    for k in range(route_rows.shape[1]):
        r = route_rows[:, k]
        term = w[:, k:k + 1] * ys[np.clip(r, 0, None)].astype(np.float32)
        acc = acc + np.where((r >= 0)[:, None], term, np.float32(0))
    return acc.astype(ys.dtype)


# --- plain-JAX dense per-token references (for AD) ------------------------------

def dense_unpermute(ys, route_rows, w):
    valid = route_rows >= 0
    rows = jnp.take(ys, jnp.clip(route_rows, 0, None), axis=0).astype(jnp.float32)
    wv = jnp.where(valid, w, 0).astype(jnp.float32)
    return jnp.sum(wv[..., None] * rows, axis=1).astype(ys.dtype)


def dense_layer(x, ids, w, num_experts, fn):
    """y[t] = sum_k w[t,k] * fn(x[t]) over valid routes: permute -> fn -> unpermute."""
    valid = (ids >= 0) & (ids < num_experts)
    wv = jnp.where(valid, w, 0)
    return jnp.einsum("tk,th->th", wv, fn(x))


def random_case(rng, T, K, E, H, dtype, drop=0.2):
    ids = rng.integers(0, E, size=(T, K))
    dropped = rng.random((T, K)) < drop
    ids = np.where(dropped, rng.choice([-1, E, E + 7, -100], size=(T, K)), ids)
    x = rng.normal(size=(T, H)).astype(np.float32).astype(dtype)
    w = rng.normal(size=(T, K)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(ids, jnp.int32), jnp.asarray(w)


def assert_plan(plan, ref):
    np.testing.assert_array_equal(plan.sorted_token_ids, ref["sorted_token_ids"])
    np.testing.assert_array_equal(plan.expert_ids, ref["expert_ids"])
    np.testing.assert_array_equal(plan.num_tokens_post_pad, [ref["post_pad"]])
    np.testing.assert_array_equal(plan.group_sizes, ref["group_sizes"])
    np.testing.assert_array_equal(plan.route_rows, ref["route_rows"])


def has_scatter(hlo_text):
    """A scatter op in StableHLO or HLO text (not a name in metadata)."""
    return re.search(r"stablehlo\.scatter|\bscatter(-add)?\(|= \S+ scatter\(", hlo_text) is not None


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


# --- forward values -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [1, 4])
def test_forward_matches_reference(rng, dtype, bs):
    T, K, E, H = 13, 3, 5, 24
    x, ids, w = random_case(rng, T, K, E, H, dtype)
    xs, plan = jax_moe.permute(x, ids, E, block_size=bs)
    xs_ref, ref = np_permute(x, np.asarray(ids), E, bs)
    assert xs.dtype == x.dtype and xs.shape == xs_ref.shape
    np.testing.assert_array_equal(bits(xs), bits(xs_ref))  # pure copies: bitwise
    assert_plan(plan, ref)
    y = jax_moe.unpermute(xs, plan, w)
    y_ref = np_unpermute(xs_ref, ref["route_rows"], w)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(bits(y), bits(y_ref))


def test_plan_properties(rng):
    x, ids, _ = random_case(rng, 7, 2, 3, 4, np.float32)
    xs, plan = jax_moe.permute(x, ids, 3, block_size=4)
    assert (plan.num_tokens, plan.topk, plan.numel) == (7, 2, 14)
    assert plan.num_rows == xs.shape[0] == 14 + 3 * 3
    for a, b in zip(plan.alignment, jax_moe.moe_align_block_size(ids, 3, 4)):
        np.testing.assert_array_equal(a, b)
    assert int(plan.group_sizes.sum()) == int(plan.num_tokens_post_pad[0]) <= plan.num_rows
    assert all(int(g) % 4 == 0 for g in plan.group_sizes)
    # route_rows is the inverse of sorted_token_ids.
    rr = np.asarray(plan.route_rows).reshape(-1)
    sid = np.asarray(plan.sorted_token_ids)
    for r, j in enumerate(rr):
        assert (j == -1) or sid[j] == r
    assert np.sum(rr >= 0) == np.sum(sid < plan.numel)


def test_padding_and_tail_rows_are_zero(rng):
    T, K, E, H, bs = 9, 2, 4, 8, 8
    x, ids, _ = random_case(rng, T, K, E, H, np.float32, drop=0.0)
    x = x + 100.0  # no row of x is zero
    xs, plan = jax_moe.permute(x, ids, E, block_size=bs)
    empty = np.asarray(plan.sorted_token_ids) == plan.numel
    assert empty.any()
    assert np.all(np.asarray(xs)[empty] == 0) and np.all(np.asarray(xs)[~empty] != 0)
    assert np.all(empty[int(plan.num_tokens_post_pad[0]):])


def test_roundtrip_is_x_times_weight_sum(rng):
    T, K, E, H = 16, 4, 6, 32
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    xs, plan = jax_moe.permute(x, ids, E, block_size=2)
    y = jax_moe.unpermute(xs, plan, w)
    valid = (np.asarray(ids) >= 0) & (np.asarray(ids) < E)
    wsum = np.where(valid, np.asarray(w), 0).sum(1, keepdims=True)
    np.testing.assert_allclose(y, np.asarray(x) * wsum, rtol=1e-5, atol=1e-5)


def test_expert_map(rng):
    T, K, E, L, H = 10, 3, 8, 3, 5
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    emap = np.full(E, -1, np.int32)
    emap[[1, 4, 6]] = [0, 1, 2]
    xs, plan = jax_moe.permute(x, ids, E, block_size=2, expert_map=jnp.asarray(emap),
                               num_local_experts=L)
    xs_ref, ref = np_permute(x, np.asarray(ids), E, 2, emap, L)
    np.testing.assert_array_equal(xs, xs_ref)
    assert_plan(plan, ref)
    np.testing.assert_array_equal(jax_moe.unpermute(xs, plan, w),
                                  np_unpermute(xs_ref, ref["route_rows"], w))


def test_all_dropped_and_empty(rng):
    x = jnp.ones((4, 3), jnp.float32)
    ids = -jnp.ones((4, 2), jnp.int32)
    xs, plan = jax_moe.permute(x, ids, 4, block_size=2)
    assert np.all(np.asarray(xs) == 0) and np.all(np.asarray(plan.route_rows) == -1)
    assert np.all(np.asarray(plan.group_sizes) == 0)
    np.testing.assert_array_equal(jax_moe.unpermute(xs, plan, jnp.ones((4, 2))), 0)
    # No tokens at all.
    xs, plan = jax_moe.permute(jnp.ones((0, 3)), jnp.ones((0, 2), jnp.int32), 4)
    assert xs.shape == (0, 3)
    assert jax_moe.unpermute(xs, plan, jnp.ones((0, 2))).shape == (0, 3)


def test_poison_rows_are_never_read(rng):
    """Rows that hold no route (padding, tail) and tokens whose routes are all
    dropped may hold NaN: nothing else is affected."""
    T, K, E, H = 12, 2, 4, 16
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    ids = ids.at[0].set(-1)
    x = x.at[0].set(jnp.nan)
    xs, plan = jax_moe.permute(x, ids, E, block_size=4)
    assert np.isfinite(np.asarray(xs)).all()
    empty = np.asarray(plan.sorted_token_ids) == plan.numel
    ys = jnp.where(jnp.asarray(empty)[:, None], jnp.nan, xs * 2)
    y = jax_moe.unpermute(ys, plan, w)
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_array_equal(y[0], 0)
    g = jax.grad(lambda ys, w: jax_moe.unpermute(ys, plan, w).sum(), argnums=(0, 1))(ys, w)
    assert np.isfinite(np.asarray(g[0])).all() and np.isfinite(np.asarray(g[1])).all()
    np.testing.assert_array_equal(np.asarray(g[0])[empty], 0)


def test_ragged_dot_on_group_sizes(rng):
    """group_sizes feeds jax.lax.ragged_dot; tail rows are in no group."""
    T, K, E, H, F = 11, 2, 3, 8, 5
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    we = jnp.asarray(rng.normal(size=(E, H, F)), jnp.float32)
    xs, plan = jax_moe.permute(x, ids, E, block_size=4)
    # HIGHEST: GPUs otherwise multiply float32 in TF32, far from the numpy reference.
    out = jax.lax.ragged_dot(xs, we, plan.group_sizes, precision=jax.lax.Precision.HIGHEST)
    y = jax_moe.unpermute(out, plan, w)
    valid = (np.asarray(ids) >= 0) & (np.asarray(ids) < E)
    ref = np.zeros((T, F), np.float32)
    for t in range(T):
        for k in range(K):
            if valid[t, k]:
                ref[t] += float(w[t, k]) * (np.asarray(x[t]) @ np.asarray(we[ids[t, k]]))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# --- transformations -------------------------------------------------------------

def test_jit_matches_eager(rng):
    x, ids, w = random_case(rng, 9, 2, 4, 12, jnp.bfloat16)

    def f(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, 4, block_size=2)
        return xs, plan, jax_moe.unpermute(xs * 3, plan, w)

    eager = f(x, ids, w)
    jitted = jax.jit(f)(x, ids, w)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(bits(a) if a.dtype == jnp.bfloat16 else a,
                                      bits(b) if b.dtype == jnp.bfloat16 else b)


def test_plan_crosses_jit_boundary(rng):
    x, ids, w = random_case(rng, 6, 2, 3, 4, np.float32)
    xs, plan = jax.jit(lambda x, i: jax_moe.permute(x, i, 3, block_size=2))(x, ids)
    y = jax.jit(jax_moe.unpermute)(xs, plan, w)
    np.testing.assert_array_equal(y, jax_moe.unpermute(xs, plan, w))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_vmap(rng, dtype):
    B, T, K, E, H = 3, 7, 2, 4, 6
    cases = [random_case(rng, T, K, E, H, dtype) for _ in range(B)]
    x, ids, w = (jnp.stack(c) for c in zip(*cases))

    def f(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E, block_size=2)
        return xs, jax_moe.unpermute(xs * 2, plan, w)

    xs_b, y_b = jax.vmap(f)(x, ids, w)
    for b in range(B):
        xs, y = f(x[b], ids[b], w[b])
        np.testing.assert_array_equal(xs_b[b], xs)
        np.testing.assert_array_equal(y_b[b], y)
    # Unbatched ids / weights, nested vmap, batch axis not in front.
    xs_n, y_n = jax.vmap(jax.vmap(f, in_axes=(0, None, None)), in_axes=(1, None, None))(
        jnp.stack([x, x + 1], axis=1), ids[0], w[0])
    assert y_n.shape == (2, B, T, H)
    np.testing.assert_array_equal(y_n[1, 0], f(x[0] + 1, ids[0], w[0])[1])


def test_vmap_of_grad(rng):
    B, T, K, E, H = 2, 5, 2, 3, 4
    cases = [random_case(rng, T, K, E, H, np.float32) for _ in range(B)]
    x, ids, w = (jnp.stack(c) for c in zip(*cases))

    def loss(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E)
        return jnp.sum(jax_moe.unpermute(jnp.tanh(xs), plan, w) ** 2)

    g = jax.vmap(jax.grad(loss, argnums=(0, 2)))(x, ids, w)
    for b in range(B):
        gb = jax.grad(loss, argnums=(0, 2))(x[b], ids[b], w[b])
        np.testing.assert_allclose(g[0][b], gb[0], rtol=1e-6)
        np.testing.assert_allclose(g[1][b], gb[1], rtol=1e-6)


# --- autodiff -------------------------------------------------------------------

def _layer(E, bs):
    def f(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E, block_size=bs)
        return jax_moe.unpermute(jnp.sin(xs), plan, w)
    return f


@pytest.mark.parametrize("bs", [1, 3])
def test_grads_match_dense_reference(rng, bs):
    T, K, E, H = 10, 3, 4, 8
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    f = _layer(E, bs)
    ref = lambda x, ids, w: dense_layer(x, ids, w, E, jnp.sin)
    np.testing.assert_allclose(f(x, ids, w), ref(x, ids, w), rtol=1e-6, atol=1e-6)
    ct = jnp.asarray(rng.normal(size=(T, H)), jnp.float32)
    loss = lambda g: (lambda x, w: jnp.sum(g(x, ids, w) * ct))
    gx, gw = jax.grad(loss(f), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-5)
    # float32 finite differences: eps large enough that rounding noise stays small.
    check_grads(lambda x, w: f(x, ids, w), (x, w), order=2, modes=("fwd", "rev"),
                atol=2e-2, rtol=2e-2, eps=1e-2)


def test_unpermute_grads_wrt_y_sorted(rng):
    T, K, E, H = 8, 2, 3, 6
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    xs, plan = jax_moe.permute(x, ids, E, block_size=2)
    ys = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
    ct = jnp.asarray(rng.normal(size=(T, H)), jnp.float32)
    ours = jax.vjp(lambda ys, w: jax_moe.unpermute(ys, plan, w), ys, w)[1](ct)
    ref = jax.vjp(lambda ys, w: dense_unpermute(ys, plan.route_rows, w), ys, w)[1](ct)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-5)
    empty = np.asarray(plan.sorted_token_ids) == plan.numel
    np.testing.assert_array_equal(np.asarray(ours[0])[empty], 0)
    # float32 finite differences: eps 1e-2 keeps rounding noise (~1e-5 |f|) and
    # truncation error (order 2 checks a cubic: ~eps^2) both small.
    check_grads(lambda ys, w: jax_moe.unpermute(ys, plan, w), (ys, w), order=2,
                modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-2)


def test_second_order_matches_dense_reference(rng):
    """Hessian-vector products (AD of our AD rules) against the dense layer."""
    T, K, E, H = 6, 2, 3, 5
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    dx = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    dw = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    f = _layer(E, 2)
    ref = lambda x, ids, w: dense_layer(x, ids, w, E, jnp.sin)

    def hvp(g):
        loss = lambda x, w: jnp.sum(g(x, ids, w) ** 2)
        return jax.jvp(jax.grad(loss, argnums=(0, 1)), (x, w), (dx, dw))[1]

    for a, b in zip(hvp(f), hvp(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_permute_vjp_is_unweighted_unpermute(rng):
    T, K, E, H = 9, 3, 4, 5
    x, ids, _ = random_case(rng, T, K, E, H, np.float32)
    xs, vjp = jax.vjp(lambda x: jax_moe.permute(x, ids, E, block_size=2)[0], x)
    _, plan = jax_moe.permute(x, ids, E, block_size=2)
    g = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
    (gx,) = vjp(g)
    expect = np_unpermute(np.asarray(g), np.asarray(plan.route_rows), np.ones((T, K)))
    np.testing.assert_array_equal(gx, expect)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_jvp(rng, dtype):
    T, K, E, H = 7, 2, 3, 8
    x, ids, w = random_case(rng, T, K, E, H, dtype)
    dx = jnp.asarray(rng.normal(size=x.shape), dtype)
    dw = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    f = _layer(E, 2)
    y, dy = jax.jvp(lambda x, w: f(x, ids, w), (x, w), (dx, dw))
    ry, rdy = jax.jvp(lambda x, w: dense_layer(x, ids, w, E, jnp.sin), (x, w), (dx, dw))
    tol = 1e-5 if dtype == np.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ry, np.float32),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(dy, np.float32), np.asarray(rdy, np.float32),
                               rtol=tol, atol=tol)
    # jvp of permute alone is permute of the tangent.
    xs, dxs = jax.jvp(lambda x: jax_moe.permute(x, ids, E)[0], (x,), (dx,))
    np.testing.assert_array_equal(bits(dxs), bits(jax_moe.permute(dx, ids, E)[0]))


def test_bf16_grads(rng):
    T, K, E, H = 6, 2, 3, 16
    x, ids, w = random_case(rng, T, K, E, H, jnp.bfloat16)
    f = _layer(E, 1)
    g = jax.grad(lambda x, w: jnp.sum(f(x, ids, w).astype(jnp.float32)), argnums=(0, 1))(x, w)
    r = jax.grad(lambda x, w: jnp.sum(dense_layer(x.astype(jnp.float32), ids, w, E, jnp.sin)),
                 argnums=(0, 1))(x, w)
    assert g[0].dtype == jnp.bfloat16 and g[1].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g[0], np.float32), r[0], rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(g[1], r[1], rtol=2e-2, atol=2e-2)


def test_weights_grad_keeps_weight_dtype(rng):
    x, ids, w = random_case(rng, 5, 2, 3, 4, np.float32)
    xs, plan = jax_moe.permute(x, ids, 3)
    g = jax.grad(lambda w: jax_moe.unpermute(xs, plan, w).sum())(w.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


def test_no_scatter_in_grad_hlo(rng):
    T, K, E, H = 8, 2, 4, 6
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    f = _layer(E, 2)
    loss = lambda x, w: jnp.sum(f(x, ids, w) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    hess = jax.jit(jax.jacfwd(jax.grad(loss, argnums=1), argnums=1))
    for fn in (grad, hess):
        lowered = fn.lower(x, w)
        assert not has_scatter(lowered.as_text())
        assert not has_scatter(lowered.compile().as_text())
    # The grep does find the scatter-add of a take-based (plain JAX) unpermute.
    _, plan = jax_moe.permute(x, ids, E)
    ys = jnp.ones((plan.num_rows, H))
    ref = jax.jit(jax.grad(lambda ys: dense_unpermute(ys, plan.route_rows, w).sum()))
    assert has_scatter(ref.lower(ys).as_text())


# --- sharding -------------------------------------------------------------------

def _mesh(name):
    return jax.make_mesh((8,), (name,), axis_types=(AxisType.Auto,))


def test_shard_map_tokens(rng):
    """Each device permutes its own tokens; weights replicated (invariant)."""
    mesh = _mesh("i")
    T, K, E, H = 8 * 5, 2, 4, 6
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    w_rep = w[:5]  # the same weights on every device

    def body(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E, block_size=2)
        return jax_moe.unpermute(jnp.sin(xs), plan, w)

    f = jax.shard_map(body, mesh=mesh, in_specs=(P("i"), P("i"), P()), out_specs=P("i"),
                      check_vma=True)
    y = jax.jit(f)(x, ids, w_rep)
    ref = jnp.concatenate([dense_layer(x[5 * d:5 * d + 5], ids[5 * d:5 * d + 5], w_rep, E,
                                       jnp.sin) for d in range(8)])
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)

    # Gradient of the replicated weights is summed over devices.
    loss = lambda x, w: jnp.sum(f(x, ids, w) ** 2)
    gx, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w_rep)

    def ref_loss(x, w):
        return sum(jnp.sum(dense_layer(x[5 * d:5 * d + 5], ids[5 * d:5 * d + 5], w, E,
                                       jnp.sin) ** 2) for d in range(8))

    rx, rw = jax.grad(ref_loss, argnums=(0, 1))(x, w_rep)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-5)


def test_shard_map_replicated_x_varying_ids(rng):
    mesh = _mesh("i")
    T, K, E, H = 4, 2, 3, 5
    x, _, _ = random_case(rng, T, K, E, H, np.float32)
    ids = jnp.asarray(rng.integers(-1, E, size=(8 * T, K)), jnp.int32)
    w = jnp.ones((8 * T, K))

    def body(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E)
        return jax_moe.unpermute(xs, plan, w)

    f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("i"), P("i")), out_specs=P("i"),
                      check_vma=True)
    gx = jax.grad(lambda x: jnp.sum(f(x, ids, w)))(x)
    counts = sum(((ids[T * d:T * d + T] >= 0) & (ids[T * d:T * d + T] < E)).sum(1)
                 for d in range(8))
    np.testing.assert_allclose(gx, np.broadcast_to(np.asarray(counts, np.float32)[:, None],
                                                   (T, H)), rtol=1e-6)
    # A per-device result cannot be declared replicated.
    with pytest.raises(Exception, match="vary|replicat|out_specs"):
        jax.shard_map(body, mesh=mesh, in_specs=(P(), P("i"), P("i")), out_specs=P(),
                      check_vma=True)(x, ids, w)


def test_hidden_sharded_under_jit_has_no_all_gather(rng):
    mesh = _mesh("tp")
    T, K, E, H = 12, 2, 4, 32
    x, ids, w = random_case(rng, T, K, E, H, np.float32)
    xh = jax.device_put(x, NamedSharding(mesh, P(None, "tp")))

    def f(x, ids, w):
        xs, plan = jax_moe.permute(x, ids, E, block_size=2)
        return jax_moe.unpermute(jnp.sin(xs), plan, w)

    fj = jax.jit(f)
    hlo = fj.lower(xh, ids, w).compile().as_text()
    assert "all-gather" not in hlo
    y = fj(xh, ids, w)
    assert y.sharding.spec == P(None, "tp") or y.sharding.is_equivalent_to(
        NamedSharding(mesh, P(None, "tp")), 2)
    np.testing.assert_allclose(y, f(x, ids, w), rtol=1e-6, atol=1e-6)

    # Backward: rows stay hidden-sharded; the weight gradient is a reduction
    # over H (an all-reduce of [T, K]), never a gather of rows.
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, ids, w) ** 2), argnums=(0, 1)))
    hlo = grad.lower(xh, w).compile().as_text()
    assert "all-gather" not in hlo and not has_scatter(hlo)
    gx, gw = grad(xh, w)
    rx, rw = jax.grad(lambda x, w: jnp.sum(f(x, ids, w) ** 2), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-4)


def test_cuda_lowering_names_our_targets():
    x = jnp.ones((4, 8), jnp.bfloat16)
    ids = jnp.zeros((4, 2), jnp.int32)

    def f(x, w):
        xs, plan = jax_moe.permute(x, ids, 4)
        return jax_moe.unpermute(xs, plan, w)

    try:
        text = jax.jit(jax.grad(lambda x, w: f(x, w).astype(jnp.float32).sum(),
                                argnums=(0, 1))).trace(x, jnp.ones((4, 2))).lower(
            lowering_platforms=("cuda",)).as_text()
    except RuntimeError as e:  # CPU-only build: the CUDA module is absent
        pytest.skip(str(e))
    for name in ("jax_moe_permute_plan_cuda", "jax_moe_permute_cuda",
                 "jax_moe_unpermute_cuda", "jax_moe_unpermute_wgrad_cuda"):
        assert name in text


# --- argument errors ----------------------------------------------------------

def test_errors():
    x = jnp.ones((4, 8), jnp.float32)
    ids = jnp.zeros((4, 2), jnp.int32)
    with pytest.raises(TypeError, match="x must be"):
        jax_moe.permute(x.astype(jnp.int32), ids, 4)
    with pytest.raises(ValueError, match="x must be 2-D"):
        jax_moe.permute(jnp.ones((4,)), ids, 4)
    with pytest.raises(TypeError, match="topk_ids"):
        jax_moe.permute(x, ids.astype(jnp.float32), 4)
    with pytest.raises(ValueError, match="topk_ids"):
        jax_moe.permute(x, jnp.zeros((5, 2), jnp.int32), 4)
    with pytest.raises(ValueError, match="block_size"):
        jax_moe.permute(x, ids, 4, block_size=0)
    xs, plan = jax_moe.permute(x, ids, 4)
    w = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="topk_weights"):
        jax_moe.unpermute(xs, plan, jnp.ones((4, 3)))
    with pytest.raises(TypeError, match="topk_weights"):
        jax_moe.unpermute(xs, plan, jnp.ones((4, 2), jnp.int32))
    with pytest.raises(ValueError, match="y_sorted"):
        jax_moe.unpermute(xs[:-1], plan, w)
    with pytest.raises(TypeError, match="y_sorted"):
        jax_moe.unpermute(xs.astype(jnp.int32), plan, w)
    with pytest.raises(TypeError, match="plan"):
        jax_moe.unpermute(xs, tuple(plan), w)
    with pytest.raises(ValueError, match="y_sorted"):  # also at trace time under jit
        jax.jit(jax_moe.unpermute)(xs[:-1], plan, w)


# --- properties -------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(T=st.integers(0, 12), K=st.integers(1, 4), E=st.integers(1, 6), H=st.integers(1, 9),
       bs=st.integers(1, 5), drop=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES))
def test_random_shapes(T, K, E, H, bs, drop, seed, dtype):
    rng = np.random.default_rng(seed)
    x, ids, w = random_case(rng, T, K, E, H, dtype, drop)
    xs, plan = jax_moe.permute(x, ids, E, block_size=bs)
    xs_ref, ref = np_permute(x, np.asarray(ids), E, bs)
    np.testing.assert_array_equal(bits(xs), bits(xs_ref))
    assert_plan(plan, ref)
    ys = (xs.astype(jnp.float32) * 1.5 - 0.25).astype(dtype)
    np.testing.assert_array_equal(bits(jax_moe.unpermute(ys, plan, w)),
                                  bits(np_unpermute(ys, ref["route_rows"], w)))
