"""Attention over a batch a few sequences at a time, so each tile's scores stay in cache.

The scores of a batch, [batch, n_heads, q_len, k_len], can outgrow a CPU core's cache long
before they outgrow memory; then every pass over them waits for memory. Cutting the batch into
tiles of a few sequences and attending to one tile after the other (``jax.lax.map``) keeps a
tile's scores in cache, with the same numbers: the idea of FlashAttention's tiling, one level
up (over sequences, not over keys). ``jax.checkpoint`` makes the backward pass recompute a
tile's scores instead of keeping every tile's, as FlashAttention does.

``ModelConfig(attention_tiling=True)`` makes ``attention.Attention`` call ``tiled_attention``
instead of ``grouped_attention``; the test that they agree, values and gradients, is in
``tests/test_model.py``. Whether it is faster depends on the machine's caches:
``python -m minimoe.bench`` is where to measure it.
"""

from __future__ import annotations

from typing import Callable

import jax

SCORES_PER_TILE = 1 << 18  # float32 scores per tile: 1 MiB, a typical CPU core's L2 cache


def batch_chunk(batch: int, scores_per_sequence: int) -> int:
    """How many sequences one tile holds: all of them when their scores fit in
    ``SCORES_PER_TILE``, otherwise the largest divisor of ``batch`` whose scores do (at
    least 1)."""
    if batch * scores_per_sequence <= SCORES_PER_TILE:
        return batch
    fits = max(1, SCORES_PER_TILE // scores_per_sequence)
    return max(c for c in range(1, min(batch, fits) + 1) if batch % c == 0)


def tile_batch(attend: Callable, q: jax.Array, k: jax.Array, v: jax.Array,
               chunk: int) -> jax.Array:
    """``attend(q, k, v)`` computed ``chunk`` sequences at a time.

    q: [batch, q_len, n_heads, head_dim]; k, v: [batch, k_len, n_kv_heads, head_dim];
    ``attend`` maps such a batch to [batch, q_len, n_heads, head_dim] treating every
    sequence on its own; ``chunk`` divides ``batch``. -> [batch, q_len, n_heads, head_dim].
    """
    b = q.shape[0]
    tiles = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])  # [n_tiles, chunk, ...]
    out = jax.lax.map(jax.checkpoint(lambda qkv: attend(*qkv)), (tiles(q), tiles(k), tiles(v)))
    return out.reshape(b, *out.shape[2:])


def tiled_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                    scale: float | None = None) -> jax.Array:
    """``attention.grouped_attention(q, k, v, mask, scale)`` (same shapes and meaning),
    ``batch_chunk`` sequences at a time: the whole batch at once when its scores
    [batch, n_heads, q_len, k_len] fit in ``SCORES_PER_TILE``."""
    from minimoe.blocks.attention import grouped_attention  # the computation tiled here

    b, s, h, _ = q.shape
    chunk = batch_chunk(b, h * s * k.shape[1])
    attend = lambda q, k, v: grouped_attention(q, k, v, mask, scale)
    return attend(q, k, v) if chunk == b else tile_batch(attend, q, k, v, chunk)
