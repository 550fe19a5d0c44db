"""The decoder-only language model: blocks of attention + feed-forward, dense or MoE.

Reading order: ``Block`` (pre-norm attention and FFN with residuals) → ``Transformer``
(embedding, blocks, final norm, output projection) → ``generate`` (sampling with a KV cache).
A layer's FFN is a dense SwiGLU, or a Mixture-of-Experts layer when ``cfg.moe`` is set and the
layer index is at least ``cfg.first_k_dense`` (DeepSeek keeps its first layers dense).

DeepSeek-V4's block, each off by default: ``cfg.hc_mult > 1`` replaces the residual by
manifold-constrained hyper-connections (``v4/hyper_connections.py``: the embedding is copied
into ``hc_mult`` streams, every sub-layer is wrapped, the head combines the streams);
``cfg.num_hash_layers`` makes the first MoE layers route by token id (the blocks get the
token ids); ``cfg.num_nextn_predict_layers = 1`` adds the multi-token-prediction module
``Transformer.mtp`` (``v4/mtp.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks.attention import Attention
from .blocks.ffn import SwiGLU, linear
from .blocks.norm import RMSNorm
from .config import ModelConfig
from .v4.hyper_connections import HyperConnection, HyperHead, expand_streams


def make_attention(cfg: ModelConfig, *, rngs: nnx.Rngs, layer: int = 0) -> nnx.Module:
    """The attention module named by ``cfg.attention`` (for ``compressed``, the kind of block
    ``layer`` comes from ``cfg.compress_ratios[layer]``)."""
    if cfg.attention in ("gqa", "sliding"):  # Attention reads cfg.sliding_window itself
        return Attention(cfg, rngs=rngs)
    if cfg.attention == "mla":
        from .long_context.mla import MLAttention
        return MLAttention(cfg, rngs=rngs)
    if cfg.attention == "sparse":
        from .long_context.sparse_attention import SparseAttention
        return SparseAttention(cfg, rngs=rngs)
    if cfg.attention == "compressed":
        from .long_context.compressed_attention import CompressedAttention
        return CompressedAttention(cfg, layer, rngs=rngs)
    raise ValueError(f"attention must be one of gqa, sliding, mla, sparse, compressed; "
                     f"got {cfg.attention!r}")


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``.

    Attributes: ``attn_norm``, ``attn``, ``ffn_norm``, ``ffn`` (SwiGLU or MoELayer), ``is_moe``,
    ``is_hash`` (a hash-routed MoE layer), ``hc_attn`` and ``hc_ffn`` (``HyperConnection``s
    around the two sub-layers when ``cfg.hc_mult > 1``, else ``None``).

    With mHC, ``x`` is [batch, seq, hc_mult, d_model] and each residual ``x + f(norm(x))``
    becomes ``hc.post(f(norm(y)), x)`` with ``y = hc.pre(x)`` (DeepSeek-V4's ``Block``).
    """

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = make_attention(cfg, rngs=rngs, layer=layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.is_hash = cfg.is_hash_layer(layer)
        self.residual_multiplier = cfg.residual_multiplier
        if self.is_moe:
            from .moe.layer import MoELayer
            self.ffn = MoELayer(cfg.d_model, cfg.moe, rngs=rngs,
                                hash_vocab_size=cfg.vocab_size if self.is_hash else None)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, rngs=rngs)
        if cfg.hc_mult > 1:
            hc = (cfg.d_model, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps)
            self.hc_attn = HyperConnection(*hc, rngs=rngs)
            self.hc_ffn = HyperConnection(*hc, rngs=rngs)
        else:
            self.hc_attn = self.hc_ffn = None

    def _ffn(self, y, train: bool, key, token_ids):
        if not self.is_moe:
            return self.ffn(y), None
        if self.is_hash:
            return self.ffn(y, train=train, rngs=key, token_ids=token_ids)
        return self.ffn(y, train=train, rngs=key)

    def __call__(self, x, cache=None, *, train: bool = False, key: jax.Array | None = None,
                 token_ids: jax.Array | None = None):
        """x: [batch, seq, d_model] ([batch, seq, hc_mult, d_model] with mHC). ``token_ids``
        [batch, seq]: the input tokens, used by a hash-routed MoE layer only."""
        if self.hc_attn is not None:
            y, coef = self.hc_attn.pre(x)  # [batch, seq, d_model]
            h, cache = self.attn(self.attn_norm(y), cache=cache)
            x = self.hc_attn.post(h, x, coef)
            y, coef = self.hc_ffn.pre(x)
            f, stats = self._ffn(self.ffn_norm(y), train, key, token_ids)
            return self.hc_ffn.post(f, x, coef), cache, stats
        h, cache = self.attn(self.attn_norm(x), cache=cache)
        if self.residual_multiplier != 1.0:  # Granite scales each branch before the residual
            h = h * self.residual_multiplier
        x = x + h
        f, stats = self._ffn(self.ffn_norm(x), train, key, token_ids)
        if self.residual_multiplier != 1.0:
            f = f * self.residual_multiplier
        return x + f, cache, stats


class LMOutput(NamedTuple):
    """What the model returns.

    logits: [batch, seq, vocab] float32; cache: per-layer caches (None without a cache);
    moe_stats: one ``MoEStats`` per MoE layer, in layer order; aux_loss: the weighted sum of
    the MoE layers' balancing losses, to add to the language-model loss; hidden: the last
    block's output before the head, [batch, seq, d_model] ([batch, seq, hc_mult, d_model]
    with mHC) -- what the multi-token-prediction module reads.
    """

    logits: jax.Array
    cache: Any
    moe_stats: tuple
    aux_loss: jax.Array
    hidden: Any = None


class Transformer(nnx.Module):
    """Decoder-only LM. Attributes: ``embed`` [vocab, d_model], ``blocks``, ``final_norm``,
    ``lm_head`` [d_model, vocab] (absent when ``cfg.tie_embeddings``: logits use ``embed.T``);
    with DeepSeek-V4's options, ``hc_head`` (``HyperHead``, when ``cfg.hc_mult > 1``) and
    ``mtp`` (``mtp.MTP``, when ``cfg.num_nextn_predict_layers = 1``), else ``None``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model)) * 0.02)
        self.blocks = nnx.data([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(
                jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab_size)) * cfg.d_model ** -0.5)
        self.hc_head = (HyperHead(cfg.d_model, cfg.hc_mult, cfg.hc_eps, cfg.norm_eps, rngs=rngs)
                        if cfg.hc_mult > 1 else None)
        if cfg.num_nextn_predict_layers:
            from .v4.mtp import MTP
            self.mtp = MTP(cfg, rngs=rngs)
        else:
            self.mtp = None

    def __call__(self, tokens: jax.Array, cache=None, *, train: bool = False,
                 key: jax.Array | None = None) -> LMOutput:
        """tokens: [batch, seq] int. ``key`` feeds training-time noise (noisy top-k routing).

        With a ``cache`` (prefill and decoding) the MoE layers are dropless, as in every
        inference call (``MoELayer``), so decoding equals the full forward pass; expert-choice
        routing, which picks tokens by looking at the whole batch, is refused.
        """
        if cache is not None:
            check_decodable(self.cfg)
        x = jnp.take(self.embed[...], tokens, axis=0)  # [batch, seq, d_model]
        if self.cfg.embedding_multiplier != 1.0:  # Granite
            x = x * self.cfg.embedding_multiplier
        if self.hc_head is not None:
            x = expand_streams(x, self.cfg.hc_mult)  # [batch, seq, hc_mult, d_model]
        new_cache, stats = [], []
        for i, block in enumerate(self.blocks):
            layer_key = None if key is None else jax.random.fold_in(key, i)
            x, c, s = block(x, None if cache is None else cache[i], train=train, key=layer_key,
                            token_ids=tokens)
            new_cache.append(c)
            if s is not None:
                stats.append(s)
        logits = self.head(x, self.hc_head, self.final_norm)  # [batch, seq, vocab]
        aux = sum((s.loss for s in stats), jnp.zeros((), jnp.float32))
        return LMOutput(logits, None if cache is None else tuple(new_cache), tuple(stats), aux,
                        x)

    def head(self, x: jax.Array, hc_head: HyperHead | None, norm: RMSNorm) -> jax.Array:
        """Logits [..., vocab] float32 of a last hidden state: combine the streams (mHC's
        ``hc_head``, if any), normalise, project with ``lm_head`` (or ``embed.T`` when tied).
        The MTP module calls it with its own ``hc_head`` and norm: the projection is shared."""
        if hc_head is not None:
            x = hc_head(x)  # [..., d_model]
        x = norm(x)
        w_out = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
        logits = linear(x, w_out).astype(jnp.float32)
        if self.cfg.logits_scaling != 1.0:  # Granite divides the logits
            logits = logits / self.cfg.logits_scaling
        return logits

    def init_cache(self, batch_size: int, max_len: int | None = None):
        """One empty cache per layer, able to hold ``max_len`` tokens (default max_seq_len)."""
        max_len = max_len or self.cfg.max_seq_len
        return tuple(b.attn.init_cache(batch_size, max_len) for b in self.blocks)

    def moe_layers(self) -> list:
        """The MoE feed-forward layers, in order (their stats come in the same order)."""
        return [b.ffn for b in self.blocks if b.is_moe]


def check_decodable(cfg: ModelConfig) -> None:
    """Raise ``ValueError`` if a model with this config cannot decode with a KV cache.

    Expert choice (Zhou et al. 2022) lets each expert pick its tokens among all tokens of the
    call: a token's output depends on the later tokens, so no causal token-by-token decoding
    reproduces the forward pass. Every token-choice router can decode.
    """
    if cfg.moe is not None and cfg.moe.router == "expert_choice":
        raise ValueError("router 'expert_choice' cannot decode with a KV cache: each expert picks "
                         "its tokens among all tokens of the call, including later ones, so "
                         "decoding one token at a time would route differently from the forward "
                         "pass; use a token-choice router (any router except 'expert_choice')")


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
    check_decodable(model.cfg)
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
