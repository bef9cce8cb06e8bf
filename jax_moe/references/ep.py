"""Single-device references for expert parallelism (shared/spec/dispatch.md 2-4).

`moe_reference` is the layer an EP layer must equal: every route (t, k) with a
valid id e contributes `w[t, k] * expert_e(x[t])`, summed over k in float32.
`swiglu_experts` / `swiglu_local` are the expert FFN used by the tests and the
example in both the reference and the EP layouts. `quantize_fp8` is spec
section 3 in plain JAX.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

FP8_GROUP = 128


def quantize_fp8(x):
    """Rows `[..., H]` -> (float8_e4m3fn `[..., H]`, float32 scales `[..., H/128]`)."""
    g = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // FP8_GROUP, FP8_GROUP))
    amax = jnp.maximum(jnp.max(jnp.abs(g), axis=-1, keepdims=True), 1e-4)
    q = jnp.clip(g * (448.0 / amax), -448.0, 448.0).astype(jnp.float8_e4m3fn)
    return q.reshape(x.shape), (amax / 448.0)[..., 0]


def dequantize_fp8(q, scales, dtype=jnp.float32):
    """Inverse of `quantize_fp8` up to rounding: `q * scale` per 128 channels."""
    s = jnp.repeat(scales.astype(jnp.float32), FP8_GROUP, axis=-1)
    return (q.astype(jnp.float32) * s).astype(dtype)


def swiglu(h, w_gate, w_up, w_down):
    """One expert: `(silu(h @ w_gate) * (h @ w_up)) @ w_down`, float32 math."""
    f32 = jnp.float32
    g = h.astype(f32) @ w_gate.astype(f32)
    u = h.astype(f32) @ w_up.astype(f32)
    return (jax.nn.silu(g) * u) @ w_down.astype(f32)


def swiglu_experts(x, params):
    """Every expert on every row: `[E, T, H]` (dense; for small references)."""
    return jax.vmap(lambda wg, wu, wd: swiglu(x, wg, wu, wd))(*params)


def swiglu_grouped(rows, group_sizes, params):
    """Expert-grouped rows `[C, H]` (normal mode) through their experts with
    `jax.lax.ragged_dot`; rows past `sum(group_sizes)` give zeros."""
    w_gate, w_up, w_down = params
    f32 = jnp.float32
    rows = rows.astype(f32)
    g = jax.lax.ragged_dot(rows, w_gate.astype(f32), group_sizes)
    u = jax.lax.ragged_dot(rows, w_up.astype(f32), group_sizes)
    return jax.lax.ragged_dot(jax.nn.silu(g) * u, w_down.astype(f32), group_sizes)


def swiglu_batched(rows, params):
    """Per-expert rows `[El, n, H]` (low_latency mode) through their experts."""
    return jax.vmap(swiglu)(rows, *params)


def moe_reference(x, topk_ids, topk_weights, params, *, num_experts):
    """The single-device MoE layer: `out[t] = sum_k w[t,k] * expert_{ids[t,k]}(x[t])`
    over valid routes (ids in [0, E)), in float32, cast to x's dtype."""
    y = swiglu_experts(x, params)                                  # [E, T, H]
    valid = (topk_ids >= 0) & (topk_ids < num_experts)
    e = jnp.where(valid, topk_ids, 0)
    picked = jnp.take_along_axis(y, e.T[:, :, None], axis=0)      # [K, T, H]
    w = jnp.where(valid, topk_weights.astype(jnp.float32), 0.0).T[:, :, None]
    return jnp.sum(w * picked, axis=0).astype(x.dtype)
