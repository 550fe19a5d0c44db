"""Decoding with a KV cache must compute what the full forward pass computes, for every
setting that allows it, and refuse clearly where it cannot (expert choice, a full cache)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.blocks.attention import Attention, causal_mask, grouped_attention
from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer, generate, make_attention

BASE = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                   max_seq_len=16)
BATCH, PREFILL, STEPS = 4, 8, 4


@nnx.jit
def _lm(model, tokens, cache):
    out = model(tokens, cache)
    return out.logits, out.cache


@nnx.jit
def _train_stats(model, tokens):
    return model(tokens, train=True).moe_stats[0]


def prefill_then_decode(model, tokens):
    """Logits of a prefill of PREFILL tokens then one token at a time (a batch of BATCH
    sequences decoding together, as a server would batch them)."""
    logits, cache = _lm(model, tokens[:, :PREFILL], model.init_cache(tokens.shape[0],
                                                                     tokens.shape[1]))
    steps = [logits]
    for t in range(PREFILL, tokens.shape[1]):
        logits, cache = _lm(model, tokens[:, t:t + 1], cache)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1)


# capacity_factor 1.0 drops in training (checked below): the setting the issue reproduced
MOE_SETTINGS = {  # every token-choice router, and every dispatch strategy once
    "softmax-sort": dict(router="softmax", top_k=2, dispatch="sort", capacity_factor=1.0),
    "switch-reference": dict(router="switch", top_k=1, dispatch="reference", capacity_factor=1.0),
    "noisy_topk-dropless": dict(router="noisy_topk", top_k=2, dispatch="dropless"),
    "deepseek_v3-groups-onehot": dict(router="deepseek_v3", top_k=2, n_group=2, topk_group=1,
                                      n_shared_experts=1, dispatch="onehot", capacity_factor=1.0),
    "deepseek_v4-ragged_dot": dict(router="deepseek_v4", top_k=2, routed_scaling_factor=1.5,
                                   dispatch="ragged_dot"),
}


@pytest.mark.default_xla
@pytest.mark.parametrize("name", list(MOE_SETTINGS))
def test_moe_decode_equals_full_forward(name):
    moe = MoEConfig(n_experts=4, d_expert=8, **MOE_SETTINGS[name])
    model = Transformer(BASE.replace(moe=moe), rngs=nnx.Rngs(0))
    if moe.router.startswith("deepseek"):  # a non-zero selection bias takes part too
        model.blocks[0].ffn.router.bias[...] = jnp.linspace(-0.3, 0.3, 4)
    tokens = jax.random.randint(jax.random.key(1), (BATCH, PREFILL + STEPS), 0, BASE.vocab_size)
    full = _lm(model, tokens, None)[0]
    np.testing.assert_allclose(prefill_then_decode(model, tokens), full, atol=2e-5, rtol=1e-4)
    if moe.capacity_factor is not None:  # the capacity is real: training calls do drop
        assert float(_train_stats(model, tokens).dropped_fraction) > 0


@pytest.mark.parametrize("cfg", [BASE.replace(n_kv_heads=None), BASE.replace(tie_embeddings=False)],
                         ids=["mha-tied", "mqa-untied"])
def test_dense_decode_equals_full_forward(cfg):
    model = Transformer(cfg.replace(n_layers=2), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, PREFILL + STEPS), 0, cfg.vocab_size)
    np.testing.assert_allclose(prefill_then_decode(model, tokens), _lm(model, tokens, None)[0],
                               atol=2e-5, rtol=1e-4)


def test_expert_choice_refuses_cached_calls_and_generate():
    moe = MoEConfig(n_experts=4, top_k=1, d_expert=8, router="expert_choice", capacity_factor=1.0)
    model = Transformer(BASE.replace(moe=moe), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((1, 4), jnp.int32)
    assert _lm(model, tokens, None)[0].shape == (1, 4, BASE.vocab_size)  # forward: allowed
    with pytest.raises(ValueError, match="'expert_choice' cannot decode with a KV cache"):
        model(tokens, model.init_cache(1, 8))
    with pytest.raises(ValueError, match="'expert_choice' cannot decode with a KV cache"):
        generate(model, tokens, 2, jax.random.key(0))


# --- writing past the end of a cache -------------------------------------------------------

CACHED = {
    "gqa": BASE,
    "mla": BASE.replace(attention="mla", n_kv_heads=None, kv_lora_rank=8, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=8),
    "sparse": BASE.replace(attention="sparse", sparse_top_k=3, index_head_dim=4),
}


@pytest.mark.parametrize("name", list(CACHED))
def test_writing_past_the_end_of_a_cache_fails_eagerly_and_poisons_under_jit(name):
    attn = make_attention(CACHED[name], rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (1, 10, BASE.d_model))
    step = nnx.jit(lambda m, x, c: m(x, c))
    _, cache = step(attn, x[:, :6], attn.init_cache(1, 8))  # 6 of 8 slots
    y, full = step(attn, x[:, 6:8], cache)  # exactly full: fine
    assert np.isfinite(np.asarray(y)).all() and int(full.pos) == 8
    # an eager call knows the position: a clear error, before any work
    with pytest.raises(ValueError, match=r"KV cache overflow: writing 4 tokens at position 6 "
                                         r"needs 10 slots, the cache has 8"):
        attn(x[:, 6:], cache)
    with pytest.raises(ValueError, match="at position 8 needs 9 slots"):
        attn(x[:, 8:9], full)
    # under jit the position is a tracer: the overflowing call's outputs are NaN, not the
    # silently wrong numbers a clamped write would give
    y_bad, _ = step(attn, x[:, 6:], cache)
    assert np.isnan(np.asarray(y_bad)).all()


def test_a_model_cache_that_overflows_fails_and_generate_guards_its_own():
    model = Transformer(BASE, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((1, 10), jnp.int32)
    _, cache = _lm(model, tokens[:, :6], model.init_cache(1, 8))
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(tokens[:, 6:], cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        generate(model, tokens, 7, jax.random.key(0))


def test_sliding_ring_keeps_decoding_past_its_window():
    cfg = BASE.replace(attention="sliding", sliding_window=3)
    attn = make_attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (1, 9, BASE.d_model))
    step = nnx.jit(lambda m, x, c: m(x, c))
    cache = attn.init_cache(1, 9)  # a ring of 3 slots
    assert cache.k.shape[1] == 3
    ys = []
    for t in range(9):
        y, cache = step(attn, x[:, t:t + 1], cache)
        ys.append(y)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), step(attn, x, None)[0], atol=2e-5)


def test_attention_built_from_a_sliding_config_uses_its_window():
    cfg = BASE.replace(attention="sliding", sliding_window=3)
    attn = Attention(cfg, rngs=nnx.Rngs(0))  # directly, not through make_attention
    assert attn.window == 3
    x = jax.random.normal(jax.random.key(5), (1, 7, BASE.d_model))
    full_causal = Attention(BASE, rngs=nnx.Rngs(0))  # same seed: same weights
    q, k, v, pos = attn.project_qkv(x, jnp.int32(0))
    expected = grouped_attention(q, k, v, causal_mask(pos, pos, 3)).reshape(1, 7, -1) @ attn.wo[...]
    y = nnx.jit(lambda m, x: m(x)[0])
    np.testing.assert_allclose(y(attn, x), expected, atol=1e-5)
    assert not np.allclose(y(attn, x), y(full_causal, x), atol=1e-3)


def test_attention_modules_refuse_a_config_of_another_kind():
    with pytest.raises(ValueError, match="a config with attention='mla' builds MLAttention"):
        Attention(CACHED["mla"], rngs=nnx.Rngs(0))
    from minimoe.long_context.sparse_attention import SparseAttention
    with pytest.raises(ValueError, match="SparseAttention needs a config with attention='sparse'"):
        SparseAttention(BASE, rngs=nnx.Rngs(0))
