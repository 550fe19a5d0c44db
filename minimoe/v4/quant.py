"""Low-precision weight storage with block scales: FP8 (e4m3) and FP4 (e2m1), as DeepSeek-V4.

V4's checkpoints store most weight matrices in FP8 ``float8_e4m3fn`` with one scale per
128 x 128 block, and (instruct models) the routed experts in FP4 ``float4_e2m1fn`` with one
scale per 32 consecutive values along the input dimension. The scales are powers of two in
the 8-bit exponent-only format ``e8m0`` (config.json ``"scale_fmt": "ue8m0"``). A block is
stored as ``codes = round(w / s)`` in the low-precision type and ``s``; the weight used in the
matmul is ``codes * s``.

The formats:
    e4m3fn  1 sign, 4 exponent (bias 7), 3 mantissa bits; largest finite 448, no infinity,
            smallest normal 2^-6, subnormals down to 2^-9.
    e2m1fn  1 sign, 2 exponent (bias 1), 1 mantissa bit: exactly 0, 0.5, 1, 1.5, 2, 3, 4, 6
            and their negatives (largest 6).
    e8m0    8 exponent bits, no sign or mantissa: 2^-127 .. 2^127.

Scale rule (V4's ue8m0 scales): the smallest power of two ``s`` with ``amax / s <= max`` (448
for e4m3, 6 for e2m1), so no value of the block is clipped; an all-zero block gets ``s = 1``.
Rounding to the code is round-to-nearest, ties to even (``round_to_grid``; the tests check
it against every value of each format, enumerated from its bit patterns).

Storage: an FP8 code is 1 byte; FP4 codes are packed two per byte (``pack_fp4``, as in the
checkpoints; JAX itself holds a ``float4_e2m1fn`` array with one byte per value); every scale
is 1 byte. ``quantize_experts`` applies a format to a model's routed experts in place and
reports the bytes, so the accuracy cost can be measured on a trained model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FORMATS = {
    # name: (code dtype, largest finite code, default block shape over the last two axes)
    "fp8": (jnp.float8_e4m3fn, 448.0, (128, 128)),
    "fp4": (jnp.float4_e2m1fn, 6.0, (32, 1)),
}
# name: (mantissa bits, exponent of the smallest normal number)
_GRID = {"fp8": (3, -6), "fp4": (1, 0)}
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


class Quantized(NamedTuple):
    """A weight in block-scaled low precision.

    codes: like the weight [..., rows, cols], dtype float8_e4m3fn or float4_e2m1fn;
    scales: [..., rows / block_rows, cols / block_cols] float8_e8m0fnu (powers of two);
    block: (block_rows, block_cols); fmt: "fp8" or "fp4".
    """

    codes: jax.Array
    scales: jax.Array
    block: tuple
    fmt: str


def _check(w: jax.Array, fmt: str, block) -> tuple[int, int]:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    if jnp.ndim(w) < 2:
        raise ValueError(f"block quantisation needs a matrix (or a stack of them), got shape "
                         f"{tuple(jnp.shape(w))}")
    block = FORMATS[fmt][2] if block is None else tuple(block)
    if len(block) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in block):
        raise ValueError(f"block must be two positive integers (rows, cols), got {block!r}")
    rows, cols = w.shape[-2:]
    if rows % block[0] or cols % block[1]:
        raise ValueError(f"block {block} must divide the matrix's last two dimensions "
                         f"{(rows, cols)}; got remainders {(rows % block[0], cols % block[1])}")
    return block


def _blocked(w: jax.Array, block) -> jax.Array:
    """[..., R, C] -> [..., R/br, br, C/bc, bc]."""
    *lead, r, c = w.shape
    return w.reshape(*lead, r // block[0], block[0], c // block[1], block[1])


def power_of_two_scales(amax: jax.Array, max_code: float) -> jax.Array:
    """The ue8m0 scale of blocks with largest magnitude ``amax``: ``2^ceil(log2(amax / max))``,
    1 for an all-zero block. float32, exact powers of two (from ``frexp``, not a rounded log)."""
    ratio = jnp.where(amax > 0, amax, max_code) / max_code
    mant, exp = jnp.frexp(ratio)  # ratio = mant * 2^exp, mant in [0.5, 1)
    return jnp.ldexp(jnp.ones_like(ratio), jnp.where(mant == 0.5, exp - 1, exp))


def round_to_grid(y: jax.Array, fmt: str) -> jax.Array:
    """Round float32 ``y`` (|y| <= the format's max) to the nearest value of ``fmt``, ties to
    even: the spacing of the format near ``y`` is ``2^(max(e, e_min) - mantissa_bits)`` with
    ``2^e <= |y| < 2^(e+1)`` (below the smallest normal number the spacing stays that of
    ``e_min``: the subnormals). Written out rather than left to the dtype cast, whose rounding
    differs between JAX versions for FP8 (Colab's 0.7.2 rounds a fraction of values the
    other way); the cast of the result is then exact.
    """
    mbits, emin = _GRID[fmt]
    _, exp = jnp.frexp(y)  # |y| = m * 2^exp, m in [0.5, 1): e = exp - 1
    step = jnp.ldexp(jnp.ones_like(y), jnp.maximum(exp - 1, emin) - mbits)
    return jnp.round(y / step) * step  # jnp.round: half to even


def quantize(w: jax.Array, fmt: str = "fp4", block=None) -> Quantized:
    """Block-scaled quantisation of ``w`` [..., rows, cols] over its last two axes.

    ``block`` = (block_rows, block_cols): default (128, 128) for ``fp8`` (V4's
    ``weight_block_size``) and (32, 1) for ``fp4`` -- 32 consecutive values along the *input*
    dimension (rows of this package's [d_in, d_out] weights) share a scale, like V4's FP4
    experts. A block that does not divide the dimensions is an error.
    """
    block = _check(w, fmt, block)
    dtype, max_code, _ = FORMATS[fmt]
    wb = _blocked(jnp.asarray(w, jnp.float32), block)  # [..., R/br, br, C/bc, bc]
    amax = jnp.max(jnp.abs(wb), axis=(-3, -1))  # [..., R/br, C/bc]
    scales = power_of_two_scales(amax, max_code)
    y = jnp.clip(wb / scales[..., :, None, :, None], -max_code, max_code)
    codes = round_to_grid(y, fmt).astype(dtype).reshape(w.shape)
    return Quantized(codes, scales.astype(jnp.float8_e8m0fnu), block, fmt)


def dequantize(q: Quantized, dtype=jnp.float32) -> jax.Array:
    """``codes * scales`` back in ``dtype``: the weight the low-precision model computes with."""
    wb = _blocked(q.codes.astype(jnp.float32), q.block)
    s = q.scales.astype(jnp.float32)[..., :, None, :, None]
    return (wb * s).reshape(q.codes.shape).astype(dtype)


def fake_quantize(w: jax.Array, fmt: str = "fp4", block=None) -> jax.Array:
    """``dequantize(quantize(w))``: ``w`` rounded to what the format can store, same dtype."""
    return dequantize(quantize(w, fmt, block), jnp.asarray(w).dtype)


# ---------------------------------------------------------------------------------- bytes

def pack_fp4(codes: jax.Array) -> np.ndarray:
    """Two e2m1 codes per byte (low nibble first), as FP4 checkpoints store them.

    codes: float4_e2m1fn [..., n] with n even -> uint8 [..., n / 2].
    """
    bits = np.asarray(jax.lax.bitcast_convert_type(codes, jnp.uint4)).astype(np.uint8)
    if bits.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dimension, got {bits.shape[-1]}")
    return (bits[..., 0::2] | (bits[..., 1::2] << 4)).astype(np.uint8)


def unpack_fp4(packed: np.ndarray) -> jax.Array:
    """Inverse of ``pack_fp4``: uint8 [..., n / 2] -> float4_e2m1fn [..., n]."""
    packed = np.asarray(packed, np.uint8)
    bits = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return jax.lax.bitcast_convert_type(jnp.asarray(bits, jnp.uint4), jnp.float4_e2m1fn)


def storage_nbytes(q: Quantized) -> int:
    """Bytes of ``q`` as stored: codes (1 byte each for FP8, half a byte packed for FP4,
    rounded up to whole bytes) plus one byte per scale."""
    n = math.prod(q.codes.shape)
    code_bytes = n if q.fmt == "fp8" else (n + 1) // 2
    return code_bytes + math.prod(q.scales.shape)


# ---------------------------------------------------------------------------------- models

class QuantReport(NamedTuple):
    """What ``quantize_experts`` did: the expert weights' bytes in float32 / bfloat16 before and
    as stored after, the relative error ``|w_q - w| / |w|`` over all of them."""

    fmt: str
    n_values: int
    float32_bytes: int
    bfloat16_bytes: int
    stored_bytes: int
    relative_error: float


def quantize_experts(model, fmt: str = "fp4", block=None) -> QuantReport:
    """Round the routed experts' weights of every MoE layer of ``model`` (the MTP block's too)
    to ``fmt`` in place (``fake_quantize``: the model keeps computing in float32 with the
    rounded values) and report the bytes. Shared experts, attention, embedding are left as
    they are (V4 keeps those in FP8 / BF16).

    For ``fp4`` the default block is V4's: 32 values along each expert matrix's input axis.
    """
    layers = list(model.moe_layers())
    mtp = getattr(model, "mtp", None)
    if mtp is not None and mtp.block.is_moe:
        layers.append(mtp.block.ffn)
    if not layers:
        raise ValueError("quantize_experts needs a model with MoE layers; this one has none")
    n = stored = 0
    err2 = ref2 = 0.0
    for layer in layers:
        for name in ("w_gate", "w_up", "w_down"):
            param = getattr(layer.experts, name)
            w = param[...]
            q = quantize(w, fmt, block)
            wq = dequantize(q, w.dtype)
            n += w.size
            stored += storage_nbytes(q)
            err2 += float(jnp.sum((wq - w).astype(jnp.float32) ** 2))
            ref2 += float(jnp.sum(w.astype(jnp.float32) ** 2))
            param[...] = wq
    return QuantReport(fmt, n, 4 * n, 2 * n, stored, math.sqrt(err2 / ref2))
