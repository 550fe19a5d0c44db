"""DeepSeek-V4 compressed attention (window-only, CSA, HCA layers): the compressor against a
per-window loop, the indexer's selection against brute force, exact causality, decoding with
caches equal to the full forward pass, gradients, cache bytes, configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.config import ModelConfig
from minimoe.long_context import kv_cache
from minimoe.long_context.compressed_attention import (CompressedAttention, compress,
                                                       compress_from_start, top_k_entries)
from minimoe.model import Transformer, make_attention

# layer 0: window only, layer 1: CSA (ratio 2, overlapping windows, indexer), layer 2: HCA (4)
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, head_dim=16, d_ff=64,
                  max_seq_len=32, attention="compressed", compress_ratios=(0, 2, 4),
                  csa_compress_ratio=2, sliding_window=3, q_lora_rank=8, o_lora_rank=8,
                  o_groups=2, qk_rope_head_dim=4, index_n_heads=2, index_head_dim=8,
                  index_topk=2)
LAYERS = {"window": 0, "csa": 1, "hca": 2}
SEQ, MAX_LEN = 11, 16  # 11: not a multiple of either ratio
TOL = dict(atol=3e-5, rtol=3e-5)


@nnx.jit
def _call(module, x, cache):
    return module(x, cache)


def _layer(kind, cfg=CFG, seed=0):
    m = make_attention(cfg, rngs=nnx.Rngs(seed), layer=LAYERS[kind])
    # non-zero sink and slot biases, so the tests see them act
    m.attn_sink[...] = jnp.linspace(-1.0, 1.0, cfg.n_heads)
    if m.ratio:
        m.compressor.ape[...] = jax.random.normal(jax.random.key(5), m.compressor.ape.shape)
    return m


def _x(seq=SEQ, seed=1, batch=2):
    return jax.random.normal(jax.random.key(seed), (batch, seq, CFG.d_model))


def _decode(module, x, chunks):
    """Outputs of feeding x in chunks of the given lengths (then one token at a time)."""
    cache = module.init_cache(x.shape[0], MAX_LEN)
    ys, t = [], 0
    sizes = list(chunks) + [1] * (x.shape[1] - sum(chunks))
    for n in sizes:
        y, cache = _call(module, x[:, t:t + n], cache)
        ys.append(y)
        t += n
    return jnp.concatenate(ys, axis=1), cache


# --- the compressor against a per-window loop --------------------------------------------------

def _naive_entries(kv, score, ratio, d, overlap):
    """Entry i: softmax over its window's slots, channel by channel, one window at a time."""
    kv, score = np.asarray(kv, np.float64), np.asarray(score, np.float64)
    out = []
    for i in range(kv.shape[1] // ratio):
        if overlap:
            prev = range((i - 1) * ratio, i * ratio)
            rows_kv = [kv[:, p, :d] for p in prev if p >= 0] + \
                      [kv[:, p, d:] for p in range(i * ratio, (i + 1) * ratio)]
            rows_s = [score[:, p, :d] for p in prev if p >= 0] + \
                     [score[:, p, d:] for p in range(i * ratio, (i + 1) * ratio)]
        else:
            rows_kv = [kv[:, p] for p in range(i * ratio, (i + 1) * ratio)]
            rows_s = [score[:, p] for p in range(i * ratio, (i + 1) * ratio)]
        s = np.stack(rows_s, 1)
        w = np.exp(s - s.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        out.append((w * np.stack(rows_kv, 1)).sum(1))
    return np.stack(out, 1)


@pytest.mark.parametrize("ratio,overlap", [(2, True), (4, False), (3, True)])
def test_compress_equals_a_per_window_loop_in_one_chunk_and_in_pieces(ratio, overlap):
    d, c, seq = 5, 2 if overlap else 1, 13
    k1, k2 = jax.random.split(jax.random.key(0))
    kv = jax.random.normal(k1, (2, seq, c * d))
    score = 2 * jax.random.normal(k2, (2, seq, c * d))
    ref = _naive_entries(kv, score, ratio, d, overlap)  # [2, seq // ratio, d]
    state = jnp.zeros((2, c * ratio, c * d))
    pooled, blocks, complete, _, _ = compress(kv, score, state, state, jnp.int32(0), ratio, d,
                                              overlap)
    np.testing.assert_allclose(pooled[:, np.asarray(complete)], ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(blocks)[np.asarray(complete)], np.arange(seq // ratio))
    # the reshaped path of a whole sequence without a cache: the same entries
    p2, b2, ok2 = compress_from_start(kv, score, ratio, d, overlap)
    np.testing.assert_array_equal(b2, blocks)
    np.testing.assert_array_equal(ok2, complete)
    np.testing.assert_allclose(p2[:, np.asarray(ok2)], ref, atol=1e-5)
    # the same entries when the tokens arrive in uneven chunks, the state carried between them
    got, kv_s, sc_s, t = {}, state, state, 0
    for n in (3, 1, 5, 1, 3):
        p, bl, ok, kv_s, sc_s = compress(kv[:, t:t + n], score[:, t:t + n], kv_s, sc_s,
                                         jnp.int32(t), ratio, d, overlap)
        for j in np.flatnonzero(np.asarray(ok)):
            got[int(bl[j])] = np.asarray(p[:, j])
        t += n
    assert sorted(got) == list(range(seq // ratio))
    np.testing.assert_allclose(np.stack([got[i] for i in sorted(got)], 1), ref, atol=1e-5)


# --- the indexer's selection against brute force -----------------------------------------------

def test_top_k_entries_equals_brute_force():
    scores = jax.random.normal(jax.random.key(3), (2, 6, 7))
    allowed = jax.random.bernoulli(jax.random.key(4), 0.6, (2, 6, 7))
    got = np.asarray(top_k_entries(scores, allowed, 3))
    s, a = np.asarray(scores), np.asarray(allowed)
    for b in range(2):
        for q in range(6):
            ok = np.flatnonzero(a[b, q])
            best = ok[np.argsort(-s[b, q, ok])[:3]]
            np.testing.assert_array_equal(np.flatnonzero(got[b, q]), np.sort(best))


# --- causality and decoding ------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(LAYERS))
def test_future_tokens_do_not_change_the_past(kind):
    m, x = _layer(kind), _x()
    for p in (3, 6, 7):
        x2 = x.at[:, p:].set(_x(seed=9)[:, p:])
        y, y2 = _call(m, x, None)[0], _call(m, x2, None)[0]
        np.testing.assert_allclose(y[:, :p], y2[:, :p], **TOL)
        assert not np.allclose(y[:, p:], y2[:, p:], atol=1e-4)


@pytest.mark.parametrize("kind", ["csa", "hca"])
def test_a_compressed_entry_appears_exactly_when_its_last_token_arrives(kind):
    """Token 0 leaves the window (3) of query 3; it still reaches query t only through entry 0
    (tokens 0 .. ratio - 1), visible from t = ratio - 1 on. HCA (ratio 4): query 3 sees it, and
    queries 4.. see it too; CSA (ratio 2): entry 0 is visible from query 1, so query 3 too."""
    m, x = _layer(kind), _x()
    y = _call(m, x, None)[0]
    y2 = _call(m, x.at[:, 0].add(3.0), None)[0]
    changed = np.abs(np.asarray(y - y2)).max(axis=(0, 2)) > 1e-5  # per query position
    assert changed[:3].all()  # inside the window
    assert changed[3:].all()  # through the compressed entry (and CSA's selection)
    w = _layer("window")  # control: without compressed entries token 0 is gone after query 2
    yw, yw2 = _call(w, x, None)[0], _call(w, x.at[:, 0].add(3.0), None)[0]
    np.testing.assert_allclose(yw[:, 3:], yw2[:, 3:], **TOL)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("chunks", [(), (3,), (5, 2), (8,)])
def test_decode_equals_full_forward(kind, chunks):
    """Prefill of 3, 5 or 8 tokens (not a multiple of the ratio, or one), or none, then one
    token at a time: the same outputs as the whole sequence at once, across block boundaries."""
    m, x = _layer(kind), _x()
    full, none_cache = _call(m, x, None)
    assert none_cache is None
    y, cache = _decode(m, x, chunks)
    np.testing.assert_allclose(y, full, **TOL)
    assert int(cache.pos) == SEQ


def test_transformer_with_every_layer_kind_decodes_like_its_full_forward():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, CFG.vocab_size)

    @nnx.jit
    def lm(model, t, c):
        out = model(t, c)
        return out.logits, out.cache

    full = lm(model, tokens, None)[0]
    logits, cache = lm(model, tokens[:, :5], model.init_cache(2, MAX_LEN))
    steps = [logits]
    for t in range(5, 9):
        logits, cache = lm(model, tokens[:, t:t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4)
    kinds = [(b.attn.ratio, b.attn.is_csa) for b in model.blocks]
    assert kinds == [(0, False), (2, True), (4, False)]


def test_writing_past_the_cache_raises():
    m, x = _layer("hca"), _x(seq=12)
    cache = m.init_cache(2, 8)  # 2 entries of 4 tokens
    _, cache = m(x[:, :8], cache)
    with pytest.raises(ValueError, match="compressed KV cache overflow"):
        m(x[:, 8:12], cache)
    with pytest.raises(Exception, match="compressed KV cache overflow"):  # inside jit
        jax.block_until_ready(_call(m, x[:, 8:12], cache))


# --- CSA selection, the sink, gradients --------------------------------------------------------

def test_csa_keeping_every_entry_equals_dense_attention_over_all_entries():
    m, x = _layer("csa"), _x()
    m.index_topk = 100  # more than the 5 entries of 11 tokens
    y_all = _call(m, x, None)[0]
    m.is_csa = False  # the same layer without the indexer: every visible entry, densely
    y_dense = _call(m, x, None)[0]
    np.testing.assert_allclose(y_all, y_dense, **TOL)
    m.is_csa, m.index_topk = True, 1  # control: a real selection changes the result
    assert not np.allclose(_call(m, x, None)[0], y_dense, atol=1e-4)


def test_the_sink_takes_probability_mass():
    m, x = _layer("window"), _x()
    y0 = _call(m, x, None)[0]
    m.attn_sink[...] = jnp.full((CFG.n_heads,), 30.0)  # the sink takes almost everything
    y1 = _call(m, x, None)[0]
    assert float(jnp.abs(y1).max()) < 1e-3 * float(jnp.abs(y0).max())


def _grads(m, x):
    def loss(m, x):
        return jnp.sum(m(x)[0] ** 2)
    return nnx.grad(loss, argnums=(0, 1))(m, x)


def test_gradients_reach_every_weight_and_the_indexer_stays_off_the_residual_stream():
    x = _x()
    m = _layer("csa")
    g_m, g_x = _grads(m, x)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(g_m, nnx.Param))}
    for name, g in flat.items():
        assert float(jnp.abs(g[...]).max()) > 0, f"no gradient reaches {name}"
    assert any(k.startswith("indexer/") for k in flat)
    # keeping every entry, the indexer's straight-through bias is 0 and the input gradient is
    # the one of the same layer without an indexer: nothing of the indexer leaks into x
    m.index_topk = 100
    _, g_x_all = _grads(m, x)
    m.is_csa = False
    _, g_x_dense = _grads(m, x)
    np.testing.assert_allclose(g_x_all, g_x_dense, atol=1e-5, rtol=1e-5)


# --- cache bytes ---------------------------------------------------------------------------------

def test_cache_arrays_have_the_bytes_of_the_formula():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    for n in (4, 16, 32):
        cache = model.init_cache(2, n)
        assert kv_cache.cache_nbytes(cache) == kv_cache.compressed_kv_cache_bytes(CFG, n, batch=2)
        assert kv_cache.kv_cache_bytes(CFG, n, batch=2) == kv_cache.cache_nbytes(cache)
    # the per-token slope of each layer, measured on the arrays between two lengths
    for b in model.blocks:
        m = b.attn
        grow = kv_cache.cache_nbytes(m.init_cache(1, 32)) - kv_cache.cache_nbytes(m.init_cache(1, 16))
        slope = kv_cache.compressed_kv_values_per_token(m.ratio, CFG.head_dim, CFG.index_head_dim,
                                                        m.is_csa)
        assert grow == 16 * slope * 4  # float32
        assert m.cache_values_per_token() == slope
        fixed = kv_cache.compressed_kv_fixed_values(m.ratio, CFG.head_dim, CFG.index_head_dim,
                                                    m.is_csa, CFG.sliding_window)
        assert kv_cache.cache_nbytes(m.init_cache(1, 16)) == (fixed + 16 * slope) * 4


def test_v4_pro_bytes_per_token_match_the_published_figure():
    """V4-Pro: 30 CSA layers (ratio 4) and 31 HCA layers (128), head_dim 512, index_head_dim
    128, BF16: 9,848 bytes per token, 9.62 GiB for 2^20 tokens (vLLM's figure)."""
    per_token = 2 * (30 * kv_cache.compressed_kv_values_per_token(4, 512, 128, True)
                     + 31 * kv_cache.compressed_kv_values_per_token(128, 512, 128, False))
    assert per_token == 9848
    assert round(per_token * 2 ** 20 / 2 ** 30, 2) == 9.62
    assert kv_cache.compressed_kv_values_per_token(0, 512, 128, False) == 0


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    (dict(compress_ratios=(0, -2, 4)), "compress_ratios"),
    (dict(compress_ratios=(0, 1, 4)), "compress_ratios"),
    (dict(compress_ratios=(0, 2, 64)), "compress_ratios"),  # longer than max_seq_len
    (dict(compress_ratios=(0, 2)), "compress_ratios"),
    (dict(compress_ratios=(0, 2, 4, 4, 4)), "compress_ratios"),
    (dict(compress_ratios=[0, 2, 4]), "compress_ratios"),
    (dict(compress_ratios=None), "compress_ratios"),
    (dict(index_topk=0), "index_topk"),
    (dict(index_topk=None), "index_topk"),
    (dict(compress_ratios=(0, 4, 4)), "index_topk"),  # no CSA layer: index_topk is unused
    (dict(o_groups=3), "o_groups"),
    (dict(qk_rope_head_dim=18), "qk_rope_head_dim"),
    (dict(qk_rope_head_dim=10), "index_head_dim"),
    (dict(o_lora_rank=None), "o_lora_rank"),
    (dict(q_lora_rank=None), "q_lora_rank"),
    (dict(sliding_window=None), "sliding_window"),
    (dict(n_kv_heads=2), "n_kv_heads"),
    (dict(sparse_top_k=4), "sparse_top_k"),
    (dict(head_dim=0), "head_dim"),
    (dict(compress_rope_theta=0.0), "compress_rope_theta"),
])
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        CFG.replace(**changes)


@pytest.mark.parametrize("changes,field", [
    (dict(compress_ratios=(0, 2, 4)), "compress_ratios"),
    (dict(o_lora_rank=8), "o_lora_rank"),
    (dict(index_topk=2), "index_topk"),
    (dict(o_groups=2), "o_groups"),
])
def test_v4_fields_are_rejected_by_other_attention_kinds(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(attention="mla", head_dim=16)


def test_head_dim_is_derived_unless_given_and_follows_replace():
    base = ModelConfig(d_model=32, n_heads=4)
    assert base.head_dim == 8
    assert base.replace(d_model=64).head_dim == 16  # derived again, not a stale 8
    given = base.replace(head_dim=12)
    assert given.head_dim == 12 and given.replace(d_model=64).head_dim == 12
    for cfg in (base, given, CFG):
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert base.to_dict()["head_dim"] is None
    # an explicit head_dim is honoured by the classic attention too
    attn = make_attention(given, rngs=nnx.Rngs(0))
    assert attn.wq.shape == (32, 4 * 12)
    # a trailing MTP entry is accepted; the main stack reads the first n_layers
    assert CFG.replace(compress_ratios=(0, 2, 4, 0)).layer_compress_ratio(2) == 4


def test_module_rejects_other_attention_kinds():
    with pytest.raises(ValueError, match="attention='compressed'"):
        CompressedAttention(ModelConfig(), 0, rngs=nnx.Rngs(0))


def test_param_counts_equal_the_built_model():
    from minimoe.accounting import count_params, param_counts
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    assert param_counts(CFG)["total"] == count_params(model)
