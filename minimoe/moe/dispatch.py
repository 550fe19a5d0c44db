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

Only ``reference`` is here, with the contract all five share: the result, capacity and the
priority rule that decides what is dropped. The other four compute the same numbers faster and
are speed code: ``onehot`` and ``sort`` in ``minimoe/fast/buffer_dispatch.py``, the two
dropless ones in ``minimoe/fast/dropless.py``. ``dispatch`` runs any of the five.

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


def slot_major(a: jax.Array) -> jax.Array:
    """[tokens, top_k, ...] -> [top_k * tokens, ...]: all first choices, then all second ..."""
    return jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])


def token_major(a: jax.Array, tokens: int) -> jax.Array:
    """Inverse of ``slot_major``: [top_k * tokens, ...] -> [tokens, top_k, ...]."""
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
    onehot = jax.nn.one_hot(slot_major(expert_index), n_experts, dtype=jnp.int32)  # [A, E]
    earlier = jnp.cumsum(onehot, axis=0) - onehot  # [A, E], exclusive running count
    position = jnp.sum(earlier * onehot, axis=-1)  # [A]
    return token_major(position, tokens)  # [T, k]


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
# The one entry point
# ----------------------------------------------------------------------------------------

# The other four strategies are speed code and live with the rest of it (minimoe/fast/); they
# import the contract above, so they are imported once it is defined.
from minimoe.fast.buffer_dispatch import dispatch_onehot, dispatch_sort  # noqa: E402
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
