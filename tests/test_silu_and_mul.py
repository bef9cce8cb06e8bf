"""silu_and_mul on the CPU backend vs the pure-JAX references (jax_moe/references/silu.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import jax_moe
from jax_moe.references import silu as ref

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# One ulp of each dtype, relative: the kernel and XLA's exp may differ by a few
# float32 ulps, which can flip the final rounding to a narrow dtype.
RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2**-7, jnp.float16: 2**-10}


def _h(rng, shape, dtype, scale=3.0):
    return jnp.asarray(rng.normal(size=shape) * scale, dtype)


def _bits(x):
    x = np.asarray(x)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


def _close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)


def _close_sum_of_terms(dy, dyr, h, t, dtype):
    """The jvp dy = silu'(g) u dg + silu(g) du is a sum of two terms that can
    cancel: its rounding error scales with |term 1| + |term 2|, not with |dy|.
    Allowed: RTOL of dy (the output's own rounding) plus 1e-6 of the terms'
    magnitude (a few float32 ulps of each term)."""
    h32, t32 = np.asarray(h, np.float32), np.asarray(t, np.float32)
    g, u = np.split(h32, 2, axis=-1)
    tg, tu = np.split(t32, 2, axis=-1)
    with np.errstate(over="ignore"):
        sig = np.float32(1) / (np.float32(1) + np.exp(-g))
    terms = np.abs(sig * (1 + g * (1 - sig)) * u * tg) + np.abs(g * sig * tu)
    a, b = np.asarray(dy, np.float32), np.asarray(dyr, np.float32)
    bound = RTOL[dtype] * np.abs(b) + 1e-6 * terms + RTOL[dtype] * 1e-2
    assert np.all(np.abs(a - b) <= bound), np.max(np.abs(a - b) - bound)


def _np_silu_and_mul(h):
    """numpy float32 reference (no XLA compilation per shape: cheap in hypothesis)."""
    h = np.asarray(h, np.float32)
    g, u = np.split(h, 2, axis=-1)
    with np.errstate(over="ignore"):
        return g / (np.float32(1) + np.exp(-g)) * u


def _np_fp8(y):
    """Spec section 3 in numpy float32 (IEEE ops) with ml_dtypes' e4m3 cast."""
    y = np.asarray(y, np.float32)
    yg = y.reshape(y.shape[:-1] + (y.shape[-1] // 128, 128))
    amax = np.maximum(np.abs(yg).max(-1, keepdims=True), np.float32(1e-4))
    q = np.clip(yg * (np.float32(448) / amax), -448, 448).astype(jnp.float8_e4m3fn)
    return q.reshape(y.shape), (amax / np.float32(448))[..., 0]


def _poisoned(rng, e, m, i2, counts, dtype):
    """h [E, M, 2I] with NaN in every row past its (clamped) count."""
    h = np.asarray(rng.normal(size=(e, m, i2)) * 3, np.float32)
    for k, c in enumerate(np.clip(counts, 0, m)):
        h[k, c:] = np.nan
    return jnp.asarray(h, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 256), (3, 5, 96), (2, 6), (10,)])
def test_forward_matches_reference(rng, dtype, shape):
    h = _h(rng, shape, dtype)
    y = jax_moe.silu_and_mul(h)
    assert y.shape == shape[:-1] + (shape[-1] // 2,) and y.dtype == dtype
    _close(y, ref.silu_and_mul(h), dtype)
    # Computed in float32 and rounded once (round to nearest even): exactly the
    # numpy cast of the kernel's own float32 result.
    y32 = jax_moe.silu_and_mul(h.astype(jnp.float32))
    np.testing.assert_array_equal(_bits(y), _bits(np.asarray(y32).astype(dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_bytes_and_scales_match_reference(rng, dtype):
    h = _h(rng, (33, 2 * 384), dtype)
    h = h.at[3, :128].set(0).at[4].set(1e-6)  # amax floor 1e-4 and tiny groups
    q, s = jax_moe.silu_and_mul(h, fp8=True)
    assert q.dtype == jnp.float8_e4m3fn and q.shape == (33, 384)
    assert s.dtype == jnp.float32 and s.shape == (33, 3)
    # Bit-exact: the reference quantizer applied to the kernel's float32 activation.
    rq, rs = jax.jit(ref.fp8_quantize)(jax_moe.silu_and_mul(h.astype(jnp.float32)))
    np.testing.assert_array_equal(_bits(q), _bits(rq))
    np.testing.assert_array_equal(_bits(s), _bits(rs))
    # End to end vs the pure reference (XLA's exp): same up to rare one-step flips.
    eq, es = ref.silu_and_mul_fp8(h)
    np.testing.assert_allclose(s, es, rtol=1e-5)
    diff = np.abs(np.asarray(q, np.float32) - np.asarray(eq, np.float32))
    assert np.mean(diff > 0) < 0.01
    np.testing.assert_array_less(diff, np.abs(np.asarray(eq, np.float32)) / 8 + 2**-9 + 1e-9)
    # Dequantized values are within e4m3 precision of the activation.
    x = np.asarray(ref.silu_and_mul_f32(h))
    deq = np.asarray(ref.fp8_dequantize(q, s))
    bound = np.abs(x) * 2**-4 + np.repeat(np.asarray(s), 128, axis=-1) * 2**-9
    assert np.all(np.abs(deq - x) <= bound * 1.0001)


def test_fp8_encoder_matches_ml_dtypes_cast(rng):
    # Many activations spanning e4m3's normal and subnormal ranges: the kernel's
    # integer encoder equals ml_dtypes' float32 -> float8_e4m3fn cast.
    h = jnp.asarray(rng.normal(size=(256, 2 * 1024)) * np.exp(rng.normal(size=(256, 1)) * 3),
                    jnp.float32)
    q, s = jax_moe.silu_and_mul(h, fp8=True)
    nq, ns = _np_fp8(jax_moe.silu_and_mul(h))
    np.testing.assert_array_equal(_bits(q), _bits(nq))
    np.testing.assert_array_equal(_bits(s), _bits(ns))


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_mask_never_reads_past_count(rng, dtype, fp8):
    e, m, i = 5, 9, 128
    counts = np.array([0, 3, 9, -2, 40], np.int32)  # clamped to [0, M]
    h = _poisoned(rng, e, m, 2 * i, counts, dtype)
    valid = np.arange(m)[None, :] < np.clip(counts, 0, m)[:, None]
    clean = jnp.where(jnp.asarray(valid)[..., None], h, 0)
    out = jax_moe.silu_and_mul(h, counts=jnp.asarray(counts), fp8=fp8)
    full = jax_moe.silu_and_mul(clean, fp8=fp8)
    for o, f in zip(jax.tree.leaves(out), jax.tree.leaves(full)):
        assert np.all(np.isfinite(np.asarray(o, np.float32)))  # NaN rows were not read
        np.testing.assert_array_equal(_bits(o)[valid], _bits(f)[valid])
        np.testing.assert_array_equal(np.asarray(o, np.float32)[~valid], 0)  # zero_fill
    # zero_fill=False: valid rows identical; the rest is unspecified.
    lazy = jax_moe.silu_and_mul(h, counts=jnp.asarray(counts), fp8=fp8, zero_fill=False)
    for o, f in zip(jax.tree.leaves(lazy), jax.tree.leaves(full)):
        np.testing.assert_array_equal(_bits(o)[valid], _bits(f)[valid])


def test_counts_reference_agrees(rng):
    counts = jnp.array([2, 0, 4], jnp.int32)
    h = _h(rng, (3, 4, 64), jnp.float32)
    _close(jax_moe.silu_and_mul(h, counts=counts), ref.silu_and_mul(h, counts), jnp.float32)


def test_jit_and_determinism(rng):
    h = _h(rng, (64, 512), jnp.bfloat16)
    f = jax.jit(functools.partial(jax_moe.silu_and_mul, fp8=True))
    a, b = f(h), f(h)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(_bits(x), _bits(y))
    np.testing.assert_array_equal(_bits(a[0]), _bits(jax_moe.silu_and_mul(h, fp8=True)[0]))


@pytest.mark.parametrize("fp8", [False, True])
def test_vmap(rng, fp8):
    h = _h(rng, (3, 4, 5, 256), jnp.float32)
    f = functools.partial(jax_moe.silu_and_mul, fp8=fp8)
    want = f(h)
    for got in (jax.vmap(f)(h), jax.vmap(jax.vmap(f))(h)):
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(_bits(x), _bits(y))
    moved = jax.vmap(f, in_axes=2, out_axes=0)(h)
    for x, y in zip(jax.tree.leaves(moved), jax.tree.leaves(want)):
        np.testing.assert_array_equal(_bits(x), _bits(jnp.moveaxis(y, 2, 0)))


def test_vmap_with_counts(rng):
    b, e, m, i = 3, 4, 6, 128
    counts = jnp.asarray(rng.integers(-1, m + 2, size=(b, e)), jnp.int32)
    h = _h(rng, (b, e, m, 2 * i), jnp.float32)
    f = lambda h, c: jax_moe.silu_and_mul(h, counts=c)
    got = jax.vmap(f)(h, counts)
    for k in range(b):
        np.testing.assert_array_equal(got[k], f(h[k], counts[k]))
    shared = jax.vmap(f, in_axes=(0, None))(h, counts[0])  # unbatched counts
    for k in range(b):
        np.testing.assert_array_equal(shared[k], f(h[k], counts[0]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grad_vjp_jvp_match_reference(rng, dtype):
    h = _h(rng, (6, 2, 192), dtype, scale=2.0)
    w = jnp.asarray(rng.normal(size=(6, 2, 96)), jnp.float32)
    loss = lambda f: lambda h: jnp.sum(w * f(h).astype(jnp.float32))
    g = jax.grad(loss(jax_moe.silu_and_mul))(h)
    gr = jax.grad(loss(ref.silu_and_mul))(h)
    assert g.dtype == dtype
    _close(g, gr, dtype)
    ct = jnp.asarray(rng.normal(size=(6, 2, 96)), dtype)
    (dh,) = jax.vjp(jax_moe.silu_and_mul, h)[1](ct)
    (dhr,) = jax.vjp(ref.silu_and_mul, h)[1](ct)
    _close(dh, dhr, dtype)
    t = _h(rng, h.shape, dtype, 1.0)
    y, dy = jax.jvp(jax_moe.silu_and_mul, (h,), (t,))
    yr, dyr = jax.jvp(ref.silu_and_mul, (h,), (t,))
    _close(y, yr, dtype)
    _close_sum_of_terms(dy, dyr, h, t, dtype)
    # Under jit and vmap too.
    gj = jax.jit(jax.vmap(jax.grad(lambda x, w: jnp.sum(w * jax_moe.silu_and_mul(x)))))(
        h.astype(jnp.float32), w)
    _close(gj, jax.vmap(jax.grad(lambda x, w: jnp.sum(w * ref.silu_and_mul(x))))(
        h.astype(jnp.float32), w), jnp.float32)


def test_grad_uses_backward_kernel(rng):
    h = _h(rng, (4, 64), jnp.float32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda h: jnp.sum(jax_moe.silu_and_mul(h))))(h)
    assert "jax_moe_silu_and_mul_bwd" in str(jaxpr)


def test_grad_with_counts_is_zero_past_count(rng):
    counts = np.array([3, 0, 7, 11], np.int32)
    h = _poisoned(rng, 4, 7, 128, counts, jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 7, 64)), jnp.float32)
    valid = np.arange(7)[None, :] < np.clip(counts, 0, 7)[:, None]
    g = jax.grad(lambda h: jnp.sum(w * jax_moe.silu_and_mul(h, counts=jnp.asarray(counts))))(h)
    clean = jnp.where(jnp.asarray(valid)[..., None], h, 0)
    gr = jax.grad(lambda h: jnp.sum(w * ref.silu_and_mul(h, jnp.asarray(counts))))(clean)
    np.testing.assert_array_equal(np.asarray(g)[~valid], 0)
    _close(np.asarray(g)[valid], np.asarray(gr)[valid], jnp.float32)
    _, dy = jax.jvp(lambda h: jax_moe.silu_and_mul(h, counts=jnp.asarray(counts)), (h,),
                    (jnp.ones_like(h),))
    np.testing.assert_array_equal(np.asarray(dy)[~valid], 0)
    assert np.all(np.isfinite(dy))


def test_fp8_is_not_differentiable(rng):
    h = _h(rng, (2, 256), jnp.float32)
    with pytest.raises(TypeError, match="not differentiable"):
        jax.grad(lambda h: jnp.sum(jax_moe.silu_and_mul(h, fp8=True)[1]))(h)
    # stop_gradient is the documented way to use it inside differentiated code.
    jax.grad(lambda h: jnp.sum(
        jax_moe.silu_and_mul(jax.lax.stop_gradient(h), fp8=True)[1]) + jnp.sum(h))(h)


def _mesh():
    return jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))


def test_shard_map_tokens_and_experts(rng):
    mesh = _mesh()
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    h = put(_h(rng, (16, 256), jnp.float32), P("x"))
    f = jax.jit(jax.shard_map(lambda h: jax_moe.silu_and_mul(h, fp8=True), mesh=mesh,
                              in_specs=P("x"), out_specs=(P("x"), P("x")), check_vma=True))
    for a, b in zip(f(h), jax_moe.silu_and_mul(np.asarray(h), fp8=True)):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    # Low-latency layout: experts sharded, counts alongside; gradient inside shard_map.
    counts = rng.integers(0, 6, size=16).astype(np.int32)
    he = put(_h(rng, (16, 5, 256), jnp.float32), P("x"))
    ce = put(jnp.asarray(counts), P("x"))

    def loss(h, c):
        return jnp.sum(jax_moe.silu_and_mul(h, counts=c) ** 2)

    def body(h, c):
        return jax_moe.silu_and_mul(h, counts=c), jax.grad(loss)(h, c)

    g = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("x"), P("x")),
                              out_specs=(P("x"), P("x")), check_vma=True))
    y, dh = g(he, ce)
    np.testing.assert_array_equal(y, jax_moe.silu_and_mul(np.asarray(he), counts=counts))
    np.testing.assert_allclose(dh, jax.grad(loss)(np.asarray(he), counts), rtol=1e-6)
    # A per-device result cannot be declared replicated.
    bad = jax.shard_map(lambda h: jax_moe.silu_and_mul(h), mesh=mesh, in_specs=P("x"),
                        out_specs=P(), check_vma=True)
    with pytest.raises(Exception, match="vary|replicat|out_specs"):
        jax.jit(bad)(h)


def test_jit_sharded_rows_stay_sharded(rng):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    h = jax.device_put(_h(rng, (32, 4, 256), jnp.float32), NamedSharding(mesh, P("x")))
    f = jax.jit(jax_moe.silu_and_mul)
    hlo = f.lower(h).compile().as_text()
    assert "all-gather" not in hlo
    y = f(h)
    assert y.sharding.spec[:1] == ("x",)
    np.testing.assert_array_equal(y, jax_moe.silu_and_mul(np.asarray(h)))


@given(lead=st.lists(st.integers(0, 4), min_size=0, max_size=3),
       inter=st.integers(1, 40), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_hypothesis_shapes(lead, inter, dtype, seed):
    h = _h(np.random.default_rng(seed), tuple(lead) + (2 * inter,), dtype)
    y = jax_moe.silu_and_mul(h)
    assert y.shape == tuple(lead) + (inter,)
    _close(y, np.asarray(_np_silu_and_mul(h)).astype(dtype), dtype)


@given(e=st.integers(1, 4), m=st.integers(0, 6), groups=st.integers(1, 2),
       seed=st.integers(0, 2**31))
def test_hypothesis_fp8_counts(e, m, groups, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(-2, m + 3, size=e).astype(np.int32)
    h = _h(rng, (e, m, 2 * 128 * groups), jnp.bfloat16)
    q, s = jax_moe.silu_and_mul(h, counts=jnp.asarray(counts), fp8=True)
    rq, rs = _np_fp8(jax_moe.silu_and_mul(h.astype(jnp.float32)))
    valid = np.arange(m)[None, :] < np.clip(counts, 0, m)[:, None]
    np.testing.assert_array_equal(_bits(q)[valid], _bits(rq)[valid])
    np.testing.assert_array_equal(_bits(s)[valid], _bits(rs)[valid])
    np.testing.assert_array_equal(_bits(s)[~valid], 0)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(h=np.ones((2, 4), np.int32)), TypeError, "h must be float32"),
    (dict(h=np.ones((2, 5), np.float32)), ValueError, "h must be .*even"),
    (dict(h=np.ones((), np.float32)), ValueError, "h must be"),
    (dict(h=np.ones((2, 100), np.float32), fp8=True), ValueError, "fp8=True needs I"),
    (dict(h=np.ones((2, 256), np.float32), fp8=1), TypeError, "fp8 must be"),
    (dict(h=np.ones((2, 3, 4), np.float32), counts=np.ones(2, np.float32)), TypeError, "counts must be int32"),
    (dict(h=np.ones((2, 3, 4), np.float32), counts=np.ones(3, np.int32)), ValueError, "counts must have shape"),
    (dict(h=np.ones((3, 4), np.float32), counts=np.ones(3, np.int32)), ValueError, r"h must be \[E, M, 2I\]"),
    (dict(h=np.ones((2, 3, 4), np.float32), counts=np.ones(2, np.int32), zero_fill=None), TypeError, "zero_fill"),
])
def test_bad_inputs_name_the_argument(kwargs, err, match):
    h = kwargs.pop("h")
    with pytest.raises(err, match=match):
        jax_moe.silu_and_mul(h, **kwargs)


def test_cuda_lowering_names_the_cuda_target(rng):
    pytest.importorskip("jax_moe._jax_moe_cuda")
    h = _h(rng, (4, 256), jnp.bfloat16)
    for fp8, target in ((False, "jax_moe_silu_and_mul_cuda"), (True, "jax_moe_silu_and_mul_fp8_cuda")):
        f = jax.jit(functools.partial(jax_moe.silu_and_mul, fp8=fp8))
        text = f.trace(h).lower(lowering_platforms=("cuda",)).as_text()
        assert target in text
    text = jax.jit(jax.grad(lambda h: jnp.sum(jax_moe.silu_and_mul(h).astype(jnp.float32)))).trace(
        h).lower(lowering_platforms=("cuda",)).as_text()
    assert "jax_moe_silu_and_mul_bwd_cuda" in text


def test_subnormal_intermediates_are_kept_on_cpu():
    """XLA's CPU runtime flushes subnormals; our CPU kernels keep them, as the
    CUDA kernels do, so both backends give the same bits (and the right value:
    for g in (-88.7, -87.4), sigmoid(g) ~ 1e-38 is subnormal but dsilu is not)."""
    g = np.array([-88.0, -88.5, -87.5, 3.0], np.float32)
    h = np.concatenate([g, np.ones(4, np.float32)])[None]
    cpu = jax.devices("cpu")[0]
    _, vjp = jax.vjp(jax_moe.silu_and_mul, jax.device_put(h, cpu))
    dg = np.asarray(vjp(jax.device_put(np.ones((1, 4), np.float32), cpu))[0])[0, :4]
    g64 = g.astype(np.float64)
    s = 1 / (1 + np.exp(-g64))
    want = s * (1 + g64 * (1 - s))
    np.testing.assert_allclose(dg, want, rtol=1e-4, atol=0)
    # XLA's own flush mode is restored after our call.
    flush = jax.jit(lambda x: x * np.float32(1e-30))(jax.device_put(np.float32(1e-10), cpu))
    assert float(flush) == 0.0
