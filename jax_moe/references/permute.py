"""Pure-JAX permute / unpermute (MaxText-style; benchmark baselines).

permute_argsort: stable argsort of expert ids, then a row gather (jnp.take),
  no block padding (block_size = 1 semantics).
unpermute_gather: gather each route's row back, weight, sum over k in float32.
"""
from __future__ import annotations

import jax.numpy as jnp


def permute_argsort(x, topk_ids, num_experts):
    flat = topk_ids.reshape(-1)
    k = topk_ids.shape[-1]
    lane = jnp.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    order = jnp.argsort(lane, stable=True)
    x_sorted = jnp.take(x, order // k, axis=0)
    group_sizes = jnp.zeros((num_experts + 1,), jnp.int32).at[lane].add(1)[:num_experts]
    inverse = jnp.argsort(order).reshape(topk_ids.shape)
    return x_sorted, group_sizes, inverse


def unpermute_gather(y_sorted, inverse, topk_weights):
    rows = jnp.take(y_sorted, inverse, axis=0).astype(jnp.float32)  # [T, K, H]
    y = jnp.einsum("tkh,tk->th", rows, topk_weights.astype(jnp.float32))
    return y.astype(y_sorted.dtype)
