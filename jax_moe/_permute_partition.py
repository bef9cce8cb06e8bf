"""Auto-sharding of the permute family's row calls (hidden dim sharded).

XLA partitions a batch-partitionable custom call along its leading batch dims
only; any other sharded dim is gathered first, whatever the Shardy rule says.
The row calls are independent along the hidden dim H, so under jit each public
primitive lowers through `custom_partitioning`: the partitioner keeps batch
dims and H sharded as the operands are, replicates the token/route/row dims,
and runs the local custom call per device on [..., H / n] slices. The weight
gradient sums over H, so its per-device partial dot products are psum'ed.

On one device, and inside a fully manual shard_map, custom_partitioning
inlines the local call (no partitioning callback runs).
"""
from __future__ import annotations

import functools

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_moe import _compat

# Operand roles per call: "rows" ([B..., n, H]), "routes" ([B..., T, K] or the
# [B..., 0] weights placeholder), "slots" ([B..., P]). Result: rows or routes.
_LAYOUTS = {
    "permute": (("rows", "routes", "slots", "routes"), "rows"),
    "unpermute": (("rows", "routes", "slots", "routes"), "rows"),
    "wgrad": (("rows", "rows", "slots", "routes"), "routes"),
}


def _spec(shape_with_sharding, ndim):
    spec = getattr(getattr(shape_with_sharding, "sharding", None), "spec", None)
    spec = tuple(spec or ()) + (None,) * ndim
    return spec[:ndim]


def _axes(entry):
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _partition(kind, local_prim, static_names):
    roles, result_role = _LAYOUTS[kind]

    def partition(*args):
        *static, mesh, arg_shapes, result_shape = args
        params = dict(zip(static_names, static))
        nbd = params["num_batch_dims"]
        # Batch dims and H keep the first row operand's sharding.
        lead = _spec(arg_shapes[0], len(arg_shapes[0].shape))
        batch, hidden = lead[:nbd], lead[-1]

        def sharding(role, ndim):
            tail = (None,) * (ndim - nbd)
            if role == "rows":
                tail = tail[:-1] + (hidden,)
            return NamedSharding(mesh, P(*batch, *tail))

        arg_shardings = tuple(sharding(r, len(a.shape)) for r, a in zip(roles, arg_shapes))
        out_sharding = sharding(result_role, len(result_shape.shape))
        reduce_axes = _axes(hidden) if kind == "wgrad" else ()

        def lower_fn(*operands):
            out = local_prim.bind(*operands, **params)
            return jax.lax.psum(out, reduce_axes) if reduce_axes else out

        return mesh, lower_fn, out_sharding, arg_shardings

    return partition


def register(prim, local_prim, kind, static_names, sharding_rule):
    """Lowers `prim` (all platforms) through custom_partitioning around
    `local_prim`, whose lowering is the plain FFI call. sharding_rule(**params)
    returns the Shardy rule of the call."""
    nstatic = len(static_names)

    @functools.partial(custom_partitioning, static_argnums=tuple(range(4, 4 + nstatic)))
    def call(a, b, slots, routes, *static):
        return local_prim.bind(a, b, slots, routes, **dict(zip(static_names, static)))

    call.def_partition(
        partition=_partition(kind, local_prim, static_names),
        sharding_rule=lambda *args: sharding_rule(**dict(zip(static_names, args[:nstatic]))))

    def lowering(ctx, *operands, **params):
        static = tuple(params[n] for n in static_names)
        return mlir.lower_fun(lambda *ops: call(*ops, *static),
                              multiple_results=False)(ctx, *operands)

    mlir.register_lowering(prim, lowering)
    _compat.require_devices_during_lowering(prim)
