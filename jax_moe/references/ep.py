"""Single-device references for expert parallelism (shared/spec/dispatch.md 2-4).

`moe_reference` is the layer an EP layer must equal: every route (t, k) with a
valid id e contributes `w[t, k] * expert_e(x[t])`, summed over k in float32.
`swiglu_experts` / `swiglu_local` are the expert FFN used by the tests and the
example in both the reference and the EP layouts. `quantize_fp8` is spec
section 3 in plain JAX. `ep_dispatch_argsort` / `ep_combine_argsort` are a
MaxText-style expert-parallel path in plain JAX (argsort, jnp.take,
all_to_all or ragged_all_to_all, a second local argsort): the baseline that
`benchmarks/ep_multi.py` times `jax_moe.ep_dispatch` / `ep_combine` against.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _compat

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


# --- MaxText-style expert parallelism in plain JAX (the multi-GPU baseline) --------
#
# ep_dispatch_argsort / ep_combine_argsort, inside jax.shard_map over an axis of
# size R: every route travels as its own row (K copies of a token, no per-rank
# de-duplication, no FP8), like MaxText's argsort + ragged_all_to_all path.

@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["order", "valid", "sorted_rank", "send_sizes", "send_offsets", "recv_sizes",
                 "recv_offsets", "out_offsets", "back_offsets", "order2"],
    meta_fields=["axis_name", "num_ranks", "transport", "dtype"])
@dataclasses.dataclass(frozen=True)
class ArgsortEpState:
    """What `ep_combine_argsort` needs (every field at least 1-D, so a state
    can leave shard_map with out_specs P(axis)). Sorted order = routes by
    global expert, dropped routes last; receive buffer = N = R*T*K rows.

    order: int32 [T*K] route (t*K+k) at each sorted position.
    valid: bool [T, K] route kept (id in [0, E)).
    sorted_rank: int32 [T*K] destination rank of each sorted position (R: dropped).
    send_sizes / send_offsets: int32 [R] rows for rank r, start of its block in sorted order.
    recv_offsets: int32 [R] start of rank s's rows in the receive buffer.
    Ragged transport only (zeros with all_to_all):
    recv_sizes: int32 [R] rows from rank s.
    out_offsets: int32 [R] start of my rows in rank r's receive buffer (r's recv_offsets[me]).
    back_offsets: int32 [R] start of rank s's block in s's sorted order (s's send_offsets[me]).
    order2: int32 [N] receive-buffer row at each row of the expert-grouped output.
    """
    order: jax.Array
    valid: jax.Array
    sorted_rank: jax.Array
    send_sizes: jax.Array
    send_offsets: jax.Array
    recv_sizes: jax.Array
    recv_offsets: jax.Array
    out_offsets: jax.Array
    back_offsets: jax.Array
    order2: jax.Array
    axis_name: Any
    num_ranks: int
    transport: str
    dtype: Any


def _varying(a, axis_name):
    """ragged_all_to_all needs every operand varying over the axis (fresh zeros are not)."""
    if axis_name in _compat.varying_axes(a):
        return a
    return jax.lax.pcast(a, axis_name, to="varying")


def _blocks_dense(a, offsets, sizes, c, fill):
    """[R, c, ...] buffer: block r = a[offsets[r] : offsets[r] + sizes[r]], then fill."""
    j = jnp.arange(c, dtype=jnp.int32)
    idx = offsets[:, None] + j
    used = (j < sizes[:, None]).reshape(idx.shape + (1,) * (a.ndim - 1))
    return jnp.where(used, jnp.take(a, idx, axis=0, mode="clip"), jnp.asarray(fill, a.dtype))


def _exchange(a, fill, s, forward):
    """Forward: sorted rows [T*K, ...] -> receive buffer [N, ...] (rows from rank
    s at recv_offsets[s], then fill). Backward: receive buffer -> sorted order
    [T*K, ...] (rows back from rank r at send_offsets[r]; dropped routes: fill)."""
    r = s.num_ranks
    tk = s.order.shape[0]
    if s.transport == "ragged":
        out = jnp.full((r * tk if forward else tk,) + a.shape[1:], fill, a.dtype)
        args = ((s.send_offsets, s.send_sizes, s.out_offsets, s.recv_sizes) if forward else
                (s.recv_offsets, s.recv_sizes, s.back_offsets, s.send_sizes))
        v = lambda b: _varying(b, s.axis_name)
        return jax.lax.ragged_all_to_all(a, v(out), *map(v, args), axis_name=s.axis_name)
    # Dense: fixed blocks of C = T*K rows per pair (the dropless worst case).
    if forward:
        buf = _blocks_dense(a, s.send_offsets, s.send_sizes, tk, fill)
        return jax.lax.all_to_all(buf, s.axis_name, 0, 0).reshape((r * tk,) + a.shape[1:])
    back = jax.lax.all_to_all(a.reshape((r, tk) + a.shape[1:]), s.axis_name, 0, 0)
    rank = jnp.minimum(s.sorted_rank, r - 1)
    src = rank * tk + jnp.arange(tk, dtype=jnp.int32) - jnp.take(s.send_offsets, rank)
    keep = (s.sorted_rank < r).reshape((tk,) + (1,) * (a.ndim - 1))
    return jnp.where(keep, jnp.take(back.reshape(a.shape), src, axis=0, mode="clip"),
                     jnp.asarray(fill, a.dtype))


def ep_dispatch_argsort(x, topk_ids, *, num_experts, axis_name, transport="all_to_all"):
    """MaxText-style EP dispatch in plain JAX (inside jax.shard_map over `axis_name`).

    Args:
      x: `[T, H]` this rank's tokens. topk_ids: int `[T, K]` global experts;
        ids outside [0, num_experts) are dropped routes.
      transport: "all_to_all" (fixed [R, T*K, H] blocks, zero padded; runs
        everywhere) or "ragged" (jax.lax.ragged_all_to_all; GPU only).

    Returns:
      rows `[R*T*K, H]` received rows grouped by local expert (`group_sizes`
      rows each, back to back, zeros after), `group_sizes` int32 `[El]`, and an
      `ArgsortEpState` for `ep_combine_argsort`.
    """
    if transport not in ("all_to_all", "ragged"):
        raise ValueError(f"transport must be 'all_to_all' or 'ragged', got {transport!r}")
    r = jax.lax.axis_size(axis_name)
    if num_experts % r:
        raise ValueError(f"num_experts={num_experts} is not a multiple of the axis size {r}")
    el = num_experts // r
    t, k = topk_ids.shape
    me = jax.lax.axis_index(axis_name).astype(jnp.int32)
    # 1. Routes sorted by global expert (stable: ties in route order); dropped last.
    flat = topk_ids.reshape(-1).astype(jnp.int32)
    valid = (flat >= 0) & (flat < num_experts)
    key = jnp.where(valid, flat, num_experts)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    sorted_key = jnp.take(key, order)
    sorted_rows = jnp.take(x, order // k, axis=0)
    # 2. Experts of a rank are contiguous, so each rank's routes are one block.
    bounds = jnp.searchsorted(sorted_key, jnp.arange(r + 1, dtype=jnp.int32) * el,
                              side="left").astype(jnp.int32)
    send_offsets, send_sizes = bounds[:-1], jnp.diff(bounds)
    # 3. Ragged exchange plan from one all_gather of every rank's send sizes
    # (MaxText gathers them too; one collective instead of two all_to_alls):
    # sizes[s, r] = rows rank s sends to rank r.
    if transport == "ragged":
        sizes = jax.lax.all_gather(send_sizes, axis_name)
        before = jnp.cumsum(sizes, axis=0) - sizes       # [s, r]: rows for r from ranks < s
        recv_sizes = sizes[:, me]
        recv_offsets = jnp.cumsum(recv_sizes) - recv_sizes
        out_offsets = before[me]                        # r's recv_offsets[me]
        back_offsets = jnp.cumsum(sizes, axis=1)[:, me] - recv_sizes  # s's send_offsets[me]
    else:  # fixed blocks: rank s's rows at s*T*K; no sizes exchange needed
        recv_offsets = jnp.arange(r, dtype=jnp.int32) * t * k
        recv_sizes = out_offsets = back_offsets = jnp.zeros_like(send_sizes)
    state = ArgsortEpState(
        order=order, valid=valid.reshape(t, k), sorted_rank=sorted_key // el,
        send_sizes=send_sizes, send_offsets=send_offsets, recv_sizes=recv_sizes,
        recv_offsets=recv_offsets, out_offsets=out_offsets, back_offsets=back_offsets,
        order2=jnp.zeros((r * t * k,), jnp.int32), axis_name=axis_name, num_ranks=r,
        transport=transport, dtype=np.dtype(x.dtype))
    # 4. Rows and their local expert ids (el = padding, sorts last) travel.
    recv_rows = _exchange(sorted_rows, 0, state, forward=True)
    recv_local = _exchange(sorted_key - (sorted_key // el) * el, el, state, forward=True)
    # 5. Second, local sort: received rows grouped by local expert.
    order2 = jnp.argsort(recv_local, stable=True).astype(jnp.int32)
    bounds2 = jnp.searchsorted(jnp.take(recv_local, order2),
                               jnp.arange(el + 1, dtype=jnp.int32), side="left")
    group_sizes = jnp.diff(bounds2).astype(jnp.int32)
    rows = jnp.take(recv_rows, order2, axis=0)
    return rows, group_sizes, dataclasses.replace(state, order2=order2)


def ep_combine_argsort(y, topk_weights, state: ArgsortEpState):
    """Inverse of `ep_dispatch_argsort`: expert outputs `y` `[R*T*K, H']` (rows in
    the dispatched order) back to their tokens; returns `[T, H']` =
    sum_k w[t,k] * y(t,k) over kept routes, float32 sum, cast to x's dtype."""
    t, k = state.valid.shape
    # Inverse permutations by argsort, as MaxText's unpermute does.
    y_recv = jnp.take(y, jnp.argsort(state.order2), axis=0)
    back = _exchange(y_recv, 0, state, forward=False)           # sorted order
    rows = jnp.take(back, jnp.argsort(state.order), axis=0).reshape(t, k, y.shape[-1])
    w = jnp.where(state.valid, topk_weights.astype(jnp.float32), 0.0)
    out = jnp.sum(w[:, :, None] * rows.astype(jnp.float32), axis=1)
    return out.astype(state.dtype)
