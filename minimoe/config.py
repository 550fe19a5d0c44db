"""Configuration: frozen dataclasses, validated when they are built.

Every setting of the course's models lives here. A bad value fails at construction with a
``ValueError`` that names the parameter, the value and what is allowed, instead of failing
later inside a shape error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ATTENTION_KINDS = ("gqa", "mla", "sliding", "sparse")
ROUTERS = ("softmax", "switch", "noisy_topk", "deepseek_v3", "deepseek_v4", "expert_choice")
DISPATCHES = ("reference", "onehot", "sort", "dropless", "ragged_dot")


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


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
        renormalize: rescale the selected weights to sum to one (softmax routers).
        routed_scaling_factor: multiplier on the routed experts' weights, for every router
            (DeepSeek-V3 ``route_scale``; 2.5 there, 1.0 elsewhere).
        n_group, topk_group: group-limited routing (DeepSeek-V3): experts are split into
            ``n_group`` groups and a token may only pick experts from its ``topk_group`` best.
        router_noise_std: std of the logit noise of ``noisy_topk`` (training only).
        capacity_factor: tokens an expert may take, as a multiple of the even share
            ``tokens * top_k / n_experts``; ``None`` means dropless.
        dispatch: how tokens reach experts, one of ``DISPATCHES``.
        aux_loss_coef: weight of the Switch load-balancing loss.
        seq_aux_loss_coef: weight of DeepSeek-V3's sequence-wise balance loss.
        z_loss_coef: weight of the router z-loss (ST-MoE).
        bias_update_rate: step size of DeepSeek's aux-loss-free bias balancing; 0 disables it.
    """

    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 128
    n_shared_experts: int = 0
    d_shared: int | None = None
    router: str = "softmax"
    renormalize: bool = True
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

    def __post_init__(self):
        _positive("n_experts", self.n_experts)
        _positive("top_k", self.top_k)
        _positive("d_expert", self.d_expert)
        _positive("d_shared", self.d_shared, allow_none=True)
        _positive("n_group", self.n_group)
        _positive("topk_group", self.topk_group)
        if isinstance(self.n_shared_experts, bool) or not isinstance(self.n_shared_experts, int) \
                or self.n_shared_experts < 0:
            raise ValueError(f"n_shared_experts must be an integer >= 0, got {self.n_shared_experts!r}")
        _one_of("router", self.router, ROUTERS)
        _one_of("dispatch", self.dispatch, DISPATCHES)
        if self.top_k > self.n_experts:
            raise ValueError(
                f"top_k must be <= n_experts ({self.n_experts}), got top_k={self.top_k}")
        if self.router == "switch" and self.top_k != 1:
            raise ValueError(f"router 'switch' routes to one expert: top_k must be 1, got {self.top_k}")
        if self.n_experts % self.n_group:
            raise ValueError(
                f"n_experts ({self.n_experts}) must be divisible by n_group, got n_group={self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(
                f"topk_group must be <= n_group ({self.n_group}), got topk_group={self.topk_group}")
        if self.n_group > 1 and self.router not in ("deepseek_v3", "deepseek_v4"):
            raise ValueError(f"group-limited routing (n_group={self.n_group}) needs router "
                             f"'deepseek_v3' or 'deepseek_v4', got router={self.router!r}")
        if self.n_group > 1 and self.topk_group * (self.n_experts // self.n_group) < self.top_k:
            raise ValueError(
                f"topk_group={self.topk_group} groups of {self.n_experts // self.n_group} experts "
                f"cannot hold top_k={self.top_k} experts")
        if self.capacity_factor is not None and not (
                isinstance(self.capacity_factor, (int, float)) and self.capacity_factor > 0):
            raise ValueError(
                f"capacity_factor must be > 0, or None for dropless, got {self.capacity_factor!r}")
        if self.capacity_factor is not None and self.dispatch in ("dropless", "ragged_dot"):
            raise ValueError(
                f"dispatch {self.dispatch!r} is dropless; set capacity_factor=None "
                f"(got {self.capacity_factor!r}) or use dispatch 'sort' or 'onehot'")
        for name in ("aux_loss_coef", "seq_aux_loss_coef", "z_loss_coef", "bias_update_rate",
                     "router_noise_std"):
            _non_negative(name, getattr(self, name))
        _non_negative("routed_scaling_factor", self.routed_scaling_factor)

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
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) \
                or not self.factor >= 1:
            raise ValueError(f"factor must be a number >= 1, got {self.factor!r}")
        _positive("original_max_position_embeddings", self.original_max_position_embeddings)
        for name in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            _non_negative(name, getattr(self, name))
        if not self.beta_fast > self.beta_slow:
            raise ValueError(f"beta_fast must be > beta_slow ({self.beta_slow}), "
                             f"got beta_fast={self.beta_fast}")


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
        norm_eps: epsilon of RMSNorm.
        tie_embeddings: reuse the input embedding as output projection.
        attention: attention variant, one of ``ATTENTION_KINDS``.
        moe: settings of the MoE feed-forward; ``None`` makes every layer dense.
        first_k_dense: with ``moe``, the first k layers keep a dense FFN (DeepSeek's
            ``first_k_dense_replace``).
        sliding_window: keys a query may see with ``attention='sliding'``.
        sparse_top_k: keys a query attends to with ``attention='sparse'``.
        index_head_dim, index_n_heads: size of the light indexer of ``attention='sparse'``.
        q_lora_rank: rank of MLA's query compression (``None``: full-rank queries).
        kv_lora_rank: width of MLA's compressed KV latent.
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA's per-head sizes.

    Features of published checkpoints (``minimoe.checkpoints``); each default is the course's
    own arithmetic, so a config that leaves them alone computes exactly what it did before:
        attention_head_dim: per-head width of ``gqa``/``sliding`` attention when it is not
            ``d_model // n_heads`` (Hugging Face ``head_dim``, e.g. Qwen3); ``None``: the quotient.
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
    attention_head_dim: int | None = None
    qk_norm: bool = False
    attention_scale: float | None = None
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    rope_yarn: YaRNConfig | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                     "index_head_dim", "index_n_heads", "kv_lora_rank", "qk_nope_head_dim",
                     "qk_rope_head_dim", "v_head_dim"):
            _positive(name, getattr(self, name))
        _positive("n_kv_heads", self.n_kv_heads, allow_none=True)
        _positive("attention_head_dim", self.attention_head_dim, allow_none=True)
        _positive("q_lora_rank", self.q_lora_rank, allow_none=True)
        _positive("sliding_window", self.sliding_window, allow_none=True)
        _positive("sparse_top_k", self.sparse_top_k, allow_none=True)
        _one_of("attention", self.attention, ATTENTION_KINDS)
        if self.attention_head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads, got n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = d_model / n_heads must be even for rotary embeddings, got {self.head_dim}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_kv_heads must divide n_heads ({self.n_heads}), got n_kv_heads={self.n_kv_heads}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be a MoEConfig or None, got {type(self.moe).__name__}")
        if isinstance(self.first_k_dense, bool) or not isinstance(self.first_k_dense, int) \
                or not 0 <= self.first_k_dense <= self.n_layers:
            raise ValueError(
                f"first_k_dense must be an integer in [0, n_layers={self.n_layers}], "
                f"got {self.first_k_dense!r}")
        if self.attention == "sliding" and self.sliding_window is None:
            raise ValueError("attention='sliding' needs sliding_window (a positive integer), got None")
        if self.attention == "sparse" and self.sparse_top_k is None:
            raise ValueError("attention='sparse' needs sparse_top_k (a positive integer), got None")
        self._check_checkpoint_features()

    def _check_checkpoint_features(self):
        """Validate the fields that published checkpoints need (see the class docstring)."""
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm must be True or False, got {self.qk_norm!r}")
        for name in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if self.attention_scale is not None and (
                isinstance(self.attention_scale, bool)
                or not isinstance(self.attention_scale, (int, float)) or not self.attention_scale > 0):
            raise ValueError(
                f"attention_scale must be a number > 0, or None for 1/sqrt(head_dim), "
                f"got {self.attention_scale!r}")
        if self.rope_yarn is not None:
            if not isinstance(self.rope_yarn, YaRNConfig):
                raise ValueError(f"rope_yarn must be a YaRNConfig or None, "
                                 f"got {type(self.rope_yarn).__name__}")
            if self.attention != "mla":
                raise ValueError(f"rope_yarn is only implemented for attention 'mla', "
                                 f"got attention={self.attention!r}")
        for name, default in (("attention_head_dim", None), ("qk_norm", False),
                              ("attention_scale", None)):
            if getattr(self, name) != default and self.attention not in ("gqa", "sliding"):
                raise ValueError(f"{name}={getattr(self, name)!r} is only implemented for "
                                 f"attention 'gqa' or 'sliding', got attention={self.attention!r}")

    @property
    def head_dim(self) -> int:
        if self.attention_head_dim is not None:
            return self.attention_head_dim
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) uses the MoE feed-forward."""
        return self.moe is not None and layer >= self.first_k_dense

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
        if isinstance(d.get("rope_yarn"), dict):
            d["rope_yarn"] = YaRNConfig(**d["rope_yarn"])
        return cls(**d)
