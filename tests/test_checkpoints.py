"""Loading Hugging Face checkpoints: parity with the reference implementation, and clear errors.

The fixtures under tests/fixtures/checkpoints/ are tiny random models built with
``transformers`` by tools/make_checkpoint_fixtures.py, each with the reference's logits, chosen
experts and greedy continuation. Nothing here imports PyTorch.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from minimoe.accounting import param_counts
from minimoe.checkpoints import (LOADABLE_MODEL_TYPES, TINY_CHECKPOINT, SafetensorsReader,
                                 config_from_hf, load_checkpoint, read_hf_config)
from minimoe.config import ModelConfig
from minimoe.model import Transformer, generate

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoints")
DIRS = {f: os.path.join(FIXTURES, f) for f in os.listdir(FIXTURES)}
DIRS["granitemoe"] = TINY_CHECKPOINT  # package data (notebook 00's offline model)
FAMILIES = sorted(DIRS)


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def _reference(family):
    return load_file(os.path.join(DIRS[family], "reference.safetensors"))


@pytest.fixture(scope="module")
def loaded():
    """family -> (model, reference arrays, minimoe's outputs on the reference tokens)."""
    out = {}
    for family in FAMILIES:
        model = load_checkpoint(DIRS[family])
        ref = _reference(family)
        out[family] = (model, ref, _forward(model, jnp.asarray(ref["tokens"])))
    return out


def test_every_family_has_a_fixture():
    assert sorted(LOADABLE_MODEL_TYPES) == FAMILIES
    for family in FAMILIES:
        assert read_hf_config(DIRS[family])["model_type"] == family


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_the_reference(loaded, family):
    _, ref, out = loaded[family]
    want = ref["logits"]
    got = np.asarray(out.logits)
    scale = np.abs(want).max()
    assert np.abs(want).std() > 0.1  # the reference is not degenerate
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)
    # and the next-token choice agrees everywhere
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llama", "mistral")])
def test_chosen_experts_match_the_reference(loaded, family):
    model, ref, out = loaded[family]
    want = np.sort(ref["experts"], axis=-1)  # [n_moe_layers, tokens, top_k]
    got = np.sort(np.stack([np.asarray(s.expert_index) for s in out.moe_stats]), axis=-1)
    assert got.shape == want.shape == (len(model.moe_layers()), ref["tokens"].size,
                                       model.cfg.moe.top_k)
    np.testing.assert_array_equal(got, want)
    # every expert is used somewhere: the comparison is not of a collapsed router
    assert len(np.unique(want)) == model.cfg.moe.n_experts


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_token_for_token(loaded, family):
    model, ref, _ = loaded[family]
    prompt = jnp.asarray(ref["prompt"])
    new = ref["greedy"].shape[1] - prompt.shape[1]
    got = generate(model, prompt, new, jax.random.key(0), temperature=0)  # with a KV cache
    np.testing.assert_array_equal(np.asarray(got), ref["greedy"])


@pytest.mark.parametrize("family", FAMILIES)
def test_param_counts_match_the_loaded_checkpoint(loaded, family):
    """accounting.param_counts of the derived config counts exactly the loaded parameters, and
    the model's state (parameters and DeepSeek's router bias) is every stored tensor."""
    model, _, _ = loaded[family]
    size = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))
    assert param_counts(model.cfg)["total"] == size(nnx.state(model, nnx.Param))
    n = size(nnx.state(model))
    files = sorted(set(SafetensorsReader(DIRS[family]).files.values()))
    stored = sum(int(np.prod(t.shape)) for f in files
                 for t in load_file(os.path.join(DIRS[family], f)).values())
    assert n == stored  # every tensor of the checkpoint, and nothing else


def test_hub_spellings_of_config_fields():
    """Hub configs write some fields differently from transformers 5 (Qwen3's num_experts,
    rope_theta at the top level, rope_scaling null): the same config results."""
    hf = read_hf_config(DIRS["qwen3_moe"])
    hub = {k: v for k, v in hf.items() if k not in ("num_local_experts", "rope_parameters")}
    hub.update(num_experts=hf["num_local_experts"], rope_theta=hf["rope_parameters"]["rope_theta"],
               rope_scaling=None)
    assert config_from_hf(hub) == config_from_hf(hf)
    del hub["num_experts"]
    with pytest.raises(ValueError, match="no field num_local_experts or num_experts"):
        config_from_hf(hub)


def test_absent_tie_word_embeddings_is_read_from_the_weights(tmp_path):
    for family, tied in (("granitemoe", True), ("llama", False)):
        dst = tmp_path / family
        shutil.copytree(DIRS[family], dst)
        hf = read_hf_config(str(dst))
        del hf["tie_word_embeddings"]
        (dst / "config.json").write_text(json.dumps(hf))
        assert load_checkpoint(str(dst)).cfg.tie_embeddings is tied


def test_config_from_hf_maps_family_fields():
    granite = config_from_hf(read_hf_config(DIRS["granitemoe"]))
    assert (granite.embedding_multiplier, granite.attention_scale, granite.residual_multiplier,
            granite.logits_scaling, granite.tie_embeddings) == (12.0, 0.125, 0.22, 6.0, True)
    qwen = config_from_hf(read_hf_config(DIRS["qwen3_moe"]))
    assert qwen.qk_norm and qwen.head_dim == 16 and qwen.d_model // qwen.n_heads == 8
    assert qwen.moe.renormalize is False and qwen.moe.d_expert == 24
    ds = config_from_hf(read_hf_config(DIRS["deepseek_v3"]))
    assert (ds.attention, ds.first_k_dense, ds.moe.router, ds.moe.n_group, ds.moe.topk_group,
            ds.moe.n_shared_experts, ds.moe.routed_scaling_factor) == (
        "mla", 1, "deepseek_v3", 4, 2, 1, 2.5)
    mistral = config_from_hf(read_hf_config(DIRS["mistral"]))
    assert (mistral.attention, mistral.sliding_window) == ("sliding", 8)


def test_deepseek_v2_settings_that_are_not_implemented_are_errors():
    hf = read_hf_config(DIRS["deepseek_v2"])
    for field, value in (("topk_method", "group_limited_greedy"), ("norm_topk_prob", True)):
        with pytest.raises(ValueError, match=f"{field}={value!r}.*deepseek_v2"):
            config_from_hf({**hf, field: value})


def test_unsupported_family_names_model_type_and_the_supported_ones():
    with pytest.raises(ValueError, match=r"model_type 'gpt2'.*'llama'.*'deepseek_v3'"):
        config_from_hf({"model_type": "gpt2"})


@pytest.mark.parametrize("field, value, match", [
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "yarn.*mixtral"),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}, "llama3"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "linear"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("attention_bias", True, "attention_bias=True"),
])
def test_unimplemented_config_fields_are_errors(field, value, match):
    hf = read_hf_config(DIRS["mixtral"])
    hf[field] = value
    with pytest.raises(ValueError, match=match):
        config_from_hf(hf)


def _copy_with(tmp_path, family, change):
    """A copy of a single-file fixture whose tensors dict went through ``change``."""
    dst = tmp_path / family
    shutil.copytree(DIRS[family], dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(change(tensors), str(dst / "model.safetensors"))
    return str(dst)


def test_missing_tensor_names_tensor_shape_and_file(tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"
    path = _copy_with(tmp_path, "llama", lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ValueError, match=rf"{name}.*missing.*model.safetensors.*\(32, 16\)"):
        load_checkpoint(path)


def test_wrong_shape_names_tensor_shape_and_file(tmp_path):
    name = "model.layers.0.block_sparse_moe.output_linear.weight"

    def cut(t):
        t[name] = t[name][:, :, :-1]
        return t
    path = _copy_with(tmp_path, "granitemoe", cut)
    with pytest.raises(ValueError, match=rf"{name}.*model.safetensors.*\(4, 47, 32\).*"
                                         rf"expected \(4, 48, 32\)"):
        load_checkpoint(path)


def test_leftover_tensor_is_an_error(tmp_path):
    path = _copy_with(tmp_path, "llama",
                      lambda t: {**t, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"no place.*model.layers.0.mlp.extra.weight"):
        load_checkpoint(path)


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(str(tmp_path))
    shutil.copy(os.path.join(DIRS["llama"], "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(str(tmp_path))


def _write_safetensors(path, tensors, dtype="BF16"):
    """A safetensors file of 16-bit tensors (bfloat16: the top 16 bits of float32, rounded to
    nearest even; the same bits are labelled ``dtype``), written from its published layout:
    header length, JSON header, raw bytes."""
    header, blobs, offset = {}, [], 0
    for name, x in tensors.items():
        bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(x.shape),
                        "data_offsets": [offset, offset + len(rounded)]}
        blobs.append(rounded)
        offset += len(rounded)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
    dst = tmp_path / "llama"
    shutil.copytree(DIRS["llama"], dst)
    tensors = load_file(str(dst / "model.safetensors"))
    _write_safetensors(str(dst / "model.safetensors"), tensors)
    model = load_checkpoint(str(dst))
    want = jnp.asarray(tensors["model.embed_tokens.weight"]).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(model.embed[...]), np.asarray(want, np.float32))
    assert not np.array_equal(np.asarray(model.embed[...]), tensors["model.embed_tokens.weight"])


def test_checkpoint_defaults_leave_the_course_model_unchanged():
    """The new fields at values equal to the defaults' arithmetic give the same logits."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=16)
    tokens = jnp.arange(12)[None] % 64
    base = _forward(Transformer(cfg, rngs=nnx.Rngs(0)), tokens).logits
    explicit = cfg.replace(head_dim=8, attention_scale=8 ** -0.5)
    same = _forward(Transformer(explicit, rngs=nnx.Rngs(0)), tokens).logits
    np.testing.assert_allclose(np.asarray(same), np.asarray(base), rtol=0, atol=1e-6)
    scaled = _forward(Transformer(cfg.replace(logits_scaling=2.0), rngs=nnx.Rngs(0)), tokens).logits
    np.testing.assert_allclose(np.asarray(scaled) * 2.0, np.asarray(base), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("field, value", [
    ("head_dim", 0), ("qk_norm", 1), ("attention_scale", -1.0),
    ("embedding_multiplier", 0.0), ("residual_multiplier", "x"), ("logits_scaling", True)])
def test_checkpoint_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_checkpoint_attention_fields_need_gqa():
    with pytest.raises(ValueError, match="qk_norm.*attention='mla'"):
        ModelConfig(attention="mla", qk_norm=True)


def test_yarn_frequencies_at_their_limits():
    """YaRN keeps the frequencies that rotate often over the pre-training context, divides
    the rare ones by ``factor``, ramps in between, and is the plain rotation when ``factor``
    is 1. (The parity test against transformers checks the exact values.)"""
    from minimoe.blocks.rope import rope_angles, yarn_inv_freq
    from minimoe.config import YaRNConfig
    dim, theta = 16, 10000.0
    plain = theta ** -(np.arange(0, dim, 2) / dim)
    np.testing.assert_allclose(yarn_inv_freq(dim, theta, YaRNConfig(1.0, 64)), plain, rtol=1e-6)
    mixed = yarn_inv_freq(dim, theta, YaRNConfig(4.0, 4096))  # DeepSeek-V3's L
    assert np.isclose(mixed[0], plain[0]) and np.isclose(mixed[-1], plain[-1] / 4.0)
    ratio = mixed / plain  # from 1 (kept) down to 1/4 (interpolated), never outside
    assert np.all(np.diff(ratio) <= 1e-7) and ratio.min() >= 0.25 - 1e-7
    assert 0.3 < ratio[4] < 0.9  # and some in between
    cos, _ = rope_angles(jnp.arange(3), dim, theta)
    np.testing.assert_allclose(np.cos(np.arange(3)[:, None] * plain), cos, atol=1e-6)


def test_yarn_config_is_validated_and_round_trips():
    from minimoe.config import YaRNConfig
    with pytest.raises(ValueError, match="factor"):
        YaRNConfig(0.5, 16)
    with pytest.raises(ValueError, match="beta_fast"):
        YaRNConfig(4.0, 16, beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ValueError, match="rope_yarn.*'mla'"):
        ModelConfig(rope_yarn=YaRNConfig(4.0, 16))
    cfg = config_from_hf(read_hf_config(DIRS["deepseek_v3"]))
    assert cfg.rope_yarn == YaRNConfig(4.0, 16, 32.0, 1.0, 1.0, 0.8)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unreadable_dtype_names_tensor_dtype_and_file(tmp_path):
    dst = tmp_path / "llama"
    shutil.copytree(DIRS["llama"], dst)
    tensors = load_file(str(dst / "model.safetensors"))
    _write_safetensors(str(dst / "model.safetensors"), tensors, dtype="I16")
    with pytest.raises(ValueError, match=r"tensor '.*' in 'model.safetensors' has dtype I16"):
        load_checkpoint(str(dst))

