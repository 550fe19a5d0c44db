"""Multi-head Latent Attention (MLA), DeepSeek-V2 (DeepSeek-AI 2024, §2.1, eqs. 9-19), as in V3.

MHA caches ``2 * n_heads * head_dim`` values per token per layer. MLA caches one small latent
vector instead, from which every head's key and value are re-created:

    c_kv  = RMSNorm(x W_dkv[:, :kv_lora_rank])               (eq. 9, normalised as in V2/V3)
    k_C   = c_kv W_uk,   v_C = c_kv W_uv                     (eqs. 10-11; W_uk, W_uv live in W_ukv)
    k_R   = RoPE(x W_dkv[:, kv_lora_rank:])                  (eq. 15: one key shared by all heads)
    c_q   = RMSNorm(x W_dq);  [q_C ; q_R] = c_q W_uq         (eqs. 12-13; q_R rotated, eq. 14)
    score = (q_C . k_C + q_R . k_R) / sqrt(qk_nope_head_dim + qk_rope_head_dim)   (eqs. 16-18)
    out   = (softmax(score) v_C) W_o                         (eq. 19)

The cache holds only ``c_kv`` [kv_lora_rank] and ``k_R`` [qk_rope_head_dim] per token
(512 + 64 values per layer in DeepSeek-V3, against 2 * 128 * 128 = 32768 for its MHA).

RoPE is *decoupled* (eqs. 14-15): a rotation between c_kv and W_uk would depend on the
position, so W_uk could not be folded into the query; a few extra rope channels carry the
position instead, and the "nope" channels stay position-free.

Two ways to run the same math (``absorb``):
- naive: up-project the cached latents to per-head keys and values, then ordinary attention;
- absorbed: fold W_uk into the query (``q_C . (c_kv W_uk) = (q_C W_uk^T) . c_kv``) and W_uv into
  the output, so attention runs directly on the latent: no per-head key or value is ever built.
  This is how DeepSeek-V3's ``inference/model.py`` decodes (its ``attn_impl == "absorb"``).
Both give the same outputs (tested); absorbed is the cheap one when decoding long contexts.

Two details follow DeepSeek's code (DeepSeek-V3 ``inference/model.py``) so the two can be
read side by side: RoPE pairs are *interleaved* (channels 2i and 2i+1, read as one complex
number; ``rope.apply_rope(..., interleaved=True)``), and the inner norms ``q_norm`` and
``kv_norm`` use a fixed epsilon of 1e-6 (``MLA_NORM_EPS``, whatever ``cfg.norm_eps`` is).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..blocks.attention import (cache_write, causal_mask, check_cache_room, masked_softmax,
                                poison_on_overflow)
from ..blocks.ffn import init_weight, linear
from ..blocks.norm import RMSNorm
from ..blocks.rope import (apply_rope, rope_angles, rope_angles_from_freq, yarn_inv_freq,
                          yarn_scales)
from ..config import ModelConfig


MLA_NORM_EPS = 1e-6  # DeepSeek's RMSNorm default, used for q_norm and kv_norm


class MLACache(NamedTuple):
    """What MLA keeps per token: the compressed latent and the shared rotated rope key.

    latent: [batch, max_len, kv_lora_rank] (after kv_norm); k_rope: [batch, max_len,
    qk_rope_head_dim] (already rotated); pos: int32 scalar, tokens written so far.
    """

    latent: jax.Array
    k_rope: jax.Array
    pos: jax.Array


def mla_naive(q_nope, q_rope, latent, k_rope, w_uk, w_uv, mask, scale=None):
    """MLA by up-projecting the latents to per-head keys and values (eqs. 10-11, 16-19).

    q_nope: [batch, q_len, n_heads, qk_nope]; q_rope: [batch, q_len, n_heads, qk_rope];
    latent: [batch, k_len, kv_lora_rank]; k_rope: [batch, k_len, qk_rope];
    w_uk: [kv_lora_rank, n_heads, qk_nope]; w_uv: [kv_lora_rank, n_heads, v_head_dim];
    mask: [q_len, k_len]. Returns [batch, q_len, n_heads, v_head_dim]. ``scale`` replaces
    ``1/sqrt(qk_nope + qk_rope)`` when given (YaRN's corrected softmax scale).
    """
    k_nope = jnp.einsum("blc,chd->blhd", latent, w_uk)  # [batch, k_len, n_heads, qk_nope]
    v = jnp.einsum("blc,chd->blhd", latent, w_uv)  # [batch, k_len, n_heads, v_head_dim]
    h = q_nope.shape[2]
    k_rope_h = jnp.broadcast_to(k_rope[:, :, None, :], k_rope.shape[:2] + (h, k_rope.shape[-1]))
    q = jnp.concatenate([q_nope, q_rope], axis=-1)  # [batch, q_len, n_heads, qk_nope + qk_rope]
    k = jnp.concatenate([k_nope, k_rope_h], axis=-1)  # [batch, k_len, n_heads, qk_nope + qk_rope]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bshd,blhd->bhsl", q, k).astype(jnp.float32) * scale
    probs = masked_softmax(scores, mask[None, None]).astype(v.dtype)  # [batch, heads, q, k]
    return jnp.einsum("bhsl,blhd->bshd", probs, v)


def mla_absorbed(q_nope, q_rope, latent, k_rope, w_uk, w_uv, mask, scale=None):
    """The same attention computed in latent space, with W_uk and W_uv absorbed.

    ``q_C . k_C = q_C . (c_kv W_uk) = (q_C W_uk^T) . c_kv``: each head's query is mapped into the
    kv_lora_rank-dim latent space once, then scored against the cached latents directly; the
    attention-weighted latent is mapped to values by W_uv afterwards (softmax weights sum over
    keys, W_uv is linear, so the order can be swapped). Same arguments and result as ``mla_naive``.
    """
    if scale is None:
        scale = (q_nope.shape[-1] + q_rope.shape[-1]) ** -0.5
    q_latent = jnp.einsum("bshd,chd->bshc", q_nope, w_uk)  # [batch, q_len, n_heads, kv_lora_rank]
    scores = (jnp.einsum("bshc,blc->bhsl", q_latent, latent)
              + jnp.einsum("bshr,blr->bhsl", q_rope, k_rope)).astype(jnp.float32) * scale
    probs = masked_softmax(scores, mask[None, None]).astype(latent.dtype)  # [batch, heads, q, k]
    out_latent = jnp.einsum("bhsl,blc->bshc", probs, latent)  # [batch, q_len, n_heads, kv_lora]
    return jnp.einsum("bshc,chd->bshd", out_latent, w_uv)  # [batch, q_len, n_heads, v_head_dim]


class MLAttention(nnx.Module):
    """Multi-head Latent Attention with a compressed KV cache (DeepSeek-V2 §2.1).

    Attributes (paper names; DeepSeek-V3's code calls them wq_a, wq_b, wkv_a, wkv_b, wo):
        w_dq [d_model, q_lora_rank], q_norm, w_uq [q_lora_rank, n_heads*(qk_nope+qk_rope)]:
            low-rank queries, when ``cfg.q_lora_rank`` is set; otherwise
        wq [d_model, n_heads*(qk_nope+qk_rope)]: full-rank queries.
        w_dkv [d_model, kv_lora_rank + qk_rope]: down-projection to the latent and the rope key.
        kv_norm: RMSNorm of the latent.
        w_ukv [kv_lora_rank, n_heads*(qk_nope + v_head_dim)]: up-projection; per head, the first
            qk_nope columns are W_uk, the rest W_uv.
        wo [n_heads*v_head_dim, d_model].
        absorb: decode in latent space (True) or by up-projecting keys/values (False).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, absorb: bool = False):
        d, h = cfg.d_model, cfg.n_heads
        self.n_heads = h
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, cfg.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.rope_theta = cfg.rope_theta
        self.absorb = absorb
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        # YaRN (DeepSeek's long-context RoPE): fixed frequencies and two scale factors, kept as
        # Python numbers; None: the plain rotation and 1/sqrt(qk)
        self.rope_inv_freq, self.rope_cos_sin_scale, self.softmax_scale = None, 1.0, None
        if cfg.rope_yarn is not None:
            freq = yarn_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_yarn)
            self.rope_inv_freq = tuple(float(f) for f in freq)
            self.rope_cos_sin_scale, softmax_factor = yarn_scales(cfg.rope_yarn)
            self.softmax_scale = qk ** -0.5 * softmax_factor
        if cfg.q_lora_rank is None:
            self.wq = nnx.Param(init_weight(rngs.params(), (d, h * qk), d))
        else:
            r = cfg.q_lora_rank
            self.w_dq = nnx.Param(init_weight(rngs.params(), (d, r), d))
            self.q_norm = RMSNorm(r, MLA_NORM_EPS)
            self.w_uq = nnx.Param(init_weight(rngs.params(), (r, h * qk), r))
        c = cfg.kv_lora_rank
        self.w_dkv = nnx.Param(init_weight(rngs.params(), (d, c + cfg.qk_rope_head_dim), d))
        self.kv_norm = RMSNorm(c, MLA_NORM_EPS)
        self.w_ukv = nnx.Param(
            init_weight(rngs.params(), (c, h * (cfg.qk_nope_head_dim + cfg.v_head_dim)), c))
        self.wo = nnx.Param(init_weight(rngs.params(), (h * cfg.v_head_dim, d), h * cfg.v_head_dim))

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> MLACache:
        return MLACache(jnp.zeros((batch_size, max_len, self.kv_lora_rank), dtype),
                        jnp.zeros((batch_size, max_len, self.qk_rope_head_dim), dtype),
                        jnp.zeros((), jnp.int32))

    def _up_weights(self):
        """W_uk [kv_lora_rank, n_heads, qk_nope] and W_uv [kv_lora_rank, n_heads, v_head_dim]."""
        w = self.w_ukv[...].reshape(self.kv_lora_rank, self.n_heads, -1)
        return w[..., :self.qk_nope_head_dim], w[..., self.qk_nope_head_dim:]

    def __call__(self, x: jax.Array, cache: MLACache | None = None, *, absorb: bool | None = None):
        """x: [batch, seq, d_model] -> ([batch, seq, d_model], cache). ``absorb`` overrides
        the module's setting for this call."""
        absorb = self.absorb if absorb is None else absorb
        b, s, _ = x.shape
        h, nope, rope = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        start = jnp.zeros((), jnp.int32) if cache is None else cache.pos
        overflow = None if cache is None else check_cache_room(start, s, cache.latent.shape[1])
        q_pos = start + jnp.arange(s)  # [seq]
        if self.rope_inv_freq is None:
            cos, sin = rope_angles(q_pos, rope, self.rope_theta)
        else:
            cos, sin = rope_angles_from_freq(q_pos, self.rope_inv_freq)
            cos, sin = cos * self.rope_cos_sin_scale, sin * self.rope_cos_sin_scale
        # queries (eqs. 12-14)
        if self.q_lora_rank is None:
            q = linear(x, self.wq[...])
        else:
            q = linear(self.q_norm(linear(x, self.w_dq[...])), self.w_uq[...])
        q = q.reshape(b, s, h, nope + rope)
        q_nope, q_rope = q[..., :nope], apply_rope(q[..., nope:], cos, sin, interleaved=True)
        # compressed latent and shared rope key (eqs. 9, 15): this is all that gets cached
        kv = linear(x, self.w_dkv[...])  # [batch, seq, kv_lora_rank + qk_rope]
        latent = self.kv_norm(kv[..., :self.kv_lora_rank])  # [batch, seq, kv_lora_rank]
        k_rope = apply_rope(kv[..., None, self.kv_lora_rank:], cos, sin,
                            interleaved=True)[:, :, 0]  # [batch, seq, qk_rope]
        if cache is None:
            k_pos = q_pos
        else:
            latent = cache_write(cache.latent, latent, start)
            k_rope = cache_write(cache.k_rope, k_rope, start)
            cache = MLACache(latent, k_rope, start + s)
            k_pos = jnp.arange(latent.shape[1])  # unwritten slots lie in the future: masked
        w_uk, w_uv = self._up_weights()
        attend = mla_absorbed if absorb else mla_naive
        out = attend(q_nope, q_rope, latent, k_rope, w_uk, w_uv, causal_mask(q_pos, k_pos),
                     self.softmax_scale)
        y = linear(out.reshape(b, s, h * self.v_head_dim), self.wo[...])
        return poison_on_overflow(y, overflow), cache

    def cache_values_per_token(self) -> int:
        """Values stored per token per layer: the latent plus the shared rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def mla_decode_flops_per_token(cfg: ModelConfig, context_len: int, absorb: bool) -> int:
    """Attention FLOPs (2 per multiply-add, all layers) of one decoded token over ``context_len``
    cached latents, for each way of running ``MLAttention`` (projections of the token's own x
    excluded, as in ``accounting.attention_flops_per_token``).

    naive: up-project every cached latent to keys and values (kv_lora_rank x n_heads x
    (qk_nope + v_head_dim) per cached token, every step), then score over qk_nope + qk_rope
    channels and sum values over v_head_dim channels.
    absorbed: map the query into latent space and the output back once per token
    (kv_lora_rank x n_heads x (qk_nope + v_head_dim)), then score over kv_lora_rank + qk_rope
    channels and sum latents over kv_lora_rank channels: more work per key than naive's
    attention alone, far less than naive's re-projection.
    """
    h, c, r = cfg.n_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    nope, v = cfg.qk_nope_head_dim, cfg.v_head_dim
    if absorb:
        macs = h * c * (nope + v) + context_len * h * (c + r + c)
    else:
        macs = context_len * (c * h * (nope + v) + h * (nope + r + v))
    return 2 * cfg.n_layers * macs
