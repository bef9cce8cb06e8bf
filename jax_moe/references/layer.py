"""Dense per-token MoE MLP in plain JAX (test reference, no custom calls)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
