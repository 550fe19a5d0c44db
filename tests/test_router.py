"""Routers, balance losses and bias balancing (minimoe.moe.router) -- and MoEConfig's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe.config import MoEConfig
from minimoe.moe.router import (ExpertChoiceOutput, Router, RouterBias, RouterOutput,
                                deepseek_route, expert_choice, group_limited_mask, noisy_topk,
                                router_logits, router_z_loss, sequence_aux_loss, sigmoid_scores,
                                softmax_topk, sqrt_softplus_scores, switch_aux_loss, switch_top1,
                                update_router_bias)


def random_logits(seed, tokens, n_experts, scale=2.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(tokens, n_experts)) * scale,
                       jnp.float32)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# logits and scores
# ---------------------------------------------------------------------------------------

def test_router_logits_are_float32_even_for_bf16_inputs():
    x = jnp.ones((3, 4), jnp.bfloat16)
    w = jnp.ones((4, 5), jnp.bfloat16)
    out = router_logits(x, w)
    assert out.dtype == jnp.float32 and out.shape == (3, 5)
    np.testing.assert_allclose(out, 4.0)


def test_sigmoid_and_sqrt_softplus_scores_match_formulas():
    h = random_logits(0, 5, 6)
    np.testing.assert_allclose(sigmoid_scores(h), 1 / (1 + np.exp(-np.asarray(h))), rtol=1e-6)
    np.testing.assert_allclose(sqrt_softplus_scores(h),
                               np.sqrt(np.log1p(np.exp(np.asarray(h)))), rtol=1e-5)
    assert (sqrt_softplus_scores(h) > 0).all()


def test_sqrt_softplus_has_finite_gradient_for_very_negative_logits():
    h = jnp.array([[-200.0, -50.0, 0.0, 30.0]])
    g = jax.grad(lambda h: sqrt_softplus_scores(h).sum())(h)
    assert np.isfinite(np.asarray(g)).all()


# ---------------------------------------------------------------------------------------
# token-choice routers
# ---------------------------------------------------------------------------------------

def test_softmax_topk_raw_and_renormalized():
    h = random_logits(1, 7, 5)
    p = np_softmax(np.asarray(h))
    raw = softmax_topk(h, 2, renormalize=False)
    assert isinstance(raw, RouterOutput)
    assert raw.expert_index.dtype == jnp.int32 and raw.expert_index.shape == (7, 2)
    expected_idx = np.argsort(-p, axis=-1)[:, :2]
    np.testing.assert_array_equal(raw.expert_index, expected_idx)
    np.testing.assert_allclose(raw.expert_weights, np.take_along_axis(p, expected_idx, -1),
                               rtol=1e-6)
    np.testing.assert_allclose(raw.scores, p, rtol=1e-6)
    ren = softmax_topk(h, 2, renormalize=True)
    np.testing.assert_array_equal(ren.expert_index, raw.expert_index)
    np.testing.assert_allclose(ren.expert_weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ren.expert_weights,
                               raw.expert_weights / raw.expert_weights.sum(-1, keepdims=True),
                               rtol=1e-6)


def test_switch_top1_weight_is_the_max_probability():
    h = random_logits(2, 9, 4)
    out = switch_top1(h)
    p = np_softmax(np.asarray(h))
    np.testing.assert_array_equal(out.expert_index[:, 0], p.argmax(-1))
    np.testing.assert_allclose(out.expert_weights[:, 0], p.max(-1), rtol=1e-6)


def test_noisy_topk_is_deterministic_without_training():
    h = random_logits(3, 16, 6)
    key = jax.random.key(0)
    clean = softmax_topk(h, 2, renormalize=True)
    for k in (key, None):
        out = noisy_topk(h, 2, k, noise_std=1.0, train=False)
        np.testing.assert_array_equal(out.expert_index, clean.expert_index)
        np.testing.assert_allclose(out.expert_weights, clean.expert_weights, rtol=1e-6)
    # training without a key: still no noise
    out = noisy_topk(h, 2, None, noise_std=1.0, train=True)
    np.testing.assert_array_equal(out.expert_index, clean.expert_index)
    # training with a key: noise changes some choices, reproducibly for the same key
    a = noisy_topk(h, 2, key, noise_std=3.0, train=True)
    b = noisy_topk(h, 2, key, noise_std=3.0, train=True)
    np.testing.assert_array_equal(a.expert_index, b.expert_index)
    assert (np.asarray(a.expert_index) != np.asarray(clean.expert_index)).any()
    np.testing.assert_allclose(a.expert_weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a.logits, h)  # logits stay clean (z-loss)


def test_bias_changes_selection_but_not_weights():
    h = random_logits(4, 32, 8)
    scale = 2.5
    for score, fn in (("sigmoid", sigmoid_scores), ("sqrt_softplus", sqrt_softplus_scores)):
        plain = deepseek_route(h, jnp.zeros(8), 2, score, routed_scaling_factor=scale)
        bias = jnp.zeros(8).at[5].set(10.0)  # expert 5 now wins every token's selection
        biased = deepseek_route(h, bias, 2, score, routed_scaling_factor=scale)
        assert (np.asarray(biased.expert_index) == 5).any(axis=1).all()
        assert (np.asarray(biased.expert_index) != np.asarray(plain.expert_index)).any()
        s = np.asarray(fn(h))
        for out in (plain, biased):
            chosen = np.take_along_axis(s, np.asarray(out.expert_index), -1)
            expected = chosen / chosen.sum(-1, keepdims=True) * scale
            np.testing.assert_allclose(out.expert_weights, expected, rtol=1e-5)
            np.testing.assert_allclose(out.scores, s, rtol=1e-6)  # unbiased scores reported


def test_deepseek_without_renormalization_uses_raw_scores():
    h = random_logits(5, 6, 4)
    out = deepseek_route(h, None, 2, "sigmoid", renormalize=False, routed_scaling_factor=2.0)
    chosen = np.take_along_axis(np.asarray(sigmoid_scores(h)), np.asarray(out.expert_index), -1)
    np.testing.assert_allclose(out.expert_weights, 2.0 * chosen, rtol=1e-6)


def test_group_limited_routing_selects_only_from_topk_group_groups():
    n_experts, n_group, topk_group, top_k = 16, 4, 2, 4
    group_size = n_experts // n_group
    h = random_logits(6, 64, n_experts)
    bias = jnp.asarray(np.random.default_rng(7).normal(size=n_experts) * 0.3, jnp.float32)
    out = deepseek_route(h, bias, top_k, "sigmoid", n_group=n_group, topk_group=topk_group)
    biased = np.asarray(sigmoid_scores(h)) + np.asarray(bias)
    groups_used = np.asarray(out.expert_index) // group_size
    for t in range(h.shape[0]):
        grouped = np.sort(biased[t].reshape(n_group, group_size), axis=-1)
        best = set(np.argsort(-grouped[:, -2:].sum(-1))[:topk_group])
        assert set(groups_used[t]) <= best
        # and within the allowed groups it is an ordinary top-k
        allowed = np.where(np.isin(np.arange(n_experts) // group_size, list(best)),
                           biased[t], -np.inf)
        assert set(out.expert_index[t].tolist()) == set(np.argsort(-allowed)[:top_k].tolist())
    mask = group_limited_mask(jnp.asarray(biased), n_group, topk_group)
    assert mask.shape == (64, n_experts)
    np.testing.assert_array_equal(mask.sum(-1), topk_group * group_size)


def test_expert_choice_picks_top_tokens_per_expert():
    h = random_logits(8, 10, 3)
    out = expert_choice(h, capacity=4)
    assert isinstance(out, ExpertChoiceOutput)
    assert out.token_index.shape == (3, 4) and out.weights.shape == (3, 4)
    p = np_softmax(np.asarray(h))
    for e in range(3):
        top = np.argsort(-p[:, e])[:4]
        np.testing.assert_array_equal(out.token_index[e], top)
        np.testing.assert_allclose(out.weights[e], p[top, e], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------

def test_switch_aux_loss_uniform_collapsed_and_sigmoid_scores():
    n_experts, tokens = 4, 8
    uniform_scores = jnp.full((tokens, n_experts), 1 / n_experts)
    balanced_idx = (jnp.arange(tokens) % n_experts)[:, None]
    uniform = switch_aux_loss(uniform_scores, balanced_idx, n_experts)
    np.testing.assert_allclose(uniform, 1.0, rtol=1e-6)
    collapsed_scores = jnp.zeros((tokens, n_experts)).at[:, 0].set(1.0)
    collapsed = switch_aux_loss(collapsed_scores, jnp.zeros((tokens, 1), jnp.int32), n_experts)
    np.testing.assert_allclose(collapsed, n_experts, rtol=1e-6)
    assert collapsed > uniform
    # top-2, uniform: each expert gets 1/4 of the 16 assignments -> still 1
    idx2 = jnp.stack([jnp.arange(tokens) % 4, (jnp.arange(tokens) + 1) % 4], axis=1)
    np.testing.assert_allclose(switch_aux_loss(uniform_scores, idx2, n_experts), 1.0, rtol=1e-6)
    # sigmoid affinities are normalised per token: equal affinities are uniform too
    np.testing.assert_allclose(switch_aux_loss(jnp.full((tokens, n_experts), 0.7), idx2,
                                               n_experts), 1.0, rtol=1e-6)


def test_switch_aux_loss_matches_formula():
    rng = np.random.default_rng(9)
    tokens, n_experts, top_k = 12, 5, 2
    p = np_softmax(rng.normal(size=(tokens, n_experts)))
    idx = np.stack([rng.permutation(n_experts)[:top_k] for _ in range(tokens)])
    f = np.bincount(idx.ravel(), minlength=n_experts) / (tokens * top_k)
    expected = n_experts * np.sum(f * p.mean(0))
    np.testing.assert_allclose(switch_aux_loss(jnp.asarray(p), jnp.asarray(idx), n_experts),
                               expected, rtol=1e-5)


def test_sequence_aux_loss_matches_deepseek_v3_equations():
    rng = np.random.default_rng(10)
    batch, seq, n_experts, top_k = 3, 5, 6, 2
    s = 1 / (1 + np.exp(-rng.normal(size=(batch * seq, n_experts))))  # sigmoid affinities
    idx = np.stack([rng.permutation(n_experts)[:top_k] for _ in range(batch * seq)])
    losses = []
    for b in range(batch):
        rows = slice(b * seq, (b + 1) * seq)
        sb, ib = s[rows], idx[rows]
        f = np.array([n_experts / (top_k * seq) * np.sum(ib == i) for i in range(n_experts)])
        s_norm = sb / sb.sum(-1, keepdims=True)
        P = s_norm.mean(0)
        losses.append(np.sum(f * P))
    got = sequence_aux_loss(jnp.asarray(s), jnp.asarray(idx), n_experts, top_k, batch, seq)
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)
    uniform = sequence_aux_loss(jnp.full((8, 4), 0.25), (jnp.arange(8) % 4)[:, None], 4, 1, 2, 4)
    np.testing.assert_allclose(uniform, 1.0, rtol=1e-6)


def test_router_z_loss_matches_formula():
    h = np.asarray(random_logits(11, 7, 5, scale=4.0))
    lse = np.log(np.exp(h).sum(-1))
    np.testing.assert_allclose(router_z_loss(jnp.asarray(h)), np.mean(lse ** 2), rtol=1e-5)


def test_update_router_bias_moves_toward_balance():
    bias = jnp.zeros(4)
    load = jnp.array([0.5, 0.1, 0.2, 0.2])  # mean 0.25: expert 0 overloaded
    new = update_router_bias(bias, load, 0.01)
    np.testing.assert_allclose(new, [-0.01, 0.01, 0.01, 0.01])
    np.testing.assert_allclose(update_router_bias(new, jnp.full(4, 0.25), 0.01), new)
    counts = jnp.array([10, 0, 3, 3])  # counts work too (only the sign matters)
    np.testing.assert_allclose(update_router_bias(bias, counts, 0.1), [-0.1, 0.1, 0.1, 0.1])


# ---------------------------------------------------------------------------------------
# the Router module
# ---------------------------------------------------------------------------------------

def test_router_bias_is_state_not_param():
    cfg = MoEConfig(n_experts=4, top_k=2, d_expert=8, router="deepseek_v3")
    router = Router(6, cfg, rngs=nnx.Rngs(0))
    assert isinstance(router.bias, RouterBias) and not isinstance(router.bias, nnx.Param)
    params = nnx.state(router, nnx.Param)
    assert set(params.keys()) == {"w_router"}
    assert set(nnx.state(router, RouterBias).keys()) == {"bias"}
    router.bias[...] = jnp.arange(4.0)
    x = jnp.ones((3, 6))
    opt = nnx.Optimizer(router, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda r: r(x).scores.sum())(router)
    assert set(grads.keys()) == {"w_router"}
    w_before = router.w_router[...]
    opt.update(router, grads)  # the flax >= 0.11 signature
    np.testing.assert_array_equal(router.bias[...], jnp.arange(4.0))
    assert not np.allclose(router.w_router[...], w_before)


def test_router_module_kinds():
    x = jax.random.normal(jax.random.key(0), (10, 6))
    for name, top_k in (("softmax", 2), ("switch", 1), ("noisy_topk", 2), ("deepseek_v3", 2),
                        ("deepseek_v4", 2)):
        cfg = MoEConfig(n_experts=4, top_k=top_k, d_expert=8, router=name,
                        routed_scaling_factor=1.5)
        router = Router(6, cfg, rngs=nnx.Rngs(0))
        out = router(x)
        assert isinstance(out, RouterOutput) and out.expert_index.shape == (10, top_k)
        assert (router.bias is not None) == name.startswith("deepseek")
        if name != "switch":
            np.testing.assert_allclose(out.expert_weights.sum(-1), 1.5, rtol=1e-5)
    cfg = MoEConfig(n_experts=4, top_k=1, d_expert=8, router="expert_choice", capacity_factor=1.0)
    out = Router(6, cfg, rngs=nnx.Rngs(0))(x)
    assert isinstance(out, ExpertChoiceOutput)
    assert out.token_index.shape == (4, 3)  # ceil(1.0 * 10 * 1 / 4)


def test_router_noise_uses_rngs_only_in_training():
    cfg = MoEConfig(n_experts=6, top_k=2, d_expert=8, router="noisy_topk", router_noise_std=5.0)
    router = Router(6, cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (32, 6))
    clean = router(x)
    np.testing.assert_array_equal(router(x, train=False, rngs=nnx.Rngs(noise=3)).expert_index,
                                  clean.expert_index)
    noisy = router(x, train=True, rngs=nnx.Rngs(noise=3))
    assert (np.asarray(noisy.expert_index) != np.asarray(clean.expert_index)).any()
    keyed = router(x, train=True, rngs=jax.random.key(3))  # a raw key works too
    assert keyed.expert_index.shape == (32, 2)


def test_config_rejects_groups_for_non_deepseek_routers():
    with pytest.raises(ValueError, match=r"group-limited routing \(n_group=2\) needs router"):
        MoEConfig(n_experts=4, top_k=2, d_expert=8, router="softmax", n_group=2, topk_group=1)


# ---------------------------------------------------------------------------------------
# property-based invariants
# ---------------------------------------------------------------------------------------

@st.composite
def routing_cases(draw):
    n_group = draw(st.sampled_from([1, 2, 4]))
    n_experts = n_group * draw(st.integers(1, 4))
    topk_group = draw(st.integers(1, n_group))
    top_k = draw(st.integers(1, topk_group * (n_experts // n_group)))
    tokens = draw(st.sampled_from([1, 4, 9]))  # few shapes: each new shape compiles
    kind = draw(st.sampled_from(["softmax", "softmax_raw", "noisy", "sigmoid", "sqrt_softplus"]))
    scale = draw(st.sampled_from([1.0, 2.5]))
    seed = draw(st.integers(0, 2 ** 16))
    return n_experts, n_group, topk_group, top_k, tokens, kind, scale, seed


_softmax_topk = jax.jit(softmax_topk, static_argnums=(1, 2))
_noisy_topk = jax.jit(noisy_topk, static_argnums=(1, 3, 4))
_deepseek_route = jax.jit(deepseek_route, static_argnums=(2, 3, 4, 5, 6))


@settings(max_examples=25, deadline=None)
@given(routing_cases())
def test_routing_invariants(case):
    n_experts, n_group, topk_group, top_k, tokens, kind, scale, seed = case
    h = random_logits(seed, tokens, n_experts, scale=3.0)
    if kind == "softmax":
        out, total = _softmax_topk(h, top_k, True), 1.0
    elif kind == "softmax_raw":
        out, total = _softmax_topk(h, top_k, False), None
    elif kind == "noisy":
        out, total = _noisy_topk(h, top_k, jax.random.key(seed), 1.0, True), 1.0
    else:
        bias = jnp.asarray(np.random.default_rng(seed + 1).normal(size=n_experts), jnp.float32)
        out = _deepseek_route(h, bias, top_k, kind, n_group, topk_group, scale)
        total = scale
    idx = np.asarray(out.expert_index)
    w = np.asarray(out.expert_weights)
    assert idx.shape == (tokens, top_k) and w.shape == (tokens, top_k)
    assert ((idx >= 0) & (idx < n_experts)).all()
    assert all(len(set(row)) == top_k for row in idx.tolist())
    assert (w >= 0).all() and np.isfinite(w).all()
    if total is None:  # raw probabilities: exactly the chosen experts' softmax entries
        p = np.exp(np.asarray(h, np.float64) - np.asarray(h, np.float64).max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(w, np.take_along_axis(p, idx, axis=-1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.sort(w, -1)[:, ::-1], np.sort(p, -1)[:, ::-1][:, :top_k],
                                   rtol=1e-5, atol=1e-7)  # ... and they are the top_k largest
    else:
        np.testing.assert_allclose(w.sum(-1), total, rtol=1e-5)
    if kind in ("sigmoid", "sqrt_softplus") and n_group > 1:
        groups = idx // (n_experts // n_group)
        assert all(len(set(row)) <= topk_group for row in groups.tolist())
