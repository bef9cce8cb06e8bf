"""route: top-k expert selection from router logits (pure JAX, jit-friendly).

Spec: shared/spec/dispatch.md section 1b. Covers softmax routing (Mixtral,
Qwen-MoE), sigmoid routing with a score-correction bias and group-limited top-k
(DeepSeek-V3), and softmax with group-limited top-k by group max (DeepSeek-V2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_moe._checks import static_int

__all__ = ["route"]

_SCORINGS = ("softmax", "sigmoid")
_GROUP_SCORES = ("top2_sum", "max")


def _group_mask(selection, n_group, topk_group, group_score):
    """bool [T, E]: experts in the `topk_group` best of `n_group` contiguous groups."""
    t, e = selection.shape
    grouped = selection.reshape(t, n_group, e // n_group)
    if group_score == "top2_sum":
        score = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)
    else:
        score = jnp.max(grouped, axis=-1)
    _, best = jax.lax.top_k(score, topk_group)                        # [T, topk_group]
    picked = jnp.zeros((t, n_group), bool).at[jnp.arange(t)[:, None], best].set(True)
    return jnp.repeat(picked, e // n_group, axis=1)


def route(logits, top_k, *, scoring="softmax", bias=None, n_group=None, topk_group=None,
          group_score="top2_sum", renormalize=False, routed_scaling_factor=1.0):
    """Chooses `top_k` experts per token and their weights.

    Args:
      logits: float `[T, E]` router logits (computed in float32).
      top_k: K, static.
      scoring: "softmax" (over the E experts) or "sigmoid" (per expert).
      bias: optional float `[E]` score-correction bias (DeepSeek-V3), added to
        the scores for selection only; the weights never include it.
      n_group, topk_group: group-limited routing: the E experts form `n_group`
        contiguous groups; the `topk_group` best groups are kept and the top-k
        is taken inside them. Experts of other groups can never be chosen (they
        are masked with -inf, so even all-negative biased scores cannot pick
        them).
      group_score: a group's score: "top2_sum" (sum of its two best biased
        scores, DeepSeek-V3) or "max" (its best biased score, DeepSeek-V2).
      renormalize: divide the chosen weights by their sum (+1e-20, as
        DeepSeek-V3 does, so an all-zero row stays finite).
      routed_scaling_factor: multiplies the weights. The spec applies it to the
        combined output; scaling the weights is the same thing because the
        combine is linear in them.

    Returns:
      (topk_ids int32 `[T, K]`, topk_weights float32 `[T, K]`), experts ordered
      by decreasing biased score (ties: lower expert id first).
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must have a float dtype, got {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [T, E], got shape {logits.shape}")
    num_experts = logits.shape[1]
    top_k = static_int(top_k, "top_k", 1, num_experts)
    if scoring not in _SCORINGS:
        raise ValueError(f"scoring must be one of {_SCORINGS}, got {scoring!r}")
    if group_score not in _GROUP_SCORES:
        raise ValueError(f"group_score must be one of {_GROUP_SCORES}, got {group_score!r}")

    logits = logits.astype(jnp.float32)
    scores = jax.nn.softmax(logits, axis=-1) if scoring == "softmax" else jax.nn.sigmoid(logits)
    selection = scores
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (num_experts,):
            raise ValueError(f"bias must have shape ({num_experts},), got {bias.shape}")
        selection = scores + bias.astype(jnp.float32)

    if (n_group is None) != (topk_group is None):
        raise ValueError("n_group and topk_group must be given together")
    if n_group is not None:
        n_group = static_int(n_group, "n_group", 1, num_experts)
        if num_experts % n_group:
            raise ValueError(f"n_group={n_group} must divide the number of experts {num_experts}")
        topk_group = static_int(topk_group, "topk_group", 1, n_group)
        group_size = num_experts // n_group
        if group_score == "top2_sum" and group_size < 2:
            raise ValueError("group_score='top2_sum' needs at least 2 experts per group")
        if top_k > topk_group * group_size:
            raise ValueError(f"top_k={top_k} exceeds the {topk_group * group_size} experts "
                             f"of topk_group={topk_group} groups")
        keep = _group_mask(selection, n_group, topk_group, group_score)
        selection = jnp.where(keep, selection, -jnp.inf)

    _, ids = jax.lax.top_k(selection, top_k)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    if renormalize:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    weights = weights * jnp.float32(routed_scaling_factor)
    return ids.astype(jnp.int32), weights
