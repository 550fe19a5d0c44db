"""Accelerators (published peaks, each with its source) and number formats.

:class:`Precision` says how many bytes each part of a model takes (routed experts, the
other weights, the KV cache) and so which peak its matmuls run at: :func:`peak_flops`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from ..validation import positive_number


@dataclass(frozen=True)
class Hardware:
    """One accelerator's published peaks.

    Attributes:
        name: full name.
        bf16_flops: dense BF16 peak, FLOP/s.
        fp8_flops: dense FP8 peak, FLOP/s (``None`` where the chip has no FP8 path).
        fp4_flops: dense FP4 peak, FLOP/s (``None`` where the chip has no FP4 path: Hopper
            H100/H800/H200 have none; FP4 weights there are widened to FP8 or BF16 before
            the matmul, so they save bytes, not FLOP time).
        hbm_bandwidth: HBM bandwidth, bytes/s.
        hbm_bytes: HBM capacity, bytes.
        source: where the figures come from.
        third_party: ``True`` when the figures are reports by others, not the vendor's own.
        interconnect_bandwidth: scale-up link bandwidth per GPU (NVLink as the vendor
            quotes it, both directions summed), bytes/s, or ``None``.
        nvlink_effective: the intra-node bandwidth per GPU one direction reaches in
            practice, bytes/s, or ``None`` where not published.
        scaleout_bandwidth: the inter-node (InfiniBand/RoCE) bandwidth per GPU, one
            direction, bytes/s, or ``None`` where not published.
    """

    name: str
    bf16_flops: float
    fp8_flops: float | None
    hbm_bandwidth: float
    hbm_bytes: float
    source: str
    third_party: bool = False
    interconnect_bandwidth: float | None = None
    fp4_flops: float | None = None
    nvlink_effective: float | None = None
    scaleout_bandwidth: float | None = None


_NVIDIA_SHEET = "NVIDIA {} datasheet (dense Tensor Core peaks, without sparsity)"
_ASCEND_NOTE = ("third-party reports (press and analyst estimates); Huawei publishes no full "
                "datasheet, figures are approximate")
_DSV3_LINKS = ("; achieved bandwidths NVLink 160 GB/s and InfiniBand 50 GB/s per GPU: "
               "DeepSeek-V3 technical report, section 3.2.2")

HARDWARE: Mapping[str, Hardware] = MappingProxyType({
    "H100": Hardware("NVIDIA H100 SXM", 989e12, 1979e12, 3.35e12, 80e9,
                     _NVIDIA_SHEET.format("H100 SXM5") + "; also 'How to Scale Your Model'; "
                     "Hopper has no FP4 Tensor Core path",
                     interconnect_bandwidth=900e9, scaleout_bandwidth=50e9),
    "H800": Hardware("NVIDIA H800 SXM", 989e12, 1979e12, 3.35e12, 80e9,
                     "H100 SXM compute and memory with NVLink cut to 400 GB/s (export variant); "
                     "DeepSeek-V3 technical report, section 3.1" + _DSV3_LINKS
                     + "; Hopper has no FP4 Tensor Core path",
                     interconnect_bandwidth=400e9, nvlink_effective=160e9,
                     scaleout_bandwidth=50e9),
    "H200": Hardware("NVIDIA H200 SXM", 989e12, 1979e12, 4.8e12, 141e9,
                     _NVIDIA_SHEET.format("H200") + "; Hopper has no FP4 Tensor Core path",
                     interconnect_bandwidth=900e9, scaleout_bandwidth=50e9),
    "B200": Hardware("NVIDIA B200", 2.25e15, 4.5e15, 8e12, 192e9,
                     _NVIDIA_SHEET.format("HGX/DGX B200") + " (FP4 9 PFLOP/s dense); some DGX "
                     "sheets list 180 GB usable", interconnect_bandwidth=1.8e12,
                     fp4_flops=9e15, scaleout_bandwidth=50e9),
    "Ascend-910B": Hardware("Huawei Ascend 910B", 320e12, None, 1.6e12, 64e9,
                            _ASCEND_NOTE, third_party=True),
    "Ascend-910C": Hardware("Huawei Ascend 910C", 780e12, None, 3.2e12, 128e9,
                            _ASCEND_NOTE + "; two 910B-class dies in one package",
                            third_party=True),
})


@dataclass(frozen=True)
class Precision:
    """Bytes per value of each part of a served model.

    Attributes:
        routed_experts: bytes per routed-expert weight (0.5 + 1/32 for FP4 e2m1 with one
            8-bit scale per 32 values, as in DeepSeek-V4's released experts).
        other_weights: bytes per other weight (1 for FP8; block scales add ~1/16384).
        kv_cache: bytes per cached value.
        routed_compute, other_compute: the number format the matmuls run in, 'bf16',
            'fp8' or 'fp4'; a format the chip lacks falls back to the next wider one.
        attention_compute: the format of the score and value products ('bf16': DeepSeek
            runs core MLA in BF16).
    """

    routed_experts: float = 2.0
    other_weights: float = 2.0
    kv_cache: float = 2.0
    routed_compute: str = "bf16"
    other_compute: str = "bf16"
    attention_compute: str = "bf16"

    def __post_init__(self):
        for name in ("routed_experts", "other_weights", "kv_cache"):
            positive_number(name, getattr(self, name))
        for name in ("routed_compute", "other_compute", "attention_compute"):
            if getattr(self, name) not in FORMATS:
                raise ValueError(f"{name} must be one of {FORMATS}, got {getattr(self, name)!r}")


FORMATS = ("bf16", "fp8", "fp4")

#: BF16 everywhere.
BF16 = Precision()
#: FP8 weights, BF16 KV cache and attention (DeepSeek-V3's released weights and serving).
FP8 = Precision(1.0, 1.0, 2.0, "fp8", "fp8", "bf16")
#: DeepSeek-V4's released instruct checkpoints: FP4 routed experts (one e8m0 scale per 32),
#: FP8 elsewhere, BF16 KV cache and attention.
FP4_EXPERTS = Precision(0.5 + 1 / 32, 1.0, 2.0, "fp4", "fp8", "bf16")


def as_precision(bytes_per_param, bytes_per_value: float | None = None) -> Precision:
    """A :class:`Precision` from a number of bytes per weight (every weight that size, and
    every matmul, attention included, in FP8 for 1 byte or less, else BF16: the uniform
    model of a single ``bytes_per_param``) or a :class:`Precision` itself
    (``bytes_per_value`` then overrides its KV size only if given)."""
    if isinstance(bytes_per_param, Precision):
        if bytes_per_value is None:
            return bytes_per_param
        return replace(bytes_per_param, kv_cache=bytes_per_value)
    positive_number("bytes_per_param", bytes_per_param)
    fmt = "fp8" if bytes_per_param <= 1 else "bf16"
    return Precision(bytes_per_param, bytes_per_param,
                     2.0 if bytes_per_value is None else bytes_per_value, fmt, fmt, fmt)


def format_flops(hw: Hardware, fmt: str) -> float:
    """The peak of format ``fmt`` on ``hw``, falling back to the next wider format the chip
    has (FP4 -> FP8 -> BF16)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "fp4" and hw.fp4_flops is not None:
        return hw.fp4_flops
    if fmt in ("fp4", "fp8") and hw.fp8_flops is not None:
        return hw.fp8_flops
    return hw.bf16_flops


def peak_flops(hw: Hardware, bytes_per_param: float = 2) -> float:
    """The peak a matmul with ``bytes_per_param``-byte weights runs at: FP8 for 1 byte or
    less (where the chip has FP8), BF16 otherwise."""
    return format_flops(hw, "fp8" if bytes_per_param <= 1 else "bf16")
