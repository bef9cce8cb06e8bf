"""Benchmark: EP dispatch / combine over all local devices, jax_moe against a
MaxText-style plain-JAX path (jax_moe/references/ep.py: argsort, jnp.take,
all_to_all or ragged_all_to_all, second local argsort, and the reverse).

    python benchmarks/ep_multi.py [--tokens 4096 128] [--hidden 7168] [--experts 256]
        [--topk 8] [--out DIR] [--cpu-devices 8]

R = len(jax.devices()) ranks on one mesh axis "ep" (--cpu-devices N: N virtual
CPU devices, for smoke runs). Per rank: T tokens (--tokens), H bf16, E experts
(E/R per rank), top-K distinct uniformly random experts per token, no dropped
routes. Timed, each inside jax.jit(jax.shard_map(...)):
- ours dispatch: `jax_moe.ep_dispatch` (mode normal), fp8 off/on, transport
  all_to_all and (GPU) ragged_all_to_all; returns recv.x, group sizes and the
  handle (so the metadata for the combine is part of the dispatch time);
- ours combine: `jax_moe.ep_combine` on bf16 expert rows;
- baseline dispatch / combine: `ep_dispatch_argsort` / `ep_combine_argsort`,
  transport all_to_all ([R, T*K, H] zero-padded blocks) and (GPU) ragged.
The combine's inputs (expert rows y, handle/state) come from one dispatch
outside the timed program; every call of a chain gets its own copies.

Time: benchmarks/timing.py `measure` (GPU: kernel busy time per call from the
profiler, mean over the GPUs, and span = wall time of the chain per call on the
slowest GPU; collective kernels count while they wait for peers, and kernels
on overlapping streams add up, so compare span too; CPU: wall-clock slope,
meaningless for speed, a smoke test only). Bandwidth: "useful bytes" per rank =
routed rows x H x 2 = T*K*H*2 (bf16 rows, each route's row counted once, the
same for both paths and for fp8, so GB/s = useful bytes / busy time is an
effective rate: our per-rank de-dup and fp8 raise it, padding lowers it).
Speedup = baseline us / ours us, against the baseline of the same transport
("same") and against the faster baseline transport ("best").
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 128], help="per rank")
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--cpu-devices", type=int, default=0,
                    help="virtual CPU devices (set before JAX starts; CPU smoke runs)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return ap.parse_args(argv)


ARGS = parse_args()

import jax  # noqa: E402

if ARGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", ARGS.cpu_devices)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import jax_moe  # noqa: E402
from jax_moe.references import ep as ep_refs  # noqa: E402
from timing import measure  # noqa: E402


def sharded(mesh, fn):
    """fn(*per-rank args) -> pytree of per-rank arrays (each at least 1-D),
    as one program over the mesh: every operand and result split over "ep"."""
    return jax.shard_map(fn, mesh=mesh, in_specs=P("ep"), out_specs=P("ep"))


def copies(tree):
    """Distinct buffers with the same values (XLA can neither merge calls of a
    chain nor hoist work that depends only on shared inputs)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def chain_length(platform, nbytes):
    """Calls per timed program: every call's inputs and outputs stay live."""
    return 20 if platform == "cpu" else int(np.clip(20e9 / max(nbytes, 1), 3, 10))


def cases(mesh, t, h, e, k, ragged):
    """Yields (op, impl, transport, fp8, fn, make_inputs); a generator, so each
    case's setup (combine inputs: gigabytes at T=4096) is freed after it."""
    r = mesh.size
    rng = np.random.default_rng(0)
    spec = NamedSharding(mesh, P("ep"))
    put = lambda a: jax.device_put(a, spec)
    ids = put(np.argsort(rng.random((r * t, e)), axis=1)[:, :k].astype(np.int32))
    w = put(rng.random((r * t, k)).astype(np.float32))
    # Rows made on the devices (R*T*H would be gigabytes on the host).
    x = jax.jit(lambda key: jax.random.normal(key, (r * t, h), jnp.bfloat16),
                out_shardings=spec)(jax.random.key(0))
    prog = lambda body: jax.jit(sharded(mesh, body))

    def ours_dispatch(transport, fp8):
        def body(x, ids, w):
            recv, handle = jax_moe.ep_dispatch(x, ids, w, num_experts=e, axis_name="ep",
                                               mode="normal", fp8=fp8, transport=transport)
            return recv.x, recv.group_sizes, handle
        return body

    def base_dispatch(transport):
        return lambda x, ids: ep_refs.ep_dispatch_argsort(x, ids, num_experts=e, axis_name="ep",
                                                          transport=transport)

    for tr in ["all_to_all"] + (["ragged_all_to_all"] if ragged else []):
        for fp8 in (False, True):
            yield ("dispatch", "ours", tr, fp8, prog(ours_dispatch(tr, fp8)),
                   lambda i: copies((x, ids, w)))
        # Combine inputs: one dispatch's handle; its received rows stand in for
        # the expert outputs (same shape and dtype; values do not matter here).
        y, _, handle = prog(ours_dispatch(tr, False))(x, ids, w)
        yield ("combine", "ours", tr, False, prog(jax_moe.ep_combine),
               lambda i: copies((y, handle)))
        del y, handle
    for tr in ["all_to_all"] + (["ragged"] if ragged else []):
        yield ("dispatch", "baseline", tr, False, prog(base_dispatch(tr)),
               lambda i: copies((x, ids)))
        y, _, state = prog(base_dispatch(tr))(x, ids)
        yield ("combine", "baseline", tr, False, prog(ep_refs.ep_combine_argsort),
               lambda i: copies((y, w, state)))
        del y, state


def speedups(rows):
    """ours rows get 'speedup_same' / 'speedup_best' against the baseline."""
    base = {(r["tokens"], r["op"], r["transport"]): r["us"] for r in rows
            if r["impl"] == "baseline"}
    same = {"all_to_all": "all_to_all", "ragged_all_to_all": "ragged"}
    for r in rows:
        if r["impl"] != "ours":
            continue
        b = base.get((r["tokens"], r["op"], same[r["transport"]]))
        best = min(v for (t, op, _), v in base.items() if t == r["tokens"] and op == r["op"])
        r["speedup_same"] = b / r["us"] if b and r["us"] else None
        r["speedup_best"] = best / r["us"] if r["us"] else None


def main():
    devices = jax.devices()
    platform = devices[0].platform
    mesh = Mesh(np.array(devices), ("ep",))
    r, h, e, k = len(devices), ARGS.hidden, ARGS.experts, ARGS.topk
    if e % r:
        raise SystemExit(f"--experts {e} is not a multiple of the {r} devices")
    ragged = platform != "cpu"  # XLA:CPU has no ragged-all-to-all
    print(f"devices: {r} x {devices[0].device_kind} ({platform}); per rank: H={h} bf16, "
          f"E={e} ({e // r} local), top-{k}; jax {jax.__version__}", flush=True)
    rows = []
    for t in ARGS.tokens:
        useful = t * k * h * 2
        for op, impl, tr, fp8, fn, make in cases(mesh, t, h, e, k, ragged):
            n = chain_length(platform, 4 * r * useful)  # received rows + padding, roughly
            m = measure(fn, make, device=NamedSharding(mesh, P("ep")), n=n)
            gbs = useful / (m["us"] * 1e-6) / 1e9 if m["us"] else float("nan")
            rows.append({"tokens": t, "op": op, "impl": impl, "transport": tr, "fp8": fp8,
                         "us": m["us"], "span_us": m["span_us"], "kernels": m["kernels"],
                         "useful_bytes": useful, "GBps": gbs, "by_kernel_us": m["by_kernel_us"]})
            print(f"  T={t:5d} {op:8s} {impl:8s} {tr:17s} fp8={fp8!s:5s} {m['us']:10.1f} us "
                  f"{gbs:8.3g} GB/s", flush=True)
        write(rows, devices, r, h, e, k)  # after every token count: a timeout keeps the rest
    speedups(rows)
    write(rows, devices, r, h, e, k)
    fmt = lambda v, f: "" if v is None else format(v, f)
    print(f"\nR={r} ranks of {devices[0].device_kind}, per rank H={h} bf16, E={e}, top-{k}")
    print("| tokens/rank | op | impl | transport | fp8 | us | span us | GB/s (useful) "
          "| speedup (same transport) | speedup (best baseline) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['tokens']} | {x['op']} | {x['impl']} | {x['transport']} | {x['fp8']} | "
              f"{x['us']:.1f} | {fmt(x['span_us'], '.1f')} | {x['GBps']:.3g} | "
              f"{fmt(x.get('speedup_same'), '.2f')} | {fmt(x.get('speedup_best'), '.2f')} |")


def write(rows, devices, r, h, e, k):
    os.makedirs(ARGS.out, exist_ok=True)
    path = os.path.join(ARGS.out, f"ep_multi_{devices[0].platform}.json")
    with open(path, "w") as f:
        json.dump({"device": devices[0].device_kind, "ranks": r, "jax": jax.__version__,
                   "hidden": h, "experts": e, "topk": k, "rows": rows}, f, indent=1)
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
