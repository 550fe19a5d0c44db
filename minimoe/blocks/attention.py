"""Causal self-attention with grouped key/value heads and a KV cache.

One module covers the classic family:
- MHA (Vaswani et al. 2017): every query head has its own key/value head (``n_kv_heads == n_heads``);
- GQA (Ainslie et al. 2023): groups of query heads share a key/value head;
- MQA (Shazeer 2019): all query heads share one key/value head (``n_kv_heads == 1``).
Fewer key/value heads means a smaller KV cache per token, which is what long contexts pay for.
An optional ``window`` turns it into sliding-window attention (Beltagy et al. 2020, Longformer;
Mistral 7B, Jiang et al. 2023): a query sees itself and the ``window - 1`` tokens before it, so
its cache is a ring buffer of ``window`` slots (written at ``pos % window``) instead of
``max_len`` slots, and the memory of a long context stops growing once it passes the window.

Every attention variant in minimoe follows the same contract:
``__call__(x, cache=None) -> (y, cache)`` and ``init_cache(batch, max_len) -> cache``.
Without a cache the whole sequence is processed causally. With a cache, the new tokens are
written at ``cache.pos`` and attend to everything cached before them, so prefill and
token-by-token decoding are the same code path.

A cache of ``max_len`` slots holds ``max_len`` tokens (the sliding ring excepted: it keeps the
last ``window`` by design). Writing past its end is refused (``check_cache_room``): with a
concrete ``cache.pos`` (eager calls) it is a ``ValueError``; under ``jit`` the position is
only known when the step runs, so the outputs of an overflowing call are NaN -- never the
silently wrong numbers ``dynamic_update_slice`` would give by clamping the write index.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..config import ModelConfig
from ..fast.tiled_attention import tiled_attention
from .ffn import init_weight, linear
from .norm import RMSNorm
from .rope import apply_rope, rope_angles

NEG_INF = -1e30  # large negative instead of -inf: a fully masked row stays finite


def masked_softmax(scores: jax.Array, mask: jax.Array, sink: jax.Array | None = None) -> jax.Array:
    """Attention probabilities: ``softmax`` over the last axis of ``scores`` where ``mask`` is
    True (broadcast against ``scores``), 0 where it is False (a row with no visible key stays
    finite: uniform, or all on the sink).

    ``sink`` (optional, broadcast to ``scores.shape[:-1]``): one more logit per row with no
    value behind it (an attention sink), ``p = softmax([s ; sink])[:-1]``, so a row's
    probabilities may sum to less than 1. Every attention variant of the package ends here.
    """
    scores = jnp.where(mask, scores, NEG_INF)
    if sink is None:
        return jax.nn.softmax(scores, axis=-1)
    sink_col = jnp.broadcast_to(sink, scores.shape[:-1])[..., None].astype(scores.dtype)
    return jax.nn.softmax(jnp.concatenate([scores, sink_col], axis=-1), axis=-1)[..., :-1]


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far.

    k, v: [batch, slots, n_kv_heads, head_dim] (keys already rotated by RoPE). ``slots`` is
    ``max_len`` for full attention; for sliding-window attention it is ``min(window, max_len)``
    and the buffer is a ring: absolute position p lives in slot ``p % slots`` (see
    ``ring_positions``).
    pos: int32 scalar, the number of tokens written so far.
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None = None) -> jax.Array:
    """[q, k] boolean mask: query at q_pos may attend to key at k_pos.

    Causal: k_pos <= q_pos. With a window w, also q_pos - k_pos < w (the query sees itself and
    the w - 1 tokens before it).
    """
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    return allowed


def ring_positions(pos: jax.Array, slots: int) -> jax.Array:
    """[slots] absolute position held by each ring-buffer slot after ``pos`` writes; -1 if empty.

    Position p is written to slot ``p % slots``, so slot i holds the latest p < pos with
    p = i (mod slots): ``p = pos - 1 - ((pos - 1 - i) mod slots)``. Nothing needs storing.
    """
    i = jnp.arange(slots)
    p = pos - 1 - jnp.mod(pos - 1 - i, slots)
    return jnp.where(p >= 0, p, -1)


def cache_write(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write ``new`` [batch, seq, ...] into the cache ``buf`` [batch, slots, ...] at slots
    ``start .. start+seq-1`` (cast to the cache's dtype). ``check_cache_room`` has made sure
    they exist: ``dynamic_update_slice`` would clamp an index past the end."""
    return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype),
                                        (0, start) + (0,) * (buf.ndim - 2))


def ring_write(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write ``new`` [batch, seq, ...] (absolute positions start .. start+seq-1) into the ring
    ``buf`` [batch, slots, ...]. Only the last ``slots`` of a longer chunk survive."""
    slots, s = buf.shape[1], new.shape[1]
    m = min(slots, s)  # static: how many of the new tokens are kept
    idx = jnp.mod(start + s - m + jnp.arange(m), slots)  # distinct slots, no write collides
    return buf.at[:, idx].set(new[:, s - m:].astype(buf.dtype))


def check_cache_room(pos: jax.Array, new_tokens: int, slots: int) -> jax.Array | None:
    """Whether ``new_tokens`` tokens written at ``pos`` overflow a cache of ``slots`` slots.

    With a concrete ``pos`` (an eager call) an overflow raises ``ValueError`` at once and the
    result is ``None`` (nothing to poison). Under tracing (``jit``) ``pos`` has no value yet:
    the result is a traced bool scalar, True on overflow, for ``poison_on_overflow``.
    """
    try:
        start = int(pos)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return pos + new_tokens > slots
    if start + new_tokens > slots:
        raise ValueError(f"KV cache overflow: writing {new_tokens} tokens at position {start} "
                         f"needs {start + new_tokens} slots, the cache has {slots} "
                         f"(build it with init_cache(batch, max_len >= {start + new_tokens}))")
    return None


def poison_on_overflow(y: jax.Array, overflow: jax.Array | None) -> jax.Array:
    """``y``, or all NaN when ``overflow`` (from ``check_cache_room``) is True under ``jit``."""
    return y if overflow is None else jnp.where(overflow, jnp.nan, y)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                      scale: float | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v with query heads grouped over shared key/value heads.

    q: [batch, q_len, n_heads, head_dim]; k, v: [batch, k_len, n_kv_heads, head_dim];
    mask: [q_len, k_len] (True = may attend). Returns [batch, q_len, n_heads, head_dim].
    ``scale`` replaces the factor ``1/sqrt(d)`` when given (Granite's attention multiplier).
    Query head i uses key/value head ``i // (n_heads // n_kv_heads)``. The shared key/value
    heads are repeated to one per query head before the products: the cache stays small, and
    XLA on a CPU runs these plain per-head products faster than a grouped 5-D layout.
    """
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    group = q.shape[2] // k.shape[2]
    if group > 1:  # GQA / MQA
        k = jnp.repeat(k, group, axis=2)  # [batch, k_len, n_heads, head_dim]
        v = jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bshd,blhd->bhsl", q, k).astype(jnp.float32) * scale
    probs = masked_softmax(scores, mask).astype(v.dtype)  # [batch, n_heads, q_len, k_len]
    return jnp.einsum("bhsl,blhd->bshd", probs, v)  # [batch, q_len, n_heads, head_dim]


class Attention(nnx.Module):
    """Causal multi-head attention with ``n_kv_heads`` key/value heads and RoPE.

    Attributes: ``wq`` [d_model, n_heads*head_dim], ``wk``, ``wv`` [d_model, n_kv_heads*head_dim],
    ``wo`` [n_heads*head_dim, d_model]; ``window``: ``cfg.sliding_window`` when
    ``cfg.attention == 'sliding'``, else None (full causal attention);
    ``q_norm``, ``k_norm``: RMSNorm [head_dim] of each query/key head before RoPE when
    ``cfg.qk_norm`` (Qwen3), else None; ``scale``: ``cfg.attention_scale`` (None = 1/sqrt(head_dim));
    ``tiling``: ``cfg.attention_tiling`` (``fast.tiled_attention`` instead of ``grouped_attention``).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.attention == "mla":  # its fields (kv_lora_rank, ...) would be ignored here
            raise ValueError("Attention is grouped-query attention; a config with attention='mla' "
                             "builds MLAttention (model.make_attention picks the right module)")
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
        self.rope_theta = cfg.rope_theta
        self.window = cfg.sliding_window if cfg.attention == "sliding" else None
        self.wq = nnx.Param(init_weight(rngs.params(), (d, h * hd), d))
        self.wk = nnx.Param(init_weight(rngs.params(), (d, kv * hd), d))
        self.wv = nnx.Param(init_weight(rngs.params(), (d, kv * hd), d))
        self.wo = nnx.Param(init_weight(rngs.params(), (h * hd, d), h * hd))
        self.scale = cfg.attention_scale
        self.tiling = cfg.attention_tiling
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
        """Empty cache for ``max_len`` tokens; with a window, a ring of ``min(window, max_len)``."""
        slots = max_len if self.window is None else min(self.window, max_len)
        shape = (batch_size, slots, self.n_kv_heads, self.head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def project_qkv(self, x: jax.Array, start: jax.Array):
        """Queries [batch, seq, n_heads, head_dim] and keys, values [batch, seq, n_kv_heads,
        head_dim] of ``x`` [batch, seq, d_model], rotated for positions ``start + arange(seq)``
        (also returned, [seq])."""
        b, s, _ = x.shape
        q_pos = start + jnp.arange(s)  # [seq]
        cos, sin = rope_angles(q_pos, self.head_dim, self.rope_theta)
        q = linear(x, self.wq[...]).reshape(b, s, self.n_heads, self.head_dim)
        k = linear(x, self.wk[...]).reshape(b, s, self.n_kv_heads, self.head_dim)
        v = linear(x, self.wv[...]).reshape(b, s, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per-head RMSNorm before the rotation (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, q_pos

    def __call__(self, x: jax.Array, cache: KVCache | None = None):
        b, s, _ = x.shape
        start = jnp.zeros((), jnp.int32) if cache is None else cache.pos
        overflow = None  # a sliding ring never overflows: it keeps the last `window` tokens
        if cache is not None and self.window is None:
            overflow = check_cache_room(start, s, cache.k.shape[1])
        q, k, v, q_pos = self.project_qkv(x, start)
        valid = None
        if cache is None:
            k_pos = q_pos
        elif self.window is None:  # write the new keys/values at cache.pos, attend over the buffer
            k, v = cache_write(cache.k, k, start), cache_write(cache.v, v, start)
            cache = KVCache(k, v, start + s)
            k_pos = jnp.arange(k.shape[1])  # unwritten slots lie in the future: masked
        else:  # ring buffer: attend over [ring (older tokens); this chunk], keep the last slots
            ring_pos = ring_positions(start, cache.k.shape[1])  # [slots], -1 = empty
            k_pos = jnp.concatenate([ring_pos, q_pos])  # [slots + seq]
            valid = k_pos >= 0
            new_cache = KVCache(ring_write(cache.k, k, start), ring_write(cache.v, v, start),
                                start + s)
            k = jnp.concatenate([cache.k, k.astype(cache.k.dtype)], axis=1)  # [b, slots+seq, ..]
            v = jnp.concatenate([cache.v, v.astype(cache.v.dtype)], axis=1)
            cache = new_cache
        mask = causal_mask(q_pos, k_pos, self.window)  # [seq, keys]
        if valid is not None:
            mask &= valid[None, :]
        attend = tiled_attention if self.tiling else grouped_attention  # same numbers
        out = attend(q, k, v, mask, self.scale)
        y = linear(out.reshape(b, s, -1), self.wo[...])
        return poison_on_overflow(y, overflow), cache

    def cache_values_per_token(self) -> int:
        """Values stored per token per layer: keys and values of every KV head."""
        return 2 * self.n_kv_heads * self.head_dim
