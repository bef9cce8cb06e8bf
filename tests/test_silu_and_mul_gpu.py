"""silu_and_mul on CUDA against the CPU backend. The backward equals it bit for
bit (same float32 math, cc/silu/silu_math.h). The forward uses the hardware exp and
division on CUDA (cc/silu/silu_and_mul.cu says why): outputs within a few float32
ulps, rounded outputs within one step of their type (FP8 codes, bf16/f16 values).
Runs only with a CUDA backend."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from backends import assert_same_bits, bits, cpu_and_cuda, run_on

pytestmark = pytest.mark.gpu

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _same(f, *args):
    assert_same_bits(*cpu_and_cuda(f, *args))


def _steps_apart(a, b):
    """Representable values between a and b, element-wise (floats of one width and
    one sign, where the magnitude's bits are monotonic; zeros of either sign match)."""
    ia, ib = bits(a).astype(np.int64), bits(b).astype(np.int64)
    sign = 1 << (8 * np.asarray(a).dtype.itemsize - 1)
    ma, mb = ia & (sign - 1), ib & (sign - 1)
    assert np.all(((ia & sign) == (ib & sign)) | ((ma == 0) & (mb == 0))), "signs differ"
    return np.abs(ma - mb)


def assert_forward_close(gpu, cpu):
    """Every leaf: float32 within 2e-5 relative (the hardware exp's error at
    |g| ~ 80; a few 1e-7 for typical g), 16-bit floats and FP8 codes within one
    step, FP8 scales within 2e-5 relative. The error never exceeds that of the
    result's own rounding, so the steps are the test. Magnitudes under 1e-30
    count as zero: the hardware division may flush quotients by divisors over
    2^126 (g below about -87.3, where silu is under 1e-36)."""
    tiny = 1e-30
    for g, c in zip(jax.tree.leaves(gpu), jax.tree.leaves(cpu), strict=True):
        assert g.dtype == c.dtype and g.shape == c.shape
        if g.dtype == np.float32:
            np.testing.assert_allclose(g, c, rtol=2e-5, atol=tiny)
        else:
            mag = lambda x: np.abs(x.astype(np.float32))
            both_tiny = (mag(g) <= tiny) & (mag(c) <= tiny)
            assert _steps_apart(g, c)[~both_tiny].max(initial=0) <= 1


def _close(f, *args):
    cpu, gpu = cpu_and_cuda(f, *args)
    assert_forward_close(gpu, cpu)


def _h(rng, shape, dtype):
    return np.asarray(rng.normal(size=shape) * np.exp(rng.normal(size=shape[:-1] + (1,))),
                      np.float32).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4096, 2 * 2048), (3, 7, 2 * 1408), (33, 2 * 7), (5, 2)])
def test_forward_and_backward_match_cpu(rng, dtype, shape):
    h = _h(rng, shape, dtype)
    _close(jax_moe.silu_and_mul, h)
    dy = _h(rng, shape[:-1] + (shape[-1] // 2,), dtype)
    _same(lambda h, dy: jax.vjp(jax_moe.silu_and_mul, h)[1](dy), h, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(512, 2 * 7168 // 2), (3, 5, 2 * 128), (1, 2 * 2048)])
def test_fp8_matches_cpu(rng, dtype, shape):
    _close(functools.partial(jax_moe.silu_and_mul, fp8=True), _h(rng, shape, dtype))


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("zero_fill", [False, True])
def test_counts_match_cpu(rng, fp8, zero_fill):
    e, m, i = 16, 256, 1024
    counts = rng.integers(-3, 80, size=e).astype(np.int32)
    counts[0], counts[1] = m, m + 5
    h = _h(rng, (e, m, 2 * i), jnp.bfloat16)
    valid = np.arange(m)[None, :] < np.clip(counts, 0, m)[:, None]
    h[~valid] = np.nan  # never read
    f = lambda h, c: jax_moe.silu_and_mul(h, counts=c, fp8=fp8, zero_fill=zero_fill)
    gpu, cpu = run_on("cuda", f, h, counts), run_on("cpu", f, h, counts)
    for g, c in zip(jax.tree.leaves(gpu), jax.tree.leaves(cpu)):
        assert_forward_close(g[valid], c[valid])
        if zero_fill:
            np.testing.assert_array_equal(bits(g)[~valid], 0)
    if not fp8:  # backward: masked rows are zero on both
        dy = _h(rng, (e, m, i), jnp.bfloat16)
        _same(lambda h, c, dy: jax.vjp(lambda h: f(h, c), h)[1](dy), h, counts, dy)


def test_vmap_and_unaligned_views_match_cpu(rng):
    # Odd I (no 16-byte vectors) and vmapped leading dims.
    h = _h(rng, (3, 5, 2 * 129), jnp.bfloat16)
    _close(jax.vmap(jax_moe.silu_and_mul), h)
    counts = rng.integers(0, 6, size=(2, 4)).astype(np.int32)
    he = _h(rng, (2, 4, 5, 2 * 256), jnp.float16)
    _close(jax.vmap(lambda h, c: jax_moe.silu_and_mul(h, counts=c, fp8=True)), he, counts)
