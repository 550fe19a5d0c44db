"""Parameter and FLOP accounting for a ``ModelConfig``, next to the model it describes.

``param_counts`` derives every count from the config alone (tests check it against the real
parameter tree); ``count_params`` counts a built model's arrays. ``flops_per_token`` follows
Kaplan et al. (2020, table 1): a forward pass costs 2 FLOPs per multiply-accumulate, i.e.
2 x (active matmul parameters) per token, plus attention's own matmuls, which grow with the
context: 2 x 2 x n_layers x context x (n_heads x head_dim) (scores q.k and the weighted sum of v).
"""

from __future__ import annotations

import functools
import math

import jax
from flax import nnx

from .config import ModelConfig
from .moe.router import DEEPSEEK_SCORES


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


def _compressed_attention_params(cfg: ModelConfig, layer: int) -> int:
    """Parameters of one DeepSeek-V4 attention layer (``compressed_attention``): low-rank
    queries, the shared K=V projection, sinks, grouped low-rank output, and with a compress
    ratio the compressor (twice the channels when overlapping) and, in CSA, the indexer."""
    d, h, hd, q = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.q_lora_rank
    n = d * q + q + q * h * hd + d * hd + hd + h + h * hd * cfg.o_lora_rank \
        + cfg.o_groups * cfg.o_lora_rank * d
    m = cfg.layer_compress_ratio(layer)
    if m:
        csa = cfg.is_csa_layer(layer)
        c = 2 if csa else 1
        n += 2 * d * c * hd + m * c * hd + hd  # wkv, wgate, ape, norm
        if csa:
            di, hi = cfg.index_head_dim, cfg.index_n_heads
            n += q * hi * di + d * hi + 2 * d * 2 * di + m * 2 * di + di
    return n


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts derived from the config.

    Returns ``total`` (every trainable parameter), ``active`` (those one token's forward pass
    multiplies by: all but the embedding lookup and the routed experts it does not select; a tied
    output projection counts here), ``embedding``, ``attention``, ``ffn_dense``, ``experts_routed``,
    ``experts_shared``, ``router`` and ``norms``; with DeepSeek-V4's options also
    ``hyper_connections`` (mHC's coefficient maps, in ``total`` and ``active``) and ``mtp`` (the
    multi-token-prediction module, left out of ``total`` and ``active`` as V3's and V4's
    published sizes leave it out: a built model has ``total + mtp`` parameters);
    ``router_bias`` and ``mtp_router_bias`` count DeepSeek's selection-bias entries (not
    trained parameters, so in neither ``total`` nor ``mtp``; the calculator, which counts
    what a checkpoint stores, includes them: see ``cost.from_hf_config``).
    """
    d, n = cfg.d_model, cfg.n_layers
    n_moe = sum(cfg.is_moe_layer(i) for i in range(n))
    n_dense = n - n_moe
    attention = sum(_layer_attention_params(cfg, i) for i in range(n))
    c = {"embedding": cfg.vocab_size * d, "attention": attention,
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
    c["hyper_connections"] = n * _hc_block_params(cfg) + _hc_head_params(cfg)
    body = c["attention"] + c["norms"] + c["ffn_dense"] + c["experts_shared"] + c["router"]
    body += c["hyper_connections"]
    c["total"] = c["embedding"] + lm_head + body + c["experts_routed"]
    c["active"] = body + active_experts + (lm_head or c["embedding"])
    c["mtp"] = _mtp_params(cfg)
    c["router_bias"] = sum(_router_bias(cfg, i) for i in range(n))
    c["mtp_router_bias"] = _router_bias(cfg, n) if cfg.num_nextn_predict_layers else 0
    return c


def _layer_attention_params(cfg: ModelConfig, layer: int) -> int:
    """Attention parameters of block ``layer`` (V4's differ from layer to layer)."""
    if cfg.attention == "compressed":
        return _compressed_attention_params(cfg, layer)
    return _attention_params(cfg)


def _router_bias(cfg: ModelConfig, layer: int) -> int:
    """Entries of DeepSeek's selection bias in block ``layer`` (``router.RouterBias``): stored
    with the weights and counted by published sizes, but set by the balancing rule, not by
    gradients, so left out of ``total``. Hash-routed layers have none."""
    if not cfg.is_moe_layer(layer) or cfg.is_hash_layer(layer) \
            or cfg.moe.router not in DEEPSEEK_SCORES:
        return 0
    return cfg.moe.n_experts


def _hc_block_params(cfg: ModelConfig) -> int:
    """mHC's maps around one block's two sub-layers: ``fn`` [(2+n)n, n d], ``base``, ``scale``."""
    nh = cfg.hc_mult
    if nh == 1:
        return 0
    return 2 * ((2 + nh) * nh * (nh * cfg.d_model + 1) + 3)


def _hc_head_params(cfg: ModelConfig) -> int:
    """mHC's head: ``fn`` [n, n d], ``base`` [n], ``scale`` [1]."""
    nh = cfg.hc_mult
    return 0 if nh == 1 else nh * (nh * cfg.d_model + 1) + 1


def _mtp_params(cfg: ModelConfig) -> int:
    """The MTP module: three norms, two d x d projections, one block (MoE when the model has
    MoE, never hash-routed) and, with mHC, its own head maps; embedding and output shared."""
    if not cfg.num_nextn_predict_layers:
        return 0
    d = cfg.d_model
    block = _layer_attention_params(cfg, cfg.n_layers) + 2 * d + _hc_block_params(cfg)
    if cfg.is_moe_layer(cfg.n_layers):
        m = cfg.moe
        block += 3 * d * (m.n_experts * m.d_expert + m.shared_hidden) + d * m.n_experts
    else:
        block += 3 * d * cfg.d_ff
    return 3 * d + 2 * d * d + block + _hc_head_params(cfg)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters in a built model (counted from its arrays)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def count_active_params(model: nnx.Module) -> int:
    """Parameters one token's forward pass multiplies by, counted from a built ``Transformer``'s
    arrays: ``count_params`` less, in each MoE layer, the ``n_experts - top_k`` routed experts a
    token does not select; less the embedding table when the output projection is untied (a
    lookup, not a product); less the MTP module (left out as by ``param_counts``, whose
    ``active`` it measures instead of deriving)."""
    n = count_params(model)
    for layer in model.moe_layers():
        e = layer.experts
        per_expert = sum(math.prod(w.shape[1:]) for w in (e.w_gate, e.w_up, e.w_down))
        n -= (layer.cfg.n_experts - layer.cfg.top_k) * per_expert
    if not model.cfg.tie_embeddings:
        n -= math.prod(model.embed.shape)
    return n - (0 if model.mtp is None else count_params(model.mtp))


def attention_flops_per_token(cfg: ModelConfig, context_len: int) -> int:
    """FLOPs of the score and value matmuls for one new token that sees ``context_len`` keys.

    A sliding window or top-k sparse attention caps the keys at the window / k (the indexer of
    sparse attention still scores all ``context_len``). Tested against ``matmul_flops`` of a
    decoding step.
    """
    if cfg.attention == "compressed":
        raise ValueError("attention_flops_per_token does not model attention='compressed' "
                         "(window, compressors and indexer per layer); count it per layer")
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
    if cfg.attention == "sparse":  # the indexer scores every past key, cheaply: per key and
        # indexer head a q.k dot product of index_head_dim, then the head's weight w_{t,j}
        flops += 2 * cfg.n_layers * context_len * cfg.index_n_heads * (cfg.index_head_dim + 1)
    return flops


def flops_per_token(cfg: ModelConfig, context_len: int) -> int:
    """Forward FLOPs for one token at ``context_len``: 2 x active matmul params + attention.

    Active matmul parameters are the active ones minus norm weights (element-wise, not matmuls).
    Training costs about three times this (backward = 2 x forward).
    """
    c = param_counts(cfg)
    matmul = c["active"] - c["norms"]
    return 2 * matmul + attention_flops_per_token(cfg, context_len)


def matmul_flops(fn, *args, **kwargs) -> int:
    """FLOPs (2 per multiply-add) of the matrix products ``fn(*args, **kwargs)`` really runs,
    counted from its jaxpr: every ``dot_general`` (matmuls, einsums) and grouped matmul
    (``ragged_dot``), inside nested calls too; a ``scan`` body (``lax.map``) counts once per
    iteration. Element-wise work (norms, softmax, activations) is not counted, as in
    ``flops_per_token``. Nothing is compiled or run: the count is exact, the shapes are what
    ``jit`` would see.
    """
    closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
    return _jaxpr_matmul_flops(closed.jaxpr)


def _jaxpr_matmul_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        elif name in ("ragged_dot", "ragged_dot_general"):
            m, k = eqn.invars[0].aval.shape[-2:]  # lhs [m, k]; rhs [groups, k, n]
            n = eqn.outvars[0].aval.shape[-1]
            total += 2 * m * k * n  # every row meets exactly one group's matrix
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in _sub_jaxprs(eqn.params):
            total += repeat * _jaxpr_matmul_flops(sub)
    return total


def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr
