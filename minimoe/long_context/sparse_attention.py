"""Top-k sparse attention with a lightning indexer, after DeepSeek Sparse Attention (DSA,
DeepSeek-V3.2-Exp, 2025, §2.1).

Full attention makes every new token read every cached key: O(context) work per token. DSA
first runs a *lightning indexer*, a handful of tiny heads that cheaply score every (query,
past key) pair,

    I(t, s) = sum_j  w_{t,j} * ReLU(q^I_{t,j} . k^I_s)          (DSA eq. 1)

with ``index_n_heads`` query heads q^I_{t,j} of size ``index_head_dim``, ONE indexer key k^I_s
per token shared by those heads (so its cache cost is ``index_head_dim`` values) and per-token
head weights w_{t,j} = x_t W_w. Each query then keeps only its ``sparse_top_k`` best-scoring
past positions (all of them when fewer exist) and runs ordinary GQA attention, with the same
wq/wk/wv/wo and RoPE as ``attention.Attention``, over those alone (DSA eq. 2). The expensive
part now costs O(top_k) per token; only the indexer still scans the whole context.
Indexer queries and keys carry RoPE as well, so the indexer can prefer recent tokens.

How the indexer learns. Top-k selection is a step function: no gradient flows through *which*
keys were picked. DeepSeek trains the indexer with a separate KL loss towards the main
attention distribution. We use something simpler that needs no extra loss: the indexer scores
of the selected keys are added to the attention logits as a *straight-through bias*
``I - stop_gradient(I)``. Its value is exactly zero, so the forward pass is plain top-k
attention (and equals full causal attention when ``sparse_top_k >= seq``, tested); its
gradient is the gradient of the loss with respect to an attention-logit bias, so the indexer
is pushed to score higher the selected keys whose extra attention would lower the loss and
lower the ones that hurt (heads sharing a key sum their signals). Keys that were not selected
get no gradient: as in DSA's sparse stage, training only re-ranks within and around the
current selection. A model trained sparse from scratch therefore learns only if its first
selections happen to contain the useful keys; like DSA, start with a dense warm-up
(``set_top_k(model, seq_len)``: every key is selected and scored) and then go sparse.

As in DSA, the indexer reads a *detached* copy of its input (``stop_gradient(x)``). The
straight-through signal is a gradient of a bias that is not really there; were it allowed into
the residual stream it would push every earlier layer towards changing the indexer's scores,
which changes nothing the model computes, and training diverges (a model whose ``sparse_top_k``
keeps every key, so its forward pass is GQA's, blew up to gradient norms of ~1e4 without the
detach). With it, every weight outside the indexer receives exactly GQA's gradient when
nothing is dropped (tested).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..blocks.attention import (NEG_INF, Attention, cache_write, causal_mask, check_cache_room,
                                masked_softmax, poison_on_overflow)
from ..blocks.ffn import init_weight, linear
from ..blocks.rope import apply_rope, rope_angles
from ..config import ModelConfig


class SparseKVCache(NamedTuple):
    """Keys and values for attention plus the indexer's keys.

    k, v: [batch, max_len, n_kv_heads, head_dim] (keys rotated); index_k: [batch, max_len,
    index_head_dim] (rotated); pos: int32 scalar, tokens written so far.
    """

    k: jax.Array
    v: jax.Array
    index_k: jax.Array
    pos: jax.Array


def rope_even_part(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """RoPE on the largest even number of channels of x [batch, seq, heads, dim]; an odd last
    channel (possible for ``index_head_dim``) is left unrotated."""
    d = x.shape[-1] - x.shape[-1] % 2
    cos, sin = rope_angles(positions, d, theta)
    return jnp.concatenate([apply_rope(x[..., :d], cos, sin), x[..., d:]], axis=-1)


def indexer_scores(q_idx: jax.Array, k_idx: jax.Array, w_idx: jax.Array) -> jax.Array:
    """Lightning-indexer scores I(t, s) = sum_j w[t, j] * ReLU(q[t, j] . k[s]) (DSA eq. 1).

    q_idx: [batch, q_len, index_n_heads, index_head_dim]; k_idx: [batch, k_len, index_head_dim];
    w_idx: [batch, q_len, index_n_heads]. Returns [batch, q_len, k_len] float32.
    """
    dots = jnp.einsum("bshd,bld->bshl", q_idx, k_idx).astype(jnp.float32)  # [b, q, heads, k]
    return jnp.einsum("bsh,bshl->bsl", w_idx.astype(jnp.float32), jax.nn.relu(dots))


def select_top_k(scores: jax.Array, mask: jax.Array, top_k: int):
    """Each query's ``top_k`` highest-scoring allowed keys.

    scores: [batch, q_len, k_len]; mask: [q_len, k_len] or [batch, q_len, k_len] (True =
    allowed). Returns idx [batch, q_len, k] and valid [batch, q_len, k] with k = min(top_k,
    k_len); ``valid`` is False for picks that were not allowed (a query with fewer than k
    allowed keys), which must be masked out. Ties go to the lower position (``lax.top_k``).
    """
    k = min(top_k, scores.shape[-1])
    mask = jnp.broadcast_to(mask, scores.shape)  # [batch, q_len, k_len]
    _, idx = jax.lax.top_k(jnp.where(mask, scores, NEG_INF), k)  # [batch, q_len, k]
    valid = jnp.take_along_axis(mask, idx, axis=-1)
    return idx, valid


def sparse_grouped_attention(q, k, v, idx, valid, bias=None):
    """Grouped-query attention of each query over its own selected keys only.

    q: [batch, q_len, n_heads, head_dim]; k, v: [batch, k_len, n_kv_heads, head_dim];
    idx, valid: [batch, q_len, top_k] (from ``select_top_k``); bias: optional [batch, q_len,
    top_k] added to the logits of every head. Returns [batch, q_len, n_heads, head_dim].
    """
    b, s, h, d = q.shape
    n_kv = k.shape[2]
    # per batch element: [k_len, ...] indexed by [q_len, top_k] -> [q_len, top_k, ...]
    gather = jax.vmap(lambda arr, i: arr[i])
    k_sel, v_sel = gather(k, idx), gather(v, idx)  # [batch, q_len, top_k, n_kv, head_dim]
    q = q.reshape(b, s, n_kv, h // n_kv, d)  # [batch, q_len, n_kv, group, head_dim]
    scores = jnp.einsum("bskgd,bsjkd->bkgsj", q, k_sel).astype(jnp.float32) * d ** -0.5
    if bias is not None:
        scores = scores + bias[:, None, None]
    probs = masked_softmax(scores, valid[:, None, None]).astype(v.dtype)  # [b, n_kv, group, q, top_k]
    out = jnp.einsum("bkgsj,bsjkd->bskgd", probs, v_sel)
    return out.reshape(b, s, h, d)


class SparseAttention(Attention):
    """GQA attention restricted to the top-k keys picked by a lightning indexer (DSA).

    Attributes: those of ``Attention`` (``wq``, ``wk``, ``wv``, ``wo``, made first and in the same
    order, so the same ``rngs`` seed gives the same weights) plus the indexer's
    ``wq_index`` [d_model, index_n_heads*index_head_dim], ``wk_index`` [d_model, index_head_dim]
    (one key head shared by all indexer heads), ``w_index`` [d_model, index_n_heads] (the
    per-token head weights w_{t,j}); ``top_k``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.attention != "sparse":
            raise ValueError(f"SparseAttention needs a config with attention='sparse' (and its "
                             f"sparse_top_k), got attention={cfg.attention!r}")
        super().__init__(cfg, rngs=rngs)
        d = cfg.d_model
        self.top_k = cfg.sparse_top_k
        self.index_n_heads, self.index_head_dim = cfg.index_n_heads, cfg.index_head_dim
        self.wq_index = nnx.Param(
            init_weight(rngs.params(), (d, cfg.index_n_heads * cfg.index_head_dim), d))
        self.wk_index = nnx.Param(init_weight(rngs.params(), (d, cfg.index_head_dim), d))
        self.w_index = nnx.Param(init_weight(rngs.params(), (d, cfg.index_n_heads), d))

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> SparseKVCache:
        shape = (batch_size, max_len, self.n_kv_heads, self.head_dim)
        return SparseKVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                             jnp.zeros((batch_size, max_len, self.index_head_dim), dtype),
                             jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array, cache: SparseKVCache | None = None):
        b, s, _ = x.shape
        start = jnp.zeros((), jnp.int32) if cache is None else cache.pos
        overflow = None if cache is None else check_cache_room(start, s, cache.k.shape[1])
        q, k, v, q_pos = self.project_qkv(x, start)
        # the lightning indexer: small queries, one shared key, per-token head weights
        scale = (self.index_n_heads * self.index_head_dim) ** -0.5
        xi = jax.lax.stop_gradient(x)  # the indexer learns; it does not steer the residual stream
        q_idx = linear(xi, self.wq_index[...]).reshape(b, s, self.index_n_heads, self.index_head_dim)
        q_idx = rope_even_part(q_idx, q_pos, self.rope_theta)
        k_idx = linear(xi, self.wk_index[...])[:, :, None]  # [batch, seq, 1, index_head_dim]
        k_idx = rope_even_part(k_idx, q_pos, self.rope_theta)[:, :, 0]
        w_idx = linear(xi, self.w_index[...]) * scale  # [batch, seq, index_n_heads]
        if cache is None:
            k_pos = q_pos
        else:  # write at cache.pos, score and attend over the whole buffer
            k, v = cache_write(cache.k, k, start), cache_write(cache.v, v, start)
            k_idx = cache_write(cache.index_k, k_idx, start)
            cache = SparseKVCache(k, v, k_idx, start + s)
            k_pos = jnp.arange(k.shape[1])  # unwritten slots lie in the future: masked
        mask = causal_mask(q_pos, k_pos)  # [seq, keys]
        scores = indexer_scores(q_idx, k_idx, w_idx)  # [batch, seq, keys]
        idx, valid = select_top_k(jax.lax.stop_gradient(scores), mask, self.top_k)
        picked = jnp.take_along_axis(scores, idx, axis=-1)  # [batch, seq, top_k]
        bias = picked - jax.lax.stop_gradient(picked)  # value 0, gradient reaches the indexer
        out = sparse_grouped_attention(q, k, v, idx, valid, bias)
        return poison_on_overflow(linear(out.reshape(b, s, -1), self.wo[...]), overflow), cache

    def cache_values_per_token(self) -> int:
        """Values stored per token per layer: keys and values plus the indexer key."""
        return 2 * self.n_kv_heads * self.head_dim + self.index_head_dim


def set_top_k(model, top_k: int) -> None:
    """Set ``top_k`` of every ``SparseAttention`` layer of a ``Transformer`` in place.

    DSA trains in two stages (DeepSeek-V3.2-Exp, §2.1): a short *dense warm-up*, in which
    attention still reads every key and only the indexer learns, then sparse training with
    top-k selection. Here the warm-up is ``set_top_k(model, seq_len)`` (the forward pass then
    equals full causal attention, and every key's score receives the straight-through
    gradient), followed by ``set_top_k(model, k)``. A jitted step retraces after the change.
    """
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    layers = [b.attn for b in model.blocks if isinstance(b.attn, SparseAttention)]
    if not layers:
        raise ValueError("set_top_k: the model has no SparseAttention layer "
                         "(its config's attention is not 'sparse')")
    for layer in layers:
        layer.top_k = top_k
