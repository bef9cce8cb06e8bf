"""A small MoE transformer block with expert parallelism under `jax.shard_map`.

Block: x + attention(rms(x)), then + MoE(rms(.)) with a softmax top-k router
and SwiGLU experts. Sequences are split over the "ep" mesh axis (all local
devices: the GPUs, or 8 virtual CPU devices when there is no GPU); experts are
split over the same axis and reached with `jax_moe.ep_dispatch` /
`jax_moe.ep_combine`. The EP block is checked against the same block on one
device (forward and gradients of every parameter and of x), in both modes.
Prints max errors and timings; exits non-zero on a mismatch.

    python examples/ep_shard_map.py
"""
from __future__ import annotations

import sys
import time

import jax

# Only affects the CPU backend; must precede its initialization.
jax.config.update("jax_num_cpu_devices", 8)
# Full float32 matmuls: on GPUs XLA's default float32 dot may round inputs to
# TF32, and the EP block and the reference multiply in different groupings, so
# the 1e-5 / 1e-4 checks below would measure TF32 rounding (seen on 2 x H200:
# gradients 1.3e-4 apart at the default precision). CPUs are unaffected.
jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

import jax_moe  # noqa: E402
from jax_moe.references import ep as ep_refs  # noqa: E402

SEQ, HID, HEADS, FFN, EXPERTS_PER_RANK, TOPK = 16, 64, 4, 32, 2, 3


def rms(x):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def attention(x, p):
    """Causal multi-head self-attention over [B, S, H] (local to a sequence)."""
    b, s, h = x.shape
    q, k, v = (jnp.einsum("bsh,hd->bsd", x, p[n]).reshape(b, s, HEADS, h // HEADS)
               for n in ("wq", "wk", "wv"))
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(h // HEADS)
    logits = jnp.where(jnp.tril(jnp.ones((s, s), bool)), logits, -1e30)
    o = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, -1), v).reshape(b, s, h)
    return o @ p["wo"]


def route(h, router):
    """Softmax top-k: (ids int32 [T, K], renormalised weights float32 [T, K])."""
    probs = jax.nn.softmax(h @ router, axis=-1)
    w, ids = jax.lax.top_k(probs, TOPK)
    return ids.astype(jnp.int32), w / jnp.sum(w, axis=-1, keepdims=True)


def block(x, p, moe):
    """x [B, S, H] -> [B, S, H]; `moe(h [T, H], ids, w) -> [T, H]`."""
    x = x + attention(rms(x), p)
    b, s, hid = x.shape
    h = rms(x).reshape(b * s, hid)
    ids, w = route(h, p["router"])
    return x + moe(h, ids, w).reshape(b, s, hid)


def reference_block(x, p, num_experts):
    experts = (p["w_gate"], p["w_up"], p["w_down"])
    return block(x, p, lambda h, ids, w: ep_refs.moe_reference(h, ids, w, experts,
                                                               num_experts=num_experts))


def ep_block(mesh, num_experts, mode):
    """The block with tokens and experts split over "ep"; other params replicated."""
    def moe(p):
        def f(h, ids, w):
            recv, handle = jax_moe.ep_dispatch(h, ids, w, num_experts=num_experts,
                                               axis_name="ep", mode=mode)
            experts = (p["w_gate"], p["w_up"], p["w_down"])  # this rank's [El, ...]
            if handle.mode == "low_latency":
                y = ep_refs.swiglu_batched(recv.x, experts)
            else:
                y = ep_refs.swiglu_grouped(recv.x, recv.group_sizes, experts)
            return jax_moe.ep_combine(y.astype(h.dtype), handle)
        return f

    def body(x, p):
        return block(x, p, moe(p))

    specs = {n: P("ep") if n.startswith("w_") else P() for n in PARAM_NAMES}
    return jax.shard_map(body, mesh=mesh, in_specs=(P("ep"), specs), out_specs=P("ep"))


PARAM_NAMES = ("wq", "wk", "wv", "wo", "router", "w_gate", "w_up", "w_down")


def init(key, num_experts):
    ks = jax.random.split(key, len(PARAM_NAMES))
    shapes = {"wq": (HID, HID), "wk": (HID, HID), "wv": (HID, HID), "wo": (HID, HID),
              "router": (HID, num_experts), "w_gate": (num_experts, HID, FFN),
              "w_up": (num_experts, HID, FFN), "w_down": (num_experts, FFN, HID)}
    return {n: jax.random.normal(k, shapes[n], jnp.float32) / np.sqrt(shapes[n][-2])
            for n, k in zip(PARAM_NAMES, ks)}


def timed(f, *args, reps=3):
    jax.block_until_ready(f(*args))  # compile
    t0 = time.perf_counter()
    for _ in range(reps):
        out = jax.block_until_ready(f(*args))
    return out, (time.perf_counter() - t0) / reps * 1e3


def max_rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main() -> int:
    devices = jax.devices()
    if devices[0].platform == "cpu":
        devices = jax.devices("cpu")[:8]
    r = len(devices)
    mesh = Mesh(np.array(devices), ("ep",))
    num_experts = EXPERTS_PER_RANK * r
    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2 * r, SEQ, HID), jnp.float32)  # 2 sequences per rank
    p = init(kp, num_experts)
    print(f"{r} x {devices[0].platform} devices, E={num_experts}, top-{TOPK}, "
          f"tokens/rank={2 * SEQ}, H={HID}")

    loss = lambda f: (lambda x, p: jnp.sum(f(x, p) ** 2))
    ref_fwd = jax.jit(lambda x, p: reference_block(x, p, num_experts))
    ref_grad = jax.jit(jax.grad(loss(ref_fwd), argnums=(0, 1)))
    want, t_ref = timed(ref_fwd, x, p)
    gwant, t_ref_g = timed(ref_grad, x, p)
    print(f"  reference (1 device): fwd {t_ref:.2f} ms, grad {t_ref_g:.2f} ms")

    ok = True
    for mode in ("normal", "low_latency"):
        fwd = jax.jit(ep_block(mesh, num_experts, mode))
        grad = jax.jit(jax.grad(loss(fwd), argnums=(0, 1)))
        out, t_fwd = timed(fwd, x, p)
        g, t_grad = timed(grad, x, p)
        e_fwd, e_grad = max_rel(out, want), max_rel(g, gwant)
        same = bool(jnp.array_equal(out, fwd(x, p)))
        good = e_fwd < 1e-5 and e_grad < 1e-4 and same
        ok &= good
        print(f"  ep {mode:11s}: fwd {t_fwd:.2f} ms, grad {t_grad:.2f} ms | max rel err "
              f"fwd {e_fwd:.1e}, grads {e_grad:.1e} | bit-identical rerun {same} "
              f"-> {'OK' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
