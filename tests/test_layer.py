"""moe_mlp (permute -> ragged_dot -> silu_and_mul -> ragged_dot -> unpermute)
against the dense per-token reference: values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax_moe
from jax_moe.references.layer import moe_mlp_argsort, moe_mlp_dense
from test_permute import has_scatter

CPU = jax.devices("cpu")[0]
HI = jax.lax.Precision.HIGHEST


def case(rng, T=24, H=16, I=8, E=6, K=2, dtype=jnp.float32, drop=0.15):
    x = jnp.asarray(rng.normal(size=(T, H)), dtype)
    ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    ids = np.where(rng.random((T, K)) < drop, -1, ids)
    w = jnp.asarray(rng.random((T, K)), jnp.float32)
    wgu = jnp.asarray(rng.normal(size=(E, H, 2 * I)) / np.sqrt(H), jnp.float32)
    wd = jnp.asarray(rng.normal(size=(E, I, H)) / np.sqrt(I), jnp.float32)
    return x, jnp.asarray(ids), w, wgu, wd


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("block_size", [1, 4])
def test_forward_float32(rng, block_size):
    x, ids, w, wgu, wd = case(rng)
    with jax.default_device(CPU):
        y = jax.jit(lambda *a: jax_moe.moe_mlp(*a, block_size=block_size, precision=HI))(
            x, ids, w, wgu, wd)
        ref = moe_mlp_dense(x, ids, w, wgu, wd)
    assert rel_err(y, ref) < 1e-5


def test_forward_bf16(rng):
    x, ids, w, wgu, wd = case(rng, dtype=jnp.bfloat16)
    with jax.default_device(CPU):
        y = jax.jit(jax_moe.moe_mlp)(x, ids, w, wgu, wd)
        ref = moe_mlp_dense(x.astype(jnp.float32), ids, w, wgu, wd)
    assert rel_err(y, ref) < 2e-2


def test_pure_jax_baseline_layer_equals_dense(rng):
    # The baseline the layer example times us against must compute the same
    # layer (dropped routes, shared experts, scaling included) and its grads.
    x, ids, w, wgu, wd = case(rng)
    shared = (jnp.asarray(rng.normal(size=(16, 10)), jnp.float32),
              jnp.asarray(rng.normal(size=(5, 16)), jnp.float32))
    kw = dict(shared_experts=shared, routed_scaling_factor=1.5)
    with jax.default_device(CPU):
        y = jax.jit(lambda *a: moe_mlp_argsort(*a, precision=HI, **kw))(x, ids, w, wgu, wd)
        assert rel_err(y, moe_mlp_dense(x, ids, w, wgu, wd, **kw)) < 1e-5
        loss = lambda f: (lambda *a: jnp.sum(f(*a) ** 2))
        g = jax.grad(loss(lambda *a: moe_mlp_argsort(*a, precision=HI, **kw)), (0, 2, 3, 4))(
            x, ids, w, wgu, wd)
        g_ref = jax.grad(loss(lambda *a: moe_mlp_dense(*a, **kw)), (0, 2, 3, 4))(x, ids, w, wgu, wd)
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-5


def test_shared_experts_and_scaling(rng):
    x, ids, w, wgu, wd = case(rng)
    shared = (jnp.asarray(rng.normal(size=(16, 10)), jnp.float32),
              jnp.asarray(rng.normal(size=(5, 16)), jnp.float32))
    with jax.default_device(CPU):
        y = jax_moe.moe_mlp(x, ids, w, wgu, wd, shared_experts=shared,
                            routed_scaling_factor=2.5, precision=HI)
        ref = moe_mlp_dense(x, ids, w, wgu, wd, shared_experts=shared, routed_scaling_factor=2.5)
    assert rel_err(y, ref) < 1e-5


def test_gradients_match_dense(rng):
    x, ids, w, wgu, wd = case(rng)
    tgt = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(f):
        return lambda x, w, wgu, wd: jnp.sum((f(x, ids, w, wgu, wd) - tgt) ** 2)

    ours = loss(lambda *a: jax_moe.moe_mlp(*a, block_size=2, precision=HI))
    ref = loss(moe_mlp_dense)
    with jax.default_device(CPU):
        g = jax.jit(jax.grad(ours, argnums=(0, 1, 2, 3)))(x, w, wgu, wd)
        gr = jax.grad(ref, argnums=(0, 1, 2, 3))(x, w, wgu, wd)
    for a, b, name in zip(g, gr, ("x", "topk_weights", "w_gate_up", "w_down")):
        assert rel_err(a, b) < 1e-5, name


def test_grad_hlo_has_no_scatter(rng):
    x, ids, w, wgu, wd = case(rng)
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(jax_moe.moe_mlp(x, ids, w, wgu, wd)), (0, 1)))
    assert not has_scatter(f.lower(x, w).compile().as_text())


def test_router_then_layer(rng):
    T, H, E, K = 32, 16, 8, 2
    x, _, _, wgu, wd = case(rng, T=T, H=H, E=E)
    logits = jnp.asarray(rng.normal(size=(T, E)), jnp.float32)
    ids, w = jax_moe.route(logits, K, renormalize=True)
    with jax.default_device(CPU):
        y = jax_moe.moe_mlp(x, ids, w, wgu, wd, precision=HI)
    assert rel_err(y, moe_mlp_dense(x, ids, w, wgu, wd)) < 1e-5


def test_bad_weight_shapes(rng):
    x, ids, w, wgu, wd = case(rng)
    with pytest.raises(ValueError, match="w_down"):
        jax_moe.moe_mlp(x, ids, w, wgu, wd[:, :3])
    with pytest.raises(ValueError, match="w_gate_up"):
        jax_moe.moe_mlp(x, ids, w, wgu[:, :5], wd)


@settings(max_examples=15)
@given(T=st.integers(1, 40), H=st.integers(1, 24), I=st.integers(1, 12), E=st.integers(1, 9),
       K=st.integers(1, 3), bs=st.sampled_from([1, 3, 8]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_shapes(T, H, I, E, K, bs, seed):
    rng = np.random.default_rng(seed)
    K = min(K, E)
    x, ids, w, wgu, wd = case(rng, T=T, H=H, I=I, E=E, K=K)
    with jax.default_device(CPU):
        y = jax_moe.moe_mlp(x, ids, w, wgu, wd, block_size=bs, precision=HI)
        ref = moe_mlp_dense(x, ids, w, wgu, wd)
    assert rel_err(y, ref) < 1e-5 or np.linalg.norm(np.asarray(ref)) < 1e-6
