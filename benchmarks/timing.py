"""Device-side timing of a jitted op: per-call time from the slope of chains.

One jitted program runs the op `n` times on `n` distinct inputs (so XLA can
neither merge the calls nor serve them from one cached input), back to back on
the device. Timing chains of two lengths and taking the difference cancels the
fixed cost of dispatch and synchronisation; what is left is the device time per
call, launch gaps included (as in a real model step). Medians over repeats.
"""
from __future__ import annotations

import statistics
import time

import jax


def _chain(fn, n):
    def run(*stacked):
        return [fn(*(a[i] for a in stacked)) for i in range(n)]
    return jax.jit(run)


def per_call_seconds(fn, make_inputs, *, short=8, long=40, repeats=15, device=None):
    """Median per-call device time of `fn(*inputs)`; make_inputs(i) -> tuple."""
    device = device or jax.devices()[0]
    inputs = [make_inputs(i) for i in range(long)]
    timings = {}
    for n in (short, long):
        # Each input a separate buffer: the chain reads n distinct arrays.
        args = [tuple(jax.device_put(x, device) for x in inp) for inp in inputs[:n]]
        stacked = [tuple(a[j] for a in args) for j in range(len(args[0]))]
        f = _chain(fn, n)
        jax.block_until_ready(f(*stacked))  # compile + warm up
        jax.block_until_ready(f(*stacked))
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*stacked))
            samples.append(time.perf_counter() - t0)
        timings[n] = statistics.median(samples)
    return max((timings[long] - timings[short]) / (long - short), 0.0)
