"""Expert parallelism: experts spread over a device mesh, tokens moved with ``all_to_all``.

A big MoE does not fit on one chip (DeepSeek serves V3 with its experts spread over 144
GPUs), so each device holds only some experts, and every token has to travel to the devices
that own its experts and back. This module does that with JAX's own distributed machinery:

    mesh         a 2-D grid of devices with axes ``data`` and ``expert`` (``make_mesh``);
    sharding     ``NamedSharding(mesh, PartitionSpec(...))`` says which slice of an array
                 each device holds: the batch is split over *every* device (over the
                 ``data`` and ``expert`` axes together), the stacked expert weights
                 ``[n_experts, ...]`` are split over ``expert`` and copied over ``data``;
    shard_map    runs a function once per device on its local slices, with explicit
                 collectives between devices;
    all_to_all   the collective of expert parallelism: every device sends a different slice
                 of its buffer to every other device of its ``expert`` group.

One MoE layer, seen from one device (``expert_parallel_dispatch``; ``ep`` = size of the
``expert`` axis, ``E_l = n_experts / ep`` experts live on each device):

    1. route its own T_l tokens (the router weights are copied on every device);
    2. pack them into a buffer ``[n_experts, C, d]``: C slots per expert (capacity);
    3. ``all_to_all`` #1 (dispatch): the block of experts owned by device j goes to device j;
       each device receives ``[E_l, ep * C, d]``: its own experts' tokens from the whole group;
    4. run its ``E_l`` experts (``expert_ffn``, one batched matmul);
    5. ``all_to_all`` #2 (combine): every result goes back to the device its token came from;
    6. weight and sum the top-k results per token, exactly as on one device.

Capacity is per (device, expert): device i reserves ``C`` slots for expert e in its own
buffer, computed from its *local* token count (``compute_capacity(T_l, top_k, n_experts,
capacity_factor)``), and drops are decided on each device with the same slot-major priority
rule as ``dispatch`` (first choices before second choices, in token order). The expert-
parallel layer therefore equals the single-device ``MoELayer`` *applied to each device's
tokens separately* (``per_shard_reference``), which, when nothing is dropped, is the
single-device layer applied to the whole batch. GShard calls these independent token shards
"groups".

Simulating 8 devices on a CPU: set, *before JAX is imported*,

    XLA_FLAGS=--xla_force_host_platform_device_count=8

and ``jax.devices()`` lists 8 CPU devices. They share the machine's cores and memory, so
this demonstrates correctness and communication patterns, not speed-ups.

Shape names: tokens T (T_l per device), top_k k, experts E (E_l per device), capacity C per
(device, expert), d_model d, expert-parallel degree ep.
The pieces, in the order a reader needs them:

    mesh             the mesh, the shard_map call, where each array lives (``state_shardings``)
    expert_parallel  the two all-to-alls, expert-parallel dispatch, ``ExpertParallelMoELayer``
    train_step       ``ShardedTrainStep``: the single-device train step jitted over the mesh
    communication    the all-to-all bytes per device: formula and traced operands
"""

from minimoe.parallel.communication import (AllToAllVolume, all_to_all_volume, bytes_per_token,
                                            nbytes, traced_all_to_alls)
from minimoe.parallel.expert_parallel import (ExpertParallelMoELayer, capacity_slots,
                                              device_capacity, expert_parallel_dispatch,
                                              per_shard_reference, return_to_owners,
                                              send_to_experts, to_expert_parallel)
from minimoe.parallel.mesh import (BATCH_AXES, DATA, EXPERT, EXPERT_WEIGHTS, batch_sharding,
                                   check_experts_divisible, describe_sharding, expert_degree,
                                   make_mesh, shard_map, shard_params, state_shardings)
from minimoe.parallel.train_step import ShardedTrainStep

__all__ = [
    "AllToAllVolume", "BATCH_AXES", "DATA", "EXPERT", "EXPERT_WEIGHTS", "ExpertParallelMoELayer",
    "ShardedTrainStep", "all_to_all_volume", "batch_sharding", "bytes_per_token",
    "capacity_slots", "check_experts_divisible", "describe_sharding", "device_capacity",
    "expert_degree", "expert_parallel_dispatch", "make_mesh", "nbytes", "per_shard_reference",
    "return_to_owners", "send_to_experts", "shard_map", "shard_params", "state_shardings",
    "to_expert_parallel", "traced_all_to_alls",
]
