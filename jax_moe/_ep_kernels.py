"""Primitives of the expert-parallel custom calls (cc/ep/), one per kernel.

Each binds `jax_moe_ep_<kernel>_{cpu,cuda}`: abstract eval (results derived from
operand avals, so shard_map sees their varying type), a Shardy rule (row axes
need replication, the channel axis of row data passes through so that e.g. a
"tp" axis left automatic keeps the hidden dim sharded) and the lowering. The
collectives between them live in jax_moe/ep.py. Shapes: T tokens, K routes, R
ranks, El local experts, M = R*T received rows, N expert-side rows.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import xla

from jax_moe import _avals, _compat, _ffi

LOW_LATENCY, NORMAL = 0, 1  # cc/ep/ep_route.h EpMode
FP8_GROUP = 128


def _primitive(name: str, multiple_results: bool) -> Primitive:
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(lambda *args, **params: xla.apply_primitive(p, *args, **params))
    return p


def _replicated_rule(avals_in, avals_out, **_):
    # Routing tables: every axis of every operand/result on one device.
    names, i = [], 0
    sides = []
    for group in (avals_in, avals_out):
        side = []
        for a in group:
            dims = [f"d{i + j}" for j in range(a.ndim)]
            i += a.ndim
            names += dims
            side.append(" ".join(dims))
        sides.append(", ".join(side))
    return _compat.sdy_rule(f"{sides[0]} -> {sides[1]}", need_replication=tuple(names))


def _rows_rule(*, channels_pass: bool):
    # Row data: the row axes need replication; the channel axis `c` passes
    # through (hidden sharded over another mesh axis stays sharded).
    def rule(avals_in, avals_out, **_):
        n_in, n_out = len(avals_in), len(avals_out)
        if n_in == 2 and n_out == 1:      # gather: in [a, c], rows [b] -> [b, c]
            text = "a c, b -> b c"
        elif n_in == 2:                   # pack_fp8: x [a, c], rows [b] -> q [b, c], s [b, g]
            text = "a c, b -> b c, b g"
        else:                             # combine: y [n, c], index [m, j], w [m, j] -> [m, c]
            text = "n c, m j, m j -> m c"
        # Shardy wants the special factors in order of first appearance.
        factors = dict.fromkeys(text.replace(",", " ").replace("->", " ").split())
        keep = {"c"} if channels_pass else set()
        return _compat.sdy_rule(text, need_replication=tuple(f for f in factors if f not in keep))
    return rule


# --- ep_layout: source-side plan ---------------------------------------------

layout_p = _primitive("jax_moe_ep_layout", True)


@layout_p.def_abstract_eval
def _layout_abstract(ids, *, num_experts, num_ranks):
    del num_experts
    t, k = ids.shape
    i32 = np.int32
    return (_avals.derived(ids, (num_ranks * t,), i32),      # send_rows
            _avals.derived(ids, (num_ranks * t, k), i32),    # send_local
            _avals.derived(ids, (t, num_ranks), i32))        # token_index


# Keep in sync with cc/ep/ep_layout_plan.h: the CUDA kernels keep per (rank,
# chunk of tokens) counts of sent tokens in a device workspace.
LAYOUT_TILE_TOKENS = 64
LAYOUT_SINGLE_TOKENS = 256
LAYOUT_RANK_GROUP = 64
LAYOUT_MAX_PREFIX_WORDS = 4096


def layout_chunks(t: int, r: int) -> int:
    """CTAs per rank group of the CUDA layout kernels (NumChunks in the plan)."""
    if t <= LAYOUT_SINGLE_TOKENS:
        tile = 32 if t <= 32 else -(-t // 32) * 32
    else:
        tile = LAYOUT_TILE_TOKENS
    tiles = -(-t // tile) if t > 0 else 1
    max_chunks = max(1, LAYOUT_MAX_PREFIX_WORDS // max(1, min(r, LAYOUT_RANK_GROUP)))
    per_chunk = -(-tiles // max_chunks)
    return -(-tiles // per_chunk)


def _layout_cuda_workspace(avals_in, *, num_ranks, **_):
    t = avals_in[0].shape[0]
    return [_avals.derived(avals_in[0], (num_ranks * layout_chunks(t, num_ranks),), np.int32)]


_ffi.register_lowerings(layout_p, "jax_moe_ep_layout", sharding_rule=_replicated_rule,
                        workspace={"cuda": _layout_cuda_workspace})


# --- ep_route: receiver-side plan ---------------------------------------------

route_p = _primitive("jax_moe_ep_route", True)


@route_p.def_abstract_eval
def _route_abstract(recv_local, *, num_local, mode, num_rows):
    del mode
    m, k = recv_local.shape
    i32 = np.int32
    return (_avals.derived(recv_local, (m, k), i32),           # recv_index
            _avals.derived(recv_local, (num_rows,), i32),      # row_src
            _avals.derived(recv_local, (num_local,), i32),     # counts
            _avals.derived(recv_local, (num_local,), i32),     # group_sizes
            _avals.derived(recv_local, (1,), i32))             # dropped


# Keep in sync with cc/ep/ep_route_plan.h: the CUDA kernels keep per (local
# expert, chunk of received rows) counts in a device workspace.
ROUTE_CHUNK_ROWS = 1024


def _route_cuda_workspace(avals_in, *, num_local, **_):
    m = avals_in[0].shape[0]
    chunks = max(1, -(-m // ROUTE_CHUNK_ROWS))
    return [_avals.derived(avals_in[0], (num_local * chunks,), np.int32)]


_ffi.register_lowerings(route_p, "jax_moe_ep_route", sharding_rule=_replicated_rule,
                        workspace={"cuda": _route_cuda_workspace},
                        attrs=lambda num_local, mode, num_rows: dict(num_local=num_local,
                                                                      mode=mode))


# --- ep_gather: row gather (any dtype) ------------------------------------------

gather_p = _primitive("jax_moe_ep_gather", False)


@gather_p.def_abstract_eval
def _gather_abstract(rows_in, index):
    return _avals.derived(rows_in, (index.shape[0], rows_in.shape[1]))


_ffi.register_lowerings(gather_p, "jax_moe_ep_gather",
                        sharding_rule=_rows_rule(channels_pass=True))


# --- ep_pack_fp8: row gather + FP8 cast -------------------------------------------

pack_fp8_p = _primitive("jax_moe_ep_pack_fp8", True)


@pack_fp8_p.def_abstract_eval
def _pack_fp8_abstract(x, index):
    m, h = index.shape[0], x.shape[1]
    return (_avals.derived(x, (m, h), np.dtype(jnp.float8_e4m3fn)),
            _avals.derived(x, (m, h // FP8_GROUP), np.float32))


# 128-channel groups need the whole hidden dim on one device.
_ffi.register_lowerings(pack_fp8_p, "jax_moe_ep_pack_fp8",
                        sharding_rule=_rows_rule(channels_pass=False))


# --- ep_combine: weighted gather-sum in float32 -------------------------------------

combine_p = _primitive("jax_moe_ep_combine", False)


@combine_p.def_abstract_eval
def _combine_abstract(y, index, weights):
    del weights
    return _avals.derived(y, (index.shape[0], y.shape[1]))


_ffi.register_lowerings(combine_p, "jax_moe_ep_combine",
                        sharding_rule=_rows_rule(channels_pass=True))


# --- keeping the channel axis sharded over automatic mesh axes -----------------------
# XLA's partitioner replicates any custom call it cannot split, whatever its
# Shardy rule says; a "tp" axis left automatic around the EP shard_map would
# then all-gather the hidden dim at every row kernel. custom_partitioning lets
# the row kernels run on their channel shard: Shardy first replicates the row
# axes (need_replication), then each device calls the kernel on what it holds.
# Inside a fully manual shard_map it is simply inlined.

def _keep_channels(bind, rule, need_replication):
    @custom_partitioning
    def call(*args):
        return bind(*args)

    def partition(mesh, arg_infos, result_infos):
        del result_infos
        # Row axes are replicated by now; the result is split like the rows in.
        shardings = tuple(a.sharding for a in arg_infos)
        return mesh, bind, shardings[0], shardings

    call.def_partition(partition, sharding_rule=rule, need_replication_factors=need_replication)
    return call


gather = _keep_channels(gather_p.bind, "a c, b -> b c", ("a", "b"))
combine = _keep_channels(combine_p.bind, "n c, m j, m j -> m c", ("n", "m", "j"))
