"""Expert parallelism inside `jax.shard_map`: `ep_dispatch` / `ep_combine`.

Spec: shared/spec/dispatch.md sections 2-3. Expert e lives on rank e // El as
local expert e % El (R ranks on the mesh axis `axis_name`, El = E / R).

Data path (T tokens per rank, K routes, M = R*T, N expert-side rows):
  dispatch: ep_layout (per-rank de-dup plan) -> ep_gather / ep_pack_fp8 (send
    buffer [R, T, H], token slots in ascending order) -> all_to_all -> ep_route
    (expert-side plan) -> ep_gather (expansion to the mode's layout).
  combine: ep_combine (weighted sum of a token's local experts, on the
    expert's rank) -> all_to_all -> ep_combine (sum over ranks, fixed order).
Every rank sends at most T rows to every rank (a token goes to a rank once), so
the dense all_to_all with T rows per destination is dropless. Optionally
(GPU) the row exchanges use ragged_all_to_all and send only the used slots.

The custom calls are in jax_moe/_ep_kernels.py; AD is by `jax.custom_vjp` on the
row movement (dispatch backward = unweighted combine, combine backward =
dispatch of the cotangent + weight gradient); weights travel as float32 through
plain JAX ops (gather, all_to_all) and are differentiated by JAX.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _compat
from jax_moe import _ep_kernels as K_
from jax_moe._checks import static_int

__all__ = ["EpHandle", "EpRecv", "ep_combine", "ep_dispatch", "ep_recv_rows"]

_ROW_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


class EpRecv(NamedTuple):
    """What a rank receives from `ep_dispatch`.

    x: low_latency: `[El, R*T, H]`, expert e's valid rows are `[0, counts[e])`
      ordered by (source rank, source token), the rest zero. normal: `[C, H]`
      grouped by local expert (`group_sizes` rows each, back to back), rows past
      `sum(group_sizes)` zero. With fp8: a pair `(q float8_e4m3fn [..., H],
      scales float32 [..., H/128])`, `x ~= q * scales` per 128 channels.
    group_sizes: int32 `[El]` rows of each local expert in `x` (for
      `jax.lax.ragged_dot` in normal mode).
    counts: int32 `[El]` (token, local expert) pairs routed here, before the
      capacity; equals group_sizes unless routes were dropped.
    dropped: int32 `[]` rows dropped for capacity (normal mode), 0 otherwise.
    """
    x: Any
    group_sizes: jax.Array
    counts: jax.Array
    dropped: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["send_rows", "token_index", "recv_index", "row_src", "send_sizes",
                 "recv_sizes", "weights"],
    meta_fields=["axis_name", "num_ranks", "num_tokens", "mode", "num_rows", "ragged",
                 "x_shape_dtype"])
@dataclasses.dataclass(frozen=True)
class EpHandle:
    """What `ep_combine` (and the backward passes) need from `ep_dispatch`.

    send_rows: int32 [R*T] token in each send slot (-1 empty).
    token_index: int32 [T, R] returned row of token t from rank r (-1: not sent).
    recv_index: int32 [R*T, K] expert-side row of each received route (-1: none,
      another rank's, dropped, or a duplicate of an earlier route of the row).
    row_src: int32 [N] received row of each expert-side row (-1: padding).
    send_sizes: int32 [R] rows sent to each rank; recv_sizes: int32 [R] rows
      received from each rank (for ragged_all_to_all).
    weights: float32 [R*T, K] combine weight at each recv_index entry
      (duplicate routes' weights merged into the first).
    """
    send_rows: jax.Array
    token_index: jax.Array
    recv_index: jax.Array
    row_src: jax.Array
    send_sizes: jax.Array
    recv_sizes: jax.Array
    weights: jax.Array
    axis_name: Any
    num_ranks: int
    num_tokens: int
    mode: str
    num_rows: int
    ragged: bool
    x_shape_dtype: tuple

    @property
    def plan(self):
        return (self.send_rows, self.token_index, self.recv_index, self.row_src,
                self.send_sizes, self.recv_sizes)

    @property
    def comm(self):
        return (self.axis_name, self.num_ranks, self.ragged)


# --- helpers ------------------------------------------------------------------

def _all_to_all(a, axis_name, num_ranks):
    """Block r of `a` ([R*B, ...]) goes to rank r; block s of the result came
    from rank s."""
    shape = a.shape
    a = a.reshape((num_ranks, shape[0] // num_ranks) + shape[1:])
    a = jax.lax.all_to_all(a, axis_name, 0, 0)
    return a.reshape(shape)


def _ragged_all_to_all(a, send_sizes, recv_sizes, axis_name, num_ranks):
    """Like `_all_to_all`, but only the first send_sizes[r] rows of block r
    travel; they land at the same place as with `_all_to_all` (block s of the
    result holds rank s's rows), the rest of the result is zeros."""
    t = a.shape[0] // num_ranks
    me = jax.lax.axis_index(axis_name).astype(jnp.int32)
    in_offsets = jnp.arange(num_ranks, dtype=jnp.int32) * t
    out_offsets = jnp.zeros((num_ranks,), jnp.int32) + me * t
    v = lambda b: _varying(b, axis_name)
    return jax.lax.ragged_all_to_all(a, v(jnp.zeros_like(a)), v(in_offsets), v(send_sizes),
                                     v(out_offsets), v(recv_sizes), axis_name=axis_name)


def _to_experts(a, plan, comm):
    """Block r of `a` ([R*T, ...], source side) to rank r."""
    axis_name, num_ranks, ragged = comm
    if ragged:
        return _ragged_all_to_all(a, plan[4], plan[5], axis_name, num_ranks)
    return _all_to_all(a, axis_name, num_ranks)


def _to_sources(a, plan, comm):
    """Block s of `a` ([R*T, ...], expert side) back to source rank s."""
    axis_name, num_ranks, ragged = comm
    if ragged:
        return _ragged_all_to_all(a, plan[5], plan[4], axis_name, num_ranks)
    return _all_to_all(a, axis_name, num_ranks)


def _varying(a, axis_name):
    """`a` typed as varying over axis_name (custom primitives do not insert
    this themselves; without it a replicated input's gradient misses its psum)."""
    if axis_name in _compat.varying_axes(a):
        return a
    return jax.lax.pcast(a, axis_name, to="varying")


def _gather(rows_in, index):
    return K_.gather(rows_in, index)


def _combine(y, index, weights):
    return K_.combine(y, index, weights.astype(jnp.float32))


def _ones(index):
    return jnp.ones(index.shape, jnp.float32)


# --- row movement with custom VJPs -----------------------------------------------

# plan: (send_rows, token_index, recv_index, row_src, send_sizes, recv_sizes)
# comm: (axis_name, num_ranks, ragged), static.

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dispatch_rows(x, plan, comm, fp8):
    send_rows, _, _, row_src = plan[:4]
    if fp8:
        q, s = K_.pack_fp8_p.bind(x, send_rows)
        q = _gather(_to_experts(q, plan, comm), row_src)
        s = _gather(_to_experts(s, plan, comm), row_src)
        return q, s
    sent = _to_experts(_gather(x, send_rows), plan, comm)
    return _gather(sent, row_src)


def _dispatch_rows_fwd(x, plan, comm, fp8):
    out = _dispatch_rows(x, plan, comm, fp8)
    return out, (plan, out if fp8 else None, jnp.zeros((0,), x.dtype))


def _dispatch_rows_bwd(comm, fp8, res, g):
    plan, fp8_out, x_like = res
    _, token_index, recv_index, _ = plan[:4]
    if fp8:
        # Straight-through: the quantizer is treated as the identity on the
        # dequantized rows, so the cotangent of q (which JAX types as fp8) is
        # read back in the rows' scale. Training should use fp8=False.
        gq, _ = g
        _, s = fp8_out
        s_full = jnp.repeat(s, K_.FP8_GROUP, axis=-1)
        g = jnp.where(s_full > 0, gq.astype(jnp.float32) / jnp.where(s_full > 0, s_full, 1), 0)
        g = g.astype(x_like.dtype)
    # Unweighted combine of the cotangent: each expert-side row back to its
    # received row (recv_index lists a row once per expert), then over ranks.
    part = _combine(g, recv_index, _ones(recv_index))
    back = _to_sources(part, plan, comm)
    dx = _combine(back, token_index, _ones(token_index))
    return dx.astype(x_like.dtype), None


_dispatch_rows.defvjp(_dispatch_rows_fwd, _dispatch_rows_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _combine_rows(y, weights, plan, comm):
    _, token_index, recv_index, _ = plan[:4]
    # Weighted on the expert's rank: one partial sum per received row, local
    # experts in route order; then the sum over ranks in rank order.
    part = _combine(y, recv_index, weights)
    back = _to_sources(part, plan, comm)
    return _combine(back, token_index, _ones(token_index))


def _combine_rows_fwd(y, weights, plan, comm):
    return _combine_rows(y, weights, plan, comm), (y, weights, plan)


def _combine_rows_bwd(comm, res, g):
    y, weights, plan = res
    send_rows, _, recv_index, row_src = plan[:4]
    n = y.shape[0]
    # Dispatch of the cotangent (never fp8): g_part[m] = g[token of row m].
    g_part = _to_experts(_gather(g, send_rows), plan, comm)
    # Per expert-side row: its weight (recv_index entries are unique) and its
    # received row's cotangent.
    target = jnp.where(recv_index >= 0, recv_index, n)
    w_row = jnp.zeros((n,), jnp.float32).at[target].set(weights, mode="drop")
    has_src = (row_src >= 0)[:, None]
    g_y = _combine(g_part, row_src[:, None], w_row[:, None])
    # Weight gradient: <g of the received row, y row>, in float32.
    g_src = jnp.take(g_part, jnp.where(row_src >= 0, row_src, 0), axis=0)
    g_w_row = jnp.sum(jnp.where(has_src, g_src.astype(jnp.float32) * y.astype(jnp.float32), 0),
                      axis=-1)
    g_weights = jnp.where(recv_index >= 0,
                          jnp.take(g_w_row, jnp.where(recv_index >= 0, recv_index, 0)), 0)
    return g_y.astype(y.dtype), g_weights, None


_combine_rows.defvjp(_combine_rows_fwd, _combine_rows_bwd)


# --- public API ------------------------------------------------------------------

def ep_recv_rows(num_tokens: int, topk: int, num_ranks: int, num_local_experts: int) -> int:
    """Dropless worst case of expert-side rows per rank in normal mode:
    every token of every rank routed to min(K, El) distinct local experts."""
    return num_ranks * num_tokens * min(topk, num_local_experts)


def _merge_weights(recv_local, recv_index, recv_w):
    """Per route: its weight plus those of later routes of the same row naming
    the same local expert (duplicates share one expert-side row). Summed in
    route order: deterministic."""
    k = recv_local.shape[1]
    valid = recv_local >= 0
    merged = jnp.zeros_like(recv_w)
    for src in range(k):  # K is small and static
        same = (recv_local == recv_local[:, src:src + 1]) & valid[:, src:src + 1]
        merged = merged + jnp.where(same, recv_w[:, src:src + 1], 0.0)
    return jnp.where(recv_index >= 0, merged, 0.0)


def ep_dispatch(x, topk_ids, topk_weights, *, num_experts, axis_name, mode="normal",
                fp8=False, capacity=None, low_latency_threshold=256,
                transport="all_to_all"):
    """Sends each token's row to the ranks of its experts (inside shard_map).

    Args:
      x: `[T, H]` float32/bfloat16/float16 rows of this rank's tokens.
      topk_ids: integer `[T, K]` global expert of each route; ids outside
        `[0, num_experts)` (e.g. -1) are dropped routes.
      topk_weights: float `[T, K]` combine weight of each route.
      num_experts: E, static; a multiple of the axis size R.
      axis_name: the expert-parallel mesh axis (manual in the enclosing
        shard_map); expert e lives on rank e // (E/R).
      mode: "normal" (expert-grouped `[C, H]` for ragged_dot), "low_latency"
        (`[El, R*T, H]`), or "auto": low_latency when T <=
        low_latency_threshold.
      fp8: send rows as float8_e4m3fn + float32 scales per 128 channels (H a
        multiple of 128); `recv.x` is then `(q, scales)`.
      capacity: normal mode only: rows C of `recv.x` (default: the dropless
        worst case `ep_recv_rows`). Rows beyond it (the last ones in
        (local expert, source rank, source token) order) are dropped and
        counted in `recv.dropped`.
      transport: "all_to_all" (dense, T rows per destination; runs everywhere)
        or "ragged_all_to_all" (only the rows each rank needs travel; GPU only:
        XLA:CPU does not implement it). Same results either way.

    Returns:
      (EpRecv, EpHandle). Duplicate ids in one token's routes that name the
      same expert share one row (their weights add up in `ep_combine`).
    """
    x = jnp.asarray(x)
    topk_ids = jnp.asarray(topk_ids)
    topk_weights = jnp.asarray(topk_weights)
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H], got shape {x.shape}")
    if x.dtype not in [np.dtype(d) for d in _ROW_DTYPES]:
        raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if topk_ids.ndim != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T, K] with T = {x.shape[0]}, got {topk_ids.shape}")
    if not jnp.issubdtype(topk_ids.dtype, jnp.integer):
        raise TypeError(f"topk_ids must have an integer dtype, got {topk_ids.dtype}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights must have shape {topk_ids.shape}, got {topk_weights.shape}")
    if not jnp.issubdtype(topk_weights.dtype, jnp.floating):
        raise TypeError(f"topk_weights must be floating, got {topk_weights.dtype}")
    num_experts = static_int(num_experts, "num_experts", 1)
    try:
        num_ranks = jax.lax.axis_size(axis_name)
    except (NameError, KeyError, ValueError) as e:
        raise ValueError(f"ep_dispatch must be called inside jax.shard_map with axis "
                         f"{axis_name!r} manual: {e}") from None
    if num_experts % num_ranks:
        raise ValueError(f"num_experts={num_experts} is not a multiple of the size "
                         f"{num_ranks} of axis {axis_name!r}")
    t, h = x.shape
    k = topk_ids.shape[1]
    el = num_experts // num_ranks
    m = num_ranks * t
    if mode == "auto":
        mode = "low_latency" if t <= static_int(low_latency_threshold,
                                                 "low_latency_threshold", 0) else "normal"
    if mode not in ("normal", "low_latency"):
        raise ValueError(f"mode must be 'normal', 'low_latency' or 'auto', got {mode!r}")
    if transport not in ("all_to_all", "ragged_all_to_all"):
        raise ValueError(f"transport must be 'all_to_all' or 'ragged_all_to_all', got "
                         f"{transport!r}")
    if fp8 and h % K_.FP8_GROUP:
        raise ValueError(f"fp8 needs H to be a multiple of {K_.FP8_GROUP}, got H = {h}")
    if mode == "low_latency":
        if capacity is not None:
            raise ValueError("capacity applies to mode='normal' only (low_latency is dropless)")
        n = el * m
    else:
        n = ep_recv_rows(t, k, num_ranks, el) if capacity is None else static_int(
            capacity, "capacity", 0)
    if max(n, m * k) >= 2**31:
        raise ValueError("expert-side rows do not fit in int32")

    x = _varying(x, axis_name)
    ids = _varying(topk_ids, axis_name)
    w = _varying(topk_weights, axis_name).astype(jnp.float32)
    ids = jnp.where((ids >= 0) & (ids < num_experts), ids, -1).astype(jnp.int32)

    # Source side: which slot of which rank's buffer each token goes to.
    send_rows, send_local, token_index = K_.layout_p.bind(
        ids, num_experts=num_experts, num_ranks=num_ranks)
    # Route metadata (local expert + weight per route) travels with the rows.
    send_w = jnp.where(send_local >= 0,
                       jnp.take(w, jnp.where(send_rows >= 0, send_rows, 0), axis=0), 0.0)
    recv_local = _all_to_all(send_local, axis_name, num_ranks)
    recv_w = _all_to_all(send_w, axis_name, num_ranks)
    # Expert side: where each received (row, local expert) goes.
    recv_index, row_src, counts, group_sizes, dropped = K_.route_p.bind(
        recv_local, num_local=el,
        mode=K_.LOW_LATENCY if mode == "low_latency" else K_.NORMAL, num_rows=n)
    weights = _merge_weights(recv_local, recv_index, recv_w)
    # Rows per (source, destination) pair: slots are filled from 0, and a
    # received slot is used iff one of its routes names a local expert.
    send_sizes = jnp.sum(send_rows.reshape(num_ranks, t) >= 0, axis=1, dtype=jnp.int32)
    recv_sizes = jnp.sum(jnp.any(recv_local.reshape(num_ranks, t, k) >= 0, axis=2), axis=1,
                         dtype=jnp.int32)

    handle = EpHandle(send_rows=send_rows, token_index=token_index, recv_index=recv_index,
                      row_src=row_src, send_sizes=send_sizes, recv_sizes=recv_sizes,
                      weights=weights, axis_name=axis_name, num_ranks=num_ranks, num_tokens=t,
                      mode=mode, num_rows=n, ragged=transport == "ragged_all_to_all",
                      x_shape_dtype=(tuple(x.shape), np.dtype(x.dtype)))
    rows = _dispatch_rows(x, handle.plan, handle.comm, bool(fp8))
    if mode == "low_latency":
        rows = tuple(r.reshape(el, m, r.shape[-1]) for r in rows) if fp8 else rows.reshape(
            el, m, h)
    recv = EpRecv(x=rows, group_sizes=group_sizes, counts=counts, dropped=dropped[0])
    return recv, handle


def ep_combine(y, handle: EpHandle):
    """Returns `out[t] = sum_k w[t,k] * y(t,k)` for this rank's tokens.

    Args:
      y: expert outputs in the layout of `recv.x` (low_latency `[El, R*T, H']`,
        normal `[C, H']`), float32/bfloat16/float16; H' may differ from H.
      handle: from the matching `ep_dispatch`.

    Returns:
      `[T, H']` in x's dtype. Weighted on the expert's rank, summed in float32:
      local experts in route order, then source ranks in rank order
      (deterministic, bit-identical over runs).
    """
    y = jnp.asarray(y)
    n = handle.num_rows
    if y.dtype not in [np.dtype(d) for d in _ROW_DTYPES]:
        raise TypeError(f"y must be float32, bfloat16 or float16, got {y.dtype}")
    lead = y.shape[:-1]
    if int(np.prod(lead)) != n or y.ndim != (3 if handle.mode == "low_latency" else 2):
        raise ValueError(f"y of shape {y.shape} does not match the dispatch layout "
                         f"({handle.mode}, {n} rows)")
    y = _varying(y, handle.axis_name).reshape(n, y.shape[-1])
    out = _combine_rows(y, handle.weights, handle.plan, handle.comm)
    return out.astype(handle.x_shape_dtype[1])
