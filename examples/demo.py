"""The seed scenario: align 4096 tokens x top-2 over 64 experts, block 128.

Runs on the backend present (GPU if there is one), checks the result against the
spec's reference, and prints our time against the best pure-JAX formulation.
Exits non-zero on any mismatch.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax_moe  # noqa: E402
from jax_moe.references.align import align_argsort, align_onehot  # noqa: E402
from timing import per_call_seconds  # noqa: E402

TOKENS, TOPK, EXPERTS, BLOCK = 4096, 2, 64, 128


def reference(ids, num_experts, block_size):
    """numpy, straight from shared/spec/align.md."""
    flat = ids.reshape(-1)
    counts = np.bincount(flat, minlength=num_experts)
    padded = -(-counts // block_size) * block_size
    start = np.concatenate([[0], np.cumsum(padded)[:-1]])
    p = flat.size + min(flat.size, num_experts) * (block_size - 1)
    sorted_ids = np.full(p, flat.size, np.int32)
    expert_ids = np.full(-(-p // block_size), -1, np.int32)
    for e in range(num_experts):
        idx = np.nonzero(flat == e)[0]
        sorted_ids[start[e]:start[e] + counts[e]] = idx
        expert_ids[start[e] // block_size:(start[e] + padded[e]) // block_size] = e
    return sorted_ids, expert_ids, np.array([padded.sum()], np.int32)


def main():
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, EXPERTS, size=(TOKENS, TOPK), dtype=np.int32)
    align = jax.jit(lambda x: jax_moe.moe_align_block_size(x, EXPERTS, BLOCK, TOPK))
    got = [np.asarray(o) for o in align(jax.device_put(ids, device))]
    ok = all(np.array_equal(g, w) for g, w in zip(got, reference(ids, EXPERTS, BLOCK)))
    print(f"moe_align_block_size {TOKENS} tokens x top-{TOPK}, {EXPERTS} experts, block {BLOCK} "
          f"on {device.device_kind}: {'matches' if ok else 'DIFFERS FROM'} the reference")

    make = lambda i: (rng.integers(0, EXPERTS, size=(TOKENS, TOPK), dtype=np.int32),)
    ours = per_call_seconds(lambda x: jax_moe.moe_align_block_size(x, EXPERTS, BLOCK), make,
                            device=device)
    base = {name: per_call_seconds(lambda x, f=f: f(x, EXPERTS, BLOCK), make, device=device)
            for name, f in (("argsort", align_argsort), ("one-hot", align_onehot))}
    best = min(base, key=base.get)
    print(f"  jax_moe:            {ours * 1e6:9.2f} us per call")
    for name, t in base.items():
        print(f"  pure JAX {name:8s}:  {t * 1e6:9.2f} us per call")
    print(f"  speed-up vs best pure JAX ({best}): {base[best] / max(ours, 1e-12):.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
