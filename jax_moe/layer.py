"""The MoE MLP layer that model code calls (shared/spec/dispatch.md section 1b).

permute -> ragged_dot (gate|up) -> silu_and_mul -> ragged_dot (down) -> unpermute,
plus optional shared experts. Differentiable end to end: the permute family and
silu_and_mul have their own backward kernels; ragged_dot is JAX's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_moe.permute import permute, unpermute
from jax_moe.silu import silu_and_mul

__all__ = ["moe_mlp"]


def _check(x, w_gate_up, w_down):
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H], got shape {x.shape}")
    if w_gate_up.ndim != 3 or w_gate_up.shape[1] != x.shape[1] or w_gate_up.shape[2] % 2:
        raise ValueError(f"w_gate_up must be [E, H, 2I] with H={x.shape[1]}, got {w_gate_up.shape}")
    e, _, two_i = w_gate_up.shape
    if w_down.shape != (e, two_i // 2, x.shape[1]):
        raise ValueError(f"w_down must be [E, I, H] = {(e, two_i // 2, x.shape[1])}, got {w_down.shape}")


def moe_mlp(x, topk_ids, topk_weights, w_gate_up, w_down, *, block_size=1,
            expert_map=None, num_local_experts=None, shared_experts=None,
            routed_scaling_factor=1.0, precision=None):
    """Routed expert MLP: y[t] = sum_k w[t,k] * FFN_{ids[t,k]}(x[t]) (+ shared).

    Args:
      x: `[T, H]` tokens (float32 / bfloat16 / float16).
      topk_ids: int `[T, K]` expert of each route; ids outside [0, E) (or that
        `expert_map` sends to -1) are dropped routes.
      topk_weights: float `[T, K]` routing weights.
      w_gate_up: `[L, H, 2I]` per local expert: gate in the first I columns, up in
        the last I. L = E, or num_local_experts with expert_map.
      w_down: `[L, I, H]`.
      block_size: rows per expert group are padded to this (GEMM tiling).
      expert_map, num_local_experts: as in `moe_align_block_size`.
      shared_experts: optional `(w_gate_up [H, 2Is], w_down [Is, H])` applied to
        every token and added to the output (DeepSeek style).
      routed_scaling_factor: multiplies the routed output (not the shared one).
      precision: passed to `jax.lax.ragged_dot`.

    Returns:
      `[T, H]` in x.dtype.
    """
    _check(x, w_gate_up, w_down)
    num_experts = w_gate_up.shape[0] if expert_map is None else expert_map.shape[0]
    if expert_map is not None and num_local_experts is None:
        num_local_experts = w_gate_up.shape[0]
    x_sorted, plan = permute(x, topk_ids, num_experts, block_size=block_size,
                             expert_map=expert_map, num_local_experts=num_local_experts)
    h = jax.lax.ragged_dot(x_sorted, w_gate_up.astype(x.dtype), plan.group_sizes,
                           precision=precision)
    a = silu_and_mul(h)
    o = jax.lax.ragged_dot(a, w_down.astype(x.dtype), plan.group_sizes, precision=precision)
    y = unpermute(o, plan, topk_weights)
    if routed_scaling_factor != 1.0:
        y = (y.astype(jnp.float32) * routed_scaling_factor).astype(x.dtype)
    if shared_experts is not None:
        sw_gate_up, sw_down = shared_experts
        hs = jnp.dot(x, sw_gate_up.astype(x.dtype), precision=precision)
        y = y + jnp.dot(silu_and_mul(hs), sw_down.astype(x.dtype), precision=precision)
    return y
