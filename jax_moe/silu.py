"""silu_and_mul: y = silu(gate) * up over rows h = [gate | up], optionally as FP8
and with a per-expert row mask.

Spec: shared/spec/dispatch.md sections 1 (fused variant) and 3 (FP8 format).
Layers, in order: public API (argument checks) -> primitives (abstract eval,
batching, AD) -> FFI lowering to `jax_moe_silu_and_mul{,_fp8,_bwd}_{cpu,cuda}`
(cc/silu/).

Primitives and what they compute (all per row, float32 inside):
  silu_p      h, counts -> y                    forward kernel
  silu_fp8_p  h, counts -> q, scales            forward kernel with FP8 output
  silu_jvp_p  h, counts, dh -> dy               tangent; linear in dh; elementwise
                                                JAX (XLA fuses it into one pass)
  silu_bwd_p  h, counts, dy -> dh               transpose of silu_jvp_p: our kernel
so `jax.jvp` runs one fused XLA loop and `jax.grad`/`jax.vjp` run our backward kernel.

Operand layout of every call: h [B..., P..., 2I] where the leading
`num_batch_dims` dims B are independent problems (vmap dims and, without a mask,
every row dim), and counts int32 [B..., c]: c == 0 without a mask; c == 1 with
one row count per problem, each problem then being [M, 2I] (an expert's rows).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir, xla

from jax_moe import _avals, _compat, _ffi

__all__ = ["silu_and_mul"]

_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
_FP8_GROUP = 128


def _primitive(name: str, multiple_results: bool = False) -> Primitive:
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(lambda *args, **params: xla.apply_primitive(p, *args, **params))
    return p


silu_p = _primitive("jax_moe_silu_and_mul")
silu_fp8_p = _primitive("jax_moe_silu_and_mul_fp8", multiple_results=True)
silu_jvp_p = _primitive("jax_moe_silu_and_mul_jvp")
silu_bwd_p = _primitive("jax_moe_silu_and_mul_bwd")


# --- abstract eval ---------------------------------------------------------

def _rows_like(h, last, dtype=None, *, num_batch_dims):
    """An aval [B..., P..., last] typed like h."""
    return _avals.derived(h, h.shape[:-1] + (last,), dtype, keep_leading=num_batch_dims)


def _fwd_abstract(h, counts, dh=None, *, num_batch_dims, zero_fill):
    del counts, dh, zero_fill
    return _rows_like(h, h.shape[-1] // 2, num_batch_dims=num_batch_dims)


def _fp8_abstract(h, counts, *, num_batch_dims, zero_fill):
    del counts, zero_fill
    i = h.shape[-1] // 2
    return (_rows_like(h, i, jnp.float8_e4m3fn, num_batch_dims=num_batch_dims),
            _rows_like(h, i // _FP8_GROUP, jnp.float32, num_batch_dims=num_batch_dims))


def _bwd_abstract(h, counts, dy, *, num_batch_dims):
    del counts, dy
    return _rows_like(h, h.shape[-1], num_batch_dims=num_batch_dims)


silu_p.def_abstract_eval(_fwd_abstract)
silu_jvp_p.def_abstract_eval(_fwd_abstract)
silu_fp8_p.def_abstract_eval(_fp8_abstract)
silu_bwd_p.def_abstract_eval(_bwd_abstract)


# --- batching: the kernels loop over leading batch dims --------------------

def _batcher(prim):
    def rule(args, dims, **params):
        args, _ = _avals.to_front(args, dims)
        params = dict(params, num_batch_dims=params["num_batch_dims"] + 1)
        out = prim.bind(*args, **params)
        return out, ((0,) * len(out) if prim.multiple_results else 0)
    return rule


for _p in (silu_p, silu_fp8_p, silu_jvp_p, silu_bwd_p):
    batching.primitive_batchers[_p] = _batcher(_p)


# --- AD ----------------------------------------------------------------------

def _mask_rows(x, counts, num_batch_dims):
    """Zeroes the rows of x [B..., M, n] past each problem's count (counts [B..., 1])."""
    if counts.shape[-1] == 0:
        return x
    m = jax.lax.broadcasted_iota(jnp.int32, x.shape, num_batch_dims)
    limit = jnp.clip(counts, 0, x.shape[num_batch_dims])[..., None]
    return jnp.where(m < limit, x, jnp.zeros((), x.dtype))


def _tangent(h, counts, dh, *, num_batch_dims, zero_fill):
    """d(silu(g) * u) = dg * u * silu'(g) + du * silu(g); zero on masked rows.

    Elementwise JAX: XLA fuses it into one pass over h and dh, which is what a
    kernel would do, and JAX can then transpose it to silu_bwd_p.
    """
    del zero_fill
    i = h.shape[-1] // 2
    f32 = jnp.float32
    g, u = h[..., :i].astype(f32), h[..., i:].astype(f32)
    dg, du = dh[..., :i].astype(f32), dh[..., i:].astype(f32)
    sig = jax.nn.sigmoid(g)
    t = dg * u * (sig * (1.0 + g * (1.0 - sig))) + du * (g * sig)
    return _mask_rows(t, counts, num_batch_dims).astype(h.dtype)


mlir.register_lowering(silu_jvp_p, mlir.lower_fun(_tangent, multiple_results=False))


def _silu_jvp(primals, tangents, **params):
    h, counts = primals
    dh, _ = tangents
    y = silu_p.bind(h, counts, **params)
    if type(dh) is ad.Zero:
        return y, ad.Zero.from_primal_value(y)
    return y, silu_jvp_p.bind(h, counts, dh, **params)


def _silu_jvp_transpose(ct, h, counts, dh, *, num_batch_dims, zero_fill):
    del zero_fill
    if ad.is_undefined_primal(h) or ad.is_undefined_primal(counts):
        raise NotImplementedError("silu_and_mul's tangent is linear in dh only")
    if type(ct) is ad.Zero:
        return None, None, ad.Zero(dh.aval)
    return None, None, silu_bwd_p.bind(h, counts, ct, num_batch_dims=num_batch_dims)


def _fp8_jvp(primals, tangents, **params):
    raise TypeError(
        "silu_and_mul(fp8=True) is not differentiable (FP8 rounding); differentiate "
        "the fp8=False path, or wrap h in jax.lax.stop_gradient")


ad.primitive_jvps[silu_p] = _silu_jvp
ad.primitive_transposes[silu_jvp_p] = _silu_jvp_transpose
ad.primitive_jvps[silu_fp8_p] = _fp8_jvp


# --- lowering and sharding -------------------------------------------------

def _sharding_rule(operand_last, result_last):
    """Batch dims pass through. A problem's rows (only with counts: the row
    index is compared with the count) and the channel axes need replication:
    splitting 2I over devices would separate gate and up halves."""
    def rule(avals_in, avals_out, *, num_batch_dims, **_):
        b = [f"b{i}" for i in range(num_batch_dims)]
        rows = [f"r{i}" for i in range(avals_in[0].ndim - num_batch_dims - 1)]
        dims = lambda *f: " ".join(b + list(f))
        ins = [dims(*rows, operand_last[0]), dims("c")]
        ins += [dims(*rows, last) for last in operand_last[1:]]
        outs = [dims(*rows, last) for last in result_last]
        # Shardy wants these in order of first appearance.
        order = (*rows, operand_last[0], "c", *operand_last[1:], *result_last)
        return _compat.sdy_rule(f"{', '.join(ins)} -> {', '.join(outs)}",
                                need_replication=tuple(dict.fromkeys(order)))
    return rule


for _p, _base, _rule in (
        (silu_p, "jax_moe_silu_and_mul", _sharding_rule(("k",), ("i",))),
        (silu_fp8_p, "jax_moe_silu_and_mul_fp8", _sharding_rule(("k",), ("i", "s"))),
        (silu_bwd_p, "jax_moe_silu_and_mul_bwd", _sharding_rule(("k", "i"), ("k",)))):
    _ffi.batch_partitionable(_base)
    _ffi.register_lowerings(_p, _base, sharding_rule=_rule)


# --- public API ------------------------------------------------------------

def silu_and_mul(h, *, counts=None, fp8=False, zero_fill=True):
    """silu(gate) * up for rows h = [gate | up].

    Args:
      h: float32/bfloat16/float16 `[..., 2I]`; the first I channels are the gate
        g, the last I the up projection u. With `counts`: `[E, M, 2I]` (the
        low-latency layout: expert e's valid rows are `[0, counts[e])`).
      counts: optional int32 `[E]`: rows `m >= counts[e]` of expert e are not
        read. Counts are clamped to [0, M].
      fp8: return `(q float8_e4m3fn[..., I], scales float32[..., I/128])`
        (shared/spec/dispatch.md section 3; I must be a multiple of 128). The
        float32 activation is quantized directly (not a bf16-rounded copy), with
        the multiplier `448 / amax` rounded first, as `cc/common/fp8.h` does.
        Not differentiable.
      zero_fill: with counts, what the output holds past each count: zeros
        (True, default; written without reading h, so deterministic) or
        whatever the output buffer held (False: unspecified values, possibly
        non-finite; nothing is written there, the fastest choice for sparse
        low-latency buffers). For fp8, zero_fill writes q = 0 and scale = 0.

    Returns:
      y `[..., I]` in h.dtype (computed in float32, rounded once), or (q, scales).
      Differentiable (fp8=False): `jax.grad`/`vjp` run our backward kernel;
      gradients of masked rows are zero.

    Precision: deterministic on each backend. The CPU kernel computes silu with
    exactly rounded float32 steps; the CUDA forward uses the hardware exp and
    division (the exact math made the FP8 kernel instruction-bound), so the two
    agree within a few float32 ulps: one step of a bf16/f16 output or of an FP8
    code at most. The backward is the same exact math on both (bit-identical).
    """
    h = jnp.asarray(h)
    if h.dtype not in _DTYPES:
        raise TypeError(f"h must be float32, bfloat16 or float16, got {h.dtype}")
    if h.ndim < 1 or h.shape[-1] % 2:
        raise ValueError(f"h must be [..., 2I] with an even last dim, got shape {h.shape}")
    if not isinstance(fp8, (bool, np.bool_)):
        raise TypeError(f"fp8 must be a Python bool, got {type(fp8).__name__}")
    if not isinstance(zero_fill, (bool, np.bool_)):
        raise TypeError(f"zero_fill must be a Python bool, got {type(zero_fill).__name__}")
    inter = h.shape[-1] // 2
    if fp8 and inter % _FP8_GROUP:
        raise ValueError(f"fp8=True needs I = h.shape[-1] // 2 to be a multiple of "
                         f"{_FP8_GROUP}, got I = {inter}")
    if counts is None:
        # Every row is its own problem: XLA may split any leading dim over devices.
        num_batch_dims = h.ndim - 1
        counts = jnp.zeros(h.shape[:-1] + (0,), jnp.int32)
    else:
        counts = jnp.asarray(counts)
        if counts.dtype != jnp.int32:
            raise TypeError(f"counts must be int32, got {counts.dtype}")
        if h.ndim != 3:
            raise ValueError(f"with counts, h must be [E, M, 2I], got shape {h.shape}")
        if counts.shape != h.shape[:1]:
            raise ValueError(f"counts must have shape ({h.shape[0]},) (one per expert of h), "
                             f"got {counts.shape}")
        num_batch_dims = 1
        counts = counts.reshape(-1, 1)
    params = dict(num_batch_dims=num_batch_dims, zero_fill=bool(zero_fill))
    if fp8:
        return tuple(silu_fp8_p.bind(h, counts, **params))
    return silu_p.bind(h, counts, **params)
