"""RMSNorm (Zhang & Sennrich 2019): scale by the root-mean-square, no mean subtraction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_norm(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis, computed in float32.

    x: [..., d]; weight: [d].
    """
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * inv_rms * weight).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with a learned per-channel ``weight`` (initialised to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)
