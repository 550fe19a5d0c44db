"""Attention variants: MHA/GQA/MQA, sliding window (ring buffer), MLA (naive and absorbed),
top-k sparse attention; their caches and parameter counts (KV-cache and FLOP accounting:
tests/test_accounting.py).

Shapes are tiny and calls are jitted (a few compiles per variant) to keep the file fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.accounting import count_params, param_counts
from minimoe.blocks.attention import Attention, KVCache, ring_positions
from minimoe.config import ModelConfig
from minimoe.long_context.mla import MLACache, MLAttention
from minimoe.long_context.sparse_attention import SparseAttention, SparseKVCache, set_top_k
from minimoe.model import Transformer, make_attention

BASE = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   max_seq_len=32, index_n_heads=2, index_head_dim=8)
SEQ, PREFILL, MAX_LEN = 9, 4, 12
TOL = dict(atol=2e-5, rtol=2e-5)

VARIANTS = {  # name -> (config, absorb)
    "mha": (BASE.replace(n_kv_heads=None), None),
    "gqa": (BASE, None),
    "mqa": (BASE.replace(n_kv_heads=1), None),
    "sliding": (BASE.replace(attention="sliding", sliding_window=3), None),  # window < PREFILL
    "mla_naive": (BASE.replace(attention="mla"), False),
    "mla_absorbed": (BASE.replace(attention="mla", q_lora_rank=8), True),
    "sparse": (BASE.replace(attention="sparse", sparse_top_k=3), None),
}


@nnx.jit
def _call(module, x, cache):
    return module(x, cache)


def _build(name):
    cfg, absorb = VARIANTS[name]
    m = make_attention(cfg, rngs=nnx.Rngs(0))
    if absorb is not None:
        m.absorb = absorb
    return m


def _x(seq=SEQ, seed=1):
    return jax.random.normal(jax.random.key(seed), (2, seq, BASE.d_model))


def _decode(module, x, prefill):
    """Outputs of a prefill of ``prefill`` tokens then one token at a time, and the last cache."""
    cache = module.init_cache(x.shape[0], MAX_LEN)
    ys = []
    if prefill:
        y, cache = _call(module, x[:, :prefill], cache)
        ys.append(y)
    for t in range(prefill, x.shape[1]):
        y, cache = _call(module, x[:, t:t + 1], cache)
        ys.append(y)
    return jnp.concatenate(ys, axis=1), cache


# --- every variant: incremental decoding == full forward pass -------------------------------

@pytest.mark.default_xla
@pytest.mark.parametrize("name", list(VARIANTS))
def test_decode_equals_full_forward(name):
    m, x = _build(name), _x()
    full, none_cache = _call(m, x, None)
    assert none_cache is None and full.shape == x.shape
    for prefill in (PREFILL, 0):  # prefill-then-decode, and token by token from the start
        y, cache = _decode(m, x, prefill)
        np.testing.assert_allclose(y, full, **TOL)
        assert int(cache.pos) == SEQ


@pytest.mark.parametrize("name", ["sliding", "mla_naive", "sparse"])
def test_causal_future_tokens_do_not_change_the_past(name):
    m, x = _build(name), _x()
    x2 = x.at[:, 5:].set(_x(seed=7)[:, 5:])
    y, y2 = _call(m, x, None)[0], _call(m, x2, None)[0]
    np.testing.assert_allclose(y[:, :5], y2[:, :5], **TOL)
    assert not np.allclose(y[:, 5:], y2[:, 5:])


def test_transformer_decode_equals_full_forward_for_every_variant():
    tokens = jax.random.randint(jax.random.key(0), (2, 7), 0, BASE.vocab_size)

    @nnx.jit
    def lm(model, t, c):
        out = model(t, c)
        return out.logits, out.cache

    for name in ("gqa", "sliding", "mla_absorbed", "sparse"):
        cfg, absorb = VARIANTS[name]
        model = Transformer(cfg.replace(n_layers=1), rngs=nnx.Rngs(0))
        if absorb:
            for block in model.blocks:
                block.attn.absorb = True
        full = lm(model, tokens, None)[0]
        logits, cache = lm(model, tokens[:, :4], model.init_cache(2, 10))
        steps = [logits]
        for t in range(4, tokens.shape[1]):
            logits, cache = lm(model, tokens[:, t:t + 1], cache)
            steps.append(logits)
        np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4,
                                   err_msg=name)


# --- sliding window: a ring buffer of `window` slots -----------------------------------------

def test_sliding_cache_is_a_ring_of_window_slots():
    m = _build("sliding")
    assert m.init_cache(2, MAX_LEN).k.shape == (2, 3, BASE.kv_heads, BASE.head_dim)
    assert m.init_cache(2, 2).k.shape[1] == 2  # never more slots than max_len
    _, cache = _decode(m, _x(), PREFILL)
    # after 9 tokens the ring holds positions 6, 7, 8 in slots 0, 1, 2 (p % 3)
    np.testing.assert_array_equal(ring_positions(cache.pos, 3), [6, 7, 8])
    np.testing.assert_array_equal(ring_positions(jnp.int32(2), 3), [0, 1, -1])  # -1: empty
    np.testing.assert_array_equal(ring_positions(jnp.int32(4), 3), [3, 1, 2])


def test_full_attention_cache_unchanged_without_window():
    m = _build("gqa")
    cache = m.init_cache(2, MAX_LEN)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, MAX_LEN, 2, BASE.head_dim)


# --- MLA -------------------------------------------------------------------------------------

@pytest.mark.parametrize("q_lora_rank", [None, 8])
def test_mla_absorbed_equals_naive(q_lora_rank):
    m = MLAttention(BASE.replace(attention="mla", q_lora_rank=q_lora_rank), rngs=nnx.Rngs(3))
    x = _x()
    naive = _call(m, x, None)[0]
    m.absorb = True
    np.testing.assert_allclose(_call(m, x, None)[0], naive, **TOL)


def mla_from_the_paper(m, x, theta):
    """DeepSeek-V2 §2.1, eqs. 9-19, one head and one query at a time in float64, with the
    module's weights (and the RMSNorms of c_KV and c_Q that DeepSeek's code adds, eps 1e-6).
    RoPE as in DeepSeek's code: channel pairs (2i, 2i+1) rotated as complex numbers."""
    from test_model import naive_rope

    f = lambda a: np.asarray(a[...], np.float64)  # noqa: E731
    x = np.asarray(x, np.float64)[0]  # one sequence: [seq, d_model]
    seq = x.shape[0]
    h, nope, rope, c = m.n_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank
    dv = m.v_head_dim
    norm = lambda v, w: v / np.sqrt((v ** 2).mean(-1, keepdims=True) + 1e-6) * w  # noqa: E731
    rot = lambda v: naive_rope(v[None, :, None], np.arange(seq), theta, True)[0, :, 0]  # noqa: E731
    w_dkv = f(m.w_dkv)
    c_kv = norm(x @ w_dkv[:, :c], f(m.kv_norm.weight))  # (9): the compressed latent
    k_r = rot(x @ w_dkv[:, c:])  # (15): one rope key for all heads
    w_ukv = f(m.w_ukv).reshape(c, h, nope + dv)
    if m.q_lora_rank is None:
        q_all = x @ f(m.wq)
    else:
        q_all = norm(x @ f(m.w_dq), f(m.q_norm.weight)) @ f(m.w_uq)  # (12), (13)-(14)
    q_all = q_all.reshape(seq, h, nope + rope)
    out = np.zeros((seq, h * dv))
    for i in range(h):
        k_c = c_kv @ w_ukv[:, i, :nope]  # (10)
        v_c = c_kv @ w_ukv[:, i, nope:]  # (11)
        q_c, q_r = q_all[:, i, :nope], rot(q_all[:, i, nope:])  # (13), (14)
        for t in range(seq):
            q = np.concatenate([q_c[t], q_r[t]])  # (16)
            k = np.concatenate([k_c[:t + 1], k_r[:t + 1]], axis=1)  # (17), keys 0..t
            s = k @ q / np.sqrt(nope + rope)
            p = np.exp(s - s.max())
            out[t, i * dv:(i + 1) * dv] = (p / p.sum()) @ v_c[:t + 1]  # (18)
    return out @ f(m.wo)  # (19)


@pytest.mark.parametrize("q_lora_rank", [None, 8])
@pytest.mark.parametrize("absorb", [False, True])
def test_mla_matches_the_papers_equations(q_lora_rank, absorb):
    cfg = BASE.replace(attention="mla", q_lora_rank=q_lora_rank, norm_eps=1e-2)
    m = MLAttention(cfg, rngs=nnx.Rngs(3), absorb=absorb)
    # trained-looking norm weights, so a mix-up of the two norms would show
    m.kv_norm.weight[...] = jnp.linspace(0.5, 1.5, cfg.kv_lora_rank)
    x = _x()[:1]
    expected = mla_from_the_paper(m, x, cfg.rope_theta)
    np.testing.assert_allclose(_call(m, x, None)[0][0], expected, atol=2e-5, rtol=2e-4)
    # prefill + decode gives the same numbers
    y, _ = _decode(m, x, PREFILL)
    np.testing.assert_allclose(y[0], expected, atol=2e-5, rtol=2e-4)


def test_mla_caches_only_the_latent_and_rope_key():
    cfg = VARIANTS["mla_naive"][0]
    m = _build("mla_naive")
    cache = m.init_cache(2, MAX_LEN)
    assert isinstance(cache, MLACache) and cache._fields == ("latent", "k_rope", "pos")
    assert cache.latent.shape == (2, MAX_LEN, cfg.kv_lora_rank)
    assert cache.k_rope.shape == (2, MAX_LEN, cfg.qk_rope_head_dim)
    assert hasattr(m, "wq") and not hasattr(m, "w_dq")  # q_lora_rank None: full-rank queries
    low_rank = _build("mla_absorbed")  # q_lora_rank set
    assert hasattr(low_rank, "w_dq") and hasattr(low_rank, "q_norm") and not hasattr(low_rank, "wq")


# --- sparse attention ------------------------------------------------------------------------

def test_sparse_with_large_top_k_equals_full_causal_attention():
    cfg = VARIANTS["sparse"][0].replace(sparse_top_k=SEQ)
    sparse, dense = SparseAttention(cfg, rngs=nnx.Rngs(0)), Attention(cfg, rngs=nnx.Rngs(0))
    for w in ("wq", "wk", "wv", "wo"):  # same seed, same creation order: same weights
        np.testing.assert_array_equal(getattr(sparse, w)[...], getattr(dense, w)[...])
    x = _x()
    full = _call(dense, x, None)[0]
    np.testing.assert_allclose(_call(sparse, x, None)[0], full, **TOL)
    sparse.top_k = 2
    assert not np.allclose(_call(sparse, x, None)[0], full, atol=1e-3)  # top-2 really is sparse


def test_sparse_indexer_gets_gradients_through_the_straight_through_bias():
    m = _build("sparse")
    x = _x()

    def loss(model):
        return jnp.sum(model(x)[0] ** 2)

    grads = nnx.jit(nnx.grad(loss))(m)
    for name in ("wq_index", "wk_index", "w_index", "wq"):
        g = getattr(grads, name)[...]
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name


def test_sparse_indexer_gradient_stays_out_of_the_residual_stream():
    """With top_k >= seq the forward pass is GQA's; so must be every gradient outside the
    indexer, including the one that flows back into the input."""
    cfg = VARIANTS["sparse"][0].replace(sparse_top_k=SEQ)
    sparse, dense = SparseAttention(cfg, rngs=nnx.Rngs(0)), Attention(cfg, rngs=nnx.Rngs(0))
    x = _x()

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)[0]))

    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    (g_sparse, gx_sparse), (g_dense, gx_dense) = grad(sparse, x), grad(dense, x)
    np.testing.assert_allclose(gx_sparse, gx_dense, **TOL)
    for w in ("wq", "wk", "wv", "wo"):
        np.testing.assert_allclose(getattr(g_sparse, w)[...], getattr(g_dense, w)[...], **TOL)
    assert np.abs(g_sparse.wq_index[...]).max() > 0  # while the indexer still learns


def test_set_top_k_switches_every_layer_between_dense_and_sparse():
    cfg = VARIANTS["sparse"][0]  # top_k = 3
    tokens = jax.random.randint(jax.random.key(2), (2, SEQ), 0, cfg.vocab_size)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    wide = Transformer(cfg.replace(sparse_top_k=SEQ), rngs=nnx.Rngs(0))  # same weights
    sparse_logits = model(tokens).logits
    set_top_k(model, SEQ)  # dense warm-up: every key is kept
    assert all(b.attn.top_k == SEQ for b in model.blocks)
    np.testing.assert_allclose(model(tokens).logits, wide(tokens).logits, **TOL)
    assert not np.allclose(model(tokens).logits, sparse_logits, atol=1e-3)
    set_top_k(model, 3)
    np.testing.assert_allclose(model(tokens).logits, sparse_logits, **TOL)
    with pytest.raises(ValueError, match="top_k"):
        set_top_k(model, 0)
    with pytest.raises(ValueError, match="SparseAttention"):
        set_top_k(Transformer(BASE, rngs=nnx.Rngs(0)), 3)


def test_sparse_cache_holds_kv_and_indexer_keys():
    cache = _build("sparse").init_cache(2, MAX_LEN)
    assert isinstance(cache, SparseKVCache)
    assert cache.index_k.shape == (2, MAX_LEN, BASE.index_head_dim)


# --- parameter and FLOP accounting ---------------------------------------------------------

@pytest.mark.parametrize("name", ["mla_naive", "mla_absorbed", "sparse", "sliding"])
def test_param_counts_match_built_attention(name):
    cfg = VARIANTS[name][0]
    per_layer = param_counts(cfg.replace(n_layers=1))["attention"]
    assert count_params(_build(name)) == per_layer


def test_masked_softmax_against_an_explicit_loop():
    """Every attention variant's probabilities: masked keys get exactly 0, each row is a softmax
    over its visible keys alone, and a sink takes its share without a value behind it."""
    from minimoe.blocks.attention import masked_softmax

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5)).astype(np.float32) * 3
    mask = rng.random((2, 3, 5)) < 0.6
    mask[0, 0] = False  # a row with nothing visible stays finite
    sink = rng.normal(size=(2, 3)).astype(np.float32)
    plain = np.asarray(masked_softmax(jnp.asarray(scores), jnp.asarray(mask)))
    sunk = np.asarray(masked_softmax(jnp.asarray(scores), jnp.asarray(mask), jnp.asarray(sink)))
    assert np.isfinite(plain).all() and np.isfinite(sunk).all()
    for i, j in np.ndindex(2, 3):
        visible = scores[i, j][mask[i, j]]
        for probs, extra in ((plain, []), (sunk, [sink[i, j]])):
            logits = np.concatenate([visible, extra])
            if logits.size == 0:
                continue  # no visible key and no sink: the row's values do not matter
            want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose(probs[i, j][mask[i, j]], want[:visible.size], atol=1e-6)
            assert (probs[i, j][~mask[i, j]] == 0).all()
    assert sunk[0, 0].sum() == 0 and (sunk.sum(-1) < 1).all()  # the sink keeps its share


def test_cache_write_puts_each_new_token_at_its_absolute_slot():
    """The one cache write of the GQA, MLA and top-k sparse caches: slot start + i holds new
    token i in the cache's dtype, every other slot is left as it was (any rank of trailing
    axes, a traced start under jit)."""
    from minimoe.blocks.attention import cache_write

    rng = np.random.default_rng(1)
    for trailing in ((), (3,), (2, 4)):
        buf = jnp.asarray(rng.normal(size=(2, 7) + trailing), jnp.bfloat16)
        new = jnp.asarray(rng.normal(size=(2, 3) + trailing), jnp.float32)  # cast on write
        for start in (0, 2, 4):
            got = jax.jit(cache_write)(buf, new, jnp.int32(start))
            assert got.dtype == jnp.bfloat16
            want = np.asarray(buf, np.float32)
            for i in range(3):
                want[:, start + i] = np.asarray(new[:, i].astype(jnp.bfloat16), np.float32)
            np.testing.assert_array_equal(np.asarray(got, np.float32), want)
