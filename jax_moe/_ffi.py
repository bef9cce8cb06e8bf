"""Registration of our XLA FFI targets and the lowering rule that calls them.

The CPU module is always built and is registered at import. The CUDA module is
imported (and its targets registered) the first time something is lowered for
a CUDA backend, so machines without a GPU never load it.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from jax.interpreters import mlir

from jax_moe import _compat

_PLATFORM_NAMES = {"cpu": "cpu", "cuda": "CUDA"}
_registered: set[str] = set()
# Targets whose leading operand/result dims are independent problems: XLA may
# split them over devices (attribute `num_batch_dims` on the call).
_BATCH_PARTITIONABLE_BASES: set[str] = set()


def _load_module(platform: str):
    if platform == "cpu":
        from jax_moe import _jax_moe_cpu as module
        return module
    try:
        from jax_moe import _jax_moe_cuda as module
    except ImportError as e:  # built without nvcc
        raise RuntimeError(
            "jax_moe was built without CUDA support (nvcc was not found at build "
            "time); reinstall with nvcc on PATH or JAX_MOE_CUDA=ON") from e
    return module


def ensure_registered(platform: str) -> None:
    """Registers every FFI target of `platform` ('cpu' or 'cuda') once."""
    if platform in _registered:
        return
    module = _load_module(platform)
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform=_PLATFORM_NAMES[platform])
    _registered.add(platform)


def batch_partitionable(base: str) -> None:
    """Declares target family `base` (all platforms) batch-partitionable."""
    _BATCH_PARTITIONABLE_BASES.add(base)
    for platform in _PLATFORM_NAMES:
        jax.ffi.register_ffi_target_as_batch_partitionable(f"{base}_{platform}")


def _attr(value):
    # FFI attributes are typed: Python ints become i64, floats f32, bools i1.
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float32(value)
    return value


def register_lowerings(
    prim,
    base: str,
    *,
    sharding_rule: Callable | None = None,
    workspace: dict[str, Callable] | None = None,
    attrs: Callable[..., dict] | None = None,
) -> None:
    """Lowers `prim` to the FFI targets `{base}_cpu` and `{base}_cuda`.

    sharding_rule(avals_in, avals_out, **params) -> an SdyShardingRule
      (see `_compat.sdy_rule`) attached to the call; with batch-partitionable
      targets XLA then keeps the leading batch dims sharded.
    workspace[platform](avals_in, **params) -> list of extra result avals that
      the call writes as scratch and the primitive drops.
    attrs(**params) -> the FFI attributes (default: all params).
    """
    for platform in _PLATFORM_NAMES:
        target = f"{base}_{platform}"

        def rule(ctx, *args, _platform=platform, _target=target, **params):
            ensure_registered(_platform)
            avals_out = list(ctx.avals_out)
            extra = []
            if workspace and _platform in workspace:
                extra = list(workspace[_platform](ctx.avals_in, **params))
            call_ctx = _compat.lowering_ctx_with(ctx, avals_out=avals_out + extra)
            extra_attributes = {}
            nbd = params.get("num_batch_dims", 0)
            if base in _BATCH_PARTITIONABLE_BASES and nbd > 0:
                extra_attributes["mhlo.frontend_attributes"] = mlir.ir_attribute(
                    {"num_batch_dims": str(nbd)})
            if sharding_rule is not None and _compat.use_shardy():
                sdy = sharding_rule(ctx.avals_in, avals_out + extra, **params)
                extra_attributes["sdy.sharding_rule"] = _compat.sdy_rule_attribute(
                    ctx, sdy, ctx.avals_in, avals_out + extra)
            ffi_attrs = attrs(**params) if attrs else params
            lower = jax.ffi.ffi_lowering(_target, extra_attributes=extra_attributes or None)
            results = lower(call_ctx, *args, **{k: _attr(v) for k, v in ffi_attrs.items()})
            return results[: len(avals_out)]

        mlir.register_lowering(prim, rule, platform=platform)


ensure_registered("cpu")
