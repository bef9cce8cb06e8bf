"""Primitives of the permute family (custom calls in cc/permute/).

    permute_plan_p(sorted_ids, expert_ids)        -> route_rows [T, K], group_sizes [L]
    permute_p(x, scale, sorted_ids, route_rows)   -> x_sorted [P, H]
        x_sorted[j] = scale[r] * x[r // K], r = sorted_ids[j]; 0 for empty slots
    unpermute_p(y_sorted, w, sorted_ids, route_rows) -> y [T, H]
        y[t] = sum_k w[t, k] * y_sorted[route_rows[t, k]] (float32, increasing k)
    wgrad_p(g, y_sorted, sorted_ids, route_rows)  -> dw float32 [T, K]
        dw[t, k] = <g[t], y_sorted[route_rows[t, k]]>

`scale`/`w` are float32 [T, K], or a [0] placeholder with `weighted=False`
(unit weights). Each row primitive is bilinear in its two float operands
(linear in the first alone when unweighted) and its transposes are the other
two, with the same index operands:

    permute   ^T wrt x       = unpermute(ct, scale)    ^T wrt scale = wgrad(x, ct)
    unpermute ^T wrt y_sorted = permute(ct, w)         ^T wrt w     = wgrad(ct, y_sorted)
    wgrad     ^T wrt g       = unpermute(y_sorted, ct) ^T wrt y_sorted = permute(g, ct)

so jvp and transpose rules close over the family: derivatives of any order
are our gather kernels, never an XLA scatter. That is why every row call takes
both index arrays: each kernel reads the one it needs (sorted_ids to fill rows,
route_rows to gather per token) and its transposes read the other.

Leading `num_batch_dims` dims of every operand are independent problems (vmap),
handled inside the kernels. Callers must bind operands of equal varying-axes
type (shard_map): results are typed like the first operand.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, xla
from jax.sharding import PartitionSpec

from jax_moe import _avals, _compat, _ffi, _permute_partition

# --- abstract evaluation ----------------------------------------------------


def _rows_aval(like, batch, lead, *, num_batch_dims):
    """[*batch, lead, H] typed like `like` ([*batch, ?, H]): batch dims and the
    hidden dim keep like's sharding (H passes through every call)."""
    hidden = like.shape[-1]
    aval = _avals.derived(like, batch + (lead, hidden), keep_leading=num_batch_dims)
    spec = getattr(getattr(like, "sharding", None), "spec", None)
    sharding = getattr(aval, "sharding", None)
    if spec is not None and hasattr(sharding, "update"):
        spec = tuple(spec) + (None,) * (like.ndim - len(spec))
        new = spec[:num_batch_dims] + (None, spec[-1])
        aval = aval.update(sharding=sharding.update(spec=PartitionSpec(*new)))
    return aval


def _plan_abstract(sorted_ids, expert_ids, *, num_batch_dims, block_size, num_tokens,
                   topk, num_local_experts):
    del expert_ids, block_size
    batch = sorted_ids.shape[:num_batch_dims]
    out = lambda *shape: _avals.derived(sorted_ids, batch + shape, np.int32,
                                        keep_leading=num_batch_dims)
    return out(num_tokens, topk), out(num_local_experts)


def _permute_abstract(x, scale, sorted_ids, route_rows, *, num_batch_dims, weighted):
    del scale, route_rows, weighted
    rows = sorted_ids.shape[num_batch_dims]
    return _rows_aval(x, x.shape[:num_batch_dims], rows, num_batch_dims=num_batch_dims)


def _unpermute_abstract(y_sorted, w, sorted_ids, route_rows, *, num_batch_dims, weighted):
    del w, sorted_ids, weighted
    tokens = route_rows.shape[num_batch_dims]
    return _rows_aval(y_sorted, y_sorted.shape[:num_batch_dims], tokens,
                      num_batch_dims=num_batch_dims)


def _wgrad_abstract(g, y_sorted, sorted_ids, route_rows, *, num_batch_dims):
    del y_sorted, sorted_ids
    return _avals.derived(g, route_rows.shape, np.float32, keep_leading=num_batch_dims)


def _primitive(name, abstract, multiple_results=False):
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(lambda *args, **params: xla.apply_primitive(p, *args, **params))
    p.def_abstract_eval(abstract)
    return p


permute_plan_p = _primitive("jax_moe_permute_plan", _plan_abstract, multiple_results=True)
permute_p = _primitive("jax_moe_permute", _permute_abstract)
unpermute_p = _primitive("jax_moe_unpermute", _unpermute_abstract)
wgrad_p = _primitive("jax_moe_unpermute_wgrad", _wgrad_abstract)

# --- batching: leading dims are problems, the kernels loop over them ----------


def _batch_rule(prim):
    def rule(args, dims, **params):
        args, _ = _avals.to_front(args, dims)
        params = dict(params, num_batch_dims=params["num_batch_dims"] + 1)
        out = prim.bind(*args, **params)
        return out, ([0] * len(out) if prim.multiple_results else 0)
    return rule


for _p in (permute_plan_p, permute_p, unpermute_p, wgrad_p):
    batching.primitive_batchers[_p] = _batch_rule(_p)

# --- AD: jvp by bilinearity, transposes into each other ----------------------


def _bilinear_jvp(prim, second_linear):
    """jvp of prim(a, b, idx...) bilinear in (a, b); with second_linear False
    (unweighted call) b is a constant placeholder."""
    def rule(primals, tangents, **params):
        a, b, *idx = primals
        da, db = tangents[:2]
        out = prim.bind(a, b, *idx, **params)
        terms = []
        if type(da) is not ad.Zero:
            terms.append(prim.bind(da, b, *idx, **params))
        if second_linear(params) and type(db) is not ad.Zero:
            terms.append(prim.bind(a, db, *idx, **params))
        if not terms:
            return out, ad.Zero(jax.typeof(out).to_tangent_aval())
        tangent = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        return out, tangent
    return rule


_weighted = lambda params: params["weighted"]
ad.primitive_jvps[permute_p] = _bilinear_jvp(permute_p, _weighted)
ad.primitive_jvps[unpermute_p] = _bilinear_jvp(unpermute_p, _weighted)
ad.primitive_jvps[wgrad_p] = _bilinear_jvp(wgrad_p, lambda params: True)


def _check_one_linear(a, b, name):
    if ad.is_undefined_primal(a) and ad.is_undefined_primal(b):
        raise ValueError(f"{name} is bilinear: cannot transpose in both operands at once")


def _permute_transpose(ct, x, scale, sorted_ids, route_rows, *, num_batch_dims, weighted):
    _check_one_linear(x, scale, "permute")
    ct = ad.instantiate_zeros(ct)
    idx = (sorted_ids, route_rows)
    if ad.is_undefined_primal(x):
        x_bar = unpermute_p.bind(ct, scale, *idx, num_batch_dims=num_batch_dims,
                                 weighted=weighted)
        return [x_bar, None, None, None]
    return [None, wgrad_p.bind(x, ct, *idx, num_batch_dims=num_batch_dims), None, None]


def _unpermute_transpose(ct, y_sorted, w, sorted_ids, route_rows, *, num_batch_dims,
                         weighted):
    _check_one_linear(y_sorted, w, "unpermute")
    ct = ad.instantiate_zeros(ct)
    idx = (sorted_ids, route_rows)
    if ad.is_undefined_primal(y_sorted):
        ys_bar = permute_p.bind(ct, w, *idx, num_batch_dims=num_batch_dims, weighted=weighted)
        return [ys_bar, None, None, None]
    return [None, wgrad_p.bind(ct, y_sorted, *idx, num_batch_dims=num_batch_dims), None, None]


def _wgrad_transpose(ct, g, y_sorted, sorted_ids, route_rows, *, num_batch_dims):
    _check_one_linear(g, y_sorted, "unpermute_wgrad")
    ct = ad.instantiate_zeros(ct)
    idx = (sorted_ids, route_rows)
    if ad.is_undefined_primal(g):
        g_bar = unpermute_p.bind(y_sorted, ct, *idx, num_batch_dims=num_batch_dims,
                                 weighted=True)
        return [g_bar, None, None, None]
    ys_bar = permute_p.bind(g, ct, *idx, num_batch_dims=num_batch_dims, weighted=True)
    return [None, ys_bar, None, None]


ad.primitive_transposes[permute_p] = _permute_transpose
ad.primitive_transposes[unpermute_p] = _unpermute_transpose
ad.primitive_transposes[wgrad_p] = _wgrad_transpose

# --- sharding and lowering ---------------------------------------------------
# Shardy factors: batch dims b* pass through (batch-partitionable targets); the
# hidden dim h passes through between row operands and results (each device
# moves its slice of every row); token/route/row dims (t, k, p, ...) hold one
# problem's routing and need replication.


def _batch(nbd):
    return " ".join(f"b{i}" for i in range(nbd))


def _weights_factors(weighted):
    return "t k" if weighted else "z"


def _rule(text, *, replicate=(), reduction=()):
    # Shardy wants special factors in the order the factors first appear.
    order = {}
    for f in text.replace(",", " ").replace("->", " ").split():
        order.setdefault(f, len(order))
    return _compat.sdy_rule(text, need_replication=tuple(sorted(replicate, key=order.get)),
                            reduction=tuple(sorted(reduction, key=order.get)))


def _plan_rule(avals_in, avals_out, *, num_batch_dims, **_):
    b = _batch(num_batch_dims)
    return _rule(f"{b} p, {b} n -> {b} t k, {b} l", replicate=("p", "n", "t", "k", "l"))


def _permute_rule(avals_in, avals_out, *, num_batch_dims, weighted):
    b = _batch(num_batch_dims)
    w = _weights_factors(weighted)
    return _rule(f"{b} t h, {b} {w}, {b} p, {b} t k -> {b} p h",
                 replicate=("t", "k", "p") + (() if weighted else ("z",)))


def _unpermute_rule(avals_in, avals_out, *, num_batch_dims, weighted):
    b = _batch(num_batch_dims)
    w = _weights_factors(weighted)
    return _rule(f"{b} p h, {b} {w}, {b} p, {b} t k -> {b} t h",
                 replicate=("t", "k", "p") + (() if weighted else ("z",)))


def _wgrad_rule(avals_in, avals_out, *, num_batch_dims):
    # dw sums over h: a hidden-sharded g/y_sorted gives partial sums that the
    # partitioner adds up (an all-reduce of [T, K]), rather than gathering rows.
    b = _batch(num_batch_dims)
    return _rule(f"{b} t h, {b} p h, {b} p, {b} t k -> {b} t k",
                 replicate=("t", "k", "p"), reduction=("h",))


for _base in ("jax_moe_permute_plan", "jax_moe_permute", "jax_moe_unpermute",
              "jax_moe_unpermute_wgrad"):
    _ffi.batch_partitionable(_base)

_ffi.register_lowerings(
    permute_plan_p, "jax_moe_permute_plan", sharding_rule=_plan_rule,
    attrs=lambda *, num_batch_dims, block_size, **_: dict(num_batch_dims=num_batch_dims,
                                                          block_size=block_size))

# The row calls lower through custom_partitioning (_permute_partition: XLA would
# gather a sharded hidden dim of a plain custom call) around "local" twins whose
# lowering is the FFI call itself.
_ROW_CALLS = (
    (permute_p, "jax_moe_permute", "permute", _permute_abstract, _permute_rule,
     ("num_batch_dims", "weighted")),
    (unpermute_p, "jax_moe_unpermute", "unpermute", _unpermute_abstract, _unpermute_rule,
     ("num_batch_dims", "weighted")),
    (wgrad_p, "jax_moe_unpermute_wgrad", "wgrad", _wgrad_abstract, _wgrad_rule,
     ("num_batch_dims",)),
)
for _prim, _target, _kind, _abstract, _rule_fn, _static in _ROW_CALLS:
    _local = _primitive(_prim.name + "_local", _abstract)
    _ffi.register_lowerings(_local, _target, sharding_rule=_rule_fn)
    _permute_partition.register(
        _prim, _local, _kind, _static,
        functools.partial(_rule_fn, None, None))
