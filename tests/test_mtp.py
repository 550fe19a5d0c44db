"""Multi-token prediction: alignment, causality, cache, the training loss, and speculative
decoding that reproduces greedy decoding token for token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer, generate
from minimoe.training.data import CorpusConfig, course_corpus
from minimoe.training.train import TrainConfig, Trainer
from minimoe.v4.mtp import mtp_inputs, speculative_generate

CFG = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
                  num_nextn_predict_layers=1)
V4ISH = CFG.replace(hc_mult=2, hc_sinkhorn_iters=5, num_hash_layers=1,
                    moe=MoEConfig(n_experts=4, top_k=2, d_expert=16, router="deepseek_v4",
                                  n_shared_experts=1, swiglu_limit=10.0))


@nnx.jit
def _mtp_logits(model, tokens):
    out = model(tokens)
    return model.mtp(model, out.hidden[:, :-1], tokens[:, 1:])[0]


@nnx.jit
def _mtp_step(model, hidden, next_tokens, cache):
    logits, cache, _ = model.mtp(model, hidden, next_tokens, cache)
    return logits, cache


@pytest.mark.parametrize("cfg", [CFG, V4ISH], ids=["dense", "v4"])
def test_mtp_position_t_reads_only_tokens_up_to_t_plus_1(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (1, 10), 0, 256)
    a = _mtp_logits(model, tokens)
    assert a.shape == (1, 9, 256)
    changed = tokens.at[0, 6].set((tokens[0, 6] + 1) % 256)  # token 6 = t+1 for t = 5
    b = _mtp_logits(model, changed)
    np.testing.assert_allclose(np.asarray(a[:, :5]), np.asarray(b[:, :5]), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(a[:, 5] - b[:, 5]).max()) > 1e-4


def test_mtp_inputs_pair_hidden_t_with_token_t_plus_1_and_target_t_plus_2():
    seq = jnp.arange(12)[None]
    inputs, targets = seq[:, :-1], seq[:, 1:]
    hidden = inputs[..., None].astype(jnp.float32)  # hidden "is" its position
    h, nxt, tgt = mtp_inputs(hidden, inputs, targets)
    np.testing.assert_array_equal(np.asarray(h[0, :, 0]), np.arange(10))
    np.testing.assert_array_equal(np.asarray(nxt[0]), np.arange(1, 11))
    np.testing.assert_array_equal(np.asarray(tgt[0]), np.arange(2, 12))


def test_mtp_with_a_cache_equals_the_full_pass():
    model = Transformer(V4ISH, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 9), 0, 256)
    hidden = nnx.jit(lambda m, t: m(t).hidden)(model, tokens)
    full = _mtp_logits(model, tokens)
    cache = model.mtp.init_cache(1, 16)
    a, cache = _mtp_step(model, hidden[:, :5], tokens[:, 1:6], cache)
    b, cache = _mtp_step(model, hidden[:, 5:8], tokens[:, 6:9], cache)
    np.testing.assert_allclose(np.asarray(jnp.concatenate([a, b], 1)), np.asarray(full),
                               rtol=1e-4, atol=1e-4)


def test_training_with_mtp_then_speculative_decoding_is_exactly_greedy():
    data = course_corpus(CorpusConfig(n_tokens=30_000))
    tcfg = TrainConfig(steps=40, batch_size=8, seq_len=32, warmup_steps=4, eval_every=40,
                       eval_batches=1, mtp_loss_weight=0.3)
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    trainer = Trainer(model, tcfg, *data)
    trainer.run(progress=False)
    rows = trainer.history.train
    assert rows[-1]["mtp_ce"] < rows[0]["mtp_ce"] - 1.0 and rows[-1]["ce"] < rows[0]["ce"] - 1.0
    prompt = jnp.asarray(data[1].tokens[None, 100:108], jnp.int32)
    want = generate(model, prompt, 24, jax.random.key(0), temperature=0)
    got = speculative_generate(model, prompt, 24)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want))
    assert got.drafted == got.main_calls and 0 < got.accepted <= got.drafted
    assert got.tokens_per_step == pytest.approx(1 + got.accepted / got.drafted)


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_drafts_are_rejected_and_the_output_is_still_greedy(seed):
    model = Transformer(V4ISH, rngs=nnx.Rngs(seed))
    prompt = jax.random.randint(jax.random.key(seed), (1, 5), 0, 256)
    want = generate(model, prompt, 12, jax.random.key(0), temperature=0)
    got = speculative_generate(model, prompt, 12)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want))


def test_speculative_decoding_errors():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(model, jnp.zeros((2, 3), jnp.int32), 4)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        speculative_generate(model, jnp.zeros((1, 3), jnp.int32), 61)
    with pytest.raises(ValueError, match="MTP module"):
        speculative_generate(Transformer(CFG.replace(num_nextn_predict_layers=0),
                                         rngs=nnx.Rngs(0)), jnp.zeros((1, 3), jnp.int32), 4)
    sliding = Transformer(CFG.replace(attention="sliding", sliding_window=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'gqa' or 'mla'"):
        speculative_generate(sliding, jnp.zeros((1, 3), jnp.int32), 4)


def test_mtp_loss_weight_needs_an_mtp_module():
    data = course_corpus(CorpusConfig(n_tokens=20_000))
    with pytest.raises(ValueError, match="MTP module"):
        Trainer(Transformer(CFG.replace(num_nextn_predict_layers=0), rngs=nnx.Rngs(0)),
                TrainConfig(mtp_loss_weight=0.3), *data)
