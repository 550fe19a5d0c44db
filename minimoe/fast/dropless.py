"""The two dispatch strategies that never drop: MegaBlocks' block padding and ``ragged_dot``.

Both sort the assignments by expert as sort dispatch does (``buffer_dispatch.sort_assignments``)
and then, instead of cutting every expert's group at a fixed capacity, make each group exactly
as long as it is: padded to whole blocks of one expert (``dropless``), or handed as ragged groups
to a grouped matmul (``ragged_dot``). They compute what ``dispatch_reference`` computes with
``capacity=None`` (``tests/test_dispatch.py``), behind the same contract; choose them with
``MoEConfig.dispatch`` or ``dispatch.dispatch``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from minimoe.blocks.ffn import swiglu_activation
from minimoe.fast.buffer_dispatch import SortedAssignments, sort_assignments
from minimoe.moe.dispatch import DispatchResult, check_dropless
from minimoe.moe.experts import expert_ffn

DEFAULT_BLOCK_SIZE = 16


def _combine(y_rows: jax.Array, s: SortedAssignments, gate: jax.Array, tokens: int) -> jax.Array:
    """Weighted scatter-add of per-assignment outputs back to tokens.

    y_rows: [A, d] (one row per sorted assignment); gate: [A] -> [tokens, d].
    """
    contrib = y_rows * gate[:, None]  # [A, d]
    return jnp.zeros((tokens, y_rows.shape[1]), contrib.dtype).at[s.token].add(contrib)


# ----------------------------------------------------------------------------------------
# dropless (MegaBlocks block padding)
# ----------------------------------------------------------------------------------------

def num_blocks(assignments: int, n_experts: int, block_size: int) -> int:
    """Static worst-case number of blocks when each expert's group is padded to a multiple of
    ``block_size``: ``sum_e ceil(c_e / B) <= (A + E * (B - 1)) / B``."""
    return math.ceil((assignments + n_experts * (block_size - 1)) / block_size)


def dispatch_dropless(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                      capacity: int | None = None,
                      block_size: int = DEFAULT_BLOCK_SIZE,
                      swiglu_limit: float | None = None) -> DispatchResult:
    """Dropless MoE with block padding (MegaBlocks, Gale et al. 2022, §5).

    Instead of a fixed capacity per expert, each expert's group of sorted assignments is
    padded to a multiple of ``block_size`` rows, so the matrix of all rows splits into
    blocks that each belong to exactly one expert. Every block is multiplied by its own
    expert's weights. The number of blocks has a static worst case (``num_blocks``), so the
    shapes are static and no token is ever dropped; the padding costs at most
    ``block_size - 1`` rows per expert.

    Here the block-wise matmul gathers each block's expert weights (``w[block_expert]``) and
    reuses the batched ``expert_ffn``; MegaBlocks' block-sparse kernels (or a Pallas grouped
    matmul) read the weights in place instead of copying them.
    """
    check_dropless("dropless", capacity)
    tokens, d_model = x.shape
    n_experts = w_gate.shape[0]
    s = sort_assignments(expert_index, expert_weights, n_experts)
    n_blocks = num_blocks(s.expert.shape[0], n_experts, block_size)
    padded = -(-s.counts // block_size) * block_size  # [E], counts rounded up to blocks
    padded_end = jnp.cumsum(padded)  # [E]
    padded_start = padded_end - padded  # [E]
    row = padded_start[s.expert] + s.position  # [A], row of each assignment
    row_token = jnp.full((n_blocks * block_size,), tokens, jnp.int32)  # `tokens` = padding
    row_token = row_token.at[row].set(s.token)  # [n_blocks * B]
    x_padded = jnp.concatenate([x, jnp.zeros((1, d_model), x.dtype)])  # [T + 1, d]
    x_blocks = x_padded[row_token].reshape(n_blocks, block_size, d_model)  # [n_blocks, B, d]
    # Block b starts at row b*B; its expert is the number of groups that end at or before it.
    block_start = jnp.arange(n_blocks) * block_size  # [n_blocks]
    block_expert = jnp.searchsorted(padded_end, block_start, side="right")  # [n_blocks]
    block_expert = jnp.minimum(block_expert, n_experts - 1)  # unused tail blocks: any expert
    y_blocks = expert_ffn(x_blocks, w_gate[block_expert], w_up[block_expert],
                          w_down[block_expert], swiglu_limit=swiglu_limit)  # [n_blocks, B, d]
    y_rows = y_blocks.reshape(-1, d_model)[row]  # [A, d]
    output = _combine(y_rows, s, s.weight, tokens)  # [T, d]
    kept = jnp.ones(expert_index.shape, jnp.bool_)
    return DispatchResult(output, kept, s.counts)


# ----------------------------------------------------------------------------------------
# ragged_dot (grouped matmul)
# ----------------------------------------------------------------------------------------

def dispatch_ragged_dot(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                        capacity: int | None = None,
                        swiglu_limit: float | None = None) -> DispatchResult:
    """Dropless dispatch with a grouped matmul, ``jax.lax.ragged_dot``.

    After sorting, the rows of expert e are one contiguous group of ``counts[e]`` rows;
    ``ragged_dot(lhs [A, d], rhs [E, d, h], group_sizes [E])`` multiplies each group by its
    expert's matrix. No capacity, no padding, no drops (MaxText's ``sparse_matmul`` path;
    MegaBlocks' grouped GEMM). Fast where a grouped-matmul kernel exists (GPU/TPU); on a CPU
    it may be lowered to something much slower.
    """
    check_dropless("ragged_dot", capacity)
    tokens = x.shape[0]
    n_experts = w_gate.shape[0]
    s = sort_assignments(expert_index, expert_weights, n_experts)
    x_sorted = x[s.token]  # [A, d]
    gate = jax.lax.ragged_dot(x_sorted, w_gate, s.counts)  # [A, h]
    up = jax.lax.ragged_dot(x_sorted, w_up, s.counts)  # [A, h]
    y_rows = jax.lax.ragged_dot(swiglu_activation(gate, up, swiglu_limit), w_down,
                                s.counts)  # [A, d]
    output = _combine(y_rows, s, s.weight, tokens)  # [T, d]
    kept = jnp.ones(expert_index.shape, jnp.bool_)
    return DispatchResult(output, kept, s.counts)
