"""Dispatch: getting each token to its experts and the results back.

The router said, for every token, which ``top_k`` experts to use and with what weights. Here
are five ways to compute

    y[t] = sum_s  expert_weights[t, s] * FFN_{expert_index[t, s]}(x[t])

behind one contract, chosen by name (``dispatch(strategy, ...)``):

    reference   per (token, slot): gather that expert's weights, apply the dense SwiGLU.
                Obviously right, memory-hungry; the ground truth of the tests.
    onehot      GShard / Switch / Mesh-TensorFlow: a 0/1 dispatch tensor
                [tokens, n_experts, capacity] and two einsums.
    sort        sort the assignments by expert, gather them into fixed [n_experts, capacity]
                buffers, one batched matmul, scatter-add back (MaxText's sparse path).
    dropless    MegaBlocks: pad each expert's group of tokens to a multiple of a block size;
                every block belongs to one expert; block-wise matmuls; nothing is dropped.
    ragged_dot  sort by expert and let ``jax.lax.ragged_dot`` (a grouped matmul) run each
                expert on its contiguous group of rows; nothing is dropped.

The first three are here; the two dropless ones are speed code and live in
``minimoe/fast/dropless.py``, as do the gathers of ``sort`` and their gradients
(``minimoe/fast/gather.py``). ``dispatch`` runs any of the five.

Capacity and dropping (``reference``, ``onehot``, ``sort``): an expert processes at most
``capacity`` assignments (``compute_capacity``); the rest are *dropped* -- that slot
contributes nothing, and a token dropped from all its experts leaves the layer as 0, so the
residual connection carries it through unchanged. Priority follows GShard: assignments are
ordered *slot-major* -- every token's first choice (in token order), then every token's
second choice, ... -- so a token's top-1 expert is served before anybody's second choice.
All capacity-based strategies drop exactly the same assignments.

Outputs come in the promoted dtype of the tokens, the expert weights and the router weights
(float32 router weights keep the combine step in float32 for bf16 activations).

Every function is jit-able: ``strategy``, ``capacity`` and ``block_size`` are static Python
values and every array shape depends only on them and on the input shapes.

Shape names: tokens T, top_k k, assignments A = T * k, experts E, capacity C, d_model d,
d_expert h.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from minimoe.blocks.ffn import swiglu
from minimoe.config import DISPATCHES, DROPLESS_DISPATCHES
from minimoe.fast.gather import from_buffers, to_buffers
from minimoe.moe.experts import expert_ffn

STRATEGIES = DISPATCHES
DROPLESS_STRATEGIES = DROPLESS_DISPATCHES


class DispatchResult(NamedTuple):
    """What every dispatch strategy returns.

    output: [tokens, d_model], the weighted sum of the kept experts' outputs.
    kept: [tokens, top_k] bool; False where the assignment was dropped (over capacity).
    tokens_per_expert: [n_experts] int32, assignments per expert *before* dropping.
    """

    output: jax.Array
    kept: jax.Array
    tokens_per_expert: jax.Array


def compute_capacity(tokens: int, top_k: int, n_experts: int,
                     capacity_factor: float | None) -> int | None:
    """Expert capacity (GShard §2.2; Switch Transformer eq. 3):
    ``ceil(capacity_factor * tokens * top_k / n_experts)``, or ``None`` (dropless) when
    ``capacity_factor`` is ``None``.

    ``tokens * top_k / n_experts`` is each expert's share if the load were perfectly even;
    a capacity factor above 1 leaves slack for imbalance, below 1 forces drops.
    """
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * tokens * top_k / n_experts)


def count_tokens_per_expert(expert_index: jax.Array, n_experts: int) -> jax.Array:
    """Number of (token, slot) assignments per expert. [tokens, top_k] -> [n_experts] int32."""
    return jnp.bincount(expert_index.reshape(-1), length=n_experts).astype(jnp.int32)


def _slot_major(a: jax.Array) -> jax.Array:
    """[tokens, top_k, ...] -> [top_k * tokens, ...]: all first choices, then all second ..."""
    return jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])


def _token_major(a: jax.Array, tokens: int) -> jax.Array:
    """Inverse of ``_slot_major``: [top_k * tokens, ...] -> [tokens, top_k, ...]."""
    return jnp.swapaxes(a.reshape((-1, tokens) + a.shape[1:]), 0, 1)


def position_in_expert(expert_index: jax.Array, n_experts: int) -> jax.Array:
    """Each assignment's place in its expert's queue, in slot-major priority order (GShard).

    ``position[t, s]`` = number of assignments to the same expert that come earlier in the
    order (slot 0 of tokens 0..T-1, then slot 1 of tokens 0..T-1, ...). An assignment is
    kept iff ``position < capacity``. Computed with a cumulative sum over one-hot rows, as
    GShard does.

    expert_index: [tokens, top_k] -> [tokens, top_k] int32.
    """
    tokens = expert_index.shape[0]
    onehot = jax.nn.one_hot(_slot_major(expert_index), n_experts, dtype=jnp.int32)  # [A, E]
    earlier = jnp.cumsum(onehot, axis=0) - onehot  # [A, E], exclusive running count
    position = jnp.sum(earlier * onehot, axis=-1)  # [A]
    return _token_major(position, tokens)  # [T, k]


def resolve_capacity(capacity: int | None, tokens: int) -> int:
    """The slots per expert a dispatch of ``tokens`` tokens uses for a given ``capacity``.

    ``None`` (dropless) -> ``tokens``: one token uses an expert at most once, so an expert
    never receives more than ``tokens`` assignments and capacity = tokens never drops. Larger
    values are clipped to ``tokens`` (they could not be filled)."""
    if capacity is None:
        return tokens
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")
    return min(int(capacity), tokens)


def check_dropless(strategy: str, capacity: int | None) -> None:
    """A dropless strategy takes no capacity: refuse one rather than ignore it."""
    if strategy in DROPLESS_STRATEGIES and capacity is not None:
        raise ValueError(f"dispatch {strategy!r} never drops; capacity must be None, "
                         f"got {capacity!r}")


# ----------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------

def dispatch_reference(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                       capacity: int | None = None,
                       swiglu_limit: float | None = None) -> DispatchResult:
    """Ground truth: for each (token, slot), gather the chosen expert's weights and apply the
    dense ``swiglu`` to that one token; sum the slots with the router weights.

    No buffers, no sorting, no padding. ``capacity=None`` is dropless; with a capacity the
    slot-major priority rule (``position_in_expert``) decides what is dropped.
    Memory: it materialises ``tokens * top_k`` copies of an expert's weights, so use it on
    small inputs (tests, teaching), not for training.

    x: [T, d]; expert_index, expert_weights: [T, k]; w_*: stacked expert weights.
    """
    n_experts = w_gate.shape[0]
    if capacity is None:
        kept = jnp.ones(expert_index.shape, jnp.bool_)  # [T, k]
    else:
        kept = position_in_expert(expert_index, n_experts) < capacity  # [T, k]
    per_slot_ffn = jax.vmap(lambda x, wg, wu, wd: swiglu(x, wg, wu, wd, swiglu_limit),
                            in_axes=(None, 0, 0, 0))  # over the k slots of a token
    per_token_ffn = jax.vmap(per_slot_ffn)  # over tokens
    y_slots = per_token_ffn(x, w_gate[expert_index], w_up[expert_index],
                            w_down[expert_index])  # [T, k, d]
    gates = jnp.where(kept, expert_weights, 0.0)  # [T, k]
    output = jnp.einsum("tk,tkd->td", gates, y_slots)  # [T, d]
    return DispatchResult(output, kept, count_tokens_per_expert(expert_index, n_experts))


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
    flat_expert = _slot_major(expert_index)  # [A]
    flat_token = jnp.tile(jnp.arange(tokens, dtype=jnp.int32), top_k)  # [A]
    flat_weight = _slot_major(expert_weights)  # [A]
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
    token_slots = _token_major(jnp.zeros_like(row).at[s.order].set(row), tokens)  # [T, k]
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


# ----------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------

# The two strategies that never drop build on the sorting above; they are speed code and live
# with the rest of it (minimoe/fast/).
from minimoe.fast.dropless import DEFAULT_BLOCK_SIZE, dispatch_dropless, dispatch_ragged_dot  # noqa: E402

_IMPLEMENTATIONS = {
    "reference": dispatch_reference,
    "onehot": dispatch_onehot,
    "sort": dispatch_sort,
    "dropless": dispatch_dropless,
    "ragged_dot": dispatch_ragged_dot,
}


def dispatch(strategy: str, x: jax.Array, expert_index: jax.Array, expert_weights: jax.Array,
             w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, *,
             capacity: int | None = None,
             block_size: int = DEFAULT_BLOCK_SIZE,
             swiglu_limit: float | None = None) -> DispatchResult:
    """Run the routed experts with the named ``strategy`` (one of ``STRATEGIES``).

    x: [tokens, d_model]; expert_index: [tokens, top_k] int; expert_weights: [tokens, top_k];
    w_gate, w_up: [n_experts, d_model, d_expert]; w_down: [n_experts, d_expert, d_model].
    capacity: per-expert buffer size for ``reference``/``onehot``/``sort`` (None: dropless);
    must be None for ``dropless`` and ``ragged_dot``. block_size: only for ``dropless``.
    swiglu_limit: DeepSeek-V4's SwiGLU clamp in every expert (``ffn.swiglu_activation``);
    None or 0 is the plain SwiGLU.
    All strategies give the same ``output`` (up to float round-off) when nothing is dropped.
    """
    if strategy not in _IMPLEMENTATIONS:
        raise ValueError(f"dispatch strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    kwargs = {"block_size": block_size} if strategy == "dropless" else {}
    if swiglu_limit:
        kwargs["swiglu_limit"] = swiglu_limit
    return _IMPLEMENTATIONS[strategy](x, expert_index, expert_weights, w_gate, w_up, w_down,
                                      capacity=capacity, **kwargs)
