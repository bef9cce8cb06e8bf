"""Pure-JAX moe_align_block_size, two ways (benchmark baselines).

Both return exactly the spec's outputs (shared/spec/align.md) without expert_map:
- align_argsort: stable argsort of expert lanes, then a scatter of route ids.
- align_onehot: one-hot [numel, E] + cumsum ranks (no sort; O(numel * E) memory).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_moe.align import align_shapes


def _lanes(topk_ids, num_experts):
    flat = topk_ids.reshape(-1)
    valid = (flat >= 0) & (flat < num_experts)
    return jnp.where(valid, flat, num_experts).astype(jnp.int32)


def _layout(counts, block_size, numel, p, nblocks, dest_of_route, route_ids):
    """Outputs from per-expert counts and each route's destination slot."""
    padded = (counts + block_size - 1) // block_size * block_size
    ends = jnp.cumsum(padded)
    total = ends[-1] if counts.size else jnp.int32(0)
    sorted_ids = jnp.full((p,), numel, jnp.int32).at[dest_of_route].set(
        route_ids, mode="drop", unique_indices=True)
    block_start = jnp.arange(nblocks, dtype=jnp.int32) * block_size
    owner = jnp.searchsorted(ends, block_start, side="right").astype(jnp.int32)
    expert_ids = jnp.where(block_start < total, owner, -1)
    return sorted_ids, expert_ids, jnp.reshape(total, (1,)).astype(jnp.int32)


def align_argsort(topk_ids, num_experts, block_size, pad_sorted_ids=False):
    numel = topk_ids.size
    p, nblocks = align_shapes(numel, num_experts, block_size, pad_sorted_ids)
    lane = _lanes(topk_ids, num_experts)
    order = jnp.argsort(lane, stable=True).astype(jnp.int32)
    counts = jnp.zeros((num_experts + 1,), jnp.int32).at[lane].add(1)[:num_experts]
    padded = (counts + block_size - 1) // block_size * block_size
    pstart = jnp.cumsum(padded) - padded
    ustart = jnp.cumsum(counts) - counts
    sorted_lane = lane[order]
    e = jnp.minimum(sorted_lane, num_experts - 1)
    rank = jnp.arange(numel, dtype=jnp.int32) - ustart[e]
    dest = jnp.where(sorted_lane < num_experts, pstart[e] + rank, p)
    return _layout(counts, block_size, numel, p, nblocks, dest, order)


def align_onehot(topk_ids, num_experts, block_size, pad_sorted_ids=False):
    numel = topk_ids.size
    p, nblocks = align_shapes(numel, num_experts, block_size, pad_sorted_ids)
    lane = _lanes(topk_ids, num_experts)
    onehot = (lane[:, None] == jnp.arange(num_experts, dtype=jnp.int32)).astype(jnp.int32)
    inclusive = jnp.cumsum(onehot, axis=0)
    counts = inclusive[-1] if numel else jnp.zeros((num_experts,), jnp.int32)
    padded = (counts + block_size - 1) // block_size * block_size
    pstart = jnp.cumsum(padded) - padded
    e = jnp.minimum(lane, num_experts - 1)
    rank = jnp.take_along_axis(inclusive, e[:, None], axis=1)[:, 0] - 1
    dest = jnp.where(lane < num_experts, pstart[e] + rank, p)
    return _layout(counts, block_size, numel, p, nblocks, dest,
                   jnp.arange(numel, dtype=jnp.int32))
