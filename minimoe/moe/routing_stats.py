"""Measurements of routing: how even the load is, which experts each domain uses, and how often
neighbouring tokens share experts.

None of this is part of the model; they are the numbers notebooks 00, 03 and 04 report about a
trained router, computed from the ``load`` and ``expert_index`` an ``MoEStats`` carries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def balance_metrics(load) -> dict:
    """How even a load is: ``max_over_mean`` (1 = perfect; its ceiling is n_experts / top_k,
    one expert in every token's top-k, since a token's k choices are distinct experts) and the
    coefficient of variation ``cv`` = std / mean (0 = perfect)."""
    load = jnp.asarray(load, jnp.float32)
    mean = jnp.mean(load)
    return {"max_over_mean": float(jnp.max(load) / mean), "cv": float(jnp.std(load) / mean)}


def routing_by_domain(expert_index, domains, n_domains: int, n_experts: int) -> jax.Array:
    """[n_domains, n_experts]: the fraction of each domain's token-slot assignments that went
    to each expert (rows sum to 1; a row of zeros for a domain with no tokens).

    expert_index: [tokens, top_k] (entries < 0 are ignored); domains: [tokens] int.
    """
    idx = jnp.asarray(expert_index).reshape(expert_index.shape[0], -1)
    dom = jnp.broadcast_to(jnp.asarray(domains)[:, None], idx.shape)
    valid = idx >= 0
    counts = jnp.zeros((n_domains, n_experts), jnp.float32).at[
        jnp.where(valid, dom, 0), jnp.where(valid, idx, 0)].add(valid.astype(jnp.float32))
    return counts / jnp.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def consecutive_overlap(expert_index) -> jax.Array:
    """How often neighbouring tokens share experts: the mean over t of
    ``|E_t ∩ E_{t+1}| / top_k``, where E_t is the set of experts of token t (token choice:
    each token's ``top_k`` experts are distinct).

    1 means every token reuses its predecessor's experts, 0 that it never does; a router that
    picked experts uniformly at random would give ``top_k / n_experts``.

    expert_index: [seq, top_k], the tokens of ONE sequence in order -> scalar float32.
    """
    idx = jnp.asarray(expert_index)
    shared = (idx[1:, :, None] == idx[:-1, None, :]).any(axis=-1)  # [seq-1, top_k]
    return jnp.mean(shared.sum(axis=-1) / idx.shape[1])
