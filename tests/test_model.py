"""The dense transformer's pieces against naive references, and the model's invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.blocks.attention import Attention, causal_mask, grouped_attention
from minimoe.blocks.ffn import SwiGLU
from minimoe.blocks.norm import RMSNorm
from minimoe.blocks.rope import apply_rope, rope_angles
from minimoe.config import ModelConfig
from minimoe.fast.tiled_attention import SCORES_PER_TILE, batch_chunk, tiled_attention
from minimoe.model import generate, sample_logits


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    norm = RMSNorm(8, eps=1e-6)
    norm.weight[...] = jnp.arange(1.0, 9.0)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * np.arange(1.0, 9.0)
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=1e-5)


def naive_rope(x, positions, theta, interleaved):
    """RoPE as complex multiplication: channel pair i, read as the complex number a + jb, is
    multiplied by exp(j * position * theta ** (-2i / d)). Pairs are (2i, 2i+1) when
    interleaved (RoFormer eq. 34, DeepSeek's code), (i, i + d/2) otherwise (GPT-NeoX)."""
    x = np.asarray(x, np.float64)  # [batch, seq, heads, d]
    d = x.shape[-1]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., :d // 2], x[..., d // 2:]
    freq = theta ** (-np.arange(0, d, 2) / d)  # [d/2]
    z = (a + 1j * b) * np.exp(1j * np.asarray(positions)[None, :, None, None] * freq)
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        out[..., :d // 2], out[..., d // 2:] = z.real, z.imag
    return out


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_matches_complex_rotation_reference(interleaved):
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 8)).astype(np.float32)
    pos = np.array([0, 1, 2, 7, 100])
    cos, sin = rope_angles(jnp.asarray(pos), 8, 500.0)
    got = apply_rope(jnp.asarray(x), cos, sin, interleaved=interleaved)
    np.testing.assert_allclose(got, naive_rope(x, pos, 500.0, interleaved), rtol=1e-5, atol=1e-5)
    # the two layouts are different functions (a checkpoint works with one of them only)
    other = naive_rope(x, pos, 500.0, not interleaved)
    assert not np.allclose(got, other, atol=1e-2)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_scores_depend_only_on_relative_position(interleaved):
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(m, n):
        cq, sq = rope_angles(jnp.array([m]), 16)
        ck, sk = rope_angles(jnp.array([n]), 16)
        return float(jnp.sum(apply_rope(q, cq, sq, interleaved) * apply_rope(k, ck, sk, interleaved)))

    assert score(7, 3) == pytest.approx(score(14, 10), rel=1e-4)
    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-2)
    # a rotation keeps the norm
    c, s = rope_angles(jnp.arange(5), 16)
    x = jnp.asarray(rng.normal(size=(1, 5, 2, 16)), jnp.float32)
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, c, s, interleaved), axis=-1),
                               jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def naive_attention(q, k, v, window=None):
    """Loop over batch, head and query position: the textbook definition."""
    b, s, h, d = q.shape
    group = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for t in range(s):
                lo = 0 if window is None else max(0, t - window + 1)
                keys = k[bi, lo:t + 1, hi // group]
                sc = keys @ q[bi, t, hi] / np.sqrt(d)
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[bi, t, hi] = p @ v[bi, lo:t + 1, hi // group]
    return out


@pytest.mark.default_xla
@pytest.mark.parametrize("n_heads, n_kv, window", [(4, 4, None), (4, 2, None), (4, 1, None),
                                                   (4, 2, 3)])
def test_grouped_attention_matches_naive_loop(n_heads, n_kv, window):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 7, n_heads, 8)).astype(np.float32)
    k = rng.normal(size=(2, 7, n_kv, 8)).astype(np.float32)
    v = rng.normal(size=(2, 7, n_kv, 8)).astype(np.float32)
    pos = jnp.arange(7)
    got = grouped_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                            causal_mask(pos, pos, window))
    np.testing.assert_allclose(got, naive_attention(q, k, v, window), rtol=1e-4, atol=1e-5)


def test_batch_chunk_picks_the_largest_divisor_that_fits():
    per_seq = SCORES_PER_TILE // 4  # four sequences fill a tile
    assert batch_chunk(4, per_seq) == 4
    assert batch_chunk(12, per_seq) == 4
    assert batch_chunk(10, per_seq) == 2  # 4 does not divide 10
    assert batch_chunk(7, per_seq) == 1
    assert batch_chunk(3, 2 * SCORES_PER_TILE) == 1  # one sequence alone overflows: one at a time


@pytest.mark.default_xla
def test_tiled_attention_equals_untiled_values_and_gradients():
    # scores of 6 sequences x 4 heads x 128 x 128 > SCORES_PER_TILE: processed in tiles
    b, s, h = 6, 128, 4
    assert batch_chunk(b, h * s * s) < b
    ks = jax.random.split(jax.random.key(4), 4)
    q = jax.random.normal(ks[0], (b, s, h, 8))
    k = jax.random.normal(ks[1], (b, s, 2, 8))
    v = jax.random.normal(ks[2], (b, s, 2, 8))
    ct = jax.random.normal(ks[3], (b, s, h, 8))
    mask = causal_mask(jnp.arange(s), jnp.arange(s))
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, mask) * ct)
    np.testing.assert_allclose(tiled_attention(q, k, v, mask), grouped_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-6)
    tiled = jax.grad(loss(tiled_attention), argnums=(0, 1, 2))(q, k, v)
    whole = jax.grad(loss(grouped_attention), argnums=(0, 1, 2))(q, k, v)
    for a, e in zip(tiled, whole):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["gqa", "sliding"])
def test_attention_tiling_is_selected_by_config_and_changes_no_number(attention):
    # a batch of 9 sequences whose scores need 3 tiles; the same parameters with and without
    window = 5 if attention == "sliding" else None
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, n_layers=1, max_seq_len=128,
                      attention=attention, sliding_window=window)
    x = jax.random.normal(jax.random.key(5), (9, 128, 32))
    assert batch_chunk(9, 4 * 128 * 128) == 3
    plain = Attention(cfg, rngs=nnx.Rngs(0))
    tiled = Attention(cfg.replace(attention_tiling=True), rngs=nnx.Rngs(0))
    assert tiled.tiling and not plain.tiling
    np.testing.assert_allclose(tiled(x)[0], plain(x)[0], rtol=1e-5, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda x: tiled(x)[0])(x))
    assert "while" in jaxpr or "scan" in jaxpr  # lax.map over the tiles
    assert "scan" not in str(jax.make_jaxpr(lambda x: plain(x)[0])(x))


def test_attention_tiling_is_refused_where_it_is_not_implemented():
    with pytest.raises(ValueError, match="attention_tiling=True is only implemented"):
        ModelConfig(attention="mla", attention_tiling=True)
    with pytest.raises(ValueError, match="attention_tiling must be True or False, got 1"):
        ModelConfig(attention_tiling=1)


def test_attention_is_causal():
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, n_layers=1)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 10, 32))
    y1, _ = attn(x)
    y2, _ = attn(x.at[:, 6:].set(5.0))
    np.testing.assert_allclose(y1[:, :6], y2[:, :6], atol=1e-6)
    assert not np.allclose(y1[:, 6:], y2[:, 6:])


def test_swiglu_matches_formula():
    ffn = SwiGLU(8, 16, rngs=nnx.Rngs(0))
    x = np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32)
    g, u, d = (np.asarray(p[...]) for p in (ffn.w_gate, ffn.w_up, ffn.w_down))
    a = x @ g
    expected = (a / (1 + np.exp(-a)) * (x @ u)) @ d
    np.testing.assert_allclose(ffn(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-6)


def test_sampling_greedy_topk_and_determinism():
    logits = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    assert sample_logits(logits, jax.random.key(0), temperature=0).tolist() == [1, 0]
    draws = jax.vmap(lambda k: sample_logits(logits, k, 1.0, top_k=2))(
        jax.random.split(jax.random.key(0), 400))
    assert set(np.asarray(draws[:, 0]).tolist()) == {1, 2}  # token 0 is outside the top 2
    assert set(np.asarray(draws[:, 1]).tolist()) == {0, 2}
    a = sample_logits(logits, jax.random.key(5), 1.0)
    b = sample_logits(logits, jax.random.key(5), 1.0)
    assert a.tolist() == b.tolist()


def test_generate_greedy_matches_repeated_full_forward(tiny_model):
    prompt = jnp.array([[10, 49, 50, 43]])
    out = generate(tiny_model, prompt, 6, jax.random.key(0), temperature=0)
    seq = prompt
    for _ in range(6):  # no cache: rerun the whole sequence each step
        nxt = jnp.argmax(tiny_model(seq).logits[:, -1], -1)
        seq = jnp.concatenate([seq, nxt[:, None]], 1)
    assert out.tolist() == seq.tolist()
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        generate(tiny_model, prompt, 100, jax.random.key(0))


def test_no_nans_in_logits_or_gradients(tiny_model):
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 256)

    def loss(m):
        return m(tokens).logits.mean()

    g = nnx.grad(loss)(tiny_model)
    leaves = jax.tree_util.tree_leaves(nnx.state(g))
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves)


def test_the_package_exports_its_main_api():
    import minimoe as mm
    from minimoe import config, cost, model
    from minimoe.moe import layer
    from minimoe.training import data, train

    homes = {"ModelConfig": config, "MoEConfig": config, "Transformer": model,
             "generate": model, "MoELayer": layer, "MoEStats": layer, "TrainConfig": train,
             "Trainer": train, "CorpusConfig": data, "course_corpus": data,
             "from_hf_config": cost}
    assert set(mm.__all__) == set(homes)
    for name, module in homes.items():
        assert getattr(mm, name) is getattr(module, name), name
