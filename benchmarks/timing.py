"""Device-side timing of a jitted op.

GPU: one jitted program calls the op `n` times on `n` distinct inputs (so XLA
can neither merge the calls nor serve them from one input); the program runs
`runs` times under the JAX profiler, and the kernels' own start/end times are
read back from the trace (jax.profiler.ProfileData). Per call we report
- busy: summed kernel time per call (what the op costs the GPU), and
- span: median over runs of (last kernel end - first kernel start) / n, which
  adds the gaps between kernels (launch latency, and host stalls if any).
CPU: wall-clock slope of two chain lengths (cancels dispatch cost), median.

Multi-device ops (jax.shard_map): pass a `jax.sharding.Sharding` as `device`;
inputs are placed with it, and on GPU every device's kernels count: busy is
the mean over GPUs, span the slowest GPU's (the numbers of one GPU when one is
used, as before).
"""
from __future__ import annotations

import glob
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

try:
    from jax.profiler import ProfileData
except ImportError:  # pragma: no cover
    ProfileData = None


def copy_op(a):
    """The copy baseline of the bandwidth tables: one read and one write of a
    (negation, so XLA cannot elide it)."""
    return a * jnp.asarray(-1, a.dtype)


def _chain(fn, n):
    def run(*per_call):
        return [fn(*args) for args in per_call]
    return jax.jit(run)


def _inputs(make_inputs, n, device):
    return [tuple(jax.device_put(x, device) for x in make_inputs(i)) for i in range(n)]


def _platform(device):
    """Platform of a device or of a sharding's devices."""
    if isinstance(device, jax.sharding.Sharding):
        device = next(iter(device.device_set))
    return device.platform


def _gpu_kernel_events(trace_dir):
    """Per GPU that ran kernels: its sorted (start, end, name) kernel events."""
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    data = ProfileData.from_file(path)
    per_gpu = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        events = []
        for line in plane.lines:
            if "Stream" not in line.name:
                continue
            for e in line.events:
                if "memcpy" in e.name.lower() or "memset" in e.name.lower():
                    continue
                events.append((e.start_ns, e.start_ns + e.duration_ns, e.name))
        if events:
            per_gpu.append(sorted(events))
    return per_gpu


def _split_runs(events, runs):
    """Splits a sorted event list into `runs` groups at the largest gaps."""
    if runs == 1 or len(events) < runs:
        return [events]
    gaps = sorted(range(1, len(events)), key=lambda i: events[i][0] - events[i - 1][1])[-(runs - 1):]
    cuts = [0] + sorted(gaps) + [len(events)]
    return [events[a:b] for a, b in zip(cuts, cuts[1:])]


def _short_kernel_name(name):
    """'void ns::(anonymous namespace)::Kernel<int, 512>(Args)' -> 'Kernel<int, 512>'."""
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ")
    head, lt, tail = name.split("(")[0].partition("<")
    return (head.split("::")[-1] + lt + tail)[:48] or name[:48]


def gpu_per_call(fn, make_inputs, *, n=20, runs=5, device=None):
    """{'busy_s', 'span_s', 'kernels', 'by_kernel'} per call of fn on a GPU device
    or a sharding over GPUs (by_kernel: busy seconds per call of each kernel
    name, short names; busy, kernels and by_kernel are means over the GPUs)."""
    device = device or jax.devices()[0]
    args = _inputs(make_inputs, n, device)
    f = _chain(fn, n)
    jax.block_until_ready(f(*args))  # compile, autotune, warm up
    jax.block_until_ready(f(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(runs):
                jax.block_until_ready(f(*args))
                time.sleep(0.002)  # a clear gap between runs
        per_gpu = _gpu_kernel_events(d)
    if not per_gpu:
        raise RuntimeError("no GPU kernel events in the profile")
    calls = runs * n * len(per_gpu)
    events = [e for evs in per_gpu for e in evs]
    busy = sum(b - a for a, b, _ in events) / calls * 1e-9
    span = max(statistics.median([(g[-1][1] - g[0][0]) / n * 1e-9
                                  for g in _split_runs(evs, runs) if g]) for evs in per_gpu)
    by_kernel = {}
    for a, b, name in events:
        short = _short_kernel_name(name)
        by_kernel[short] = by_kernel.get(short, 0.0) + (b - a) / calls * 1e-9
    return {"busy_s": busy, "span_s": span, "kernels": len(events) / calls,
            "by_kernel": by_kernel}


def wall_per_call(fn, make_inputs, *, short=4, long=24, repeats=9, device=None):
    """Median per-call time from the slope of two chain lengths (CPU)."""
    device = device or jax.devices()[0]
    args = _inputs(make_inputs, long, device)
    timings = {}
    for n in (short, long):
        f = _chain(fn, n)
        jax.block_until_ready(f(*args[:n]))
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args[:n]))
            samples.append(time.perf_counter() - t0)
        timings[n] = statistics.median(samples)
    return max((timings[long] - timings[short]) / (long - short), 0.0)


def measure(fn, make_inputs, *, device=None, n=20):
    """{'us', 'span_us', 'kernels'} per call: GPU busy time from the profiler
    over a chain of n calls (span and kernel count beside it); on CPU the wall
    slope (no span)."""
    device = device or jax.devices()[0]
    if _platform(device) in ("gpu", "cuda"):
        r = gpu_per_call(fn, make_inputs, device=device, n=n)
        return {"us": r["busy_s"] * 1e6, "span_us": r["span_s"] * 1e6, "kernels": r["kernels"],
                "by_kernel_us": {k: v * 1e6 for k, v in r["by_kernel"].items()}}
    return {"us": wall_per_call(fn, make_inputs, device=device) * 1e6, "span_us": None,
            "kernels": None, "by_kernel_us": None}


def per_call_seconds(fn, make_inputs, *, device=None):
    """Per-call device time in seconds (see measure)."""
    return measure(fn, make_inputs, device=device)["us"] * 1e-6
