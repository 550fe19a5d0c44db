"""The Mixture-of-Experts feed-forward layer: router + routed experts + shared experts.

    y = sum_{i in top_k(x)} g_i(x) FFN_i(x)   +   sum_j SharedFFN_j(x)

(DeepSeekMoE, Dai et al. 2024, eq. 9-11; DeepSeek-V3 eq. 12). The layer returns its output
*and* an ``MoEStats`` of plain arrays -- load per expert, dropped fraction, balance losses --
so a training loop can log them, add ``stats.loss`` to the language-model loss, and feed
``stats.load`` to ``MoELayer.update_bias`` (DeepSeek's aux-loss-free balancing), all inside
``jit``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from minimoe.blocks.ffn import SwiGLU
from minimoe.config import MoEConfig
from minimoe.moe.dispatch import DispatchResult, compute_capacity, dispatch
from minimoe.moe.experts import Experts, expert_ffn
from minimoe.moe.router import (ExpertChoiceOutput, Router, RouterOutput, router_z_loss,
                                sequence_aux_loss, switch_aux_loss, update_router_bias)


class MoEStats(NamedTuple):
    """Statistics of one MoE layer call (all arrays, so they pass through ``jit``).

    load: [n_experts] float32, fraction of the token-slot assignments each expert received
        (before dropping); sums to 1.
    tokens_per_expert: [n_experts] int32, assignments per expert before dropping.
    dropped_fraction: scalar, fraction of token-slot assignments dropped for capacity
        (expert choice: fraction of tokens no expert picked).
    aux_loss: Switch load-balancing loss (unweighted; 1.0 = perfectly balanced).
    seq_aux_loss: DeepSeek-V3 sequence-wise balance loss (unweighted).
    z_loss: router z-loss (unweighted).
    loss: ``aux_loss_coef * aux_loss + seq_aux_loss_coef * seq_aux_loss
        + z_loss_coef * z_loss``, to be added to the language-model loss.
    expert_index: [tokens, top_k] int32, the experts each token was routed to (expert
        choice: [tokens, 1], the expert that weighted the token most, -1 if none picked it).
    """

    load: jax.Array
    tokens_per_expert: jax.Array
    dropped_fraction: jax.Array
    aux_loss: jax.Array
    seq_aux_loss: jax.Array
    z_loss: jax.Array
    loss: jax.Array
    expert_index: jax.Array


def weighted_loss(cfg: MoEConfig, aux_loss, seq_aux_loss, z_loss) -> jax.Array:
    """The balance losses weighted by the config's coefficients.

    Terms whose coefficient is 0 are left out rather than multiplied by 0, so that their
    gradients are not computed at all (XLA does not simplify ``0.0 * x`` away: x could be NaN).
    """
    terms = [(cfg.aux_loss_coef, aux_loss), (cfg.seq_aux_loss_coef, seq_aux_loss),
             (cfg.z_loss_coef, z_loss)]
    return sum((c * loss for c, loss in terms if c != 0), jnp.zeros((), jnp.float32))


def token_choice_stats(routing: RouterOutput, kept: jax.Array, tokens_per_expert: jax.Array,
                       cfg: MoEConfig, batch: int, seq: int) -> MoEStats:
    """``MoEStats`` of a token-choice router (every router except expert choice).

    kept: [tokens, top_k] bool; tokens_per_expert: [n_experts] int32.
    """
    load = tokens_per_expert.astype(jnp.float32) / kept.size  # [n_experts], sums to 1
    dropped_fraction = 1.0 - jnp.mean(kept.astype(jnp.float32))
    aux = switch_aux_loss(routing.scores, routing.expert_index, cfg.n_experts)
    seq_aux = sequence_aux_loss(routing.scores, routing.expert_index, cfg.n_experts, cfg.top_k,
                                batch, seq)
    z = router_z_loss(routing.logits)
    return MoEStats(load, tokens_per_expert, dropped_fraction, aux, seq_aux, z,
                    weighted_loss(cfg, aux, seq_aux, z), routing.expert_index)


def expert_choice_ffn(x: jax.Array, token_index: jax.Array, weights: jax.Array,
                      w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array,
                      swiglu_limit: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Run experts on the tokens they chose (Zhou et al. 2022, §3.1).

    ``x_buf[e, c] = x[token_index[e, c]]`` (a gather: the buffers are already the right
    size, nothing to sort or drop), ``y_buf = expert_ffn(x_buf)``, then every result is
    scatter-added to its token times the expert's weight for it.

    x: [tokens, d_model]; token_index, weights: [n_experts, capacity]
    -> (output [tokens, d_model], times_picked [tokens] int32: how many experts chose it).
    """
    tokens, d_model = x.shape
    x_buf = x[token_index]  # [E, C, d]
    y_buf = expert_ffn(x_buf, w_gate, w_up, w_down, swiglu_limit=swiglu_limit)  # [E, C, d]
    contrib = y_buf * weights[..., None]  # [E, C, d]
    output = jnp.zeros((tokens, d_model), contrib.dtype).at[token_index.reshape(-1)].add(
        contrib.reshape(-1, d_model))  # [T, d]
    times_picked = jnp.bincount(token_index.reshape(-1), length=tokens).astype(jnp.int32)
    return output, times_picked


def expert_choice_stats(routing: ExpertChoiceOutput, times_picked: jax.Array,
                        cfg: MoEConfig) -> MoEStats:
    """``MoEStats`` of expert-choice routing. Every expert takes exactly ``capacity`` tokens,
    so the load is uniform and the balance losses are not needed (reported as 0); the
    z-loss still applies. ``dropped_fraction`` = fraction of tokens no expert picked."""
    n_experts, capacity = routing.token_index.shape
    tokens_per_expert = jnp.full((n_experts,), capacity, jnp.int32)
    load = jnp.full((n_experts,), 1.0 / n_experts, jnp.float32)
    dropped_fraction = jnp.mean((times_picked == 0).astype(jnp.float32))
    zero = jnp.zeros((), jnp.float32)
    z = router_z_loss(routing.logits)
    tokens = times_picked.shape[0]
    experts = jnp.broadcast_to(jnp.arange(n_experts)[:, None], routing.token_index.shape)
    weight_of = jnp.zeros((tokens, n_experts), jnp.float32).at[
        routing.token_index, experts].max(routing.weights)  # [tokens, n_experts]
    top = jnp.where(times_picked > 0, jnp.argmax(weight_of, axis=-1), -1).astype(jnp.int32)
    return MoEStats(load, tokens_per_expert, dropped_fraction, zero, zero, z,
                    weighted_loss(cfg, zero, zero, z), top[:, None])


def check_moe_input(x: jax.Array, d_model: int) -> None:
    """An MoE layer takes [batch, seq, d_model] (the sequence axis matters for the
    sequence-wise balance loss); anything else is a ``ValueError`` that says so."""
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"an MoE layer takes x of shape [batch, seq, d_model={d_model}], got "
                         f"shape {tuple(x.shape)}" + (" (add a batch axis: x[None])"
                                                      if x.ndim == 2 else ""))


class MoELayer(nnx.Module):
    """A sparse MoE feed-forward layer (DeepSeekMoE style).

    Attributes:
        router: ``Router`` (``cfg.router``; holds ``w_router`` and DeepSeek's bias).
        experts: ``Experts``, ``n_experts`` routed SwiGLU experts of hidden ``d_expert``.
        shared_experts: ``SwiGLU`` of hidden ``cfg.shared_hidden`` that every token uses
            (the ``n_shared_experts`` shared experts fused into one FFN), or ``None``.
        cfg: the ``MoEConfig``.

    The router already multiplies the weights by ``routed_scaling_factor``. A token dropped
    by every expert gets only the shared-expert output (0 without shared experts), so the
    residual connection passes it through unchanged.

    DeepSeek-V4 options: ``hash_vocab_size`` makes the router a hash router (experts from
    the token-id table; call the layer with ``token_ids``); ``cfg.swiglu_limit`` clamps the
    SwiGLU of the routed and the shared experts.
    """

    def __init__(self, d_model: int, cfg: MoEConfig, *, rngs: nnx.Rngs,
                 hash_vocab_size: int | None = None):
        self.cfg = cfg
        self.d_model = d_model
        self.router = Router(d_model, cfg, rngs=rngs, hash_vocab_size=hash_vocab_size)
        self.experts = Experts(d_model, cfg.n_experts, cfg.d_expert, rngs=rngs)
        self.shared_experts = (SwiGLU(d_model, cfg.shared_hidden, rngs=rngs,
                                      limit=cfg.swiglu_limit)
                               if cfg.n_shared_experts > 0 else None)

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | jax.Array | None = None,
                 token_ids: jax.Array | None = None) -> tuple[jax.Array, MoEStats]:
        """x: [batch, seq, d_model] -> (y [batch, seq, d_model], MoEStats).

        ``train=True`` applies ``capacity_factor`` (token-choice routers drop over-capacity
        assignments in training only); inference is dropless, so the output of a token does not
        depend on how many tokens share the call, and a KV-cached decode equals the full
        forward pass. Expert choice always picks ``capacity`` tokens per expert (it is not
        causal; ``Transformer`` refuses it in cached calls). ``rngs`` (an ``nnx.Rngs``, whose
        ``noise`` stream is used, or a plain PRNG key) feeds the ``noisy_topk`` router's noise
        in training. ``token_ids`` [batch, seq] int: the tokens' ids, needed by a hash-routed
        layer.
        """
        cfg = self.cfg
        check_moe_input(x, self.d_model)
        batch, seq, d_model = x.shape
        tokens = x.reshape(batch * seq, d_model)  # [T, d]
        ids = None if token_ids is None else token_ids.reshape(batch * seq)  # [T]
        routing = self.router(tokens, train=train, rngs=rngs, token_ids=ids)
        if isinstance(routing, ExpertChoiceOutput):
            routed, times_picked = expert_choice_ffn(tokens, routing.token_index,
                                                     routing.weights, *self.experts.weights(),
                                                     cfg.swiglu_limit or None)
            stats = expert_choice_stats(routing, times_picked, cfg)
        else:
            result = self.dispatch_routed(tokens, routing, train=train)
            routed = result.output
            stats = token_choice_stats(routing, result.kept, result.tokens_per_expert, cfg,
                                       batch, seq)
        y = routed  # [T, d]
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        return y.astype(x.dtype).reshape(batch, seq, d_model), stats

    def dispatch_routed(self, tokens: jax.Array, routing: RouterOutput, *,
                        train: bool) -> DispatchResult:
        """The token-choice step of ``__call__``: each token to its experts and back.

        tokens: [T, d_model]; routing: the router's output (``expert_index``,
        ``expert_weights``: [T, top_k]) -> ``DispatchResult`` (output [T, d_model], kept,
        tokens_per_expert). ``dispatch`` with ``cfg.dispatch``; the capacity
        (``compute_capacity``) applies in training only. Expert parallelism
        (``parallel.ExpertParallelMoELayer``) replaces this one step.
        """
        cfg = self.cfg
        capacity = compute_capacity(tokens.shape[0], cfg.top_k, cfg.n_experts,
                                    cfg.capacity_factor) if train else None
        return dispatch(cfg.dispatch, tokens, routing.expert_index, routing.expert_weights,
                        *self.experts.weights(), capacity=capacity,
                        swiglu_limit=cfg.swiglu_limit or None)

    def update_bias(self, load: jax.Array) -> None:
        """DeepSeek-V3 aux-loss-free balancing: nudge the router bias with this layer's
        ``stats.load`` (``update_router_bias``, step ``cfg.bias_update_rate``).

        Call it from the training loop after each optimizer step; the optimizer never sees
        the bias. Does nothing when the router has no bias or the rate is 0.
        """
        bias = self.router.bias
        if bias is None or self.cfg.bias_update_rate <= 0:
            return
        bias[...] = update_router_bias(bias[...], load, self.cfg.bias_update_rate)
