"""Manifold-constrained hyper-connections (mHC): DeepSeek-V4's residual stream.

A plain pre-norm block adds each sub-layer's output to one residual stream, ``x + f(x)``.
Hyper-connections (Zhu et al. 2024, "Hyper-Connections") widen the residual into
``n = hc_mult`` parallel streams ``X = [x_1, ..., x_n]`` (shape [..., n, d]) and wrap every
sub-layer ``f`` (attention, FFN) in three small maps:

    y      = sum_i pre_i x_i                               what f reads      (hc_pre)
    X'_j   = post_j f(y)  +  sum_i comb_ij x_i             where f writes,   (hc_post)
                                                           how streams mix

mHC (Xie et al. 2025, "mHC: Manifold-Constrained Hyper-Connections", arXiv:2512.24880)
constrains ``comb`` to the *doubly-stochastic* matrices (non-negative, every row and column
sums to 1; the Birkhoff polytope). A product of doubly-stochastic matrices is again doubly
stochastic, so through any depth the residual path only averages the streams: it cannot blow
a signal (or a gradient) up or shrink it away, which unconstrained hyper-connections can
(``depth_gain`` measures both).

What DeepSeek-V4 computes (``inference/model.py``, ``hc_pre`` / ``hc_post`` / ``hc_head``,
and the ``hc_split_sinkhorn`` kernel), per token; the coefficients depend on the token:

    m     = (flat(X) / rms(flat(X))) W_fn^T          flat: [n * d], W_fn: [(2 + n) n, n d]
    pre   = sigmoid(s_0 m[:n]     + b[:n])     + eps
    post  = 2 sigmoid(s_1 m[n:2n] + b[n:2n])             (a gate in (0, 2), no eps)
    comb  = Sinkhorn(softmax_rows(s_2 m[2n:] + b[2n:]) + eps)       [n, n], comb[i, j]:
                                                         from stream i into stream j

``rms`` is over all ``n * d`` values (no learned gain); ``s`` (3 scalars) and ``b`` are
learned. Sinkhorn, in V4's order: after the row softmax, one *column* normalisation, then
``hc_sinkhorn_iters - 1`` rounds of row-then-column normalisation (each divides by the sum
plus ``eps``). The last step normalises columns, so each new stream ``j`` is a convex
combination of the old ones (``sum_i comb_ij = 1``); rows sum to 1 to the tolerance the
iterations reach. Note the side: ``X'_j = sum_i comb_ij x_i`` is ``comb^T X``.

The embedding is copied into every stream (``expand_streams``); after the last block the
head combines them with its own sigmoid weights, no Sinkhorn (``hc_head``):
``y = sum_i (sigmoid(s m_i + b_i) + eps) x_i`` with ``m = (flat(X) / rms) W_head^T``.

Everything below is a pure ``jax.numpy`` function; ``HyperConnection`` and ``HyperHead`` hold
the weights. With ``hc_mult = 1`` and identity mixing (pre = post = comb = 1) the wrapper is
exactly ``x + f(x)`` (tested), which is why ``ModelConfig(hc_mult=1)`` -- the default --
simply keeps the plain residual.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


# ----------------------------------------------------------------------------------------
# The pure functions
# ----------------------------------------------------------------------------------------

def expand_streams(x: jax.Array, hc_mult: int) -> jax.Array:
    """Copy the embedding into every residual stream: [..., d] -> [..., hc_mult, d]."""
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], hc_mult, x.shape[-1]))


def sinkhorn(logits: jax.Array, iters: int, eps: float) -> jax.Array:
    """Project mixing logits onto (nearly) doubly-stochastic matrices, as DeepSeek-V4 does.

    ``P = softmax(logits, rows) + eps``; ``P /= column sums + eps``; then ``iters - 1`` times:
    ``P /= row sums + eps``, ``P /= column sums + eps`` (Sinkhorn & Knopp 1967, alternating
    normalisation). Rows index the source stream, columns the destination.

    logits: [..., n, n] -> [..., n, n] float32; columns sum to 1 (up to eps), rows converge.
    """
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) + eps  # [..., n, n]
    p = p / (p.sum(axis=-2, keepdims=True) + eps)

    def row_then_column(_, p):
        p = p / (p.sum(axis=-1, keepdims=True) + eps)
        return p / (p.sum(axis=-2, keepdims=True) + eps)

    return jax.lax.fori_loop(0, iters - 1, row_then_column, p)


def stream_mixes(x: jax.Array, fn: jax.Array, norm_eps: float) -> jax.Array:
    """The raw coefficient logits ``m`` from the RMS-normalised, flattened streams.

    x: [..., n, d]; fn: [n_mix, n * d] -> [..., n_mix] float32.
    """
    flat = x.reshape(*x.shape[:-2], -1).astype(jnp.float32)  # [..., n * d]
    inv_rms = jax.lax.rsqrt(jnp.mean(flat * flat, axis=-1, keepdims=True) + norm_eps)
    lead = flat.shape[:-1]
    mixes = flat.reshape(-1, flat.shape[-1]) @ fn.astype(jnp.float32).T  # [tokens, n_mix]
    return mixes.reshape(*lead, fn.shape[0]) * inv_rms  # [..., n_mix]


class HCCoefficients(NamedTuple):
    """The three maps of one hyper-connection, per token."""

    pre: jax.Array  # [..., n]     weights of the streams in the sub-layer's input
    post: jax.Array  # [..., n]    weight of the sub-layer's output in each stream
    comb: jax.Array  # [..., n, n] comb[i, j]: weight of old stream i in new stream j


def hc_coefficients(mixes: jax.Array, scale: jax.Array, base: jax.Array, hc_mult: int,
                    sinkhorn_iters: int, eps: float) -> HCCoefficients:
    """Split the logits into V4's ``pre``, ``post`` and ``comb`` (module docstring).

    mixes: [..., (2 + n) n]; scale: [3]; base: [(2 + n) n].
    """
    n = hc_mult
    z = mixes.astype(jnp.float32)
    pre = jax.nn.sigmoid(z[..., :n] * scale[0] + base[:n]) + eps  # [..., n]
    post = 2.0 * jax.nn.sigmoid(z[..., n:2 * n] * scale[1] + base[n:2 * n])  # [..., n]
    comb_logits = (z[..., 2 * n:] * scale[2] + base[2 * n:]).reshape(*z.shape[:-1], n, n)
    return HCCoefficients(pre, post, sinkhorn(comb_logits, sinkhorn_iters, eps))


def hc_pre(x: jax.Array, pre: jax.Array) -> jax.Array:
    """The sub-layer's input ``y = sum_i pre_i x_i``. x: [..., n, d]; pre: [..., n] -> [..., d]."""
    return jnp.einsum("...n,...nd->...d", pre.astype(jnp.float32),
                      x.astype(jnp.float32)).astype(x.dtype)


def hc_post(f: jax.Array, x: jax.Array, post: jax.Array, comb: jax.Array) -> jax.Array:
    """The new streams ``X'_j = post_j f + sum_i comb_ij x_i``.

    f: [..., d] (the sub-layer's output); x: [..., n, d]; post: [..., n]; comb: [..., n, n]
    -> [..., n, d].
    """
    written = post[..., :, None] * f[..., None, :].astype(jnp.float32)  # [..., n, d]
    mixed = jnp.einsum("...ij,...id->...jd", comb, x.astype(jnp.float32))  # [..., n, d]
    return (written + mixed).astype(x.dtype)


def hc_head(x: jax.Array, fn: jax.Array, scale: jax.Array, base: jax.Array, eps: float,
            norm_eps: float) -> jax.Array:
    """Combine the streams for the output head: ``sum_i (sigmoid(s m_i + b_i) + eps) x_i``.

    x: [..., n, d]; fn: [n, n * d]; scale: [1]; base: [n] -> [..., d].
    """
    weights = jax.nn.sigmoid(stream_mixes(x, fn, norm_eps) * scale[0] + base) + eps  # [..., n]
    return hc_pre(x, weights)


def hc_residual(x: jax.Array, sublayer: Callable[[jax.Array], jax.Array],
                coef: HCCoefficients) -> jax.Array:
    """One hyper-connected sub-layer with given coefficients: ``hc_post(f(hc_pre(x)), x)``."""
    return hc_post(sublayer(hc_pre(x, coef.pre)), x, coef.post, coef.comb)


# ----------------------------------------------------------------------------------------
# The modules
# ----------------------------------------------------------------------------------------

def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class HyperConnection(nnx.Module):
    """mHC around one sub-layer: ``y, coef = hc.pre(x)``, then ``hc.post(f(y), x, coef)``.

    Attributes (V4's checkpoint names without the ``hc_attn_`` / ``hc_ffn_`` prefix):
        fn: ``nnx.Param`` [(2 + n) n, n d], the coefficient projection.
        base: ``nnx.Param`` [(2 + n) n], the static part of the coefficients.
        scale: ``nnx.Param`` [3], the weights of the dynamic part for pre, post and comb.

    Initialisation (V4 publishes none; this is a choice): ``fn`` normal with std
    ``1/sqrt(n d)`` (the mixes start with unit scale), ``scale = 0.01`` (the coefficients start
    almost static), ``base`` such that ``pre = 1/n``, ``post = 1`` and ``comb`` is dominated by
    its diagonal. With every stream a copy of the same vector, the block then starts as the
    plain residual ``x + f(x)`` in every stream.
    """

    def __init__(self, d_model: int, hc_mult: int, sinkhorn_iters: int, eps: float,
                 norm_eps: float, *, rngs: nnx.Rngs):
        n = hc_mult
        self.hc_mult, self.sinkhorn_iters = n, sinkhorn_iters
        self.eps, self.norm_eps = eps, norm_eps
        n_mix = (2 + n) * n
        self.fn = nnx.Param(
            jax.random.normal(rngs.params(), (n_mix, n * d_model)) * (n * d_model) ** -0.5)
        pre_base = jnp.full((n,), _logit(min(1.0 / n, 0.99)))  # pre = 1/n
        post_base = jnp.zeros((n,))  # post = 2 sigmoid(0) = 1
        comb_base = jnp.where(jnp.eye(n, dtype=bool), 0.0, -4.0).reshape(-1)  # softmax ~ diagonal
        self.base = nnx.Param(jnp.concatenate([pre_base, post_base, comb_base]).astype(jnp.float32))
        self.scale = nnx.Param(jnp.full((3,), 0.01, jnp.float32))

    def coefficients(self, x: jax.Array) -> HCCoefficients:
        """x: [..., n, d] -> pre, post, comb for every token."""
        mixes = stream_mixes(x, self.fn[...], self.norm_eps)
        return hc_coefficients(mixes, self.scale[...], self.base[...], self.hc_mult,
                               self.sinkhorn_iters, self.eps)

    def pre(self, x: jax.Array) -> tuple[jax.Array, HCCoefficients]:
        """x: [..., n, d] -> (the sub-layer's input [..., d], the coefficients)."""
        coef = self.coefficients(x)
        return hc_pre(x, coef.pre), coef

    def post(self, f: jax.Array, x: jax.Array, coef: HCCoefficients) -> jax.Array:
        """f: [..., d] (the sub-layer's output), x: [..., n, d] -> the new streams [..., n, d]."""
        return hc_post(f, x, coef.post, coef.comb)


class HyperHead(nnx.Module):
    """Combines the streams before the final norm and output projection (V4's ``hc_head``).

    Attributes: ``fn`` [n, n d], ``base`` [n], ``scale`` [1]; initialised so that the weights
    start at ``1/n`` each (the streams' mean), with a small dynamic part.
    """

    def __init__(self, d_model: int, hc_mult: int, eps: float, norm_eps: float, *,
                 rngs: nnx.Rngs):
        n = hc_mult
        self.eps, self.norm_eps = eps, norm_eps
        self.fn = nnx.Param(
            jax.random.normal(rngs.params(), (n, n * d_model)) * (n * d_model) ** -0.5)
        self.base = nnx.Param(jnp.full((n,), _logit(min(1.0 / n, 0.99)), jnp.float32))
        self.scale = nnx.Param(jnp.full((1,), 0.01, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., n, d] -> [..., d]."""
        return hc_head(x, self.fn[...], self.scale[...], self.base[...], self.eps, self.norm_eps)


# ----------------------------------------------------------------------------------------
# What the constraint is for: signal and gradient through depth
# ----------------------------------------------------------------------------------------

class DepthGain(NamedTuple):
    """Norms through a deep stack, relative to the input's: ``signal[l] = |X_l| / |X_0|``
    (forward, l = 0..n_layers) and ``grad[l] = |dL/dX_l| / |dL/dX_L|`` (backward)."""

    signal: jax.Array  # [n_layers + 1]
    grad: jax.Array  # [n_layers + 1]


def depth_gain(key: jax.Array, n_layers: int = 48, hc_mult: int = 4, d_model: int = 32,
               mixing_noise: float = 0.5, branch_scale: float = 0.1, constrained: bool = True,
               sinkhorn_iters: int = 20, eps: float = 1e-6) -> DepthGain:
    """How a signal and its gradient grow or shrink through ``n_layers`` hyper-connected layers.

    Every layer mixes the streams with its own matrix ``R_l = I + mixing_noise * G_l``
    (``G_l`` standard normal): the *unconstrained* hyper-connection uses ``comb = R_l`` as it
    is (Zhu et al.'s H^res, a free matrix near the identity), the *constrained* one (mHC) its
    Sinkhorn projection ``sinkhorn(R_l)``. The sub-layer is a random ``branch_scale *
    tanh(y W_l)``, read with ``pre = 1/n`` and written with ``post = 1``; both stacks share
    every random number, so the projection is the only difference. ``X_0`` is a random vector
    copied into every stream (the embedding), the loss ``L = <X_L, R>`` for a random ``R``.

    Returns a ``DepthGain``: the unconstrained products of random matrices grow (or shrink)
    geometrically with depth, the doubly-stochastic ones stay within a small factor.
    """
    n, d = hc_mult, d_model
    k_mix, k_w, k_x, k_r = jax.random.split(key, 4)
    raw = jnp.eye(n) + mixing_noise * jax.random.normal(k_mix, (n_layers, n, n))  # [L, n, n]
    comb = sinkhorn(raw, sinkhorn_iters, eps) if constrained else raw
    w = jax.random.normal(k_w, (n_layers, d, d)) * d ** -0.5  # [L, d, d]
    x0 = expand_streams(jax.random.normal(k_x, (d,)), n)  # [n, d]
    r = jax.random.normal(k_r, (n, d))
    pre, post = jnp.full((n,), 1.0 / n), jnp.ones((n,))

    def forward(taps):  # taps[l] is added to X_l: its gradient is dL/dX_l
        x, norms = x0 + taps[0], [jnp.linalg.norm(x0)]
        for l in range(n_layers):
            coef = HCCoefficients(pre, post, comb[l])
            x = hc_residual(x, lambda y: branch_scale * jnp.tanh(y @ w[l]), coef) + taps[l + 1]
            norms.append(jnp.linalg.norm(x))
        return jnp.sum(x * r), jnp.stack(norms)

    taps = jnp.zeros((n_layers + 1, n, d))
    grads, norms = jax.grad(forward, has_aux=True)(taps)
    grad_norms = jnp.linalg.norm(grads.reshape(n_layers + 1, -1), axis=-1)
    return DepthGain(norms / norms[0], grad_norms / grad_norms[-1])
