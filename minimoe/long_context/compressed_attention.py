"""DeepSeek-V4's attention: one shared key/value head, a sliding window in every layer, and
compressed entries of the sequence (CSA, HCA). DeepSeek-V4 technical report and its published
``inference/model.py``; field names as in V4's config.json.

MLA (``mla.py``) shrinks the cache along the *head* axis: one latent per token. V4 also shrinks
it along the *sequence* axis: most of what a query reads are entries that each summarise
``compress_ratio`` tokens. A layer has one of three kinds, from ``compress_ratios[layer]``:

- window only (ratio 0): attention over the last ``sliding_window`` raw entries;
- CSA, compressed sparse attention (ratio ``csa_compress_ratio``, 4 in V4): the window plus the
  ``index_topk`` compressed entries a lightning indexer scores highest for this query;
- HCA, heavily compressed attention (any other ratio, 128 in V4): the window plus *all*
  compressed entries (few enough to read densely).

The pieces, in the order ``CompressedAttention.__call__`` runs them (t = query position):

    c_q  = RMSNorm(x W_qa)                      low-rank query latent (q_lora_rank)
    q    = RoPE_tail(rms(c_q W_qb))             per-head RMS norm (no weight), RoPE on the last
                                                qk_rope_head_dim channels only
    kv   = RoPE_tail(RMSNorm(x W_kv))           ONE vector per token: key and value (head_dim)
    e_i  = RoPE_tail(RMSNorm(Compressor(x)_i))  compressed entry i (``compress``), placed at the
                                                position of its block's first token
    o_t  = sum_j softmax_j([s_tj ; sink_h]) kv_j    s = q . kv / sqrt(head_dim) over the visible
                                                raw and compressed entries; the per-head sink
                                                takes probability mass but adds no value
    y    = W_ob concat_g(W_oa,g o_t,g)          inverse RoPE on o's tail first (the values carry
                                                the keys' rotation), then grouped low rank

The compressor (``compress``). Each token projects to a value ``x W_kv^c`` and a gate score
``x W_gate^c + ape[t mod m]`` (``ape``: a learned bias per slot of the block, per channel). An
entry is a softmax over its window's token slots, channel by channel: a learned weighted mean.
HCA's window is one block of m tokens. CSA's windows *overlap*: each token projects to twice
the channels, the first half feeding the *next* block's entry and the second half its own, so
entry i pools tokens (i-1)m .. im+m-1 (2m slots; before the sequence the slots are empty).
Entry i is complete once token im+m-1 has been seen, and only queries t >= im+m-1 see it:
causality is exact (tested by perturbing future tokens).

The lightning indexer (CSA only) scores entry i for query t as
``I(t, i) = sum_h w_{t,h} ReLU(q^I_{t,h} . k^I_i)`` (DSA eq. 1, ``sparse_attention.indexer_scores``)
with its own compressor producing the keys k^I (``index_head_dim``), queries from the query
latent c_q and per-query head weights from x. As in ``sparse_attention``, selection is a step
function: the indexer learns through a straight-through bias ``I - stop_gradient(I)`` on the
selected entries' logits (value 0), and reads a detached input, so none of its gradient
reaches the residual stream (tested).

Decoding: the cache holds a ring buffer of the window's raw entries, the compressed entries
(appended as blocks complete), the indexer's keys, and each compressor's *state*: the
projections of the last (1 + overlap) * m tokens, from which the next entry is pooled when its
block completes. Prefill and decoding are the same code path (``compress`` gathers each
completed block's rows from the state and the new tokens); a whole sequence without a cache
pools its blocks by reshaping (``compress_from_start``). Both are tested against a per-window
loop, and decoding against the full forward pass for every kind.

Simplifications at course scale, said here so nothing is hidden: no YaRN scaling of
``compress_rope_theta`` (V4 extends its 64K pretraining window to 1M; the course's sequences are
short); RoPE pairs channel i with i + d/2 (``blocks/rope.py``) where V4 pairs adjacent channels, the
same rotation up to a fixed permutation of the rope channels; no FP8/FP4 quantisation or
Hadamard rotation of cached entries; the selected entries are applied as a mask over all
entries instead of a gather, which is the same result at this size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..blocks.attention import NEG_INF, causal_mask, masked_softmax, ring_positions, ring_write
from ..blocks.ffn import init_weight, linear
from ..blocks.norm import RMSNorm, rms_norm
from ..blocks.rope import apply_rope, rope_angles
from ..config import ModelConfig
from .sparse_attention import indexer_scores, select_top_k


class CompressedKVCache(NamedTuple):
    """What one V4 attention layer keeps between calls. Arrays a layer kind does not use have
    a zero-sized axis (they cost 0 bytes), so every layer's cache has the same fields.

    window: [batch, slots, head_dim] ring buffer of the last ``slots = min(sliding_window,
        max_len)`` raw entries (rotated), position p in slot ``p % slots``.
    entries: [batch, max_len // ratio, head_dim] compressed entries (rotated), entry i written
        once block i completes.
    kv_state, score_state: [batch, (1 + overlap) * ratio, (1 + overlap) * head_dim] the
        compressor's projections of the last tokens (a ring, position p in slot p % len),
        scores with the slot bias already added.
    index_k: [batch, max_len // ratio, index_head_dim] the indexer's compressed keys (CSA).
    index_kv_state, index_score_state: the indexer compressor's state (CSA).
    pos: int32 scalar, tokens written so far.
    """

    window: jax.Array
    entries: jax.Array
    kv_state: jax.Array
    score_state: jax.Array
    index_k: jax.Array
    index_kv_state: jax.Array
    index_score_state: jax.Array
    pos: jax.Array


# --- pure functions ---------------------------------------------------------------------------

def rope_tail(x: jax.Array, positions: jax.Array, rope_dim: int, theta: float,
              inverse: bool = False) -> jax.Array:
    """RoPE on the last ``rope_dim`` channels of x [batch, seq, heads, dim]; the first
    ``dim - rope_dim`` channels carry no position. ``inverse`` rotates by -position."""
    cos, sin = rope_angles(positions, rope_dim, theta)
    if inverse:
        sin = -sin
    return jnp.concatenate([x[..., :-rope_dim], apply_rope(x[..., -rope_dim:], cos, sin)],
                           axis=-1)


def head_rms(x: jax.Array, eps: float) -> jax.Array:
    """RMS norm of each head's vector without a learned weight (V4's per-head query norm)."""
    return rms_norm(x, jnp.ones((x.shape[-1],), jnp.float32), eps)


def window_slots(kv: jax.Array, head_dim: int, overlap: bool) -> jax.Array:
    """Per-entry token slots [batch, n, slots, head_dim] from the projections of each entry's
    tokens, kv [batch, n, (1 + overlap) * m, (1 + overlap) * head_dim].

    Without overlap the window is the block itself (m slots). With overlap the rows are the
    previous block then this block: the previous block's tokens give their first
    ``head_dim`` channels (meant for the next entry), this block's their last ``head_dim``.
    """
    if not overlap:
        return kv
    m = kv.shape[2] // 2
    return jnp.concatenate([kv[:, :, :m, :head_dim], kv[:, :, m:, head_dim:]], axis=2)


def pool(kv_slots: jax.Array, score_slots: jax.Array) -> jax.Array:
    """Softmax-gated pooling over the token slots, channel by channel:
    ``sum_j softmax_j(score[j]) * kv[j]``. Both [batch, n, slots, d]; returns [batch, n, d]."""
    weights = jax.nn.softmax(score_slots.astype(jnp.float32), axis=2)
    return jnp.sum(weights * kv_slots.astype(jnp.float32), axis=2)


def compress(kv: jax.Array, score: jax.Array, kv_state: jax.Array, score_state: jax.Array,
             start: jax.Array, ratio: int, head_dim: int, overlap: bool):
    """Pool the blocks that complete in a chunk of new tokens (the compressor's core).

    kv, score: [batch, seq, c * head_dim] projections of the new tokens at positions
    ``start .. start + seq - 1`` (score with the slot bias added), c = 1 + overlap;
    kv_state, score_state: [batch, c * ratio, c * head_dim] the same for the tokens before,
    a ring (position p in slot p % (c * ratio); positions < 0 are empty).

    Returns (pooled [batch, n, head_dim] for the candidate blocks ``first + arange(n)``,
    blocks [n], complete [n] (False for a candidate whose last token is not in the chunk),
    new kv_state, new score_state). n = (seq - 1) // ratio + 1 is static: the most blocks a
    chunk of seq tokens can complete, wherever it starts.
    """
    b, s, _ = kv.shape
    hist = kv_state.shape[1]  # c * ratio: the tokens before the chunk an entry may still need
    order = jnp.mod(start - hist + jnp.arange(hist), hist)  # ring slots in time order
    ext_kv = jnp.concatenate([kv_state[:, order], kv.astype(kv_state.dtype)], axis=1)
    ext_score = jnp.concatenate([score_state[:, order], score.astype(score_state.dtype)], 1)
    ext_pos = start - hist + jnp.arange(hist + s)  # [hist + seq] absolute positions
    ext_score = jnp.where((ext_pos >= 0)[None, :, None], ext_score, NEG_INF)  # empty slots

    n = (s - 1) // ratio + 1
    blocks = start // ratio + jnp.arange(n)  # [n] candidate entries
    complete = (blocks + 1) * ratio <= start + s
    first_row = blocks * ratio - (hist - ratio) - (start - hist)  # window start, in ext rows
    rows = jnp.clip(first_row[:, None] + jnp.arange(hist)[None, :], 0, hist + s - 1)  # [n, hist]
    kv_slots = window_slots(ext_kv[:, rows], head_dim, overlap)  # [b, n, slots, head_dim]
    score_slots = window_slots(ext_score[:, rows], head_dim, overlap)
    pooled = pool(kv_slots, score_slots)
    return (pooled, blocks, complete, ring_write(kv_state, kv, start),
            ring_write(score_state, score, start))


def compress_from_start(kv: jax.Array, score: jax.Array, ratio: int, head_dim: int,
                        overlap: bool):
    """``compress`` for a whole sequence from position 0 without a cache, by reshaping into
    blocks instead of gathering rows (the same numbers, tested; cheaper to compile and run).

    kv, score: [batch, seq, c * head_dim]. Returns (pooled [batch, n, head_dim], blocks [n],
    complete [n]) for the n = (seq - 1) // ratio + 1 candidate blocks; the last one is
    incomplete when seq is not a multiple of ratio (its missing slots are empty).
    """
    b, s, cd = kv.shape
    n = (s - 1) // ratio + 1
    pad = ((0, 0), (0, n * ratio - s), (0, 0))
    kv_b = jnp.pad(kv, pad).reshape(b, n, ratio, cd)  # [batch, n, ratio, c * head_dim]
    sc_b = jnp.pad(score, pad, constant_values=NEG_INF).reshape(b, n, ratio, cd)
    if overlap:  # each window: the previous block's rows (none before block 0), then its own
        before = ((0, 0), (1, 0), (0, 0), (0, 0))
        kv_b = jnp.concatenate([jnp.pad(kv_b, before)[:, :-1], kv_b], axis=2)
        sc_b = jnp.concatenate([jnp.pad(sc_b, before, constant_values=NEG_INF)[:, :-1], sc_b], 2)
    pooled = pool(window_slots(kv_b, head_dim, overlap), window_slots(sc_b, head_dim, overlap))
    blocks = jnp.arange(n)
    return pooled, blocks, (blocks + 1) * ratio <= s


def attention_with_sink(q: jax.Array, kv: jax.Array, mask: jax.Array, sink: jax.Array,
                        bias: jax.Array | None = None) -> jax.Array:
    """Attention of every query head over ONE shared key/value head, with a sink per head.

    q: [batch, q_len, n_heads, head_dim]; kv: [batch, k_len, head_dim] (keys and values);
    mask: [batch or 1, q_len, k_len] (True = visible); sink: [n_heads] logits; bias: optional
    [batch, q_len, k_len] added to the logits. ``p = softmax([s ; sink])`` over the visible
    keys and the sink, whose share of the probability multiplies no value: a head may attend
    to nothing. Returns [batch, q_len, n_heads, head_dim].
    """
    d = q.shape[-1]
    scores = jnp.einsum("bshd,bkd->bhsk", q, kv).astype(jnp.float32) * d ** -0.5
    if bias is not None:
        scores = scores + bias[:, None]
    probs = masked_softmax(scores, mask[:, None], sink[None, :, None])  # [batch, heads, q, k]
    return jnp.einsum("bhsk,bkd->bshd", probs.astype(kv.dtype), kv)


def grouped_output(o: jax.Array, wo_a: jax.Array, wo_b: jax.Array) -> jax.Array:
    """Grouped low-rank output projection. o: [batch, seq, n_heads, head_dim];
    wo_a: [o_groups, n_heads // o_groups * head_dim, o_lora_rank]; wo_b: [o_groups *
    o_lora_rank, d_model]. Each group of heads is projected to o_lora_rank, then all groups
    together to d_model. Returns [batch, seq, d_model]."""
    b, s = o.shape[:2]
    g = wo_a.shape[0]
    o = o.reshape(b, s, g, -1)  # [batch, seq, o_groups, group_heads * head_dim]
    low = jnp.einsum("bsgi,gir->bsgr", o, wo_a)  # [batch, seq, o_groups, o_lora_rank]
    return linear(low.reshape(b, s, -1), wo_b)


def entries_visible(entry_idx: jax.Array, q_pos: jax.Array, ratio: int) -> jax.Array:
    """[q_len, n] entry i (pooling tokens up to (i + 1) * ratio - 1) is visible to query t iff
    its last token is not in t's future: ``(i + 1) * ratio - 1 <= t``."""
    return (entry_idx[None, :] + 1) * ratio - 1 <= q_pos[:, None]


# --- modules ----------------------------------------------------------------------------------

class Compressor(nnx.Module):
    """Softmax-gated pooling of blocks of ``ratio`` tokens into one entry (see ``compress``),
    then RMSNorm and RoPE on the last ``rope_dim`` channels at the block's first position.

    Attributes: ``wkv``, ``wgate`` [d_model, c * head_dim]; ``ape`` [ratio, c * head_dim] (the
    per-slot position bias of the gate, zero at init); ``norm``; c = 1 + ``overlap``.
    """

    def __init__(self, d_model: int, head_dim: int, ratio: int, overlap: bool, rope_dim: int,
                 rope_theta: float, eps: float, *, rngs: nnx.Rngs):
        c = 2 if overlap else 1
        self.head_dim, self.ratio, self.overlap = head_dim, ratio, overlap
        self.rope_dim, self.rope_theta = rope_dim, rope_theta
        self.wkv = nnx.Param(init_weight(rngs.params(), (d_model, c * head_dim), d_model))
        self.wgate = nnx.Param(init_weight(rngs.params(), (d_model, c * head_dim), d_model))
        self.ape = nnx.Param(jnp.zeros((ratio, c * head_dim), jnp.float32))
        self.norm = RMSNorm(head_dim, eps)

    def state_shape(self, batch_size: int) -> tuple[int, int, int]:
        c = 2 if self.overlap else 1
        return batch_size, c * self.ratio, c * self.head_dim

    def __call__(self, x: jax.Array, start: jax.Array, kv_state: jax.Array,
                 score_state: jax.Array):
        """Entries [batch, n, head_dim] of the candidate blocks of chunk x [batch, seq, d_model]
        at positions ``start ..``, with (blocks [n], complete [n], new states). States None:
        x is a whole sequence from position 0 without a cache (and None is returned)."""
        pos = start + jnp.arange(x.shape[1])
        kv = linear(x, self.wkv[...])  # [batch, seq, c * head_dim]
        score = linear(x, self.wgate[...]) + self.ape[...][jnp.mod(pos, self.ratio)]
        if kv_state is None:  # the whole sequence from position 0, no cache
            pooled, blocks, complete = compress_from_start(kv, score, self.ratio, self.head_dim,
                                                           self.overlap)
        else:
            pooled, blocks, complete, kv_state, score_state = compress(
                kv, score, kv_state, score_state, start, self.ratio, self.head_dim, self.overlap)
        entries = self.norm(pooled.astype(x.dtype))
        entries = rope_tail(entries[:, :, None], blocks * self.ratio, self.rope_dim,
                            self.rope_theta)[:, :, 0]
        return entries, blocks, complete, kv_state, score_state


class LightningIndexer(nnx.Module):
    """CSA's indexer: ``index_n_heads`` ReLU heads of size ``index_head_dim`` score the
    compressed entries for each query (``sparse_attention.indexer_scores``).

    Attributes: ``wq`` [q_lora_rank, index_n_heads * index_head_dim] (from the query latent),
    ``weights_proj`` [d_model, index_n_heads], ``compressor`` (its keys, same ratio, overlap).
    """

    def __init__(self, cfg: ModelConfig, ratio: int, *, rngs: nnx.Rngs):
        self.n_heads, self.head_dim = cfg.index_n_heads, cfg.index_head_dim
        self.rope_dim, self.rope_theta = cfg.qk_rope_head_dim, cfg.compress_rope_theta
        self.wq = nnx.Param(init_weight(rngs.params(), (cfg.q_lora_rank, self.n_heads * self.head_dim),
                                        cfg.q_lora_rank))
        self.weights_proj = nnx.Param(init_weight(rngs.params(), (cfg.d_model, self.n_heads),
                                                  cfg.d_model))
        self.compressor = Compressor(cfg.d_model, self.head_dim, ratio, True, self.rope_dim,
                                     self.rope_theta, cfg.norm_eps, rngs=rngs)

    def queries(self, q_latent: jax.Array, x: jax.Array, q_pos: jax.Array):
        """Indexer queries [batch, seq, heads, index_head_dim] (rotated) and head weights
        [batch, seq, heads] (scaled by 1 / sqrt(index_head_dim * index_n_heads), as V4)."""
        b, s, _ = x.shape
        q = linear(q_latent, self.wq[...]).reshape(b, s, self.n_heads, self.head_dim)
        q = rope_tail(q, q_pos, self.rope_dim, self.rope_theta)
        w = linear(x, self.weights_proj[...]) * (self.head_dim * self.n_heads) ** -0.5
        return q, w


class CompressedAttention(nnx.Module):
    """One DeepSeek-V4 attention layer: window only, CSA or HCA (``compress_ratio``).

    Attributes: ``wq_a`` [d_model, q_lora_rank], ``q_norm``, ``wq_b`` [q_lora_rank, n_heads *
    head_dim]; ``wkv`` [d_model, head_dim], ``kv_norm``; ``attn_sink`` [n_heads] (zero at init);
    ``wo_a`` [o_groups, n_heads // o_groups * head_dim, o_lora_rank], ``wo_b`` [o_groups *
    o_lora_rank, d_model]; with a ratio, ``compressor``; in CSA, ``indexer`` and ``index_topk``.
    """

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        if cfg.attention != "compressed":
            raise ValueError(f"CompressedAttention needs attention='compressed', got {cfg.attention!r}")
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim, self.rope_dim = h, hd, cfg.qk_rope_head_dim
        self.window, self.eps = cfg.sliding_window, cfg.norm_eps
        self.ratio = cfg.layer_compress_ratio(layer)
        self.is_csa = self.ratio > 0 and cfg.is_csa_layer(layer)
        # window-only layers use rope_theta, compressed ones compress_rope_theta (as V4)
        self.rope_theta = cfg.compress_rope_theta if self.ratio else cfg.rope_theta
        self.index_head_dim = cfg.index_head_dim
        self.wq_a = nnx.Param(init_weight(rngs.params(), (d, cfg.q_lora_rank), d))
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = nnx.Param(init_weight(rngs.params(), (cfg.q_lora_rank, h * hd), cfg.q_lora_rank))
        self.wkv = nnx.Param(init_weight(rngs.params(), (d, hd), d))
        self.kv_norm = RMSNorm(hd, cfg.norm_eps)
        self.attn_sink = nnx.Param(jnp.zeros((h,), jnp.float32))
        g, group_in = cfg.o_groups, h // cfg.o_groups * hd
        self.wo_a = nnx.Param(init_weight(rngs.params(), (g, group_in, cfg.o_lora_rank), group_in))
        self.wo_b = nnx.Param(init_weight(rngs.params(), (g * cfg.o_lora_rank, d),
                                          g * cfg.o_lora_rank))
        if self.ratio:
            self.compressor = Compressor(d, hd, self.ratio, self.is_csa, self.rope_dim,
                                         self.rope_theta, cfg.norm_eps, rngs=rngs)
        if self.is_csa:
            self.indexer = LightningIndexer(cfg, self.ratio, rngs=rngs)
            self.index_topk = cfg.index_topk

    # -- cache -----------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> CompressedKVCache:
        """Empty cache for ``max_len`` tokens: a ring of ``min(sliding_window, max_len)`` raw
        entries, ``max_len // ratio`` compressed entries, the compressors' states."""
        n = max_len // self.ratio if self.ratio else 0
        empty = lambda *shape: jnp.zeros(shape, dtype)
        comp_state = self.compressor.state_shape(batch_size) if self.ratio else (batch_size, 0, 0)
        idx_state = (self.indexer.compressor.state_shape(batch_size) if self.is_csa
                     else (batch_size, 0, 0))
        return CompressedKVCache(
            window=empty(batch_size, min(self.window, max_len), self.head_dim),
            entries=empty(batch_size, n, self.head_dim),
            kv_state=empty(*comp_state), score_state=empty(*comp_state),
            index_k=empty(batch_size, n if self.is_csa else 0, self.index_head_dim),
            index_kv_state=empty(*idx_state), index_score_state=empty(*idx_state),
            pos=jnp.zeros((), jnp.int32))

    # -- forward ---------------------------------------------------------------------------

    def __call__(self, x: jax.Array, cache: CompressedKVCache | None = None):
        b, s, _ = x.shape
        start = jnp.zeros((), jnp.int32) if cache is None else cache.pos
        if cache is not None and self.ratio:
            _check_capacity(start + s, cache.entries.shape[1], self.ratio)
        q_pos = start + jnp.arange(s)  # [seq]
        c_q = self.q_norm(linear(x, self.wq_a[...]))  # [batch, seq, q_lora_rank]
        q = linear(c_q, self.wq_b[...]).reshape(b, s, self.n_heads, self.head_dim)
        q = rope_tail(head_rms(q, self.eps), q_pos, self.rope_dim, self.rope_theta)
        kv = self.kv_norm(linear(x, self.wkv[...]))  # [batch, seq, head_dim]
        kv = rope_tail(kv[:, :, None], q_pos, self.rope_dim, self.rope_theta)[:, :, 0]

        # the window: raw entries (the cached ring, then this chunk)
        if cache is None:
            keys, k_pos, window = kv, q_pos, None
        else:
            k_pos = jnp.concatenate([ring_positions(start, cache.window.shape[1]), q_pos])
            keys = jnp.concatenate([cache.window, kv.astype(cache.window.dtype)], axis=1)
            window = ring_write(cache.window, kv, start)
        mask = (causal_mask(q_pos, k_pos, self.window) & (k_pos >= 0)[None, :])[None]
        bias = None
        states = ((None,) * 4 if cache is None else
                  (cache.kv_state, cache.score_state, cache.index_kv_state, cache.index_score_state))
        new = dict(kv_state=states[0], score_state=states[1], index_kv_state=states[2],
                   index_score_state=states[3])
        entries = index_k = None
        if self.ratio:
            comp, blocks, complete, new["kv_state"], new["score_state"] = self.compressor(
                x, start, states[0], states[1])
            entries, entry_idx, written = self._append(None if cache is None else cache.entries,
                                                       comp, blocks, complete, start + s)
            visible = entries_visible(entry_idx, q_pos, self.ratio) & written[None, :]
            visible = jnp.broadcast_to(visible[None], (b, s, visible.shape[1]))
            if self.is_csa:
                visible, bias, index_k, new["index_kv_state"], new["index_score_state"] = \
                    self._select(x, c_q, q_pos, start, cache, states, visible)
            if bias is not None:  # the raw window entries get no indexer bias
                bias = jnp.concatenate([jnp.zeros((b, s, keys.shape[1]), bias.dtype), bias], -1)
            keys = jnp.concatenate([keys, entries.astype(keys.dtype)], axis=1)
            mask = jnp.concatenate([jnp.broadcast_to(mask, (b,) + mask.shape[1:]), visible], -1)
        out = attention_with_sink(q, keys, mask, self.attn_sink[...], bias)
        out = rope_tail(out, q_pos, self.rope_dim, self.rope_theta, inverse=True)
        y = grouped_output(out, self.wo_a[...], self.wo_b[...])
        if cache is not None:
            cache = CompressedKVCache(
                window=window, entries=cache.entries if entries is None else entries,
                index_k=cache.index_k if index_k is None else index_k, pos=start + s, **new)
        return y, cache

    def _append(self, buf, comp, blocks, complete, end):
        """Compressed entries to attend to: without a cache the chunk's candidates (valid where
        complete); with one, the buffer with the completed entries written at their index.
        Returns (entries [batch, n, d], their indices [n], written [n])."""
        if buf is None:
            return comp, blocks, complete
        n = buf.shape[1]
        idx = jnp.where(complete, blocks, n)  # incomplete candidates fall off the end: dropped
        buf = buf.at[:, idx].set(comp.astype(buf.dtype), mode="drop")
        entry_idx = jnp.arange(n)
        return buf, entry_idx, entry_idx < end // self.ratio

    def _select(self, x, c_q, q_pos, start, cache, states, visible):
        """CSA: each query keeps its ``index_topk`` best-scoring visible entries. The indexer
        reads a detached x and query latent. Returns (selected [batch, seq, n], the
        straight-through bias, indexer keys, new indexer compressor states)."""
        x_d, c_q_d = jax.lax.stop_gradient(x), jax.lax.stop_gradient(c_q)
        keys, blocks, complete, kv_state, score_state = self.indexer.compressor(
            x_d, start, states[2], states[3])
        keys, _, _ = self._append(None if cache is None else cache.index_k, keys, blocks,
                                  complete, start + x.shape[1])
        q_idx, w_idx = self.indexer.queries(c_q_d, x_d, q_pos)
        scores = indexer_scores(q_idx, keys, w_idx)  # [batch, seq, n]
        picked = top_k_entries(jax.lax.stop_gradient(scores), visible, self.index_topk)
        bias = scores - jax.lax.stop_gradient(scores)  # value 0; gradient only where picked
        return picked, bias, keys, kv_state, score_state

    def cache_values_per_token(self) -> float:
        """Long-context slope of the values this layer caches per token (the window and the
        compressor states are a fixed cost per sequence): see ``kv_cache``."""
        from .kv_cache import compressed_kv_values_per_token
        return compressed_kv_values_per_token(self.ratio, self.head_dim, self.index_head_dim,
                                              self.is_csa)


def top_k_entries(scores: jax.Array, allowed: jax.Array, top_k: int) -> jax.Array:
    """[batch, q_len, n] True for each query's ``top_k`` highest-scoring allowed entries (all
    allowed ones when fewer): DSA's selection (``sparse_attention.select_top_k``) as a mask
    over the entries. scores, allowed: [batch, q_len, n]."""
    idx, valid = select_top_k(scores, allowed, top_k)  # [batch, q_len, k]
    hit = (idx[..., None] == jnp.arange(scores.shape[-1])) & valid[..., None]  # [b, q, k, n]
    return jnp.any(hit, axis=-2)


def _raise_if_full(end, capacity, ratio):
    if int(end) // ratio > int(capacity):
        raise ValueError(
            f"compressed KV cache overflow: writing up to position {int(end) - 1} completes entry "
            f"{int(end) // ratio - 1}, but the cache holds {int(capacity)} entries "
            f"(max_len // compress_ratio with compress_ratio={ratio}); build it with a larger "
            "max_len")


def _check_capacity(end, capacity: int, ratio: int) -> None:
    """Raise when a write would complete a compressed entry past the cache's end (instead of
    silently dropping it): at once for a concrete position, at run time under ``jit``."""
    if isinstance(end, jax.core.Tracer):
        jax.debug.callback(_raise_if_full, end, capacity, ratio)
    else:
        _raise_if_full(end, capacity, ratio)


def set_index_topk(model, index_topk: int) -> None:
    """Set ``index_topk`` of every CSA layer of a ``Transformer`` in place (a jitted step
    retraces). As for DSA (``sparse_attention.set_top_k``), training can start with a dense
    warm-up, ``index_topk`` >= the number of entries (every entry is selected and the indexer
    scores all of them), before going sparse."""
    if isinstance(index_topk, bool) or not isinstance(index_topk, int) or index_topk < 1:
        raise ValueError(f"index_topk must be a positive int, got {index_topk!r}")
    layers = [b.attn for b in model.blocks
              if isinstance(b.attn, CompressedAttention) and b.attn.is_csa]
    if not layers:
        raise ValueError("set_index_topk: the model has no CSA layer")
    for layer in layers:
        layer.index_topk = index_topk
