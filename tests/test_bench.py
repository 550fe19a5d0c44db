"""The benchmark (minimoe.bench) on a minuscule workload: its figures have the promised keys and
every strategy's layer computes the same thing. No timing assertions: timings are the
benchmark's output, not a property of the code."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimoe import bench
from minimoe.moe.dispatch import STRATEGIES

TINY = bench.QUICK.replace(tokens=32, seq_len=16, repeats=1, strategies=("sort", "onehot"),
                           scaling_experts=(4, 8), matmul_size=64, train_batch=2,
                           train_seq=8)


def test_every_strategy_gives_the_same_layer_output():
    cfg = TINY.replace(capacity_factor=8.0)  # capacity >= tokens: nothing is dropped
    x, _ = bench.layer_inputs(cfg)
    outputs = {s: bench.layer_output(bench.make_moe(cfg, s), x) for s in STRATEGIES}
    for strategy, y in outputs.items():
        assert y.shape == x.shape
        np.testing.assert_allclose(y, outputs["reference"], atol=2e-5, err_msg=strategy)


def test_benchmark_figures_have_the_promised_keys(tmp_path):
    res = bench.run_benchmark(TINY, log=lambda m: None)
    for key in ("dense_ms", "moe_ms", "moe_over_dense", "best_strategy", "expert_scaling",
                "expert_scaling_ms", "expert_scaling_params", "matmul_peak_gflops",
                "achieved_gflops", "achieved_fraction", "tokens_per_s", "jax_version",
                "device", "cpu_count", "workload", "dropped_fraction", "skipped"):
        assert key in res, key
    assert set(res["moe_ms"]) == {"sort", "onehot"}
    assert res["moe_over_dense"] == pytest.approx(
        res["moe_ms"][res["best_strategy"]] / res["dense_ms"])
    assert list(res["expert_scaling"]) == ["4", "8"] and res["expert_scaling"]["4"] == 1.0
    assert res["expert_scaling_params"]["8"] > res["expert_scaling_params"]["4"]
    assert {"dense", "sort", "onehot", "sort@4", "sort@8"} <= set(res["achieved_fraction"])
    assert all(v > 0 for v in res["achieved_fraction"].values())
    assert res["tokens_per_s"] > 0 and res["matmul_peak_gflops"] > 0
    b = res["breakdown_ms"]
    assert set(bench.BREAKDOWN_PARTS) <= set(b) and "experts at cf 1" in b
    assert b["MoE layer (sort)"] == pytest.approx(res["moe_ms"]["sort"])  # the same call
    assert b["rest"] == pytest.approx(
        b["MoE layer (sort)"] - sum(b[p] for p in bench.BREAKDOWN_PARTS))
    assert [t["what"] for t in res["targets"]] == [t[0] for t in bench.TARGETS]
    by_key = {key: row for (_, key, _, _), row in zip(bench.TARGETS, res["targets"])}
    assert by_key["moe_over_dense"]["measured"] == res["moe_over_dense"]
    assert by_key["dropless_over_dense"]["verdict"] == "not measured"  # TINY: sort, onehot
    assert by_key["train_step_over_dense"]["measured"] == pytest.approx(
        res["dense_tokens_per_s"] / res["tokens_per_s"])
    assert res["expert_scaling_last"] == res["expert_scaling"]["8"]
    json.dumps(res)  # JSON-ready
    table = bench.format_table(res)
    assert "MoE sort" in table and "targets" in table and "from_buffers" in table


def test_target_verdicts():
    res = {"moe_over_dense": 1.10, "dropless_over_dense": 1.5, "expert_scaling_last": 1.42}
    verdicts = {key: row[4] for (_, key, _, _), row in zip(bench.TARGETS,
                                                           bench.target_rows(res))}
    assert verdicts == {"moe_over_dense": "met (stretch too)", "dropless_over_dense": "met",
                        "expert_scaling_last": "missed by 0.12",
                        "train_step_over_dense": "not measured"}
    res["moe_over_dense"] = 1.2
    assert bench.target_rows(res)[0][4] == "met"


def test_the_layer_without_breakdown_times_no_pieces():
    res = bench.run_benchmark(TINY.replace(breakdown=False, strategies=("sort",)),
                              log=lambda m: None)
    assert "breakdown_ms" not in res
    assert not any(name.startswith("part: ") for name in res["repeats"])


def test_a_strategy_too_big_for_memory_is_skipped_not_run():
    cfg = TINY.replace(max_gib=1e-6)
    x, g = bench.layer_inputs(cfg)
    assert bench.largest_array_gib(cfg, "onehot") > 1e-6 >= bench.largest_array_gib(cfg, "sort")
    calls, skipped = bench.moe_calls(cfg, x, g)
    assert set(skipped) == {"onehot"} and set(calls) == {"sort"}
    assert set(bench.dropped_fractions(cfg, x)) == {"sort"}


def test_dropped_fractions_are_those_of_a_training_call():
    cfg = TINY.replace(capacity_factor=0.5)  # half the even share: at least half is dropped
    x, _ = bench.layer_inputs(cfg)
    drops = bench.dropped_fractions(cfg, x)
    assert set(drops) == {"sort", "onehot"} and drops["sort"] == drops["onehot"] >= 0.5


def test_time_many_gives_slow_calls_fewer_runs():
    fast = jax.jit(lambda a: a + 1)
    slow = jax.jit(lambda a: sum(jnp.sin(a + i) for i in range(200)))
    a = jnp.ones((256, 256))
    t = bench.time_many({"fast": (fast, (a,)), "slow": (slow, (a,))}, repeats=3, budget_s=1e-9)
    assert t["fast"].runs == t["slow"].runs == 1  # over budget: the warm-up is the measurement
    t = bench.time_many({"fast": (fast, (a,))}, repeats=3)
    assert t["fast"].runs == 3 and t["fast"].median > 0


def test_flop_counts_equal_the_matmuls_of_a_layer_step():
    """dense_flops and moe_useful_flops against the matmuls a forward + backward really runs
    (counted from the jaxpr). The reference dispatch runs the useful work -- each (token,
    slot) meets one expert, no padding -- plus one einsum the useful count leaves out: each
    token's weighted sum of its top_k expert outputs (2 * top_k * d_model per token, x3 with
    the backward pass)."""
    from minimoe.accounting import matmul_flops

    cfg = TINY
    x, g = bench.layer_inputs(cfg)
    step, args = bench.layer_call(bench.make_dense(cfg), x, g)
    assert matmul_flops(step, *args) == bench.dense_flops(cfg)
    moe = bench.make_moe(cfg.replace(capacity_factor=None), "reference")
    step, args = bench.layer_call(moe, x, g)
    combine = 3 * 2 * cfg.tokens * cfg.top_k * cfg.d_model
    assert matmul_flops(step, *args) == bench.moe_useful_flops(cfg) + combine


def test_total_params_counts_the_built_layer():
    from flax import nnx

    cfg = bench.BenchConfig()
    for n in (16, 256):
        layer = nnx.eval_shape(lambda: bench.make_moe(cfg, "sort", n_experts=n))
        arrays = jax.tree.leaves(nnx.state(layer, nnx.Param))
        assert bench.total_params(cfg, n) == sum(a.size for a in arrays)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cfg, path = bench.parse_args(["--quick", "--tokens", "64", "--repeats", "2",
                                  "--strategies", "sort,dropless", "--json", str(out)])
    assert (cfg.tokens, cfg.repeats, cfg.strategies, path) == (64, 2, ("sort", "dropless"),
                                                              str(out))
    with pytest.raises(SystemExit):
        bench.parse_args(["--strategies", "magic"])
    env = bench.environment()
    assert env["device_count"] == jax.device_count() and env["backend"] == jax.default_backend()
