"""Exact parameter counts of the families minimoe.cost reads, derived independently.

Each test builds the model's tensor list the way its implementation names and shapes its
weights (Hugging Face ``state_dict`` names; for DeepSeek-V4 the released checkpoint's
names), sums it, and compares with what ``cost.from_hf_config`` counts by components. The
V4 tensor lists are themselves checked against the published checkpoint listings (number of
tensors and of stored elements, FP4 experts packed two per byte, block scales included), so
the test data is not a re-typed copy of the calculator's formula.
"""

import math

import pytest

from minimoe import cost
from minimoe.long_context.kv_cache import compressed_kv_values_per_token


def numel(tensors, keep=lambda name: True):
    return sum(math.prod(shape) for name, shape in tensors.items() if keep(name))


# ---------------------------------------------------------------------------------------
# DeepSeek-V4: the checkpoint's tensors
# ---------------------------------------------------------------------------------------
def v4_checkpoint_tensors(c):
    """Name -> shape of every tensor of a DeepSeek-V4 checkpoint, written from the layout of
    the released files (``layers.{i}.attn.wq_a.weight``, ...), without the scale tensors."""
    d, L, H, hd = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["head_dim"]
    ql, og, ol = c["q_lora_rank"], c["o_groups"], c["o_lora_rank"]
    E, f, V, n = c["n_routed_experts"], c["moe_intermediate_size"], c["vocab_size"], c["hc_mult"]
    ih, idim, k = c["index_n_heads"], c["index_head_dim"], c["num_experts_per_tok"]
    t = {"embed.weight": (V, d), "head.weight": (V, d), "norm.weight": (d,),
         "hc_head_fn": (n, n * d), "hc_head_base": (n,), "hc_head_scale": (1,)}

    def block(p, ratio, hashed):
        a = p + "attn."
        t.update({a + "wq_a.weight": (ql, d), a + "q_norm.weight": (ql,),
                  a + "wq_b.weight": (H * hd, ql), a + "wkv.weight": (hd, d),
                  a + "kv_norm.weight": (hd,), a + "wo_a.weight": (og * ol, H * hd // og),
                  a + "wo_b.weight": (d, og * ol), a + "attn_sink": (H,)})
        if ratio:
            width = (2 if ratio == 4 else 1) * hd
            t.update({a + "compressor.ape": (ratio, width),
                      a + "compressor.wkv.weight": (width, d),
                      a + "compressor.wgate.weight": (width, d),
                      a + "compressor.norm.weight": (hd,)})
        if ratio == 4:
            x = a + "indexer."
            t.update({x + "wq_b.weight": (ih * idim, ql), x + "weights_proj.weight": (ih, d),
                      x + "compressor.ape": (ratio, 2 * idim),
                      x + "compressor.wkv.weight": (2 * idim, d),
                      x + "compressor.wgate.weight": (2 * idim, d),
                      x + "compressor.norm.weight": (idim,)})
        t.update({p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,),
                  p + "ffn.gate.weight": (E, d)})
        if hashed:
            t[p + "ffn.gate.tid2eid"] = (V, k)
        else:
            t[p + "ffn.gate.bias"] = (E,)
        for e in range(E):
            for w, shape in (("w1", (f, d)), ("w2", (d, f)), ("w3", (f, d))):
                t[f"{p}ffn.experts.{e}.{w}.weight"] = shape
        for w, shape in (("w1", (f, d)), ("w2", (d, f)), ("w3", (f, d))):
            t[f"{p}ffn.shared_experts.{w}.weight"] = shape
        for s in ("attn", "ffn"):
            t.update({f"{p}hc_{s}_fn": ((2 + n) * n, n * d), f"{p}hc_{s}_base": ((2 + n) * n,),
                      f"{p}hc_{s}_scale": (3,)})

    ratios = c["compress_ratios"]
    for i in range(L):
        block(f"layers.{i}.", ratios[i], i < c["num_hash_layers"])
    for j in range(c["num_nextn_predict_layers"]):
        p = f"mtp.{j}."
        block(p, ratios[L + j], False)
        t.update({p + "e_proj.weight": (d, d), p + "h_proj.weight": (d, d),
                  p + "enorm.weight": (d,), p + "hnorm.weight": (d,), p + "norm.weight": (d,),
                  p + "hc_head_fn": (n, n * d), p + "hc_head_base": (n,),
                  p + "hc_head_scale": (1,)})
    return t


_FP8 = ("attn.wq_a.", "attn.wq_b.", "attn.wkv.", "attn.wo_a.", "attn.wo_b.", "indexer.wq_b.",
        "shared_experts.", "e_proj.", "h_proj.")


def stored_elements(tensors):
    """(tensors, elements) as the checkpoint stores them: FP4 experts as int8 pairs with one
    e8m0 scale per 32 inputs, FP8 matrices with one scale per 128 x 128 block."""
    count = elements = 0
    for name, shape in tensors.items():
        if ".experts." in name:
            rows, cols = shape
            elements += rows * cols // 2 + rows * (cols // 32)
            count += 2
        elif any(key in name for key in _FP8) and "compressor" not in name:
            rows, cols = shape
            elements += rows * cols + math.ceil(rows / 128) * math.ceil(cols / 128)
            count += 2
        else:
            elements += math.prod(shape)
            count += 1
    return count, elements


# Published listings of the released checkpoints (number of tensors, stored elements).
V4_CHECKPOINTS = {"DeepSeek-V4-Pro": (145_116, 861_608_274_846),
                  "DeepSeek-V4-Flash": (69_187, 158_069_433_298)}


@pytest.mark.parametrize("name", sorted(V4_CHECKPOINTS))
def test_v4_counts_equal_the_checkpoint_tensors(name):
    c = cost.load_model_config(name)
    tensors = v4_checkpoint_tensors(c)
    assert stored_elements(tensors) == V4_CHECKPOINTS[name]        # the test data is right
    s = cost.load_spec(name)
    main = lambda n: not n.startswith("mtp.") and "tid2eid" not in n   # noqa: E731
    assert s.total_params == numel(tensors, main)
    assert s.mtp_params == numel(tensors, lambda n: n.startswith("mtp."))
    assert s.hash_table_entries == numel(tensors, lambda n: "tid2eid" in n)
    experts = numel(tensors, lambda n: main(n) and ".experts." in n)
    k, E = c["num_experts_per_tok"], c["n_routed_experts"]
    assert s.routed_expert_params == experts
    assert s.active_params == (numel(tensors, main) - experts + experts * k // E
                               - numel(tensors, lambda n: n == "embed.weight"))
    assert s.residual_params == numel(tensors, lambda n: main(n) and "hc_" in n)
    assert s.n_hash_layers == 3 and s.n_moe_layers == c["num_hidden_layers"]


def test_v4_headline_sizes_and_conventions():
    pro, flash = cost.load_spec("DeepSeek-V4-Pro"), cost.load_spec("DeepSeek-V4-Flash")
    assert pro.total_params == 1_572_997_201_763        # "1.6T" (MTP excluded)
    assert pro.active_params == 48_852_402_019          # "49B" (input embedding excluded)
    assert flash.total_params == 284_332_240_471        # "284B"
    assert flash.active_params == 13_270_101_591        # "13B"
    # rounded to the digits DeepSeek publishes, the counts are the published figures
    published = cost.DEEPSEEK_V4_PUBLISHED
    assert round(pro.total_params, -11) == published["DeepSeek-V4-Pro"].total_params
    assert round(flash.total_params, -9) == published["DeepSeek-V4-Flash"].total_params
    for s in (pro, flash):
        assert round(s.active_params, -9) == published[s.name].active_params


def test_v4_layer_schedule_and_kv_cache():
    pro, flash = cost.load_spec("DeepSeek-V4-Pro"), cost.load_spec("DeepSeek-V4-Flash")
    kinds = ("csa", "hca", "window")
    assert tuple(pro.count_layers(k) for k in kinds) == (30, 31, 0)
    assert tuple(flash.count_layers(k) for k in kinds) == (21, 20, 2)
    assert pro.attention == "v4" and pro.n_kv_heads == 1 and pro.kv_values_per_layer == 512
    # long-context slope in BF16: CSA (512 + 128) x 2 / 4 = 320 B, HCA 512 x 2 / 128 = 8 B
    assert pro.kv_bytes_per_token() == 30 * 320 + 31 * 8 == 9_848
    assert flash.kv_bytes_per_token() == 21 * 320 + 20 * 8 == 6_880
    assert pro.kv_bytes_per_token() * 2 ** 20 / 2 ** 30 == 9.6171875         # vLLM's 9.62 GiB
    # the fixed part: every layer's window of 128 raw K=V entries of 512 values
    assert pro.kv_fixed_bytes() == 61 * 128 * 512 * 2
    assert pro.kv_bytes(128) == pro.kv_fixed_bytes() + 128 * pro.kv_bytes_per_token()


def test_compressed_kv_values_per_token_hand_values():
    assert compressed_kv_values_per_token(0, 512, 128, False) == 0
    assert compressed_kv_values_per_token(4, 512, 128, True) == 160
    assert compressed_kv_values_per_token(128, 512, 128, False) == 4
    assert compressed_kv_values_per_token(128, 512, 128, True) == 5


TINY_V4 = {"model_type": "deepseek_v4", "hidden_size": 16, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
           "qk_rope_head_dim": 2, "q_lora_rank": 6, "o_groups": 2, "o_lora_rank": 5,
           "sliding_window": 8, "index_n_heads": 2, "index_head_dim": 4, "index_topk": 3,
           "compress_ratios": [0, 4, 16, 4, 0], "n_routed_experts": 4, "n_shared_experts": 1,
           "num_experts_per_tok": 2, "moe_intermediate_size": 3, "num_hash_layers": 1,
           "hc_mult": 2, "vocab_size": 11, "num_nextn_predict_layers": 1,
           "topk_method": "noaux_tc"}


def test_tiny_v4_counts_and_flops():
    tensors = v4_checkpoint_tensors(TINY_V4)
    s = cost.from_hf_config(TINY_V4)
    main = lambda n: not n.startswith("mtp.") and "tid2eid" not in n   # noqa: E731
    assert s.total_params == numel(tensors, main)
    assert s.mtp_params == numel(tensors, lambda n: n.startswith("mtp."))
    # the closed-form prefill equals the sum of per-token FLOPs across the window, the
    # compressed-entry count and CSA's top-k limit (4 x 3 = 12 tokens)
    total = sum(s.flops_per_token(i) for i in range(1, 41))
    assert s.prefill_flops(40) == pytest.approx(total, rel=1e-12)
    # past top-k, a CSA layer reads topk compressed entries plus the window
    csa = s.layers_attention[1]
    assert csa.keys(1000) == 8 + 3 and s.layers_attention[2].keys(1000) == 8 + 1000 / 16


def test_v4_config_errors():
    with pytest.raises(ValueError, match="'compress_ratios' has 4 entries; expected"):
        cost.from_hf_config(dict(TINY_V4, compress_ratios=[0, 4, 16, 4]))
    with pytest.raises(ValueError, match="'num_key_value_heads' must be 1"):
        cost.from_hf_config(dict(TINY_V4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="'o_groups'"):
        cost.from_hf_config(dict(TINY_V4, o_groups=3))
    with pytest.raises(ValueError, match=r"'compress_ratios\[1\]' must be an integer"):
        cost.from_hf_config(dict(TINY_V4, compress_ratios=[0, 4.5, 16, 4, 0]))


# ---------------------------------------------------------------------------------------
# Hugging Face families: state_dict shapes written from each modeling_*.py
# ---------------------------------------------------------------------------------------
def linear(t, name, out_f, in_f, bias=False):
    t[name + ".weight"] = (out_f, in_f)
    if bias:
        t[name + ".bias"] = (out_f,)


def swiglu(t, p, d, f, bias=False):
    linear(t, p + ".gate_proj", f, d, bias)
    linear(t, p + ".up_proj", f, d, bias)
    linear(t, p + ".down_proj", d, f, bias)


def packed_experts(t, p, E, d, f):
    t[p + ".gate_up_proj"] = (E, 2 * f, d)
    t[p + ".down_proj"] = (E, d, f)


def check(config, tensors, top_k, n_experts, expert_keys=(".experts.",)):
    """The spec's total and active against the tensor list (active: embedding out, the
    unpicked share of every routed-expert tensor out)."""
    s = cost.from_hf_config(config)
    total = numel(tensors)
    experts = numel(tensors, lambda n: any(k in n for k in expert_keys))
    embed = numel(tensors, lambda n: n == "model.embed_tokens.weight")
    assert s.total_params == total
    assert s.active_params == total - embed - experts + experts * top_k // n_experts
    return s


def test_olmoe():
    d, H, KV, hd, E, f, V, L = 16, 4, 2, 4, 4, 6, 10, 2
    cfg = {"model_type": "olmoe", "hidden_size": d, "num_attention_heads": H,
           "num_key_value_heads": KV, "num_hidden_layers": L, "num_experts": E,
           "num_experts_per_tok": 2, "intermediate_size": f, "vocab_size": V}
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd)
        t[f"{p}.self_attn.q_norm.weight"] = (d,)               # over all of q
        t[f"{p}.self_attn.k_norm.weight"] = (KV * d // H,)     # over all of k
        linear(t, f"{p}.mlp.gate", E, d)
        packed_experts(t, f"{p}.mlp.experts", E, d, f)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(cfg, t, 2, E)
    assert s.kv_bytes_per_token() == L * 2 * KV * hd * 2


def test_minimax_m2():
    d, H, KV, hd, E, f, V, L = 12, 4, 2, 5, 8, 6, 10, 3
    cfg = {"model_type": "minimax_m2", "hidden_size": d, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "num_hidden_layers": L,
           "num_local_experts": E, "num_experts_per_tok": 2, "intermediate_size": f,
           "vocab_size": V, "use_mtp": True, "num_mtp_modules": 3}
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd)
        t[f"{p}.self_attn.q_norm.weight"] = (H * hd,)
        t[f"{p}.self_attn.k_norm.weight"] = (KV * hd,)
        linear(t, f"{p}.mlp.gate", E, d)
        t[f"{p}.mlp.e_score_correction_bias"] = (E,)
        packed_experts(t, f"{p}.mlp.experts", E, d, f)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(cfg, t, 2, E)
    assert any("num_mtp_modules" in note for note in s.notes)   # said, not silently dropped


def test_glm4_moe_with_dense_layers_and_mtp():
    d, H, KV, hd, E, f, I, V, L = 16, 4, 2, 6, 4, 3, 20, 10, 3
    cfg = {"model_type": "glm4_moe", "hidden_size": d, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "num_hidden_layers": L,
           "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": 2,
           "moe_intermediate_size": f, "intermediate_size": I, "first_k_dense_replace": 1,
           "attention_bias": True, "use_qk_norm": True, "vocab_size": V,
           "num_nextn_predict_layers": 1}

    def layer(t, p, moe):
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d, bias=True)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd)           # never a bias
        t[f"{p}.self_attn.q_norm.weight"] = (hd,)
        t[f"{p}.self_attn.k_norm.weight"] = (hd,)
        if moe:
            t[f"{p}.mlp.gate.weight"] = (E, d)
            t[f"{p}.mlp.gate.e_score_correction_bias"] = (E,)
            packed_experts(t, f"{p}.mlp.experts", E, d, f)
            swiglu(t, f"{p}.mlp.shared_experts", d, f)
        else:
            swiglu(t, f"{p}.mlp", d, I)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)

    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        layer(t, f"model.layers.{i}", i >= 1)
    mtp = {}
    layer(mtp, f"model.layers.{L}", True)
    mtp.update({f"model.layers.{L}.enorm.weight": (d,), f"model.layers.{L}.hnorm.weight": (d,),
                f"model.layers.{L}.eh_proj.weight": (d, 2 * d),
                f"model.layers.{L}.shared_head.norm.weight": (d,)})
    s = check(cfg, t, 2, E)
    assert (s.n_dense_layers, s.n_moe_layers) == (1, 2)
    assert s.mtp_params == numel(mtp)


def test_qwen3_next_hybrid_layers_and_state():
    d, H, KV, hd, E, f, S, V, L = 16, 4, 2, 8, 4, 3, 5, 10, 4
    nk, nv, dk, dv, K = 2, 4, 3, 2, 4
    cfg = {"model_type": "qwen3_next", "hidden_size": d, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "num_hidden_layers": L,
           "num_experts": E, "num_experts_per_tok": 2, "moe_intermediate_size": f,
           "shared_expert_intermediate_size": S, "decoder_sparse_step": 1,
           "full_attention_interval": 2, "linear_num_key_heads": nk,
           "linear_num_value_heads": nv, "linear_key_head_dim": dk,
           "linear_value_head_dim": dv, "linear_conv_kernel_dim": K, "vocab_size": V,
           "intermediate_size": 7}
    conv_dim = 2 * nk * dk + nv * dv
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        p = f"model.layers.{i}"
        if (i + 1) % 2 == 0:                                     # full attention, gated q
            linear(t, f"{p}.self_attn.q_proj", 2 * H * hd, d)
            linear(t, f"{p}.self_attn.k_proj", KV * hd, d)
            linear(t, f"{p}.self_attn.v_proj", KV * hd, d)
            linear(t, f"{p}.self_attn.o_proj", d, H * hd)
            t[f"{p}.self_attn.q_norm.weight"] = (hd,)
            t[f"{p}.self_attn.k_norm.weight"] = (hd,)
        else:                                                    # Gated DeltaNet
            a = f"{p}.linear_attn"
            t[f"{a}.conv1d.weight"] = (conv_dim, 1, K)
            linear(t, f"{a}.in_proj_qkvz", 2 * nk * dk + 2 * nv * dv, d)
            linear(t, f"{a}.in_proj_ba", 2 * nv, d)
            t[f"{a}.dt_bias"] = (nv,)
            t[f"{a}.A_log"] = (nv,)
            t[f"{a}.norm.weight"] = (dv,)
            linear(t, f"{a}.out_proj", d, nv * dv)
        linear(t, f"{p}.mlp.gate", E, d)
        packed_experts(t, f"{p}.mlp.experts", E, d, f)
        swiglu(t, f"{p}.mlp.shared_expert", d, S)
        linear(t, f"{p}.mlp.shared_expert_gate", 1, d)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(cfg, t, 2, E)
    assert s.attention == "hybrid" and s.count_layers("linear") == 2
    # only the 2 full layers grow; each linear layer holds a fixed state per sequence
    assert s.kv_bytes_per_token() == 2 * 2 * KV * hd * 2
    state = nv * dk * dv + conv_dim * K
    assert s.kv_fixed_bytes() == 2 * state * 2
    assert s.kv_bytes(1000) == 2 * 1000 * 2 * KV * hd * 2 + 2 * state * 2


def test_llama4_through_its_multimodal_wrapper():
    d, H, KV, hd, E, f, Imlp, V, L = 16, 4, 2, 4, 4, 6, 20, 10, 4
    text = {"model_type": "llama4_text", "hidden_size": d, "num_attention_heads": H,
            "num_key_value_heads": KV, "head_dim": hd, "num_hidden_layers": L,
            "num_local_experts": E, "num_experts_per_tok": 1, "intermediate_size": f,
            "intermediate_size_mlp": Imlp, "interleave_moe_layer_step": 2,
            "attention_chunk_size": 32, "vocab_size": V, "use_qk_norm": True}
    cfg = {"model_type": "llama4", "text_config": text, "vision_config": {"hidden_size": 8}}
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd)            # L2 q/k norm: no weights
        if i % 2 == 1:                                           # layers 1, 3 are MoE
            linear(t, f"{p}.feed_forward.router", E, d)
            t[f"{p}.feed_forward.experts.gate_up_proj"] = (E, d, 2 * f)
            t[f"{p}.feed_forward.experts.down_proj"] = (E, f, d)
            swiglu(t, f"{p}.feed_forward.shared_expert", d, f)
        else:
            swiglu(t, f"{p}.feed_forward", d, Imlp)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(cfg, t, 1, E)
    assert s.family == "llama4_text" and (s.n_moe_layers, s.n_dense_layers) == (2, 2)
    # every 4th layer is NoPE with full attention; the others chunked (window 32)
    assert s.layer_windows == (32, 32, 32, None)
    with pytest.raises(ValueError, match="text_config"):
        cost.from_hf_config({"model_type": "llama4", "hidden_size": 8})


def test_ernie4_5_moe_biases_and_layer_range():
    d, H, KV, hd, E, f, I, V, L = 16, 4, 2, 4, 4, 3, 20, 10, 5
    cfg = {"model_type": "ernie4_5_moe", "hidden_size": d, "num_attention_heads": H,
           "num_key_value_heads": KV, "num_hidden_layers": L, "moe_num_experts": E,
           "moe_k": 2, "moe_intermediate_size": f, "moe_num_shared_experts": 1,
           "intermediate_size": I, "moe_layer_start_index": 1, "moe_layer_end_index": 3,
           "moe_layer_interval": 1, "use_bias": True, "vocab_size": V,
           "tie_word_embeddings": False}
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    linear(t, "lm_head", V, d, bias=True)
    for i in range(L):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d, bias=True)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd, bias=True)
        if 1 <= i <= 3:
            linear(t, f"{p}.mlp.gate", E, d)
            t[f"{p}.mlp.moe_statics.e_score_correction_bias"] = (1, E)
            for e in range(E):
                swiglu(t, f"{p}.mlp.experts.{e}", d, f, bias=True)
            swiglu(t, f"{p}.mlp.shared_experts", d, f, bias=True)
        else:
            swiglu(t, f"{p}.mlp", d, I, bias=True)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(cfg, t, 2, E)
    assert (s.n_dense_layers, s.n_moe_layers) == (2, 3)
    s_all = cost.from_hf_config(dict(cfg, moe_layer_end_index=-1))   # -1: up to the last layer
    assert s_all.n_moe_layers == 4


# ---------------------------------------------------------------------------------------
# Shipped configs of the older families, against their Hugging Face state_dict shapes
# ---------------------------------------------------------------------------------------
def test_deepseek_v3_shipped_config_exact():
    c = cost.load_model_config("DeepSeek-V3")
    d, H, V, L = c["hidden_size"], c["num_attention_heads"], c["vocab_size"], c["num_hidden_layers"]
    ql, kvl = c["q_lora_rank"], c["kv_lora_rank"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    E, f, I = c["n_routed_experts"], c["moe_intermediate_size"], c["intermediate_size"]

    def layer(t, p, moe):
        a = p + ".self_attn"
        linear(t, a + ".q_a_proj", ql, d)
        t[a + ".q_a_layernorm.weight"] = (ql,)
        linear(t, a + ".q_b_proj", H * (nope + rope), ql)
        linear(t, a + ".kv_a_proj_with_mqa", kvl + rope, d)
        t[a + ".kv_a_layernorm.weight"] = (kvl,)
        linear(t, a + ".kv_b_proj", H * (nope + vd), kvl)
        linear(t, a + ".o_proj", d, H * vd)
        if moe:
            t[p + ".mlp.gate.weight"] = (E, d)
            t[p + ".mlp.gate.e_score_correction_bias"] = (E,)
            for e in range(E):
                swiglu(t, f"{p}.mlp.experts.{e}", d, f)
            swiglu(t, p + ".mlp.shared_experts", d, f * c["n_shared_experts"])
        else:
            swiglu(t, p + ".mlp", d, I)
        t[p + ".input_layernorm.weight"] = (d,)
        t[p + ".post_attention_layernorm.weight"] = (d,)

    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        layer(t, f"model.layers.{i}", i >= c["first_k_dense_replace"])
    mtp = {}
    layer(mtp, f"model.layers.{L}", True)
    for name, shape in (("enorm", (d,)), ("hnorm", (d,)), ("eh_proj", (d, 2 * d)),
                        ("shared_head.norm", (d,))):
        mtp[f"model.layers.{L}.{name}.weight"] = shape
    s = check(c, t, c["num_experts_per_tok"], E)
    assert s.total_params == 671_026_419_200 and s.mtp_params == numel(mtp)

    # DeepSeek-V3.2: the same model plus a lightning indexer in every layer (and in the MTP
    # layer); every token also caches one indexer key
    ih, idim = 64, 128
    v32 = dict(c, model_type="deepseek_v32", index_n_heads=ih, index_head_dim=idim,
               index_topk=2048)
    for tensors in (t, mtp):
        for p in {n.split(".self_attn.")[0] for n in tensors if ".self_attn." in n}:
            x = p + ".self_attn.indexer"
            linear(tensors, x + ".wq_b", ih * idim, ql)
            linear(tensors, x + ".wk", idim, d)
            tensors[x + ".k_norm.weight"] = (idim,)
            tensors[x + ".k_norm.bias"] = (idim,)
            linear(tensors, x + ".weights_proj", ih, d)
    s32 = check(v32, t, c["num_experts_per_tok"], E)
    assert s32.mtp_params == numel(mtp)
    assert s32.kv_bytes_per_token() == 61 * (512 + 64 + 128) * 2 == 85_888
    # a query reads at most index_topk entries; the indexer scores every one
    assert s32.attention_flops(100_000) < s.attention_flops(100_000)
    assert s32.prefill_flops(3000) == pytest.approx(sum(s32.flops_per_token(i)
                                                        for i in range(1, 3001)), rel=1e-12)


def test_gpt_oss_shipped_config_exact():
    c = cost.load_model_config("gpt-oss-120b")
    d, H, KV, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E, f, V, L = c["num_local_experts"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    t = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(L):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            linear(t, f"{p}.self_attn.{name}", out_f, d, bias=True)
        linear(t, f"{p}.self_attn.o_proj", d, H * hd, bias=True)
        t[f"{p}.self_attn.sinks"] = (H,)
        linear(t, f"{p}.mlp.router", E, d, bias=True)
        t[f"{p}.mlp.experts.gate_up_proj"] = (E, d, 2 * f)
        t[f"{p}.mlp.experts.gate_up_proj_bias"] = (E, 2 * f)
        t[f"{p}.mlp.experts.down_proj"] = (E, f, d)
        t[f"{p}.mlp.experts.down_proj_bias"] = (E, d)
        t[f"{p}.input_layernorm.weight"] = (d,)
        t[f"{p}.post_attention_layernorm.weight"] = (d,)
    s = check(c, t, c["experts_per_token"], E)
    assert s.total_params == 116_829_156_672
