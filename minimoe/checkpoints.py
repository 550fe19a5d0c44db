"""Load published Hugging Face checkpoints into minimoe's own modules.

A checkpoint directory holds a ``config.json`` and its weights as safetensors files: one
``model.safetensors``, or several shards listed in ``model.safetensors.index.json``. This
module

1. turns the ``config.json`` of a supported family into a ``ModelConfig``
   (``config_from_hf``; fields the family uses but minimoe does not implement are an error,
   never silently dropped). DeepSeek-V4's config builds a model too, at any size, counted by
   ``accounting.param_counts`` exactly as ``cost.from_hf_config`` counts the file (tested);
   its checkpoints' weight names are not mapped,
2. builds an abstract ``Transformer`` of that config (shapes only, no memory) and fills each of
   its parameters from one named tensor, reshaped from the checkpoint's layout to minimoe's
   (``load_checkpoint``).

Tensors are read with the ``safetensors`` package's numpy API (``safe_open(...,
framework="np")``): plain arrays, no PyTorch, and no code from the checkpoint is ever run
(safetensors holds only a JSON header and raw bytes). A tensor that is missing, has the wrong
shape, or is left over after loading is an error naming the tensor, the expected shape and the
file.

Layouts. PyTorch's ``nn.Linear`` stores ``[out, in]``; minimoe computes ``x @ W`` with
``W: [in, out]``, so every projection is transposed. The experts of an MoE layer are stored
one module per expert (Mixtral's ``w1``/``w3``/``w2``, Qwen3's and DeepSeek's
``gate_proj``/``up_proj``/``down_proj``) or fused (Granite: ``input_linear`` holds gate and up
stacked as ``[n_experts, 2 * d_expert, d_model]``); minimoe stacks them along a leading expert
axis (``moe/experts.py``). DeepSeek's checkpoints pair RoPE channels as ``(2i, 2i+1)``
("interleaved"), and so does minimoe's MLA (``rope.apply_rope(..., interleaved=True)``, as in
DeepSeek's own code): their rope columns load as they are. The other families pair channels as
``(i, i + d/2)`` (the half-split layout of ``transformers``' ``rotate_half``), minimoe's
default.

The weight mapping of every family is in ``_tensor_map`` below, in one place.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import ModelConfig, MoEConfig, YaRNConfig
from .model import Transformer

# Checkpoints that load_checkpoint reads (config and weights) ...
LOADABLE_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen3_moe", "granitemoe", "deepseek_v2",
                        "deepseek_v3")
# ... and the configs config_from_hf builds a model from (DeepSeek-V4: the architecture, at any
# size; its weight names are not mapped).
SUPPORTED_MODEL_TYPES = LOADABLE_MODEL_TYPES + ("deepseek_v4",)
DEEPSEEK = ("deepseek_v2", "deepseek_v3")

# A tiny random Granite-MoE checkpoint (256 byte-level token ids) shipped with the package,
# with the logits, experts and greedy tokens that transformers computes for it
# (tools/make_checkpoint_fixtures.py): notebook 00 runs it when there is no network.
TINY_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_checkpoints",
                               "granitemoe")

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F32", "F16", "F64")  # read by numpy as they are; BF16 is widened to float32


# ----------------------------------------------------------------------------------------
# config.json -> ModelConfig
# ----------------------------------------------------------------------------------------

def read_hf_config(path: str) -> dict:
    """The ``config.json`` of checkpoint directory ``path`` as a dict (JSON only: no code)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint directory {path!r}")
    with open(file) as f:
        return json.load(f)


def _rope(hf: dict, drop_rope_scaling: bool = False) -> dict:
    """RoPE settings: ``rope_theta``, and ``rope_yarn`` for DeepSeek-V2/V3's YaRN scaling.

    Old configs write ``rope_theta`` and ``rope_scaling``; transformers 5 writes
    ``rope_parameters = {"rope_type": ..., "rope_theta": ...}``. Implemented: the plain rotation
    (``rope_type`` "default") for every family, and YaRN for DeepSeek-V2/V3; any other scaling
    (Llama 3's, linear, dynamic...) is an error rather than a silently different model.
    """
    old, new = hf.get("rope_scaling") or {}, hf.get("rope_parameters") or {}
    kind_of = lambda p: p.get("rope_type", p.get("type", "default"))
    params = old if kind_of(old) != "default" else new  # a scaling named in either place counts
    kind = kind_of(params)
    theta = float(new.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind == "default" or drop_rope_scaling:
        return dict(rope_theta=theta)
    if kind == "yarn" and hf.get("model_type") in DEEPSEEK:
        if params.get("attention_factor") is not None:
            raise ValueError("YaRN with an explicit attention_factor is not implemented "
                             "(DeepSeek's mscale / mscale_all_dim are)")
        yarn = YaRNConfig(
            factor=float(params["factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
            mscale=float(params.get("mscale") or 0),
            mscale_all_dim=float(params.get("mscale_all_dim") or 0))
        return dict(rope_theta=theta, rope_yarn=yarn)
    raise ValueError(f"RoPE scaling rope_type={kind!r} is not implemented in minimoe for "
                     f"model_type {hf.get('model_type')!r} (implemented: 'default', and 'yarn' for "
                     f"{' and '.join(DEEPSEEK)}); drop_rope_scaling=True builds the model with the "
                     f"plain rotation (same parameters, different positions past the original "
                     f"window)")


_MISSING = object()


def _field(hf: dict, *names: str, default=_MISSING):
    """The first of ``names`` present in ``hf`` (configs of one family spell some fields in
    more than one way, e.g. Qwen3-MoE's ``num_experts``, which transformers 5 writes as
    ``num_local_experts``); ``default``, or an error naming the field, when none is."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is _MISSING:
        raise ValueError(f"config.json of model_type {hf.get('model_type')!r} has no field "
                         f"{' or '.join(names)}")
    return default


def _require(hf: dict, name: str, allowed, default=None) -> None:
    """Error unless ``hf[name]`` (or ``default`` when absent) is one of ``allowed``."""
    value = hf.get(name, default)
    if value not in allowed:
        raise ValueError(f"config.json field {name}={value!r} is not supported by minimoe "
                         f"for model_type {hf.get('model_type')!r}; supported: {list(allowed)}")


def config_from_hf(hf: dict, max_seq_len: int | None = None, dispatch: str = "sort",
                   drop_rope_scaling: bool = False) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face ``config.json`` dict.

    ``max_seq_len`` bounds the KV cache (default: ``min(max_position_embeddings, 4096)``);
    ``dispatch`` is minimoe's MoE dispatch (every dropless one computes the same output);
    ``drop_rope_scaling`` builds a model whose RoPE scaling minimoe does not implement (e.g.
    DeepSeek-V4's YaRN) with the plain rotation instead of refusing it.
    Supported ``model_type``: ``SUPPORTED_MODEL_TYPES``.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported model types: "
                         f"{list(SUPPORTED_MODEL_TYPES)}")
    _require(hf, "hidden_act", ("silu",), "silu")
    _require(hf, "attention_bias", (False,), False)
    _require(hf, "mlp_bias", (False,), False)
    n_heads = _field(hf, "num_attention_heads")
    d_model = _field(hf, "hidden_size")
    common = dict(
        vocab_size=_field(hf, "vocab_size"), d_model=d_model,
        n_layers=_field(hf, "num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=_field(hf, "intermediate_size", "moe_intermediate_size"),
        **_rope(hf, drop_rope_scaling),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=max_seq_len or min(hf.get("max_position_embeddings", 4096), 4096),
    )
    head_dim = hf.get("head_dim")
    if model_type == "deepseek_v4" or (model_type not in DEEPSEEK and head_dim
                                       and head_dim != d_model // n_heads):
        common["head_dim"] = head_dim
    window = hf.get("sliding_window")
    if model_type in ("mistral", "mixtral") and window is not None:
        common.update(attention="sliding", sliding_window=window)
    if model_type == "qwen3_moe":
        _require(hf, "use_sliding_window", (False,), False)
        _require(hf, "decoder_sparse_step", (1,), 1)
        _require(hf, "mlp_only_layers", ([],), [])
    family = {"llama": _dense, "mistral": _dense, "mixtral": _mixtral, "qwen3_moe": _qwen3_moe,
              "granitemoe": _granitemoe, "deepseek_v2": _deepseek_v2,
              "deepseek_v3": _deepseek_v3, "deepseek_v4": _deepseek_v4}[model_type]
    return ModelConfig(**common, **family(hf, dispatch))


def _dense(hf: dict, dispatch: str) -> dict:
    return {}


def _moe(hf: dict, dispatch: str, d_expert: str, **settings) -> MoEConfig:
    """The ``MoEConfig`` of a family: experts, top-k, the width field ``d_expert``."""
    return MoEConfig(n_experts=_field(hf, "num_local_experts", "num_experts", "n_routed_experts"),
                     top_k=_field(hf, "num_experts_per_tok"), d_expert=_field(hf, d_expert),
                     dispatch=dispatch, **settings)


def _mixtral(hf: dict, dispatch: str) -> dict:
    """Mixtral: softmax over all experts, top-k, weights renormalised to sum to 1."""
    return dict(moe=_moe(hf, dispatch, "intermediate_size", router="softmax", renormalize=True))


def _qwen3_moe(hf: dict, dispatch: str) -> dict:
    """Qwen3-MoE: Mixtral's routing, renormalised only if ``norm_topk_prob``; per-head q/k
    RMSNorm; experts of width ``moe_intermediate_size``."""
    moe = _moe(hf, dispatch, "moe_intermediate_size", router="softmax",
               renormalize=bool(hf.get("norm_topk_prob", False)))
    return dict(moe=moe, qk_norm=True)


def _granitemoe(hf: dict, dispatch: str) -> dict:
    """Granite-MoE: softmax over the top-k router logits (= renormalised top-k of the softmax)
    and four scalar multipliers."""
    moe = _moe(hf, dispatch, "intermediate_size", router="softmax", renormalize=True)
    return dict(moe=moe, attention_scale=float(hf.get("attention_multiplier", 1.0)),
                embedding_multiplier=float(hf.get("embedding_multiplier", 1.0)),
                residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
                logits_scaling=float(hf.get("logits_scaling", 1.0)))


def _deepseek_v3(hf: dict, dispatch: str) -> dict:
    """DeepSeek-V3: MLA, sigmoid scores with a selection bias, group-limited top-k, shared
    experts, the first ``first_k_dense_replace`` layers dense.

    DeepSeek's MLA normalises its latents with RMSNorms of eps 1e-6 whatever ``rms_norm_eps``
    says; minimoe's MLA uses ``norm_eps`` for them, so a different ``rms_norm_eps`` is refused.
    """
    _require(hf, "topk_method", ("noaux_tc",), "noaux_tc")
    _require(hf, "scoring_func", ("sigmoid",), "sigmoid")
    _require(hf, "rms_norm_eps", (1e-6,), 1e-6)
    _require(hf, "rope_interleave", (True,), True)
    moe = _moe(hf, dispatch, "moe_intermediate_size", router="deepseek_v3",
               n_shared_experts=hf.get("n_shared_experts") or 0,
               renormalize=bool(hf.get("norm_topk_prob", True)),
               routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
               n_group=hf.get("n_group") or 1, topk_group=hf.get("topk_group") or 1)
    return dict(moe=moe, **_mla(hf))


def _deepseek_v2(hf: dict, dispatch: str) -> dict:
    """DeepSeek-V2 (e.g. V2-Lite): MLA, softmax scores, plain top-k (``topk_method="greedy"``),
    weights times ``routed_scaling_factor``, shared experts, the first layers dense.

    Not implemented (an error): V2's group-limited greedy routing (the group's score is its best
    expert's), and ``norm_topk_prob`` (DeepSeek's code renormalises, transformers' does not).
    """
    _require(hf, "topk_method", ("greedy",), "greedy")
    _require(hf, "scoring_func", ("softmax",), "softmax")
    _require(hf, "norm_topk_prob", (False,), False)
    _require(hf, "rms_norm_eps", (1e-6,), 1e-6)
    moe = _moe(hf, dispatch, "moe_intermediate_size", router="softmax", renormalize=False,
               n_shared_experts=hf.get("n_shared_experts") or 0,
               routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)))
    return dict(moe=moe, **_mla(hf))


def _deepseek_v4(hf: dict, dispatch: str) -> dict:
    """DeepSeek-V4: compressed attention (one shared K=V head, sliding window, CSA on layers
    of ratio 4 with the lightning indexer, HCA on the others), mHC, sqrt-softplus scores with
    a selection bias, hash routing in the first ``num_hash_layers`` layers, every layer MoE,
    clamped SwiGLU, one MTP module (``compress_ratios`` then has one more entry).

    Every layer of V4 is MoE (its config has no ``intermediate_size``: ``d_ff`` is set to the
    expert width and used by no layer). The ``tid2eid`` tables of the hash layers are drawn
    from the seed, not read (they are part of a checkpoint's weights, which are not mapped);
    ``quantization_config`` says how a checkpoint stores its weights, not what they compute.
    """
    _require(hf, "topk_method", ("noaux_tc",), "noaux_tc")
    _require(hf, "scoring_func", ("sqrtsoftplus",), "sqrtsoftplus")
    _require(hf, "num_key_value_heads", (1,), 1)
    _require(hf, "n_group", (None, 1))  # V4 has no group-limited routing
    moe = _moe(hf, dispatch, "moe_intermediate_size", router="deepseek_v4",
               n_shared_experts=hf.get("n_shared_experts") or 0,
               renormalize=bool(hf.get("norm_topk_prob", True)),
               routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
               swiglu_limit=float(hf.get("swiglu_limit") or 0.0))
    return dict(
        moe=moe, attention="compressed",
        qk_rope_head_dim=_field(hf, "qk_rope_head_dim"), q_lora_rank=_field(hf, "q_lora_rank"),
        o_groups=_field(hf, "o_groups"), o_lora_rank=_field(hf, "o_lora_rank"),
        sliding_window=_field(hf, "sliding_window"),
        compress_ratios=tuple(_field(hf, "compress_ratios")), csa_compress_ratio=4,
        compress_rope_theta=float(hf.get("compress_rope_theta", 160000.0)),
        index_n_heads=_field(hf, "index_n_heads"), index_head_dim=_field(hf, "index_head_dim"),
        index_topk=_field(hf, "index_topk"), hc_mult=_field(hf, "hc_mult", default=1),
        hc_sinkhorn_iters=_field(hf, "hc_sinkhorn_iters", default=20),
        hc_eps=float(_field(hf, "hc_eps", default=1e-6)),
        num_hash_layers=_field(hf, "num_hash_layers", default=0),
        num_nextn_predict_layers=_field(hf, "num_nextn_predict_layers", default=0))


def _mla(hf: dict) -> dict:
    """MLA and layer-pattern fields shared by DeepSeek-V2 and V3."""
    return dict(attention="mla", first_k_dense=hf.get("first_k_dense_replace", 0),
                q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=_field(hf, "kv_lora_rank"),
                qk_nope_head_dim=_field(hf, "qk_nope_head_dim"),
                qk_rope_head_dim=_field(hf, "qk_rope_head_dim"),
                v_head_dim=_field(hf, "v_head_dim"))


# ----------------------------------------------------------------------------------------
# Reading safetensors files
# ----------------------------------------------------------------------------------------

class SafetensorsReader:
    """The tensors of a checkpoint directory, read lazily with safetensors' numpy API.

    ``get(name)`` returns one tensor as a numpy array and records it as used; ``unused()``
    lists the tensors never read. ``file_of(name)`` says which file holds a tensor.
    bfloat16 tensors (numpy has no bfloat16) are widened to float32 bit-exactly.
    """

    def __init__(self, path: str):
        from safetensors import safe_open  # imported here: the rest of minimoe does not need it
        self._safe_open = safe_open
        self.path = path
        index = os.path.join(path, INDEX_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                self.files = dict(json.load(f)["weight_map"])  # tensor name -> file name
        elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
            with safe_open(os.path.join(path, SINGLE_FILE), framework="np") as f:
                self.files = {k: SINGLE_FILE for k in f.keys()}
        else:
            raise FileNotFoundError(
                f"no {SINGLE_FILE} or {INDEX_FILE} in checkpoint directory {path!r}")
        self._open: dict[str, Any] = {}
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def file_of(self, name: str) -> str:
        return self.files.get(name, "<absent>")

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint in {self.path!r}")
        file = self.files[name]
        if file not in self._open:
            handle = self._safe_open(os.path.join(self.path, file), framework="np")
            self._open[file] = handle.__enter__()
        self.used.add(name)
        handle = self._open[file]
        dtype = handle.get_slice(name).get_dtype()
        if dtype == "BF16":
            return _bf16_tensor(os.path.join(self.path, file), name)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"tensor {name!r} in {file!r} has dtype {dtype}; minimoe reads "
                             f"{list(FLOAT_DTYPES) + ['BF16']} (quantized checkpoints, e.g. FP8 "
                             f"with scale tensors, must be converted first)")
        return handle.get_tensor(name)

    def unused(self) -> list[str]:
        return sorted(set(self.files) - self.used)

    def close(self) -> None:
        for handle in self._open.values():
            handle.__exit__(None, None, None)
        self._open = {}


def _bf16_tensor(file: str, name: str) -> np.ndarray:
    """A bfloat16 tensor of a safetensors file as float32 (numpy has no bfloat16 dtype).

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the raw bytes. bfloat16 is the top half of a
    float32, so shifting the 16-bit words up by 16 bits gives the exact float32 values.
    """
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        start, end = header[name]["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(header[name]["shape"])


# ----------------------------------------------------------------------------------------
# The weight mapping, one place per family
# ----------------------------------------------------------------------------------------

T = lambda w: w.T  # [out, in] -> [in, out]
same = lambda w: w


def _stack(names: list[str], fn: Callable = T) -> tuple:
    """Several tensors (one per expert) stacked along a new leading axis after ``fn``."""
    return ("stack", names, fn)


def _tensor_map(cfg: ModelConfig, hf: dict, model: Transformer) -> list[tuple]:
    """``(variable, source, transform)`` for every parameter of ``model``.

    ``source`` is a tensor name, or ``("stack", names, fn)`` for experts stored one per
    module; ``transform`` maps the checkpoint's array to minimoe's layout.
    """
    mt = hf["model_type"]
    entries = [(model.embed, "model.embed_tokens.weight", same),
               (model.final_norm.weight, "model.norm.weight", same)]
    if not cfg.tie_embeddings:
        entries.append((model.lm_head, "lm_head.weight", T))
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        entries += [(block.attn_norm.weight, p + "input_layernorm.weight", same),
                    (block.ffn_norm.weight, p + "post_attention_layernorm.weight", same)]
        a = block.attn
        if mt in DEEPSEEK:
            entries += _mla_map(cfg, a, p + "self_attn.")
        else:
            entries += [(a.wq, p + "self_attn.q_proj.weight", T),
                        (a.wk, p + "self_attn.k_proj.weight", T),
                        (a.wv, p + "self_attn.v_proj.weight", T),
                        (a.wo, p + "self_attn.o_proj.weight", T)]
            if cfg.qk_norm:
                entries += [(a.q_norm.weight, p + "self_attn.q_norm.weight", same),
                            (a.k_norm.weight, p + "self_attn.k_norm.weight", same)]
        f = block.ffn
        if not block.is_moe:
            entries += [(f.w_gate, p + "mlp.gate_proj.weight", T),
                        (f.w_up, p + "mlp.up_proj.weight", T),
                        (f.w_down, p + "mlp.down_proj.weight", T)]
            continue
        e = range(cfg.moe.n_experts)
        ex = f.experts
        if mt == "mixtral":
            q = p + "block_sparse_moe."
            entries += [(f.router.w_router, q + "gate.weight", T),
                        (ex.w_gate, _stack([f"{q}experts.{j}.w1.weight" for j in e]), same),
                        (ex.w_up, _stack([f"{q}experts.{j}.w3.weight" for j in e]), same),
                        (ex.w_down, _stack([f"{q}experts.{j}.w2.weight" for j in e]), same)]
        elif mt == "granitemoe":
            q, d_e = p + "block_sparse_moe.", cfg.moe.d_expert
            # input_linear: [n_experts, 2 * d_expert, d_model], gate rows first, then up
            entries += [(f.router.w_router, q + "router.layer.weight", T),
                        (ex.w_gate, q + "input_linear.weight",
                         lambda w, d_e=d_e: w[:, :d_e].transpose(0, 2, 1)),
                        (ex.w_up, q + "input_linear.weight",
                         lambda w, d_e=d_e: w[:, d_e:].transpose(0, 2, 1)),
                        (ex.w_down, q + "output_linear.weight", lambda w: w.transpose(0, 2, 1))]
        else:  # qwen3_moe, deepseek_v2, deepseek_v3
            q = p + "mlp."
            entries += [(f.router.w_router, q + "gate.weight", T),
                        (ex.w_gate, _stack([f"{q}experts.{j}.gate_proj.weight" for j in e]), same),
                        (ex.w_up, _stack([f"{q}experts.{j}.up_proj.weight" for j in e]), same),
                        (ex.w_down, _stack([f"{q}experts.{j}.down_proj.weight" for j in e]), same)]
            if mt == "deepseek_v3":
                entries.append((f.router.bias, q + "gate.e_score_correction_bias", same))
            if f.shared_experts is not None:
                s = f.shared_experts
                entries += [(s.w_gate, q + "shared_experts.gate_proj.weight", T),
                            (s.w_up, q + "shared_experts.up_proj.weight", T),
                            (s.w_down, q + "shared_experts.down_proj.weight", T)]
    return entries


def _assign(var, value) -> None:
    """Give a variable of an abstract (``nnx.eval_shape``) model its array: ``set_value`` in
    Flax 0.12, where ``.value`` is deprecated; ``.value`` in Flax 0.11, which has no
    ``set_value`` (and whose ``[...] =`` cannot replace an abstract value)."""
    if hasattr(type(var), "set_value"):
        var.set_value(value)
    else:
        var.value = value


def _mla_map(cfg: ModelConfig, a, p: str) -> list[tuple]:
    """DeepSeek-V2/V3 MLA tensors -> ``MLAttention`` (both keep DeepSeek's interleaved rope
    channels, so only the [out, in] -> [in, out] transpose is needed)."""
    entries = [(a.w_dkv, p + "kv_a_proj_with_mqa.weight", T),
               (a.kv_norm.weight, p + "kv_a_layernorm.weight", same),
               (a.w_ukv, p + "kv_b_proj.weight", T),
               (a.wo, p + "o_proj.weight", T)]
    if cfg.q_lora_rank is None:
        entries.append((a.wq, p + "q_proj.weight", T))
    else:
        entries += [(a.w_dq, p + "q_a_proj.weight", T),
                    (a.q_norm.weight, p + "q_a_layernorm.weight", same),
                    (a.w_uq, p + "q_b_proj.weight", T)]
    return entries


def _ignored(name: str, cfg: ModelConfig, hf: dict) -> bool:
    """Tensors a checkpoint may hold that minimoe's model does not use, on purpose:
    RoPE's cached ``inv_freq`` (recomputed), a tied ``lm_head`` (the embedding is used), and
    DeepSeek-V3's multi-token-prediction layers (``model.layers.{n_layers}...``)."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    if cfg.tie_embeddings and name == "lm_head.weight":
        return True
    if hf["model_type"] == "deepseek_v3" and name.startswith("model.layers."):
        return int(name.split(".")[2]) >= cfg.n_layers
    return False


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

def load_checkpoint(path: str, *, dtype=jnp.float32, max_seq_len: int | None = None,
                    dispatch: str = "sort") -> Transformer:
    """A ``Transformer`` holding the weights of the Hugging Face checkpoint in ``path``.

    ``dtype``: the parameters' dtype (float32 for parity; bfloat16 halves the memory);
    ``max_seq_len``, ``dispatch``: see ``config_from_hf``. Norm weights and DeepSeek's router
    bias stay float32. Errors: an unsupported ``model_type``; a missing tensor, one of the
    wrong shape, or one left unused, each naming the tensor, the expected shape and the file.
    """
    hf = read_hf_config(path)
    if hf.get("model_type") not in LOADABLE_MODEL_TYPES:
        raise ValueError(f"load_checkpoint reads model_type {list(LOADABLE_MODEL_TYPES)}, got "
                         f"{hf.get('model_type')!r}" + (
                             " (its config builds a model with config_from_hf; its weight "
                             "names are not mapped)" if hf.get("model_type") in
                             SUPPORTED_MODEL_TYPES else ""))
    reader = SafetensorsReader(path)
    if "tie_word_embeddings" not in hf:  # families differ in the default: ask the weights
        hf = {**hf, "tie_word_embeddings": "lm_head.weight" not in reader}
    try:
        cfg = config_from_hf(hf, max_seq_len=max_seq_len, dispatch=dispatch)
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))  # shapes, no memory
        for var, source, fn in _tensor_map(cfg, hf, model):
            expected = tuple(var.shape)
            if isinstance(source, tuple):  # one tensor per expert, stacked on a new axis
                _, names, each = source
                value = np.stack([each(_read(reader, n, expected)) for n in names])
                name, first = f"{names[0]} ... {names[-1]}", names[0]
            else:
                value, name, first = fn(_read(reader, source, expected)), source, source
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"tensor {name!r} in {reader.file_of(first)!r} gives shape "
                    f"{tuple(value.shape)} in minimoe's layout, expected {expected} "
                    f"(from config.json)")
            _assign(var, jnp.asarray(value, jnp.float32 if value.ndim == 1 else dtype))
        extra = [n for n in reader.unused() if not _ignored(n, cfg, hf)]
        if extra:
            raise ValueError(f"{len(extra)} tensors of the checkpoint in {path!r} have no place "
                             f"in minimoe's {hf['model_type']} model, e.g. {extra[:5]} "
                             f"(in {reader.file_of(extra[0])!r})")
    finally:
        reader.close()
    return model


def _read(reader: SafetensorsReader, name: str, expected: tuple) -> np.ndarray:
    """Tensor ``name``, or an error naming it, the parameter shape it should fill and the files."""
    if name not in reader:
        raise ValueError(f"tensor {name!r} is missing from the checkpoint in {reader.path!r} "
                         f"(files: {sorted(set(reader.files.values()))}); it should fill a "
                         f"parameter of shape {expected} in minimoe's layout")
    return reader.get(name)
