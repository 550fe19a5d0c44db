"""Parameter and FLOP accounting for a ``ModelConfig``, next to the model it describes.

``param_counts`` derives every count from the config alone (tests check it against the real
parameter tree); ``count_params`` counts a built model's arrays. ``flops_per_token`` follows
Kaplan et al. (2020, table 1): a forward pass costs 2 FLOPs per multiply-accumulate, i.e.
2 x (active matmul parameters) per token, plus attention's own matmuls, which grow with the
context: 2 x 2 x n_layers x context x (n_heads x head_dim) (scores q.k and the weighted sum of v).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from .config import ModelConfig


def _attention_params(cfg: ModelConfig) -> int:
    d = cfg.d_model
    if cfg.attention == "mla":
        h = cfg.n_heads
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            q = d * h * qk
        else:
            q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * h * qk
        kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank \
            + cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        return q + kv + h * cfg.v_head_dim * d
    proj = d * cfg.n_heads * cfg.head_dim * 2 + d * cfg.kv_heads * cfg.head_dim * 2
    if cfg.attention == "sparse":  # the light indexer: its own queries and keys
        proj += d * cfg.index_n_heads * cfg.index_head_dim + d * cfg.index_head_dim \
            + d * cfg.index_n_heads
    if cfg.qk_norm:  # Qwen3's per-head RMSNorm gains on queries and keys
        proj += 2 * cfg.head_dim
    return proj


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts derived from the config.

    Returns ``total`` (every trainable parameter), ``active`` (those one token's forward pass
    multiplies by: all but the embedding lookup and the routed experts it does not select; a tied
    output projection counts here), ``embedding``, ``attention``, ``ffn_dense``, ``experts_routed``,
    ``experts_shared``, ``router`` and ``norms``.
    """
    d, n = cfg.d_model, cfg.n_layers
    n_moe = sum(cfg.is_moe_layer(i) for i in range(n))
    n_dense = n - n_moe
    c = {"embedding": cfg.vocab_size * d, "attention": n * _attention_params(cfg),
         "norms": (2 * n + 1) * d, "ffn_dense": n_dense * 3 * d * cfg.d_ff,
         "experts_routed": 0, "experts_shared": 0, "router": 0}
    lm_head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    active_experts = 0
    if cfg.moe is not None:
        m = cfg.moe
        c["experts_routed"] = n_moe * m.n_experts * 3 * d * m.d_expert
        c["experts_shared"] = n_moe * 3 * d * m.shared_hidden
        c["router"] = n_moe * d * m.n_experts
        active_experts = n_moe * m.top_k * 3 * d * m.d_expert
    body = c["attention"] + c["norms"] + c["ffn_dense"] + c["experts_shared"] + c["router"]
    c["total"] = c["embedding"] + lm_head + body + c["experts_routed"]
    c["active"] = body + active_experts + (lm_head or c["embedding"])
    return c


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters in a built model (counted from its arrays)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def attention_flops_per_token(cfg: ModelConfig, context_len: int) -> int:
    """FLOPs of the score and value matmuls for one new token that sees ``context_len`` keys.

    A sliding window or top-k sparse attention caps the keys at the window / k.
    """
    keys = context_len
    if cfg.attention == "sliding":
        keys = min(context_len, cfg.sliding_window)
    elif cfg.attention == "sparse":
        keys = min(context_len, cfg.sparse_top_k)
    if cfg.attention == "mla":
        per_key = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    else:
        per_key = 2 * cfg.n_heads * cfg.head_dim
    flops = 2 * cfg.n_layers * keys * per_key
    if cfg.attention == "sparse":  # the indexer scores every past key, cheaply
        flops += 2 * cfg.n_layers * context_len * cfg.index_n_heads * cfg.index_head_dim
    return flops


def flops_per_token(cfg: ModelConfig, context_len: int) -> int:
    """Forward FLOPs for one token at ``context_len``: 2 x active matmul params + attention.

    Active matmul parameters are the active ones minus norm weights (element-wise, not matmuls).
    Training costs about three times this (backward = 2 x forward).
    """
    c = param_counts(cfg)
    matmul = c["active"] - c["norms"]
    return 2 * matmul + attention_flops_per_token(cfg, context_len)
