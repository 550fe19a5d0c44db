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
  multiplies it by ``exp(j * angle)``; ``minimoe.long_context.mla`` uses this layout so the two can be
  compared line by line.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


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


# ----------------------------------------------------------------------------------------
# YaRN scaling (DeepSeek-V2/V3's long-context RoPE)
# ----------------------------------------------------------------------------------------

def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature term ``0.1 * mscale * ln(factor) + 1`` (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(dim: int, theta: float, yarn) -> np.ndarray:
    """[dim/2] rotation frequencies under YaRN (Peng et al. 2023, §3.2 "NTK-by-parts").

    Frequency i makes ``r_i = L * theta**(-2i/dim) / (2 pi)`` rotations over the pre-training
    context ``L``. Frequencies that rotate often (fast, r > beta_fast) are kept; those that
    rotate rarely (r < beta_slow) are divided by ``factor`` (interpolated); in between, a linear
    ramp over the channel index mixes the two. The ramp's ends are the (fractional) channel
    indices where ``r = beta_fast`` and ``r = beta_slow``, rounded outwards.
    ``yarn``: a ``YaRNConfig``.
    """
    half = np.arange(0, dim, 2, dtype=np.float64) / dim
    extrapolated = theta ** -half  # [dim/2], the plain RoPE frequencies
    interpolated = extrapolated / yarn.factor

    def channel(rotations):  # the channel index where frequency i makes `rotations` turns over L
        return dim * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi)) \
            / (2 * math.log(theta))

    low = max(math.floor(channel(yarn.beta_fast)), 0)
    high = min(math.ceil(channel(yarn.beta_slow)), dim - 1)
    high = high + 0.001 if high == low else high
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0.0, 1.0)  # 0: keep, 1: interpolate
    return (interpolated * ramp + extrapolated * (1 - ramp)).astype(np.float32)


def yarn_scales(yarn) -> tuple[float, float]:
    """(factor on cos and sin, factor on the softmax scale) of a ``YaRNConfig``, DeepSeek's way:
    ``m(s, mscale) / m(s, mscale_all_dim)`` and ``m(s, mscale_all_dim) ** 2`` when
    ``mscale_all_dim`` is set, else ``m(s, 1)`` and 1."""
    if yarn.mscale and yarn.mscale_all_dim:
        all_dim = yarn_mscale(yarn.factor, yarn.mscale_all_dim)
        return yarn_mscale(yarn.factor, yarn.mscale) / all_dim, all_dim ** 2
    return yarn_mscale(yarn.factor), 1.0


def rope_angles_from_freq(positions: jax.Array, inv_freq) -> tuple[jax.Array, jax.Array]:
    """cos and sin [len(positions), len(inv_freq)] of given rotation frequencies."""
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
    return jnp.cos(angles), jnp.sin(angles)

