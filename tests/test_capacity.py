"""The capacity measurement: task, metric, memory model, seed-batched training, statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minimoe.accounting import count_params
from minimoe.config import MoEConfig
from minimoe.experiments.capacity import (FactMemory, MemoryConfig, MemoryTrainConfig, bits_stored,
                                          capacity_models, load_sweep, memory_param_counts,
                                          most_frequent_accuracy, paired_difference, prior_bits,
                                          train_seeds)
from minimoe.training.data import capacity_facts

MOE = MoEConfig(n_experts=4, top_k=2, d_expert=8, router="softmax", dispatch="dropless")
DENSE = MemoryConfig(64, 8, d_model=8, d_ff=16)
SPARSE = MemoryConfig(64, 8, d_model=8, d_ff=None, moe=MOE)
TCFG = MemoryTrainConfig(steps=40, lr=2e-2, warmup_steps=4, record_every=20)


def _naive_bits(logits, values):
    total = 0.0
    v = logits.shape[-1]
    for row, y in zip(np.asarray(logits, np.float64), values):
        logp = row - row.max() - math.log(np.exp(row - row.max()).sum())
        total += math.log2(v) + logp[y] / math.log(2)
    return total


def test_bits_stored_matches_a_per_fact_loop_and_its_end_points():
    rng = np.random.default_rng(0)
    values = rng.integers(8, size=50)
    logits = rng.normal(size=(3, 50, 8)).astype(np.float32) * 3
    got = np.asarray(bits_stored(jnp.asarray(logits), jnp.asarray(values)))
    want = [_naive_bits(logits[s], values) for s in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # guessing uniformly stores nothing; certainty stores the table's entropy, N log2 V
    assert float(bits_stored(jnp.zeros((50, 8)), jnp.asarray(values))) == pytest.approx(0, abs=1e-4)
    sure = jnp.asarray(np.eye(8)[values] * 50.0)
    assert float(bits_stored(sure, jnp.asarray(values))) == pytest.approx(50 * 3, rel=1e-5)
    # confidently wrong counts against the model
    wrong = jnp.asarray(np.eye(8)[(values + 1) % 8] * 5.0)
    assert float(bits_stored(wrong, jnp.asarray(values))) < 0


def test_prior_bits_is_the_bits_of_a_predictor_that_knows_only_the_value_counts():
    _, values = capacity_facts(300, 16, seed=3)
    counts = np.bincount(values, minlength=16)
    logits = np.broadcast_to(np.log(np.maximum(counts, 1e-30)), (300, 16))
    assert prior_bits(values, 16) == pytest.approx(float(bits_stored(jnp.asarray(logits),
                                                                     jnp.asarray(values))), rel=1e-4)
    assert 0 < prior_bits(values, 16) < 0.1 * 300 * 4  # small next to the table's 1,200 bits
    assert most_frequent_accuracy(values, 16) == counts.max() / 300


def test_capacity_facts_is_seeded_uniform_and_checks_its_arguments():
    k, v = capacity_facts(4000, 10)
    k2, v2 = capacity_facts(4000, 10)
    np.testing.assert_array_equal(v, v2)
    np.testing.assert_array_equal(k, np.arange(4000))
    assert not np.array_equal(v, capacity_facts(4000, 10, seed=1)[1])
    counts = np.bincount(v, minlength=10)
    assert counts.min() > 330 and counts.max() < 470  # 400 expected, sd 19
    for bad in (dict(n_facts=0, n_values=4), dict(n_facts=5, n_values=1),
                dict(n_facts=2.5, n_values=4)):
        with pytest.raises(ValueError, match="n_facts|n_values"):
            capacity_facts(**bad)


def test_memory_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="n_values"):
        MemoryConfig(10, 1)
    with pytest.raises(ValueError, match="d_ff"):
        MemoryConfig(10, 4, d_ff=None)
    with pytest.raises(ValueError, match="d_ff must be None"):
        MemoryConfig(10, 4, d_ff=16, moe=MOE)
    with pytest.raises(ValueError, match="n_keys"):
        MemoryConfig(0, 4)
    with pytest.raises(ValueError, match="record_every"):
        MemoryTrainConfig(steps=10, record_every=3)
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, steps=10\), got 10"):
        MemoryTrainConfig(steps=10, record_every=5, warmup_steps=10)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        MemoryTrainConfig(steps=10, record_every=5, lr=0.0)
    with pytest.raises(ValueError, match=r"min_lr_ratio must be in \[0, 1\], got 2"):
        MemoryTrainConfig(steps=10, record_every=5, warmup_steps=1, min_lr_ratio=2.0)


@pytest.mark.parametrize("cfg", [DENSE, SPARSE, SPARSE.replace(
    n_layers=2, moe=MOE.replace(n_shared_experts=1, d_shared=4))])
def test_param_counts_match_the_built_model_and_leave_out_the_fixed_tables(cfg):
    model = FactMemory(cfg, rngs=nnx.Rngs(0))
    c = memory_param_counts(cfg)
    assert count_params(model) == c["total"]
    fixed = jax.tree_util.tree_leaves(nnx.state(model, nnx.Not(nnx.Param)))
    assert sum(x.size for x in fixed if x.ndim == 2) == c["fixed"]
    if cfg.moe is None:
        assert c["active"] == c["total"]
    else:
        m = cfg.moe
        assert c["total"] - c["active"] == cfg.n_layers * 3 * cfg.d_model * m.d_expert * (m.n_experts - m.top_k)


def test_seed_batched_training_equals_training_each_seed_alone():
    keys, values = capacity_facts(64, 8)
    both = train_seeds(SPARSE, keys, values, (0, 1), TCFG)
    alone = train_seeds(SPARSE, keys, values, (1,), TCFG)
    np.testing.assert_allclose(both.bits[1], alone.bits[0], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(both.curve_bits[1], alone.curve_bits[0], rtol=1e-4, atol=1e-2)
    assert both.bits[0] != pytest.approx(both.bits[1], abs=1e-3)  # the seeds do differ
    # the metric after training agrees with the trained model evaluated directly
    logits = both.models[0](jnp.asarray(keys)).logits
    assert float(bits_stored(logits, jnp.asarray(values))) == pytest.approx(both.bits[0], rel=1e-4)
    assert both.accuracy[0] == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == values)))


def test_training_stores_bits_and_never_moves_the_fixed_embeddings():
    keys, values = capacity_facts(64, 8)
    r = train_seeds(DENSE, keys, values, (0,), TCFG)
    assert r.curve_bits[0, 0] < 0.3 * 64 * 3 < r.bits[0]  # from near 0 to most of 192 bits
    fresh = FactMemory(DENSE, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(r.models[0].key_embed[...], fresh.key_embed[...])
    np.testing.assert_array_equal(r.models[0].value_unembed[...], fresh.value_unembed[...])
    assert not np.allclose(r.models[0].blocks[0].ffn.w_up[...], fresh.blocks[0].ffn.w_up[...])


def test_training_updates_deepseeks_router_bias():
    cfg = SPARSE.replace(moe=MOE.replace(router="deepseek_v3", bias_update_rate=1e-3))
    keys, values = capacity_facts(64, 8)
    r = train_seeds(cfg, keys, values, (0,), TCFG)
    bias = np.asarray(r.models[0].blocks[0].ffn.router.bias[...])
    assert np.abs(bias).max() > 0 and np.all(np.abs(bias) <= TCFG.steps * 1e-3 + 1e-6)


def test_train_seeds_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match="n_values"):
        train_seeds(DENSE, np.arange(4), np.array([0, 1, 2, 8]), (0,), TCFG)


def test_paired_difference_against_a_t_table():
    # d = 1..5: mean 3, sd sqrt(2.5); t(0.975, 4 dof) = 2.7764 (any table of Student's t)
    r = paired_difference([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    assert r["mean"] == 3 and r["min"] == 1 and r["n"] == 5
    assert r["low"] == pytest.approx(3 - half, abs=1e-3) and r["high"] == pytest.approx(3 + half, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [0.0])


def test_the_three_models_match_the_moe_in_active_and_in_total_width():
    c = {name: memory_param_counts(cfg) for name, cfg in capacity_models(100).items()}
    assert c["dense (active width)"]["ffn_total"] == c["MoE"]["ffn_active"]
    assert c["dense (total width)"]["ffn_total"] == c["MoE"]["ffn_total"]
    assert c["MoE"]["ffn_total"] == 8 * c["MoE"]["ffn_active"]  # 16 experts, 2 per fact


def test_the_shipped_sweep_was_run_with_the_current_models_and_baselines():
    sweep = load_sweep()
    assert set(sweep["runs"]) == set(capacity_models(1))
    for name, cfg in capacity_models(1, sweep["n_values"], sweep["d_model"]).items():
        assert sweep["params"][name] == memory_param_counts(cfg)
        for n in sweep["sizes"]:
            assert len(sweep["runs"][name][str(n)]["bits"]) == len(sweep["seeds"])
    for n in sweep["sizes"]:
        _, values = capacity_facts(n, sweep["n_values"])
        assert sweep["baselines"][str(n)]["prior_bits"] == pytest.approx(prior_bits(values, sweep["n_values"]))
