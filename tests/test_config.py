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
    (dict(rope_theta=-1.0), r"rope_theta must be a number > 0, got -1.0"),
    # bools are not numbers, although Python's bool is an int
    (dict(rope_theta=True), r"rope_theta must be a number > 0, got True"),
    (dict(norm_eps=True), r"norm_eps must be a number > 0, got True"),
    (dict(d_model=True), r"d_model must be a positive integer, got True"),
    (dict(tie_embeddings=1), r"tie_embeddings must be True or False, got 1"),
    # fields defaulting to None that the chosen attention does not read
    (dict(sliding_window=4), r"sliding_window=4 is used only by attention \['sliding', 'compressed'\]; "
                             r"with attention='gqa' leave it None"),
    (dict(attention="mla", sparse_top_k=4), r"sparse_top_k=4 is used only by attention "
                                            r"\['sparse'\]; with attention='mla'"),
    (dict(q_lora_rank=8), r"q_lora_rank=8 is used only by attention \['mla', 'compressed'\]"),
    (dict(attention="sparse", sparse_top_k=4, sliding_window=8), r"sliding_window=8"),
    # DeepSeek-V4's fields
    (dict(hc_mult=0), r"hc_mult must be a positive integer, got 0"),
    (dict(num_hash_layers=1), r"num_hash_layers must be an integer in \[0, number of MoE layers = 0\]"),
    (dict(moe=MoEConfig(router="deepseek_v4"), num_hash_layers=5),
     r"num_hash_layers must be an integer in \[0, number of MoE layers = 4\], got 5"),
    (dict(moe=MoEConfig(), num_hash_layers=1), r"router must be 'deepseek_v3' or 'deepseek_v4'"),
    (dict(num_nextn_predict_layers=2), r"num_nextn_predict_layers must be 0 or 1"),
    (dict(first_k_dense=True), r"first_k_dense must be an integer in \[0, n_layers=4\], got True"),
    # fields of published checkpoints and speed choices
    (dict(qk_norm=1), r"qk_norm must be True or False, got 1"),
    (dict(logits_scaling=0), r"logits_scaling must be a number > 0, got 0"),
    (dict(attention_scale=True), r"attention_scale must be a number > 0, or None, got True"),
    (dict(attention_tiling="yes"), r"attention_tiling must be True or False, got 'yes'"),
])
def test_model_config_errors_name_parameter_value_and_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_experts=4, top_k=5), r"top_k must be <= n_experts \(4\), got top_k=5"),
    (dict(n_experts=8, n_group=4, topk_group=5), r"topk_group must be <= n_group \(4\)"),
    (dict(n_experts=10, n_group=4), r"n_experts \(10\) must be divisible by n_group"),
    (dict(capacity_factor=0.0), r"capacity_factor must be a number > 0"),
    (dict(capacity_factor=-1.0), r"capacity_factor must be a number > 0"),
    (dict(router="topk_magic"), r"router must be one of .*got 'topk_magic'"),
    (dict(dispatch="teleport"), r"dispatch must be one of .*got 'teleport'"),
    (dict(router="switch", top_k=2), r"top_k must be 1"),
    (dict(dispatch="ragged_dot", capacity_factor=1.0), r"dropless"),
    (dict(aux_loss_coef=-0.1), r"aux_loss_coef must be a number >= 0"),
    (dict(capacity_factor=True), r"capacity_factor must be a number > 0, or None, got True"),
    (dict(routed_scaling_factor=True), r"routed_scaling_factor must be a number >= 0, got True"),
    (dict(renormalize=1), r"renormalize must be True or False, or None, got 1"),
    (dict(n_shared_experts=-1), r"n_shared_experts must be an integer >= 0, got -1"),
    # settings that would silently do nothing
    (dict(bias_update_rate=0.01), r"bias_update_rate=0.01 .* router 'softmax' has none"),
    (dict(router="noisy_topk", bias_update_rate=0.01), r"router 'noisy_topk' has none"),
    (dict(d_shared=64), r"d_shared=64 sizes shared experts, but n_shared_experts=0"),
    (dict(router="expert_choice"), r"'expert_choice' needs capacity_factor"),
    (dict(router="expert_choice", capacity_factor=1.0, dispatch="onehot"),
     r"'expert_choice' .* leave dispatch at 'sort', got 'onehot'"),
    (dict(router="expert_choice", capacity_factor=1.0, renormalize=True),
     r"'expert_choice' does not renormalise"),
    (dict(router="expert_choice", capacity_factor=1.0, aux_loss_coef=0.01),
     r"aux_loss_coef=0.01 does nothing under router 'expert_choice'"),
    # a top-1 router whose weight is always 1 never learns from the LM loss
    (dict(top_k=1, renormalize=True), r"renormalize=True with top_k=1"),
    (dict(router="switch", top_k=1, renormalize=True), r"renormalize=True with top_k=1"),
    (dict(router="deepseek_v3", top_k=1, renormalize=True), r"renormalize=True with top_k=1"),
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


def test_attention_fields_table_covers_every_kind_and_real_fields():
    import dataclasses

    from minimoe.config import ATTENTION_FIELDS, ATTENTION_KINDS
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert ATTENTION_KINDS == tuple(ATTENTION_FIELDS)
    for kind, f in ATTENTION_FIELDS.items():
        assert set(f) == {"needs", "uses"}, kind
        assert set(f["needs"] + f["uses"]) <= fields, kind  # no typo'd field name
    # a field a kind uses may be set with it (no false alarm)
    ModelConfig(attention="mla", q_lora_rank=8)
    ModelConfig(attention="sliding", sliding_window=4)


def test_renormalize_default_follows_top_k():
    assert MoEConfig(top_k=2).renormalize_weights is True
    assert MoEConfig(top_k=1).renormalize_weights is False
    assert MoEConfig(top_k=2, renormalize=False).renormalize_weights is False
