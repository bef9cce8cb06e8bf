"""moe_align_block_size on the CPU backend against the spec's numpy reference,
plus its JAX transformations and argument checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import jax_moe
from jax_moe.references import align as align_refs
from reference_align import align_reference

CPU = jax.devices("cpu")[0]


def run(ids, E, bs, **kw):
    with jax.default_device(CPU):
        out = jax_moe.moe_align_block_size(ids, E, bs, **kw)
    return tuple(np.asarray(o) for o in out)


def check(ids, E, bs, expert_map=None, num_local=None, pad=False):
    kw = dict(pad_sorted_ids=pad)
    if expert_map is not None:
        kw.update(expert_map=jnp.asarray(expert_map, jnp.int32), num_local_experts=num_local)
    got = run(ids, E, bs, **kw)
    want = align_reference(ids, E, bs, expert_map, num_local, pad)
    for g, w, name in zip(got, want, ("sorted_token_ids", "expert_ids", "num_tokens_post_pad")):
        assert g.dtype == np.int32, name
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)


def random_ids(rng, shape, E, dtype=np.int32, invalid_frac=0.1):
    ids = rng.integers(0, E, size=shape)
    if invalid_frac and ids.size:
        bad = rng.random(shape) < invalid_frac
        lo = 0 if np.dtype(dtype).kind == "u" else -3
        ids = np.where(bad, rng.integers(lo, 3, size=shape) + np.where(rng.random(shape) < .5, E, 0), ids)
        if np.dtype(dtype).kind != "u":
            ids = np.where(bad & (rng.random(shape) < .3), -1, ids)
    return ids.astype(dtype)


@given(T=st.integers(0, 300), K=st.integers(1, 8), E=st.integers(1, 300),
       bs=st.sampled_from([1, 2, 3, 16, 64, 128]), pad=st.booleans(),
       dtype=st.sampled_from([np.int32, np.uint32, np.int8, np.int16, np.uint8]),
       flat=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matches_reference(T, K, E, bs, pad, dtype, flat, seed):
    rng = np.random.default_rng(seed)
    if np.iinfo(dtype).max < E + 3:
        E = int(np.iinfo(dtype).max) - 3
    ids = random_ids(rng, (T, K), E, dtype)
    check(ids.reshape(-1) if flat else ids, E, bs, pad=pad)


@given(T=st.integers(0, 200), K=st.integers(1, 4), E=st.integers(1, 64),
       bs=st.sampled_from([1, 4, 16]), seed=st.integers(0, 2**32 - 1))
def test_expert_map(T, K, E, bs, seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, E + 1))
    # Each global expert maps to a local id, -1 (other rank) or a wild value.
    emap = rng.integers(0, L, size=E)
    emap = np.where(rng.random(E) < 0.3, -1, emap)
    emap = np.where(rng.random(E) < 0.05, rng.integers(L, L + 5, size=E), emap)
    check(random_ids(rng, (T, K), E), E, bs, expert_map=emap, num_local=L)


def test_int64_ids_under_x64(rng):
    with jax.enable_x64(True):
        ids = random_ids(rng, (97, 3), 40, np.int64)
        ids[0, 0] = 2**40  # beyond int32: dropped, not truncated into range
        ids[1, 1] = 40 + 2**32
        check(ids, 40, 8)


@pytest.mark.parametrize("T,K,E,bs", [
    (0, 2, 8, 16),      # zero tokens
    (1, 1, 8, 16),      # one token
    (37, 3, 1, 4),      # E = 1
    (50, 2, 7, 1),      # bs = 1
    (300, 4, 2000, 8),  # E > 1024
    (64, 8, 4096, 64),  # E = 4096
])
def test_edge_shapes(rng, T, K, E, bs):
    check(random_ids(rng, (T, K), E), E, bs)


def test_every_route_invalid(rng):
    ids = np.where(rng.random((33, 2)) < .5, -1, 99).astype(np.int32)
    s, e, n = run(ids, 16, 4)
    assert n[0] == 0 and np.all(s == ids.size) and np.all(e == -1)


def test_wild_ids_are_dropped():
    ids = np.array([np.iinfo(np.int32).min, -1, 5, np.iinfo(np.int32).max, 2], np.int32)
    check(ids, 4, 2)


def test_jit_vmap_and_nested_vmap(rng):
    E, bs = 12, 4
    ids = random_ids(rng, (3, 5, 20, 2), E)
    f = lambda x: jax_moe.moe_align_block_size(x, E, bs)
    with jax.default_device(CPU):
        got = jax.jit(jax.vmap(jax.vmap(f)))(ids)
    for i in range(3):
        for j in range(5):
            want = align_reference(ids[i, j], E, bs)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(np.asarray(g)[i, j], w)


def test_vmap_over_expert_map_only(rng):
    E, bs, L = 10, 2, 6
    ids = random_ids(rng, (30, 2), E)
    maps = np.stack([rng.integers(-1, L, size=E) for _ in range(4)]).astype(np.int32)
    f = lambda m: jax_moe.moe_align_block_size(ids, E, bs, expert_map=m, num_local_experts=L)
    with jax.default_device(CPU):
        got = jax.vmap(f)(maps)
    for b in range(4):
        for g, w in zip(got, align_reference(ids, E, bs, maps[b], L)):
            np.testing.assert_array_equal(np.asarray(g)[b], w)


def test_deterministic_over_runs(rng):
    ids = random_ids(rng, (2048, 4), 64)
    first = run(ids, 64, 16)
    for _ in range(3):
        for a, b in zip(first, run(ids, 64, 16)):
            np.testing.assert_array_equal(a, b)


def test_grad_of_surrounding_code(rng):
    ids = random_ids(rng, (16, 2), 8)

    def loss(x):
        s, _, n = jax_moe.moe_align_block_size(ids, 8, 4)
        rows = jnp.take(x, jnp.minimum(s, ids.size - 1) // 2, axis=0)
        return jnp.sum(rows * (s < ids.size)[:, None]) + 0 * n[0]

    x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    g = jax.grad(loss)(x)
    per_token = np.bincount(np.nonzero((ids >= 0) & (ids < 8))[0], minlength=16)
    np.testing.assert_allclose(np.asarray(g), np.repeat(per_token[:, None], 3, 1))


def test_shard_map_per_shard_semantics(rng):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices("cpu"))
    E, bs = 16, 4
    ids = random_ids(rng, (8 * 24, 2), E)
    f = jax.shard_map(lambda x: jax_moe.moe_align_block_size(x, E, bs), mesh=mesh,
                      in_specs=P("x"), out_specs=P("x"), check_vma=True)
    x = jax.device_put(ids, NamedSharding(mesh, P("x")))
    got = jax.jit(f)(x)
    for d in range(8):
        want = align_reference(ids[d * 24:(d + 1) * 24], E, bs)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g).reshape(8, -1)[d], w)


def test_shard_map_rejects_replicated_out_specs(rng):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices("cpu"))
    ids = jax.device_put(random_ids(rng, (64, 2), 8), NamedSharding(mesh, P("x")))
    f = jax.shard_map(lambda x: jax_moe.moe_align_block_size(x, 8, 4)[2], mesh=mesh,
                      in_specs=P("x"), out_specs=P(), check_vma=True)
    with pytest.raises(Exception, match="(?i)vary|replicat|out_specs"):
        jax.jit(f)(ids)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_jit_sharded_batch_stays_sharded(rng, axis_type):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(getattr(jax.sharding.AxisType, axis_type),), devices=jax.devices("cpu"))
    E, bs = 16, 8
    ids = random_ids(rng, (8, 40, 2), E)
    x = jax.device_put(ids, NamedSharding(mesh, P("x")))
    f = jax.jit(jax.vmap(lambda a: jax_moe.moe_align_block_size(a, E, bs)))
    got = f(x)
    hlo = f.lower(x).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    for b in range(8):
        for g, w in zip(got, align_reference(ids[b], E, bs)):
            np.testing.assert_array_equal(np.asarray(g)[b], w)


def test_jit_sharded_routes_equals_unsharded(rng):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices("cpu"))
    ids = random_ids(rng, (64, 2), 16)
    x = jax.device_put(ids, NamedSharding(mesh, P("x")))
    got = jax.jit(lambda a: jax_moe.moe_align_block_size(a, 16, 4))(x)
    for g, w in zip(got, align_reference(ids, 16, 4)):
        np.testing.assert_array_equal(np.asarray(g), w)


@pytest.mark.parametrize("make_ref", [align_refs.align_argsort, align_refs.align_onehot])
def test_pure_jax_references_match_spec(rng, make_ref):
    ids = random_ids(rng, (200, 4), 24)
    got = make_ref(jnp.asarray(ids), 24, 16)
    for g, w in zip(got, align_reference(ids, 24, 16)):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_cuda_lowering_names_cuda_target(rng):
    ids = random_ids(rng, (64, 2), 8)
    text = jax.jit(lambda a: jax_moe.moe_align_block_size(a, 8, 16)).trace(ids).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "jax_moe_align_cuda" in text


@pytest.mark.parametrize("call,exc,match", [
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2)), 8, 4), TypeError, "topk_ids"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 0, 4), ValueError, "num_experts"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8, 0), ValueError, "block_size"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8, 4, 3), ValueError, "topk"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((9,), jnp.int32), 8, 4, 2), ValueError, "topk"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8, 4, expert_map=jnp.zeros(7, jnp.int32)), ValueError, "expert_map"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8, 4, expert_map=jnp.zeros(8)), TypeError, "expert_map"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8.0, 4), TypeError, "num_experts"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((2, 2, 2), jnp.int32), 8, 4), ValueError, "topk_ids"),
    (lambda: jax_moe.moe_align_block_size(jnp.zeros((4, 2), jnp.int32), 8, 4, num_local_experts=4), ValueError, "num_local_experts"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_padded_length_overflow_is_a_trace_error():
    ids = jax.ShapeDtypeStruct((2**20, 8), jnp.int32)
    with pytest.raises(ValueError, match="topk_ids"):
        jax.eval_shape(lambda x: jax_moe.moe_align_block_size(x, 4096, 2**20), ids)
