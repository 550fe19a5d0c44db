"""Configuration: frozen dataclasses, validated when they are built.

Every setting of the course's models lives here, with what it means. A bad value fails at
construction with a ``ValueError`` that names the parameter, the value and what is allowed; the
rules are in ``minimoe/validation.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minimoe import validation

# Which attention kind reads which ModelConfig field, besides the ones every kind reads
# (d_model, n_heads, rope_theta, max_seq_len, ...). "needs": must be set; "uses": read when set.
# A field that defaults to None (sliding_window, sparse_top_k, q_lora_rank) must stay None for
# a kind that lists it nowhere: it would otherwise silently do nothing. A new attention kind is
# one more line here.
ATTENTION_FIELDS = {
    "gqa": {"needs": (), "uses": ()},
    "sliding": {"needs": ("sliding_window",), "uses": ()},
    "mla": {"needs": (), "uses": ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                  "qk_rope_head_dim", "v_head_dim")},
    "sparse": {"needs": ("sparse_top_k",), "uses": ("index_head_dim", "index_n_heads")},
    # DeepSeek-V4; its own fields (compress_ratios, o_lora_rank, index_topk, ...) are checked
    # by validation._check_compressed_attention
    "compressed": {"needs": ("sliding_window", "q_lora_rank"),
                   "uses": ("qk_rope_head_dim", "index_head_dim", "index_n_heads")},
}
ATTENTION_KINDS = tuple(ATTENTION_FIELDS)
ROUTERS = ("softmax", "switch", "noisy_topk", "deepseek_v3", "deepseek_v4", "expert_choice")
DEEPSEEK_ROUTERS = ("deepseek_v3", "deepseek_v4")  # selection bias, groups, hash routing
DISPATCHES = ("reference", "onehot", "sort", "dropless", "ragged_dot")
DROPLESS_DISPATCHES = ("dropless", "ragged_dot")  # no capacity: no token is ever dropped


@dataclass(frozen=True)
class MoEConfig:
    """Settings of a Mixture-of-Experts feed-forward layer.

    Attributes:
        n_experts: number of routed experts.
        top_k: experts each token is sent to.
        d_expert: hidden size of one routed expert (SwiGLU).
        n_shared_experts: experts every token uses (DeepSeekMoE); 0 for none.
        d_shared: hidden size of one shared expert (defaults to ``d_expert``).
        router: scoring/selection rule, one of ``ROUTERS``.
        renormalize: rescale the selected weights to sum to one (token-choice routers).
            ``None`` (the default) means ``top_k > 1``: with one expert per token the
            renormalised weight is always 1, so the router would get no gradient from the
            language-model loss (Switch Transformer §2.1); ``True`` with ``top_k=1`` is an
            error. Expert choice does not use it (leave it ``None``).
        routed_scaling_factor: multiplier on the routed experts' weights, for every router
            (DeepSeek-V3 ``route_scale``; 2.5 there, 1.0 elsewhere).
        n_group, topk_group: group-limited routing (DeepSeek-V3): experts are split into
            ``n_group`` groups and a token may only pick experts from its ``topk_group`` best.
        router_noise_std: std of the logit noise of ``noisy_topk`` (training only).
        capacity_factor: tokens an expert may take, as a multiple of the even share
            ``tokens * top_k / n_experts``; ``None`` means dropless. Token-choice routers
            apply it in training only (``train=True``): inference -- evaluation, prefill and
            decoding -- is dropless, so a cached decode equals the full forward pass. Expert
            choice needs it (the tokens each expert picks) and applies it always.
        dispatch: how tokens reach experts, one of ``DISPATCHES`` (token-choice routers; expert
            choice gathers the tokens its experts chose and must keep the default).
        aux_loss_coef: weight of the Switch load-balancing loss.
        seq_aux_loss_coef: weight of DeepSeek-V3's sequence-wise balance loss.
        z_loss_coef: weight of the router z-loss (ST-MoE).
        bias_update_rate: step size of DeepSeek's aux-loss-free bias balancing; 0 disables it
            (only the DeepSeek routers have the bias).
        swiglu_limit: DeepSeek-V4's SwiGLU clamp for the routed and shared experts
            (config.json ``swiglu_limit``, 10 there): the gate pre-activation is clamped from
            above at ``swiglu_limit`` and the up projection to ``[-swiglu_limit,
            swiglu_limit]`` before ``silu(gate) * up``; 0 turns it off (plain SwiGLU).
    """

    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 128
    n_shared_experts: int = 0
    d_shared: int | None = None
    router: str = "softmax"
    renormalize: bool | None = None
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    router_noise_std: float = 1.0
    capacity_factor: float | None = None
    dispatch: str = "sort"
    aux_loss_coef: float = 0.0
    seq_aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    bias_update_rate: float = 0.0
    swiglu_limit: float = 0.0

    def __post_init__(self):
        validation.check_moe_config(self)

    @property
    def renormalize_weights(self) -> bool:
        """Whether token-choice routers rescale the selected weights to sum to one."""
        return self.top_k > 1 if self.renormalize is None else self.renormalize

    @property
    def shared_hidden(self) -> int:
        """Total hidden size of the shared experts (they run as one SwiGLU)."""
        return self.n_shared_experts * (self.d_shared or self.d_expert)

    @property
    def active_hidden(self) -> int:
        """FFN hidden units one token uses: top_k routed experts plus the shared ones."""
        return self.top_k * self.d_expert + self.shared_hidden

    def replace(self, **changes) -> "MoEConfig":
        return dataclasses.replace(self, **changes)


class _HeadDim:
    """The ``head_dim`` field of ``ModelConfig``: as given, or ``d_model // n_heads`` when None.

    A data descriptor keeps the given value (None included) apart from the derived one, so a
    config that never set ``head_dim`` follows ``d_model`` and ``n_heads`` through
    ``cfg.replace(d_model=...)`` instead of keeping a stale copy, and ``to_dict`` round-trips.
    """

    def __get__(self, obj, objtype=None):
        if obj is None:  # the dataclass machinery asks for the default
            return None
        given = obj.__dict__.get("_head_dim")
        return obj.d_model // obj.n_heads if given is None else given

    def __set__(self, obj, value):
        object.__setattr__(obj, "_head_dim", value)  # frozen: only __init__ gets here


@dataclass(frozen=True)
class YaRNConfig:
    """YaRN RoPE scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
    Language Models", §3.2-3.4) with DeepSeek's softmax-scale correction, as DeepSeek-V2/V3
    configure it (``rope_scaling`` / ``rope_parameters`` with ``rope_type: "yarn"``).

    Attributes:
        factor: context extension factor ``s``: slow frequencies are divided by it.
        original_max_position_embeddings: the context length of pre-training, ``L``.
        beta_fast, beta_slow: the ramp between frequencies kept as they are (more than
            ``beta_fast`` rotations over ``L``) and frequencies interpolated (fewer than
            ``beta_slow``).
        mscale, mscale_all_dim: DeepSeek's temperature terms: cos and sin are multiplied by
            ``m(s, mscale) / m(s, mscale_all_dim)`` and the softmax scale by
            ``m(s, mscale_all_dim) ** 2``, with ``m(s, a) = 0.1 a ln(s) + 1`` (0 = not set).
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0

    def __post_init__(self):
        validation.check_yarn_config(self)


@dataclass(frozen=True)
class ModelConfig:
    """Settings of a decoder-only transformer language model.

    Attributes:
        vocab_size: number of token ids (256 for the course's byte tokenizer).
        d_model: width of the residual stream.
        n_layers: number of transformer blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (grouped-query attention); ``None`` means ``n_heads``
            (MHA); 1 is MQA.
        d_ff: hidden size of the dense SwiGLU feed-forward.
        max_seq_len: longest sequence the model (and its KV cache) handles.
        rope_theta: base of the rotary position embedding frequencies.
        norm_eps: epsilon of the blocks' RMSNorms (MLA's inner q/kv norms keep DeepSeek's
            fixed 1e-6, see ``minimoe.long_context.mla``).
        tie_embeddings: reuse the input embedding as output projection.
        attention: attention variant, one of ``ATTENTION_KINDS`` (``ATTENTION_FIELDS`` says
            which of the fields below each one reads).
        moe: settings of the MoE feed-forward; ``None`` makes every layer dense.
        first_k_dense: with ``moe``, the first k layers keep a dense FFN (DeepSeek's
            ``first_k_dense_replace``).
        sliding_window: keys a query may see with ``attention='sliding'``.
        sparse_top_k: keys a query attends to with ``attention='sparse'``.
        index_head_dim, index_n_heads: size of the light indexer of ``attention='sparse'``.
        q_lora_rank: rank of MLA's query compression (``None``: full-rank queries).
        kv_lora_rank: width of MLA's compressed KV latent.
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA's per-head sizes.
        head_dim: size of one attention head; ``None`` (default) means ``d_model // n_heads``.
            DeepSeek-V4 sets it independently (512). Honoured by ``gqa``, ``sliding``,
            ``sparse`` and ``compressed``; ``mla`` has its own sizes and rejects it.

    DeepSeek-V4's compressed attention (``attention='compressed'``,
    ``long_context/compressed_attention.py``; field names as in V4's config.json):
        compress_ratios: one compress ratio per layer, plus optionally one trailing entry for an
            MTP layer (V4's config lists ``n_layers + 1``; the main stack reads the first
            ``n_layers``). 0: the layer keeps only its sliding window; r >= 2: it also attends
            to entries that each compress r tokens.
        csa_compress_ratio: the ratio whose layers are CSA (overlapping compression windows and
            a lightning indexer choosing ``index_topk`` entries); every other positive ratio is
            HCA (no overlap, no indexer, all entries). V4 hard-codes 4 (and 128 for HCA); the
            course uses small ratios on short sequences, e.g. CSA 2 and HCA 8.
        o_groups, o_lora_rank: grouped low-rank output projection (heads split into
            ``o_groups`` groups, each projected to ``o_lora_rank``, then to ``d_model``).
        index_topk: compressed entries each query of a CSA layer keeps.
        compress_rope_theta: RoPE base of the compressed layers (window-only layers use
            ``rope_theta``). ``sliding_window``, ``q_lora_rank``, ``qk_rope_head_dim``,
            ``index_n_heads`` and ``index_head_dim`` are shared with the other variants.

    DeepSeek-V4's block (names as in V4's config.json; the defaults are today's model):
        hc_mult: residual streams of manifold-constrained hyper-connections (mHC,
            ``v4/hyper_connections.py``); 1 is the plain residual ``x + f(x)``.
        hc_sinkhorn_iters: Sinkhorn iterations projecting mHC's stream-mixing matrix onto the
            doubly-stochastic matrices (V4: 20).
        hc_eps: the epsilon of mHC's weights and Sinkhorn normalisations (V4: 1e-6).
        num_hash_layers: the first ``num_hash_layers`` MoE layers route by a fixed token-id
            table (``tid2eid``) instead of by the router's top-k; needs a DeepSeek router.
        num_nextn_predict_layers: 1 adds a multi-token-prediction module (``v4/mtp.py``) that
            predicts the token after next; 0 (default) has none.

    Features of published checkpoints (``minimoe.checkpoints``); each default is the course's
    own arithmetic, so a config that leaves them alone computes exactly what it did before:
        qk_norm: RMSNorm over ``head_dim`` on every query and key head before RoPE (Qwen3's
            ``q_norm``/``k_norm``, eps ``norm_eps``).
        attention_scale: the factor on ``q . k`` (Granite's ``attention_multiplier``);
            ``None``: ``1 / sqrt(head_dim)``.
        embedding_multiplier: the token embeddings are multiplied by it (Granite).
        residual_multiplier: each block's attention and FFN outputs are multiplied by it
            before they are added to the residual stream (Granite).
        logits_scaling: the logits are divided by it (Granite's ``logits_scaling``).
        rope_yarn: YaRN RoPE scaling of MLA's rope channels (``YaRNConfig``, DeepSeek-V2/V3);
            ``None``: the plain rotation.

    Speed (``minimoe.fast``): the same numbers, up to float round-off, computed differently:
        attention_tiling: ``gqa``/``sliding`` attention runs over the batch a few sequences at
            a time, so each tile's scores fit a CPU core's cache
            (``fast.tiled_attention``); ``False`` (default): the whole batch at once.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int = 512
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    attention: str = "gqa"
    moe: MoEConfig | None = None
    first_k_dense: int = 0
    sliding_window: int | None = None
    sparse_top_k: int | None = None
    index_head_dim: int = 16
    index_n_heads: int = 1
    q_lora_rank: int | None = None
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    # --- DeepSeek-V4 compressed attention (attention='compressed') ---
    head_dim: int | None = _HeadDim()
    compress_ratios: tuple[int, ...] | None = None
    csa_compress_ratio: int = 4
    o_groups: int = 1
    o_lora_rank: int | None = None
    index_topk: int | None = None
    compress_rope_theta: float = 160000.0
    hc_mult: int = 1
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    num_hash_layers: int = 0
    num_nextn_predict_layers: int = 0
    qk_norm: bool = False
    attention_scale: float | None = None
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    rope_yarn: YaRNConfig | None = None
    attention_tiling: bool = False

    def __post_init__(self):
        validation.check_model_config(self)

    @property
    def n_moe_layers(self) -> int:
        """How many blocks use the MoE feed-forward."""
        return 0 if self.moe is None else self.n_layers - self.first_k_dense

    def is_hash_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) is one of the first ``num_hash_layers`` MoE layers,
        which route by token id (DeepSeek-V4)."""
        return self.is_moe_layer(layer) and layer < self.first_k_dense + self.num_hash_layers

    def layer_compress_ratio(self, layer: int) -> int:
        """Compress ratio of block ``layer`` with ``attention='compressed'`` (0: window only)."""
        return self.compress_ratios[layer]

    def is_csa_layer(self, layer: int) -> bool:
        """Whether block ``layer`` is CSA (overlap + indexer) rather than HCA or window-only."""
        return self.layer_compress_ratio(layer) == self.csa_compress_ratio

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) uses the MoE feed-forward."""
        return self.moe is not None and layer >= self.first_k_dense

    def replace(self, **changes) -> "ModelConfig":
        # head_dim as given (None = derived), not its derived value (see _HeadDim)
        changes.setdefault("head_dim", self._head_dim)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["head_dim"] = self._head_dim  # None when derived from d_model // n_heads
        if d["compress_ratios"] is not None:
            d["compress_ratios"] = list(d["compress_ratios"])  # JSON has lists, not tuples
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        if d.get("moe") is not None:
            moe = d["moe"]
            if not isinstance(moe, dict):
                raise ValueError(f"moe must be a JSON object or null, got {type(moe).__name__}")
            mknown = {f.name for f in dataclasses.fields(MoEConfig)}
            munknown = sorted(set(moe) - mknown)
            if munknown:
                raise ValueError(f"unknown MoEConfig keys {munknown}; allowed: {sorted(mknown)}")
            d["moe"] = MoEConfig(**moe)
        if isinstance(d.get("compress_ratios"), list):
            d["compress_ratios"] = tuple(d["compress_ratios"])
        if isinstance(d.get("rope_yarn"), dict):
            d["rope_yarn"] = YaRNConfig(**d["rope_yarn"])
        return cls(**d)
