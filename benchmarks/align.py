"""Benchmark: moe_align_block_size vs the best pure-JAX formulations, same run.

GPU times are kernel busy time per call read from the JAX profiler ("ours us",
and for the baselines), with the per-call span (first kernel start to last
kernel end, gaps included) beside ours; see benchmarks/timing.py.

    python benchmarks/align.py [--backend gpu|cpu] [--tokens 1 16 ...] [--out DIR]

Per-call device time (benchmarks/timing.py: chains of calls inside one jit,
median over repeats) for our custom call and the pure-JAX argsort and one-hot
formulations (jax_moe/references/align.py); prints a table and writes JSON and
a PNG plot. Peer figures are those of shared/spec/align.md (H200).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax
import jaxlib
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import jax_moe  # noqa: E402
from jax_moe.references.align import align_argsort, align_onehot  # noqa: E402
from timing import measure  # noqa: E402

CONFIGS = [(8, 2, 16), (64, 2, 128), (256, 8, 64), (1024, 8, 64)]  # (E, topk, bs)
TOKENS = [1, 16, 128, 1024, 4096, 16384, 65536]
# Fastest public kernel per shape on one H200 (shared/spec/align.md), microseconds.
PEERS_US = {(1, 2, 64, 128): 1.3, (128, 2, 64, 128): 2.4, (4096, 2, 64, 128): 6.8,
            (65536, 2, 64, 128): 48.9, (4096, 8, 256, 64): 10.3, (65536, 8, 256, 64): 119.0,
            (65536, 8, 8, 64): 163.0}
ONEHOT_MAX_BYTES = 1 << 28  # skip the one-hot formulation beyond 256 MB of one-hot


def bench_one(tokens, E, K, bs, device, rng, ours_only=False):
    def make(i):
        return (rng.integers(0, E, size=(tokens, K), dtype=np.int32),)
    ours = lambda ids: jax_moe.moe_align_block_size(ids, E, bs)
    row = {"tokens": tokens, "topk": K, "experts": E, "block": bs}
    m = measure(ours, make, device=device)
    row.update(ours_us=m["us"], ours_span_us=m["span_us"], ours_kernels=m["kernels"],
               ours_by_kernel_us=m["by_kernel_us"])
    row["peer_us"] = PEERS_US.get((tokens, K, E, bs))
    row["onehot_us"] = row["onehot_span_us"] = row["best_jax_us"] = row["speedup_vs_jax"] = None
    if ours_only:
        row["argsort_us"] = row["argsort_span_us"] = None
        return row
    m = measure(lambda ids: align_argsort(ids, E, bs), make, device=device)
    row.update(argsort_us=m["us"], argsort_span_us=m["span_us"])
    if tokens * K * E * 4 <= ONEHOT_MAX_BYTES:
        m = measure(lambda ids: align_onehot(ids, E, bs), make, device=device)
        row.update(onehot_us=m["us"], onehot_span_us=m["span_us"])
    row["best_jax_us"] = min(v for v in (row["argsort_us"], row["onehot_us"]) if v is not None)
    row["speedup_vs_jax"] = row["best_jax_us"] / max(row["ours_us"], 1e-9)
    return row


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def print_table(rows):
    head = f"{'tokens':>7} {'K':>2} {'E':>5} {'bs':>4} | {'ours us':>8} {'span us':>8} " \
           f"{'argsort':>8} {'one-hot':>8} | {'x vs JAX':>8} | {'peer us':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['tokens']:>7} {r['topk']:>2} {r['experts']:>5} {r['block']:>4} | "
              f"{fmt(r['ours_us'], 2):>8} {fmt(r['ours_span_us'], 2):>8} "
              f"{fmt(r['argsort_us']):>8} {fmt(r['onehot_us']):>8} | "
              f"{fmt(r['speedup_vs_jax']):>8} | {fmt(r['peer_us']):>7}")


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(CONFIGS), figsize=(4.2 * len(CONFIGS), 3.6), sharey=True)
    for ax, (E, K, bs) in zip(np.atleast_1d(axes), CONFIGS):
        sub = [r for r in rows if (r["experts"], r["topk"], r["block"]) == (E, K, bs)]
        if not sub:
            continue
        t = [r["tokens"] for r in sub]
        ax.loglog(t, [r["ours_us"] for r in sub], "o-", label="jax_moe")
        ax.loglog(t, [r["argsort_us"] for r in sub], "s--", label="pure JAX argsort")
        oh = [(r["tokens"], r["onehot_us"]) for r in sub if r["onehot_us"]]
        if oh:
            ax.loglog(*zip(*oh), "^--", label="pure JAX one-hot")
        peers = [(r["tokens"], r["peer_us"]) for r in sub if r["peer_us"]]
        if peers:
            ax.loglog(*zip(*peers), "k*", ms=10, label="fastest peer (spec)")
        ax.set_title(f"E={E} top-{K} bs={bs}")
        ax.set_xlabel("tokens")
        ax.grid(True, which="both", alpha=.3)
    np.atleast_1d(axes)[0].set_ylabel("us per call")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default=None, help="gpu or cpu (default: jax's default)")
    ap.add_argument("--tokens", type=int, nargs="*", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--ours-only", action="store_true",
                    help="skip the pure-JAX baselines (A/B runs of our kernels; no plot)")
    args = ap.parse_args(argv)
    device = jax.devices(args.backend)[0] if args.backend else jax.devices()[0]
    tokens = args.tokens or (TOKENS if device.platform != "cpu" else TOKENS[:5])
    rng = np.random.default_rng(0)
    rows = []
    for (E, K, bs) in CONFIGS:
        for t in tokens:
            rows.append(bench_one(t, E, K, bs, device, rng, args.ours_only))
            r = rows[-1]
            print(f"  measured tokens={t} E={E}: ours {r['ours_us']:.2f} us, best pure JAX "
                  f"{fmt(r['best_jax_us'])} us", flush=True)
            if r["ours_by_kernel_us"]:
                print("    " + ", ".join(f"{k} {v:.2f}" for k, v in r["ours_by_kernel_us"].items()))
    meta = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "python": platform.python_version(), "command": " ".join(sys.argv)}
    title = f"moe_align_block_size on {device.device_kind}, jax {jax.__version__}"
    print(title)
    print_table(rows)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"align_{device.platform}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.ours_only:
        print(f"wrote {stem}.json")
        return
    plot(rows, stem + ".png", title)
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
