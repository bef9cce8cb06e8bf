"""Pure-JAX silu_and_mul and the FP8 format of shared/spec/dispatch.md section 3.

These are the formulas the kernels in cc/silu/ implement; the tests compare the
kernels' bytes to them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

FP8_GROUP = 128
FP8_MAX = 448.0
FP8_MIN_AMAX = 1e-4


def _row_mask(x, counts):
    """Zeroes rows m >= clip(counts[e], 0, M) of x [E, M, ...]."""
    if counts is None:
        return x
    m = jax.lax.broadcasted_iota(jnp.int32, x.shape, 1)
    limit = jnp.clip(counts, 0, x.shape[1]).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(m < limit, x, jnp.zeros((), x.dtype))


def silu_and_mul_f32(h, counts=None):
    """silu(g) * u in float32 for h = [..., 2I] = [g | u]; with counts (h [E, M, 2I]),
    rows past the count are zero."""
    i = h.shape[-1] // 2
    g = h[..., :i].astype(jnp.float32)
    u = h[..., i:].astype(jnp.float32)
    return _row_mask(jax.nn.silu(g) * u, counts)


def silu_and_mul(h, counts=None):
    """silu_and_mul_f32 rounded once to h.dtype."""
    return silu_and_mul_f32(h, counts).astype(h.dtype)


def fp8_quantize(x):
    """x [..., H] (H a multiple of 128) -> (q float8_e4m3fn [..., H], scales float32 [..., H/128]).

    Per 128-channel group: amax = max(max|x|, 1e-4); q = e4m3(clip(x * (448 / amax),
    -448, 448)); scale = amax / 448. The multiplier 448/amax is rounded first, as
    cc/common/fp8.h does.
    """
    h = x.shape[-1]
    if h % FP8_GROUP:
        raise ValueError(f"fp8 needs the last dim to be a multiple of {FP8_GROUP}, got {h}")
    xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (h // FP8_GROUP, FP8_GROUP))
    amax = jnp.maximum(jnp.max(jnp.abs(xg), axis=-1, keepdims=True), FP8_MIN_AMAX)
    q = jnp.clip(xg * (FP8_MAX / amax), -FP8_MAX, FP8_MAX).astype(jnp.float8_e4m3fn)
    # XLA rewrites x / broadcast(c) into x * (1 / c), which is not amax / 448 in
    # float32 (half the values differ by an ulp); a full-size divisor behind a
    # barrier keeps the true division that the spec (and the kernels) compute.
    scale = amax / jax.lax.optimization_barrier(jnp.full_like(amax, FP8_MAX))
    return q.reshape(x.shape), scale[..., 0]


def fp8_dequantize(q, scales, dtype=jnp.float32):
    """q * scale per 128-channel group, as `dtype`."""
    h = q.shape[-1]
    qg = q.astype(jnp.float32).reshape(q.shape[:-1] + (h // FP8_GROUP, FP8_GROUP))
    return (qg * scales[..., None]).reshape(q.shape).astype(dtype)


def silu_and_mul_fp8(h, counts=None):
    """FP8 quantization of the float32 activation (not of a rounded bf16/f16 one)."""
    return fp8_quantize(silu_and_mul_f32(h, counts))
