"""A jit-compiled training step of a small MoE block with jax_moe.

router (softmax top-k, renormalised) -> moe_mlp (permute, ragged_dot,
silu_and_mul, ragged_dot, unpermute) + a shared expert; loss, grad, SGD update,
all inside one jax.jit. Checks the first step's loss and gradients against the
dense per-token reference, trains a few steps, then times the loss-and-grad step
against the same block built from the best plain-JAX layer (argsort permute,
ragged_dot, gather combine). Exits non-zero on mismatch.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax_moe  # noqa: E402
from jax_moe.references.layer import moe_mlp_argsort, moe_mlp_dense  # noqa: E402
from timing import per_call_seconds  # noqa: E402

T, H, I, E, K, IS = 256, 64, 32, 8, 2, 32
HI = jax.lax.Precision.HIGHEST


def init(rng):
    n = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[-2]), jnp.float32)
    return {"router": n(H, E), "w_gate_up": n(E, H, 2 * I), "w_down": n(E, I, H),
            "shared_gate_up": n(H, 2 * IS), "shared_down": n(IS, H)}


def block(params, x, mlp):
    ids, w = jax_moe.route(x @ params["router"], K, renormalize=True)
    shared = (params["shared_gate_up"], params["shared_down"])
    kw = {} if mlp is moe_mlp_dense else {"precision": HI}
    return x + mlp(x, ids, w, params["w_gate_up"], params["w_down"], shared_experts=shared, **kw)


def loss_fn(params, x, y, mlp=jax_moe.moe_mlp):
    return jnp.mean((block(params, x, mlp) - y) ** 2)


@jax.jit
def train_step(params, x, y, lr=0.1):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def main():
    rng = np.random.default_rng(0)
    params = init(rng)
    x = jnp.asarray(rng.normal(size=(T, H)), jnp.float32)
    y = jnp.tanh(x @ jnp.asarray(rng.normal(size=(H, H)) / np.sqrt(H), jnp.float32))

    l_ours, g_ours = jax.jit(jax.value_and_grad(loss_fn))(params, x, y)
    l_ref, g_ref = jax.value_and_grad(lambda p: loss_fn(p, x, y, moe_mlp_dense))(params)
    errs = {k: float(jnp.linalg.norm(g_ours[k] - g_ref[k]) / jnp.linalg.norm(g_ref[k]))
            for k in g_ref}
    ok = abs(float(l_ours) - float(l_ref)) <= 1e-5 * abs(float(l_ref)) and max(errs.values()) < 1e-4
    print(f"loss {float(l_ours):.6f} (dense reference {float(l_ref):.6f}); "
          f"max relative grad error {max(errs.values()):.2e} -> {'OK' if ok else 'MISMATCH'}")
    for step in range(20):
        params, loss = train_step(params, x, y)
        if step % 5 == 0 or step == 19:
            print(f"step {step:2d} loss {float(loss):.5f}")
    report_time(params, x, y)
    return 0 if ok else 1


def report_time(params, x, y):
    """Per-call device time of loss+grad with our layer and with the plain-JAX one."""
    def step_seconds(mlp):
        step = lambda p, x, y: jax.value_and_grad(loss_fn)(p, x, y, mlp)
        return per_call_seconds(step, lambda i: (params, x + i * 1e-3, y))

    ours, base = step_seconds(jax_moe.moe_mlp), step_seconds(moe_mlp_argsort)
    print(f"loss+grad step ({T} tokens, {E} experts, top-{K}, {jax.default_backend()}): "
          f"ours {ours * 1e6:.0f} us, pure JAX {base * 1e6:.0f} us ({base / ours:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
