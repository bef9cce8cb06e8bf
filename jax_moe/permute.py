"""permute / unpermute: token rows to expert-grouped rows and back.

Spec: shared/spec/dispatch.md section 1. Layers: public API (argument checks,
this file) -> primitives in `_permute_prims` (abstract eval, batching, AD,
sharding) -> FFI lowering to `jax_moe_{permute_plan,permute,unpermute,
unpermute_wgrad}_{cpu,cuda}` (cc/permute/). The grouping is
`moe_align_block_size`'s.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _compat
from jax_moe._permute_prims import permute_p, permute_plan_p, unpermute_p
from jax_moe.align import Alignment, moe_align_block_size

__all__ = ["PermutePlan", "permute", "unpermute"]

_ROW_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


class PermutePlan(NamedTuple):
    """Where every route went (all int32; a pytree, so it crosses jit/vmap).

    sorted_token_ids: [P] route `t*K + k` held by each row of x_sorted; `T*K`
      (the sentinel) in rows that hold no route: block padding and every row
      from num_tokens_post_pad on (moe_align_block_size's output).
    expert_ids: [ceil(P / block_size)] local expert of each row block, -1 for
      unused blocks.
    num_tokens_post_pad: [1] rows in use (a multiple of block_size).
    group_sizes: [L] rows per local expert, padding included. Groups tile rows
      [0, num_tokens_post_pad) in expert order; the tail rows
      [num_tokens_post_pad, P) belong to no group, so sum(group_sizes) <= P as
      `jax.lax.ragged_dot` requires (it leaves those rows' outputs zero).
    route_rows: [T, K] row of x_sorted holding route (t, k); -1 if dropped.

    The static sizes are read from shapes, not stored as fields (a field would
    become a traced leaf across jit): see num_tokens, topk, numel, num_rows.
    """
    sorted_token_ids: jax.Array
    expert_ids: jax.Array
    num_tokens_post_pad: jax.Array
    group_sizes: jax.Array
    route_rows: jax.Array

    @property
    def num_tokens(self) -> int:
        """T."""
        return self.route_rows.shape[-2]

    @property
    def topk(self) -> int:
        """K."""
        return self.route_rows.shape[-1]

    @property
    def numel(self) -> int:
        """Routes, T*K (also the sentinel of sorted_token_ids)."""
        return self.num_tokens * self.topk

    @property
    def num_rows(self) -> int:
        """P: rows of x_sorted."""
        return self.sorted_token_ids.shape[-1]

    @property
    def alignment(self) -> Alignment:
        """The moe_align_block_size outputs this plan was built from."""
        return Alignment(self.sorted_token_ids, self.expert_ids, self.num_tokens_post_pad)


def _match_varying(*arrays):
    """Casts every array to the union of their shard_map varying axes (no-op
    outside shard_map). Our primitives type results like their first operand,
    and a replicated operand mixed with varying ones must be pcast so that its
    cotangent is summed over devices (pcast transposes to psum)."""
    axes = [_compat.varying_axes(a) for a in arrays]
    union = frozenset().union(*axes)
    out = []
    for a, have in zip(arrays, axes):
        missing = tuple(sorted(union - have))
        out.append(jax.lax.pcast(a, missing, to="varying") if missing else a)
    return out


def _check_rows(x, name):
    x = jnp.asarray(x)
    if x.dtype not in _ROW_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, H], got shape {x.shape} "
                         "(use jax.vmap for batches)")
    return x


def _no_weights():
    # Placeholder operand of the unweighted calls: float32 [0].
    return jnp.zeros((0,), jnp.float32)


def permute(x, topk_ids, num_experts, *, block_size=1, expert_map=None,
            num_local_experts=None) -> tuple[jax.Array, PermutePlan]:
    """Copies token rows into expert-grouped order.

    Args:
      x: float32/bfloat16/float16 `[T, H]` token rows.
      topk_ids: integer `[T, K]` expert of each route (t, k). Ids outside
        [0, num_experts), and ids that expert_map sends to -1, are dropped
        routes: they get no row and contribute nothing to unpermute.
      num_experts: E, static.
      block_size: static; every expert's rows are padded to a multiple of it
        (1: no padding). Padding rows are zero.
      expert_map: optional int32 `[E]` global -> local expert id, -1 for experts
        elsewhere (expert parallelism); groups are then local experts.
      num_local_experts: L, static, with expert_map (default E).

    Returns:
      (x_sorted, plan): x_sorted `[P, H]` of x's dtype with row j equal to
      `x[plan.sorted_token_ids[j] // K]`, zero where that slot holds the
      sentinel, P = T*K + min(T*K, L)*(block_size - 1); plan a PermutePlan.
      Differentiable in x (the cotangent is an unweighted unpermute).
    """
    x = _check_rows(x, "x")
    topk_ids = jnp.asarray(topk_ids)
    if not jnp.issubdtype(topk_ids.dtype, jnp.integer):
        raise TypeError(f"topk_ids must have an integer dtype, got {topk_ids.dtype}")
    if topk_ids.ndim != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T, K] with T = x.shape[0] = {x.shape[0]}, "
                         f"got shape {topk_ids.shape}")
    if expert_map is None:
        x, topk_ids = _match_varying(x, topk_ids)
    else:
        x, topk_ids, expert_map = _match_varying(x, topk_ids, jnp.asarray(expert_map))
    # Validates num_experts, block_size, expert_map and num_local_experts.
    align = moe_align_block_size(topk_ids, num_experts, block_size, expert_map=expert_map,
                                 num_local_experts=num_local_experts)
    block_size = operator.index(block_size)
    num_tokens, topk = topk_ids.shape
    num_local = num_experts if num_local_experts is None else operator.index(num_local_experts)
    route_rows, group_sizes = permute_plan_p.bind(
        align.sorted_token_ids, align.expert_ids, num_batch_dims=0, block_size=block_size,
        num_tokens=num_tokens, topk=topk, num_local_experts=num_local)
    plan = PermutePlan(align.sorted_token_ids, align.expert_ids, align.num_tokens_post_pad,
                       group_sizes, route_rows)
    none = _match_varying(_no_weights(), x)[0]
    x_sorted = permute_p.bind(x, none, plan.sorted_token_ids, plan.route_rows,
                              num_batch_dims=0, weighted=False)
    return x_sorted, plan


def unpermute(y_sorted, plan: PermutePlan, topk_weights) -> jax.Array:
    """Weighted sum of every token's expert rows: the inverse of permute.

    Args:
      y_sorted: float32/bfloat16/float16 `[P, H]` rows in plan order (e.g.
        expert outputs of permute's x_sorted).
      plan: the PermutePlan from permute.
      topk_weights: float `[T, K]` weight of each route (cast to float32).

    Returns:
      y `[T, H]` of y_sorted's dtype: `y[t] = sum_k w[t, k] *
      y_sorted[plan.route_rows[t, k]]` over the routes that were not dropped,
      summed in float32 in increasing k (deterministic), 0 for tokens without
      routes. Differentiable in y_sorted (a permute of g*w) and topk_weights
      (`<g[t], y_sorted[row(t, k)]>`).
    """
    if not isinstance(plan, PermutePlan):
        raise TypeError(f"plan must be the PermutePlan returned by permute, got "
                        f"{type(plan).__name__}")
    y_sorted = _check_rows(y_sorted, "y_sorted")
    if y_sorted.shape[0] != plan.num_rows:
        raise ValueError(f"y_sorted must have plan.num_rows = {plan.num_rows} rows, got "
                         f"shape {y_sorted.shape}")
    w = jnp.asarray(topk_weights)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"topk_weights must have a float dtype, got {w.dtype}")
    if w.shape != plan.route_rows.shape:
        raise ValueError(f"topk_weights shape {w.shape} differs from the routes' "
                         f"{plan.route_rows.shape}")
    w = w.astype(jnp.float32)
    y_sorted, w, sorted_ids, route_rows = _match_varying(
        y_sorted, w, plan.sorted_token_ids, plan.route_rows)
    return unpermute_p.bind(y_sorted, w, sorted_ids, route_rows, num_batch_dims=0,
                            weighted=True)
