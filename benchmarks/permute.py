"""Benchmark: permute / unpermute vs pure JAX (argsort + take / gather), same run.

    python benchmarks/permute.py [--backend gpu|cpu] [--out DIR]

Shapes: DeepSeek-like rows (H 7168 bf16, E 256, top-8) at 128 and 4096 tokens.
Times per call (benchmarks/timing.py). GB/s counts the fewest bytes each op
must move, (T + T*K) rows of H bf16 (permute: read each token row once, write
each route row; unpermute: read each route row, write each token row), against
the H200 copy bandwidth of the spec (4.28 TB/s, read + write).
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
from jax_moe.references.permute import permute_argsort, unpermute_gather  # noqa: E402
from timing import measure  # noqa: E402

COPY_GBS = 4280.0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default=None)
    ap.add_argument("--tokens", type=int, nargs="*", default=[128, 4096])
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    device = jax.devices(args.backend)[0] if args.backend else jax.devices()[0]
    E, K, H = 256, 8, args.hidden
    rng = np.random.default_rng(0)
    rows = []
    for T in args.tokens:
        def make(i):
            ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
            x = jnp.asarray(rng.normal(size=(T, H)), jnp.bfloat16)
            w = rng.random((T, K)).astype(np.float32)
            return x, ids, w
        x0, ids0, w0 = make(0)
        _, plan0 = jax.jit(lambda x, i: jax_moe.permute(x, i, E))(x0, ids0)
        _, _, inv0 = jax.jit(lambda x, i: permute_argsort(x, i, E))(x0, ids0)
        y0 = jnp.asarray(rng.normal(size=(plan0.sorted_token_ids.shape[0], H)), jnp.bfloat16)
        cases = {
            "permute (ours)": (lambda x, i: jax_moe.permute(x, i, E)[0], lambda _: (x0, ids0)),
            "permute (JAX argsort+take)": (lambda x, i: permute_argsort(x, i, E)[0], lambda _: (x0, ids0)),
            "unpermute (ours)": (lambda y, p, w: jax_moe.unpermute(y, p, w), lambda _: (y0, plan0, w0)),
            "unpermute (JAX gather)": (lambda y, v, w: unpermute_gather(y, v, w),
                                       lambda _: (y0[: T * K], inv0, w0)),
        }
        bytes_moved = (T + T * K) * H * 2
        for name, (fn, mk) in cases.items():
            m = measure(fn, mk, device=device)
            gbs = bytes_moved / (m["us"] * 1e-6) / 1e9 if m["us"] else float("nan")
            rows.append({"tokens": T, "hidden": H, "experts": E, "topk": K, "op": name,
                         "us": m["us"], "span_us": m["span_us"], "GBps": gbs,
                         "frac_copy_bw": gbs / COPY_GBS})
            print(f"T={T:5d} {name:28s} {m['us']:9.2f} us  {gbs:8.1f} GB/s  "
                  f"{100 * gbs / COPY_GBS:5.1f}% of copy bw", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"permute_{device.platform}.json")
    with open(path, "w") as f:
        json.dump({"device": device.device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
