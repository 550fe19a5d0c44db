"""Routers: which experts does each token use, and with what weight?

A router is a linear layer ``d_model -> n_experts`` (the *router logits*) followed by a
score function and a selection rule. Everything here is a pure ``jax.numpy`` function on
flattened tokens ``x: [tokens, d_model]``; the ``Router`` module at the bottom only holds the
weights and picks the function named by ``MoEConfig.router``.

Token-choice routers (each token picks ``top_k`` experts) return a ``RouterOutput``:
    expert_index    [tokens, top_k] int32    the chosen experts, best first
    expert_weights  [tokens, top_k] float32  how much each chosen expert's output counts
    scores          [tokens, n_experts]      the probabilities / affinities (balance losses)
    logits          [tokens, n_experts]      raw router logits, float32 (z-loss)

The expert-choice router (each expert picks its tokens) returns an ``ExpertChoiceOutput``.

Balancing tools: the Switch load-balancing loss, DeepSeek-V3's sequence-wise balance loss,
ST-MoE's router z-loss, and DeepSeek-V3's auxiliary-loss-free bias update.

DeepSeek-V4's hash routing (experts from a token-id table) is in ``minimoe/v4/hash_routing.py``;
``Router`` runs it for the layers ``ModelConfig.num_hash_layers`` names.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from minimoe.blocks.ffn import init_weight
from minimoe.config import MoEConfig
from minimoe.moe.dispatch import compute_capacity, resolve_capacity

SCORE_FUNCTIONS = ("softmax", "sigmoid", "sqrt_softplus")


class RouterOutput(NamedTuple):
    """Result of a token-choice router (see the module docstring for shapes)."""

    expert_index: jax.Array  # [tokens, top_k] int32
    expert_weights: jax.Array  # [tokens, top_k] float32
    scores: jax.Array  # [tokens, n_experts] float32
    logits: jax.Array  # [tokens, n_experts] float32


class ExpertChoiceOutput(NamedTuple):
    """Result of the expert-choice router: every expert picks ``capacity`` tokens."""

    token_index: jax.Array  # [n_experts, capacity] int32
    weights: jax.Array  # [n_experts, capacity] float32
    scores: jax.Array  # [tokens, n_experts] float32
    logits: jax.Array  # [tokens, n_experts] float32


# ----------------------------------------------------------------------------------------
# Logits and score functions
# ----------------------------------------------------------------------------------------

def router_logits(x: jax.Array, w_router: jax.Array) -> jax.Array:
    """Router logits ``h = x W_r``, always computed in float32.

    Routing decisions are discrete, so a bf16 rounding can flip a token's expert; every MoE
    code base (Switch Transformer §2.4 "selective precision", DeepSeek-V3) keeps the router
    in float32.

    x: [tokens, d_model]; w_router: [d_model, n_experts] -> [tokens, n_experts] float32.
    """
    return x.astype(jnp.float32) @ w_router.astype(jnp.float32)  # [tokens, n_experts]


def softmax_scores(logits: jax.Array) -> jax.Array:
    """Softmax over experts: probabilities that sum to 1 per token (Shazeer 2017, Switch)."""
    return jax.nn.softmax(logits, axis=-1)  # [tokens, n_experts]


def sigmoid_scores(logits: jax.Array) -> jax.Array:
    """Independent per-expert affinities ``s = sigmoid(h)`` (DeepSeek-V3 eq. 15)."""
    return jax.nn.sigmoid(logits)  # [tokens, n_experts]


def sqrt_softplus_scores(logits: jax.Array) -> jax.Array:
    """DeepSeek-V4's affinities ``s = sqrt(softplus(h))``.

    Like the sigmoid, each expert is scored on its own (no competition between experts), but
    the score grows without bound (like sqrt(h)) instead of saturating at 1. ``softplus`` can
    underflow to 0 for very negative logits, where the gradient of ``sqrt`` is infinite, so
    it is floored at the smallest normal float32 (the floored entries get zero gradient).
    """
    sp = jax.nn.softplus(logits)  # [tokens, n_experts]
    return jnp.sqrt(jnp.maximum(sp, jnp.finfo(jnp.float32).tiny))


def score_fn(name: str):
    """The score function called ``name`` (one of ``SCORE_FUNCTIONS``)."""
    table = {"softmax": softmax_scores, "sigmoid": sigmoid_scores,
             "sqrt_softplus": sqrt_softplus_scores}
    if name not in table:
        raise ValueError(f"score must be one of {list(table)}, got {name!r}")
    return table[name]


def normalize_weights(weights: jax.Array) -> jax.Array:
    """Rescale the selected weights of each token to sum to 1. weights: [tokens, top_k]."""
    return weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)


# ----------------------------------------------------------------------------------------
# Token-choice routers
# ----------------------------------------------------------------------------------------

def softmax_topk(logits: jax.Array, top_k: int, renormalize: bool = True) -> RouterOutput:
    """Softmax scores, then the ``top_k`` most probable experts per token.

    ``p = softmax(h)``; the weights are the selected ``p`` values. With ``renormalize=True``
    they are rescaled to sum to 1 (Mixtral: ``softmax(top_k(h))``, which is the same thing);
    with ``renormalize=False`` they stay raw probabilities, as in GShard and the Switch
    Transformer (Lepikhin et al. 2020; Fedus et al. 2021 eq. 1-2).

    logits: [tokens, n_experts].
    """
    probs = softmax_scores(logits)  # [tokens, n_experts]
    weights, index = jax.lax.top_k(probs, top_k)  # [tokens, top_k] each
    if renormalize:
        weights = normalize_weights(weights)
    return RouterOutput(index.astype(jnp.int32), weights, probs, logits)


def switch_top1(logits: jax.Array) -> RouterOutput:
    """Switch Transformer routing (Fedus et al. 2021 §2.1): each token goes to its single most
    probable expert, and the expert output is multiplied by that probability ``p_i(x)``
    (not renormalised, otherwise the weight would always be 1 and the router get no gradient).
    """
    return softmax_topk(logits, 1, renormalize=False)


def noisy_topk(logits: jax.Array, top_k: int, key: jax.Array | None, noise_std: float,
               train: bool, renormalize: bool = True) -> RouterOutput:
    """Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks", eq. 3-5).

    ``H = h + noise_std * N(0, 1)`` during training (``train=True`` and a ``key`` given),
    ``H = h`` otherwise; ``G = softmax(KeepTopK(H, k))``. The weights are the softmax over the
    kept noisy logits, i.e. the top-k of ``softmax(H)`` renormalised to sum to 1; with
    ``renormalize=False`` they stay the selected probabilities (needed for ``top_k=1``, where
    the renormalised weight is always 1 and the router would not learn).

    Choice made here: the noise std is a fixed number (the paper learns a per-expert std with
    a second weight matrix ``W_noise``), and ``scores`` is ``softmax(H)`` -- the
    probabilities the selection actually used, noise included. ``logits`` stays the clean
    ``h`` (for the z-loss).

    logits: [tokens, n_experts].
    """
    noisy = logits
    if train and key is not None and noise_std > 0:
        noisy = logits + noise_std * jax.random.normal(key, logits.shape, logits.dtype)
    probs = softmax_scores(noisy)  # [tokens, n_experts]
    weights, index = jax.lax.top_k(probs, top_k)  # [tokens, top_k]
    if renormalize:
        weights = normalize_weights(weights)
    return RouterOutput(index.astype(jnp.int32), weights, probs, logits)


def group_limited_mask(biased_scores: jax.Array, n_group: int, topk_group: int) -> jax.Array:
    """Which experts a token may use under group-limited routing (DeepSeek-V3 §2.1.2).

    The experts are split into ``n_group`` equal consecutive groups (in DeepSeek-V3 one group
    is one node, so this limits how many nodes a token's activations travel to). A group's
    score is the sum of its two highest (bias-corrected) expert scores; the ``topk_group``
    best groups are kept and all experts of the other groups are masked out.

    biased_scores: [tokens, n_experts] -> mask [tokens, n_experts] bool (True = allowed).
    """
    tokens, n_experts = biased_scores.shape
    group_size = n_experts // n_group
    grouped = biased_scores.reshape(tokens, n_group, group_size)  # [tokens, n_group, group_size]
    top2, _ = jax.lax.top_k(grouped, min(2, group_size))  # [tokens, n_group, 2]
    group_scores = top2.sum(axis=-1)  # [tokens, n_group]
    _, best_groups = jax.lax.top_k(group_scores, topk_group)  # [tokens, topk_group]
    group_mask = jax.nn.one_hot(best_groups, n_group, dtype=jnp.bool_).any(axis=1)
    # group_mask: [tokens, n_group], True for the topk_group best groups
    return jnp.repeat(group_mask, group_size, axis=1)  # [tokens, n_experts]


def deepseek_route(logits: jax.Array, bias: jax.Array | None, top_k: int,
                   score: str = "sigmoid", n_group: int = 1, topk_group: int = 1,
                   routed_scaling_factor: float = 1.0, renormalize: bool = True) -> RouterOutput:
    """DeepSeek-V3 gating (DeepSeek-V3 report §2.1.2, eqs. 12-16), also V4 with
    ``score='sqrt_softplus'``.

    1. ``s_i = score(h_i)``: sigmoid (V3) or sqrt(softplus) (V4). ``score='softmax'`` gives
       DeepSeek-V2's scores, but not V2's group rule: V2's device-limited routing ranks a
       group by its *best* expert, while ``group_limited_mask`` is V3's rule (the sum of the
       two best); with ``n_group=1`` (no groups) and ``renormalize=False`` this is V2's gate.
    2. Selection uses the bias-corrected scores ``s_i + b_i`` (eq. 16): the bias only decides
       *which* experts are chosen (aux-loss-free balancing, ``update_router_bias``).
    3. Group-limited routing when ``n_group > 1`` (``group_limited_mask``).
    4. ``top_k`` over the remaining biased scores.
    5. Gating weights from the *unbiased* scores of the chosen experts, normalised to sum to
       1 (eq. 13, if ``renormalize``) and multiplied by ``routed_scaling_factor``.

    logits: [tokens, n_experts]; bias: [n_experts] or None.
    """
    scores = score_fn(score)(logits)  # [tokens, n_experts]
    biased = scores if bias is None else scores + bias.astype(scores.dtype)  # [tokens, n_experts]
    if n_group > 1:
        allowed = group_limited_mask(biased, n_group, topk_group)  # [tokens, n_experts]
        biased = jnp.where(allowed, biased, -jnp.inf)
    _, index = jax.lax.top_k(biased, top_k)  # [tokens, top_k]
    weights = jnp.take_along_axis(scores, index, axis=-1)  # [tokens, top_k], unbiased
    if renormalize:
        weights = normalize_weights(weights)
    weights = weights * routed_scaling_factor
    return RouterOutput(index.astype(jnp.int32), weights, scores, logits)


# ----------------------------------------------------------------------------------------
# Expert-choice router
# ----------------------------------------------------------------------------------------

def expert_choice(logits: jax.Array, capacity: int) -> ExpertChoiceOutput:
    """Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice
    Routing", eq. 1): the experts choose the tokens.

    ``S = softmax(h)`` over experts, per token; then each expert ``e`` takes the ``capacity``
    tokens with the highest ``S[:, e]``, weighted by that score. Every expert gets exactly
    ``capacity`` tokens, so the load is perfectly balanced by construction; a token may be
    picked by many experts or by none.

    Caution: in a decoder this is *non-causal*. Whether token ``t`` is picked depends on the
    scores of every other token in the batch, including tokens that come after ``t``, so
    information leaks from the future and generation one token at a time routes differently
    from training. It is shown for comparison, as the paper targets encoder-style use.

    logits: [tokens, n_experts] -> token_index, weights: [n_experts, capacity].
    """
    probs = softmax_scores(logits)  # [tokens, n_experts]
    weights, token_index = jax.lax.top_k(probs.T, capacity)  # [n_experts, capacity]
    return ExpertChoiceOutput(token_index.astype(jnp.int32), weights, probs, logits)


# ----------------------------------------------------------------------------------------
# Balance losses and bias balancing
# ----------------------------------------------------------------------------------------

def _normalized(scores: jax.Array) -> jax.Array:
    """Scores rescaled to sum to 1 over experts (a no-op for softmax probabilities; DeepSeek-V3
    eq. 19 for sigmoid affinities)."""
    return scores / (scores.sum(axis=-1, keepdims=True) + 1e-20)


def expert_fraction(expert_index: jax.Array, n_experts: int) -> jax.Array:
    """Fraction of the ``tokens * top_k`` assignments that go to each expert.

    expert_index: [tokens, top_k] -> [n_experts] float32, sums to 1.
    """
    counts = jnp.zeros((n_experts,), jnp.float32).at[expert_index.reshape(-1)].add(1.0)
    return counts / expert_index.size  # [n_experts]


def switch_aux_loss(scores: jax.Array, expert_index: jax.Array, n_experts: int) -> jax.Array:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4-6; GShard's ``l_aux``).

    ``loss = n_experts * sum_i f_i * P_i`` where ``f_i`` is the fraction of the
    ``tokens * top_k`` assignments routed to expert ``i`` (not differentiable) and ``P_i`` the
    mean over tokens of its score (differentiable, pulls probability away from busy experts).
    Scores are normalised to sum to 1 per token first, so sigmoid affinities work too.

    Normalised for top-k: uniform routing gives exactly 1.0; all tokens on one expert with
    probability 1 gives ``n_experts`` (with top_k > 1 a collapse onto the same k experts gives
    up to ``n_experts``, e.g. ``n_experts / top_k`` when the k share the probability).

    scores: [tokens, n_experts]; expert_index: [tokens, top_k] -> scalar.
    """
    f = expert_fraction(expert_index, n_experts)  # [n_experts]
    p = _normalized(scores.astype(jnp.float32)).mean(axis=0)  # [n_experts]
    return n_experts * jnp.sum(f * p)


def sequence_aux_loss(scores: jax.Array, expert_index: jax.Array, n_experts: int, top_k: int,
                      batch: int, seq: int) -> jax.Array:
    """DeepSeek-V3's complementary sequence-wise balance loss (report §2.1.2, eqs. 17-20).

    For each sequence of ``T = seq`` tokens:
        ``f_i = n_experts / (top_k * T) * #{t : expert i in the top-k of token t}``
        ``s'_{i,t} = s_{i,t} / sum_j s_{j,t}``,   ``P_i = 1/T sum_t s'_{i,t}``
        ``L = sum_i f_i P_i``
    and the result is averaged over the ``batch`` sequences. It is the Switch loss computed
    per sequence, so it stops a single sequence from crowding onto a few experts even when
    the batch as a whole is balanced. Uniform routing gives 1.0.

    scores: [batch * seq, n_experts]; expert_index: [batch * seq, top_k] -> scalar.
    """
    s = scores.reshape(batch, seq, n_experts)  # [batch, seq, n_experts]
    idx = expert_index.reshape(batch, seq, top_k)  # [batch, seq, top_k]
    per_sequence = jax.vmap(lambda s_b, i_b: switch_aux_loss(s_b, i_b, n_experts))(s, idx)
    return per_sequence.mean()  # [batch] -> scalar


def router_z_loss(logits: jax.Array) -> jax.Array:
    """Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): ``mean_t (logsumexp_i h_{t,i})^2``.

    Penalises large router logits, which make the softmax brittle and cause round-off
    trouble; it improves training stability without hurting quality.

    logits: [tokens, n_experts] -> scalar.
    """
    z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)  # [tokens]
    return jnp.mean(z ** 2)


def update_router_bias(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
    """Auxiliary-loss-free load balancing (DeepSeek-V3 §2.1.2; the rule MaxText uses).

    ``b_i <- b_i + rate * sign(mean(load) - load_i)``: an overloaded expert's bias goes down
    by ``rate``, an underloaded one's goes up, so it is picked less / more often next step.
    Applied after each optimizer step, outside the gradient (the bias is not a parameter).

    bias, load: [n_experts] (load as counts or fractions) -> [n_experts].
    """
    load = load.astype(jnp.float32)
    return bias + rate * jnp.sign(load.mean() - load).astype(bias.dtype)


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------

class RouterBias(nnx.Variable):
    """DeepSeek's per-expert selection bias: state, not a parameter.

    Being a ``nnx.Variable`` but not a ``nnx.Param``, it is left alone by ``nnx.grad`` and by
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; only ``update_router_bias`` changes it.
    """


DEEPSEEK_SCORES = {"deepseek_v3": "sigmoid", "deepseek_v4": "sqrt_softplus"}

# DeepSeek-V4's hash routing builds on the score functions above (minimoe/v4/hash_routing.py).
from minimoe.v4.hash_routing import HashTable, hash_route, hash_table  # noqa: E402


class Router(nnx.Module):
    """The router of an MoE layer, configured by ``MoEConfig.router``.

    Attributes:
        w_router: ``nnx.Param`` [d_model, n_experts], the router weights (no bias term).
        bias: ``RouterBias`` [n_experts], zeros at init; only for the DeepSeek routers
            (``deepseek_v3``: sigmoid scores, ``deepseek_v4``: sqrt-softplus), else ``None``.
        cfg: the ``MoEConfig``.

    ``routed_scaling_factor`` is applied here, to the weights of every router (it defaults
    to 1), so the dispatch code just uses ``expert_weights`` as they are.
    Group-limited routing (``n_group > 1``) is part of the DeepSeek routers only.

    Hash routing (DeepSeek-V4's first MoE layers): built with ``hash_vocab_size``, the router
    holds ``tid2eid``, a ``HashTable`` [vocab, top_k] from ``hash_table`` (seeded by the
    ``params`` stream), has no bias, and needs the ``token_ids`` when called (``hash_route``).
    """

    def __init__(self, d_model: int, cfg: MoEConfig, *, rngs: nnx.Rngs,
                 hash_vocab_size: int | None = None):
        self.cfg = cfg  # validated: group-limited routing only with the DeepSeek routers
        self.w_router = nnx.Param(init_weight(rngs.params(), (d_model, cfg.n_experts), d_model))
        self.hash = hash_vocab_size is not None
        if self.hash and cfg.router not in DEEPSEEK_SCORES:
            raise ValueError(f"hash routing needs router 'deepseek_v3' or 'deepseek_v4', "
                             f"got {cfg.router!r}")
        self.tid2eid = (HashTable(hash_table(rngs.params(), hash_vocab_size, cfg.n_experts,
                                             cfg.top_k)) if self.hash else None)
        self.bias = (RouterBias(jnp.zeros((cfg.n_experts,), jnp.float32))
                     if cfg.router in DEEPSEEK_SCORES and not self.hash else None)

    def expert_choice_capacity(self, tokens: int) -> int:
        """Tokens each expert picks under expert choice: ``capacity_factor`` (required by
        ``MoEConfig`` for this router) times the even share ``tokens * top_k / n_experts``, at
        most ``tokens``."""
        cfg = self.cfg
        return resolve_capacity(
            compute_capacity(tokens, cfg.top_k, cfg.n_experts, cfg.capacity_factor), tokens)

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | jax.Array | None = None,
                 token_ids: jax.Array | None = None) -> RouterOutput | ExpertChoiceOutput:
        """Route ``x: [tokens, d_model]``.

        Returns a ``RouterOutput``, or an ``ExpertChoiceOutput`` for ``router='expert_choice'``.
        ``rngs`` (an ``nnx.Rngs``, whose ``noise`` stream is used, or a key) is only needed
        by ``noisy_topk`` with ``train=True``; without it no noise is added.
        ``token_ids`` [tokens] int: needed by a hash router; the other routers do not use them
        (their experts depend on ``x`` only).
        """
        cfg = self.cfg
        logits = router_logits(x, self.w_router[...])  # [tokens, n_experts]
        if self.hash:
            if token_ids is None:
                raise ValueError("a hash-routed layer needs the token ids: call it with "
                                 "token_ids=[tokens] int")
            expert_index = self.tid2eid[...][token_ids.reshape(-1)]  # [tokens, top_k]
            return hash_route(logits, expert_index, DEEPSEEK_SCORES[cfg.router],
                              cfg.routed_scaling_factor, cfg.renormalize_weights)
        if cfg.router == "expert_choice":
            out = expert_choice(logits, self.expert_choice_capacity(x.shape[0]))
            return out._replace(weights=out.weights * cfg.routed_scaling_factor)
        if cfg.router in DEEPSEEK_SCORES:
            return deepseek_route(logits, self.bias[...], cfg.top_k, DEEPSEEK_SCORES[cfg.router],
                                  cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor,
                                  cfg.renormalize_weights)
        if cfg.router == "softmax":
            out = softmax_topk(logits, cfg.top_k, cfg.renormalize_weights)
        elif cfg.router == "switch":
            out = switch_top1(logits)
        elif cfg.router == "noisy_topk":
            key = rngs.noise() if isinstance(rngs, nnx.Rngs) else rngs
            out = noisy_topk(logits, cfg.top_k, key, cfg.router_noise_std, train,
                             cfg.renormalize_weights)
        else:  # MoEConfig validates the name; this guards against a new name added there only
            raise ValueError(f"unknown router {cfg.router!r}")
        return out._replace(expert_weights=out.expert_weights * cfg.routed_scaling_factor)
