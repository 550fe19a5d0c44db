"""FLOP and KV-cache accounting against what the code really computes and stores: FLOPs
counted from the jaxpr of a decoding step (``accounting.matmul_flops``), cache bytes from the
arrays of a built cache."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from minimoe.accounting import (attention_flops_per_token, count_active_params, flops_per_token,
                                matmul_flops, param_counts)
from minimoe.config import ModelConfig, MoEConfig
from minimoe.long_context import kv_cache
from minimoe.long_context.mla import MLAttention, mla_decode_flops_per_token
from minimoe.model import Transformer, make_attention

BASE = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32,
                   max_seq_len=16, index_n_heads=2, index_head_dim=4)
CONTEXT = 12  # cache slots the decoded token scores (unwritten slots are masked, still computed)


def decode_step_flops(model_or_layer, x, cache):
    graphdef, state = nnx.split(model_or_layer)
    return matmul_flops(lambda s, x, c: nnx.merge(graphdef, s)(x, c)[0], state, x, cache)


def model_decode_flops(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    return decode_step_flops(model, jnp.zeros((1, 1), jnp.int32), model.init_cache(1, CONTEXT))


@pytest.mark.parametrize("cfg", [
    BASE,
    BASE.replace(n_kv_heads=None, tie_embeddings=False),
    BASE.replace(attention="sparse", sparse_top_k=5),
    # MoE with grouped matmuls: only the top_k chosen experts run (a capacity buffer would
    # run every expert on its slot, padding included)
    BASE.replace(moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, n_shared_experts=1,
                               dispatch="ragged_dot"), first_k_dense=1),
], ids=["gqa-tied", "mha-untied", "sparse", "moe-ragged_dot"])
def test_flops_per_token_equals_the_matmuls_of_a_decoding_step(cfg):
    assert model_decode_flops(cfg) == flops_per_token(cfg, CONTEXT)


def test_sliding_window_flops_count_the_window():
    cfg = BASE.replace(attention="sliding", sliding_window=4)
    # a decoding step scores the ring's 4 slots plus the new token itself, of which the slot
    # it replaces is masked: one key more than the window it attends to
    per_key = attention_flops_per_token(BASE, 1)
    assert model_decode_flops(cfg) == flops_per_token(cfg, CONTEXT) + per_key
    assert flops_per_token(cfg, 1000) == flops_per_token(cfg, 4)  # the window caps the cost


@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("q_lora_rank", [None, 8])
def test_mla_decode_flops_equal_the_matmuls_of_each_path(absorb, q_lora_rank):
    cfg = BASE.replace(attention="mla", n_kv_heads=None, n_layers=1, q_lora_rank=q_lora_rank,
                       kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
    attn = MLAttention(cfg, rngs=nnx.Rngs(0), absorb=absorb)
    x = jnp.zeros((1, 1, cfg.d_model))
    counted = decode_step_flops(attn, x, attn.init_cache(1, CONTEXT))
    # the token's own projections: 2 FLOPs per weight of every matrix applied to it once
    own = [attn.w_dkv, attn.wo] + ([attn.wq] if q_lora_rank is None else [attn.w_dq, attn.w_uq])
    projections = 2 * sum(w[...].size for w in own)
    assert counted == projections + mla_decode_flops_per_token(cfg, CONTEXT, absorb)
    assert (mla_decode_flops_per_token(cfg, 1000, True)
            < mla_decode_flops_per_token(cfg, 1000, False))  # absorbing pays at long context


# --- KV-cache bytes: from the arrays of built caches ----------------------------------------

VARIANTS = {
    "mha": BASE.replace(n_kv_heads=None),
    "gqa": BASE,
    "sliding": BASE.replace(attention="sliding", sliding_window=3),
    "mla": BASE.replace(attention="mla", n_kv_heads=None, q_lora_rank=8),
    "sparse": BASE.replace(attention="sparse", sparse_top_k=3),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kv_cache_formulas_match_built_caches(name):
    cfg = VARIANTS[name]
    m = make_attention(cfg, rngs=nnx.Rngs(0))
    for dtype, nbytes in ((jnp.float32, 4), (jnp.bfloat16, 2)):
        layer = m.init_cache(3, CONTEXT, dtype)
        per_token = kv_cache.kv_bytes_per_token(cfg, nbytes, per_layer=True)
        assert kv_cache.cache_nbytes(layer) == 3 * kv_cache.cache_slots(cfg, CONTEXT) * per_token
    model_cache = Transformer(cfg, rngs=nnx.Rngs(0)).init_cache(3, 10)
    assert kv_cache.cache_nbytes(model_cache) == kv_cache.kv_cache_bytes(cfg, 10, batch=3)
    # a cache written to is no bigger: the counter is bookkeeping, every slot is preallocated
    x = jnp.zeros((3, 4, cfg.d_model))
    written = nnx.jit(lambda m, x, c: m(x, c)[1])(m, x, m.init_cache(3, CONTEXT))
    assert kv_cache.cache_nbytes(written) == \
        kv_cache.cache_nbytes(m.init_cache(3, CONTEXT))


def test_deepseek_v3_mla_cache_is_576_values_per_token_and_layer():
    """DeepSeek-V2 §2.1.4 / V3: the latent (d_c = 512) plus the shared rope key (64). Counted
    from a cache built by a V3-sized MLAttention, whose weights are never materialised."""
    v3 = ModelConfig(d_model=7168, n_heads=128, n_layers=61, attention="mla", kv_lora_rank=512,
                     qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=1536,
                     d_ff=18432, vocab_size=129280)
    layer = nnx.eval_shape(lambda: MLAttention(v3, rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: layer.init_cache(1, 1, jnp.bfloat16))
    values = sum(a.size for a in (cache.latent, cache.k_rope))
    assert values == 576 == kv_cache.cache_values_per_token(v3)
    assert kv_cache.kv_bytes_per_token(v3, 2) == v3.n_layers * 2 * values


@pytest.mark.parametrize("name", ["gqa", "mla", "sparse", "sliding"])
def test_max_context_inverts_kv_cache_bytes(name):
    cfg = VARIANTS[name]
    memory = 50_000
    n = kv_cache.max_context(cfg, memory, batch=2)
    if name == "sliding":  # the whole ring fits: the cache never outgrows the memory
        assert n is None and kv_cache.kv_cache_bytes(cfg, 10**9, batch=2) <= memory
        cfg = cfg.replace(sliding_window=10**6)  # a ring too wide to fit: finite again
        n = kv_cache.max_context(cfg, memory, batch=2)
    assert kv_cache.kv_cache_bytes(cfg, n, batch=2) <= memory < kv_cache.kv_cache_bytes(cfg, n + 1, batch=2)
    with pytest.raises(ValueError, match="memory_bytes"):
        kv_cache.max_context(cfg, -1.0)


def test_param_counts_match_built_models():
    moe = MoEConfig(n_experts=4, d_expert=8, n_shared_experts=1, router="deepseek_v3")
    for cfg in list(VARIANTS.values()) + [BASE.replace(tie_embeddings=False),
                                          BASE.replace(moe=moe, first_k_dense=1)]:
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        arrays = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert param_counts(cfg)["total"] == sum(a.size for a in arrays), cfg
    # (the active count is also checked through flops_per_token, against the matmuls a token runs)


@pytest.mark.parametrize("cfg", [
    BASE,
    BASE.replace(tie_embeddings=False),
    BASE.replace(moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, n_shared_experts=1,
                               router="deepseek_v3"), first_k_dense=1),
    BASE.replace(moe=MoEConfig(n_experts=8, top_k=1, d_expert=4), tie_embeddings=False),
    BASE.replace(moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, router="deepseek_v4"),
                 hc_mult=2, num_hash_layers=1, num_nextn_predict_layers=1),
], ids=["dense-tied", "dense-untied", "moe-shared-first-dense", "moe-top1-untied", "v4-mhc-hash-mtp"])
def test_active_params_counted_from_the_arrays_match_the_formula(cfg):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    counts = param_counts(cfg)
    assert count_active_params(model) == counts["active"]
    if cfg.moe is not None:  # the unselected experts really are left out
        assert count_active_params(model) < counts["total"]
