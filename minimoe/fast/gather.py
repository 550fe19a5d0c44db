"""Sort dispatch's gathers, with gradients that are gathers too.

Sort dispatch (``fast.buffer_dispatch.dispatch_sort``) moves rows twice: every token into the
expert buffer rows it is assigned to, and every token's rows back out, added up. Both moves
are gathers along one integer map read in its two directions, ``slot_token`` [E * C] and
``token_slots`` [T, k]. Differentiated automatically, a gather becomes a scatter-add, which
XLA runs much more slowly on a CPU; but the two moves are each other's transpose, so the
gradient of one is the other, and ``jax.custom_vjp`` says so. The values and the gradients
equal those of the plain ``jnp.take`` formulas (``tests/test_dispatch.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _take_rows(a: jax.Array, index: jax.Array) -> jax.Array:
    """``a[index]`` along axis 0, with a zero row wherever ``index`` is out of range
    (an empty buffer slot or a dropped assignment). a: [n, d]; index: [...] -> [..., d]."""
    return jnp.take(a, index, axis=0, mode="fill", fill_value=0)


@jax.custom_vjp
def to_buffers(x: jax.Array, slot_token: jax.Array, token_slots: jax.Array) -> jax.Array:
    """Copy every token into the buffer rows it is assigned to: ``x_buf[j] = x[slot_token[j]]``.

    x: [T, d]; slot_token: [E * C], the token in each buffer row (``T``: empty);
    token_slots: [T, k], the buffer row of each of a token's assignments (``E * C``: dropped)
    -- the same map read the other way. -> x_buf [E * C, d].

    ``to_buffers`` and ``from_buffers`` are each other's transpose, and their gradients are
    written that way: the gradient of a gather is then a gather too, where automatic
    differentiation would emit a scatter-add (measured 30x slower on a CPU).
    """
    return _take_rows(x, slot_token)


@jax.custom_vjp
def from_buffers(y_buf: jax.Array, slot_token: jax.Array, token_slots: jax.Array) -> jax.Array:
    """Add up each token's rows of the buffers: ``y[t] = sum_s y_buf[token_slots[t, s]]``.

    y_buf: [E * C, d] -> y [T, d] (a dropped assignment adds nothing). See ``to_buffers``.
    One [T, d] gather per slot, added up: XLA fuses them into a single pass over the output,
    where ``_take_rows(y_buf, token_slots).sum(axis=1)`` would first build a [T, k, d] array
    (about 8x slower on a CPU).
    """
    return sum(_take_rows(y_buf, token_slots[:, s]) for s in range(token_slots.shape[1]))


def _to_buffers_fwd(x, slot_token, token_slots):
    return to_buffers(x, slot_token, token_slots), (slot_token, token_slots)


def _to_buffers_bwd(maps, grad_x_buf):
    return from_buffers(grad_x_buf, *maps), None, None  # integer maps: no gradient


def _from_buffers_fwd(y_buf, slot_token, token_slots):
    return from_buffers(y_buf, slot_token, token_slots), (slot_token, token_slots)


def _from_buffers_bwd(maps, grad_y):
    return to_buffers(grad_y, *maps), None, None


to_buffers.defvjp(_to_buffers_fwd, _to_buffers_bwd)
from_buffers.defvjp(_from_buffers_fwd, _from_buffers_bwd)
