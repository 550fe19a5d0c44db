"""FP8 / FP4 block-scaled weights against numpy references written from the formats."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer
from minimoe.v4.quant import (E2M1_VALUES, dequantize, fake_quantize, pack_fp4, quantize,
                              quantize_experts, storage_nbytes, unpack_fp4)


def format_values(n_bits: int, exp_bits: int, man_bits: int, bias: int, nan_codes=()):
    """Every finite non-negative value of a sign/exponent/mantissa format, from its bit
    patterns, with a flag for an even (lowest mantissa bit 0) code."""
    vals, even = [], []
    for code in range(2 ** (n_bits - 1)):  # sign bit 0
        if code in nan_codes:
            continue
        e, m = code >> man_bits, code & (2 ** man_bits - 1)
        v = (m / 2 ** man_bits) * 2.0 ** (1 - bias) if e == 0 else \
            (1 + m / 2 ** man_bits) * 2.0 ** (e - bias)
        vals.append(v)
        even.append(m % 2 == 0)
    return np.array(vals), np.array(even)


E2M1 = format_values(4, 2, 1, 1)
E4M3 = format_values(8, 4, 3, 7, nan_codes=(0x7F,))  # fn: S.1111.111 is NaN, no infinity


def nearest(y: np.ndarray, table) -> np.ndarray:
    """Nearest value of the format (|y| <= its max), ties to the even code."""
    mags, even = table
    dist = np.abs(np.abs(y)[..., None] - mags)
    tie = dist == dist.min(-1, keepdims=True)
    choice = np.where(tie & even, 0, np.where(tie, 1, 2)).argmin(-1)  # prefer an even code
    return np.sign(y) * mags[choice]


def e2m1_round(y):
    return nearest(y, E2M1)


def e4m3_round(y):
    return nearest(y, E4M3)


def test_format_tables_are_the_published_ones():
    np.testing.assert_array_equal(np.sort(E2M1[0]), E2M1_VALUES)
    assert E4M3[0].max() == 448 and len(E4M3[0]) == 127 and np.min(E4M3[0][E4M3[0] > 0]) == 2.0 ** -9


def ref_quantize(w: np.ndarray, block, max_code, round_fn):
    r, c = w.shape
    out = np.zeros_like(w, np.float64)
    scales = np.zeros((r // block[0], c // block[1]))
    for i, j in itertools.product(range(r // block[0]), range(c // block[1])):
        blk = w[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].astype(np.float64)
        amax = np.abs(blk).max()
        s = 1.0 if amax == 0 else 2.0 ** np.ceil(np.log2(amax / max_code))
        scales[i, j] = s
        out[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = round_fn(blk / s) * s
    return out, scales


def test_fp4_round_trip_matches_the_reference_including_ties():
    w = np.array(jax.random.normal(jax.random.key(0), (64, 6)), np.float32)
    # a column of exact midpoints between e2m1 values (scale 1: amax = 6)
    w[:32, 0] = np.resize([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 0.0], 32)
    w[32:, 1] = 0.0  # an all-zero block
    q = quantize(jnp.asarray(w), "fp4")
    assert q.codes.dtype == jnp.float4_e2m1fn and q.scales.dtype == jnp.float8_e8m0fnu
    want, scales = ref_quantize(w, (32, 1), 6.0, e2m1_round)
    np.testing.assert_array_equal(np.asarray(dequantize(q), np.float64), want)
    np.testing.assert_array_equal(np.asarray(q.scales.astype(jnp.float32)), scales)
    assert set(np.unique(np.abs(np.asarray(q.codes.astype(jnp.float32))))) <= set(E2M1_VALUES)


def test_fp8_round_trip_matches_the_reference():
    w = np.array(jax.random.normal(jax.random.key(1), (256, 128)), np.float32)
    w[:128] *= 1e-3  # a block with a very different scale (subnormal codes appear)
    q = quantize(jnp.asarray(w), "fp8")
    assert q.codes.dtype == jnp.float8_e4m3fn and q.scales.shape == (2, 1)
    want, scales = ref_quantize(w, (128, 128), 448.0, e4m3_round)
    np.testing.assert_allclose(np.asarray(dequantize(q), np.float64), want, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(q.scales.astype(jnp.float32)), scales)


def test_scales_are_the_smallest_powers_of_two_that_avoid_clipping():
    w = jax.random.normal(jax.random.key(2), (3, 64, 16)) * jnp.logspace(-3, 2, 16)
    q = quantize(w, "fp4")
    s = np.asarray(q.scales.astype(jnp.float32))  # [3, 2, 16]
    amax = np.abs(np.asarray(w)).reshape(3, 2, 32, 16).max(axis=2)
    assert np.all(np.log2(s) == np.round(np.log2(s)))
    assert np.all(amax / s <= 6.0) and np.all(amax / s > 3.0)


def test_stacked_experts_quantise_each_matrix_on_its_own():
    w = jax.random.normal(jax.random.key(3), (4, 64, 8))
    got = fake_quantize(w, "fp4")
    for e in range(4):
        np.testing.assert_array_equal(np.asarray(got[e]), np.asarray(fake_quantize(w[e], "fp4")))


def test_bytes_are_counted_exactly_and_fp4_packs_two_per_byte():
    w = jax.random.normal(jax.random.key(4), (4, 64, 24))
    q = quantize(w, "fp4")
    packed = pack_fp4(q.codes)
    assert packed.dtype == np.uint8 and packed.shape == (4, 64, 12)
    np.testing.assert_array_equal(np.asarray(unpack_fp4(packed).astype(jnp.float32)),
                                  np.asarray(q.codes.astype(jnp.float32)))
    assert storage_nbytes(q) == packed.nbytes + q.scales.nbytes == 4 * 64 * 24 // 2 + 4 * 2 * 24
    q8 = quantize(jax.random.normal(jax.random.key(5), (256, 384)), "fp8")
    assert storage_nbytes(q8) == q8.codes.nbytes + q8.scales.nbytes == 256 * 384 + 2 * 3


@pytest.mark.parametrize("shape,fmt,block,match", [
    ((48, 8), "fp4", None, r"block \(32, 1\) must divide"),
    ((128, 100), "fp8", None, r"block \(128, 128\) must divide"),
    ((64, 8), "fp4", (0, 1), "positive integers"),
    ((64,), "fp4", None, "needs a matrix"),
    ((64, 8), "int4", None, "fmt must be one of"),
])
def test_bad_settings_are_errors(shape, fmt, block, match):
    with pytest.raises(ValueError, match=match):
        quantize(jnp.ones(shape), fmt, block)


def test_quantize_experts_rounds_every_expert_matrix_and_reports_bytes():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16,
                      moe=MoEConfig(n_experts=4, top_k=2, d_expert=32, n_shared_experts=1),
                      num_nextn_predict_layers=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 64)
    forward = nnx.jit(lambda m, t: m(t).logits)
    before = forward(model, tokens)
    shared = model.blocks[0].ffn.shared_experts.w_up[...]
    report = quantize_experts(model, "fp4")
    n = 3 * 3 * 4 * 32 * 32  # 2 main MoE layers + the MTP block, 3 matrices of 4 experts
    assert report.n_values == n and report.float32_bytes == 4 * n
    assert report.stored_bytes == n // 2 + n // 32
    assert 0.02 < report.relative_error < 0.3
    w = model.mtp.block.ffn.experts.w_down[...]
    np.testing.assert_array_equal(np.asarray(fake_quantize(w, "fp4")), np.asarray(w))  # on the grid
    np.testing.assert_array_equal(np.asarray(model.blocks[0].ffn.shared_experts.w_up[...]),
                                  np.asarray(shared))  # shared experts untouched
    after = forward(model, tokens)
    assert 0 < float(jnp.abs(after - before).max()) < 1.0
