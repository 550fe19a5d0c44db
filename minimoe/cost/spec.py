"""What a model costs, counted once from its config: :class:`ModelSpec` and its per-layer
attention description :class:`LayerAttention`.

The counts are made in :mod:`minimoe.cost.configs`; this module holds the result and the
formulas that only need the counts (KV bytes, FLOPs, weight bytes at a given precision).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..long_context.kv_cache import compressed_kv_values_per_token
from ..validation import non_negative, positive_number

ATTENTION_LAYER_KINDS = ("full", "sliding", "linear", "window", "csa", "hca", "dsa")


@dataclass(frozen=True)
class LayerAttention:
    """What one layer's attention caches and computes per token.

    Attributes:
        kind: 'full' (every earlier token), 'sliding' (the last ``window`` tokens), 'linear'
            (a fixed-size recurrent state, e.g. Gated DeltaNet), or DeepSeek-V4's 'window'
            (compress ratio 0: sliding window only), 'csa' (ratio 4: overlapping compressor +
            lightning indexer, attends to the top ``topk`` compressed entries) and 'hca'
            (any other ratio: compressor, dense attention over all compressed entries);
            'dsa' is DeepSeek-V3.2's sparse attention (every token cached, plus its indexer
            key; each query reads the top ``topk`` entries the indexer scores highest).
        window: raw entries kept (``None``: all of them).
        entry_values: values cached per raw entry (``2 * n_kv_heads * head_dim`` for K and
            V, ``kv_lora_rank + qk_rope_head_dim`` for MLA, ``head_dim`` for V4's shared K=V).
        compress_ratio: V4's ratio m (0 otherwise).
        head_dim, index_head_dim: V4's K=V width and indexer key width (0 otherwise).
        state_values: values of a fixed per-sequence state (linear attention; 0 otherwise).
        n_heads: query heads.
        score_dim, value_dim: multiply-adds per head and per key for the score and for the
            weighted value sum.
        index_n_heads, topk: V4 CSA's indexer heads and selected entries (0 otherwise).
    """

    kind: str
    window: int | None
    entry_values: int
    n_heads: int
    score_dim: int
    value_dim: int
    compress_ratio: int = 0
    head_dim: int = 0
    index_head_dim: int = 0
    index_n_heads: int = 0
    topk: int = 0
    state_values: int = 0

    def __post_init__(self):
        if self.kind not in ATTENTION_LAYER_KINDS:
            raise ValueError(f"kind must be one of {ATTENTION_LAYER_KINDS}, got {self.kind!r}")

    @property
    def has_indexer(self) -> bool:
        return self.kind in ("csa", "dsa")

    # -- cache ------------------------------------------------------------------------------
    def kv_slope_values(self) -> float:
        """Values one more token of context adds at long context (past any window): a full
        layer's ``entry_values``; V4's compressed entries per token
        (:func:`minimoe.long_context.kv_cache.compressed_kv_values_per_token`); 0 for sliding, window-only
        and linear layers."""
        if self.kind in ("full", "dsa"):
            return float(self.entry_values)
        if self.kind in ("csa", "hca", "window"):
            return compressed_kv_values_per_token(self.compress_ratio, self.head_dim,
                                                  self.index_head_dim, self.has_indexer)
        return 0.0

    def raw_entries(self, context_len: int) -> int:
        """Raw (uncompressed) entries held for ``context_len`` tokens."""
        if self.kind == "linear":
            return 0
        return context_len if self.window is None else min(context_len, self.window)

    def kv_values(self, context_len: int) -> float:
        """Values cached for one sequence of ``context_len`` tokens: the raw entries, plus
        V4's compressed entries (``kv_slope_values * context_len``; the block still being
        filled, fewer than m tokens, is not subtracted), plus a linear layer's state."""
        values = float(self.state_values)
        if self.kind in ("full", "dsa"):
            return values + self.entry_values * context_len
        values += self.entry_values * self.raw_entries(context_len)
        if self.kind in ("csa", "hca"):
            values += self.kv_slope_values() * context_len
        return values

    # -- FLOPs ------------------------------------------------------------------------------
    def keys(self, context_len: float) -> float:
        """Entries one query multiplies against at ``context_len`` tokens of context."""
        if self.kind == "linear":
            return 0.0
        raw = context_len if self.window is None else min(context_len, self.window)
        if self.kind == "hca":
            return raw + context_len / self.compress_ratio
        if self.kind == "csa":
            return raw + min(context_len / self.compress_ratio, self.topk)
        if self.kind == "dsa":
            return float(min(context_len, self.topk))
        return float(raw)

    def flops(self, context_len: float) -> float:
        """Attention FLOPs of one query token at ``context_len`` tokens of context:
        ``2 * n_heads * (score_dim + value_dim) * keys``, plus CSA's indexer scoring every
        compressed entry (``2 * index_n_heads * index_head_dim`` per entry), plus a linear
        layer's state read and update (``2 * 2 * state_values``: one multiply-add per state
        value for the update, one for the read-out; the short convolution is left out).
        Softmax, masks and sinks (a few FLOPs per score) are left out."""
        f = 2.0 * self.n_heads * (self.score_dim + self.value_dim) * self.keys(context_len)
        if self.kind == "csa":
            f += 2.0 * self.index_n_heads * self.index_head_dim * context_len / self.compress_ratio
        if self.kind == "dsa":
            f += 2.0 * self.index_n_heads * self.index_head_dim * context_len
        if self.kind == "linear":
            f += 4.0 * self.state_values
        return f

    def prefill_flops(self, prompt_len: int) -> float:
        """``sum_{i=1..prompt_len} flops(i)`` in closed form (token i sees i keys)."""
        p = prompt_len
        tri = p * (p + 1) / 2.0
        per_key = 2.0 * self.n_heads * (self.score_dim + self.value_dim)
        if self.kind == "linear":
            return 4.0 * self.state_values * p
        if self.kind == "dsa":                     # token i reads min(i, topk) entries
            n = min(p, self.topk)
            return (per_key * (n * (n + 1) / 2.0 + (p - n) * self.topk)
                    + 2.0 * self.index_n_heads * self.index_head_dim * tri)
        w = self.window
        raw = tri if w is None or p <= w else w * (w + 1) / 2.0 + (p - w) * w
        f = per_key * raw
        if self.kind == "hca":
            f += per_key * tri / self.compress_ratio
        elif self.kind == "csa":
            m, k = self.compress_ratio, self.topk
            n = min(p, m * k)                       # i/m < topk for i < m * topk
            f += per_key * (n * (n + 1) / 2.0 / m + (p - n) * k)
            f += 2.0 * self.index_n_heads * self.index_head_dim * tri / m
        return f


@dataclass(frozen=True)
class ModelSpec:
    """What a model costs, counted from its config (see :func:`minimoe.cost.from_hf_config`).

    Attributes:
        name, family: model name and Hugging Face ``model_type``.
        n_layers, d_model, vocab_size: depth, residual width, vocabulary.
        attention: 'mha', 'gqa', 'mqa', 'mla', 'v4' (DeepSeek-V4's compressed attention) or
            'hybrid' (linear-attention layers mixed with full ones).
        n_heads, n_kv_heads: query heads and key/value heads (MLA: ``n_kv_heads == n_heads``).
        qk_head_dim, v_head_dim: per-head widths of the score and value products of the
            full-attention layers (MLA: ``qk_nope_head_dim + qk_rope_head_dim`` and
            ``v_head_dim``; V4: ``head_dim`` for both).
        kv_values_per_layer: values cached per raw entry of an attention layer
            (``2 * n_kv_heads * head_dim``; MLA ``kv_lora_rank + qk_rope_head_dim``; V4
            ``head_dim``, one shared K=V vector).
        kv_lora_rank, qk_rope_head_dim: MLA latent sizes (0 otherwise).
        layers_attention: one :class:`LayerAttention` per layer.
        n_routed_experts, n_experts_per_tok, n_shared_experts: routed experts per MoE layer,
            how many each token picks, always-on shared experts (0 for dense models).
        n_moe_layers, n_dense_layers: layers with an MoE FFN / a dense FFN.
        expert_params: weights of one routed expert (with its biases, if any).
        shared_expert_params: weights of all shared experts of one MoE layer (with the
            shared-expert gate where the family has one).
        router_params: router weights of one score-routed MoE layer (with bias, if any).
        n_hash_layers: V4 MoE layers routed by a token-id table (``tid2eid``) instead of
            scores; their router has no bias. The table is integers, not weights:
            ``hash_table_entries`` counts it, no parameter count includes it.
        tie_word_embeddings: whether the output head is the embedding matrix.
        embedding_params: the input embedding table, ``vocab_size * d_model``.
        lm_head_params: the output projection (the same matrix as the embedding when tied).
        attention_params, dense_ffn_params, routed_expert_params, norm_params: totals over
            all layers (attention includes V4's compressors, indexers and sinks;
            ``norm_params`` the per-layer and final RMSNorm weights).
        residual_params: V4's mHC mixing weights (``hc_*_fn``, ``_base``, ``_scale`` of every
            layer and of the head); 0 for a plain residual stream.
        router_total_params, shared_expert_total_params: routers and shared experts summed
            over all MoE layers.
        total_params: every weight, stored once; excludes ``mtp_params``.
        active_params: weights one token multiplies by (no input embedding, only the
            picked routed experts, output head included); excludes ``mtp_params``.
        active_matmul_params: the matrix part of ``active_params`` (no norms, biases,
            sinks): the FLOPs of a token are twice this plus attention.
        mtp_params: multi-token-prediction modules, without the embedding and head they
            share with the main model.
        hash_table_entries: integer entries of V4's token-to-expert tables.
        expert_matrix_params: the matrix part of ``expert_params`` (no biases).
        notes: what the count leaves out or approximates, in words (empty when nothing).
    """

    name: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int
    attention: str
    n_heads: int
    n_kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    kv_values_per_layer: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    layers_attention: tuple
    n_routed_experts: int
    n_experts_per_tok: int
    n_shared_experts: int
    n_moe_layers: int
    n_dense_layers: int
    expert_params: int
    shared_expert_params: int
    router_params: int
    tie_word_embeddings: bool
    embedding_params: int
    lm_head_params: int
    attention_params: int
    dense_ffn_params: int
    routed_expert_params: int
    norm_params: int
    total_params: int
    active_params: int
    active_matmul_params: int
    mtp_params: int
    router_total_params: int = 0
    shared_expert_total_params: int = 0
    residual_params: int = 0
    n_hash_layers: int = 0
    hash_table_entries: int = 0
    expert_matrix_params: int = 0
    notes: tuple = ()

    # -- derived sizes ------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_moe_layers > 0

    @property
    def layer_windows(self) -> tuple:
        """Per layer, the raw entries kept (``None``: all of them)."""
        return tuple(a.window for a in self.layers_attention)

    @property
    def n_windowed_layers(self) -> int:
        return sum(a.window is not None for a in self.layers_attention)

    def count_layers(self, kind: str) -> int:
        """Layers whose attention is of ``kind`` (see :class:`LayerAttention`)."""
        return sum(a.kind == kind for a in self.layers_attention)

    @property
    def active_params_with_embedding(self) -> int:
        """``active_params`` plus the input embedding table (the other common convention;
        a tied table is already counted as the head)."""
        return self.active_params + (0 if self.tie_word_embeddings else self.embedding_params)

    @property
    def non_embedding_params(self) -> int:
        """``total_params`` without the embedding table and the output head."""
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.total_params - self.embedding_params - head

    @property
    def always_read_params(self) -> int:
        """Weights every decode step reads whatever the routing: all but the routed experts
        and the input embedding table (only ``batch`` rows of it are read; neglected)."""
        embedding = 0 if self.tie_word_embeddings else self.embedding_params
        return self.total_params - self.routed_expert_params - embedding

    def weight_bytes(self, bytes_per_param=2, include_mtp: bool = False) -> float:
        """Bytes to store the weights. ``bytes_per_param`` is a number (every weight at that
        size) or a :class:`minimoe.cost.Precision` (routed experts at one size, the rest at
        another)."""
        from .hardware import as_precision  # local: hardware imports nothing from here

        p = as_precision(bytes_per_param)
        other = self.total_params - self.routed_expert_params
        total = self.routed_expert_params * p.routed_experts + other * p.other_weights
        if include_mtp:
            total += self.mtp_params * p.other_weights
        return total

    # -- KV cache -----------------------------------------------------------------------
    def kv_bytes_per_token(self, bytes_per_value: float = 2,
                           include_windowed: bool = False) -> float:
        """KV-cache bytes one more token of context adds at long context, over all layers:
        the *slope* of the cache (:meth:`LayerAttention.kv_slope_values`).

        Full-attention layers add ``kv_values_per_layer`` values, V4's compressed layers
        ``(head_dim [+ index_head_dim]) / compress_ratio``; sliding-window, window-only and
        linear layers add nothing once full (their fixed part is :meth:`kv_fixed_bytes`).
        ``include_windowed=True`` also counts a sliding layer as if it still grew (a token
        inside the window).
        """
        values = 0.0
        for a in self.layers_attention:
            values += a.kv_slope_values()
            if include_windowed and a.kind == "sliding":
                values += a.entry_values
        return values * bytes_per_value

    def kv_fixed_bytes(self, bytes_per_value: float = 2) -> float:
        """Per-sequence cache bytes that stop growing: full windows of raw entries (sliding
        layers, every V4 layer's window) and linear-attention states."""
        values = 0.0
        for a in self.layers_attention:
            values += a.state_values
            if a.window is not None:
                values += a.entry_values * a.window
        return values * bytes_per_value

    def kv_bytes(self, context_len: int, bytes_per_value: float = 2) -> float:
        """KV-cache bytes of one sequence of ``context_len`` tokens:
        ``sum over layers of LayerAttention.kv_values(context_len) * bytes_per_value``."""
        non_negative("context_len", context_len)
        return sum(a.kv_values(context_len) for a in self.layers_attention) * bytes_per_value

    # -- FLOPs --------------------------------------------------------------------------
    def attention_flops(self, context_len: float, absorbed: bool = False) -> float:
        """Score and value FLOPs of one token attending to ``context_len`` tokens:
        ``sum over layers of LayerAttention.flops``; per head and key, ``2 * (score_dim +
        value_dim)`` (Hoffmann et al. 2022, App. F, for ``qk = v = head_dim``).

        MLA, ``absorbed=False``: the plain form, ``score_dim = nope + rope`` and
        ``value_dim = v_head_dim`` (prefill, where keys and values are expanded from the
        latent once per token). ``absorbed=True``: the decode form that works on the cached
        latent directly (``W_UK`` folded into the query, ``W_UV`` into the output, DeepSeek-V2
        §2.1.2): ``score_dim = kv_lora_rank + qk_rope_head_dim``, ``value_dim = kv_lora_rank``,
        the form that reads the latent cache this spec's KV bytes describe. Other families
        ignore ``absorbed``.
        """
        non_negative("context_len", context_len)
        return sum(self._layer(a, absorbed).flops(context_len) for a in self.layers_attention)

    def _layer(self, a: LayerAttention, absorbed: bool) -> LayerAttention:
        if absorbed and self.attention == "mla":
            return replace(a, score_dim=self.kv_lora_rank + self.qk_rope_head_dim,
                           value_dim=self.kv_lora_rank)
        return a

    def flops_per_token(self, context_len: float = 0, absorbed: bool = False) -> float:
        """Forward FLOPs of one token that attends to ``context_len`` tokens:

            ``2 * active_matmul_params + attention_flops(context_len, absorbed)``

        ``active_matmul_params`` are the matrices the token multiplies by (output head in,
        embedding lookup out, only its ``n_experts_per_tok`` routed experts); each weight is
        one multiply-add = 2 FLOPs (Kaplan et al. 2020, Table 1; Hoffmann et al. 2022,
        App. F).
        """
        return 2.0 * self.active_matmul_params + self.attention_flops(context_len, absorbed)

    def prefill_flops(self, prompt_len: int) -> float:
        """Forward FLOPs of a whole causal prompt of ``prompt_len`` tokens (token ``i``,
        1-based, attends to ``i`` tokens): ``prompt_len * 2 * active_matmul_params`` plus
        ``sum_i attention_flops(i)`` in closed form (plain MLA form)."""
        positive_number("prompt_len", prompt_len)
        return (prompt_len * 2.0 * self.active_matmul_params
                + sum(a.prefill_flops(prompt_len) for a in self.layers_attention))

    # -- display ------------------------------------------------------------------------
    def summary(self) -> dict:
        """A flat dict of the headline numbers (params in billions, rounded for display)."""
        experts = "-"
        if self.is_moe:
            experts = f"{self.n_routed_experts} top-{self.n_experts_per_tok}"
            if self.n_shared_experts:
                experts += f" +{self.n_shared_experts} shared"
        return {
            "name": self.name,
            "family": self.family,
            "layers": self.n_layers,
            "d_model": self.d_model,
            "attention": self.attention,
            "experts": experts,
            "total_B": round(self.total_params / 1e9, 1),
            "active_B": round(self.active_params / 1e9, 1),
            "active_%": round(100 * self.active_params / self.total_params, 1),
            "embedding_B": round(self.embedding_params / 1e9, 2),
            "mtp_B": round(self.mtp_params / 1e9, 1),
            "kv_KiB_per_token": round(self.kv_bytes_per_token(2) / 1024, 1),
            "GFLOP_per_token": round(self.flops_per_token(0) / 1e9, 1),
        }
