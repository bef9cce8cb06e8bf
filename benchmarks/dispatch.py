"""Benchmark: the one-device dispatch ops vs their pure-JAX formulations, same run.

    python benchmarks/dispatch.py [--backend gpu|cpu] [--tokens 128 4096 16384]
        [--hidden 7168] [--inter 2048] [--out DIR]

DeepSeek-V3-like shapes: H 7168 bf16, E 256, top-8 (R = T*K routed rows,
block_size 1). Cases, each ours and pure JAX:
- permute: ours = align + plan + row scatter (jax_moe.permute); also the row
  kernel alone with the plan given; JAX = stable argsort + jnp.take.
- unpermute: ours vs gather + weighted sum in float32 (einsum).
- permute backward (vjp wrt x, plan given): ours = unweighted unpermute; JAX =
  the autodiff of jnp.take (a scatter-add of the cotangent).
- unpermute backward (vjp wrt y_sorted and the weights, plan given): ours =
  weighted permute + weight gradient; JAX = the autodiff of the gather form.
- silu_and_mul on [R, 2I] bf16 (I = 2048), and with FP8 output (per-128-channel
  e4m3 + float32 scales); JAX = jax.nn.silu(g) * u (+ the quantization in jnp,
  jax_moe.references.silu).
- copy: a read+write elementwise pass over a bf16 array of R*H elements.

Time per call: benchmarks/timing.py (GPU: kernel busy time from the profiler
over a chain of n calls on n distinct inputs, median of runs; CPU: wall slope).
GB/s counts the fewest bytes each op must move; "of copy" divides by the copy
bandwidth measured in the same run (the spec's H200 figure, 4.28 TB/s, is
printed beside it). Writes a markdown table, JSON and a PNG under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import jax_moe  # noqa: E402
from jax_moe._permute_prims import permute_p, unpermute_p  # noqa: E402
from jax_moe.references import silu as silu_ref  # noqa: E402
from jax_moe.references.permute import permute_argsort, unpermute_gather  # noqa: E402
from timing import copy_op, measure  # noqa: E402

SPEC_COPY_GBS = 4280.0
BF16 = jnp.bfloat16


def chain_length(device, nbytes):
    """Calls per timed program: distinct inputs and outputs of every call stay
    live at once, so big cases get short chains (3 at 16384 tokens)."""
    if device.platform == "cpu":
        return 20  # unused by the CPU timer
    return int(np.clip(24e9 / max(nbytes, 1), 3, 20))


def make_generators(T, H, E, K, I):
    """Jitted per-index input generators (run on the default device)."""
    R = T * K

    @jax.jit
    def routing(i):
        key = jax.random.fold_in(jax.random.key(1), i)
        k1, k2 = jax.random.split(key)
        ids = jax.lax.top_k(jax.random.uniform(k1, (T, E)), K)[1].astype(jnp.int32)
        w = jax.random.uniform(k2, (T, K), jnp.float32)
        return ids, w

    @jax.jit
    def plan_of(ids):
        _, plan = jax_moe.permute(jnp.zeros((T, 1), BF16), ids, E)
        _, _, inverse = permute_argsort(jnp.zeros((T, 1), BF16), ids, E)
        return plan, inverse

    def rows(n, width, salt):
        f = jax.jit(lambda i: jax.random.normal(
            jax.random.fold_in(jax.random.key(salt), i), (n, width), jnp.float32).astype(BF16))
        return f

    return routing, plan_of, rows(T, H, 2), rows(R, H, 3), rows(R, 2 * I, 4)


def cases_for(T, H, E, K, I):
    """name -> (impl, fn, make_inputs(i), fewest bytes)."""
    R = T * K
    routing, plan_of, rows_t, rows_r, rows_h = make_generators(T, H, E, K, I)
    none = jnp.zeros((0,), jnp.float32)
    row_bytes = H * 2

    def x_ids(i):
        return rows_t(i), routing(i)[0]

    def plan_in(i):
        ids, w = routing(i)
        plan, inverse = plan_of(ids)
        return ids, w, plan, inverse

    def ours_rows(i):
        _, _, plan, _ = plan_in(i)
        return rows_t(i), plan.sorted_token_ids, plan.route_rows

    def ours_unpermute(i):
        _, w, plan, _ = plan_in(i)
        return rows_r(i), plan, w

    def jax_unpermute(i):
        _, w, _, inverse = plan_in(i)
        return rows_r(i), inverse, w

    def ours_perm_bwd(i):
        _, _, plan, _ = plan_in(i)
        return rows_r(i), plan.sorted_token_ids, plan.route_rows

    def jax_perm_bwd(i):
        _, _, _, inverse = plan_in(i)
        order = jnp.argsort(inverse.reshape(-1))  # row -> route
        return rows_r(i), (order // K).astype(jnp.int32)

    def ours_unperm_bwd(i):
        _, w, plan, _ = plan_in(i)
        return rows_r(i), w, rows_t(i + 1000), plan.sorted_token_ids, plan.route_rows

    def jax_unperm_bwd(i):
        _, w, _, inverse = plan_in(i)
        return rows_r(i), w, rows_t(i + 1000), inverse

    def permute_rows(x, sid, rr):
        return permute_p.bind(x, none, sid, rr, num_batch_dims=0, weighted=False)

    def perm_bwd_ours(ct, sid, rr):
        x_spec = jax.ShapeDtypeStruct((T, H), BF16)
        return jax.linear_transpose(lambda x: permute_rows(x, sid, rr), x_spec)(ct)[0]

    def perm_bwd_jax(ct, token_of_row):
        x0 = jnp.zeros((T, H), BF16)
        return jax.vjp(lambda x: jnp.take(x, token_of_row, axis=0), x0)[1](ct)[0]

    def unperm_bwd_ours(y, w, ct, sid, rr):
        f = lambda y, w: unpermute_p.bind(y, w, sid, rr, num_batch_dims=0, weighted=True)
        return jax.vjp(f, y, w)[1](ct)

    def unperm_bwd_jax(y, w, ct, inverse):
        return jax.vjp(lambda y, w: unpermute_gather(y, inverse, w), y, w)[1](ct)

    silu_bytes = R * (2 * I + I) * 2
    fp8_bytes = R * (2 * I * 2 + I + I // 128 * 4)
    route_bytes = R * 8  # route_rows / weights, minor
    return {
        "copy": [("copy", copy_op, lambda i: (rows_r(i),),
                  2 * R * row_bytes)],
        "permute": [
            ("ours", lambda x, ids: jax_moe.permute(x, ids, E)[0], x_ids, (T + R) * row_bytes),
            ("ours, rows only", permute_rows, ours_rows, (T + R) * row_bytes),
            ("JAX argsort+take", lambda x, ids: permute_argsort(x, ids, E)[0], x_ids,
             (T + R) * row_bytes)],
        "unpermute": [
            ("ours", jax_moe.unpermute, ours_unpermute, (R + T) * row_bytes + route_bytes),
            ("JAX gather+einsum", unpermute_gather, jax_unpermute,
             (R + T) * row_bytes + route_bytes)],
        "permute bwd": [
            ("ours", perm_bwd_ours, ours_perm_bwd, (R + T) * row_bytes),
            ("JAX scatter-add", perm_bwd_jax, jax_perm_bwd, (R + T) * row_bytes)],
        "unpermute bwd": [
            ("ours", unperm_bwd_ours, ours_unperm_bwd, (T + 2 * R) * row_bytes + route_bytes),
            ("JAX autodiff", unperm_bwd_jax, jax_unperm_bwd, (T + 2 * R) * row_bytes + route_bytes)],
        "silu_and_mul": [
            ("ours", jax_moe.silu_and_mul, lambda i: (rows_h(i),), silu_bytes),
            ("JAX", silu_ref.silu_and_mul, lambda i: (rows_h(i),), silu_bytes)],
        "silu_and_mul fp8": [
            ("ours", lambda h: jax_moe.silu_and_mul(h, fp8=True), lambda i: (rows_h(i),), fp8_bytes),
            ("JAX", silu_ref.silu_and_mul_fp8, lambda i: (rows_h(i),), fp8_bytes)],
    }


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = sorted({r["tokens"] for r in rows})
    labels = [f"{r['op']}\n{r['impl']}" for r in rows if r["tokens"] == tokens[-1]]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4.5))
    width = 0.8 / len(tokens)
    for n, t in enumerate(tokens):
        vals = [r["frac_copy"] * 100 for r in rows if r["tokens"] == t]
        ax.bar(np.arange(len(vals)) + n * width, vals, width, label=f"{t} tokens")
    ax.axhline(100, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)) + width * (len(tokens) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("% of measured copy bandwidth")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default=None)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 4096, 16384])
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--inter", type=int, default=2048)
    ap.add_argument("--only", nargs="*", default=None, help="op names to run (copy always runs)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    device = jax.devices(args.backend)[0] if args.backend else jax.devices()[0]
    H, E, K, I = args.hidden, args.experts, args.topk, args.inter
    print(f"device: {device.device_kind} ({device.platform}); H={H} E={E} top-{K} I={I} bf16; "
          f"spec copy bandwidth {SPEC_COPY_GBS / 1e3:.2f} TB/s", flush=True)
    rows = []
    with jax.default_device(device):
        for T in args.tokens:
            copy_gbs = None
            for op, impls in cases_for(T, H, E, K, I).items():
                if args.only and op != "copy" and op not in args.only:
                    continue
                for impl, fn, mk, nbytes in impls:
                    m = measure(fn, mk, device=device, n=chain_length(device, nbytes))
                    gbs = nbytes / (m["us"] * 1e-6) / 1e9 if m["us"] else float("nan")
                    if op == "copy":
                        copy_gbs = gbs
                    rows.append({"tokens": T, "op": op, "impl": impl, "us": m["us"],
                                 "span_us": m["span_us"], "kernels": m["kernels"],
                                 "by_kernel_us": m.get("by_kernel_us") or {},
                                 "bytes": nbytes, "GBps": gbs, "frac_copy": gbs / copy_gbs,
                                 "frac_spec_copy": gbs / SPEC_COPY_GBS})
                    print(f"  T={T:6d} {op:17s} {impl:18s} {m['us']:10.1f} us {gbs:8.0f} GB/s "
                          f"{gbs / copy_gbs:6.0%} of copy", flush=True)
                    if m.get("by_kernel_us") and len(m["by_kernel_us"]) > 1:  # where the time goes
                        print("      " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                   m["by_kernel_us"].items()), flush=True)
    print("\n| tokens | op | impl | us | GB/s (fewest bytes) | of measured copy | of 4.28 TB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['op']} | {r['impl']} | {r['us']:.1f} | {r['GBps']:.0f} | "
              f"{r['frac_copy']:.0%} | {r['frac_spec_copy']:.0%} |")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"dispatch_{device.platform}")
    with open(stem + ".json", "w") as f:
        json.dump({"device": device.device_kind, "jax": jax.__version__, "hidden": H,
                   "experts": E, "topk": K, "inter": I, "spec_copy_GBps": SPEC_COPY_GBS,
                   "rows": rows}, f, indent=1)
    plot(rows, stem + ".png")
    print("wrote", stem + ".json", stem + ".png")


if __name__ == "__main__":
    main()
