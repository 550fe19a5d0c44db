"""Reading a Hugging Face ``config.json`` and counting every weight: :func:`from_hf_config`.

Each family is counted the way its Hugging Face modeling code (or, for DeepSeek-V4, its
reference ``inference/model.py``) builds the model: every projection with its bias where
the family has one, every norm, sink, router bias, shared-expert gate, compressor and
indexer. Unknown families and fields the reader cannot interpret raise a ``ValueError``
that names them; nothing is guessed. The shipped configs (``minimoe/model_configs``, real
files with their sources in ``SOURCES.md``) are read with :func:`load_spec`.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Mapping

from .spec import LayerAttention, ModelSpec

# ---------------------------------------------------------------------------------------
# Families the reader understands (Hugging Face ``model_type`` values).
# ---------------------------------------------------------------------------------------
_DENSE = ("llama", "mistral", "qwen2", "qwen3")
_QWEN_MOE = ("qwen2_moe", "qwen3_moe")
_DEEPSEEK = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2")
_OTHER_MOE = ("mixtral", "gpt_oss", "olmoe", "minimax_m2", "glm4_moe", "qwen3_next",
              "llama4_text", "ernie4_5_moe", "deepseek_v4")
SUPPORTED_MODEL_TYPES = tuple(sorted(_DENSE + _QWEN_MOE + _DEEPSEEK + _OTHER_MOE + ("llama4",)))


# ---------------------------------------------------------------------------------------
# Reading a config
# ---------------------------------------------------------------------------------------
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

    def int_list(self, key: str, minimum: int = 0) -> list[int]:
        """A required list of integers, each ``>= minimum``."""
        value = self.cfg.get(key)
        if value is None:
            raise self.error(f"missing '{key}'")
        if not isinstance(value, list):
            raise self.error(f"'{key}' must be a list of integers, got {value!r}")
        return [self._as_int(f"{key}[{i}]", v, minimum) for i, v in enumerate(value)]


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
# Parameter counting. Each piece is (matrix weights, vector weights): matrices are what
# matmuls multiply by (they set the FLOPs); vectors are norms, biases, sinks, offsets.
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


_ZERO = _Counts()


def _swiglu(d: int, hidden: int, bias: bool = False) -> _Counts:
    """Gate, up and down projections of a SwiGLU FFN (``3 * d * hidden``; biases
    ``2 * hidden + d`` where the family has them)."""
    return _Counts(3 * d * hidden, (2 * hidden + d) if bias else 0)


@dataclass(frozen=True)
class _AttentionShape:
    """The attention of a family, as the spec reports it."""
    kind: str             # 'mha', 'gqa', 'mqa', 'mla', 'v4', 'hybrid'
    n_heads: int
    n_kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    kv_values: int        # values per raw cached entry of an attention layer
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0


def _head_dim(r, d: int, n_heads: int) -> int:
    head_dim = r.opt_int("head_dim", None)
    if head_dim is None:
        if d % n_heads:
            raise r.error(f"'hidden_size' ({d}) is not divisible by 'num_attention_heads' "
                          f"({n_heads}) and no 'head_dim' is given")
        head_dim = d // n_heads
    return head_dim


def _gqa_kind(n_heads: int, n_kv: int) -> str:
    return "mha" if n_kv == n_heads else ("mqa" if n_kv == 1 else "gqa")


def _gqa(r, family: str, d: int) -> tuple[_AttentionShape, _Counts]:
    """q, k, v, o projections of one grouped-query attention layer, with each family's
    biases, q/k norms, output gate and sinks (see the family's ``*Attention.__init__``)."""
    n_heads = r.int("num_attention_heads")
    n_kv = r.opt_int("num_key_value_heads", n_heads)
    if n_heads % n_kv:
        raise r.error(f"'num_attention_heads' ({n_heads}) is not a multiple of "
                      f"'num_key_value_heads' ({n_kv})")
    hd = _head_dim(r, d, n_heads)
    q, kv = n_heads * hd, n_kv * hd
    q_out = 2 * q if family == "qwen3_next" else q     # Qwen3-Next: q_proj also emits a gate
    matrix = d * q_out + 2 * d * kv + q * d
    vector = 0
    if family in ("qwen2", "qwen2_moe"):                # bias on q, k, v (never on o)
        vector += q + 2 * kv
    elif family == "glm4_moe":                          # attention_bias on q, k, v; o never
        vector += (q + 2 * kv) if r.flag("attention_bias", False) else 0
    elif family == "ernie4_5_moe":                      # use_bias on q, k, v and o
        vector += (q + 2 * kv + d) if r.flag("use_bias", False) else 0
    elif family in ("llama", "qwen3", "qwen3_moe", "gpt_oss", "olmoe", "llama4_text",
                    "qwen3_next"):
        if r.flag("attention_bias", family == "gpt_oss"):
            vector += q_out + 2 * kv + d                # bias on q, k, v and o
    # mistral, mixtral, minimax_m2: the Hugging Face classes build these without bias.
    if family in ("qwen3", "qwen3_moe", "qwen3_next") or (
            family == "glm4_moe" and r.flag("use_qk_norm", False)):
        vector += 2 * hd                                # RMSNorm over each q and k head
    if family == "olmoe":                               # RMSNorm over all of q and all of k
        vector += d + (d // n_heads) * n_kv
    if family == "minimax_m2":
        vector += q + kv
    # llama4_text: its q/k norm is an L2 norm without weights.
    if family == "gpt_oss":
        vector += n_heads                               # one attention-sink logit per head
    kind = "hybrid" if family == "qwen3_next" else _gqa_kind(n_heads, n_kv)
    return _AttentionShape(kind, n_heads, n_kv, hd, hd, 2 * kv), _Counts(matrix, vector)


def _mla(r, d: int) -> tuple[_AttentionShape, _Counts]:
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
    shape = _AttentionShape("mla", n_heads, n_heads, qk, v_dim, kv_lora + rope, kv_lora, rope)
    return shape, _Counts(matrix, vector)


def _layer_kinds(r, family: str, n_layers: int) -> tuple[tuple[str, int | None], ...]:
    """Per layer: ('full' | 'sliding' | 'linear', window).

    Follows the Hugging Face classes: an explicit ``layer_types`` list wins; GPT-OSS
    alternates sliding/full starting with sliding; Mistral/Mixtral window every layer when
    ``sliding_window`` is set; Qwen windows layers ``>= max_window_layers`` only when
    ``use_sliding_window`` is true; Qwen3-Next makes every ``full_attention_interval``-th
    layer full and the others Gated DeltaNet; Llama 4 runs chunked attention (at most
    ``attention_chunk_size`` cached tokens, counted as that window) on its RoPE layers and
    full attention on the NoPE ones (``no_rope_layers``); the others never window.
    """
    window = r.opt_int("sliding_window", None)
    layer_types = r.cfg.get("layer_types")
    known = {"full_attention": "full", "sliding_attention": "sliding",
             "chunked_attention": "sliding", "linear_attention": "linear"}
    if layer_types is None and family == "qwen3_next":
        interval = r.opt_int("full_attention_interval", 4)
        layer_types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                       for i in range(n_layers)]
    if layer_types is None and family == "llama4_text":
        no_rope = r.cfg.get("no_rope_layers")
        if no_rope is None:
            interval = r.opt_int("no_rope_layer_interval", 4)
            no_rope = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if not isinstance(no_rope, list) or len(no_rope) != n_layers:
            raise r.error(f"'no_rope_layers' must be a list of {n_layers} entries")
        chunked = r.has("attention_chunk_size")
        layer_types = ["chunked_attention" if (rope and chunked) else "full_attention"
                       for rope in no_rope]
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise r.error(f"'layer_types' must be a list of {n_layers} entries "
                          "(one per hidden layer)")
        unknown = sorted({t for t in layer_types if t not in known})
        if unknown:
            raise r.error(f"unsupported layer type(s) {unknown} in 'layer_types'; "
                          f"supported: {sorted(known)}")
        if "linear_attention" in layer_types and family != "qwen3_next":
            raise r.error(f"'linear_attention' layers are only understood for 'qwen3_next', "
                          f"not {family!r}")
        out = []
        for t in layer_types:
            kind = known[t]
            if t == "chunked_attention":
                out.append((kind, r.int("attention_chunk_size")))
            elif kind == "sliding":
                if window is None:
                    raise r.error("missing 'sliding_window' (needed by the sliding_attention "
                                  "layers)")
                out.append((kind, window))
            else:
                out.append((kind, None))
        return tuple(out)
    if family == "gpt_oss":
        if window is None:
            raise r.error("missing 'sliding_window'")
        return tuple(("sliding", window) if i % 2 == 0 else ("full", None)
                     for i in range(n_layers))
    if family in ("mistral", "mixtral") and window is not None:
        return (("sliding", window),) * n_layers
    if family in ("qwen2", "qwen3") + _QWEN_MOE and r.flag("use_sliding_window", False) \
            and window is not None:
        first = r.int("max_window_layers", minimum=0)
        return tuple(("sliding", window) if i >= first else ("full", None)
                     for i in range(n_layers))
    return (("full", None),) * n_layers


def _gated_deltanet(r, d: int) -> tuple[_Counts, int]:
    """Qwen3-Next's linear-attention layer (``Qwen3NextGatedDeltaNet``): its weights and the
    values of its per-sequence state (recurrent ``[v_heads, k_dim, v_dim]`` plus the
    convolution's ``conv_dim x conv_kernel`` window, as the Hugging Face cache keeps it)."""
    nk, nv = r.int("linear_num_key_heads"), r.int("linear_num_value_heads")
    dk, dv = r.int("linear_key_head_dim"), r.int("linear_value_head_dim")
    kernel = r.int("linear_conv_kernel_dim")
    if nv % nk:
        raise r.error(f"'linear_num_value_heads' ({nv}) is not a multiple of "
                      f"'linear_num_key_heads' ({nk})")
    key_dim, value_dim = nk * dk, nv * dv
    conv_dim = 2 * key_dim + value_dim
    matrix = (conv_dim * kernel                        # depthwise conv1d, no bias
              + d * (2 * key_dim + 2 * value_dim)      # in_proj_qkvz
              + d * 2 * nv                             # in_proj_ba
              + value_dim * d)                         # out_proj
    vector = 2 * nv + dv                               # dt_bias, A_log, gated RMSNorm
    return _Counts(matrix, vector), nv * dk * dv + conv_dim * kernel


def _dsa_indexer(r, d: int, shape: _AttentionShape, counts: _Counts, n_layers: int):
    """DeepSeek-V3.2's lightning indexer on every layer (reference ``inference/model.py``,
    ``Indexer``): ``wq_b`` (q_lora_rank -> index_n_heads * index_head_dim), ``wk``
    (d -> index_head_dim), ``k_norm`` (a LayerNorm: weight and bias), ``weights_proj``
    (d -> index_n_heads); each token caches one indexer key of ``index_head_dim`` values."""
    q_lora = r.opt_int("q_lora_rank", None)
    if q_lora is None:
        raise r.error("missing 'q_lora_rank' (deepseek_v32's indexer projects the low-rank query)")
    ih, idim, topk = r.int("index_n_heads"), r.int("index_head_dim"), r.int("index_topk")
    counts = counts + _Counts(q_lora * ih * idim + d * idim + d * ih, 2 * idim)
    layer = LayerAttention("dsa", None, shape.kv_values + idim, shape.n_heads, shape.qk_head_dim,
                           shape.v_head_dim, index_head_dim=idim, index_n_heads=ih, topk=topk)
    return counts, [layer] * n_layers


@dataclass
class _Layout:
    """Everything from_hf_config needs, per family."""
    shape: _AttentionShape
    attn_counts: list               # _Counts per layer
    attn_layers: list               # LayerAttention per layer
    is_moe: list                    # bool per layer
    dense_ffn: Any = None           # callable -> _Counts
    n_experts: int = 0
    top_k: int = 0
    n_shared: int = 0
    expert: _Counts = _ZERO
    shared: _Counts = _ZERO
    routers: list = field(default_factory=list)   # _Counts per MoE layer
    layer_norms: _Counts = _ZERO    # per layer
    final: _Counts = _ZERO          # final norm and anything else outside the layers
    head_bias: int = 0
    residual: _Counts = _ZERO       # mHC, all layers and the head
    mtp: int = 0
    n_hash_layers: int = 0
    hash_table_entries: int = 0
    notes: list = field(default_factory=list)


def _gqa_layers(r, family, d, n_layers, shape, counts, linear=None):
    layers, per_layer = [], []
    for kind, window in _layer_kinds(r, family, n_layers):
        if kind == "linear":
            lin_counts, state = linear
            per_layer.append(lin_counts)
            layers.append(LayerAttention("linear", None, 0, shape.n_heads, 0, 0,
                                         state_values=state))
        else:
            per_layer.append(counts)
            layers.append(LayerAttention(kind, window, shape.kv_values, shape.n_heads,
                                         shape.qk_head_dim, shape.v_head_dim))
    return layers, per_layer


def _deepseek_v4(r, d: int, n_layers: int, vocab: int) -> _Layout:
    """DeepSeek-V4 (``model_type: deepseek_v4``), counted as its reference
    ``inference/model.py`` builds it and as the released checkpoints store it:

    * attention, every layer: ``wq_a`` (d -> q_lora_rank), ``q_norm``, ``wq_b`` (q_lora ->
      n_heads * head_dim), ``wkv`` (d -> head_dim: ONE head that is both key and value, RoPE
      on its last ``qk_rope_head_dim`` dims), ``kv_norm``, grouped low-rank output ``wo_a``
      (``o_groups`` blocks of n_heads * head_dim / o_groups -> o_lora_rank) and ``wo_b``
      (o_groups * o_lora_rank -> d), one ``attn_sink`` per head;
    * compressor on every layer with ``compress_ratio`` m > 0: ``wkv`` and ``wgate``
      (d -> c * head_dim), ``ape`` (m x c * head_dim), ``norm`` (head_dim), with c = 2 for
      the overlapping ratio-4 compressor, else 1;
    * lightning indexer on ratio-4 (CSA) layers only: ``wq_b`` (q_lora -> index_n_heads *
      index_head_dim), ``weights_proj`` (d -> index_n_heads) and its own overlapping
      compressor of width ``index_head_dim``;
    * MoE on every layer: router ``d x E`` (its bias only on score-routed layers: the first
      ``num_hash_layers`` route by a ``tid2eid`` table, integers with requires_grad=False,
      counted in ``hash_table_entries``, not as weights), routed and shared SwiGLU experts;
    * mHC with ``hc_mult`` n streams: per layer, for attention and for the FFN, ``hc_fn``
      ((2 + n) * n x n * d), ``hc_base`` ((2 + n) * n) and ``hc_scale`` (3); at the head
      ``hc_head_fn`` (n x n * d), ``hc_head_base`` (n), ``hc_head_scale`` (1);
    * ``compress_ratios`` has one entry per main layer, then one per MTP layer; an MTP
      layer adds ``e_proj``, ``h_proj`` (d x d each), ``enorm``, ``hnorm``, ``norm``, its own
      head-side mHC weights and one block, and shares the embedding and the head.
    """
    if r.opt_int("num_key_value_heads", 1) != 1:
        raise r.error(f"'num_key_value_heads' must be 1 for deepseek_v4 (one shared K=V head), "
                      f"got {r.cfg.get('num_key_value_heads')!r}")
    n_heads = r.int("num_attention_heads")
    hd = r.int("head_dim")
    rope = r.int("qk_rope_head_dim")
    if rope > hd:
        raise r.error(f"'qk_rope_head_dim' ({rope}) exceeds 'head_dim' ({hd})")
    q_lora = r.int("q_lora_rank")
    groups, o_lora = r.int("o_groups"), r.int("o_lora_rank")
    if n_heads % groups:
        raise r.error(f"'num_attention_heads' ({n_heads}) is not a multiple of "
                      f"'o_groups' ({groups})")
    window = r.int("sliding_window")
    ih, idim, topk = r.int("index_n_heads"), r.int("index_head_dim"), r.int("index_topk")
    n_mtp = r.opt_int("num_nextn_predict_layers", 0, minimum=0)
    ratios = r.int_list("compress_ratios", minimum=0)
    if len(ratios) != n_layers + n_mtp:
        raise r.error(f"'compress_ratios' has {len(ratios)} entries; expected "
                      f"num_hidden_layers + num_nextn_predict_layers = {n_layers + n_mtp}")
    E, k = r.int("n_routed_experts"), r.int("num_experts_per_tok")
    f = r.int("moe_intermediate_size")
    n_shared = r.opt_int("n_shared_experts", 0, minimum=0)
    n_hash = r.opt_int("num_hash_layers", 0, minimum=0)
    if n_hash > n_layers:
        raise r.error(f"'num_hash_layers' ({n_hash}) exceeds 'num_hidden_layers' ({n_layers})")
    hc = r.opt_int("hc_mult", 1)
    biased = r.opt_str("topk_method", "noaux_tc") == "noaux_tc"

    base = _Counts(d * q_lora + q_lora * n_heads * hd + d * hd
                   + (n_heads * hd // groups) * o_lora * groups + groups * o_lora * d,
                   q_lora + hd + n_heads)

    def attention(m: int) -> tuple[_Counts, LayerAttention]:
        c = base
        if m:
            w = 2 if m == 4 else 1                     # overlapping compressor on ratio 4
            c = c + _Counts(2 * d * w * hd, m * w * hd + hd)
        if m == 4:                                     # lightning indexer (CSA)
            c = c + _Counts(q_lora * ih * idim + d * ih + 2 * d * 2 * idim,
                            m * 2 * idim + idim)
        kind = "window" if m == 0 else ("csa" if m == 4 else "hca")
        layer = LayerAttention(kind, window, hd, n_heads, hd, hd, compress_ratio=m,
                               head_dim=hd, index_head_dim=idim if m == 4 else 0,
                               index_n_heads=ih if m == 4 else 0, topk=topk if m == 4 else 0)
        return c, layer

    mix = (2 + hc) * hc
    hc_layer = _Counts(2 * mix * hc * d, 2 * (mix + 3)) if hc > 1 else _ZERO
    hc_head = _Counts(hc * hc * d, hc + 1) if hc > 1 else _ZERO
    router = _Counts(d * E, E if biased else 0)
    counts, layers = zip(*(attention(m) for m in ratios[:n_layers]))
    lay = _Layout(
        shape=_AttentionShape("v4", n_heads, 1, hd, hd, hd, qk_rope_head_dim=rope),
        attn_counts=list(counts), attn_layers=list(layers), is_moe=[True] * n_layers,
        n_experts=E, top_k=k, n_shared=n_shared, expert=_swiglu(d, f),
        shared=_swiglu(d, f * n_shared),
        routers=[_Counts(d * E, 0) if i < n_hash else router for i in range(n_layers)],
        layer_norms=_Counts(0, 2 * d), final=_Counts(0, d),
        residual=hc_layer * n_layers + hc_head,
        n_hash_layers=n_hash, hash_table_entries=n_hash * vocab * k)
    for m in ratios[n_layers:]:
        block = attention(m)[0] + lay.layer_norms + router + lay.shared + lay.expert * E
        lay.mtp += (_Counts(2 * d * d, 3 * d) + block + hc_layer + hc_head).total
    if n_hash:
        lay.notes.append(f"{n_hash} hash-routed layers: their tid2eid tables "
                         f"({n_hash} x {vocab} x {k} integers) are not counted as weights")
    return lay


def _deepseek_mtp(r, family, d, n_layers, attn_counts, layer_norms, moe_layer, dense):
    """DeepSeek-V3-style MTP modules (also GLM-4.5's): per module ``enorm``, ``hnorm``,
    ``eh_proj`` (2d -> d), one decoder layer and ``shared_head.norm``; the embedding and the
    head are shared with the main model."""
    n_mtp = r.opt_int("num_nextn_predict_layers", 0, minimum=0)
    total = 0
    for j in range(n_mtp):
        ffn = moe_layer(n_layers + j) or dense()
        total += (_Counts(2 * d * d, 3 * d) + attn_counts + layer_norms + ffn).total
    return total


def _moe_layout(r, family: str, d: int, n_layers: int, vocab: int) -> _Layout:
    """Attention and FFN layout of every family but DeepSeek-V4."""
    linear = _gated_deltanet(r, d) if family == "qwen3_next" else None
    if family in _DEEPSEEK:
        shape, counts = _mla(r, d)
    else:
        shape, counts = _gqa(r, family, d)
    layers, per_layer = _gqa_layers(r, family, d, n_layers, shape, counts, linear)
    if family == "deepseek_v32":
        counts, layers = _dsa_indexer(r, d, shape, counts, n_layers)
        per_layer = [counts] * n_layers
        shape = replace(shape, kv_values=layers[0].entry_values)
    lay = _Layout(shape, per_layer, layers, [False] * n_layers,
                  layer_norms=_Counts(0, 2 * d), final=_Counts(0, d))

    mlp_bias = (family == "llama" and r.flag("mlp_bias", False)) or (
        family == "ernie4_5_moe" and r.flag("use_bias", False))
    dense_key = "intermediate_size_mlp" if family == "llama4_text" else "intermediate_size"
    lay.dense_ffn = lambda: _swiglu(d, r.int(dense_key), bias=mlp_bias)
    if family == "ernie4_5_moe" and r.flag("use_bias", False) and not r.flag(
            "tie_word_embeddings", True):
        lay.head_bias = vocab                            # lm_head bias=use_bias

    E = k = 0
    router = _ZERO
    moe = lambda i: False                               # noqa: E731
    if family in _DENSE:
        pass
    elif family in ("mixtral", "olmoe", "minimax_m2"):
        E = r.int("num_local_experts" if family != "olmoe" else "num_experts")
        k = r.int("num_experts_per_tok")
        lay.expert = _swiglu(d, r.int("intermediate_size"))
        router = _Counts(d * E, E if family == "minimax_m2" else 0)  # M2: e_score_correction_bias
        moe = lambda i: True                            # noqa: E731
    elif family in _QWEN_MOE + ("qwen3_next",):
        E, k = r.int("num_experts"), r.int("num_experts_per_tok")
        lay.expert = _swiglu(d, r.int("moe_intermediate_size"))
        router = _Counts(d * E, 0)
        step = r.opt_int("decoder_sparse_step", 1)
        mlp_only = r.cfg.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
            raise r.error(f"'mlp_only_layers' must be a list of layer indices, got {mlp_only!r}")
        moe = lambda i: i not in mlp_only and (i + 1) % step == 0   # noqa: E731
        if family in ("qwen2_moe", "qwen3_next"):
            shared_hidden = r.int("shared_expert_intermediate_size", minimum=0)
            if shared_hidden:
                lay.n_shared = 1
                lay.shared = _swiglu(d, shared_hidden) + _Counts(d, 0)  # + shared_expert_gate
    elif family in _DEEPSEEK + ("glm4_moe",):
        E = r.opt_int("n_routed_experts", 0)
        if E:
            k = r.int("num_experts_per_tok")
            f = r.int("moe_intermediate_size")
            lay.expert = _swiglu(d, f)
            lay.n_shared = r.opt_int("n_shared_experts", 0, minimum=0)
            lay.shared = _swiglu(d, f * lay.n_shared)
            default_method = "greedy" if family == "deepseek_v2" else "noaux_tc"
            has_bias = family == "glm4_moe" or r.opt_str("topk_method",
                                                         default_method) == "noaux_tc"
            router = _Counts(d * E, E if has_bias else 0)
        first = r.opt_int("first_k_dense_replace", 0, minimum=0)
        freq = r.opt_int("moe_layer_freq", 1) if family != "glm4_moe" else 1
        moe = lambda i: bool(E) and i >= first and i % freq == 0     # noqa: E731
    elif family == "llama4_text":
        E, k = r.int("num_local_experts"), r.int("num_experts_per_tok")
        lay.expert = _swiglu(d, r.int("intermediate_size"))
        lay.n_shared = 1                                 # Llama4TextMoe.shared_expert
        lay.shared = _swiglu(d, r.int("intermediate_size"))
        router = _Counts(d * E, 0)
        moe_layers = r.cfg.get("moe_layers")
        if moe_layers is None:
            step = r.opt_int("interleave_moe_layer_step", 1)
            moe_layers = list(range(step - 1, n_layers, step))
        if not isinstance(moe_layers, list) or not all(isinstance(i, int) for i in moe_layers):
            raise r.error(f"'moe_layers' must be a list of layer indices, got {moe_layers!r}")
        moe = lambda i: i in moe_layers                 # noqa: E731
    elif family == "ernie4_5_moe":
        E, k = r.int("moe_num_experts"), r.int("moe_k")
        f = r.int("moe_intermediate_size")
        lay.expert = _swiglu(d, f, bias=mlp_bias)
        lay.n_shared = r.opt_int("moe_num_shared_experts", 0, minimum=0)
        if lay.n_shared:
            lay.shared = _swiglu(d, f * lay.n_shared, bias=mlp_bias)
        router = _Counts(d * E, E)                       # gate + moe_statics correction bias
        start = r.opt_int("moe_layer_start_index", 0, minimum=0)
        end = r.cfg.get("moe_layer_end_index", -1)
        end = n_layers - 1 if end in (-1, None) else r.int("moe_layer_end_index", minimum=0)
        interval = r.opt_int("moe_layer_interval", 1)
        moe = lambda i: (i + 1) % interval == 0 and start <= i <= end   # noqa: E731
    else:  # gpt_oss
        E = r.int("num_local_experts")
        keys = [key for key in ("num_experts_per_tok", "experts_per_token") if r.has(key)]
        if not keys:
            raise r.error("missing 'num_experts_per_tok' (or 'experts_per_token')")
        picks = {r.int(key) for key in keys}
        if len(picks) > 1:
            raise r.error("'num_experts_per_tok' and 'experts_per_token' disagree")
        k = picks.pop()
        hidden = r.int("intermediate_size")
        # gate_up_proj (d -> 2*hidden) and down_proj (hidden -> d), each with a bias
        lay.expert = _Counts(3 * d * hidden, 2 * hidden + d)
        router = _Counts(d * E, E)
        moe = lambda i: True                            # noqa: E731
    if E and k > E:
        raise r.error(f"'num_experts_per_tok' ({k}) exceeds the number of experts ({E})")
    lay.n_experts, lay.top_k = E, k
    lay.is_moe = [bool(E) and moe(i) for i in range(n_layers)]
    lay.routers = [router] * sum(lay.is_moe)

    # --- multi-token prediction ------------------------------------------------------------
    if family in _DEEPSEEK + ("glm4_moe",):
        def moe_ffn(i):
            return (router + lay.shared + lay.expert * E) if moe(i) and E else None

        lay.mtp = _deepseek_mtp(r, family, d, n_layers, counts, lay.layer_norms, moe_ffn,
                                lay.dense_ffn)
    else:
        mtp_keys = {"ernie4_5_moe": "num_nextn_predict_layers", "qwen3_next": None,
                    "minimax_m2": "num_mtp_modules"}
        if r.opt_int("num_nextn_predict_layers", 0, minimum=0) and family not in mtp_keys:
            raise r.error(f"'num_nextn_predict_layers' is only understood for "
                          f"{list(_DEEPSEEK + ('glm4_moe', 'deepseek_v4'))} configs, "
                          f"not {family!r}")
        for key in ("num_nextn_predict_layers", "num_mtp_modules", "mtp_num_hidden_layers"):
            if family in mtp_keys and r.opt_int(key, 0, minimum=0):
                lay.notes.append(f"'{key}' = {r.cfg[key]}: the checkpoint's MTP modules are "
                                 "not counted (the Hugging Face class does not build them)")
    if family == "llama4_text":
        lay.notes.append("chunked-attention layers cache at most 'attention_chunk_size' "
                         "tokens: counted as a sliding window of that size (an upper bound)")
    return lay


def from_hf_config(config, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` and count what the model costs.

    Args:
        config: the config as a dict, a JSON string, or a path (``str`` or
            ``pathlib.Path``) to the file or to the model folder holding it. A
            ``text_config`` inside (multimodal wrappers such as Llama 4) is followed to the
            language model's own config.
        name: display name; defaults to ``_name_or_path``, then the file's folder (for a
            ``config.json``) or stem, then ``model_type``.

    Returns:
        a frozen :class:`ModelSpec`.

    Raises:
        ValueError: malformed JSON, a missing or ill-typed key (the message names it), an
            unsupported ``model_type`` (the message names it and lists the supported ones)
            or a layout the reader does not know. It never guesses a number it cannot read.

    Counting rules, per layer (``d`` = ``hidden_size``): attention as the family's Hugging
    Face class builds it (q, k, v, o with the family's biases, Qwen3/GLM per-head q/k norms,
    OLMoE/MiniMax full-width q/k norms, Qwen3-Next's gated q, GPT-OSS sinks; MLA's low-rank
    factors; DeepSeek-V4: see :func:`_deepseek_v4`; Qwen3-Next's Gated DeltaNet layers: see
    :func:`_gated_deltanet`), two RMSNorms of ``d``; a SwiGLU FFN is ``3 * d * hidden``; an MoE
    layer is its router (``d * n_experts``, plus the selection bias where the family has one:
    DeepSeek-V3 ``noaux_tc``, GLM-4.5, MiniMax-M2, ERNIE 4.5, GPT-OSS), its routed experts
    and its shared experts (with Qwen's ``d -> 1`` shared-expert gate). Then one final
    RMSNorm, the embedding and the head (once if tied). What a count leaves out is listed in
    :attr:`ModelSpec.notes`.
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
    if family == "llama4":
        raise r.error("model_type 'llama4' without a 'text_config': pass the full Llama 4 "
                      "config.json (its 'text_config' has model_type 'llama4_text')")
    name = name or outer_name or cfg.get("_name_or_path") or path_name or family

    d = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    tied = r.flag("tie_word_embeddings", False)   # every supported family defaults to untied
    if family == "deepseek_v4":
        lay = _deepseek_v4(r, d, n_layers, vocab)
    else:
        lay = _moe_layout(r, family, d, n_layers, vocab)

    n_moe = sum(lay.is_moe)
    n_dense = n_layers - n_moe
    dense_ffn = lay.dense_ffn() if n_dense else _ZERO
    attention = sum(lay.attn_counts, _ZERO)
    norms = lay.layer_norms * n_layers + lay.final
    dense_total = dense_ffn * n_dense
    routed_total = lay.expert * (lay.n_experts * n_moe)
    routers = sum(lay.routers, _ZERO)
    shared_total = lay.shared * n_moe
    embedding = vocab * d
    head = _Counts(vocab * d, lay.head_bias)

    body = attention + norms + dense_total + routers + shared_total + lay.residual
    total = body.total + routed_total.total + embedding + (0 if tied else head.total)
    active = body + lay.expert * (lay.top_k * n_moe) + head
    s = lay.shape
    return ModelSpec(
        name=str(name), family=family, n_layers=n_layers, d_model=d, vocab_size=vocab,
        attention=s.kind, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads,
        qk_head_dim=s.qk_head_dim, v_head_dim=s.v_head_dim, kv_values_per_layer=s.kv_values,
        kv_lora_rank=s.kv_lora_rank, qk_rope_head_dim=s.qk_rope_head_dim,
        layers_attention=tuple(lay.attn_layers),
        n_routed_experts=lay.n_experts if n_moe else 0,
        n_experts_per_tok=lay.top_k if n_moe else 0,
        n_shared_experts=lay.n_shared if n_moe else 0, n_moe_layers=n_moe,
        n_dense_layers=n_dense, expert_params=lay.expert.total if n_moe else 0,
        shared_expert_params=lay.shared.total if n_moe else 0,
        router_params=lay.routers[-1].total if n_moe else 0,
        tie_word_embeddings=tied, embedding_params=embedding, lm_head_params=head.total,
        attention_params=attention.total, dense_ffn_params=dense_total.total,
        routed_expert_params=routed_total.total, norm_params=norms.vector,
        total_params=total, active_params=active.total, active_matmul_params=active.matrix,
        mtp_params=lay.mtp, router_total_params=routers.total,
        shared_expert_total_params=shared_total.total, residual_params=lay.residual.total,
        n_hash_layers=lay.n_hash_layers, hash_table_entries=lay.hash_table_entries,
        expert_matrix_params=lay.expert.matrix if n_moe else 0, notes=tuple(lay.notes),
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
