"""silu_and_mul on CUDA equals the CPU backend bit for bit (same float32 math,
same FP8 encoder: cc/silu/silu_math.h, cc/common/fp8.h). Runs only with a CUDA backend."""
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


def _h(rng, shape, dtype):
    return np.asarray(rng.normal(size=shape) * np.exp(rng.normal(size=shape[:-1] + (1,))),
                      np.float32).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4096, 2 * 2048), (3, 7, 2 * 1408), (33, 2 * 7), (5, 2)])
def test_forward_and_backward_match_cpu(rng, dtype, shape):
    h = _h(rng, shape, dtype)
    _same(jax_moe.silu_and_mul, h)
    dy = _h(rng, shape[:-1] + (shape[-1] // 2,), dtype)
    _same(lambda h, dy: jax.vjp(jax_moe.silu_and_mul, h)[1](dy), h, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(512, 2 * 7168 // 2), (3, 5, 2 * 128), (1, 2 * 2048)])
def test_fp8_matches_cpu(rng, dtype, shape):
    _same(functools.partial(jax_moe.silu_and_mul, fp8=True), _h(rng, shape, dtype))


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
        np.testing.assert_array_equal(bits(g)[valid], bits(c)[valid])
        if zero_fill:
            np.testing.assert_array_equal(bits(g)[~valid], 0)
    if not fp8:  # backward: masked rows are zero on both
        dy = _h(rng, (e, m, i), jnp.bfloat16)
        _same(lambda h, c, dy: jax.vjp(lambda h: f(h, c), h)[1](dy), h, counts, dy)


def test_vmap_and_unaligned_views_match_cpu(rng):
    # Odd I (no 16-byte vectors) and vmapped leading dims.
    h = _h(rng, (3, 5, 2 * 129), jnp.bfloat16)
    _same(jax.vmap(jax_moe.silu_and_mul), h)
    counts = rng.integers(0, 6, size=(2, 4)).astype(np.int32)
    he = _h(rng, (2, 4, 5, 2 * 256), jnp.float16)
    _same(jax.vmap(lambda h, c: jax_moe.silu_and_mul(h, counts=c, fp8=True)), he, counts)
