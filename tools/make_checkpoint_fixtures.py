"""Build the tiny reference checkpoints that tests/test_checkpoints.py loads with minimoe.

For every family minimoe loads (Llama, Mistral, Mixtral, Qwen3-MoE, Granite-MoE, DeepSeek-V3,
DeepSeek-V2)
this script builds a tiny model with Hugging Face ``transformers`` (a few layers, d_model 32,
256 token ids so that bytes are valid tokens), fills it with seeded random weights, and writes
under ``tests/fixtures/checkpoints/<family>/`` (Granite's under
``minimoe/tiny_checkpoints/granitemoe/``, package data, for notebook 00's offline path):

- ``config.json`` and the weights in safetensors (``save_pretrained``; Mixtral's in several
  shards with ``model.safetensors.index.json``, to test sharded loading);
- ``reference.safetensors``: plain arrays computed by ``transformers`` in float32 --
  ``tokens`` [2, 24] (the input), ``logits`` [2, 24, 256], ``experts`` [n_moe_layers, 48,
  top_k] (the experts each token was routed to, as the reference router returned them),
  ``prompt`` [1, 8] and ``greedy`` [1, 16] (the prompt followed by 8 greedy tokens).

Nothing here is pickled: the test suite reads all of it with safetensors' numpy API and never
needs PyTorch. CI does not run this script; a developer does, after changing a fixture:

    python -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy
    /tmp/fixture-venv/bin/python tools/make_checkpoint_fixtures.py            # rewrite them
    /tmp/fixture-venv/bin/python tools/make_checkpoint_fixtures.py --check    # reproduce them

It is deterministic (fixed seeds, CPU, float32): ``--check`` rebuilds every fixture in a
temporary directory and verifies that each file is byte-for-byte identical to the committed one.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "tests", "fixtures", "checkpoints")
# the Granite one ships inside the package: notebook 00 runs it when there is no network
PACKAGED = {"granitemoe": os.path.join(REPO, "minimoe", "tiny_checkpoints", "granitemoe")}

COMMON = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)

# family -> (config class, model class, config fields beyond COMMON, how to find each MoE
# layer's router, and whether to shard the weights)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(rope_theta=10000.0), None),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=8, rope_theta=10000.0), None),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(num_local_experts=4, num_experts_per_tok=2, rope_theta=1e6),
                "mlp.gate"),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
                       head_dim=16, norm_topk_prob=False, rope_theta=1e6), "mlp.gate"),
    "granitemoe": (transformers.GraniteMoeConfig, transformers.GraniteMoeForCausalLM,
                   dict(num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=12.0,
                        attention_multiplier=0.125, residual_multiplier=0.22,
                        logits_scaling=6.0, tie_word_embeddings=True, rope_theta=1e6),
                   "block_sparse_moe.router"),
    "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                    dict(num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                         n_group=4, topk_group=2, first_k_dense_replace=1,
                         routed_scaling_factor=2.5, q_lora_rank=16, kv_lora_rank=16,
                         qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                         # YaRN as DeepSeek-V3 uses it, scaled down: a pre-training context of
                         # 16 makes the ramp keep one rope frequency and interpolate the others
                         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                              original_max_position_embeddings=16,
                                              beta_fast=32.0, beta_slow=1.0, mscale=1.0,
                                              mscale_all_dim=0.8)), "mlp.gate"),
    # DeepSeek-V2-Lite's shape: full-rank queries, softmax scores, plain top-k ("greedy")
    "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM,
                    dict(num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=2,
                         topk_method="greedy", n_group=1, topk_group=1, first_k_dense_replace=1,
                         routed_scaling_factor=1.5, norm_topk_prob=False, q_lora_rank=None,
                         kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                              original_max_position_embeddings=16,
                                              beta_fast=32.0, beta_slow=1.0, mscale=0.707,
                                              mscale_all_dim=0.707)), "mlp.gate"),
}
SHARDED = ("mixtral",)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights of a useful scale: matrices normal with std 1/sqrt(fan_in) (the library's
    default init of std 0.02 leaves routers near ties), vectors (norm gains) 1 + 0.2 N(0, 1),
    DeepSeek's selection bias 0.05 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()) + sorted(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.05 * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)


def record_routing(model, router_path: str | None):
    """Hooks that append each MoE layer's chosen experts [tokens, top_k] to a list."""
    chosen, hooks = [], []
    if router_path is None:
        return chosen, hooks
    for layer in model.model.layers:
        mod = layer
        for part in router_path.split("."):
            mod = getattr(mod, part, None)
        if mod is None:
            continue  # a dense layer (DeepSeek's first_k_dense_replace)
        # every family's router module returns (logits, weights, index)
        hooks.append(mod.register_forward_hook(lambda m, inp, out: chosen.append(out[2])))
    return chosen, hooks


def build(family: str, out_dir: str, seed: int) -> None:
    cfg_cls, model_cls, extra, router_path = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = cfg_cls(**{**COMMON, **extra})
    model = model_cls(cfg).eval().to(torch.float32)
    randomize(model, seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size="100KB" if family in SHARDED else "50GB")
    os.remove(os.path.join(out_dir, "generation_config.json"))  # not read by minimoe

    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    prompt = torch.randint(0, cfg.vocab_size, (1, 8), generator=g)
    chosen, hooks = record_routing(model, router_path)
    with torch.no_grad():
        logits = model(tokens).logits.float()
        experts = [c.to(torch.int32) for c in chosen]  # this forward's only: decoding follows
        for h in hooks:
            h.remove()
        seq = prompt
        for _ in range(8):  # greedy decoding, the full sequence re-run each step
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    ref = {"tokens": tokens.numpy().astype(np.int32), "logits": logits.numpy(),
           "prompt": prompt.numpy().astype(np.int32), "greedy": seq.numpy().astype(np.int32)}
    if experts:
        ref["experts"] = np.stack([e.numpy() for e in experts])  # [n_moe_layers, tokens, top_k]
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()},
              os.path.join(out_dir, "reference.safetensors"),
              # one metadata key: safetensors writes several in a random order
              metadata={"made_with": f"transformers {transformers.__version__}, "
                                     f"torch {torch.__version__}"})


def target(family: str) -> str:
    return PACKAGED.get(family, os.path.join(ROOT, family))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="rebuild in a temporary directory and compare with the committed files")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not args.check:
        for i, family in enumerate(FAMILIES):
            build(family, target(family), seed=100 + i)
            print("wrote", target(family))
        return 0
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, family in enumerate(FAMILIES):
            build(family, os.path.join(tmp, family), seed=100 + i)
            new, old = os.path.join(tmp, family), target(family)
            names = sorted(set(os.listdir(new)) | set(os.listdir(old)))
            _, mismatch, errors = filecmp.cmpfiles(old, new, names, shallow=False)
            bad += [f"{family}/{n}" for n in mismatch + errors]
    print("identical" if not bad else f"differ: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
