"""The serving model: rooflines of decode and prefill steps, memory, and dollars.

Two levels of detail:

* :func:`decode_step` and friends: the plain roofline of ``n_gpus`` that share weights,
  caches and FLOPs perfectly, with no communication. A step takes
  ``max(compute time, memory time)``.
* :func:`deployment_decode_step` and :func:`deployment_prefill`: a serving unit laid out
  the way DeepSeek published its own (attention and shared experts data-parallel, so every
  GPU reads its own copy of those weights; routed experts spread over the unit; tokens
  moved to their experts and back by all-to-all), with the matmuls priced at the peak of
  their own number format and the all-to-all time over the unit's links.

Everything is an idealised bound: kernels at peak, no launch overheads, perfectly balanced
routing. How far a real system falls short is measured against published figures, never
assumed (see notebook 08).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..validation import non_negative, positive_number
from .hardware import Hardware, Precision, as_precision, format_flops
from .spec import ModelSpec


def expected_experts_touched(n_experts: int, top_k: int, batch: float) -> float:
    """Expected number of distinct experts ``batch`` tokens pick in one MoE layer, each token
    picking ``top_k`` of ``n_experts`` uniformly at random:

        ``E * (1 - (1 - k / E) ** batch)``

    (one expert is missed by one token with probability ``1 - k/E``; by all ``batch`` tokens
    independently with that power). One token gives ``k``; a huge batch gives ``E``. Real
    routers are not uniform, so this is the touched count of a perfectly balanced router.
    """
    positive_number("n_experts", n_experts)
    positive_number("top_k", top_k)
    non_negative("batch", batch)
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) must be <= n_experts ({n_experts})")
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** batch)


def _matmul_split(spec: ModelSpec) -> tuple[float, float]:
    """(routed-expert, other) matrix weights one token multiplies by."""
    routed = spec.n_moe_layers * spec.n_experts_per_tok * spec.expert_matrix_params
    return routed, spec.active_matmul_params - routed


def compute_seconds(spec: ModelSpec, hw: Hardware, tokens: float, context_len: float,
                    precision: Precision, absorbed: bool = True,
                    compute_efficiency: float = 1.0) -> float:
    """Seconds for ``tokens`` tokens' forward FLOPs at ``context_len``, each part at the
    peak of its own format (:func:`minimoe.cost.hardware.format_flops`):

        ``tokens * (2 * routed / peak(routed_compute) + 2 * other / peak(other_compute)
                    + attention_flops(context_len) / peak(attention_compute))``
    """
    routed, other = _matmul_split(spec)
    per_token = (2.0 * routed / format_flops(hw, precision.routed_compute)
                 + 2.0 * other / format_flops(hw, precision.other_compute)
                 + spec.attention_flops(context_len, absorbed)
                 / format_flops(hw, precision.attention_compute))
    return tokens * per_token / compute_efficiency


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of the roofline model (all times in seconds, for the whole step).

    Attributes:
        flops: FLOPs of the step, ``batch * flops_per_token(context_len, absorbed=True)``.
        bytes: bytes read from HBM (weights touched + KV caches).
        weight_bytes, kv_bytes: the two parts of ``bytes``.
        experts_touched: expected distinct routed experts per MoE layer (0 for dense).
        compute_s, memory_s: compute time (each part at its format's peak, over ``n_gpus``
            and ``compute_efficiency``) and ``bytes / (n_gpus * hbm_bandwidth *
            bandwidth_efficiency)``.
        time_s: ``max(compute_s, memory_s)``.
        bound: 'compute' or 'memory'.
    """

    flops: float
    bytes: float
    weight_bytes: float
    kv_bytes: float
    experts_touched: float
    compute_s: float
    memory_s: float
    time_s: float
    bound: str


def decode_step(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                bytes_per_param=2, bytes_per_value: float | None = None, n_gpus: int = 1,
                compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0) -> DecodeStep:
    """Roofline of one decode step: ``batch`` sequences each add one token at
    ``context_len`` tokens of context.

        compute_s = batch * FLOP time per token (each part at its format's peak) / n_gpus
        weights   = always_read_params + n_moe_layers * touched * expert_params
        touched   = E * (1 - (1 - k/E) ** batch)                  (expected_experts_touched)
        bytes     = weight bytes + batch * kv_bytes(context_len, bytes_per_value)
        memory_s  = bytes / (n_gpus * hbm_bandwidth * bandwidth_efficiency)
        time_s    = max(compute_s, memory_s)

    ``bytes_per_param`` is a number (every weight that size; 1 byte or less runs at the FP8
    peak) or a :class:`~minimoe.cost.Precision` (routed experts, other weights and KV at
    their own sizes and formats); ``bytes_per_value`` overrides the KV size (default 2, or
    the precision's). MLA attention is counted in its absorbed form, the one that reads the
    latent cache these KV bytes describe. The ``n_gpus`` share weights, caches and FLOPs
    perfectly; communication is ignored (see :func:`deployment_decode_step` for both). This
    is the roofline of "How to Scale Your Model" (Austin et al., the JAX scaling book),
    chapters on rooflines and inference.
    """
    positive_number("batch", batch)
    non_negative("context_len", context_len)
    positive_number("n_gpus", n_gpus)
    positive_number("compute_efficiency", compute_efficiency)
    positive_number("bandwidth_efficiency", bandwidth_efficiency)
    p = as_precision(bytes_per_param, bytes_per_value)
    touched = 0.0
    weight_bytes = spec.always_read_params * p.other_weights
    if spec.is_moe:
        touched = expected_experts_touched(spec.n_routed_experts, spec.n_experts_per_tok, batch)
        weight_bytes += spec.n_moe_layers * touched * spec.expert_params * p.routed_experts
    kv = batch * spec.kv_bytes(context_len, p.kv_cache)
    flops = batch * spec.flops_per_token(context_len, absorbed=True)
    compute_s = compute_seconds(spec, hw, batch, context_len, p, True,
                                compute_efficiency) / n_gpus
    memory_s = (weight_bytes + kv) / (n_gpus * hw.hbm_bandwidth * bandwidth_efficiency)
    return DecodeStep(flops, weight_bytes + kv, weight_bytes, kv, touched, compute_s, memory_s,
                      max(compute_s, memory_s), "compute" if compute_s >= memory_s else "memory")


def decode_step_time(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                     bytes_per_param=2, bytes_per_value: float | None = None, n_gpus: int = 1,
                     compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0) -> float:
    """Seconds per decode step, ``max(compute_s, memory_s)``; see :func:`decode_step`."""
    return decode_step(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, n_gpus,
                       compute_efficiency, bandwidth_efficiency).time_s


def decode_tokens_per_s(spec: ModelSpec, hw: Hardware, batch: int, context_len: int,
                        bytes_per_param=2, bytes_per_value: float | None = None, n_gpus: int = 1,
                        compute_efficiency: float = 1.0,
                        bandwidth_efficiency: float = 1.0) -> float:
    """Output tokens per second **per GPU**: ``batch / decode_step_time / n_gpus``.

    Grows with ``batch`` while memory-bound (the weights are read once for the whole batch)
    and levels off once compute-bound (or earlier, if KV reads dominate)."""
    t = decode_step_time(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, n_gpus,
                         compute_efficiency, bandwidth_efficiency)
    return batch / t / n_gpus


def compute_bound_batch(spec: ModelSpec, hw: Hardware, context_len: int,
                        bytes_per_param=2, bytes_per_value: float | None = None,
                        compute_efficiency: float = 1.0, bandwidth_efficiency: float = 1.0,
                        max_batch_size: int = 10**9) -> int | None:
    """The smallest decode batch at which :func:`decode_step` turns compute-bound, or
    ``None`` if it never does (up to ``max_batch_size``).

    Each extra sequence adds its FLOPs but only its KV cache to the bytes, while the weights
    are shared by the batch: past this batch, reading the weights no longer sets the pace. A
    dense model reaches it near ``peak / bandwidth`` FLOPs per weight byte; an MoE only once
    the batch touches most of its experts, i.e. much later. When one token's KV read takes
    longer than its compute (long context), no batch is large enough and the answer is
    ``None``. (``n_gpus`` cancels: it divides both times.)
    """
    def bound(batch: int) -> str:
        return decode_step(spec, hw, batch, context_len, bytes_per_param, bytes_per_value, 1,
                           compute_efficiency, bandwidth_efficiency).bound

    if bound(max_batch_size) == "memory":
        return None
    lo, hi = 0, 1          # bound(lo) is memory (or lo == 0), bound(hi) is compute
    while bound(hi) == "memory":
        lo, hi = hi, min(2 * hi, max_batch_size)
    while hi - lo > 1:     # compute minus memory time is convex in batch: one crossing
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bound(mid) == "memory" else (lo, mid)
    return hi


def prefill_tokens_per_s(spec: ModelSpec, hw: Hardware, prompt_len: int,
                         bytes_per_param=2, compute_efficiency: float = 1.0) -> float:
    """Prompt tokens per second **per GPU**, taking prefill as compute-bound:

        ``prompt_len / (seconds for prefill_flops(prompt_len))``

    with the matmuls at their formats' peaks and attention in the plain (non-absorbed)
    form, at ``peak_flops(hw, bytes_per_param)`` for a number (a prompt is thousands of
    tokens per weight read, far past the roofline's ridge point)."""
    p = as_precision(bytes_per_param)
    routed, other = _matmul_split(spec)
    attention = spec.prefill_flops(prompt_len) - prompt_len * 2.0 * spec.active_matmul_params
    seconds = (prompt_len * (2.0 * routed / format_flops(hw, p.routed_compute)
                             + 2.0 * other / format_flops(hw, p.other_compute))
               + attention / format_flops(hw, p.attention_compute))
    return prompt_len * compute_efficiency / seconds


def gpus_to_hold(spec: ModelSpec, hw: Hardware, bytes_per_param=2, batch: int = 1,
                 context_len: int = 0, bytes_per_value: float | None = None,
                 usable_fraction: float = 1.0) -> int:
    """GPUs whose HBM holds the weights and ``batch`` KV caches of ``context_len`` tokens:

        ``ceil((weight_bytes + batch * kv_bytes(context_len)) / (hbm_bytes * usable_fraction))``

    Activations and framework overhead are left out (lower ``usable_fraction`` for them)."""
    non_negative("batch", batch)
    positive_number("usable_fraction", usable_fraction)
    p = as_precision(bytes_per_param, bytes_per_value)
    need = spec.weight_bytes(p) + batch * spec.kv_bytes(context_len, p.kv_cache)
    return max(1, math.ceil(need / (hw.hbm_bytes * usable_fraction)))


def max_batch(spec: ModelSpec, hw: Hardware, n_gpus: int, context_len: int,
              bytes_per_param=2, bytes_per_value: float | None = None,
              usable_fraction: float = 1.0) -> int:
    """Most sequences of ``context_len`` tokens whose KV caches fit in the HBM of ``n_gpus``
    beside the weights (the converse of :func:`gpus_to_hold`):

        ``floor((n_gpus * hbm_bytes * usable_fraction - weight_bytes) / kv_bytes(context_len))``

    0 when the weights alone do not fit. This is what caps the decode batch at long context,
    and why a smaller KV cache per token buys a larger batch."""
    positive_number("n_gpus", n_gpus)
    positive_number("context_len", context_len)
    positive_number("usable_fraction", usable_fraction)
    p = as_precision(bytes_per_param, bytes_per_value)
    free = n_gpus * hw.hbm_bytes * usable_fraction - spec.weight_bytes(p)
    if free <= 0:
        return 0
    return int(free // spec.kv_bytes(context_len, p.kv_cache))


def dollars_per_million_tokens(tokens_per_s_per_gpu: float, dollars_per_gpu_hour: float,
                               utilisation: float = 1.0) -> float:
    """Cost of a million tokens on GPUs rented by the hour:

        ``dollars_per_gpu_hour / (3600 * tokens_per_s_per_gpu * utilisation) * 1e6``

    ``utilisation`` is the fraction of paid hours the GPU spends producing at that rate."""
    positive_number("tokens_per_s_per_gpu", tokens_per_s_per_gpu)
    non_negative("dollars_per_gpu_hour", dollars_per_gpu_hour)
    positive_number("utilisation", utilisation)
    return dollars_per_gpu_hour / (3600.0 * tokens_per_s_per_gpu * utilisation) * 1e6


# ---------------------------------------------------------------------------------------
# A serving unit laid out as DeepSeek published (attention data-parallel, experts spread)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    """How one serving unit is laid out.

    Attributes:
        n_gpus: GPUs in the unit: the expert-parallel degree, and the data-parallel degree
            of attention and shared experts (every GPU holds its own copy of those).
        gpus_per_node: GPUs sharing one node's NVLink; the other ``n_gpus - gpus_per_node``
            are reached over the scale-out network.
        routed_slots_per_gpu: routed experts each GPU hosts per MoE layer (redundant copies
            of hot experts included), e.g. 2 in DeepSeek's decode unit, 9 in its prefill unit.
    """

    n_gpus: int
    gpus_per_node: int
    routed_slots_per_gpu: int

    def __post_init__(self):
        for name in ("n_gpus", "gpus_per_node", "routed_slots_per_gpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_gpus % self.gpus_per_node:
            raise ValueError(f"n_gpus ({self.n_gpus}) must be a multiple of gpus_per_node "
                             f"({self.gpus_per_node})")

    @property
    def n_nodes(self) -> int:
        return self.n_gpus // self.gpus_per_node

    @property
    def intra_node_fraction(self) -> float:
        """Share of another GPU's traffic that stays inside the node (uniform routing)."""
        return (self.gpus_per_node - 1) / (self.n_gpus - 1) if self.n_gpus > 1 else 0.0


@dataclass(frozen=True)
class DeploymentStep:
    """One step of a serving unit, per GPU (seconds for the whole step).

    Attributes:
        tokens_per_gpu: token positions a GPU's attention processes in the step.
        weight_bytes, kv_bytes: bytes each GPU reads from HBM (its replicated attention /
            shared / dense weights and its hosted routed experts; its own sequences' caches).
        hbm_bytes_used: weights plus KV caches held per GPU.
        compute_s, memory_s, comm_s: the three times: FLOPs at their formats' peaks, HBM
            reads, the all-to-all over NVLink (intra-node share) and the scale-out network
            (the rest), each link at its own bandwidth, the two links in parallel.
        overlapped_s: ``max(compute_s, memory_s, comm_s)`` (communication fully hidden
            behind computation, as DeepSeek's two micro-batches aim for).
        serial_s: ``max(compute_s, memory_s) + comm_s`` (nothing hidden).
    """

    tokens_per_gpu: float
    weight_bytes: float
    kv_bytes: float
    hbm_bytes_used: float
    compute_s: float
    memory_s: float
    comm_s: float
    overlapped_s: float
    serial_s: float


def _deployment_weight_bytes(spec: ModelSpec, unit: Deployment, p: Precision) -> float:
    routed = spec.n_moe_layers * unit.routed_slots_per_gpu * spec.expert_params
    return spec.always_read_params * p.other_weights + routed * p.routed_experts


def deployment_step(spec: ModelSpec, hw: Hardware, unit: Deployment, sequences_per_gpu: float,
                    tokens_per_sequence: float, context_len: float, precision: Precision,
                    alltoall_bytes_per_token: float, absorbed: bool,
                    read_kv: bool = True) -> DeploymentStep:
    """One step of ``unit``: every GPU runs attention for its own ``sequences_per_gpu``
    sequences (``tokens_per_sequence`` positions each) and hosts ``routed_slots_per_gpu``
    routed experts per MoE layer.

    * weights read per GPU: every non-routed weight (attention, shared and dense FFNs,
      routers, norms, head: data-parallel, one copy per GPU) plus its hosted experts;
    * KV read per GPU: its own sequences' caches at ``context_len`` (``read_kv``);
    * FLOPs per GPU: its tokens' non-routed matmuls and attention, plus an even share
      (1 / n_gpus) of the unit's routed-expert FLOPs;
    * all-to-all per GPU: ``tokens * n_moe_layers * alltoall_bytes_per_token`` leaving the
      GPU (dispatch + combine, e.g. from :func:`minimoe.parallel.bytes_per_token`), the
      intra-node share over ``hw.nvlink_effective``, the rest over
      ``hw.scaleout_bandwidth``.
    """
    positive_number("sequences_per_gpu", sequences_per_gpu)
    positive_number("tokens_per_sequence", tokens_per_sequence)
    non_negative("context_len", context_len)
    non_negative("alltoall_bytes_per_token", alltoall_bytes_per_token)
    if hw.scaleout_bandwidth is None:
        raise ValueError(f"{hw.name} has no published scale-out bandwidth; "
                         "deployment_step needs one")
    tokens = sequences_per_gpu * tokens_per_sequence
    weights = _deployment_weight_bytes(spec, unit, precision)
    kv_held = sequences_per_gpu * spec.kv_bytes(context_len, precision.kv_cache)
    kv = kv_held if read_kv else 0.0
    compute_s = compute_seconds(spec, hw, tokens, context_len, precision, absorbed)
    memory_s = (weights + kv) / hw.hbm_bandwidth
    sent = tokens * spec.n_moe_layers * alltoall_bytes_per_token
    intra = sent * unit.intra_node_fraction
    nvlink = hw.nvlink_effective or hw.interconnect_bandwidth or hw.scaleout_bandwidth
    comm_s = max(intra / nvlink, (sent - intra) / hw.scaleout_bandwidth)
    return DeploymentStep(tokens, weights, kv, weights + kv_held, compute_s, memory_s, comm_s,
                          max(compute_s, memory_s, comm_s),
                          max(compute_s, memory_s) + comm_s)


def deployment_max_sequences(spec: ModelSpec, hw: Hardware, unit: Deployment, context_len: int,
                             precision: Precision, usable_fraction: float = 1.0) -> int:
    """Most sequences of ``context_len`` tokens one GPU of ``unit`` holds beside its weights:
    ``floor((hbm_bytes * usable_fraction - weight bytes per GPU) / kv_bytes(context_len))``."""
    positive_number("context_len", context_len)
    positive_number("usable_fraction", usable_fraction)
    free = hw.hbm_bytes * usable_fraction - _deployment_weight_bytes(spec, unit, precision)
    return max(0, int(free // spec.kv_bytes(context_len, precision.kv_cache)))
