"""mHC: reduction to the plain residual, Sinkhorn, a per-stream loop reference, gradients,
the model with hc_mult > 1, and what the constraint does through depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.accounting import count_params, param_counts
from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Block, Transformer
from minimoe.v4.hyper_connections import (HCCoefficients, HyperConnection, depth_gain,
                                          expand_streams, hc_coefficients, hc_head, hc_post, hc_pre,
                                          hc_residual, sinkhorn, stream_mixes)

CFG = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=32)


def test_hc_mult_1_with_identity_mixing_is_the_plain_residual():
    block = Block(CFG, 0, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    plain, _, _ = block(x)
    one = jnp.ones((2, 5, 1))
    identity = HCCoefficients(one, one, jnp.ones((2, 5, 1, 1)))
    s = expand_streams(x, 1)  # [2, 5, 1, 16]
    s = hc_residual(s, lambda y: block.attn(block.attn_norm(y))[0], identity)
    s = hc_residual(s, lambda y: block.ffn(block.ffn_norm(y)), identity)
    np.testing.assert_array_equal(np.asarray(s[:, :, 0]), np.asarray(plain))


def test_sinkhorn_is_doubly_stochastic_and_follows_v4_order():
    logits = 2.0 * jax.random.normal(jax.random.key(0), (6, 4, 4))
    p = np.asarray(sinkhorn(logits, 20, 1e-6))
    assert (p > 0).all()
    np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-5)  # the last step normalises columns
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-2)
    # one iteration = the row softmax (+ eps) followed by a single column normalisation
    q = np.exp(np.asarray(logits, np.float64))
    q = q / q.sum(-1, keepdims=True) + 1e-6
    q = q / (q.sum(-2, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(sinkhorn(logits, 1, 1e-6)), q, rtol=1e-5)
    # more iterations bring the rows closer to 1
    err = [np.abs(np.asarray(sinkhorn(logits, k, 1e-6)).sum(-1) - 1).max() for k in (2, 5, 20)]
    assert err[0] > err[1] > err[2]


def _loop_reference(x, fn, scale, base, n, iters, eps, norm_eps, f):
    """Per token and per stream, in float64 numpy: the module docstring's equations."""
    out = np.zeros_like(x)
    for t in np.ndindex(x.shape[:-2]):
        xs = x[t]  # [n, d]
        flat = xs.reshape(-1)
        m = fn @ (flat / np.sqrt(np.mean(flat ** 2) + norm_eps))
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        pre = [sig(m[i] * scale[0] + base[i]) + eps for i in range(n)]
        post = [2 * sig(m[n + i] * scale[1] + base[n + i]) for i in range(n)]
        c = np.array([[m[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j]
                       for j in range(n)] for i in range(n)])
        c = np.exp(c - c.max(1, keepdims=True))
        c = c / c.sum(1, keepdims=True) + eps
        c = c / (c.sum(0, keepdims=True) + eps)
        for _ in range(iters - 1):
            c = c / (c.sum(1, keepdims=True) + eps)
            c = c / (c.sum(0, keepdims=True) + eps)
        y = sum(pre[i] * xs[i] for i in range(n))
        fy = f(y)
        for j in range(n):
            out[t][j] = post[j] * fy + sum(c[i, j] * xs[i] for i in range(n))
    return out


def test_vectorised_hyper_connection_equals_per_stream_loops():
    n, d = 3, 8
    hc = HyperConnection(d, n, 7, 1e-6, 1e-6, rngs=nnx.Rngs(0))
    # larger dynamic part than the initialisation, so the test sees token-dependent mixing
    hc.scale[...] = jnp.array([0.7, -0.4, 1.3])
    w = np.asarray(jax.random.normal(jax.random.key(2), (d, d)), np.float64)
    x = jax.random.normal(jax.random.key(1), (2, 3, n, d))
    y, coef = hc.pre(x)
    got = hc.post(jnp.tanh(y @ jnp.asarray(w, jnp.float32)), x, coef)
    want = _loop_reference(np.asarray(x, np.float64), np.asarray(hc.fn[...], np.float64),
                           np.asarray(hc.scale[...], np.float64), np.asarray(hc.base[...], np.float64),
                           n, 7, 1e-6, 1e-6, lambda v: np.tanh(v @ w))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_head_is_a_sigmoid_weighted_sum_of_the_streams():
    n, d = 4, 8
    x = jax.random.normal(jax.random.key(0), (5, n, d))
    fn = jax.random.normal(jax.random.key(1), (n, n * d))
    base, scale = jnp.linspace(-1, 1, n), jnp.array([0.5])
    got = hc_head(x, fn, scale, base, 1e-6, 1e-6)
    m = stream_mixes(x, fn, 1e-6)  # [5, n]
    w = 1 / (1 + np.exp(-(np.asarray(m) * 0.5 + np.asarray(base)))) + 1e-6
    np.testing.assert_allclose(np.asarray(got), np.einsum("tn,tnd->td", w, np.asarray(x)),
                               rtol=1e-5, atol=1e-6)


def test_initialised_block_starts_as_the_plain_residual_in_every_stream():
    """With scale 0 (no dynamic part) the init gives pre = 1/n, post = 1, comb ~ diagonal:
    copies of one vector stay copies."""
    hc = HyperConnection(16, 4, 20, 1e-6, 1e-6, rngs=nnx.Rngs(0))
    hc.scale[...] = jnp.zeros(3)
    x = expand_streams(jax.random.normal(jax.random.key(0), (3, 16)), 4)
    y, coef = hc.pre(x)
    np.testing.assert_allclose(np.asarray(coef.pre), 0.25, atol=1e-5)
    np.testing.assert_allclose(np.asarray(coef.post), 1.0, atol=1e-6)
    out = hc.post(2 * y, x, coef)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expand_streams(3 * x[:, 0], 4)),
                               rtol=1e-4, atol=1e-4)


def test_model_with_mhc_runs_caches_and_has_finite_gradients():
    cfg = CFG.replace(hc_mult=4, hc_sinkhorn_iters=5)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 64)
    forward = nnx.jit(lambda m, t, c: m(t, c))
    out = forward(model, tokens, None)
    assert out.logits.shape == (2, 9, 64) and out.hidden.shape == (2, 9, 4, 16)
    # prefill, then the rest, with the cache give the same logits as the full pass
    cache = model.init_cache(2, 9)
    a = forward(model, tokens[:, :6], cache)
    b = forward(model, tokens[:, 6:], a.cache)
    np.testing.assert_allclose(np.asarray(jnp.concatenate([a.logits, b.logits], 1)),
                               np.asarray(out.logits), rtol=1e-4, atol=1e-4)

    def loss(m):
        return m(tokens).logits.mean()
    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree_util.tree_leaves(nnx.state(grads))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    hc_grads = [grads.blocks[0].hc_attn.fn[...], grads.blocks[1].hc_ffn.scale[...],
                grads.hc_head.base[...]]
    assert all(float(jnp.abs(g).max()) > 0 for g in hc_grads)


def test_default_model_has_no_hyper_connections():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    assert model.hc_head is None and model.blocks[0].hc_attn is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_keeps_signal_and_gradient_bounded_through_depth(seed):
    key = jax.random.key(seed)
    mhc = depth_gain(key, n_layers=32, constrained=True)
    hc = depth_gain(key, n_layers=32, constrained=False)
    # the doubly-stochastic residual path only averages: within a factor 3 either way
    assert 1 / 3 < float(mhc.signal[-1]) < 3 and 1 / 3 < float(mhc.grad[0]) < 3
    # the same random matrices unprojected: far larger growth, forward and backward
    assert float(hc.signal[-1]) > 10 * float(mhc.signal[-1])
    assert float(hc.grad[0]) > 10 * float(mhc.grad[0])


@pytest.mark.parametrize("changes", [
    dict(hc_mult=4),
    dict(hc_mult=3, num_nextn_predict_layers=1, tie_embeddings=False),
    dict(num_nextn_predict_layers=1, num_hash_layers=1,
         moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, router="deepseek_v4",
                       n_shared_experts=1)),
], ids=["mhc", "mhc+mtp", "moe+hash+mtp"])
def test_param_counts_include_mhc_and_report_mtp_apart(changes):
    cfg = CFG.replace(**changes)
    counts = param_counts(cfg)
    assert count_params(Transformer(cfg, rngs=nnx.Rngs(0))) == counts["total"] + counts["mtp"]
    assert (counts["hyper_connections"] > 0) == (cfg.hc_mult > 1)
    assert (counts["mtp"] > 0) == bool(cfg.num_nextn_predict_layers)
