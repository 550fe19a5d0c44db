"""The device mesh of expert parallelism and where each array lives on it.

``make_mesh`` builds a 2-D grid of devices with axes ``data`` and ``expert``; the batch is split
over both, the stacked expert weights over ``expert`` (``state_shardings``). ``shard_map`` is
JAX's own, called the same way on every supported jax version.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
EXPERT = "expert"
BATCH_AXES = (DATA, EXPERT)  # the batch is split over every device of the mesh
EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


# ----------------------------------------------------------------------------------------
# shard_map across JAX versions
# ----------------------------------------------------------------------------------------

# jax >= 0.7 has ``jax.shard_map``; older versions only ``jax.experimental.shard_map``. The
# switch for the replication check was renamed from ``check_rep`` to ``check_vma``.
_shard_map = getattr(jax, "shard_map", None)
if _shard_map is None:
    from jax.experimental.shard_map import shard_map as _shard_map
_CHECK_ARG = "check_vma" if "check_vma" in inspect.signature(_shard_map).parameters else "check_rep"


def shard_map(f, mesh: Mesh, in_specs, out_specs):
    """``shard_map(f)`` on ``mesh``, replication check on: the same call on every jax version.

    ``f`` runs once per device on that device's slices of the inputs (as cut by
    ``in_specs``); its results are put together as ``out_specs`` say.
    """
    return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_ARG: True})


# ----------------------------------------------------------------------------------------
# The mesh
# ----------------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def make_mesh(expert: int, data: int | None = None, devices=None) -> Mesh:
    """A ``data × expert`` device mesh (axis names ``DATA`` and ``EXPERT``).

    expert: expert-parallel degree (how many devices share the experts of one layer);
    data: data-parallel degree, by default ``len(devices) // expert``;
    devices: the devices to use, by default ``jax.devices()``. ``data * expert`` must equal
    their number: every device gets a place, none is left idle.

    Device ``data=i, expert=j`` is ``devices[i * expert + j]``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if isinstance(expert, bool) or not isinstance(expert, int) or expert < 1:
        raise ValueError(f"expert (the expert-parallel degree) must be a positive integer, "
                         f"got {expert!r}")
    if data is None:
        if n % expert:
            raise ValueError(
                f"expert={expert} does not divide the {n} available devices; allowed: "
                f"{_divisors(n)} (set XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                f"before importing jax to simulate 8 devices on a CPU)")
        data = n // expert
    if isinstance(data, bool) or not isinstance(data, int) or data < 1:
        raise ValueError(f"data (the data-parallel degree) must be a positive integer, "
                         f"got {data!r}")
    if data * expert != n:
        raise ValueError(
            f"a mesh of data={data} x expert={expert} = {data * expert} devices does not match "
            f"the {n} available devices; choose data * expert == {n} (set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=8 before importing jax to "
            f"simulate 8 devices on a CPU)")
    return Mesh(np.array(devices, dtype=object).reshape(data, expert), (DATA, EXPERT))


def expert_degree(mesh: Mesh) -> int:
    """Size of the mesh's ``expert`` axis (the expert-parallel degree ``ep``)."""
    return mesh.shape[EXPERT]


def check_experts_divisible(n_experts: int, mesh: Mesh) -> None:
    """Every device of an expert group must own the same number of experts."""
    ep = expert_degree(mesh)
    if n_experts % ep:
        raise ValueError(
            f"n_experts={n_experts} must be divisible by the expert-axis size {ep}; allowed "
            f"expert-axis sizes for {n_experts} experts: {_divisors(n_experts)}")


def describe_sharding(array: jax.Array) -> str:
    """One line per device: which slice of ``array`` it holds (``:`` = the whole axis)."""
    def fmt(s: slice, size: int) -> str:
        start, stop, _ = s.indices(size)
        return ":" if (start, stop) == (0, size) else f"{start}:{stop}"

    lines = []
    index_map = array.sharding.devices_indices_map(array.shape)
    for device in sorted(index_map, key=lambda dv: dv.id):
        idx = index_map[device]
        slices = ", ".join(fmt(s, n) for s, n in zip(idx, array.shape))
        lines.append(f"device {device.id}: [{slices}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Shardings of parameters and optimizer state
# ----------------------------------------------------------------------------------------

def _names(path) -> list:
    return [k.key for k in path if hasattr(k, "key")]


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A ``NamedSharding`` for every array of ``state`` (a model's, an optimizer's, or both):
    the routed experts' stacked weights ``experts/{w_gate, w_up, w_down}`` -- and the
    optimizer moments that mirror them -- are split along their expert axis over ``EXPERT``
    (and copied over ``DATA``); everything else is copied on every device."""
    def sharding(path, leaf):
        names = _names(path)
        if len(names) >= 2 and names[-2] == "experts" and names[-1] in EXPERT_WEIGHTS \
                and np.ndim(leaf) == 3:
            return NamedSharding(mesh, P(EXPERT, None, None))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(sharding, state)


def shard_params(obj: nnx.Module, mesh: Mesh) -> None:
    """Move the state of ``obj`` (model or optimizer) onto the mesh (``state_shardings``)."""
    state = nnx.state(obj)
    nnx.update(obj, jax.device_put(state, state_shardings(state, mesh)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, ...] arrays: the batch split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))
