"""One config for model and calculator: a DeepSeek-V4 config.json builds a minimoe model
(``checkpoints.config_from_hf``) whose parameters ``accounting.param_counts`` and
``cost.from_hf_config`` count alike, at full size and in miniature (``miniature``)."""

import json

import jax
import pytest
from flax import nnx

from minimoe.accounting import param_counts
from minimoe.checkpoints import config_from_hf, load_checkpoint
from minimoe.cost import from_hf_config, load_model_config
from minimoe.experiments.miniature import (MINI_V4_SIZES, dense_twin, shrink_schedule,
                                           shrink_v4_config, v3_twin, v4_mini_config)
from minimoe.model import Transformer
from minimoe.moe.router import RouterBias
from minimoe.v4.hash_routing import HashTable

V4_CONFIGS = ("DeepSeek-V4-Flash", "DeepSeek-V4-Pro")


@pytest.mark.parametrize("name", V4_CONFIGS)
def test_full_size_counts_agree_with_the_calculator(name):
    """1.6T / 284B: the model's own accounting of the config built from the real file equals
    the calculator's count of the file, weight for weight (the calculator counts the
    selection bias, which the model holds as a non-trained variable)."""
    hf = load_model_config(name)
    c = param_counts(config_from_hf(hf, drop_rope_scaling=True))
    s = from_hf_config(hf)
    assert c["total"] + c["router_bias"] == s.total_params
    assert c["active"] + c["router_bias"] == s.active_params
    assert c["mtp"] + c["mtp_router_bias"] == s.mtp_params
    assert c["router_bias"] == (s.n_layers - s.n_hash_layers) * s.n_routed_experts


def _variants():
    flash = shrink_v4_config(load_model_config("DeepSeek-V4-Flash"))
    pro = shrink_v4_config(load_model_config("DeepSeek-V4-Pro"))
    no_mtp = {**flash, "num_nextn_predict_layers": 0,
              "compress_ratios": flash["compress_ratios"][:-1]}
    return {"flash": flash, "pro": pro, "no_mtp": no_mtp,
            "one_stream": {**flash, "hc_mult": 1},
            "no_hash": {**flash, "num_hash_layers": 0},
            "one_group": {**flash, "o_groups": 1, "n_shared_experts": 2}}


@pytest.mark.parametrize("variant", sorted(_variants()))
def test_built_model_has_the_calculators_count(variant):
    hf = _variants()[variant]
    cfg = config_from_hf(hf, max_seq_len=64)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    size = lambda kind: sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))
    s = from_hf_config(hf)
    c = param_counts(cfg)
    assert size(RouterBias) == c["router_bias"] + c["mtp_router_bias"]
    assert size(nnx.Param) + size(RouterBias) == s.total_params + s.mtp_params
    assert size(nnx.Param) == c["total"] + c["mtp"]
    n_hash = hf["num_hash_layers"]
    assert size(HashTable) == s.hash_table_entries == n_hash * hf["vocab_size"] * hf["num_experts_per_tok"]


def test_shrunk_schedule_keeps_the_pattern():
    flash, pro = (load_model_config(n) for n in V4_CONFIGS)
    assert shrink_v4_config(flash)["compress_ratios"] == [0, 4, 16, 4, 0]
    assert shrink_v4_config(pro)["compress_ratios"] == [16, 4, 16, 4, 0]
    assert shrink_schedule([0, 0, 4, 128, 4, 0], 5, 6, 8) == [0, 4, 8, 4, 8, 4, 0]
    mini = shrink_v4_config(flash)
    assert "rope_scaling" not in mini and "quantization_config" not in mini
    assert {k: mini[k] for k in MINI_V4_SIZES} == MINI_V4_SIZES
    assert set(mini) == set(flash) - {"rope_scaling", "quantization_config"} | {"_name_or_path"}


def test_mini_model_runs_and_is_v4():
    cfg = v4_mini_config()
    assert cfg.attention == "compressed" and cfg.hc_mult == 4 and cfg.num_hash_layers == 1
    assert cfg.moe.router == "deepseek_v4" and cfg.moe.swiglu_limit == 10.0
    assert cfg.n_moe_layers == cfg.n_layers and cfg.num_nextn_predict_layers == 1
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, cfg.vocab_size)
    out = model(tokens)
    assert out.logits.shape == (2, 64, cfg.vocab_size)
    assert bool(jax.numpy.isfinite(out.logits).all())


def test_twins():
    v4 = v4_mini_config()
    d = dense_twin(v4)
    gap = param_counts(d)["active"] - param_counts(v4)["active"]
    assert abs(gap) <= 3 * v4.d_model * v4.n_layers / 2
    v3 = v3_twin(v4)
    assert v3.attention == "mla" and v3.moe.router == "deepseek_v3" and v3.hc_mult == 1
    assert v3.moe.n_experts == v4.moe.n_experts and v3.moe.d_expert == v4.moe.d_expert


def _flash_mini():
    return shrink_v4_config(load_model_config("DeepSeek-V4-Flash"))


@pytest.mark.parametrize("change, message", [
    ({"scoring_func": "sigmoid"}, "scoring_func"),
    ({"num_key_value_heads": 2}, "num_key_value_heads"),
    ({"n_group": 8}, "n_group"),
    ({"topk_method": "greedy"}, "topk_method"),
    ({"num_hash_layers": 5}, "num_hash_layers"),
    ({"hc_mult": 0}, "hc_mult"),
])
def test_bad_v4_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**_flash_mini(), **change})


def test_yarn_is_refused_unless_dropped():
    hf = load_model_config("DeepSeek-V4-Flash")
    with pytest.raises(ValueError, match="drop_rope_scaling"):
        config_from_hf(hf)
    assert config_from_hf(hf, drop_rope_scaling=True).rope_yarn is None


def test_shrink_errors():
    flash = load_model_config("DeepSeek-V4-Flash")
    with pytest.raises(ValueError, match="model_type"):
        shrink_v4_config({**flash, "model_type": "deepseek_v3"})
    with pytest.raises(ValueError, match="n_experts"):
        shrink_v4_config(flash, {"n_experts": 4})
    with pytest.raises(ValueError, match="hca_ratio"):
        shrink_v4_config(flash, hca_ratio=4)


def test_load_checkpoint_refuses_v4_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_flash_mini()))
    with pytest.raises(ValueError, match="config_from_hf"):
        load_checkpoint(str(tmp_path))


def test_run_capstone_measures_what_the_notebook_reads():
    """Two steps of the notebook's experiment: every measurement is there and sane."""
    from minimoe.experiments.miniature import capstone_train_config, run_capstone
    from minimoe.training.data import course_corpus

    train, val = course_corpus()
    tcfg = capstone_train_config(0, steps=2).replace(eval_batches=1)
    r = run_capstone(v4_mini_config(), tcfg, train, val, quantize=True)
    assert [p["step"] for p in r["curve"]] == [1, 2]
    assert r["params"]["total"] == param_counts(v4_mini_config())["total"]
    assert 0 <= r["mtp_acceptance"] <= 1 and 0 <= r["recall"]["exact_match"] <= 1
    assert abs(r["val_loss_fp8"] - r["val_loss"]) < 0.01 * r["val_loss"]  # FP8 experts: < 1%
    assert r["expert_bytes_fp4"] < r["expert_bytes_fp8"]
    assert set(r["domains"]) == set(train.domain_names)
