"""The rules the configs are checked against when they are built.

``config.py`` says what each setting means; this module says which values are allowed. Every
check raises a ``ValueError`` that names the parameter, the value and what is allowed, so a bad
setting fails at construction instead of inside a shape error later. The value checks at the top
are shared with the serving calculator (``minimoe.cost``).
"""

from __future__ import annotations

import dataclasses

from minimoe import config

# ----------------------------------------------------------------------------------------
# Value checks
# ----------------------------------------------------------------------------------------

def positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def integer_in(name: str, value, low: int, high: int | None = None,
               high_label: str | None = None) -> None:
    """An integer in ``[low, high]`` (``high=None``: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high_label or high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def positive_number(name: str, value, allow_none: bool = False) -> None:
    """A number > 0 (``bool`` is not a number here, although Python counts it as an int)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0{', or None' if allow_none else ''}, "
                         f"got {value!r}")


def boolean(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False{', or None' if allow_none else ''}, "
                         f"got {value!r}")


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


# ----------------------------------------------------------------------------------------
# MoEConfig, YaRNConfig
# ----------------------------------------------------------------------------------------

def check_moe_config(cfg) -> None:
    """Every rule of a ``MoEConfig``, including settings that would silently do nothing."""
    positive_int("n_experts", cfg.n_experts)
    positive_int("top_k", cfg.top_k)
    positive_int("d_expert", cfg.d_expert)
    positive_int("d_shared", cfg.d_shared, allow_none=True)
    positive_int("n_group", cfg.n_group)
    positive_int("topk_group", cfg.topk_group)
    integer_in("n_shared_experts", cfg.n_shared_experts, 0)
    one_of("router", cfg.router, config.ROUTERS)
    one_of("dispatch", cfg.dispatch, config.DISPATCHES)
    if cfg.top_k > cfg.n_experts:
        raise ValueError(
            f"top_k must be <= n_experts ({cfg.n_experts}), got top_k={cfg.top_k}")
    if cfg.router == "switch" and cfg.top_k != 1:
        raise ValueError(f"router 'switch' routes to one expert: top_k must be 1, got {cfg.top_k}")
    if cfg.n_experts % cfg.n_group:
        raise ValueError(
            f"n_experts ({cfg.n_experts}) must be divisible by n_group, got n_group={cfg.n_group}")
    if cfg.topk_group > cfg.n_group:
        raise ValueError(
            f"topk_group must be <= n_group ({cfg.n_group}), got topk_group={cfg.topk_group}")
    if cfg.n_group > 1 and cfg.router not in config.DEEPSEEK_ROUTERS:
        raise ValueError(f"group-limited routing (n_group={cfg.n_group}) needs router "
                         f"'deepseek_v3' or 'deepseek_v4', got router={cfg.router!r}")
    if cfg.n_group > 1 and cfg.topk_group * (cfg.n_experts // cfg.n_group) < cfg.top_k:
        raise ValueError(
            f"topk_group={cfg.topk_group} groups of {cfg.n_experts // cfg.n_group} experts "
            f"cannot hold top_k={cfg.top_k} experts")
    positive_number("capacity_factor", cfg.capacity_factor, allow_none=True)
    if cfg.capacity_factor is not None and cfg.dispatch in config.DROPLESS_DISPATCHES:
        raise ValueError(
            f"dispatch {cfg.dispatch!r} is dropless; set capacity_factor=None "
            f"(got {cfg.capacity_factor!r}) or use dispatch 'sort' or 'onehot'")
    for name in ("aux_loss_coef", "seq_aux_loss_coef", "z_loss_coef", "bias_update_rate",
                 "router_noise_std", "routed_scaling_factor"):
        non_negative(name, getattr(cfg, name))
    non_negative("swiglu_limit", cfg.swiglu_limit)
    boolean("renormalize", cfg.renormalize, allow_none=True)
    # settings that would silently do nothing
    if cfg.n_shared_experts == 0 and cfg.d_shared is not None:
        raise ValueError(f"d_shared={cfg.d_shared!r} sizes shared experts, but "
                         f"n_shared_experts=0; set n_shared_experts >= 1 or d_shared=None")
    if cfg.bias_update_rate > 0 and cfg.router not in config.DEEPSEEK_ROUTERS:
        raise ValueError(f"bias_update_rate={cfg.bias_update_rate!r} updates the selection "
                         f"bias of the DeepSeek routers; router {cfg.router!r} has none: "
                         f"use router 'deepseek_v3' or 'deepseek_v4', or bias_update_rate=0")
    if cfg.router == "expert_choice":
        if cfg.capacity_factor is None:
            raise ValueError("router 'expert_choice' needs capacity_factor (each expert takes "
                             "capacity_factor * tokens * top_k / n_experts tokens), got None")
        if cfg.dispatch != "sort":
            raise ValueError(f"router 'expert_choice' gathers the tokens its experts chose and "
                             f"uses no dispatch strategy: leave dispatch at 'sort', "
                             f"got {cfg.dispatch!r}")
        if cfg.renormalize is not None:
            raise ValueError(f"router 'expert_choice' does not renormalise; leave renormalize "
                             f"None, got {cfg.renormalize!r}")
        for name in ("aux_loss_coef", "seq_aux_loss_coef"):
            if getattr(cfg, name) > 0:
                raise ValueError(f"{name}={getattr(cfg, name)!r} does nothing under router "
                                 f"'expert_choice' (its load is balanced by construction); "
                                 f"set it to 0")
    elif cfg.renormalize is True and cfg.top_k == 1:
        raise ValueError("renormalize=True with top_k=1 makes every weight 1, so the router "
                         "gets no gradient from the language-model loss; use renormalize=None "
                         "or False (weight = the expert's score, as in the Switch Transformer)")


def check_yarn_config(cfg) -> None:
    """The bounds of a ``YaRNConfig``."""
    if isinstance(cfg.factor, bool) or not isinstance(cfg.factor, (int, float)) \
            or not cfg.factor >= 1:
        raise ValueError(f"factor must be a number >= 1, got {cfg.factor!r}")
    positive_int("original_max_position_embeddings", cfg.original_max_position_embeddings)
    for name in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        non_negative(name, getattr(cfg, name))
    if not cfg.beta_fast > cfg.beta_slow:
        raise ValueError(f"beta_fast must be > beta_slow ({cfg.beta_slow}), "
                         f"got beta_fast={cfg.beta_fast}")


# ----------------------------------------------------------------------------------------
# ModelConfig
# ----------------------------------------------------------------------------------------

def check_model_config(cfg) -> None:
    """Every rule of a ``ModelConfig``: sizes, the fields each attention kind reads
    (``config.ATTENTION_FIELDS``), DeepSeek-V4's fields, checkpoint features and speed fields.

    ``cfg._head_dim`` is ``head_dim`` as given (``None`` when derived, see ``config._HeadDim``).
    """
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                 "index_head_dim", "index_n_heads", "kv_lora_rank", "qk_nope_head_dim",
                 "qk_rope_head_dim", "v_head_dim"):
        positive_int(name, getattr(cfg, name))
    positive_int("n_kv_heads", cfg.n_kv_heads, allow_none=True)
    positive_int("q_lora_rank", cfg.q_lora_rank, allow_none=True)
    positive_int("sliding_window", cfg.sliding_window, allow_none=True)
    positive_int("sparse_top_k", cfg.sparse_top_k, allow_none=True)
    one_of("attention", cfg.attention, config.ATTENTION_KINDS)
    if cfg._head_dim is None and cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model ({cfg.d_model}) must be divisible by n_heads, got n_heads={cfg.n_heads}")
    positive_int("head_dim", cfg._head_dim, allow_none=True)
    if cfg.attention != "compressed" and cfg.head_dim % 2:
        given = "head_dim" if cfg._head_dim is not None else "head_dim = d_model / n_heads"
        raise ValueError(f"{given} must be even for rotary embeddings, got {cfg.head_dim}")
    if cfg.n_heads % cfg.kv_heads:
        raise ValueError(
            f"n_kv_heads must divide n_heads ({cfg.n_heads}), got n_kv_heads={cfg.n_kv_heads}")
    if cfg.qk_rope_head_dim % 2:
        raise ValueError(f"qk_rope_head_dim must be even, got {cfg.qk_rope_head_dim}")
    positive_number("rope_theta", cfg.rope_theta)
    positive_number("norm_eps", cfg.norm_eps)
    boolean("tie_embeddings", cfg.tie_embeddings)
    if cfg.moe is not None and not isinstance(cfg.moe, config.MoEConfig):
        raise ValueError(f"moe must be a MoEConfig or None, got {type(cfg.moe).__name__}")
    integer_in("first_k_dense", cfg.first_k_dense, 0, cfg.n_layers, f"n_layers={cfg.n_layers}")
    fields = config.ATTENTION_FIELDS[cfg.attention]
    for name in fields["needs"]:
        if getattr(cfg, name) is None:
            raise ValueError(f"attention={cfg.attention!r} needs {name} (a positive integer), "
                             f"got None")
    used_by = {}
    for kind, f in config.ATTENTION_FIELDS.items():
        for name in f["needs"] + f["uses"]:
            used_by.setdefault(name, []).append(kind)
    for name, kinds in used_by.items():
        unset = next(fl.default for fl in dataclasses.fields(cfg) if fl.name == name)
        if unset is None and cfg.attention not in kinds and getattr(cfg, name) is not None:
            raise ValueError(f"{name}={getattr(cfg, name)!r} is used only by attention "
                             f"{kinds}; with attention={cfg.attention!r} leave it None")
    _check_compressed_attention(cfg)
    _check_v4_fields(cfg)
    _check_checkpoint_features(cfg)
    _check_speed_fields(cfg)


def _check_v4_fields(cfg) -> None:
    """DeepSeek-V4's block fields (mHC, hash routing, MTP)."""
    positive_int("hc_mult", cfg.hc_mult)
    positive_int("hc_sinkhorn_iters", cfg.hc_sinkhorn_iters)
    non_negative("hc_eps", cfg.hc_eps)
    n_moe = cfg.n_moe_layers
    integer_in("num_hash_layers", cfg.num_hash_layers, 0, n_moe, f"number of MoE layers = {n_moe}")
    if cfg.num_hash_layers and cfg.moe.router not in config.DEEPSEEK_ROUTERS:
        raise ValueError(
            f"hash routing (num_hash_layers={cfg.num_hash_layers}) takes its gate weights "
            f"from DeepSeek's scores: router must be 'deepseek_v3' or 'deepseek_v4', "
            f"got {cfg.moe.router!r}")
    if cfg.num_nextn_predict_layers not in (0, 1) \
            or isinstance(cfg.num_nextn_predict_layers, bool):
        raise ValueError(f"num_nextn_predict_layers must be 0 or 1 (one MTP module, as in "
                         f"DeepSeek-V3/V4), got {cfg.num_nextn_predict_layers!r}")


def _check_compressed_attention(cfg) -> None:
    """DeepSeek-V4's attention fields: required with ``attention='compressed'``, rejected (they
    would be ignored) with any other attention."""
    if cfg._head_dim is not None and cfg.attention == "mla":
        raise ValueError(f"head_dim={cfg._head_dim} is ignored by attention='mla' (it uses "
                         "qk_nope_head_dim, qk_rope_head_dim, v_head_dim); leave it None")
    if cfg.attention != "compressed":
        for name, default in (("compress_ratios", None), ("o_lora_rank", None),
                              ("index_topk", None), ("o_groups", 1)):
            if getattr(cfg, name) != default:
                raise ValueError(f"{name}={getattr(cfg, name)!r} is used only by "
                                 f"attention='compressed', got attention={cfg.attention!r}")
        return
    cr = cfg.compress_ratios
    if cr is None or not isinstance(cr, tuple):
        raise ValueError("attention='compressed' needs compress_ratios, a tuple of one ratio "
                         f"per layer (0 = window only), got {cr!r}")
    if len(cr) not in (cfg.n_layers, cfg.n_layers + 1):
        raise ValueError(f"compress_ratios must have n_layers={cfg.n_layers} entries, or "
                         f"n_layers + 1 with a trailing MTP layer, got {len(cr)}: {cr}")
    for r in cr:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0 or r == 1 \
                or r > cfg.max_seq_len:
            raise ValueError(f"compress_ratios entries must be 0 (window only) or integers in "
                             f"[2, max_seq_len={cfg.max_seq_len}], got {r!r} in {cr}")
    positive_int("csa_compress_ratio", cfg.csa_compress_ratio)
    if cfg.sliding_window is None:
        raise ValueError("attention='compressed' needs sliding_window (every layer keeps "
                         "a window of raw entries), got None")
    for name in ("q_lora_rank", "o_lora_rank"):
        if getattr(cfg, name) is None:
            raise ValueError(f"attention='compressed' needs {name} (a positive integer), "
                             "got None")
    positive_int("o_lora_rank", cfg.o_lora_rank)
    positive_int("o_groups", cfg.o_groups)
    if cfg.n_heads % cfg.o_groups:
        raise ValueError(f"o_groups must divide n_heads ({cfg.n_heads}), "
                         f"got o_groups={cfg.o_groups}")
    if cfg.n_kv_heads not in (None, 1):
        raise ValueError("attention='compressed' has one shared key/value head: n_kv_heads "
                         f"must be None or 1, got {cfg.n_kv_heads}")
    if cfg.sparse_top_k is not None:
        raise ValueError(f"sparse_top_k={cfg.sparse_top_k} is used only by "
                         "attention='sparse'; compressed attention uses index_topk")
    if cfg.qk_rope_head_dim > cfg.head_dim:
        raise ValueError(f"qk_rope_head_dim must be <= head_dim ({cfg.head_dim}), "
                         f"got {cfg.qk_rope_head_dim}")
    positive_number("compress_rope_theta", cfg.compress_rope_theta)
    has_csa = cfg.csa_compress_ratio in cr[:cfg.n_layers]
    if has_csa:
        positive_int("index_topk", cfg.index_topk)
        if cfg.qk_rope_head_dim > cfg.index_head_dim:
            raise ValueError(f"qk_rope_head_dim must be <= index_head_dim "
                             f"({cfg.index_head_dim}) in CSA layers, got {cfg.qk_rope_head_dim}")
    elif cfg.index_topk is not None:
        raise ValueError(f"index_topk={cfg.index_topk} is used only by CSA layers (compress "
                         f"ratio csa_compress_ratio={cfg.csa_compress_ratio}), and "
                         f"compress_ratios={cr} has none")


def _check_checkpoint_features(cfg) -> None:
    """The fields that published checkpoints need (see ``ModelConfig``'s docstring)."""
    boolean("qk_norm", cfg.qk_norm)
    for name in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        positive_number(name, getattr(cfg, name))
    # attention_scale None: 1/sqrt(head_dim)
    positive_number("attention_scale", cfg.attention_scale, allow_none=True)
    if cfg.rope_yarn is not None:
        if not isinstance(cfg.rope_yarn, config.YaRNConfig):
            raise ValueError(f"rope_yarn must be a YaRNConfig or None, "
                             f"got {type(cfg.rope_yarn).__name__}")
        if cfg.attention != "mla":
            raise ValueError(f"rope_yarn is only implemented for attention 'mla', "
                             f"got attention={cfg.attention!r}")
    for name, default in (("qk_norm", False), ("attention_scale", None)):
        if getattr(cfg, name) != default and cfg.attention not in ("gqa", "sliding"):
            raise ValueError(f"{name}={getattr(cfg, name)!r} is only implemented for "
                             f"attention 'gqa' or 'sliding', got attention={cfg.attention!r}")


def _check_speed_fields(cfg) -> None:
    """The fields that choose a faster computation of the same numbers."""
    boolean("attention_tiling", cfg.attention_tiling)
    if cfg.attention_tiling and cfg.attention not in ("gqa", "sliding"):
        raise ValueError(f"attention_tiling=True is only implemented for attention 'gqa' or "
                         f"'sliding', got attention={cfg.attention!r}")
