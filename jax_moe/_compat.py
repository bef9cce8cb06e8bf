"""The one place that touches private JAX APIs.

Everything here is a thin shim over `jax._src` (or a version-dependent public
API), so that supporting a new JAX release means editing this file only.
Tested with jax 0.10.x (CPU, Python 3.11) and 0.11.x (CUDA, Python 3.12).
"""
from __future__ import annotations

import jax
from jax._src import config as _config
from jax._src.custom_partitioning_sharding_rule import (
    SdyShardingRule,
    sdy_sharding_rule_to_mlir,
    str_to_sdy_sharding_rule,
)
from jax.interpreters import mlir

__all__ = [
    "SdyShardingRule",
    "lowering_ctx_with",
    "sdy_rule",
    "sdy_rule_attribute",
    "use_shardy",
]


def use_shardy() -> bool:
    """Whether the Shardy partitioner is on (default since jax 0.7)."""
    return bool(_config.use_shardy_partitioner.value)


def lowering_ctx_with(ctx, *, avals_in=None, avals_out=None):
    """A copy of a lowering-rule context with other operand/result avals.

    Used to give a custom call extra results (device workspace) that the
    primitive does not expose.
    """
    kw = {}
    if avals_in is not None:
        kw["avals_in"] = list(avals_in)
    if avals_out is not None:
        kw["avals_out"] = list(avals_out)
    return ctx.replace(**kw)


def sdy_rule(rule: str, *, need_replication: tuple[str, ...] = ()) -> SdyShardingRule:
    """A Shardy rule from einsum-like text ("b r, b m -> b p"); factors named in
    `need_replication` are gathered before the call."""
    return str_to_sdy_sharding_rule(rule, need_replication_factors=tuple(need_replication))


def sdy_rule_attribute(ctx, rule: SdyShardingRule, avals_in, avals_out):
    """The `sdy.sharding_rule` MLIR attribute of a custom call."""
    mctx = ctx.module_context
    in_types = [mlir.aval_to_ir_type(mctx, a) for a in avals_in]
    out_types = [mlir.aval_to_ir_type(mctx, a) for a in avals_out]
    return sdy_sharding_rule_to_mlir(rule, in_types, out_types)


def typeof(x):
    """The abstract value of x (`jax.typeof` where it exists)."""
    return jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)


def varying_axes(aval) -> frozenset:
    """Mesh axes over which a value varies inside shard_map (its vma type).

    `aval.manual_axis_type.varying` from jax 0.10, `aval.vma` before.
    """
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()) or ())
