"""Tests of minimoe.cost: parameter counts against published figures, KV-cache arithmetic,
config reading and its errors, the roofline serving model and the dollar formulas.

Published figures and where they come from:
- DeepSeek-V3: 671B total / 37B active (README); README_WEIGHTS.md: main model 671B with
  36.7B activated, MTP module 11.5B unique parameters; 685B = 671B + 14B MTP (README).
- Mixtral 8x7B: 46.7B total / 12.9B active (Mistral AI, "Mixtral of experts" post).
- Llama 3.1 405B: 405B dense (Meta model card).
- Qwen3-235B-A22B: 235B total / 22B activated, 234B non-embedding (Qwen model card).
- Qwen1.5-MoE-A2.7B: 14.3B total / 2.7B activated (Qwen blog post).
- GPT-OSS-120B: 116.8B total / 5.1B active (OpenAI gpt-oss model card).
- Kimi K2: 1.04T total / 32B activated (Moonshot model card and report).
"""

import ast
import json
import math
import pathlib

import pytest

from minimoe import cost


def rel(a, b):
    return abs(a - b) / b


@pytest.fixture(scope="module")
def specs():
    return {name: cost.load_spec(name) for name in cost.list_model_configs()}


# ---------------------------------------------------------------------------------------
# Published totals and actives
# ---------------------------------------------------------------------------------------
def test_shipped_configs_are_listed():
    assert set(cost.list_model_configs()) >= {
        "DeepSeek-V3", "Kimi-K2-Instruct", "Llama-3.1-405B", "Meta-Llama-3-8B",
        "Mixtral-8x7B-v0.1", "Qwen1.5-MoE-A2.7B", "Qwen3-235B-A22B", "gpt-oss-120b"}


def test_deepseek_v3(specs):
    s = specs["DeepSeek-V3"]
    assert rel(s.total_params, 671e9) < 0.02
    # Active convention: input embedding out, output head in. DeepSeek's README_WEIGHTS gives
    # 36.7B activated for the main model; the README rounds to 37B. Both are checked.
    assert rel(s.active_params, 37e9) < 0.03
    assert rel(s.active_params, 36.7e9) < 0.03
    # MTP: 11.5B unique parameters (embedding and head shared with the main model).
    assert rel(s.mtp_params, 11.5e9) < 0.02
    # 685B is the checkpoint's size. Main model + MTP gives 682.6B; with the MTP layer's own
    # stored copies of the embedding and head (2 x 0.93B) it gives 684.5B. Either is within
    # 2%; the second convention is the one that rounds to 685B, so it is the one checked.
    assert rel(s.total_params + s.mtp_params + 2 * s.embedding_params, 685e9) < 0.02
    assert (s.n_dense_layers, s.n_moe_layers) == (3, 58)
    assert s.expert_params == 3 * 7168 * 2048
    assert s.attention == "mla"


def test_mixtral(specs):
    s = specs["Mixtral-8x7B-v0.1"]
    assert rel(s.total_params, 46.7e9) < 0.02
    # Mistral's 12.9B active counts the input embedding (12.88B with it, 12.75B without),
    # so the published figure is compared with the embedding-included convention.
    assert rel(s.active_params_with_embedding, 12.9e9) < 0.03


def test_llama_405b(specs):
    s = specs["Llama-3.1-405B"]
    assert rel(s.total_params, 405e9) < 0.02
    assert not s.is_moe
    assert s.active_params == s.total_params - s.embedding_params


def test_qwen3_235b(specs):
    s = specs["Qwen3-235B-A22B"]
    assert rel(s.total_params, 235e9) < 0.02
    # Qwen's card lists non-embedding parameters separately (234B), so its headline 22B
    # activated includes the embedding table: compare that convention.
    assert rel(s.active_params_with_embedding, 22e9) < 0.03
    assert rel(s.non_embedding_params, 234e9) < 0.02


def test_qwen15_moe(specs):
    s = specs["Qwen1.5-MoE-A2.7B"]
    assert rel(s.total_params, 14.3e9) < 0.02
    # Qwen's 2.7B activated includes the embedding table (same convention as Qwen3).
    assert rel(s.active_params_with_embedding, 2.7e9) < 0.03
    assert s.n_shared_experts == 1
    assert s.shared_expert_params == 3 * 2048 * 5632 + 2048   # shared SwiGLU + its d->1 gate


def test_gpt_oss_120b(specs):
    s = specs["gpt-oss-120b"]
    assert rel(s.total_params, 116.8e9) < 0.02
    # OpenAI's 5.1B active counts the unembedding but not the embedding: our convention.
    assert rel(s.active_params, 5.1e9) < 0.03
    assert s.n_windowed_layers == 18


def test_kimi_k2(specs):
    s = specs["Kimi-K2-Instruct"]
    assert rel(s.total_params, 1.04e12) < 0.02
    # Moonshot does not say whether its 32B includes the embedding; our convention
    # (embedding out, head in) gives 31.7B, the other 32.9B.
    assert rel(s.active_params, 32e9) < 0.03
    assert (s.n_dense_layers, s.n_moe_layers) == (1, 60)


def test_llama3_8b(specs):
    assert rel(specs["Meta-Llama-3-8B"].total_params, 8.03e9) < 0.02


# ---------------------------------------------------------------------------------------
# KV cache, exact
# ---------------------------------------------------------------------------------------
def test_kv_bytes_per_token_exact(specs):
    assert specs["DeepSeek-V3"].kv_bytes_per_token() == 61 * (512 + 64) * 2
    assert specs["Kimi-K2-Instruct"].kv_bytes_per_token() == 61 * (512 + 64) * 2
    assert specs["Llama-3.1-405B"].kv_bytes_per_token() == 126 * 2 * 8 * 128 * 2
    assert specs["Mixtral-8x7B-v0.1"].kv_bytes_per_token() == 32 * 2 * 8 * 128 * 2
    assert specs["Qwen3-235B-A22B"].kv_bytes_per_token() == 94 * 2 * 4 * 128 * 2
    assert specs["DeepSeek-V3"].kv_bytes_per_token(bytes_per_value=1) == 61 * (512 + 64)


def test_kv_sliding_window_gpt_oss(specs):
    s = specs["gpt-oss-120b"]
    per_layer = 2 * 8 * 64 * 2                       # K and V, 8 kv heads of 64, 2 bytes
    assert s.kv_bytes_per_token() == 18 * per_layer  # only the 18 full-attention layers grow
    assert s.kv_bytes_per_token(include_windowed=True) == 36 * per_layer
    assert s.kv_bytes(64) == 36 * 64 * per_layer     # below the window every layer holds all
    assert s.kv_bytes(100_000) == 18 * 100_000 * per_layer + 18 * 128 * per_layer
    assert s.kv_bytes(0) == 0


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------
def test_flops_per_token(specs):
    s = specs["Meta-Llama-3-8B"]
    # by hand from the config: 32 x (q, o 4096^2; k, v 4096 x 1024; SwiGLU 3 x 4096 x 14336)
    # plus the untied head 128256 x 4096, each weight one multiply-add
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert s.flops_per_token(0) == 2 * (32 * per_layer + 128256 * 4096)
    assert s.flops_per_token(1000) - s.flops_per_token(0) == 2 * 32 * (128 + 128) * 32 * 1000
    d = specs["DeepSeek-V3"]
    assert d.attention_flops(4096) == 2 * 128 * ((128 + 64) + 128) * 61 * 4096
    g = specs["gpt-oss-120b"]
    assert g.attention_flops(1000) == 2 * 64 * (64 + 64) * (18 * 1000 + 18 * 128)


def test_prefill_flops_is_sum_of_token_flops(specs):
    g = specs["gpt-oss-120b"]
    assert g.prefill_flops(1) == g.flops_per_token(1)
    total = sum(g.flops_per_token(i) for i in range(1, 301))   # crosses the 128 window
    assert g.prefill_flops(300) == pytest.approx(total, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Reading configs: inputs and families
# ---------------------------------------------------------------------------------------
def tiny(model_type="qwen2", **extra):
    cfg = {"model_type": model_type, "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
           "intermediate_size": 16, "vocab_size": 10, "tie_word_embeddings": True}
    cfg.update(extra)
    return cfg


def test_dense_qwen2_hand_count():
    s = cost.from_hf_config(tiny("qwen2"))
    attn = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8      # q, k, v, o
    bias = 8 + 4 + 4                          # Qwen2: q, k, v biases
    ffn = 3 * 8 * 16
    norms = 2 * 8 + 8
    emb = 10 * 8                              # tied: stored once, counted as the head
    assert s.total_params == attn + bias + ffn + norms + emb
    assert s.active_params == s.total_params
    assert s.active_matmul_params == attn + ffn + emb
    assert s.attention == "mqa"                 # one kv head
    assert cost.from_hf_config(tiny("qwen2", num_attention_heads=4, num_key_value_heads=2)
                               ).attention == "gqa"


def test_dense_qwen3_has_qk_norm_and_no_bias():
    s = cost.from_hf_config(tiny("qwen3"))
    attn = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8
    assert s.attention_params == attn + 2 * 4   # q_norm and k_norm over head_dim
    assert cost.from_hf_config(tiny("qwen3", attention_bias=True)).attention_params \
        == attn + 2 * 4 + (8 + 4 + 4 + 8)


def test_untied_head_counts_in_total_and_active():
    tied = cost.from_hf_config(tiny("llama"))
    untied = cost.from_hf_config(tiny("llama", tie_word_embeddings=False))
    assert untied.total_params == tied.total_params + 10 * 8
    assert untied.active_params == tied.active_params   # the lookup is not active
    assert untied.active_params_with_embedding == tied.active_params + 10 * 8


def test_qwen2_moe_layout_shared_expert_and_sparse_step():
    cfg = tiny("qwen2_moe", num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
               moe_intermediate_size=6, shared_expert_intermediate_size=12,
               decoder_sparse_step=2, mlp_only_layers=[])
    s = cost.from_hf_config(cfg)
    assert (s.n_dense_layers, s.n_moe_layers) == (1, 1)     # layer 1 only: (1 + 1) % 2 == 0
    assert s.expert_params == 3 * 8 * 6
    assert s.shared_expert_params == 3 * 8 * 12 + 8
    assert s.router_params == 8 * 4
    dense_layer = 3 * 8 * 16
    assert s.total_params - s.active_params == 2 * s.expert_params   # 2 of 4 experts idle
    assert s.dense_ffn_params == dense_layer
    s2 = cost.from_hf_config(dict(cfg, decoder_sparse_step=1, mlp_only_layers=[0]))
    assert (s2.n_dense_layers, s2.n_moe_layers) == (1, 1)


def test_deepseek_v2_style_mla_without_q_lora():
    cfg = {"model_type": "deepseek_v2", "hidden_size": 16, "num_hidden_layers": 4,
           "num_attention_heads": 2, "q_lora_rank": None, "kv_lora_rank": 6,
           "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 3,
           "intermediate_size": 20, "moe_intermediate_size": 5, "n_routed_experts": 4,
           "n_shared_experts": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
           "moe_layer_freq": 2, "vocab_size": 11, "topk_method": "greedy"}
    s = cost.from_hf_config(cfg)
    attn = (16 * 2 * (4 + 2)          # q_proj
            + 16 * (6 + 2) + 6        # kv_a_proj_with_mqa, kv_a_layernorm
            + 6 * 2 * (4 + 3)         # kv_b_proj
            + 2 * 3 * 16)             # o_proj
    assert s.attention_params == 4 * attn
    assert (s.n_dense_layers, s.n_moe_layers) == (3, 1)     # MoE iff i >= 1 and i % 2 == 0
    assert s.router_params == 16 * 4                        # greedy: no correction bias
    assert s.shared_expert_params == 3 * 16 * (5 * 2)
    assert s.kv_values_per_layer == 6 + 2
    v3 = cost.from_hf_config(dict(cfg, model_type="deepseek_v3", topk_method="noaux_tc"))
    assert v3.router_params == 16 * 4 + 4                   # e_score_correction_bias


def test_gpt_oss_reads_either_top_k_key():
    base = tiny("gpt_oss", num_hidden_layers=2, num_local_experts=4, sliding_window=3)
    a = cost.from_hf_config(dict(base, experts_per_token=2))
    b = cost.from_hf_config(dict(base, num_experts_per_tok=2))
    assert a.total_params == b.total_params and a.n_experts_per_tok == 2
    assert a.layer_windows == (3, None)                     # sliding first, then full
    assert a.expert_params == 3 * 8 * 16 + (2 * 16 + 8)     # gate_up, down and their biases
    with pytest.raises(ValueError, match="disagree"):
        cost.from_hf_config(dict(base, experts_per_token=2, num_experts_per_tok=4))


def test_mistral_window_and_qwen_window_flag():
    m = cost.from_hf_config(tiny("mistral", num_hidden_layers=2, sliding_window=4))
    assert m.layer_windows == (4, 4)
    assert m.kv_bytes(10) == 2 * (2 * 1 * 4) * 4 * 2
    q = cost.from_hf_config(tiny("qwen2", sliding_window=4, use_sliding_window=False))
    assert q.layer_windows == (None,)


def test_accepts_dict_json_string_and_paths(tmp_path):
    cfg = cost.load_model_config("Mixtral-8x7B-v0.1")
    from_dict = cost.from_hf_config(cfg)
    assert cost.from_hf_config(json.dumps(cfg)).total_params == from_dict.total_params
    folder = tmp_path / "Mixtral-8x7B-v0.1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    by_path = cost.from_hf_config(folder / "config.json")
    assert by_path.total_params == from_dict.total_params
    assert by_path.name == "Mixtral-8x7B-v0.1"                # named after its folder
    assert cost.from_hf_config(str(folder / "config.json")).total_params == from_dict.total_params
    assert cost.from_hf_config(folder).name == "Mixtral-8x7B-v0.1"   # the folder itself
    assert cost.from_hf_config(cfg, name="x").name == "x"


def test_unwraps_text_config():
    inner = cost.load_model_config("DeepSeek-V3")
    wrapped = {"model_type": "some_vlm", "_name_or_path": "org/vlm",
               "vision_config": {"hidden_size": 1}, "text_config": inner}
    s = cost.from_hf_config(wrapped)
    assert s.total_params == cost.from_hf_config(inner).total_params
    assert s.name == "org/vlm" and s.family == "deepseek_v3"


def test_clear_errors(tmp_path):
    cfg = cost.load_model_config("Meta-Llama-3-8B")
    with pytest.raises(ValueError, match=r"config.json: missing 'hidden_size'"):
        cost.from_hf_config({k: v for k, v in cfg.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match=r"unsupported model_type 'foo'; supported: \[.*'llama'"):
        cost.from_hf_config(dict(cfg, model_type="foo"))
    with pytest.raises(ValueError, match="missing 'model_type'"):
        cost.from_hf_config({k: v for k, v in cfg.items() if k != "model_type"})
    with pytest.raises(ValueError, match="malformed JSON"):
        cost.from_hf_config('{"model_type": "llama", ')
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        cost.from_hf_config(bad)
    with pytest.raises(ValueError, match="no file at"):
        cost.from_hf_config(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"missing 'kv_lora_rank' \(in 'text_config'\)"):
        inner = {k: v for k, v in cost.load_model_config("DeepSeek-V3").items()
                 if k != "kv_lora_rank"}
        cost.from_hf_config({"model_type": "vlm", "text_config": inner})
    with pytest.raises(ValueError, match="'num_hidden_layers' must be an integer"):
        cost.from_hf_config(dict(cfg, num_hidden_layers="32"))
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        cost.from_hf_config(dict(cfg, num_nextn_predict_layers=1))
    with pytest.raises(ValueError, match="unsupported layer type"):
        cost.from_hf_config(dict(cfg, num_hidden_layers=2, layer_types=["full_attention", "mamba"]))
    with pytest.raises(ValueError, match="no shipped config"):
        cost.load_model_config("GPT-5")


def test_summary_and_table(specs):
    row = specs["DeepSeek-V3"].summary()
    assert row["experts"] == "256 top-8 +1 shared" and row["total_B"] == 671.0
    table = cost.summary_table([specs["DeepSeek-V3"], specs["Llama-3.1-405B"]])
    assert table.splitlines()[0].startswith("name") and "Llama-3.1-405B" in table


def test_no_jax_import():
    """The calculator's own modules import no JAX, NumPy, Flax or pickle."""
    imported = set()
    for path in pathlib.Path(cost.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert imported and not imported & {"jax", "numpy", "flax", "pickle"}


def test_unknown_family_names_model_type_and_lists_the_supported_ones():
    with pytest.raises(ValueError) as err:
        cost.from_hf_config(tiny("falcon_h1"))
    message = str(err.value)
    assert "'falcon_h1'" in message
    for family in ("deepseek_v4", "qwen3_next", "minimax_m2", "glm4_moe", "llama4_text",
                   "olmoe", "ernie4_5_moe", "gpt_oss", "mixtral"):
        assert f"'{family}'" in message


# ---------------------------------------------------------------------------------------
# Serving model
# ---------------------------------------------------------------------------------------
def test_expected_experts_touched():
    assert cost.expected_experts_touched(256, 8, 1) == pytest.approx(8)
    assert cost.expected_experts_touched(256, 8, 0) == 0
    assert cost.expected_experts_touched(256, 8, 100_000) == pytest.approx(256)
    values = [cost.expected_experts_touched(256, 8, b) for b in (1, 2, 4, 16, 64, 256, 1024)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert cost.expected_experts_touched(8, 2, 2) == pytest.approx(8 * (1 - (6 / 8) ** 2))
    with pytest.raises(ValueError):
        cost.expected_experts_touched(8, 9, 1)


def test_decode_grows_with_batch_and_saturates(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    batches = [2 ** i for i in range(21)]
    rates = [cost.decode_tokens_per_s(s, hw, b, 4096, bytes_per_param=1) for b in batches]
    assert all(a < b for a, b in zip(rates, rates[1:]))
    # Large batches level off at the lower of two ceilings: compute (peak / FLOPs per
    # token) and reading each sequence's own KV cache (bandwidth / KV bytes per sequence).
    ceiling = min(cost.peak_flops(hw, 1) / s.flops_per_token(4096),
                  hw.hbm_bandwidth / s.kv_bytes(4096))
    assert rates[-1] <= ceiling * (1 + 1e-9)
    assert rates[-1] > 0.99 * ceiling and rates[-1] / rates[-2] < 1.01
    assert rates[0] < 0.02 * ceiling                           # batch 1 is far below it
    assert cost.decode_step(s, hw, 1, 4096, bytes_per_param=1).bound == "memory"


def test_moe_beats_dense_405b_at_batch_1(specs):
    hw = cost.HARDWARE["H100"]
    moe = cost.decode_tokens_per_s(specs["DeepSeek-V3"], hw, 1, 1024)
    dense = cost.decode_tokens_per_s(specs["Llama-3.1-405B"], hw, 1, 1024)
    assert moe > 5 * dense     # ~37B vs ~404B weights read per token


def test_decode_batch_1_is_bandwidth_over_bytes(specs):
    s, hw = specs["Meta-Llama-3-8B"], cost.HARDWARE["H100"]
    step = cost.decode_step(s, hw, 1, 0)
    assert step.bytes == (s.total_params - s.embedding_params) * 2
    assert cost.decode_tokens_per_s(s, hw, 1, 0) == pytest.approx(3.35e12 / step.bytes)
    two = cost.decode_step_time(s, hw, 1, 0, n_gpus=2)
    assert two == pytest.approx(step.time_s / 2)


def test_prefill_is_compute_bound_and_priced_per_format(specs):
    s, hw = specs["Meta-Llama-3-8B"], cost.HARDWARE["H100"]
    rate = cost.prefill_tokens_per_s(s, hw, 2048)
    assert rate > 100 * cost.decode_tokens_per_s(s, hw, 1, 2048)
    # all-FP8 doubles the rate (H100: 1979 vs 989 TFLOP/s); FP8 matmuls with BF16
    # attention gain less, since attention stays at the BF16 peak
    all_fp8 = cost.prefill_tokens_per_s(s, hw, 2048, bytes_per_param=1)
    assert all_fp8 / rate == pytest.approx(1979 / 989)
    mixed = cost.prefill_tokens_per_s(s, hw, 2048, bytes_per_param=cost.FP8)
    assert rate < mixed < all_fp8


def test_gpus_to_hold(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    assert cost.gpus_to_hold(s, hw, bytes_per_param=1) == math.ceil(s.total_params / 80e9)
    with_kv = cost.gpus_to_hold(s, hw, 1, batch=64, context_len=128_000)
    assert with_kv == math.ceil((s.total_params + 64 * 128_000 * 61 * 576 * 2) / 80e9)


def test_max_batch_is_the_last_batch_that_fits(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    n = cost.max_batch(s, hw, 16, 32_768, bytes_per_param=1)
    assert n > 0

    def used(batch):
        return s.weight_bytes(1) + batch * s.kv_bytes(32_768, 2)

    assert used(n) <= 16 * hw.hbm_bytes < used(n + 1)
    # a smaller cache per token buys a larger batch; weights that do not fit leave none
    assert cost.max_batch(s, hw, 16, 32_768, bytes_per_param=1, bytes_per_value=1) >= 2 * n - 1
    assert cost.max_batch(s, hw, 1, 32_768, bytes_per_param=1) == 0
    with pytest.raises(ValueError, match="n_gpus"):
        cost.max_batch(s, hw, 0, 32_768)


@pytest.mark.parametrize("name", ["DeepSeek-V3", "Meta-Llama-3-8B"])
def test_compute_bound_batch_is_where_the_roofline_crosses(specs, name):
    s, hw = specs[name], cost.HARDWARE["H100"]

    def bound(batch):
        return cost.decode_step(s, hw, batch, 128).bound

    b = cost.compute_bound_batch(s, hw, 128)
    assert b is not None and bound(b) == "compute" and bound(b - 1) == "memory"
    # an MoE must batch far more tokens before its weight reads are amortised
    if name == "DeepSeek-V3":
        assert b > 2 * cost.compute_bound_batch(specs["Meta-Llama-3-8B"], hw, 128)
    # at a context whose KV read per token outlasts its compute, no batch is big enough
    assert cost.compute_bound_batch(s, hw, 10_000_000) is None


def test_dollars_per_million_tokens_hand_example():
    # $2/GPU-hour at 1000 tokens/s: 3.6M tokens an hour, so $2 / 3.6 = $0.5556 per million.
    assert cost.dollars_per_million_tokens(1000, 2.0) == pytest.approx(2.0 / 3.6)
    assert cost.dollars_per_million_tokens(1000, 2.0, utilisation=0.5) == pytest.approx(4.0 / 3.6)


def test_deepseek_serving_day():
    day = cost.DEEPSEEK_SERVING_DAY
    assert "open-infra-index" in day.source
    out = cost.serving_day_costs(day)
    assert out["cost_per_day_computed"] == pytest.approx(87_072)   # 226.75 x 8 x 24 x $2
    assert out["dollars_per_million_tokens"] == pytest.approx(87_072 / 776e9 * 1e6)
    assert out["decode_dollars_per_million_output"] == pytest.approx(16 / (3600 * 14.8e3) * 1e6)
    # The per-node rates account for the nodes in service to within 1%.
    assert rel(out["implied_nodes"], 226.75) < 0.01


def test_published_data_carries_sources():
    for key, hw in cost.HARDWARE.items():
        assert hw.source
        assert hw.third_party == key.startswith("Ascend")
        if hw.third_party:
            assert "third-party" in hw.source
    assert cost.HARDWARE["H800"].bf16_flops == cost.HARDWARE["H100"].bf16_flops
    with pytest.raises(TypeError):
        cost.HARDWARE["X"] = cost.HARDWARE["H100"]              # read-only table
    v4 = cost.DEEPSEEK_V4_PUBLISHED["DeepSeek-V4-Pro"]
    assert (v4.total_params, v4.active_params, v4.context_len) == (1.6e12, 49e9, 1_048_576)
    assert "published" in v4.note and "V4 technical report" in v4.source


# ---------------------------------------------------------------------------------------
# Precision per component
# ---------------------------------------------------------------------------------------
def test_fp4_peak_only_where_the_hardware_has_it():
    h800, b200 = cost.HARDWARE["H800"], cost.HARDWARE["B200"]
    assert h800.fp4_flops is None and cost.format_flops(h800, "fp4") == h800.fp8_flops
    assert cost.format_flops(b200, "fp4") == b200.fp4_flops == 2 * b200.fp8_flops
    ascend = cost.HARDWARE["Ascend-910B"]
    assert cost.format_flops(ascend, "fp8") == ascend.bf16_flops      # no FP8 path: BF16
    with pytest.raises(ValueError, match="fmt"):
        cost.format_flops(h800, "int4")
    with pytest.raises(ValueError, match="routed_compute"):
        cost.Precision(routed_compute="fp6")
    with pytest.raises(ValueError, match="kv_cache"):
        cost.Precision(kv_cache=0)


def test_fp4_experts_save_bytes_everywhere_and_time_only_on_blackwell():
    s = cost.load_spec("DeepSeek-V4-Pro")
    fp8_all = cost.Precision(1.0, 1.0, 2.0, "fp8", "fp8", "bf16")
    for name in ("H800", "B200"):
        hw = cost.HARDWARE[name]
        a = cost.decode_step(s, hw, 4096, 8192, bytes_per_param=fp8_all)
        b = cost.decode_step(s, hw, 4096, 8192, bytes_per_param=cost.FP4_EXPERTS)
        assert b.weight_bytes < a.weight_bytes and b.kv_bytes == a.kv_bytes
        if name == "H800":
            assert b.compute_s == a.compute_s                 # FP4 widened to FP8: no gain
        else:
            assert b.compute_s < a.compute_s


def test_fp4_expert_bytes_are_the_checkpoint_bytes():
    from test_cost_families import v4_checkpoint_tensors

    c = cost.load_model_config("DeepSeek-V4-Pro")
    tensors = v4_checkpoint_tensors(c)
    # the checkpoint stores each expert weight as half a byte plus one byte per 32 (e8m0)
    experts = [shape for n, shape in tensors.items()
               if ".experts." in n and not n.startswith("mtp.")]
    stored = sum(rows * cols // 2 + rows * (cols // 32) for rows, cols in experts)
    s = cost.load_spec("DeepSeek-V4-Pro")
    assert s.routed_expert_params * cost.FP4_EXPERTS.routed_experts == stored


# ---------------------------------------------------------------------------------------
# A serving unit: data-parallel attention, spread experts, all-to-all
# ---------------------------------------------------------------------------------------
def test_deployment_reads_one_copy_of_attention_per_gpu_and_its_share_of_experts(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    unit = cost.Deployment(n_gpus=32, gpus_per_node=8, routed_slots_per_gpu=8)  # 256 / 32
    step = cost.deployment_step(s, hw, unit, 10, 1, 4096, cost.FP8, 0.0, absorbed=True)
    # every expert hosted exactly once: the unit holds all routed weights between its GPUs
    routed_per_gpu = step.weight_bytes - s.always_read_params * 1.0
    assert unit.n_gpus * routed_per_gpu == s.routed_expert_params * 1.0
    assert step.comm_s == 0 and step.serial_s == step.overlapped_s


def test_deployment_communication_links(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    one_node = cost.Deployment(8, 8, 32)
    two_nodes = cost.Deployment(16, 8, 16)
    a = cost.deployment_step(s, hw, one_node, 10, 1, 1000, cost.FP8, 1e5, absorbed=True)
    b = cost.deployment_step(s, hw, two_nodes, 10, 1, 1000, cost.FP8, 1e5, absorbed=True)
    sent = 10 * s.n_moe_layers * 1e5
    assert a.comm_s == pytest.approx(sent / hw.nvlink_effective)     # all inside the node
    # two nodes: 7 of the 15 other GPUs share the node; the other 8 are over InfiniBand
    assert b.comm_s == pytest.approx(max(sent * 7 / 15 / hw.nvlink_effective,
                                         sent * 8 / 15 / hw.scaleout_bandwidth))
    assert b.serial_s >= b.overlapped_s >= max(b.compute_s, b.memory_s, b.comm_s) - 1e-15
    double = cost.deployment_step(s, hw, two_nodes, 10, 2, 1000, cost.FP8, 1e5, absorbed=True)
    assert double.comm_s == pytest.approx(2 * b.comm_s) and double.memory_s == b.memory_s
    with pytest.raises(ValueError, match="gpus_per_node"):
        cost.Deployment(12, 8, 2)


def test_deployment_max_sequences_fill_the_gpu(specs):
    s, hw = specs["DeepSeek-V3"], cost.HARDWARE["H800"]
    unit = cost.Deployment(144, 8, 2)
    n = cost.deployment_max_sequences(s, hw, unit, 4989, cost.FP8)
    used = lambda k: cost.deployment_step(s, hw, unit, k, 1, 4989, cost.FP8, 0.0,   # noqa: E731
                                          True).hbm_bytes_used
    assert n > 0 and used(n) <= hw.hbm_bytes < used(n + 1)


def test_absorbed_mla_reads_the_latent(specs):
    s = specs["DeepSeek-V3"]
    # per head and cached token: scores over kv_lora + rope values, outputs over kv_lora
    assert s.attention_flops(4096, absorbed=True) == 2 * 128 * ((512 + 64) + 512) * 61 * 4096
    assert s.attention_flops(4096, absorbed=True) > s.attention_flops(4096)


# ---------------------------------------------------------------------------------------
# Dated prices
# ---------------------------------------------------------------------------------------
def test_price_table_is_dated_and_sourced():
    rows = cost.price_table()
    assert {r.model for r in rows} >= {"DeepSeek-V4-Pro", "DeepSeek-V4-Flash", "Claude Opus 4.6",
                                       "Claude Sonnet 4.6", "GPT-5.5"}
    for r in rows:
        assert r.source and r.source_kind in ("vendor", "third-party")
        assert 0 < r.input_cache_hit < r.input_cache_miss < r.output
        assert r.end is None or r.start < r.end
    launch = cost.price_on("DeepSeek-V4-Pro", "2026-04-24")
    later = cost.price_on("DeepSeek-V4-Pro", "2026-06-01")
    assert (launch.input_cache_miss, launch.output) == (1.74, 3.48)
    assert (later.input_cache_miss, later.output) == (0.435, 0.87)
    assert later.period.startswith("regular")
    for rival in ("Claude Opus 4.6", "Claude Sonnet 4.6", "GPT-5.5"):
        assert cost.price_on(rival, "2026-04-24") is cost.price_on(rival, "2026-06-01") or \
            cost.price_on(rival, "2026-04-24") == cost.price_on(rival, "2026-06-01")
    with pytest.raises(ValueError, match="no published price for model 'GPT-6'"):
        cost.price_on("GPT-6", "2026-06-01")
    with pytest.raises(ValueError, match="in force on 2026-01-01"):
        cost.price_on("DeepSeek-V4-Pro", "2026-01-01")


def test_percent_cheaper():
    assert cost.percent_cheaper(0.87, 25.0) == pytest.approx(96.52)
    assert cost.percent_cheaper(3.48, 3.0) < 0                      # dearer: negative
    with pytest.raises(ValueError):
        cost.percent_cheaper(1.0, 0.0)
