"""Deriving result avals from operand avals (abstract evaluation helpers).

Results are built with `aval.update(...)` from an operand so that they carry its
varying-manual-axes (shard_map) type and its mesh; a bare ShapeDtypeStruct would
be typed as replicated inside shard_map and accept wrong `out_specs` silently.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec


def _spec_entries(aval, n: int) -> tuple:
    spec = tuple(getattr(getattr(aval, "sharding", None), "spec", ()) or ())
    spec = spec + (None,) * (aval.ndim - len(spec))
    return spec[:n]


def derived(like, shape, dtype=None, *, keep_leading: int = 0):
    """An aval of `shape`/`dtype` typed like `like`.

    The first `keep_leading` dims keep `like`'s sharding (vmapped batch dims);
    the others are unsharded.
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    spec = _spec_entries(like, keep_leading) + (None,) * (len(shape) - keep_leading)
    kw = dict(shape=shape, dtype=dtype, weak_type=False)
    sharding = getattr(like, "sharding", None)
    if sharding is not None and hasattr(sharding, "update"):
        kw["sharding"] = sharding.update(spec=PartitionSpec(*spec))
    return like.update(**kw)


def to_front(args, dims, size=None):
    """Moves each operand's vmapped axis to 0; broadcasts unbatched operands.

    Returns the operands and the batch size.
    """
    if size is None:
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    out = []
    for a, d in zip(args, dims):
        if d is None:
            out.append(jax.numpy.broadcast_to(a, (size,) + a.shape))
        else:
            out.append(jax.numpy.moveaxis(a, d, 0))
    return out, size
