"""A published DeepSeek-V4 ``config.json`` scaled down to a model a CPU trains in seconds.

``shrink_v4_config`` keeps every field of the real file and its meaning, and changes only
sizes, by one stated rule:

* **widths and counts** take the values of ``MINI_V4_SIZES`` (hidden size 64, 4 heads of 32,
  16 experts of width 32, top-2 plus the shared expert, ...): fewer and smaller everything;
* **the layer schedule keeps its shape**: the first layer keeps V4's first-layer kind
  (window-only in V4-Flash, HCA in V4-Pro), the others follow V4's CSA/HCA cycle from its
  start, and the MTP layer keeps its own entry. CSA's ratio 4 stays 4 (its overlapping
  compressor and indexer are defined by it); HCA's ratio (128 in V4) becomes
  ``hca_ratio``, scaled with the window (128 -> 16) to the course's short sequences;
* **what is unchanged** stays as published: ``hc_mult``, ``hc_sinkhorn_iters``, ``hc_eps``,
  ``scoring_func``, ``topk_method``, ``norm_topk_prob``, ``routed_scaling_factor``,
  ``swiglu_limit``, ``n_shared_experts``, ``num_nextn_predict_layers``, the RoPE thetas;
* **removed**: ``rope_scaling`` (YaRN stretches positions beyond V4's 64K pre-training
  window; the course's sequences are 64 tokens long, and minimoe's compressed attention does
  not implement it) and ``quantization_config`` (how a checkpoint stores its weights).

The result is an ordinary ``config.json`` dict: ``checkpoints.config_from_hf`` builds the
model from it and ``cost.from_hf_config`` counts it, by the same code as the full-size file.
"""

from __future__ import annotations

import copy
import time

import jax.numpy as jnp
from flax import nnx

from ..accounting import param_counts
from ..checkpoints import config_from_hf
from ..config import ModelConfig
from ..cost import load_model_config
from ..model import Transformer
from ..training.data import CorpusConfig, eval_batches, generate_documents
from ..training.train import TrainConfig, Trainer, answer_metrics
from ..v4.mtp import mtp_inputs
from ..v4.quant import quantize_experts

MINI_V4_SIZES = {
    "vocab_size": 256,              # the course's byte tokenizer
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "head_dim": 32,
    "qk_rope_head_dim": 8,
    "q_lora_rank": 32,
    "o_groups": 2,
    "o_lora_rank": 32,
    "index_n_heads": 2,
    "index_head_dim": 16,
    "index_topk": 8,
    "n_routed_experts": 16,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "sliding_window": 16,
    "num_hash_layers": 1,
    "max_position_embeddings": 64,  # the course's sequences (KV caches are allocated this long)
}
CSA_RATIO = 4  # V4's compress ratio with the overlapping compressor and the lightning indexer


def shrink_schedule(compress_ratios, n_main: int, n_layers_new: int, hca_ratio: int) -> list[int]:
    """V4's ``compress_ratios`` (``n_main`` main layers, then the MTP layers' entries) for a
    model of ``n_layers_new`` main layers: first layer as V4's first, then the repeating unit
    of V4's schedule after its leading run (CSA, HCA), then the MTP entries; ratios other than 0 and 4 become
    ``hca_ratio``."""
    ratios = list(compress_ratios)
    if len(ratios) < n_main:
        raise ValueError(f"compress_ratios has {len(ratios)} entries, fewer than "
                         f"num_hidden_layers={n_main}")
    main, mtp = ratios[:n_main], ratios[n_main:]
    lead = 1
    while lead < n_main and main[lead] == main[0]:
        lead += 1
    rest = main[lead:] or main[:1]
    period = next(p for p in range(1, len(rest) + 1)       # the shortest repeating unit
                  if all(m == rest[i % p] for i, m in enumerate(rest)))
    cycle = rest[:period]
    new = [main[0]] + [cycle[i % len(cycle)] for i in range(n_layers_new - 1)]
    scale = lambda m: m if m in (0, CSA_RATIO) else hca_ratio
    return [scale(m) for m in new + mtp]


def shrink_v4_config(hf: dict, sizes: dict | None = None, hca_ratio: int = 16) -> dict:
    """A copy of DeepSeek-V4 config ``hf`` with the sizes of ``sizes`` (default
    ``MINI_V4_SIZES``) and the schedule of ``shrink_schedule``; see the module docstring for
    the rule. Errors name a field the rule would need and ``hf`` lacks, or a size field that
    is not one of V4's."""
    if hf.get("model_type") != "deepseek_v4":
        raise ValueError(f"shrink_v4_config needs a DeepSeek-V4 config (model_type "
                         f"'deepseek_v4'), got model_type={hf.get('model_type')!r}")
    sizes = dict(MINI_V4_SIZES if sizes is None else sizes)
    unknown = sorted(set(sizes) - set(hf))
    if unknown:
        raise ValueError(f"sizes names fields that the config does not have: {unknown}")
    if isinstance(hca_ratio, bool) or not isinstance(hca_ratio, int) or hca_ratio < 2 \
            or hca_ratio == CSA_RATIO:
        raise ValueError(f"hca_ratio must be an integer >= 2 other than {CSA_RATIO} (CSA's), "
                         f"got {hca_ratio!r}")
    for name in ("compress_ratios", "num_hidden_layers"):
        if name not in hf:
            raise ValueError(f"the config has no {name!r}, which the schedule rule needs")
    out = copy.deepcopy(hf)
    for name in ("rope_scaling", "quantization_config"):
        out.pop(name, None)
    out.update(sizes)
    out["compress_ratios"] = shrink_schedule(hf["compress_ratios"], hf["num_hidden_layers"],
                                             out["num_hidden_layers"], hca_ratio)
    out["_name_or_path"] = f"{hf.get('_name_or_path', 'DeepSeek-V4')} in miniature"
    return out


# ---------------------------------------------------------------------------------------
# The capstone's models and experiment (notebook 10 and tools/v4_capstone.py share them)
# ---------------------------------------------------------------------------------------
SEQ_LEN = MINI_V4_SIZES["max_position_embeddings"]
BIAS_UPDATE_RATE = 1e-3  # DeepSeek's aux-loss-free balancing, a training setting (not in config.json)
MTP_LOSS_WEIGHT = 0.3    # DeepSeek-V3's weight of the MTP loss early in training
# V4's blocks: FP8 with one scale per 128 x 128 (scaled to the mini experts' 64 x 32 matrices:
# 32 x 32), FP4 with one scale per 32 values along the input axis (as in V4).
QUANT_BLOCKS = {"fp8": (32, 32), "fp4": (32, 1)}


def v4_mini_config(name: str = "DeepSeek-V4-Flash") -> ModelConfig:
    """The model of ``shrink_v4_config`` applied to a shipped V4 config.json."""
    cfg = config_from_hf(shrink_v4_config(load_model_config(name)))
    return cfg.replace(moe=cfg.moe.replace(bias_update_rate=BIAS_UPDATE_RATE))


def v3_twin(v4: ModelConfig) -> ModelConfig:
    """DeepSeek-V3's shape at the mini model's sizes: the same experts (sigmoid scores with
    the selection bias instead of sqrt-softplus, no clamp), MLA instead of compressed
    attention (full causal attention over a latent cache), one residual stream, no hash
    layers, no MTP module."""
    return ModelConfig(
        vocab_size=v4.vocab_size, d_model=v4.d_model, n_layers=v4.n_layers,
        n_heads=v4.n_heads, d_ff=v4.d_ff, max_seq_len=v4.max_seq_len, rope_theta=v4.rope_theta,
        norm_eps=v4.norm_eps, tie_embeddings=False, attention="mla", q_lora_rank=v4.q_lora_rank,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=v4.qk_rope_head_dim,
        v_head_dim=16, moe=v4.moe.replace(router="deepseek_v3", swiglu_limit=0.0))


def dense_twin(v4: ModelConfig) -> ModelConfig:
    """A dense GQA transformer with the mini V4's width and depth and, by the choice of
    ``d_ff``, as many active parameters as it (to the nearest FFN unit)."""
    base = ModelConfig(vocab_size=v4.vocab_size, d_model=v4.d_model, n_layers=v4.n_layers,
                       n_heads=v4.n_heads, n_kv_heads=1, d_ff=1, max_seq_len=v4.max_seq_len,
                       rope_theta=v4.rope_theta, norm_eps=v4.norm_eps, tie_embeddings=False)
    gap = param_counts(v4)["active"] - param_counts(base)["active"]
    return base.replace(d_ff=1 + max(0, round(gap / (3 * v4.d_model * v4.n_layers))))


def capstone_train_config(seed: int = 0, steps: int = 300) -> TrainConfig:
    """Batches of 16 x 64 tokens of the course corpus, 300 steps (about 300k tokens), the
    first tenth of them warm-up."""
    return TrainConfig(steps=steps, batch_size=16, seq_len=SEQ_LEN, lr=3e-3, warmup_steps=steps // 10,
                       eval_every=100, eval_batches=8, seed=seed)


def mtp_acceptance(model, batches) -> float:
    """How often the MTP module's draft for token t+2 equals the main model's own greedy
    choice there, teacher-forced on ``batches`` (the true text is the prefix): the share of
    drafts a speculative decoder would keep, one draft token per step."""
    hits = total = 0
    for b in batches:
        inputs = jnp.asarray(b.inputs)
        out = model(inputs)
        hidden, next_tokens, _ = mtp_inputs(out.hidden, inputs, jnp.asarray(b.targets))
        logits, _, _ = model.mtp(model, hidden, next_tokens)   # [batch, seq - 1, vocab]
        draft = jnp.argmax(logits, -1)
        greedy = jnp.argmax(out.logits[:, 1:], -1)              # main model's choice at t+2
        hits += int(jnp.sum(draft == greedy))
        total += draft.size
    return hits / total


def run_capstone(cfg: ModelConfig, tcfg: TrainConfig, train_data, val_data, *,
                 quantize: bool = False, progress: bool = False) -> dict:
    """Train ``cfg`` with ``tcfg`` on the course corpus (model and batches seeded by
    ``tcfg.seed``) and measure it.

    Returns plain numbers: the final ``val_loss`` and its per-domain values (``domains``),
    the validation loss at every evaluation (``curve``), ``recall`` (exact match and answer loss on 256
    recall documents: a key found by content up to 50 tokens back, beyond the 16-token
    window of the mini V4), ``ms_per_step`` (after the first, compiling, step), parameter
    counts, and for a model with an MTP module ``mtp_acceptance``. With ``quantize`` also
    the validation loss after rounding the routed experts to FP8 and to FP4
    (``quant.quantize_experts`` with ``QUANT_BLOCKS``, each from the trained weights).
    """
    model = Transformer(cfg, rngs=nnx.Rngs(tcfg.seed))
    trainer = Trainer(model, tcfg, train_data, val_data)
    t0 = time.perf_counter()
    trainer.run(1, progress=progress)
    t1 = time.perf_counter()
    trainer.run(progress=progress)
    seconds = time.perf_counter() - t1
    final = trainer.history.val[-1]
    recall_docs = [d for d in generate_documents(CorpusConfig(), 2048, "val")
                   if d.domain == "recall"][:256]
    out = {"val_loss": final["val_loss"],
           "domains": {k.split("/", 1)[1]: v for k, v in final.items() if "/" in k},
           "curve": [{"step": r["step"], "val_loss": r["val_loss"]} for r in trainer.history.val],
           "recall": answer_metrics(model, recall_docs),
           "ms_per_step": 1e3 * seconds / (tcfg.steps - 1),
           "compile_s": t1 - t0,
           "params": {k: v for k, v in param_counts(cfg).items()
                      if k in ("total", "active", "mtp")}}
    if model.mtp is not None:
        out["mtp_acceptance"] = mtp_acceptance(
            model, eval_batches(val_data, tcfg.batch_size, tcfg.seq_len, tcfg.eval_batches))
    if quantize:
        state = nnx.state(model)
        for fmt, block in QUANT_BLOCKS.items():
            nnx.update(model, state)
            report = quantize_experts(model, fmt, block)
            out[f"val_loss_{fmt}"] = trainer.evaluate()["val_loss"]
            out[f"expert_bytes_{fmt}"] = report.stored_bytes
            out[f"expert_error_{fmt}"] = report.relative_error
        nnx.update(model, state)
    return out


def capstone_runs() -> dict:
    """The capstone's runs, name -> (ModelConfig, changes to ``capstone_train_config``): the
    mini V4 (AdamW, next-token loss only), its two twins, and one change to it at a time."""
    v4 = v4_mini_config()
    window_only = tuple(0 for _ in v4.compress_ratios)
    return {
        "V4 (mini)": (v4, {}),
        "V3-shaped": (v3_twin(v4), {}),
        "dense": (dense_twin(v4), {}),
        "plain residual (hc_mult 1)": (v4.replace(hc_mult=1), {}),
        "learned routing in layer 0": (v4.replace(num_hash_layers=0), {}),
        "window only (no CSA/HCA)": (v4.replace(compress_ratios=window_only, index_topk=None), {}),
        "with MTP loss": (v4, {"mtp_loss_weight": MTP_LOSS_WEIGHT}),
        "Muon": (v4, {"optimizer": "muon"}),
    }
