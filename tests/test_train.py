import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer
from minimoe.training.data import (ByteTokenizer, CorpusConfig, course_corpus, fact_documents,
                                   facts_table, generate_documents)
from minimoe.training.train import (TrainConfig, Trainer, answer_metrics, exact_match,
                                    make_optimizer, make_schedule, token_cross_entropy)

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)

DATA = course_corpus(CorpusConfig(n_tokens=30_000))
TCFG = TrainConfig(steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=6,
                   eval_batches=1)


def run(cfg=TINY, tcfg=TCFG, until=None):
    t = Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), tcfg, *DATA)
    t.run(until, progress=False)
    return t


def losses(t):
    return [r["loss"] for r in t.history.train]


@pytest.mark.default_xla
def test_same_seed_same_losses_and_loss_falls():
    a, b = run(), run()
    assert losses(a) == losses(b)
    assert losses(a)[-1] < losses(a)[0] - 0.3
    assert run(tcfg=TCFG.replace(seed=1)).history.train[0]["loss"] != losses(a)[0]
    assert [r["step"] for r in a.history.val] == [6, 12]
    per_domain = [k for k in a.history.val[-1] if k.startswith("val_loss/")]
    assert "val_loss" in a.history.val[-1] and len(per_domain) >= 3


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    full = run()
    half = run(until=6)
    path = half.save(tmp_path / "ckpt.npz")
    resumed = Trainer.load(path, Transformer(TINY, rngs=nnx.Rngs(123)), *DATA)
    assert resumed.step == 6
    resumed.run(progress=False)
    assert [r["loss"] for r in resumed.history.train] == losses(full)[6:]


def test_resume_moe_with_bias_balancing(tmp_path):
    cfg = TINY.replace(moe=MoEConfig(n_experts=4, top_k=2, d_expert=16, router="deepseek_v3",
                                     bias_update_rate=0.01))
    full = run(cfg)
    half = run(cfg, until=6)
    resumed = Trainer.load(half.save(tmp_path / "moe.npz"), Transformer(cfg, rngs=nnx.Rngs(9)), *DATA)
    resumed.run(progress=False)
    assert [r["loss"] for r in resumed.history.train] == losses(full)[6:]


def test_checkpoint_errors(tmp_path):
    t = run(until=2)
    path = t.save(tmp_path / "c.npz")
    other = TINY.replace(d_ff=32)
    with pytest.raises(ValueError, match="different ModelConfig"):
        Trainer.load(path, Transformer(other, rngs=nnx.Rngs(0)), *DATA)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer.load(tmp_path / "missing.npz", t.model, *DATA)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="is not a minimoe checkpoint"):
        Trainer.load(bad, t.model, *DATA)
    # an object array would need pickle to load: refused
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array(json.dumps({"format": 1})), x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="is not a minimoe checkpoint"):
        Trainer.load(evil, t.model, *DATA)


def test_exact_match_needs_documents_with_answers():
    t = run(until=2)
    with pytest.raises(ValueError, match="has none"):
        exact_match(t.model, generate_documents(CorpusConfig(n_tokens=30_000), 3, domain="grammar"))


def test_answer_metrics_against_a_per_document_loop():
    t = run(until=5)
    docs = fact_documents(7)
    assert [d.prompt + d.answer for d in docs] == [f"{n} lives in {c}." for n, c in facts_table(7)]
    got = answer_metrics(t.model, docs, batch_size=3)  # batches of unequal padding
    ce_sum, n, hits = 0.0, 0, 0
    for d in docs:  # one unpadded document at a time
        tokens = jnp.asarray(ByteTokenizer.encode("\n" + d.text))[None]
        logits = t.model(tokens[:, :-1]).logits
        ce = np.asarray(token_cross_entropy(logits, tokens[:, 1:]))[0]
        ans = slice(len(d.prompt), len(d.prompt) + len(d.answer))
        ce_sum, n = ce_sum + ce[ans].sum(), n + len(d.answer)
        hits += bool((np.asarray(logits.argmax(-1))[0, ans] == np.asarray(tokens[0, 1:])[ans]).all())
    assert got["answer_loss"] == pytest.approx(ce_sum / n, rel=1e-5)
    assert got["exact_match"] == hits / len(docs) == exact_match(t.model, docs, batch_size=4)


def test_train_config_errors():
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, steps=10\)"):
        TrainConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match=r"lr must be > 0"):
        TrainConfig(lr=0.0)
    for name in ("lr", "weight_decay", "clip_norm", "min_lr_ratio"):  # a bool is not a number
        with pytest.raises(ValueError, match=rf"{name} must be a number, got True"):
            TrainConfig(**{name: True})
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer, got 2.5"):
        TrainConfig(warmup_steps=2.5)


def test_runs_with_other_seeds_share_the_optimizer_transformation():
    # the jitted train step is compiled per transformation object: another seed must reuse it
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)
    tcfg = TrainConfig(steps=20, batch_size=2, seq_len=16, warmup_steps=2)
    a = make_optimizer(Transformer(cfg, rngs=nnx.Rngs(0)), tcfg)
    b = make_optimizer(Transformer(cfg, rngs=nnx.Rngs(1)), tcfg.replace(seed=1, eval_every=5))
    c = make_optimizer(Transformer(cfg, rngs=nnx.Rngs(0)), tcfg.replace(lr=1e-2))
    assert a.tx is b.tx
    assert a.tx is not c.tx


def test_schedule_warms_up_from_the_first_step_and_ends_at_the_floor():
    tcfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=4, min_lr_ratio=0.1)
    lr = [float(make_schedule(tcfg)(i)) for i in range(tcfg.steps)]
    np.testing.assert_allclose(lr[:4], [2.5e-3, 5e-3, 7.5e-3, 1e-2], rtol=1e-6)
    assert all(a > b for a, b in zip(lr[3:], lr[4:]))  # cosine decay, strictly falling
    np.testing.assert_allclose(lr[-1], 1e-3, rtol=1e-6)
    flat = TrainConfig(steps=10, lr=1e-2, warmup_steps=0)
    assert float(make_schedule(flat)(0)) == pytest.approx(1e-2)


def test_weight_decay_applies_to_matrices_only():
    """One step with zero gradients: AdamW's update is then the decay alone."""
    model = Transformer(TINY.replace(moe=MoEConfig(n_experts=4, top_k=2, d_expert=16)),
                        rngs=nnx.Rngs(0))
    tcfg = TCFG.replace(lr=0.1, warmup_steps=0, weight_decay=0.5)
    opt = make_optimizer(model, tcfg)
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, zeros)
    after = nnx.state(model, nnx.Param)
    decayed, kept = [], []
    for (path, b), a in zip(jax.tree_util.tree_leaves_with_path(before),
                            jax.tree_util.tree_leaves(after)):
        name = jax.tree_util.keystr(path)
        if b.ndim >= 2:
            np.testing.assert_allclose(np.asarray(a), b * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=name)
            decayed.append(name)
        else:
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=name)
            kept.append(name)
    assert any("embed" in n for n in decayed) and any("w_router" in n for n in decayed)
    assert any("experts" in n for n in decayed)
    assert kept and all("norm" in n or "scale" in n or "weight" in n for n in kept), kept


def test_gradient_clipping_comes_before_adam():
    """The moments AdamW accumulates are those of the clipped gradient (global norm
    ``clip_norm``), not of the raw one."""
    from minimoe.training.train import _transform
    tx = _transform(TCFG.replace(lr=1e-2, warmup_steps=0, clip_norm=0.5))
    params = {"a": jnp.ones((3, 3)), "b": jnp.ones((4,))}
    g = {"a": jnp.full((3, 3), 100.0), "b": jnp.arange(4.0) * 50}
    _, state = tx.update(g, tx.init(params), params)
    adam = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)][0]
    norm = float(np.sqrt(sum(float(jnp.sum(x ** 2)) for x in g.values())))
    for k in g:  # first moment after one step: (1 - b1) * clipped gradient, b1 = 0.9
        np.testing.assert_allclose(np.asarray(adam.mu[k]), 0.1 * np.asarray(g[k]) * 0.5 / norm,
                                   rtol=1e-5)
