"""Rotary position embeddings (Su et al. 2021, "RoFormer", eq. 34).

Each pair of channels ``(x[i], x[i + d/2])`` of a query or key is rotated by the angle
``position * theta ** (-2i/d)``. A query at position m dotted with a key at position n then
depends only on m - n: attention sees relative positions without any learned table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, each [len(positions), dim // 2]."""
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim/2]
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [seq, dim/2]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the channel pairs of ``x`` [batch, seq, heads, dim] by the given angles.

    cos, sin: [seq, dim/2]. Uses the "half split" pairing (channel i with i + dim/2).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # [batch, seq, heads, dim/2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return out.astype(x.dtype)
