"""moe_align_block_size: group (token, slot) routes by expert, padded to blocks.

Spec: shared/spec/align.md. Layers, in order: public API (argument checks) ->
primitive `align_p` (abstract eval, batching) -> FFI lowering to
`jax_moe_align_{cpu,cuda}` (cc/align/).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, xla

from jax_moe import _avals, _compat, _ffi
from jax_moe._checks import static_int

__all__ = ["Alignment", "moe_align_block_size", "align_shapes"]


class Alignment(NamedTuple):
    """Routes grouped by expert, padded to blocks (all int32).

    sorted_token_ids: [P] flat route index `t*K + k` per slot; `numel` in slots
      that hold no route (block padding and everything from num_tokens_post_pad).
    expert_ids: [ceil(P / block_size)] local expert owning each block; -1 after
      the last used block.
    num_tokens_post_pad: [1] used slots, a multiple of block_size.
    """
    sorted_token_ids: jax.Array
    expert_ids: jax.Array
    num_tokens_post_pad: jax.Array


def align_shapes(numel: int, num_local_experts: int, block_size: int,
                 pad_sorted_ids: bool = False) -> tuple[int, int]:
    """(P, number of blocks) for `numel` routes: the static output sizes."""
    p = numel + min(numel, num_local_experts) * (block_size - 1)
    if pad_sorted_ids:
        p = -(-p // block_size) * block_size
    return p, -(-p // block_size)


# --- primitive -------------------------------------------------------------

align_p = Primitive("jax_moe_align")
align_p.multiple_results = True
align_p.def_impl(lambda *args, **params: xla.apply_primitive(align_p, *args, **params))


def _abstract_eval(ids, expert_map, *, num_batch_dims, num_experts,
                   num_local_experts, block_size, pad_sorted_ids):
    del num_experts
    batch = ids.shape[:num_batch_dims]
    numel = math.prod(ids.shape[num_batch_dims:])
    p, nblocks = align_shapes(numel, num_local_experts, block_size, pad_sorted_ids)
    out = lambda *shape: _avals.derived(ids, batch + shape, np.int32,
                                        keep_leading=num_batch_dims)
    return out(p), out(nblocks), out(1)


align_p.def_abstract_eval(_abstract_eval)


def _batch_rule(args, dims, **params):
    (ids, expert_map), _ = _avals.to_front(args, dims)
    params = dict(params, num_batch_dims=params["num_batch_dims"] + 1)
    return align_p.bind(ids, expert_map, **params), (0, 0, 0)


batching.primitive_batchers[align_p] = _batch_rule


def _sharding_rule(avals_in, avals_out, *, num_batch_dims, **_):
    # Batch dims pass through; the routes of one problem must sit on one device.
    ids, emap = avals_in
    batch = " ".join(f"b{i}" for i in range(num_batch_dims))
    routes = [f"r{i}" for i in range(ids.ndim - num_batch_dims)]
    results = [f"o{i}" for i in range(len(avals_out))]
    lhs = f"{batch} {' '.join(routes)}, {batch} m"
    rhs = ", ".join(f"{batch} {r}" for r in results)
    return _compat.sdy_rule(f"{lhs} -> {rhs}", need_replication=(*routes, "m", *results))


def _cuda_workspace(avals_in, *, num_batch_dims, num_local_experts, **_):
    from jax_moe import _align_cuda_plan
    ids = avals_in[0]
    numel = math.prod(ids.shape[num_batch_dims:])
    words = _align_cuda_plan.workspace_words(numel, num_local_experts)
    return [_avals.derived(ids, ids.shape[:num_batch_dims] + (words,), np.int32,
                           keep_leading=num_batch_dims)]


_ffi.batch_partitionable("jax_moe_align")
_ffi.register_lowerings(align_p, "jax_moe_align", sharding_rule=_sharding_rule,
                        workspace={"cuda": _cuda_workspace})


# --- public API ------------------------------------------------------------

def moe_align_block_size(topk_ids, num_experts, block_size, topk=None, *,
                         expert_map=None, num_local_experts=None,
                         pad_sorted_ids=False) -> Alignment:
    """Groups routes by expert, each group padded to a multiple of block_size.

    Args:
      topk_ids: integer `[T, K]` (or flat `[T*K]`) expert id of every route
        (token t, slot k); route i = t*K + k. Ids outside [0, num_experts), and
        ids that `expert_map` sends to -1, are dropped routes (not an error).
      num_experts: E, static.
      block_size: bs >= 1, static: rows per block of the consuming GEMM.
      topk: optional K; must agree with topk_ids' shape when given.
      expert_map: optional int32 `[E]`, global -> local expert id, -1 for
        experts on other ranks; outputs then speak in local ids.
      num_local_experts: L, static, with expert_map (default E).
      pad_sorted_ids: round P up to a multiple of block_size.

    Returns:
      Alignment(sorted_token_ids int32[P], expert_ids int32[ceil(P/bs)],
      num_tokens_post_pad int32[1]) with P = numel + min(numel, L)*(bs-1).
      Deterministic: routes of one expert appear in ascending route index.
    """
    topk_ids = jnp.asarray(topk_ids)
    if not jnp.issubdtype(topk_ids.dtype, jnp.integer):
        raise TypeError(f"topk_ids must have an integer dtype, got {topk_ids.dtype}")
    if topk_ids.ndim not in (1, 2):
        raise ValueError(f"topk_ids must be [T, K] or flat [T*K], got shape {topk_ids.shape}")
    num_experts = static_int(num_experts, "num_experts", 1)
    block_size = static_int(block_size, "block_size", 1)
    if topk is not None:
        topk = static_int(topk, "topk", 1)
        if topk_ids.ndim == 2 and topk_ids.shape[-1] != topk:
            raise ValueError(f"topk={topk} disagrees with topk_ids shape {topk_ids.shape}")
        if topk_ids.ndim == 1 and topk_ids.size % topk:
            raise ValueError(f"topk={topk} does not divide topk_ids size {topk_ids.size}")
    if not isinstance(pad_sorted_ids, (bool, np.bool_)):
        raise TypeError("pad_sorted_ids must be a Python bool")

    if expert_map is None:
        if num_local_experts is not None:
            raise ValueError("num_local_experts needs expert_map")
        num_local = num_experts
        expert_map = jnp.zeros((0,), jnp.int32)
    else:
        expert_map = jnp.asarray(expert_map)
        if expert_map.dtype != jnp.int32:
            raise TypeError(f"expert_map must be int32, got {expert_map.dtype}")
        if expert_map.shape != (num_experts,):
            raise ValueError(f"expert_map must have shape ({num_experts},), got {expert_map.shape}")
        num_local = num_experts if num_local_experts is None else static_int(
            num_local_experts, "num_local_experts", 1)

    p, _ = align_shapes(topk_ids.size, num_local, block_size, bool(pad_sorted_ids))
    if p >= 2**31:
        raise ValueError(f"topk_ids too large: the padded length {p} does not fit in int32")
    outs = align_p.bind(topk_ids, expert_map, num_batch_dims=0, num_experts=num_experts,
                        num_local_experts=num_local, block_size=block_size,
                        pad_sorted_ids=bool(pad_sorted_ids))
    return Alignment(*outs)
