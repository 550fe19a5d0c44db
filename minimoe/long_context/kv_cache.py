"""How big the KV cache is, per attention variant: from the config, and from a built cache.

Decoding a token reads the cache of every earlier token in every layer, so its size decides
how long a context fits in memory and how fast decoding can go. Values stored per token per
layer:

    gqa (MHA, GQA, MQA)  2 * n_kv_heads * head_dim            keys and values of every KV head
    sliding              2 * n_kv_heads * head_dim            ... but only the last `window` tokens
    mla                  kv_lora_rank + qk_rope_head_dim      one latent + one shared rope key
    sparse               2 * n_kv_heads * head_dim + index_head_dim   K/V plus the indexer key
    compressed (V4)      (head_dim [+ index_head_dim in CSA]) / compress_ratio, per layer,
                         plus a fixed window   (``compressed_kv_values_per_token``, below)

Top-k sparse attention *reads* only ``sparse_top_k`` tokens' K/V per step but still *stores* all
of them (any one may be picked later), plus the indexer keys it scans every step.
``cache_nbytes`` measures a real cache, so the formulas are tested against the arrays.
"""

from __future__ import annotations

import jax

from ..config import ModelConfig


def cache_values_per_token(cfg: ModelConfig) -> int:
    """Values one token adds to the cache of ONE layer (see the table above)."""
    kv = 2 * cfg.kv_heads * cfg.head_dim
    if cfg.attention in ("gqa", "sliding"):
        return kv
    if cfg.attention == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if cfg.attention == "sparse":
        return kv + cfg.index_head_dim
    if cfg.attention == "compressed":
        raise ValueError("attention='compressed' caches a different amount per layer: use "
                         "compressed_kv_values_per_token / compressed_kv_cache_bytes")
    raise ValueError(f"unknown attention {cfg.attention!r}")


def kv_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 4, per_layer: bool = False) -> int:
    """Cache bytes one token costs: in the whole model (all ``n_layers``), or in one layer.

    bytes_per_value: 4 for float32, 2 for bfloat16, 1 for fp8. For ``sliding`` this is the cost
    of a token while it is inside the window; the total stops growing at the window
    (``kv_cache_bytes``).
    """
    layers = 1 if per_layer else cfg.n_layers
    return layers * cache_values_per_token(cfg) * bytes_per_value


def cache_slots(cfg: ModelConfig, context_len: int) -> int:
    """Token slots a cache for ``context_len`` tokens holds: the window caps a sliding cache."""
    if cfg.attention == "sliding":
        return min(context_len, cfg.sliding_window)
    return context_len


def kv_cache_bytes(cfg: ModelConfig, context_len: int, batch: int = 1,
                   bytes_per_value: int = 4) -> int:
    """Bytes of the whole model's cache for ``batch`` sequences of ``context_len`` tokens.

    Equals ``cache_nbytes(model.init_cache(batch, context_len))`` at matching precision;
    ``attention='compressed'`` is counted by ``compressed_kv_cache_bytes``.
    """
    if cfg.attention == "compressed":
        return compressed_kv_cache_bytes(cfg, context_len, batch, bytes_per_value)
    return batch * cache_slots(cfg, context_len) * kv_bytes_per_token(cfg, bytes_per_value)


def cache_nbytes(cache) -> int:
    """Bytes of the arrays of a built cache: one layer's (a NamedTuple) or a model's (a tuple
    of them). The ``pos`` counters are bookkeeping, not cache, and are left out."""
    if hasattr(cache, "_fields"):  # one layer's NamedTuple cache
        return sum(cache_nbytes(getattr(cache, f)) for f in cache._fields if f != "pos")
    if isinstance(cache, (tuple, list)):
        return sum(cache_nbytes(c) for c in cache)
    if isinstance(cache, dict):
        return sum(cache_nbytes(c) for c in cache.values())
    leaves = jax.tree_util.tree_leaves(cache)
    return sum(x.size * x.dtype.itemsize for x in leaves)


# --- DeepSeek-V4 compressed attention (CSA / HCA / window-only layers) -----------------------

def compressed_kv_fixed_values(compress_ratio: int, head_dim: int, index_head_dim: int,
                               has_indexer: bool, sliding_window: int) -> int:
    """Values ONE V4 attention layer caches per sequence whatever its length (once the context
    passes the window): the ring of ``sliding_window`` raw entries, plus each compressor's
    state, the key and gate projections of the last (1 + overlap) * ratio tokens with
    (1 + overlap) * dim channels each (overlap = CSA: the layer has the indexer)."""
    fixed = sliding_window * head_dim
    if compress_ratio:
        c = 2 if has_indexer else 1
        fixed += 2 * (c * compress_ratio) * (c * head_dim)
        if has_indexer:
            fixed += 2 * (c * compress_ratio) * (c * index_head_dim)
    return fixed


def compressed_kv_cache_bytes(cfg: ModelConfig, context_len: int, batch: int = 1,
                              bytes_per_value: int = 4) -> int:
    """Bytes of a whole ``attention='compressed'`` model's cache for ``batch`` sequences of
    ``context_len`` tokens, as ``init_cache`` allocates it: per layer the fixed part (window of
    ``min(sliding_window, context_len)`` slots, compressor states) plus ``context_len // ratio``
    entries. Equals ``cache_nbytes(model.init_cache(batch, context_len))`` (tested)."""
    if cfg.attention != "compressed":
        raise ValueError(f"compressed_kv_cache_bytes needs attention='compressed', got {cfg.attention!r}")
    window = min(cfg.sliding_window, context_len)
    values = 0
    for layer in range(cfg.n_layers):
        m = cfg.layer_compress_ratio(layer)
        csa = m > 0 and cfg.is_csa_layer(layer)
        values += compressed_kv_fixed_values(m, cfg.head_dim, cfg.index_head_dim, csa, window)
        if m:
            per_entry = compressed_kv_values_per_token(m, cfg.head_dim, cfg.index_head_dim, csa) * m
            values += (context_len // m) * round(per_entry)
    return batch * values * bytes_per_value


def max_context(cfg: ModelConfig, memory_bytes: float, batch: int = 1,
                bytes_per_value: int = 4) -> int | None:
    """Longest context whose cache (``batch`` sequences) fits in ``memory_bytes``.

    ``floor(memory_bytes / (batch * kv_bytes_per_token))``, the inverse of ``kv_cache_bytes``.
    Returns ``None`` when no context is too long: a sliding-window cache whose full ring of
    ``sliding_window`` slots fits stops growing before it runs out of memory.
    """
    if not memory_bytes >= 0:
        raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes!r}")
    n = int(memory_bytes // (batch * kv_bytes_per_token(cfg, bytes_per_value)))
    if cfg.attention == "sliding" and n >= cfg.sliding_window:
        return None
    return n


def compressed_kv_values_per_token(compress_ratio: int, head_dim: int, index_head_dim: int,
                                   has_indexer: bool) -> float:
    """Values one token of context adds to the *compressed* cache of one DeepSeek-V4 layer.

    A layer with ``compress_ratio`` m > 0 keeps one compressed entry per m tokens: one shared
    K=V vector of ``head_dim`` values, plus, on CSA layers (the ones with a lightning
    indexer), one indexer key of ``index_head_dim`` values. Per token of context that is

        ``(head_dim + (index_head_dim if has_indexer else 0)) / compress_ratio``

    and 0 for ``compress_ratio`` 0 (a window-only layer, whose cache stops growing at the
    sliding window). This is the long-context slope of the cache; the window of raw entries
    every layer also keeps is a fixed cost per sequence, not counted here
    [DeepSeek-V4 technical report; V4 ``inference/model.py``].
    """
    if compress_ratio == 0:
        return 0.0
    return (head_dim + (index_head_dim if has_indexer else 0)) / compress_ratio
