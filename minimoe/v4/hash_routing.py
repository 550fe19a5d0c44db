"""DeepSeek-V4's hash routing: the first MoE layers take their experts from the token id.

In V4's first ``num_hash_layers`` MoE layers the experts of token id ``v`` are fixed, the row
``tid2eid[v]`` of a table shipped in the checkpoint; only the gate weights come from the
router, from the same scores as V4's learned routing (``minimoe.moe.router``). The table is
state, not a parameter (``HashTable``); ``Router`` holds one when built with
``hash_vocab_size``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from minimoe.moe.router import RouterOutput, normalize_weights, score_fn


class HashTable(nnx.Variable):
    """DeepSeek-V4's fixed token-id -> experts table ``tid2eid``: state, never trained."""



def hash_table(key: jax.Array, vocab_size: int, n_experts: int, top_k: int) -> jax.Array:
    """A fixed, balanced token-id -> experts table (DeepSeek-V4's ``tid2eid``).

    V4's first ``num_hash_layers`` MoE layers do not choose experts from the hidden state:
    token id ``v`` always goes to the experts ``tid2eid[v]``. V4 ships its table in the
    checkpoint; here it is built from ``key``: the token ids are shuffled, the token at
    shuffled position ``p`` gets the ``top_k`` consecutive slots ``p*top_k, ..., p*top_k +
    top_k - 1`` of a cyclic sequence over the (shuffled) experts. So a row never repeats an
    expert (``top_k <= n_experts``) and over the vocabulary every expert gets
    ``floor(vocab_size * top_k / n_experts)`` or one more entries.

    -> [vocab_size, top_k] int32.
    """
    if top_k > n_experts:
        raise ValueError(f"top_k must be <= n_experts ({n_experts}), got {top_k}")
    k_tok, k_exp = jax.random.split(key)
    token_order = jax.random.permutation(k_tok, vocab_size)  # position p -> token id
    expert_names = jax.random.permutation(k_exp, n_experts)  # cyclic slot -> expert id
    slots = jnp.arange(vocab_size)[:, None] * top_k + jnp.arange(top_k)  # [vocab, top_k]
    table = jnp.zeros((vocab_size, top_k), jnp.int32).at[token_order].set(
        expert_names[slots % n_experts].astype(jnp.int32))
    return table


def hash_route(logits: jax.Array, expert_index: jax.Array, score: str = "sqrt_softplus",
               routed_scaling_factor: float = 1.0, renormalize: bool = True) -> RouterOutput:
    """DeepSeek-V4's hash-routed gate: fixed experts, learned weights.

    The experts come from the token-id table (``expert_index = tid2eid[token_ids]``); the
    gate weights are the router's scores of those experts, ``s = score(x W_r)`` gathered at
    ``expert_index``, normalised to sum to 1 (``renormalize``) and multiplied by
    ``routed_scaling_factor`` -- the same steps as ``deepseek_route`` after its top-k. The
    router weights still learn (through the weights); the hash layers have no selection bias.

    logits: [tokens, n_experts]; expert_index: [tokens, top_k] int.
    """
    scores = score_fn(score)(logits)  # [tokens, n_experts]
    weights = jnp.take_along_axis(scores, expert_index, axis=-1)  # [tokens, top_k]
    if renormalize:
        weights = normalize_weights(weights)
    weights = weights * routed_scaling_factor
    return RouterOutput(expert_index.astype(jnp.int32), weights, scores, logits)
