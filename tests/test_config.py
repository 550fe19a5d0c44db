import pytest

from minimoe.config import ModelConfig, MoEConfig


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=100, n_heads=3), r"d_model \(100\) must be divisible by n_heads, got n_heads=3"),
    (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads must divide n_heads \(4\), got n_kv_heads=3"),
    (dict(d_model=0), r"d_model must be a positive integer, got 0"),
    (dict(n_layers=-2), r"n_layers must be a positive integer, got -2"),
    (dict(d_ff=2.5), r"d_ff must be a positive integer, got 2.5"),
    (dict(attention="flash"), r"attention must be one of .*'gqa'.*got 'flash'"),
    (dict(attention="sliding"), r"needs sliding_window"),
    (dict(attention="sparse"), r"needs sparse_top_k"),
    (dict(d_model=12, n_heads=4), r"head_dim = d_model / n_heads must be even"),
    (dict(first_k_dense=9, n_layers=4), r"first_k_dense must be an integer in \[0, n_layers=4\]"),
    (dict(rope_theta=-1.0), r"rope_theta must be > 0"),
])
def test_model_config_errors_name_parameter_value_and_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_experts=4, top_k=5), r"top_k must be <= n_experts \(4\), got top_k=5"),
    (dict(n_experts=8, n_group=4, topk_group=5), r"topk_group must be <= n_group \(4\)"),
    (dict(n_experts=10, n_group=4), r"n_experts \(10\) must be divisible by n_group"),
    (dict(capacity_factor=0.0), r"capacity_factor must be > 0"),
    (dict(capacity_factor=-1.0), r"capacity_factor must be > 0"),
    (dict(router="topk_magic"), r"router must be one of .*got 'topk_magic'"),
    (dict(dispatch="teleport"), r"dispatch must be one of .*got 'teleport'"),
    (dict(router="switch", top_k=2), r"top_k must be 1"),
    (dict(dispatch="ragged_dot", capacity_factor=1.0), r"dropless"),
    (dict(aux_loss_coef=-0.1), r"aux_loss_coef must be a number >= 0"),
])
def test_moe_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**kwargs)


def test_config_round_trips_through_dict_and_rejects_unknown_keys():
    cfg = ModelConfig(moe=MoEConfig(n_experts=4, top_k=1), first_k_dense=1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['d_modle'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_modle": 3})
    with pytest.raises(ValueError, match=r"unknown MoEConfig keys \['topk'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "moe": {"topk": 2}})


def test_derived_sizes():
    cfg = ModelConfig(d_model=64, n_heads=8, n_kv_heads=None)
    assert cfg.head_dim == 8 and cfg.kv_heads == 8
    moe = MoEConfig(n_experts=16, top_k=3, d_expert=32, n_shared_experts=2)
    assert moe.active_hidden == 3 * 32 + 2 * 32
    cfg = ModelConfig(n_layers=4, moe=moe, first_k_dense=1)
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
