"""Cost calculator: from a Hugging Face ``config.json`` to parameters, FLOPs, KV cache,
roofline tokens/s and dollars per million tokens.

The calculator itself uses only the standard library (no JAX, NumPy or pickle); it shares
one formula with the model code, the per-layer size of DeepSeek-V4's compressed cache
(:func:`minimoe.long_context.kv_cache.compressed_kv_values_per_token`).

The model, in four steps, one module each
-----------------------------------------
1. **Count** (:mod:`.configs`, :mod:`.spec`). :func:`from_hf_config` reads a config and
   counts every weight the family's implementation creates; the result is a frozen
   :class:`ModelSpec`.

   * ``total_params``: every weight stored once (a tied embedding/head counts once).
   * ``active_params``: the weights one token's forward pass multiplies by: everything except
     the input embedding table (a lookup, not a matmul) and the routed experts the token did
     not pick. The output head counts. ``embedding_params`` is reported separately so the
     other convention (embedding included) is one addition away:
     :attr:`ModelSpec.active_params_with_embedding`.
   * Multi-token-prediction modules are in neither number; they are ``mtp_params``. These
     are the conventions of DeepSeek's published 671B / 37B (V3) and 1.6T / 49B (V4-Pro).

2. **FLOPs and KV cache** (:mod:`.spec`). One token costs ``2 x (active matmul weights)``
   FLOPs plus the attention over its context; each layer's cache is described by a
   :class:`LayerAttention` (full, sliding, linear-attention state, or V4's compressed
   CSA/HCA layers), whose long-context slope is :meth:`ModelSpec.kv_bytes_per_token`.

3. **Roofline** (:mod:`.hardware`, :mod:`.serving`). A step takes the longer of its compute
   time (each matmul at the peak of its number format, :class:`Precision`) and its memory
   time (weights touched plus KV caches over HBM bandwidth); :func:`deployment_step` adds a
   serving unit's data-parallel attention and its all-to-all time.

4. **Money** (:mod:`.serving`, :mod:`.published`). ``$ per million tokens = $ per GPU-hour /
   (3600 x tokens/s per GPU x utilisation) x 1e6``; published figures (DeepSeek's serving
   day, dated API prices in ``published_prices.json``) are data with their sources, quoted,
   never computed.
"""

from .configs import (SUPPORTED_MODEL_TYPES, from_hf_config, list_model_configs,
                      load_model_config, load_spec, summary_table)
from .hardware import (BF16, FP4_EXPERTS, FP8, FORMATS, HARDWARE, Hardware, Precision,
                       as_precision, format_flops, peak_flops)
from .published import (DEEPSEEK_SERVING_DAY, DEEPSEEK_V4_PUBLISHED, MTP_ACCEPTANCE,
                        PublishedModelFigures, PublishedPrice, PublishedServingDay,
                        percent_cheaper, price_on, price_table, serving_day_costs)
from .serving import (DecodeStep, Deployment, DeploymentStep, compute_bound_batch,
                      compute_seconds, decode_step, decode_step_time, decode_tokens_per_s,
                      deployment_max_sequences, deployment_step, dollars_per_million_tokens,
                      expected_experts_touched, gpus_to_hold, max_batch, prefill_tokens_per_s)
from .spec import LayerAttention, ModelSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelSpec", "LayerAttention", "from_hf_config",
    "list_model_configs", "load_model_config", "load_spec", "summary_table",
    "Hardware", "HARDWARE", "Precision", "BF16", "FP8", "FP4_EXPERTS", "FORMATS",
    "as_precision", "format_flops", "peak_flops",
    "expected_experts_touched", "compute_seconds", "DecodeStep", "decode_step",
    "decode_step_time", "decode_tokens_per_s", "compute_bound_batch", "prefill_tokens_per_s",
    "gpus_to_hold", "max_batch", "dollars_per_million_tokens",
    "Deployment", "DeploymentStep", "deployment_step", "deployment_max_sequences",
    "PublishedServingDay", "DEEPSEEK_SERVING_DAY", "serving_day_costs", "MTP_ACCEPTANCE",
    "PublishedModelFigures", "DEEPSEEK_V4_PUBLISHED",
    "PublishedPrice", "price_table", "price_on", "percent_cheaper",
]
