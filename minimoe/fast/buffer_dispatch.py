"""The two capacity strategies that fill fixed ``[n_experts, capacity]`` buffers.

``dispatch_reference`` (``minimoe.moe.dispatch``) runs one expert per (token, slot) and copies
an expert's weights for every assignment. These two compute the same result with one batched
matmul over the expert axis, on buffers whose shape is fixed by the capacity:

    onehot  GShard's 0/1 dispatch mask [tokens, n_experts, capacity] and two einsums: simple,
            but the mask grows with tokens * capacity, quadratically in the batch.
    sort    a stable sort of the assignments by expert, then gathers into and out of the
            buffers (``minimoe.fast.gather``): nothing larger than the buffers is built.

Both keep ``position_in_expert``'s slot-major priority, so they drop exactly the assignments
the reference drops (``tests/test_dispatch.py``). The sort is shared with the dropless
strategies (``minimoe.fast.dropless``). Choose them with ``MoEConfig.dispatch``.

Shape names as in ``minimoe.moe.dispatch``: tokens T, top_k k, assignments A = T * k,
experts E, capacity C, d_model d.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from minimoe.fast.gather import from_buffers, to_buffers
from minimoe.moe.dispatch import (DispatchResult, count_tokens_per_expert, position_in_expert,
                                  resolve_capacity, slot_major, token_major)
from minimoe.moe.experts import expert_ffn


# ----------------------------------------------------------------------------------------
# onehot (GShard / Switch)
# ----------------------------------------------------------------------------------------

def dispatch_onehot(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                    capacity: int | None = None,
                    swiglu_limit: float | None = None) -> DispatchResult:
    """GShard-style dispatch with dense 0/1 tensors (Lepikhin et al. 2020, Algorithm 1;
    Switch Transformer's Mesh-TF implementation).

    ``dispatch_mask[t, e, c] = 1`` iff token t's assignment to expert e sits in slot c of
    e's buffer; ``combine[t, e, c]`` is the same with the router weight instead of 1. Then
    ``x_buf = einsum(dispatch_mask, x)``, ``y_buf = expert_ffn(x_buf)``,
    ``y = einsum(combine, y_buf)``. Simple and accelerator friendly, but the masks cost
    ``O(T * E * C)`` memory and FLOPs, which grows quadratically with tokens.

    ``capacity=None`` means ``capacity = tokens`` (no drops).
    """
    tokens, _ = x.shape
    n_experts = w_gate.shape[0]
    capacity = resolve_capacity(capacity, tokens)
    position = position_in_expert(expert_index, n_experts)  # [T, k]
    kept = position < capacity  # [T, k]
    expert_onehot = jax.nn.one_hot(expert_index, n_experts, dtype=x.dtype)  # [T, k, E]
    # one_hot of an index >= capacity is an all-zero row: a dropped assignment has no slot.
    slot_onehot = jax.nn.one_hot(position, capacity, dtype=x.dtype)  # [T, k, C]
    dispatch_mask = jnp.einsum("tke,tkc->tec", expert_onehot, slot_onehot)  # [T, E, C]
    combine = jnp.einsum("tke,tkc,tk->tec", expert_onehot, slot_onehot,
                         expert_weights)  # [T, E, C], in the router weights' dtype (float32)
    x_buf = jnp.einsum("tec,td->ecd", dispatch_mask, x)  # [E, C, d]
    y_buf = expert_ffn(x_buf, w_gate, w_up, w_down, swiglu_limit=swiglu_limit)  # [E, C, d]
    output = jnp.einsum("tec,ecd->td", combine, y_buf)  # [T, d]
    return DispatchResult(output, kept, count_tokens_per_expert(expert_index, n_experts))


# ----------------------------------------------------------------------------------------
# Sorting assignments by expert (sort; also fast.dropless)
# ----------------------------------------------------------------------------------------

class SortedAssignments(NamedTuple):
    """The A = tokens * top_k assignments, stably sorted by expert (slot-major within one)."""

    expert: jax.Array  # [A] int32, non-decreasing
    token: jax.Array  # [A] int32, which token the assignment belongs to
    weight: jax.Array  # [A] router weight
    position: jax.Array  # [A] int32, place within its expert's group (0, 1, ...)
    order: jax.Array  # [A] int32, sorted -> slot-major flat index
    counts: jax.Array  # [E] int32, group sizes (tokens_per_expert)


def sort_assignments(expert_index: jax.Array, expert_weights: jax.Array,
                     n_experts: int) -> SortedAssignments:
    """Flatten the assignments slot-major, then sort them by expert with a *stable* sort.

    Stability keeps the slot-major priority order inside every expert's group, so
    ``position = rank - group_start`` equals ``position_in_expert`` and capacity-based
    dropping here agrees with ``onehot`` exactly.
    """
    tokens, top_k = expert_index.shape
    flat_expert = slot_major(expert_index)  # [A]
    flat_token = jnp.tile(jnp.arange(tokens, dtype=jnp.int32), top_k)  # [A]
    flat_weight = slot_major(expert_weights)  # [A]
    order = jnp.argsort(flat_expert, stable=True).astype(jnp.int32)  # [A]
    expert = flat_expert[order]  # [A]
    counts = count_tokens_per_expert(expert_index, n_experts)  # [E]
    group_start = jnp.cumsum(counts) - counts  # [E]
    position = jnp.arange(expert.shape[0], dtype=jnp.int32) - group_start[expert]  # [A]
    return SortedAssignments(expert, flat_token[order], flat_weight[order], position, order,
                             counts)


# ----------------------------------------------------------------------------------------
# sort
# ----------------------------------------------------------------------------------------

def buffer_maps(s: SortedAssignments, capacity: int,
                tokens: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The two integer tables of sort dispatch, and each buffer row's router weight.

    Buffer row ``e * C + c`` holds expert e's c-th assignment: sorted assignment
    ``group_start[e] + c`` if ``c < counts[e]``, else the row stays empty; assignments with
    ``position >= capacity`` find no row and are dropped.

    -> (slot_token [E * C]: the token in each buffer row, ``tokens`` = empty;
        slot_weight [E * C]: its router weight, 0 when empty;
        token_slots [T, k]: the buffer row of each of a token's assignments, ``E * C`` =
        dropped).
    """
    n_experts = s.counts.shape[0]
    # buffer -> token: which sorted assignment fills each buffer row
    group_start = jnp.cumsum(s.counts) - s.counts  # [E]
    slot = jnp.arange(capacity, dtype=jnp.int32)  # [C]
    filled = (slot < s.counts[:, None]).reshape(-1)  # [E * C]
    source = (group_start[:, None] + slot).reshape(-1)  # [E * C], into the sorted assignments
    source = jnp.where(filled, source, 0)
    slot_token = jnp.where(filled, s.token[source], tokens)  # [E * C], `tokens` = empty
    slot_weight = jnp.where(filled, s.weight[source], 0.0)  # [E * C]
    # token -> buffer: the row of every assignment, back in [T, k] order; E * C = dropped
    row = jnp.where(s.position < capacity, s.expert * capacity + s.position,
                    n_experts * capacity)  # [A], sorted order
    token_slots = token_major(jnp.zeros_like(row).at[s.order].set(row), tokens)  # [T, k]
    return slot_token, slot_weight, token_slots


def dispatch_sort(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                  capacity: int | None = None,
                  swiglu_limit: float | None = None) -> DispatchResult:
    """Sort-based dispatch into fixed-size capacity buffers.

    1. ``sort_assignments``: assignments sorted by expert, with their position in the group.
    2. ``buffer_maps``: buffer row ``e * C + c`` holds expert e's c-th assignment;
       assignments with ``position >= capacity`` find no row and are dropped. Both directions
       of this map are tables of integers: ``slot_token`` [E * C] and ``token_slots`` [T, k].
    3. ``to_buffers`` (``minimoe.fast.gather``) gathers the tokens into ``x_buf [E, C, d]``.
    4. ``expert_ffn``: one batched matmul over the expert axis; each row is multiplied by its
       router weight inside the FFN (before the down projection, on the narrower array).
    5. ``from_buffers`` adds each token's k weighted rows back up.

    Every step that touches ``d_model``-wide rows is a gather, forward and backward; nothing
    of size ``T * E * C`` (onehot) or ``T * k * d`` (one row per assignment) is built.
    ``capacity=None`` means ``capacity = tokens``: the smallest static size that can never
    drop, since a token sends at most one assignment to a given expert.
    """
    tokens, d_model = x.shape
    n_experts = w_gate.shape[0]
    capacity = resolve_capacity(capacity, tokens)
    s = sort_assignments(expert_index, expert_weights, n_experts)
    slot_token, slot_weight, token_slots = buffer_maps(s, capacity, tokens)

    x_buf = to_buffers(x, slot_token, token_slots).reshape(n_experts, capacity, d_model)
    y_buf = expert_ffn(x_buf, w_gate, w_up, w_down,
                       row_weights=slot_weight.reshape(n_experts, capacity),
                       swiglu_limit=swiglu_limit)  # [E, C, d]
    out_dtype = jnp.result_type(x.dtype, w_down.dtype, expert_weights.dtype)
    output = from_buffers(y_buf.reshape(-1, d_model).astype(out_dtype), slot_token,
                          token_slots)  # [T, d]
    kept = token_slots < n_experts * capacity  # [T, k]
    return DispatchResult(output, kept, s.counts)
