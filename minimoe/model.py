"""The decoder-only language model: blocks of attention + feed-forward, dense or MoE.

Reading order: ``Block`` (pre-norm attention and FFN with residuals) → ``Transformer``
(embedding, blocks, final norm, output projection) → ``generate`` (sampling with a KV cache).
A layer's FFN is a dense SwiGLU, or a Mixture-of-Experts layer when ``cfg.moe`` is set and the
layer index is at least ``cfg.first_k_dense`` (DeepSeek keeps its first layers dense).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import Attention
from .config import ModelConfig
from .ffn import SwiGLU, linear
from .norm import RMSNorm


def make_attention(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The attention module named by ``cfg.attention``."""
    if cfg.attention == "gqa":
        return Attention(cfg, rngs=rngs)
    if cfg.attention == "sliding":
        return Attention(cfg, rngs=rngs, window=cfg.sliding_window)
    if cfg.attention == "mla":
        from .mla import MLAttention
        return MLAttention(cfg, rngs=rngs)
    if cfg.attention == "sparse":
        from .sparse_attention import SparseAttention
        return SparseAttention(cfg, rngs=rngs)
    raise ValueError(f"attention must be one of gqa, sliding, mla, sparse; got {cfg.attention!r}")


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``.

    Attributes: ``attn_norm``, ``attn``, ``ffn_norm``, ``ffn`` (SwiGLU or MoELayer), ``is_moe``.
    """

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = make_attention(cfg, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.residual_multiplier = cfg.residual_multiplier
        if self.is_moe:
            from .moe import MoELayer
            self.ffn = MoELayer(cfg.d_model, cfg.moe, rngs=rngs)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, rngs=rngs)

    def __call__(self, x, cache=None, *, train: bool = False, key: jax.Array | None = None):
        h, cache = self.attn(self.attn_norm(x), cache=cache)
        if self.residual_multiplier != 1.0:  # Granite scales each branch before the residual
            h = h * self.residual_multiplier
        x = x + h
        if self.is_moe:
            f, stats = self.ffn(self.ffn_norm(x), train=train, rngs=key)
        else:
            f, stats = self.ffn(self.ffn_norm(x)), None
        if self.residual_multiplier != 1.0:
            f = f * self.residual_multiplier
        return x + f, cache, stats


class LMOutput(NamedTuple):
    """What the model returns.

    logits: [batch, seq, vocab] float32; cache: per-layer caches (None without a cache);
    moe_stats: one ``MoEStats`` per MoE layer, in layer order; aux_loss: the weighted sum of
    the MoE layers' balancing losses, to add to the language-model loss.
    """

    logits: jax.Array
    cache: Any
    moe_stats: tuple
    aux_loss: jax.Array


class Transformer(nnx.Module):
    """Decoder-only LM. Attributes: ``embed`` [vocab, d_model], ``blocks``, ``final_norm``,
    ``lm_head`` [d_model, vocab] (absent when ``cfg.tie_embeddings``: logits use ``embed.T``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model)) * 0.02)
        self.blocks = nnx.data([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(
                jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab_size)) * cfg.d_model ** -0.5)

    def __call__(self, tokens: jax.Array, cache=None, *, train: bool = False,
                 key: jax.Array | None = None) -> LMOutput:
        """tokens: [batch, seq] int. ``key`` feeds training-time noise (noisy top-k routing)."""
        x = jnp.take(self.embed[...], tokens, axis=0)  # [batch, seq, d_model]
        if self.cfg.embedding_multiplier != 1.0:  # Granite
            x = x * self.cfg.embedding_multiplier
        new_cache, stats = [], []
        for i, block in enumerate(self.blocks):
            layer_key = None if key is None else jax.random.fold_in(key, i)
            x, c, s = block(x, None if cache is None else cache[i], train=train, key=layer_key)
            new_cache.append(c)
            if s is not None:
                stats.append(s)
        x = self.final_norm(x)
        w_out = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
        logits = linear(x, w_out).astype(jnp.float32)  # [batch, seq, vocab]
        if self.cfg.logits_scaling != 1.0:  # Granite divides the logits
            logits = logits / self.cfg.logits_scaling
        aux = sum((s.loss for s in stats), jnp.zeros((), jnp.float32))
        return LMOutput(logits, None if cache is None else tuple(new_cache), tuple(stats), aux)

    def init_cache(self, batch_size: int, max_len: int | None = None):
        """One empty cache per layer, able to hold ``max_len`` tokens (default max_seq_len)."""
        max_len = max_len or self.cfg.max_seq_len
        return tuple(b.attn.init_cache(batch_size, max_len) for b in self.blocks)

    def moe_layers(self) -> list:
        """The MoE feed-forward layers, in order (their stats come in the same order)."""
        return [b.ffn for b in self.blocks if b.is_moe]


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float = 1.0,
                  top_k: int | None = None) -> jax.Array:
    """Pick the next token from logits [batch, vocab].

    temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature),
    restricted to the ``top_k`` most likely tokens when given.
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [batch, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@nnx.jit(static_argnames=("temperature", "top_k"))
def _decode_step(model, tokens, cache, key, temperature, top_k):
    out = model(tokens, cache)
    return sample_logits(out.logits[:, -1], key, temperature, top_k), out.cache


def generate(model: Transformer, prompt: jax.Array, max_new_tokens: int, key: jax.Array,
             temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
    """Autoregressive sampling with a KV cache: prefill the prompt once, then one token a step.

    prompt: [batch, prompt_len] int. Returns [batch, prompt_len + max_new_tokens].
    """
    b, p = prompt.shape
    total = p + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt length + max_new_tokens = {total} exceeds max_seq_len={model.cfg.max_seq_len}")
    cache = model.init_cache(b, total)
    out = [prompt]
    tok, cache = _decode_step(model, prompt, cache, jax.random.fold_in(key, 0), temperature, top_k)
    for i in range(1, max_new_tokens + 1):
        out.append(tok[:, None])
        if i == max_new_tokens:
            break
        tok, cache = _decode_step(model, tok[:, None], cache, jax.random.fold_in(key, i),
                                  temperature, top_k)
    return jnp.concatenate(out, axis=1)
