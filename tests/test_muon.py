"""Muon (optax's) on the block matrices, AdamW on the rest, as a Trainer option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer
from minimoe.training.data import CorpusConfig, course_corpus
from minimoe.training.train import TrainConfig, Trainer, _path_names, muon_labels

CFG = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
                  tie_embeddings=False, hc_mult=2, num_nextn_predict_layers=1,
                  moe=MoEConfig(n_experts=4, top_k=2, d_expert=16, router="deepseek_v4",
                                n_shared_experts=1))
TCFG = TrainConfig(steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=12,
                   eval_batches=1, optimizer="muon")


def _labels(model):
    labels = muon_labels(nnx.state(model, nnx.Param))
    return {"/".join(n for n in _path_names(p) if n != "value"): lab
            for p, lab in jax.tree_util.tree_leaves_with_path(labels)}


def test_partition_muon_for_block_matrices_adamw_for_the_rest():
    labels = _labels(Transformer(CFG, rngs=nnx.Rngs(0)))
    muon = {k for k, v in labels.items() if v == "muon"}
    for name in ("blocks/0/attn/wq", "blocks/1/attn/wo", "blocks/0/ffn/experts/w_gate",
                 "blocks/0/ffn/shared_experts/w_down", "mtp/e_proj", "mtp/h_proj",
                 "mtp/block/ffn/experts/w_up"):
        assert labels[name] == "muon", name
    for name in ("embed", "lm_head", "final_norm/weight", "blocks/0/attn_norm/weight",
                 "blocks/0/ffn/router/w_router", "blocks/0/hc_attn/fn", "blocks/0/hc_attn/base",
                 "hc_head/fn", "mtp/enorm/weight", "mtp/hc_head/fn"):
        assert labels[name] == "adamw", name
    assert all("norm" not in k and "router" not in k and "hc_" not in k for k in muon)


def test_first_muon_step_is_orthogonalised_and_adamw_step_is_sign_like():
    cfg = CFG.replace(hc_mult=1, num_nextn_predict_layers=0)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    t = Trainer(model, TCFG.replace(weight_decay=0.0, warmup_steps=0), *course_corpus(
        CorpusConfig(n_tokens=20_000)))
    wq0, router0 = model.blocks[0].attn.wq[...], model.blocks[0].ffn.router.w_router[...]
    t.run(1, progress=False)
    d_wq = np.asarray(model.blocks[0].attn.wq[...] - wq0)
    sv = np.linalg.svd(d_wq, compute_uv=False)
    # Newton-Schulz pushes the singular values of the update towards one value (directions
    # with almost no gradient lag behind, so the spread is measured between percentiles)
    assert np.percentile(sv, 90) / np.percentile(sv, 10) < 2.5
    g = np.linalg.svd(np.asarray(jax.random.normal(jax.random.key(0), d_wq.shape)), compute_uv=False)
    assert np.percentile(g, 90) / np.percentile(g, 10) > 4  # a generic matrix is far from it
    d_router = np.abs(np.asarray(model.blocks[0].ffn.router.w_router[...] - router0))
    lr0 = TCFG.lr  # Adam's first step is lr * g / (|g| + eps): magnitude lr wherever g != 0
    assert np.median(d_router) == pytest.approx(lr0, rel=1e-3)


def test_muon_training_reduces_the_loss():
    cfg = CFG.replace(hc_mult=1, num_nextn_predict_layers=0)
    t = Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), TCFG,
                *course_corpus(CorpusConfig(n_tokens=30_000)))
    t.run(progress=False)
    losses = [r["loss"] for r in t.history.train]
    assert losses[-1] < losses[0] - 0.5
    assert all(np.isfinite(losses))


def test_optimizer_is_validated():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="muon_lr"):
        TrainConfig(muon_lr=0.0)


def test_checkpoint_resume_is_exact_with_muon_mtp_hash_and_mhc(tmp_path):
    cfg = CFG.replace(hc_sinkhorn_iters=4, num_hash_layers=1,
                      moe=CFG.moe.replace(bias_update_rate=1e-3))
    data = course_corpus(CorpusConfig(n_tokens=20_000))
    tcfg = TCFG.replace(steps=5, warmup_steps=1, eval_every=5, mtp_loss_weight=0.3)
    full = Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), tcfg, *data)
    full.run(progress=False)
    part = Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), tcfg, *data)
    part.run(2, progress=False)
    part.save(tmp_path / "ckpt.npz")
    resumed = Trainer.load(tmp_path / "ckpt.npz", Transformer(cfg, rngs=nnx.Rngs(1)), *data)
    np.testing.assert_array_equal(  # the hash table is restored, not rebuilt from the new seed
        np.asarray(resumed.model.blocks[0].ffn.router.tid2eid[...]),
        np.asarray(full.model.blocks[0].ffn.router.tid2eid[...]))
    resumed.run(progress=False)
    assert [r["loss"] for r in resumed.history.train] == [r["loss"] for r in full.history.train][2:]
