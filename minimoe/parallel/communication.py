"""What expert parallelism sends: the all-to-all bytes per device, from the formula and as traced.

``all_to_all_volume`` counts the bytes of ``expert_parallel_dispatch``'s two all-to-alls
(four with the backward pass); ``traced_all_to_alls`` reads the operands JAX actually builds,
so the formula is checked against the program (notebook 09). ``bytes_per_token`` is the
large-batch limit the cost calculator uses for serving (``minimoe.cost.serving``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from minimoe.parallel.expert_parallel import device_capacity
from minimoe.parallel.mesh import _divisors


class AllToAllVolume(NamedTuple):
    """Bytes one device moves in the all-to-alls of one MoE layer, one step.

    capacity: slots per (device, expert).
    operand_bytes: size of one all_to_all operand on one device, ``E * C * d * bytes``
        (the dispatch buffer; the combine buffer has the same size).
    sent_bytes: the part of one operand that leaves the device, ``operand * (ep - 1) / ep``
        (the block for its own experts stays where it is).
    n_all_to_all: 2 in a forward pass (dispatch, combine); 4 with the backward pass, whose
        gradients travel the same routes in reverse.
    total_sent_bytes: ``n_all_to_all * sent_bytes``.
    """

    capacity: int
    operand_bytes: int
    sent_bytes: int
    n_all_to_all: int
    total_sent_bytes: int


def all_to_all_volume(tokens_per_device: int, top_k: int, d_model: int, n_experts: int,
                      ep: int, *, capacity_factor: float | None = 1.0,
                      bytes_per_element: int = 4, backward: bool = False) -> AllToAllVolume:
    """Communication of ``expert_parallel_dispatch`` per device, per MoE layer, per step.

    With ``C = ceil(capacity_factor * T_l * top_k / E)`` slots per (device, expert), a
    device's buffer holds ``E * C ≈ capacity_factor * T_l * top_k`` rows of ``d_model``
    values: every token is copied ``top_k`` times, padded by the capacity factor. Of it,
    the fraction ``(ep - 1) / ep`` goes to other devices.
    """
    for name, value in (("tokens_per_device", tokens_per_device), ("top_k", top_k),
                        ("d_model", d_model), ("n_experts", n_experts), ("ep", ep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_experts % ep:
        raise ValueError(f"n_experts={n_experts} must be divisible by ep={ep}; allowed: "
                         f"{_divisors(n_experts)}")
    capacity = device_capacity(tokens_per_device, top_k, n_experts, capacity_factor)
    operand = n_experts * capacity * d_model * bytes_per_element
    sent = operand * (ep - 1) // ep
    n = 4 if backward else 2
    return AllToAllVolume(capacity, operand, sent, n, n * sent)


def bytes_per_token(top_k: int, d_model: int, ep: int, *, bytes_per_element: int = 4,
                    capacity_factor: float = 1.0) -> float:
    """All-to-all bytes per token per MoE layer (forward: dispatch + combine), sent off-device:
    ``2 * capacity_factor * top_k * d_model * bytes * (ep - 1) / ep``.

    The large-batch limit of ``all_to_all_volume(...).total_sent_bytes / tokens_per_device``
    (capacity rounding vanishes); ``capacity_factor=1`` is a system that sends exactly the
    routed copies, no padding.
    """
    return 2 * capacity_factor * top_k * d_model * bytes_per_element * (ep - 1) / ep


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):  # a Jaxpr
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value, "consts"):  # a ClosedJaxpr
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def traced_all_to_alls(fn, *args, **kwargs) -> list[jax.ShapeDtypeStruct]:
    """The operands of every ``all_to_all`` that ``fn(*args, **kwargs)`` performs, as traced.

    Inside ``shard_map`` shapes are per device, so the byte sizes of these operands are what
    one device hands to each all-to-all -- the numbers ``all_to_all_volume`` predicts.
    """
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "all_to_all":
                aval = eqn.invars[0].aval
                found.append(jax.ShapeDtypeStruct(aval.shape, aval.dtype))
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
    return found


def nbytes(shape_dtype: jax.ShapeDtypeStruct) -> int:
    """Bytes of an array of this shape and dtype."""
    return math.prod(shape_dtype.shape) * np.dtype(shape_dtype.dtype).itemsize
