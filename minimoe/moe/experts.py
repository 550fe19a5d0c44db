"""Routed experts: many small SwiGLU FFNs stored as stacked arrays.

Instead of a Python list of ``n_experts`` modules, the weights of all experts are stacked
along a leading expert axis, ``w_gate: [n_experts, d_model, d_expert]``. Running every
expert on its own buffer of tokens is then one batched matmul (an ``einsum`` with the expert
axis as batch axis), and sharding experts over devices is sharding that axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from minimoe.blocks.ffn import init_weight, swiglu_activation


def expert_ffn(x_buf: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array,
               row_weights: jax.Array | None = None,
               swiglu_limit: float | None = None) -> jax.Array:
    """Apply expert ``e``'s SwiGLU to buffer ``e``, for every expert at once.

    ``y[e] = (silu(x[e] W_gate[e]) * (x[e] W_up[e])) W_down[e]`` -- the dense
    ``ffn.swiglu`` batched over the expert axis (GShard's "expert computation").

    ``row_weights`` (optional) multiplies each row's output by a number, e.g. the router
    weight of the token in that buffer slot. The down projection is linear, so the weight is
    applied to the hidden activations before it: the same result, on a narrower array
    (``d_expert`` instead of ``d_model`` columns), fused into the SwiGLU product.
    ``swiglu_limit``: DeepSeek-V4's optional clamp (``ffn.swiglu_activation``; None = off).

    x_buf: [n_experts, capacity, d_model]; w_gate, w_up: [n_experts, d_model, d_expert];
    w_down: [n_experts, d_expert, d_model]; row_weights: [n_experts, capacity]
    -> [n_experts, capacity, d_model].
    """
    gate = jnp.einsum("ecd,edh->ech", x_buf, w_gate)  # [n_experts, capacity, d_expert]
    up = jnp.einsum("ecd,edh->ech", x_buf, w_up)  # [n_experts, capacity, d_expert]
    h = swiglu_activation(gate, up, swiglu_limit)  # [n_experts, capacity, d_expert]
    if row_weights is not None:
        h = h * row_weights[..., None].astype(h.dtype)
    return jnp.einsum("ech,ehd->ecd", h, w_down)  # [n_experts, capacity, d_model]


class Experts(nnx.Module):
    """``n_experts`` SwiGLU experts with stacked weights.

    Attributes:
        w_gate, w_up: ``nnx.Param`` [n_experts, d_model, d_expert].
        w_down: ``nnx.Param`` [n_experts, d_expert, d_model].

    Each expert is initialised like ``ffn.SwiGLU`` (normal, std ``1/sqrt(fan_in)``).
    """

    def __init__(self, d_model: int, n_experts: int, d_expert: int, *, rngs: nnx.Rngs):
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        in_shape, out_shape = (n_experts, d_model, d_expert), (n_experts, d_expert, d_model)
        self.w_gate = nnx.Param(init_weight(rngs.params(), in_shape, d_model))
        self.w_up = nnx.Param(init_weight(rngs.params(), in_shape, d_model))
        self.w_down = nnx.Param(init_weight(rngs.params(), out_shape, d_expert))

    def weights(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(w_gate, w_up, w_down)`` as arrays, ready for ``dispatch``."""
        return self.w_gate[...], self.w_up[...], self.w_down[...]
