"""MoE MLP in plain JAX, no custom calls.

moe_mlp_dense: per-token reference of the tests (float32, weights gathered per
  route).
moe_mlp_argsort: the best plain-JAX formulation of the same layer, MaxText
  style (argsort permute, ragged_dot, gather combine): the baseline that
  `examples/moe_layer.py` times jax_moe.moe_mlp against.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_moe.references.permute import permute_argsort, unpermute_gather


def silu_and_mul(h):
    g, u = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return (jax.nn.silu(g) * u).astype(h.dtype)


def moe_mlp_dense(x, topk_ids, topk_weights, w_gate_up, w_down, *, shared_experts=None,
                  routed_scaling_factor=1.0, precision=jax.lax.Precision.HIGHEST):
    """y[t] = sum_k w[t,k] FFN_{ids[t,k]}(x[t]) over valid ids, in float32."""
    num_experts = w_gate_up.shape[0]
    valid = (topk_ids >= 0) & (topk_ids < num_experts)
    ids = jnp.where(valid, topk_ids, 0)
    xf = x.astype(jnp.float32)
    h = jnp.einsum("th,tkhf->tkf", xf, w_gate_up.astype(jnp.float32)[ids], precision=precision)
    a = silu_and_mul(h)
    o = jnp.einsum("tkf,tkfh->tkh", a, w_down.astype(jnp.float32)[ids], precision=precision)
    w = jnp.where(valid, topk_weights, 0).astype(jnp.float32)
    y = jnp.einsum("tkh,tk->th", o, w, precision=precision) * routed_scaling_factor
    if shared_experts is not None:
        sgu, sd = shared_experts
        y = y + jnp.dot(silu_and_mul(jnp.dot(xf, sgu.astype(jnp.float32), precision=precision)),
                        sd.astype(jnp.float32), precision=precision)
    return y.astype(x.dtype)


def moe_mlp_argsort(x, topk_ids, topk_weights, w_gate_up, w_down, *, shared_experts=None,
                    routed_scaling_factor=1.0, precision=None):
    """jax_moe.moe_mlp's layer (block_size 1) from argsort, jnp.take and ragged_dot."""
    num_experts = w_gate_up.shape[0]
    x_sorted, group_sizes, inverse = permute_argsort(x, topk_ids, num_experts)
    h = jax.lax.ragged_dot(x_sorted, w_gate_up.astype(x.dtype), group_sizes, precision=precision)
    o = jax.lax.ragged_dot(silu_and_mul(h), w_down.astype(x.dtype), group_sizes,
                           precision=precision)
    valid = (topk_ids >= 0) & (topk_ids < num_experts)
    y = unpermute_gather(o, inverse, jnp.where(valid, topk_weights, 0))
    if routed_scaling_factor != 1.0:
        y = (y.astype(jnp.float32) * routed_scaling_factor).astype(x.dtype)
    if shared_experts is not None:
        sgu, sd = shared_experts
        hs = jnp.dot(x, sgu.astype(x.dtype), precision=precision)
        y = y + jnp.dot(silu_and_mul(hs), sd.astype(x.dtype), precision=precision)
    return y
