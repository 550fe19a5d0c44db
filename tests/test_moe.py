"""The MoE layer (minimoe.moe.layer): equivalences with dense FFNs and explicit loops, statistics,
gradients, and DeepSeek's bias balancing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.blocks.ffn import SwiGLU
from minimoe.config import MoEConfig
from minimoe.moe.layer import MoELayer, MoEStats
from minimoe.moe.router import RouterBias, sigmoid_scores

# Small, mostly shared shapes: on a CPU the test time is dominated by compiling, and every
# new weight shape compiles its own random initialiser.
D_MODEL = 8
ATOL = 2e-5


def np_swiglu(x, wg, wu, wd):
    g = x @ wg
    return (g / (1 + np.exp(-g)) * (x @ wu)) @ wd


def inputs(seed=0, batch=2, seq=4):
    return jax.random.normal(jax.random.key(seed), (batch, seq, D_MODEL))


def layer(seed=0, **cfg):
    cfg.setdefault("d_expert", 4)
    return MoELayer(D_MODEL, MoEConfig(**cfg), rngs=nnx.Rngs(seed))


# Jitted entry points: one compilation per configuration is much cheaper on a CPU than
# running the layer op by op (each eager op compiles on its own).
forward = nnx.jit(lambda m, x: m(x))
forward_train = nnx.jit(lambda m, x: m(x, train=True))  # capacity applies in training only
route = nnx.jit(lambda m, x: m.router(x.reshape(-1, D_MODEL)))
shared_ffn = nnx.jit(lambda m, x: m.shared_experts(x.reshape(-1, D_MODEL)))


def expert_weights_np(moe):
    return [np.asarray(w, np.float64) for w in moe.experts.weights()]


def test_one_expert_top1_equals_dense_swiglu():
    dense = SwiGLU(D_MODEL, 4, rngs=nnx.Rngs(1))
    moe = layer(n_experts=1, top_k=1, d_expert=4, router="softmax")
    moe.experts.w_gate[...] = dense.w_gate[...][None]
    moe.experts.w_up[...] = dense.w_up[...][None]
    moe.experts.w_down[...] = dense.w_down[...][None]
    x = inputs()
    y, stats = forward(moe, x)
    np.testing.assert_allclose(y, dense(x), atol=ATOL)
    np.testing.assert_allclose(stats.load, [1.0])
    assert float(stats.dropped_fraction) == 0.0


def test_softmax_over_all_experts_is_the_probability_weighted_sum():
    n_experts = 4
    moe = layer(n_experts=n_experts, top_k=n_experts, router="softmax", renormalize=True,
                dispatch="onehot")
    x = inputs(1)
    y, _ = forward(moe, x)
    tokens = np.asarray(x, np.float64).reshape(-1, D_MODEL)
    logits = tokens @ np.asarray(moe.router.w_router[...], np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    wg, wu, wd = expert_weights_np(moe)
    expected = np.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        for e in range(n_experts):
            expected[t] += p[t, e] * np_swiglu(tokens[t], wg[e], wu[e], wd[e])
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D_MODEL), expected, atol=ATOL)


def test_deepseek_layer_matches_explicit_loop_with_shared_experts():
    moe = layer(n_experts=4, top_k=2, router="deepseek_v3", n_group=2, topk_group=1,
                routed_scaling_factor=2.5, n_shared_experts=2, d_shared=2, dispatch="ragged_dot")
    moe.router.bias[...] = jnp.linspace(-0.2, 0.2, 4)
    x = inputs(2)
    y, _ = forward(moe, x)
    routing = route(moe, x)
    tokens = np.asarray(x, np.float64).reshape(-1, D_MODEL)
    s = np.asarray(sigmoid_scores(routing.logits), np.float64)
    wg, wu, wd = expert_weights_np(moe)
    shared = np.asarray(shared_ffn(moe, x), np.float64)
    assert moe.shared_experts.w_gate.shape == (D_MODEL, 2 * 2)  # n_shared * d_shared
    expected = shared.copy()
    for t in range(tokens.shape[0]):
        chosen = np.asarray(routing.expert_index[t])
        assert len(set(chosen // 2)) == 1  # group-limited: both experts from one group
        g = s[t, chosen] / s[t, chosen].sum() * 2.5  # unbiased, normalised, scaled
        for e, g_e in zip(chosen, g):
            expected[t] += g_e * np_swiglu(tokens[t], wg[e], wu[e], wd[e])
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D_MODEL), expected, atol=1e-4)


@pytest.mark.parametrize("n_shared", [0, 1])
def test_dropped_tokens_get_only_the_shared_output(n_shared):
    # capacity_factor 0.5 with 8 tokens, top-1, 4 experts: capacity 1 per expert.
    moe = layer(n_experts=4, top_k=1, router="softmax", capacity_factor=0.5,
                n_shared_experts=n_shared, dispatch="sort")
    x = inputs(3)
    y, stats = forward_train(moe, x)
    routing = route(moe, x)
    first_seen = {int(e): t for t, e in reversed(list(enumerate(routing.expert_index[:, 0])))}
    kept = np.array([first_seen[int(e)] == t for t, e in enumerate(routing.expert_index[:, 0])])
    np.testing.assert_allclose(stats.dropped_fraction, 1 - kept.mean(), rtol=1e-6)
    shared = (shared_ffn(moe, x) if n_shared
              else jnp.zeros((8, D_MODEL)))
    assert (~kept).sum() >= 4
    y = np.asarray(y).reshape(-1, D_MODEL)
    np.testing.assert_allclose(y[~kept], np.asarray(shared)[~kept], atol=ATOL)
    assert not np.allclose(y[kept], np.asarray(shared)[kept])


def test_expert_choice_layer_matches_loop_and_reports_unpicked_tokens():
    moe = layer(n_experts=4, top_k=1, router="expert_choice", capacity_factor=0.5)
    x = inputs(4)  # 8 tokens; capacity = ceil(0.5 * 8 * 1 / 4) = 1 token per expert
    y, stats = forward(moe, x)
    routing = route(moe, x)
    assert routing.token_index.shape == (4, 1)
    tokens = np.asarray(x, np.float64).reshape(-1, D_MODEL)
    wg, wu, wd = expert_weights_np(moe)
    expected = np.zeros_like(tokens)
    for e in range(4):
        for t, w in zip(np.asarray(routing.token_index[e]), np.asarray(routing.weights[e])):
            expected[t] += w * np_swiglu(tokens[t], wg[e], wu[e], wd[e])
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D_MODEL), expected, atol=ATOL)
    unpicked = 1 - len(set(np.asarray(routing.token_index).ravel().tolist())) / 8
    np.testing.assert_allclose(stats.dropped_fraction, unpicked, rtol=1e-6)
    np.testing.assert_array_equal(stats.tokens_per_expert, [1, 1, 1, 1])
    np.testing.assert_allclose(stats.load, 0.25)


ROUTER_KINDS = [
    dict(router="softmax", top_k=2),
    dict(router="switch", top_k=1),
    dict(router="noisy_topk", top_k=2),
    dict(router="deepseek_v3", top_k=2, n_group=2, topk_group=1, n_shared_experts=1),
    dict(router="deepseek_v4", top_k=2, routed_scaling_factor=1.5),
    dict(router="expert_choice", top_k=2, capacity_factor=1.0),
]


@pytest.mark.parametrize("kind", ROUTER_KINDS, ids=[k["router"] for k in ROUTER_KINDS])
def test_gradients_reach_router_and_are_finite(kind):
    aux = 0.0 if kind["router"] == "expert_choice" else 0.01  # balanced by construction there
    moe = layer(n_experts=4, aux_loss_coef=aux, z_loss_coef=1e-3, **kind)
    x = inputs(5)
    target = inputs(6)

    def loss_fn(m):
        y, stats = m(x, train=True, rngs=jax.random.key(0))  # noise for noisy_topk
        return jnp.mean((y - target) ** 2) + stats.loss, (y, stats)

    (loss, (y, stats)), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(moe)
    for leaf in jax.tree.leaves((loss, y, stats, grads)):
        assert np.isfinite(np.asarray(leaf)).all()
    assert float(jnp.abs(grads.router.w_router[...]).sum()) > 0
    assert float(jnp.abs(grads.experts.w_down[...]).sum()) > 0
    assert isinstance(stats, MoEStats)
    routing = moe.router(x.reshape(-1, D_MODEL), train=True, rngs=jax.random.key(0))
    if kind["router"] == "expert_choice":  # capacity ceil(1.0 * 8 * 2 / 4) = 4 tokens each
        np.testing.assert_array_equal(stats.tokens_per_expert, [4, 4, 4, 4])
    else:  # the load is the routing's own assignment count (same noise for noisy_topk)
        counts = np.bincount(np.asarray(routing.expert_index).ravel(), minlength=4)
        np.testing.assert_array_equal(stats.tokens_per_expert, counts)
        np.testing.assert_allclose(stats.load, counts / (8 * kind["top_k"]), rtol=1e-6)
    assert "bias" not in nnx.state(grads).router  # the bias never gets a gradient


def test_aux_loss_coefficient_changes_loss_and_gradients():
    x, target = inputs(7), inputs(8)

    def run(**coefs):
        moe = layer(n_experts=4, top_k=2, router="softmax", **coefs)

        def loss_fn(m):
            y, stats = m(x)
            return jnp.mean((y - target) ** 2) + stats.loss, stats

        (loss, stats), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(moe)
        return loss, stats, grads.router.w_router[...]

    loss0, stats0, g0 = run()
    loss1, stats1, g1 = run(aux_loss_coef=0.5, seq_aux_loss_coef=0.25, z_loss_coef=0.1)
    assert float(stats0.loss) == 0.0 and float(stats1.loss) > 0
    np.testing.assert_allclose(stats1.loss, 0.5 * stats1.aux_loss + 0.25 * stats1.seq_aux_loss
                               + 0.1 * stats1.z_loss, rtol=1e-6)
    np.testing.assert_allclose(stats0.aux_loss, stats1.aux_loss)  # reported either way
    np.testing.assert_allclose(loss1 - loss0, stats1.loss, rtol=1e-5)
    assert not np.allclose(g0, g1)


def test_update_bias_balances_and_bias_is_not_a_parameter():
    moe = layer(n_experts=4, top_k=2, router="deepseek_v3", bias_update_rate=0.01)
    assert isinstance(moe.router.bias, RouterBias)
    params = nnx.state(moe, nnx.Param)
    assert "bias" not in params.router and "w_router" in params.router
    load = jnp.array([0.4, 0.1, 0.3, 0.2])  # mean 0.25
    moe.update_bias(load)
    np.testing.assert_allclose(moe.router.bias[...], [-0.01, 0.01, -0.01, 0.01])
    # (that nnx.Optimizer(..., wrt=nnx.Param) leaves it alone: test_router.py)
    # rate 0, or a router without bias: no-op
    frozen = layer(n_experts=4, top_k=2, router="deepseek_v4")
    frozen.update_bias(load)
    np.testing.assert_array_equal(frozen.router.bias[...], np.zeros(4))
    plain = layer(n_experts=4, top_k=2, router="softmax")
    plain.update_bias(load)
    assert plain.router.bias is None


def test_bias_update_inside_jit_reduces_imbalance():
    """A few jitted steps of pure bias balancing (no optimizer) spread a skewed load."""
    moe = layer(n_experts=4, top_k=1, router="deepseek_v3", bias_update_rate=0.05)
    moe.router.bias[...] = jnp.array([1.0, 0.0, 0.0, 0.0])  # every token picks expert 0
    x = inputs(10)

    @nnx.jit
    def step(m):
        _, stats = m(x)
        m.update_bias(stats.load)
        return stats.load

    first = step(moe)
    np.testing.assert_allclose(first, [1.0, 0.0, 0.0, 0.0])
    for _ in range(40):
        last = step(moe)
    assert float(jnp.max(last)) < 0.6, last
    assert float(moe.router.bias[0]) < 1.0  # the overloaded expert was pushed down


def test_stats_report_each_tokens_experts_and_per_domain_routing():
    from minimoe.moe.routing_stats import balance_metrics, routing_by_domain

    cfg = MoEConfig(n_experts=4, top_k=2, d_expert=8)
    layer = MoELayer(8, cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    _, stats = layer(x)
    assert stats.expert_index.shape == (10, 2)
    counts = np.bincount(np.asarray(stats.expert_index).ravel(), minlength=4)
    np.testing.assert_array_equal(counts, np.asarray(stats.tokens_per_expert))
    domains = np.array([0] * 5 + [1] * 5)
    table = np.asarray(routing_by_domain(stats.expert_index, domains, 3, 4))
    for d in (0, 1):  # each row: that domain's assignments, counted by hand
        mine = np.bincount(np.asarray(stats.expert_index)[domains == d].ravel(), minlength=4) / 10
        np.testing.assert_allclose(table[d], mine)
    np.testing.assert_array_equal(table[2], 0)
    assert balance_metrics([0.25] * 4) == {"max_over_mean": 1.0, "cv": 0.0}
    assert balance_metrics([1.0, 0, 0, 0])["max_over_mean"] == 4.0


def test_top1_router_learns_from_the_output():
    """top_k=1 keeps the chosen expert's score as its weight (renormalising would make it 1,
    a constant: no gradient would reach the router from the loss)."""
    x, target = inputs(11), inputs(12)

    def router_grad(**cfg):
        moe = layer(n_experts=4, top_k=1, **cfg)
        loss = lambda m: jnp.mean((m(x)[0] - target) ** 2)  # noqa: E731  no balance loss
        return float(jnp.abs(nnx.jit(nnx.grad(loss))(moe).router.w_router[...]).max())

    for router in ("softmax", "noisy_topk", "deepseek_v3", "switch"):
        assert router_grad(router=router) > 1e-3, router
    # the reason: with renormalisation the top-1 weight is exactly 1 whatever the logits
    from minimoe.moe.router import softmax_topk
    g = jax.grad(lambda h: softmax_topk(h, 1, True).expert_weights.sum())(inputs(13)[0])
    assert float(jnp.abs(g).max()) < 1e-6


def test_moe_layer_names_the_shape_it_needs():
    moe = layer(n_experts=4, top_k=2)
    with pytest.raises(ValueError, match=r"\[batch, seq, d_model=8\], got shape \(6, 8\) "
                                         r"\(add a batch axis"):
        moe(jnp.zeros((6, D_MODEL)))
    with pytest.raises(ValueError, match=r"got shape \(1, 6, 5\)"):
        moe(jnp.zeros((1, 6, 5)))


def test_expert_choice_stats_name_the_strongest_expert_or_minus_one():
    cfg = MoEConfig(n_experts=4, top_k=1, d_expert=8, router="expert_choice", capacity_factor=0.5)
    layer = MoELayer(8, cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, 16, 8))
    _, stats = layer(x)
    routing = layer.router(x.reshape(16, 8))  # [4 experts, capacity 2] picks
    best = np.full(16, -1)
    best_w = np.zeros(16)
    for e in range(4):  # the strongest expert of each token, by a loop over the picks
        for t, w in zip(np.asarray(routing.token_index[e]), np.asarray(routing.weights[e])):
            if w > best_w[t]:
                best[t], best_w[t] = e, w
    idx = np.asarray(stats.expert_index)[:, 0]
    np.testing.assert_array_equal(idx, best)
    assert (best == -1).sum() >= 8  # 4 experts x 2 picks cannot cover 16 tokens
    assert float(stats.dropped_fraction) == (best == -1).mean()


def test_consecutive_overlap_against_a_loop():
    from minimoe.moe.routing_stats import consecutive_overlap
    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(8, 3, replace=False) for _ in range(50)])  # [seq, top_k]
    want = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(idx[:-1], idx[1:])])
    assert np.isclose(float(consecutive_overlap(idx)), want)
    assert float(consecutive_overlap(np.tile([[1, 4]], (5, 1)))) == 1.0
    assert float(consecutive_overlap(np.array([[0, 1], [2, 3], [0, 1]]))) == 0.0
