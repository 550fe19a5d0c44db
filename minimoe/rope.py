"""Rotary position embeddings (Su et al. 2021, "RoFormer", eq. 34).

Channel pair i of a query or key (i = 0 .. d/2 - 1) is rotated by the angle
``position * theta ** (-2i/d)``. A query at position m dotted with a key at position n then
depends only on m - n: attention sees relative positions without any learned table.

Which channels form pair i is a layout choice; both give the same attention once the weights
are trained, but a checkpoint only works with the layout it was trained with:

- half split (``interleaved=False``, the default here): pair i is ``(x[i], x[i + d/2])``. This
  is GPT-NeoX's layout, and Llama's and Mistral's in Hugging Face ``transformers``
  (``rotate_half``); rotating is two slices and one concatenation. minimoe's GQA, sliding and
  sparse attention use it.
- interleaved (``interleaved=True``): pair i is ``(x[2i], x[2i + 1])``, RoFormer's eq. 34 as
  written. DeepSeek's own MLA code (``apply_rotary_emb`` in DeepSeek-V3's
  ``inference/model.py``) reads each pair as one complex number ``x[2i] + j x[2i+1]`` and
  multiplies it by ``exp(j * angle)``; ``minimoe.mla`` uses this layout so the two can be
  compared line by line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, each [len(positions), dim // 2]."""
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim/2]
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [seq, dim/2]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, interleaved: bool = False) -> jax.Array:
    """Rotate the channel pairs of ``x`` [batch, seq, heads, dim] by the given angles.

    cos, sin: [seq, dim/2]. Pair i is ``(x[i], x[i + dim/2])`` (half split, default) or
    ``(x[2i], x[2i + 1])`` (``interleaved=True``); each pair (a, b) becomes
    ``(a cos - b sin, a sin + b cos)``.
    """
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if interleaved:
        pairs = x.reshape(*x.shape[:-1], -1, 2)  # [batch, seq, heads, dim/2, 2]
        a, b = pairs[..., 0], pairs[..., 1]
        out = jnp.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(x.shape)
    else:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]  # [batch, seq, heads, dim/2]
        out = jnp.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    return out.astype(x.dtype)
