"""Cost calculator: from a Hugging Face ``config.json`` to parameters, FLOPs, KV cache,
roofline tokens/s and dollars per million tokens.

Pure Python (standard library only, no JAX), so it runs anywhere the notebooks run.

The model, in four steps
------------------------
1. **Count.** :func:`from_hf_config` reads a config and counts every weight the Hugging
   Face implementation of that family creates: embeddings, attention projections (with
   their biases, per-head q/k norms, sinks, MLA low-rank factors and norms), dense SwiGLU
   FFNs, routed and shared experts, routers (and DeepSeek-V3's router bias), RMSNorm weights
   and the output head. The result is a frozen :class:`ModelSpec`.

   * ``total_params``: every weight stored once (a tied embedding/head counts once).
   * ``active_params``: the weights one token's forward pass multiplies by: everything except
     the input embedding table (a lookup, not a matmul) and the routed experts the token did
     not pick. The output head counts. ``embedding_params`` is reported separately so the
     other convention (embedding included) is one addition away:
     :attr:`ModelSpec.active_params_with_embedding`.
   * Multi-token-prediction modules (``num_nextn_predict_layers``) are in neither number;
     they are ``mtp_params``.

2. **FLOPs and KV cache.** One token costs ``2 x (active matmul weights)`` FLOPs plus the
   attention over its context; the KV cache holds, per token and layer, ``2 x n_kv_heads x
   head_dim`` values (MHA/GQA/MQA) or ``kv_lora_rank + qk_rope_head_dim`` values (MLA).
   Sliding-window layers hold at most ``sliding_window`` tokens.

3. **Roofline.** A decode step of ``batch`` tokens takes
   ``max(compute time, memory time)``: compute is FLOPs over peak FLOP/s, memory is the bytes
   the step must read (the weights it touches, plus every sequence's KV cache) over HBM
   bandwidth. An MoE touches only the experts its tokens picked; with many tokens per step
   it touches almost all of them (:func:`expected_experts_touched`). Prefill is taken as
   compute-bound.

4. **Money.** ``$ per million tokens = $ per GPU-hour / (3600 x tokens/s per GPU x
   utilisation) x 1e6``, checked against what DeepSeek published about one day of serving
   (:data:`DEEPSEEK_SERVING_DAY`).

Everything is an idealised upper bound: no communication time, no kernel overheads, perfect
sharding over ``n_gpus``. Efficiency knobs (``compute_efficiency``, ``bandwidth_efficiency``)
scale the peaks down where a learner wants a realistic figure.

Published figures (hardware, prices, DeepSeek V4 sizes, DeepSeek's serving day) live here as
read-only data, each with its source; they are quoted, never computed.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ModelSpec",
    "from_hf_config",
    "list_model_configs",
    "load_model_config",
    "load_spec",
    "summary_table",
    "Hardware",
    "HARDWARE",
    "peak_flops",
    "expected_experts_touched",
    "DecodeStep",
    "decode_step",
    "decode_step_time",
    "decode_tokens_per_s",
    "compute_bound_batch",
    "prefill_tokens_per_s",
    "gpus_to_hold",
    "max_batch",
    "dollars_per_million_tokens",
    "PublishedServingDay",
    "DEEPSEEK_SERVING_DAY",
    "serving_day_costs",
    "PublishedModelFigures",
    "DEEPSEEK_V4_PUBLISHED",
    "PublishedPrice",
    "PUBLISHED_PRICES",
]

# ---------------------------------------------------------------------------------------
# Families the reader understands (Hugging Face ``model_type`` values).
# ---------------------------------------------------------------------------------------
_DENSE = ("llama", "mistral", "qwen2", "qwen3")
_QWEN_MOE = ("qwen2_moe", "qwen3_moe")
_DEEPSEEK = ("deepseek_v2", "deepseek_v3", "kimi_k2")
SUPPORTED_MODEL_TYPES = tuple(sorted(_DENSE + ("mixtral",) + _QWEN_MOE + _DEEPSEEK + ("gpt_oss",)))


# ---------------------------------------------------------------------------------------
# Reading a config
# ---------------------------------------------------------------------------------------
class _Reader:
    """Typed access to one config dict; every error names the file and the key."""

    def __init__(self, cfg: Mapping[str, Any], where: str):
        self.cfg = cfg
        self.where = where  # "" or " (in 'text_config')"

    def error(self, message: str) -> ValueError:
        return ValueError(f"config.json: {message}{self.where}")

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def _as_int(self, key: str, value, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not value.is_integer()):
            raise self.error(f"'{key}' must be an integer, got {value!r}")
        value = int(value)
        if value < minimum:
            raise self.error(f"'{key}' must be >= {minimum}, got {value}")
        return value

    def int(self, key: str, minimum: int = 1) -> int:
        """A required integer; ``None`` counts as missing."""
        if self.cfg.get(key) is None:
            raise self.error(f"missing '{key}'")
        return self._as_int(key, self.cfg[key], minimum)

    def opt_int(self, key: str, default, minimum: int = 1):
        """An optional integer; absent or ``None`` gives ``default``."""
        if self.cfg.get(key) is None:
            return default
        return self._as_int(key, self.cfg[key], minimum)

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"'{key}' must be true or false, got {value!r}")
        return value

    def opt_str(self, key: str, default: str | None) -> str | None:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(f"'{key}' must be a string, got {value!r}")
        return value


def _read_json_source(config) -> tuple[dict, str | None]:
    """Turn a dict, a JSON string or a path into a dict; also return a name from the path."""
    if isinstance(config, Mapping):
        return dict(config), None
    if isinstance(config, (bytes, bytearray)):
        config = config.decode("utf-8")
    path_name = None
    if isinstance(config, pathlib.PurePath) or (isinstance(config, str)
                                                and not config.lstrip().startswith(("{", "["))):
        path = pathlib.Path(config)
        if path.is_dir():                       # a model folder: read its config.json
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"config.json: no file at {str(path)!r} "
                             "(pass a dict, a JSON string or the path of a config.json)")
        text = path.read_text(encoding="utf-8")
        path_name = path.parent.name if path.name == "config.json" else path.stem
    elif isinstance(config, str):
        text = config
    else:
        raise TypeError("config must be a dict, a JSON string or a path, "
                        f"got {type(config).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config.json: malformed JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config.json: expected a JSON object, got {type(data).__name__}")
    return data, path_name


def _unwrap(cfg: dict) -> tuple[dict, str]:
    """Follow ``text_config`` (multimodal wrappers) down to the language model's config."""
    where = ""
    while isinstance(cfg.get("text_config"), Mapping):
        cfg = cfg["text_config"]
        where = " (in 'text_config')"
    return dict(cfg), where


# ---------------------------------------------------------------------------------------
# Parameter counting. Each piece returns (matrix weights, vector weights): matrices are what
# matmuls multiply by (they set the FLOPs); vectors are norms, biases, sinks.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Counts:
    matrix: int = 0
    vector: int = 0

    @property
    def total(self) -> int:
        return self.matrix + self.vector

    def __add__(self, other: "_Counts") -> "_Counts":
        return _Counts(self.matrix + other.matrix, self.vector + other.vector)

    def __mul__(self, n: int) -> "_Counts":
        return _Counts(self.matrix * n, self.vector * n)

    __rmul__ = __mul__


@dataclass(frozen=True)
class _Attention:
    kind: str            # 'mha', 'gqa', 'mqa' or 'mla'
    n_heads: int
    n_kv_heads: int
    qk_head_dim: int     # per-head width of the score dot product
    v_head_dim: int
    kv_values: int       # cached values per token per layer
    kv_lora_rank: int    # MLA only, else 0
    qk_rope_head_dim: int  # MLA only, else 0
    counts: _Counts


def _gqa_attention(r: _Reader, family: str, d: int) -> _Attention:
    n_heads = r.int("num_attention_heads")
    n_kv = r.opt_int("num_key_value_heads", n_heads)
    if n_heads % n_kv:
        raise r.error(f"'num_attention_heads' ({n_heads}) is not a multiple of "
                      f"'num_key_value_heads' ({n_kv})")
    head_dim = r.opt_int("head_dim", None)
    if head_dim is None:
        if d % n_heads:
            raise r.error(f"'hidden_size' ({d}) is not divisible by 'num_attention_heads' "
                          f"({n_heads}) and no 'head_dim' is given")
        head_dim = d // n_heads
    q, kv = n_heads * head_dim, n_kv * head_dim
    matrix = d * q + 2 * d * kv + q * d           # q, k, v, o projections
    vector = 0
    if family in ("qwen2", "qwen2_moe"):          # Qwen2: bias on q, k, v (never on o)
        vector += q + 2 * kv
    elif family in ("llama", "qwen3", "qwen3_moe", "gpt_oss"):
        if r.flag("attention_bias", family == "gpt_oss"):
            vector += q + 2 * kv + d               # bias on q, k, v and o
    # mistral / mixtral: the Hugging Face classes build these projections without bias.
    if family in ("qwen3", "qwen3_moe"):
        vector += 2 * head_dim                     # RMSNorm over each q and k head
    if family == "gpt_oss":
        vector += n_heads                          # one attention-sink logit per head
    if n_kv == n_heads:
        kind = "mha"
    elif n_kv == 1:
        kind = "mqa"
    else:
        kind = "gqa"
    return _Attention(kind, n_heads, n_kv, head_dim, head_dim, 2 * kv, 0, 0,
                      _Counts(matrix, vector))


def _mla_attention(r: _Reader, d: int) -> _Attention:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank q, latent kv, decoupled RoPE."""
    n_heads = r.int("num_attention_heads")
    q_lora = r.opt_int("q_lora_rank", None)
    kv_lora = r.int("kv_lora_rank")
    nope = r.int("qk_nope_head_dim")
    rope = r.int("qk_rope_head_dim")
    v_dim = r.int("v_head_dim")
    qk = nope + rope
    bias = r.flag("attention_bias", False)
    matrix = vector = 0
    if q_lora is None:
        matrix += d * n_heads * qk                          # q_proj
    else:
        matrix += d * q_lora + q_lora * n_heads * qk        # q_a_proj, q_b_proj
        vector += q_lora + (q_lora if bias else 0)          # q_a_layernorm (+ q_a_proj bias)
    matrix += d * (kv_lora + rope)                          # kv_a_proj_with_mqa
    vector += kv_lora + ((kv_lora + rope) if bias else 0)   # kv_a_layernorm (+ bias)
    matrix += kv_lora * n_heads * (nope + v_dim)            # kv_b_proj
    matrix += n_heads * v_dim * d                           # o_proj
    vector += d if bias else 0
    return _Attention("mla", n_heads, n_heads, qk, v_dim, kv_lora + rope, kv_lora, rope,
                      _Counts(matrix, vector))


def _swiglu(d: int, hidden: int, bias: bool = False) -> _Counts:
    """Gate, up and down projections of a SwiGLU FFN (``3 * d * hidden``)."""
    return _Counts(3 * d * hidden, (2 * hidden + d) if bias else 0)


def _layer_windows(r: _Reader, family: str, n_layers: int) -> tuple[int | None, ...]:
    """Per layer: the sliding-window length, or ``None`` for full attention.

    Follows the Hugging Face classes: an explicit ``layer_types`` list wins; GPT-OSS
    alternates sliding/full starting with sliding; Mistral/Mixtral window every layer when
    ``sliding_window`` is set; Qwen windows layers ``>= max_window_layers`` only when
    ``use_sliding_window`` is true; Llama and DeepSeek never window.
    """
    window = r.opt_int("sliding_window", None)
    layer_types = r.cfg.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise r.error(f"'layer_types' must be a list of {n_layers} entries "
                          "(one per hidden layer)")
        known = ("full_attention", "sliding_attention")
        unknown = sorted({t for t in layer_types if t not in known})
        if unknown:
            raise r.error(f"unsupported layer type(s) {unknown} in 'layer_types'; "
                          "supported: ['full_attention', 'sliding_attention']")
        if "sliding_attention" in layer_types and window is None:
            raise r.error("missing 'sliding_window' (needed by the sliding_attention layers)")
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if family == "gpt_oss":
        if window is None:
            raise r.error("missing 'sliding_window'")
        return tuple(window if i % 2 == 0 else None for i in range(n_layers))
    if family in ("mistral", "mixtral"):
        return (window,) * n_layers
    if family in ("qwen2", "qwen3") + _QWEN_MOE and r.flag("use_sliding_window", False) \
            and window is not None:
        first = r.int("max_window_layers", minimum=0)
        return tuple(window if i >= first else None for i in range(n_layers))
    return (None,) * n_layers


# ---------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What a model costs, counted from its config (see :func:`from_hf_config`).

    Attributes:
        name, family: model name and Hugging Face ``model_type``.
        n_layers, d_model, vocab_size: depth, residual width, vocabulary.
        attention: 'mha', 'gqa', 'mqa' or 'mla'.
        n_heads, n_kv_heads: query heads and key/value heads (MLA: ``n_kv_heads == n_heads``).
        qk_head_dim, v_head_dim: per-head widths of the score and value products
            (MLA: ``qk_nope_head_dim + qk_rope_head_dim`` and ``v_head_dim``).
        kv_values_per_layer: values cached per token per layer
            (``2 * n_kv_heads * head_dim``, or ``kv_lora_rank + qk_rope_head_dim`` for MLA).
        kv_lora_rank, qk_rope_head_dim: MLA latent sizes (0 otherwise).
        layer_windows: per layer, the sliding window in tokens, ``None`` for full attention.
        n_routed_experts, n_experts_per_tok, n_shared_experts: routed experts per MoE layer,
            how many each token picks, always-on shared experts (0 for dense models).
        n_moe_layers, n_dense_layers: layers with an MoE FFN / a dense FFN.
        expert_params: weights of one routed expert (with its biases, if any).
        shared_expert_params: weights of all shared experts of one MoE layer (with Qwen's
            shared-expert gate).
        router_params: router weights of one MoE layer (with bias, if any).
        tie_word_embeddings: whether the output head is the embedding matrix.
        embedding_params: the input embedding table, ``vocab_size * d_model``.
        lm_head_params: the output projection, ``vocab_size * d_model`` (the same matrix as
            the embedding when tied).
        attention_params, dense_ffn_params, routed_expert_params, norm_params: totals over
            all layers (``routed_expert_params`` holds every routed expert of every layer;
            ``norm_params`` the per-layer and final RMSNorm weights).
        total_params: every weight, stored once; excludes ``mtp_params``.
        active_params: weights one token multiplies by (no input embedding, only the
            picked routed experts, output head included); excludes ``mtp_params``.
        active_matmul_params: the matrix part of ``active_params`` (no norms, biases,
            sinks): the FLOPs of a token are twice this plus attention.
        mtp_params: multi-token-prediction modules, without the embedding and head they
            share with the main model.
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
    layer_windows: tuple
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

    # -- derived sizes ------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_moe_layers > 0

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
    def n_windowed_layers(self) -> int:
        return sum(w is not None for w in self.layer_windows)

    @property
    def always_read_params(self) -> int:
        """Weights every decode step reads whatever the routing: all but the routed experts
        and the input embedding table (only ``batch`` rows of it are read; neglected)."""
        embedding = 0 if self.tie_word_embeddings else self.embedding_params
        return self.total_params - self.routed_expert_params - embedding

    def weight_bytes(self, bytes_per_param: float = 2, include_mtp: bool = False) -> float:
        """Bytes to store the weights: ``(total_params [+ mtp_params]) * bytes_per_param``."""
        return (self.total_params + (self.mtp_params if include_mtp else 0)) * bytes_per_param

    # -- KV cache -----------------------------------------------------------------------
    def kv_bytes_per_token(self, bytes_per_value: float = 2,
                           include_windowed: bool = False) -> float:
        """KV-cache bytes one more token of context adds, over all layers.

        ``sum over layers of kv_values_per_layer * bytes_per_value``, where
        ``kv_values_per_layer = 2 * n_kv_heads * head_dim`` (K and V, MHA/GQA/MQA) or
        ``kv_lora_rank + qk_rope_head_dim`` (MLA caches one latent plus one shared RoPE key).
        Sliding-window layers stop growing once they hold ``sliding_window`` tokens, so at
        long context only full-attention layers add bytes: they alone are counted unless
        ``include_windowed=True``.
        """
        n = self.n_layers if include_windowed else self.n_layers - self.n_windowed_layers
        return n * self.kv_values_per_layer * bytes_per_value

    def kv_bytes(self, context_len: int, bytes_per_value: float = 2) -> float:
        """KV-cache bytes of one sequence of ``context_len`` tokens:
        ``sum over layers of kv_values_per_layer * min(context_len, window) * bytes_per_value``
        (``window`` is infinite for full-attention layers)."""
        _check_non_negative("context_len", context_len)
        tokens = sum(context_len if w is None else min(context_len, w) for w in self.layer_windows)
        return tokens * self.kv_values_per_layer * bytes_per_value

    # -- FLOPs --------------------------------------------------------------------------
    def attention_flops(self, context_len: int) -> float:
        """Score and value FLOPs of one token attending to ``context_len`` keys:
        ``sum over layers of 2 * n_heads * (qk_head_dim + v_head_dim) * min(context_len, window)``.

        Per head and per key, the score ``q . k`` is ``qk_head_dim`` multiply-adds and adding
        ``p * v`` to the output is ``v_head_dim`` multiply-adds; a multiply-add is 2 FLOPs.
        With ``qk_head_dim == v_head_dim == head_dim`` this is ``4 * context * n_heads *
        head_dim`` per layer: ``2 * context * d_attn`` for the logits plus the same for the
        weighted sum of values (Hoffmann et al. 2022, App. F). For MLA this is the plain (non-absorbed) form with ``qk_head_dim = nope + rope``;
        with weight absorption the products run in the latent space instead.
        Softmax and masking (a few FLOPs per score) are left out.
        """
        _check_non_negative("context_len", context_len)
        keys = sum(context_len if w is None else min(context_len, w) for w in self.layer_windows)
        return 2.0 * self.n_heads * (self.qk_head_dim + self.v_head_dim) * keys

    def flops_per_token(self, context_len: int = 0) -> float:
        """Forward FLOPs of one token that attends to ``context_len`` keys (itself included):

            ``2 * active_matmul_params + attention_flops(context_len)``

        ``active_matmul_params`` are the matrices the token multiplies by (output head in,
        embedding lookup out, only its ``n_experts_per_tok`` routed experts); each weight is
        one multiply-add = 2 FLOPs (Kaplan et al. 2020, "Scaling Laws", Table 1; Hoffmann et
        al. 2022, App. F). See :meth:`attention_flops` for the attention term.
        """
        return 2.0 * self.active_matmul_params + self.attention_flops(context_len)

    def prefill_flops(self, prompt_len: int) -> float:
        """Forward FLOPs of a whole causal prompt of ``prompt_len`` tokens: token ``i``
        (1-based) attends to ``i`` keys, capped at the window on windowed layers, so
        ``prompt_len * 2 * active_matmul_params + 2 * n_heads * (qk + v) * sum_layers
        sum_i min(i, window)``."""
        _check_positive("prompt_len", prompt_len)
        keys = 0
        for w in self.layer_windows:
            if w is None or prompt_len <= w:
                keys += prompt_len * (prompt_len + 1) // 2
            else:
                keys += w * (w + 1) // 2 + (prompt_len - w) * w
        return (prompt_len * 2.0 * self.active_matmul_params
                + 2.0 * self.n_heads * (self.qk_head_dim + self.v_head_dim) * keys)

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


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def from_hf_config(config, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` and count what the model costs.

    Args:
        config: the config as a dict, a JSON string, or a path (``str`` or
            ``pathlib.Path``) to the file or to the model folder holding it. A
            ``text_config`` inside (multimodal wrappers) is followed to the language
            model's own config.
        name: display name; defaults to ``_name_or_path``, then the file's folder (for a
            ``config.json``) or stem, then ``model_type``.

    Returns:
        a frozen :class:`ModelSpec`.

    Raises:
        ValueError: malformed JSON, a missing or ill-typed key (the message names it), an
            unsupported ``model_type`` (the message lists the supported ones) or a layout
            the reader does not know. It never guesses a number it cannot read.

    Counting rules, per layer (``d`` = ``hidden_size``): attention projections as built by
    the family's Hugging Face class (q, k, v, o; MLA's ``q_a``/``q_b``/``kv_a``/``kv_b``/o),
    their biases where the family has them (Qwen2: q/k/v; GPT-OSS and ``attention_bias``:
    q/k/v/o), Qwen3's per-head q/k RMSNorm, GPT-OSS's per-head sinks, two RMSNorms of ``d``;
    a SwiGLU FFN is ``3 * d * hidden``; an MoE layer is its router (``d * n_experts``, plus
    DeepSeek-V3's ``e_score_correction_bias`` under ``topk_method: noaux_tc``, plus GPT-OSS's
    router bias), its routed experts and its shared experts (DeepSeek:
    ``n_shared_experts * moe_intermediate_size`` hidden units; Qwen2-MoE:
    ``shared_expert_intermediate_size`` plus a ``d -> 1`` gate). Then one final RMSNorm,
    the embedding and the head (once if tied).
    """
    raw, path_name = _read_json_source(config)
    outer_name = raw.get("_name_or_path") if isinstance(raw.get("_name_or_path"), str) else None
    cfg, where = _unwrap(raw)
    r = _Reader(cfg, where)
    family = r.opt_str("model_type", None)
    if family is None:
        raise r.error("missing 'model_type'")
    if family not in SUPPORTED_MODEL_TYPES:
        raise r.error(f"unsupported model_type {family!r}; "
                      f"supported: {list(SUPPORTED_MODEL_TYPES)}")
    name = name or outer_name or cfg.get("_name_or_path") or path_name or family

    d = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    tied = r.flag("tie_word_embeddings", False)   # every supported family defaults to untied
    attn = _mla_attention(r, d) if family in _DEEPSEEK else _gqa_attention(r, family, d)
    windows = _layer_windows(r, family, n_layers)

    # --- FFN layout: which layers are MoE, and what one MoE layer holds ---------------------
    n_experts = top_k = n_shared = 0
    expert = shared = router = _Counts()
    dense_ffn = None  # _Counts of a dense FFN, read only if some layer needs it

    def dense() -> _Counts:
        return _swiglu(d, r.int("intermediate_size"),
                       bias=family == "llama" and r.flag("mlp_bias", False))

    if family in _DENSE:
        is_moe = [False] * n_layers
    elif family == "mixtral":
        n_experts, top_k = r.int("num_local_experts"), r.int("num_experts_per_tok")
        expert = _swiglu(d, r.int("intermediate_size"))
        router = _Counts(d * n_experts, 0)
        is_moe = [True] * n_layers
    elif family in _QWEN_MOE:
        n_experts, top_k = r.int("num_experts"), r.int("num_experts_per_tok")
        expert = _swiglu(d, r.int("moe_intermediate_size"))
        router = _Counts(d * n_experts, 0)
        step = r.opt_int("decoder_sparse_step", 1)
        mlp_only = cfg.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
            raise r.error(f"'mlp_only_layers' must be a list of layer indices, got {mlp_only!r}")
        is_moe = [i not in mlp_only and (i + 1) % step == 0 for i in range(n_layers)]
        if family == "qwen2_moe":
            shared_hidden = r.int("shared_expert_intermediate_size", minimum=0)
            if shared_hidden:
                n_shared = 1
                shared = _swiglu(d, shared_hidden) + _Counts(d, 0)  # + shared_expert_gate
    elif family in _DEEPSEEK:
        n_experts = r.opt_int("n_routed_experts", 0)
        if n_experts:
            top_k = r.int("num_experts_per_tok")
            moe_hidden = r.int("moe_intermediate_size")
            expert = _swiglu(d, moe_hidden)
            n_shared = r.opt_int("n_shared_experts", 0, minimum=0)
            shared = _swiglu(d, moe_hidden * n_shared)
            default_method = "greedy" if family == "deepseek_v2" else "noaux_tc"
            has_bias = r.opt_str("topk_method", default_method) == "noaux_tc"
            router = _Counts(d * n_experts, n_experts if has_bias else 0)
        first_dense = r.opt_int("first_k_dense_replace", 0, minimum=0)
        freq = r.opt_int("moe_layer_freq", 1)
        is_moe = [bool(n_experts) and i >= first_dense and i % freq == 0
                  for i in range(n_layers)]
    else:  # gpt_oss
        n_experts = r.int("num_local_experts")
        keys = [k for k in ("num_experts_per_tok", "experts_per_token") if r.has(k)]
        if not keys:
            raise r.error("missing 'num_experts_per_tok' (or 'experts_per_token')")
        picks = {r.int(k) for k in keys}
        if len(picks) > 1:
            raise r.error("'num_experts_per_tok' and 'experts_per_token' disagree")
        top_k = picks.pop()
        hidden = r.int("intermediate_size")
        # gate_up_proj (d -> 2*hidden) and down_proj (hidden -> d), each with a bias
        expert = _Counts(3 * d * hidden, 2 * hidden + d)
        router = _Counts(d * n_experts, n_experts)
        is_moe = [True] * n_layers
    if n_experts and top_k > n_experts:
        raise r.error(f"'num_experts_per_tok' ({top_k}) exceeds the number of experts "
                      f"({n_experts})")

    n_moe = sum(is_moe)
    n_dense = n_layers - n_moe
    if n_dense:
        dense_ffn = dense()

    # --- totals -----------------------------------------------------------------------------
    layer_norms = _Counts(0, 2 * d)
    attention = attn.counts * n_layers
    norms = layer_norms * n_layers + _Counts(0, d)
    dense_total = (dense_ffn or _Counts()) * n_dense
    routed_total = expert * (n_experts * n_moe)
    moe_fixed = (router + shared) * n_moe                 # used by every token of an MoE layer
    embedding = vocab * d
    head = _Counts(vocab * d, 0)

    body = attention + norms + dense_total + moe_fixed
    total = body.total + routed_total.total + embedding + (0 if tied else head.total)
    active = body + expert * (top_k * n_moe) + head

    # --- multi-token prediction (DeepSeek-V3): excluded from total and active ----------------
    n_mtp = r.opt_int("num_nextn_predict_layers", 0, minimum=0)
    mtp = 0
    if n_mtp:
        if family not in _DEEPSEEK:
            raise r.error(f"'num_nextn_predict_layers' is only understood for {list(_DEEPSEEK)} "
                          f"configs, not {family!r}")
        for j in range(n_mtp):
            i = n_layers + j     # MTP layers are numbered after the main ones
            moe_layer = bool(n_experts) and i >= first_dense and i % freq == 0
            ffn = (router + shared + expert * n_experts) if moe_layer else dense()
            # enorm, hnorm, eh_proj (2d -> d), one decoder layer, shared_head.norm
            mtp += (_Counts(2 * d * d, 3 * d) + attn.counts + layer_norms + ffn).total

    return ModelSpec(
        name=str(name), family=family, n_layers=n_layers, d_model=d, vocab_size=vocab,
        attention=attn.kind, n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads,
        qk_head_dim=attn.qk_head_dim, v_head_dim=attn.v_head_dim,
        kv_values_per_layer=attn.kv_values, kv_lora_rank=attn.kv_lora_rank,
        qk_rope_head_dim=attn.qk_rope_head_dim, layer_windows=windows,
        n_routed_experts=n_experts if n_moe else 0, n_experts_per_tok=top_k if n_moe else 0,
        n_shared_experts=n_shared if n_moe else 0, n_moe_layers=n_moe, n_dense_layers=n_dense,
        expert_params=expert.total if n_moe else 0,
        shared_expert_params=shared.total if n_moe else 0,
        router_params=router.total if n_moe else 0,
        tie_word_embeddings=tied, embedding_params=embedding, lm_head_params=head.total,
        attention_params=attention.total, dense_ffn_params=dense_total.total,
        routed_expert_params=routed_total.total, norm_params=norms.vector,
        total_params=total, active_params=active.total, active_matmul_params=active.matrix,
        mtp_params=mtp,
    )


# ---------------------------------------------------------------------------------------
# The configs shipped with the package (real config.json files; see model_configs/SOURCES.md)
# ---------------------------------------------------------------------------------------
def _config_dir():
    return resources.files("minimoe").joinpath("model_configs")


def list_model_configs() -> list[str]:
    """Names of the config.json files shipped in ``minimoe/model_configs`` (sorted)."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".json"))


def load_model_config(name: str) -> dict:
    """The shipped config ``name`` (e.g. ``"DeepSeek-V3"``; case-insensitive) as a dict."""
    names = list_model_configs()
    match = [n for n in names if n == name] or [n for n in names if n.lower() == str(name).lower()]
    if not match:
        raise ValueError(f"no shipped config named {name!r}; available: {names}")
    return json.loads(_config_dir().joinpath(match[0] + ".json").read_text(encoding="utf-8"))


def load_spec(name: str) -> ModelSpec:
    """``from_hf_config(load_model_config(name))``, named after the file."""
    config = load_model_config(name)
    canonical = next(n for n in list_model_configs() if n.lower() == str(name).lower())
    return from_hf_config(config, name=canonical)


def summary_table(specs) -> str:
    """A fixed-width text table of :meth:`ModelSpec.summary` rows (deterministic output)."""
    rows = [s.summary() for s in specs]
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[str(c) for c in columns]] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w)      # text left, numbers right
                       for i, (v, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------------------------------
# Hardware (published peaks; dense, i.e. without 2:4 structured sparsity)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """One accelerator's published peaks.

    Attributes:
        name: full name.
        bf16_flops: dense BF16 peak, FLOP/s.
        fp8_flops: dense FP8 peak, FLOP/s (``None`` where the chip has no FP8 path).
        hbm_bandwidth: HBM bandwidth, bytes/s.
        hbm_bytes: HBM capacity, bytes.
        source: where the figures come from.
        third_party: ``True`` when the figures are reports by others, not the vendor's own.
        interconnect_bandwidth: scale-up link bandwidth per GPU (NVLink, both directions
            summed), bytes/s, or ``None`` where not given.
    """

    name: str
    bf16_flops: float
    fp8_flops: float | None
    hbm_bandwidth: float
    hbm_bytes: float
    source: str
    third_party: bool = False
    interconnect_bandwidth: float | None = None


_NVIDIA_SHEET = "NVIDIA {} datasheet (dense Tensor Core peaks, without sparsity)"
_ASCEND_NOTE = ("third-party reports (press and analyst estimates); Huawei publishes no full "
                "datasheet, figures are approximate")

HARDWARE: Mapping[str, Hardware] = MappingProxyType({
    "H100": Hardware("NVIDIA H100 SXM", 989e12, 1979e12, 3.35e12, 80e9,
                     _NVIDIA_SHEET.format("H100 SXM5") + "; also 'How to Scale Your Model'",
                     interconnect_bandwidth=900e9),
    "H800": Hardware("NVIDIA H800 SXM", 989e12, 1979e12, 3.35e12, 80e9,
                     "H100 SXM compute and memory with NVLink cut to 400 GB/s (export variant); "
                     "DeepSeek-V3 technical report, section 3.1",
                     interconnect_bandwidth=400e9),
    "H200": Hardware("NVIDIA H200 SXM", 989e12, 1979e12, 4.8e12, 141e9,
                     _NVIDIA_SHEET.format("H200"), interconnect_bandwidth=900e9),
    "B200": Hardware("NVIDIA B200", 2.25e15, 4.5e15, 8e12, 192e9,
                     _NVIDIA_SHEET.format("HGX/DGX B200") + "; some DGX sheets list 180 GB usable",
                     interconnect_bandwidth=1.8e12),
    "Ascend-910B": Hardware("Huawei Ascend 910B", 320e12, None, 1.6e12, 64e9,
                            _ASCEND_NOTE, third_party=True),
    "Ascend-910C": Hardware("Huawei Ascend 910C", 780e12, None, 3.2e12, 128e9,
                            _ASCEND_NOTE + "; two 910B-class dies in one package",
                            third_party=True),
})


def peak_flops(hw: Hardware, bytes_per_param: float = 2) -> float:
    """The peak a matmul with ``bytes_per_param``-byte weights runs at: FP8 for 1 byte or
    less (where the chip has FP8), BF16 otherwise."""
    if bytes_per_param <= 1 and hw.fp8_flops is not None:
        return hw.fp8_flops
    return hw.bf16_flops


# ---------------------------------------------------------------------------------------
# Serving model
# ---------------------------------------------------------------------------------------
def expected_experts_touched(n_experts: int, top_k: int, batch: float) -> float:
    """Expected number of distinct experts ``batch`` tokens pick in one MoE layer, each token
    picking ``top_k`` of ``n_experts`` uniformly at random:

        ``E * (1 - (1 - k / E) ** batch)``

    (one expert is missed by one token with probability ``1 - k/E``; by all ``batch`` tokens
    independently with that power). One token gives ``k``; a huge batch gives ``E``. Real
    routers are not uniform, so this is the touched count of a perfectly balanced router.
    """
    _check_positive("n_experts", n_experts)
    _check_positive("top_k", top_k)
    _check_non_negative("batch", batch)
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) must be <= n_experts ({n_experts})")
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** batch)


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of the roofline model (all times in seconds, for the whole step).

    Attributes:
        flops: FLOPs of the step, ``batch * flops_per_token(context_len)``.
        bytes: bytes read from HBM (weights touched + KV caches).
        weight_bytes, kv_bytes: the two parts of ``bytes``.
        experts_touched: expected distinct routed experts per MoE layer (0 for dense).
        compute_s, memory_s: ``flops / (n_gpus * peak * compute_efficiency)`` and
            ``bytes / (n_gpus * hbm_bandwidth * bandwidth_efficiency)``.
        time_s: ``max(compute_s, memory_s)``.
        bound: 'compute' or 'memory'.
    """

    flops: float
    bytes: float
    weight_bytes: float
    kv_bytes: float
    experts_touched: float
    compute_s: float
    memory_s: float
    time_s: float
    bound: str


def decode_step(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                bytes_per_param: float = 2, bytes_per_value: float = 2, n_gpus: int = 1,
                compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0) -> DecodeStep:
    """Roofline of one decode step: ``batch`` sequences each add one token at
    ``context_len`` tokens of context.

        compute_s = batch * flops_per_token(context_len) / (n_gpus * peak * compute_efficiency)
        weights   = always_read_params + n_moe_layers * touched * expert_params
        touched   = E * (1 - (1 - k/E) ** batch)                  (expected_experts_touched)
        bytes     = weights * bytes_per_param + batch * kv_bytes(context_len, bytes_per_value)
        memory_s  = bytes / (n_gpus * hbm_bandwidth * bandwidth_efficiency)
        time_s    = max(compute_s, memory_s)

    ``peak`` is :func:`peak_flops` (FP8 for 1-byte weights). ``always_read_params`` is every
    weight but the routed experts and the input embedding table (attention, dense and
    shared FFNs, routers, norms, head). The ``n_gpus`` share weights, caches and FLOPs
    perfectly; communication is ignored. This is the roofline of "How to Scale Your Model"
    (Austin et al., the JAX scaling book), chapters on rooflines and inference.
    """
    _check_positive("batch", batch)
    _check_non_negative("context_len", context_len)
    _check_positive("n_gpus", n_gpus)
    _check_positive("compute_efficiency", compute_efficiency)
    _check_positive("bandwidth_efficiency", bandwidth_efficiency)
    touched = 0.0
    params = spec.always_read_params
    if spec.is_moe:
        touched = expected_experts_touched(spec.n_routed_experts, spec.n_experts_per_tok, batch)
        params += spec.n_moe_layers * touched * spec.expert_params
    weight_bytes = params * bytes_per_param
    kv = batch * spec.kv_bytes(context_len, bytes_per_value)
    flops = batch * spec.flops_per_token(context_len)
    compute_s = flops / (n_gpus * peak_flops(hw, bytes_per_param) * compute_efficiency)
    memory_s = (weight_bytes + kv) / (n_gpus * hw.hbm_bandwidth * bandwidth_efficiency)
    return DecodeStep(flops, weight_bytes + kv, weight_bytes, kv, touched, compute_s, memory_s,
                      max(compute_s, memory_s), "compute" if compute_s >= memory_s else "memory")


def decode_step_time(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                     bytes_per_param: float = 2, bytes_per_value: float = 2, n_gpus: int = 1,
                     compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0) -> float:
    """Seconds per decode step, ``max(compute_s, memory_s)``; see :func:`decode_step`."""
    return decode_step(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, n_gpus,
                       compute_efficiency, bandwidth_efficiency).time_s


def decode_tokens_per_s(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                        bytes_per_param: float = 2, bytes_per_value: float = 2, n_gpus: int = 1,
                        compute_efficiency: float = 1.0,
                        bandwidth_efficiency: float = 1.0) -> float:
    """Output tokens per second **per GPU**: ``batch / decode_step_time / n_gpus``.

    Grows with ``batch`` while memory-bound (the weights are read once for the whole batch)
    and levels off at ``peak / flops_per_token`` once compute-bound (or earlier, if KV reads
    dominate)."""
    t = decode_step_time(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, n_gpus,
                         compute_efficiency, bandwidth_efficiency)
    return batch / t / n_gpus


def compute_bound_batch(spec: ModelSpec, hw: Hardware, context_len: int,
                        bytes_per_param: float = 2, bytes_per_value: float = 2,
                        compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0,
                        max_batch_size: int = 10**9) -> int | None:
    """The smallest decode batch at which :func:`decode_step` turns compute-bound, or
    ``None`` if it never does (up to ``max_batch_size``).

    Each extra sequence adds ``flops_per_token`` of compute but only its KV cache to the
    bytes, while the weights are shared by the batch: past this batch, reading the weights
    no longer sets the pace. A dense model reaches it near ``peak / bandwidth`` FLOPs per
    weight byte; an MoE only once the batch touches most of its experts, i.e. much later.
    When one token's KV read takes longer than its compute (long context), no batch is large
    enough and the answer is ``None``. (``n_gpus`` cancels: it divides both times.)
    """
    def bound(batch: int) -> str:
        return decode_step(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, 1,
                           compute_efficiency, bandwidth_efficiency).bound

    if bound(max_batch_size) == "memory":
        return None
    lo, hi = 0, 1          # bound(lo) is memory (or lo == 0), bound(hi) is compute
    while bound(hi) == "memory":
        lo, hi = hi, min(2 * hi, max_batch_size)
    while hi - lo > 1:     # compute minus memory time is convex in batch: one crossing
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bound(mid) == "memory" else (lo, mid)
    return hi


def prefill_tokens_per_s(spec: ModelSpec, hw: Hardware, prompt_len: int,
                         bytes_per_param: float = 2, compute_efficiency: float = 1.0) -> float:
    """Prompt tokens per second **per GPU**, taking prefill as compute-bound:

        ``peak * compute_efficiency / (prefill_flops(prompt_len) / prompt_len)``

    (a prompt is thousands of tokens per weight read, far past the roofline's ridge point)."""
    per_token = spec.prefill_flops(prompt_len) / prompt_len
    return peak_flops(hw, bytes_per_param) * compute_efficiency / per_token


def gpus_to_hold(spec: ModelSpec, hw: Hardware, bytes_per_param: float = 2, batch: int = 1,
                 context_len: int = 0, bytes_per_value: float = 2,
                 usable_fraction: float = 1.0) -> int:
    """GPUs whose HBM holds the weights and ``batch`` KV caches of ``context_len`` tokens:

        ``ceil((total_params * bytes_per_param + batch * kv_bytes(context_len))
               / (hbm_bytes * usable_fraction))``

    Activations and framework overhead are left out (lower ``usable_fraction`` for them)."""
    _check_non_negative("batch", batch)
    _check_positive("usable_fraction", usable_fraction)
    need = spec.weight_bytes(bytes_per_param) + batch * spec.kv_bytes(context_len, bytes_per_value)
    return max(1, math.ceil(need / (hw.hbm_bytes * usable_fraction)))


def max_batch(spec: ModelSpec, hw: Hardware, n_gpus: int, context_len: int,
              bytes_per_param: float = 2, bytes_per_value: float = 2,
              usable_fraction: float = 1.0) -> int:
    """Most sequences of ``context_len`` tokens whose KV caches fit in the HBM of ``n_gpus``
    beside the weights (the converse of :func:`gpus_to_hold`):

        ``floor((n_gpus * hbm_bytes * usable_fraction - total_params * bytes_per_param)
                / kv_bytes(context_len))``

    0 when the weights alone do not fit. This is what caps the decode batch at long context,
    and why a smaller KV cache per token buys a larger batch."""
    _check_positive("n_gpus", n_gpus)
    _check_positive("context_len", context_len)
    _check_positive("usable_fraction", usable_fraction)
    free = n_gpus * hw.hbm_bytes * usable_fraction - spec.weight_bytes(bytes_per_param)
    if free <= 0:
        return 0
    return int(free // spec.kv_bytes(context_len, bytes_per_value))


def dollars_per_million_tokens(tokens_per_s_per_gpu: float, dollars_per_gpu_hour: float,
                               utilisation: float = 1.0) -> float:
    """Cost of a million tokens on GPUs rented by the hour:

        ``dollars_per_gpu_hour / (3600 * tokens_per_s_per_gpu * utilisation) * 1e6``

    ``utilisation`` is the fraction of paid hours the GPU spends producing at that rate."""
    _check_positive("tokens_per_s_per_gpu", tokens_per_s_per_gpu)
    _check_non_negative("dollars_per_gpu_hour", dollars_per_gpu_hour)
    _check_positive("utilisation", utilisation)
    return dollars_per_gpu_hour / (3600.0 * tokens_per_s_per_gpu * utilisation) * 1e6


# ---------------------------------------------------------------------------------------
# Published figures (quoted, not computed)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedServingDay:
    """One day of serving as a provider published it.

    Attributes:
        nodes: average nodes in service over the day.
        gpus_per_node: GPUs per node.
        dollars_per_gpu_hour: the rental price assumed.
        cost_per_day: the published daily cost, dollars.
        input_tokens_per_day, output_tokens_per_day: tokens served.
        input_cache_hit_fraction: share of input tokens found in the on-disk KV cache.
        prefill_tokens_per_s_per_node: input tokens/s per node during prefill (cache hits
            included).
        decode_tokens_per_s_per_node: output tokens/s per node during decoding.
        source: where the figures come from.
    """

    nodes: float
    gpus_per_node: int
    dollars_per_gpu_hour: float
    cost_per_day: float
    input_tokens_per_day: float
    output_tokens_per_day: float
    input_cache_hit_fraction: float
    prefill_tokens_per_s_per_node: float
    decode_tokens_per_s_per_node: float
    source: str


DEEPSEEK_SERVING_DAY = PublishedServingDay(
    nodes=226.75, gpus_per_node=8, dollars_per_gpu_hour=2.0, cost_per_day=87_072.0,
    input_tokens_per_day=608e9, output_tokens_per_day=168e9, input_cache_hit_fraction=0.563,
    prefill_tokens_per_s_per_node=73.7e3, decode_tokens_per_s_per_node=14.8e3,
    source="deepseek-ai/open-infra-index, day 6 (Feb 2025): DeepSeek-V3/R1 inference system "
           "overview, 24-hour statistics on H800 nodes",
)


def serving_day_costs(day: PublishedServingDay = DEEPSEEK_SERVING_DAY) -> dict:
    """Dollars per million tokens implied by a published serving day.

    * ``cost_per_day_computed = nodes * gpus_per_node * 24 * dollars_per_gpu_hour``
      (checks the published cost);
    * ``dollars_per_million_tokens = cost_per_day / (input + output tokens) * 1e6``;
    * ``dollars_per_million_output = cost_per_day / output tokens * 1e6`` (all cost charged
      to output);
    * ``prefill_dollars_per_million_input`` and ``decode_dollars_per_million_output``: a
      node's hourly price over its published per-node rate (:func:`dollars_per_million_tokens`
      with one node as the unit);
    * ``implied_nodes = (input / prefill rate + output / decode rate) / 86400``: the nodes
      the per-node rates need to serve the day's tokens, compared with ``nodes``.
    """
    node_hour = day.gpus_per_node * day.dollars_per_gpu_hour
    tokens = day.input_tokens_per_day + day.output_tokens_per_day
    busy_node_seconds = (day.input_tokens_per_day / day.prefill_tokens_per_s_per_node
                         + day.output_tokens_per_day / day.decode_tokens_per_s_per_node)
    return {
        "cost_per_day_published": day.cost_per_day,
        "cost_per_day_computed": day.nodes * 24 * node_hour,
        "tokens_per_day": tokens,
        "dollars_per_million_tokens": day.cost_per_day / tokens * 1e6,
        "dollars_per_million_output": day.cost_per_day / day.output_tokens_per_day * 1e6,
        "prefill_dollars_per_million_input": dollars_per_million_tokens(
            day.prefill_tokens_per_s_per_node, node_hour),
        "decode_dollars_per_million_output": dollars_per_million_tokens(
            day.decode_tokens_per_s_per_node, node_hour),
        "implied_nodes": busy_node_seconds / 86400.0,
        "nodes_published": day.nodes,
    }


@dataclass(frozen=True)
class PublishedModelFigures:
    """Sizes a model's authors published (not computed here: no public config to count).

    Attributes:
        name, total_params, active_params, context_len, source, note.
    """

    name: str
    total_params: float
    active_params: float
    context_len: int
    source: str
    note: str = "published figures, not computed from a config"


_V4_SOURCE = "DeepSeek V4 report abstract; MaxText deepseek4 configs"
DEEPSEEK_V4_PUBLISHED: Mapping[str, PublishedModelFigures] = MappingProxyType({
    "DeepSeek-V4-Flash": PublishedModelFigures(
        "DeepSeek-V4-Flash", 284e9, 13e9, 1_048_576, _V4_SOURCE),
    "DeepSeek-V4-Pro": PublishedModelFigures(
        "DeepSeek-V4-Pro", 1.6e12, 49e9, 1_048_576, _V4_SOURCE),
})


@dataclass(frozen=True)
class PublishedPrice:
    """An API list price in dollars per million tokens.

    Attributes:
        model, input_per_million, output_per_million, source, note.
    """

    model: str
    input_per_million: float
    output_per_million: float
    source: str
    note: str = ""


PUBLISHED_PRICES: Mapping[str, PublishedPrice] = MappingProxyType({
    "DeepSeek-V4-Pro": PublishedPrice(
        "DeepSeek-V4-Pro", 0.435, 0.87, "DeepSeek API pricing page as archived 2026-04",
        note="input price for cache misses; list price after its discount"),
    "Claude Opus 4.6": PublishedPrice(
        "Claude Opus 4.6", 5.0, 25.0, "Anthropic pricing page"),
})
