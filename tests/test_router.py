"""route vs a numpy reference of shared/spec/dispatch.md section 1b."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe


def np_route(logits, top_k, scoring="softmax", bias=None, n_group=None, topk_group=None,
             group_score="top2_sum", renormalize=False, routed_scaling_factor=1.0):
    x = np.asarray(logits, np.float64)
    if scoring == "softmax":
        e = np.exp(x - x.max(-1, keepdims=True))
        scores = e / e.sum(-1, keepdims=True)
    else:
        scores = 1 / (1 + np.exp(-x))
    sel = scores + (0 if bias is None else np.asarray(bias, np.float64))
    t, n = sel.shape
    if n_group is not None:
        g = sel.reshape(t, n_group, n // n_group)
        gs = np.sort(g, -1)[..., -2:].sum(-1) if group_score == "top2_sum" else g.max(-1)
        best = np.argsort(-gs, axis=-1, kind="stable")[:, :topk_group]
        keep = np.zeros((t, n_group), bool)
        np.put_along_axis(keep, best, True, axis=1)
        sel = np.where(np.repeat(keep, n // n_group, axis=1), sel, -np.inf)
    ids = np.argsort(-sel, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(scores, ids, -1)
    if renormalize:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return ids, w * routed_scaling_factor


def _logits(rng, t, e, spread=0.05):
    # Well-separated values per row: float32 vs float64 rounding cannot reorder them.
    return np.stack([rng.permutation(e) for _ in range(t)]).astype(np.float32) * spread + \
        rng.normal(size=(t, e)).astype(np.float32) * 1e-3


def _check(logits, top_k, **kw):
    ids, w = jax_moe.route(logits, top_k, **kw)
    rid, rw = np_route(logits, top_k, **kw)
    assert ids.dtype == jnp.int32 and w.dtype == jnp.float32
    assert ids.shape == w.shape == (logits.shape[0], top_k)
    np.testing.assert_array_equal(ids, rid)
    np.testing.assert_allclose(w, rw, rtol=2e-6, atol=1e-7)
    return ids, w


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_plain_topk(rng, scoring, renormalize):
    _check(_logits(rng, 37, 16), 4, scoring=scoring, renormalize=renormalize,
           routed_scaling_factor=2.5)


@pytest.mark.parametrize("group_score", ["top2_sum", "max"])
def test_group_limited_with_negative_biased_scores(rng, group_score):
    # DeepSeek-V3 style: sigmoid + bias, 8 groups of 8, keep 3 groups, top-6.
    t, e, n_group, topk_group = 64, 64, 8, 3
    logits = _logits(rng, t, e, spread=0.1)
    bias = (rng.normal(size=e) * 0.2 - 2.0).astype(np.float32)  # every biased score < 0
    ids, w = _check(logits, 6, scoring="sigmoid", bias=bias, n_group=n_group,
                    topk_group=topk_group, group_score=group_score, renormalize=True,
                    routed_scaling_factor=2.5)
    # Chosen experts lie in at most topk_group groups, and those are the best groups.
    sel = 1 / (1 + np.exp(-logits.astype(np.float64))) + bias
    g = sel.reshape(t, n_group, -1)
    gs = np.sort(g, -1)[..., -2:].sum(-1) if group_score == "top2_sum" else g.max(-1)
    best = np.argsort(-gs, -1)[:, :topk_group]
    for row in range(t):
        assert set(np.asarray(ids[row]) // (e // n_group)) <= set(best[row])
    # Weights are the unbiased sigmoid scores (renormalized, scaled).
    s = np.take_along_axis(1 / (1 + np.exp(-logits.astype(np.float64))), np.asarray(ids), -1)
    np.testing.assert_allclose(w, s / s.sum(-1, keepdims=True) * 2.5, rtol=2e-6)


def test_unpicked_groups_never_chosen_even_if_all_negative(rng):
    # One group has scores far above the others, but only via selection; with a
    # 0-mask (instead of -inf) the negative biased scores of the kept group would lose
    # to masked experts.
    t, e = 8, 16
    logits = _logits(rng, t, e)
    bias = np.full(e, -5.0, np.float32)
    bias[4:8] = -3.0  # group 1 (of 4) is the best group
    ids, _ = _check(logits, 4, scoring="sigmoid", bias=bias, n_group=4, topk_group=1)
    assert np.all(np.asarray(ids) // 4 == 1)


def test_softmax_group_max_deepseek_v2(rng):
    _check(_logits(rng, 20, 32), 6, n_group=4, topk_group=2, group_score="max")


def test_jit_and_vmap(rng):
    logits = _logits(rng, 12, 16)
    f = jax.jit(functools.partial(jax_moe.route, top_k=3, scoring="sigmoid", n_group=4,
                                  topk_group=2, bias=jnp.zeros(16)))
    ids, w = f(logits)
    rid, rw = np_route(logits, 3, scoring="sigmoid", n_group=4, topk_group=2, bias=np.zeros(16))
    np.testing.assert_array_equal(ids, rid)
    vids, _ = jax.vmap(lambda x: jax_moe.route(x, 3))(logits.reshape(3, 4, 16))
    np.testing.assert_array_equal(vids.reshape(12, 3), jax_moe.route(logits, 3)[0])


def test_weights_are_differentiable(rng):
    logits = jnp.asarray(_logits(rng, 5, 8))
    g = jax.grad(lambda x: jnp.sum(jax_moe.route(x, 2, renormalize=True)[1] ** 2))(logits)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(logits=np.ones((4, 8), np.int32), top_k=2), TypeError, "logits must have a float"),
    (dict(logits=np.ones((8,), np.float32), top_k=2), ValueError, r"logits must be \[T, E\]"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=9), ValueError, "top_k"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2.0), TypeError, "top_k"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, scoring="relu"), ValueError, "scoring"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, bias=np.ones(7)), ValueError, "bias"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, n_group=2), ValueError, "together"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, n_group=3, topk_group=1), ValueError, "n_group"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, n_group=2, topk_group=3), ValueError, "topk_group"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=5, n_group=2, topk_group=1), ValueError, "top_k=5"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, n_group=8, topk_group=2), ValueError, "top2_sum"),
    (dict(logits=np.ones((4, 8), np.float32), top_k=2, group_score="sum"), ValueError, "group_score"),
])
def test_bad_inputs_name_the_argument(kwargs, err, match):
    logits = kwargs.pop("logits")
    top_k = kwargs.pop("top_k")
    with pytest.raises(err, match=match):
        jax_moe.route(logits, top_k, **kwargs)
