"""Benchmark: the local EP kernels on one device, exchange replaced by nothing.

One rank's work at R = 8 shapes (shared issue 4: 4096 and 128 tokens per rank,
H 7168 bf16, E 256, top-8): layout, pack (gather / gather + FP8), route,
unpack (expansion), and the two combine stages, each as bytes moved per second
and as a fraction of a plain copy's bandwidth measured in the same run (a large
copy, and a copy of the kernel's own byte count: time of that copy / time of the
kernel, the fair yardstick where launch and latency dominate). Bytes
are what the kernel must read and write: rows read, rows written (zero rows of
empty slots and of normal mode's dropless padding included, shown as the zero
fill share), index/weight reads. The "received" data is this rank's own send
buffer (every rank alike).

    python benchmarks/ep.py [--tokens 128 4096] [--hidden 7168]

Time per call: GPU kernel busy time from the JAX profiler over a chain of calls
on distinct copies of the operands (benchmarks/timing.py; the copy baseline is
timed the same way, on random data). Meant for the H200; rough on CPU.
"""
from __future__ import annotations

import argparse

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from jax_moe import _ep_kernels as K_  # noqa: E402
from timing import copy_op, measure  # noqa: E402

R, H, E, K = 8, 7168, 256, 8
EL = E // R


def per_call_us(op, args, chain):
    """Per-call time of op(*args), each call on its own copies of the operands."""
    make = lambda i: tuple(jnp.array(a, copy=True) for a in args)
    return measure(op, make, n=chain)["us"]


def nbytes(*arrays):
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)


def main(argv=None):
    global H
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 4096])
    ap.add_argument("--hidden", type=int, default=H, help="multiple of 128 (CPU smoke runs)")
    ap.add_argument("--out", default=None, help="ignored (prints only)")
    args = ap.parse_args(argv)
    H = args.hidden
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); R={R} H={H} E={E} top-{K} bf16")
    rng = np.random.default_rng(0)
    for t in args.tokens:
        m = R * t
        ids = jnp.asarray(np.stack([rng.permutation(E)[:K] for _ in range(t)]).astype(np.int32))
        x = jnp.asarray(rng.standard_normal((t, H)), jnp.bfloat16)
        send_rows, send_local, token_index = K_.layout_p.bind(ids, num_experts=E, num_ranks=R)
        n = m * min(K, EL)
        recv_index, row_src, *_ = K_.route_p.bind(send_local, num_local=EL, mode=K_.NORMAL,
                                                  num_rows=n)
        sent = K_.gather_p.bind(x, send_rows)
        expanded = K_.gather_p.bind(sent, row_src)
        w = jnp.asarray(rng.random(recv_index.shape), jnp.float32)
        part = K_.combine_p.bind(expanded, recv_index, w)
        ones = jnp.ones(token_index.shape, jnp.float32)

        valid_send = int(jnp.sum(send_rows >= 0))   # used send slots (= received rows)
        valid_rows = int(jnp.sum(row_src >= 0))     # used expert-side rows
        row = H * 2
        g4 = H // 128 * 4                           # fp8 scales of one row
        # Bytes each kernel must touch: rows read + rows written, zero rows (empty
        # slots, padding) included since the kernels write them, plus the index
        # and weight reads. Second number: the zero-fill part of it.
        cases = [
            ("layout", lambda i: K_.layout_p.bind(i, num_experts=E, num_ranks=R), (ids,),
             nbytes(ids, send_rows, send_local, token_index), 0),
            ("pack", K_.gather_p.bind, (x, send_rows),
             2 * valid_send * row + (m - valid_send) * row + 4 * m, (m - valid_send) * row),
            ("pack fp8", K_.pack_fp8_p.bind, (x, send_rows),
             valid_send * (row + H + g4) + (m - valid_send) * (H + g4) + 4 * m,
             (m - valid_send) * (H + g4)),
            ("route", lambda a: K_.route_p.bind(a, num_local=EL, mode=K_.NORMAL, num_rows=n),
             (send_local,), nbytes(send_local, recv_index, row_src), 0),
            ("unpack (expansion)", K_.gather_p.bind, (sent, row_src),
             2 * valid_rows * row + (n - valid_rows) * row + 4 * n, (n - valid_rows) * row),
            ("combine (expert side)", K_.combine_p.bind, (expanded, recv_index, w),
             (valid_rows + m) * row + nbytes(recv_index, w), (m - valid_send) * row),
            ("combine (over ranks)", K_.combine_p.bind, (part, token_index, ones),
             (valid_send + t) * row + nbytes(token_index, ones), 0),
        ]
        chain = 3 if t > 1024 else 10  # distinct operand copies must fit the GPU
        big = jnp.asarray(rng.standard_normal((max(m, 1) * 4, H)), jnp.bfloat16)
        copy_us = per_call_us(copy_op, (big,), chain)
        copy_gbs = 2 * nbytes(big) / copy_us / 1e3
        # Reading alone runs faster than a copy's read+write mix on HBM: read-heavy
        # kernels (the sum over ranks reads ~5 rows per row written) can pass 100%.
        read_us = per_call_us(lambda a: jnp.max(a, axis=1), (big,), chain)
        read_gbs = nbytes(big) / read_us / 1e3
        print(f"\nT={t} tokens/rank: copy {copy_gbs:.0f} GB/s, read-only {read_gbs:.0f} GB/s")
        print(f"  {'kernel':24s} {'us':>9s} {'GB/s':>8s} {'of copy':>8s} {'zero fill':>10s} "
              f"{'copy same bytes us':>19s} {'of it':>6s}")
        for name, op, a, b, zeros in cases:
            us = per_call_us(op, a, chain)
            gbs = b / us / 1e3
            # A copy moving the kernel's bytes (half read, half written): at small T
            # both pay the same launch and latency, which the large copy hides.
            same = jnp.asarray(rng.standard_normal(max(b // 4, 1)), jnp.bfloat16)
            same_us = per_call_us(copy_op, (same,), chain)
            print(f"  {name:24s} {us:9.1f} {gbs:8.0f} {gbs / copy_gbs:8.0%} {zeros / b:10.0%} "
                  f"{same_us:19.1f} {same_us / us:6.0%}")


if __name__ == "__main__":
    main()
