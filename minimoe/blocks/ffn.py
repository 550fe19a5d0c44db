"""The SwiGLU feed-forward network (Shazeer 2020, "GLU Variants Improve Transformer").

``FFN(x) = (silu(x W_gate) * (x W_up)) W_down``. A dense layer is one of these; an MoE layer
holds many small ones stacked along a leading expert axis (see ``moe/experts.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def init_weight(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """Normal weights with std 1/sqrt(fan_in), so activations keep unit scale."""
    return jax.random.normal(key, shape, jnp.float32) * fan_in ** -0.5


def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` over the last axis of ``x`` [..., d_in] with ``w`` [d_in, d_out].

    The leading axes are flattened into one token axis first: XLA on a CPU runs 2-D matmuls
    (and their gradients) markedly faster than the same products batched over [batch, seq].
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def swiglu_activation(gate: jax.Array, up: jax.Array, limit: float | None = None) -> jax.Array:
    """``silu(gate) * up``, optionally with DeepSeek-V4's clamp.

    With ``limit`` (V4's ``swiglu_limit``, 10 there; ``None`` or 0 = off), as V4's
    ``inference/model.py`` does: the gate pre-activation is clamped from above only,
    ``min(gate, limit)`` (silu is already bounded below by about -0.28), and the up projection
    on both sides, ``clip(up, -limit, limit)``. The product is then bounded, which keeps
    rare huge activations out of the low-precision (FP8/FP4) expert matmuls.
    """
    if limit:
        gate = jnp.minimum(gate, limit)
        up = jnp.clip(up, -limit, limit)
    return jax.nn.silu(gate) * up


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array,
           limit: float | None = None) -> jax.Array:
    """SwiGLU on the last axis of ``x`` (``limit``: the optional clamp of ``swiglu_activation``).

    x: [..., d_model]; w_gate, w_up: [d_model, d_ff]; w_down: [d_ff, d_model]. The leading axes
    are flattened into one token axis, as in ``linear``.
    """
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # [tokens, d_model]
    h = swiglu_activation(x @ w_gate, x @ w_up, limit)  # [tokens, d_ff]
    return (h @ w_down).reshape(*lead, w_down.shape[-1])  # [..., d_model]


class SwiGLU(nnx.Module):
    """Dense SwiGLU feed-forward. Attributes: ``w_gate``, ``w_up`` [d_model, d_ff], ``w_down``;
    ``limit``, the optional clamp (``swiglu_activation``; None = off)."""

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs, limit: float | None = None):
        self.w_gate = nnx.Param(init_weight(rngs.params(), (d_model, d_ff), d_model))
        self.w_up = nnx.Param(init_weight(rngs.params(), (d_model, d_ff), d_model))
        self.w_down = nnx.Param(init_weight(rngs.params(), (d_ff, d_model), d_ff))
        self.limit = limit or None

    def __call__(self, x: jax.Array) -> jax.Array:
        return swiglu(x, self.w_gate[...], self.w_up[...], self.w_down[...], self.limit)
