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
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from minimoe.dispatch import (DispatchResult, compute_capacity, count_tokens_per_expert,
                              position_in_expert)
from minimoe.experts import expert_ffn
from minimoe.moe import MoELayer, MoEStats, check_moe_input
from minimoe.router import RouterOutput

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
# The two all-to-alls (call inside shard_map)
# ----------------------------------------------------------------------------------------

def send_to_experts(buf: jax.Array, ep: int) -> jax.Array:
    """Dispatch all-to-all: every device sends each expert's slots to the device owning it.

    buf: [E, C, ...], this device's buffer, expert e's slots in row e. Expert e lives on
    device ``e // E_l`` of the expert group. Returns [E_l, ep * C, ...]: for each of this
    device's experts, the slots that the ep devices of the group (in order) reserved for it.
    """
    n_experts, capacity = buf.shape[:2]
    rest = buf.shape[2:]
    local = n_experts // ep
    blocks = buf.reshape((ep, local, capacity) + rest)  # [ep (destination), E_l, C, ...]
    received = jax.lax.all_to_all(blocks, EXPERT, split_axis=0, concat_axis=0)
    # received: [ep (source), E_l, C, ...]; block j came from device j of the group
    return jnp.swapaxes(received, 0, 1).reshape((local, ep * capacity) + rest)


def return_to_owners(buf: jax.Array, ep: int) -> jax.Array:
    """Combine all-to-all, the inverse of ``send_to_experts``.

    buf: [E_l, ep * C, ...], results of this device's experts. Returns [E, C, ...]: this
    device's own buffer again, now holding every expert's outputs for its slots.
    """
    local, slots = buf.shape[:2]
    rest = buf.shape[2:]
    capacity = slots // ep
    blocks = jnp.swapaxes(buf.reshape((local, ep, capacity) + rest), 0, 1)
    # blocks: [ep (source of the tokens), E_l, C, ...]
    returned = jax.lax.all_to_all(blocks, EXPERT, split_axis=0, concat_axis=0)
    # returned: [ep (owner of the experts), E_l, C, ...] -> expert e = owner * E_l + local
    return returned.reshape((local * ep, capacity) + rest)


def capacity_slots(expert_index: jax.Array, n_experts: int, capacity: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each of this device's assignments sits in its ``[E, C]`` buffer.

    Positions follow ``position_in_expert`` (slot-major priority, as ``dispatch`` uses);
    assignments at position >= capacity are dropped.

    expert_index: [T_l, k] -> (slot_token [E, C] int32, the token in each slot, ``T_l`` for
    an empty slot; position [T_l, k] int32; kept [T_l, k] bool).
    """
    tokens, top_k = expert_index.shape
    position = position_in_expert(expert_index, n_experts)  # [T_l, k]
    kept = position < capacity  # [T_l, k]
    token_id = jnp.broadcast_to(jnp.arange(tokens, dtype=jnp.int32)[:, None], (tokens, top_k))
    slot_token = jnp.full((n_experts, capacity), tokens, jnp.int32)  # [E, C]
    slot_token = slot_token.at[expert_index, position].set(token_id, mode="drop")
    return slot_token, position, kept


def device_capacity(tokens_per_device: int, top_k: int, n_experts: int,
                    capacity_factor: float | None) -> int:
    """Slots each device reserves per expert: ``compute_capacity`` of its *local* token count;
    dropless (``None``) is ``tokens_per_device`` (a token uses an expert at most once).
    Never more than ``tokens_per_device``: more slots could not be filled."""
    c = compute_capacity(tokens_per_device, top_k, n_experts, capacity_factor)
    return tokens_per_device if c is None else min(c, tokens_per_device)


# ----------------------------------------------------------------------------------------
# Expert-parallel dispatch
# ----------------------------------------------------------------------------------------

def expert_parallel_dispatch(x, expert_index, expert_weights, w_gate, w_up, w_down, *,
                             mesh: Mesh, capacity: int | None = None) -> DispatchResult:
    """``dispatch``'s contract, with the experts sharded over the mesh's ``expert`` axis.

    x: [T, d]; expert_index, expert_weights: [T, k] (the router's output for all tokens);
    w_gate, w_up: [E, d, h]; w_down: [E, h, d]. The tokens are split over every device
    (``T / n_devices`` each, consecutive), the experts over the ``expert`` axis.
    capacity: slots per (device, expert), ``None`` for dropless (see the module docstring).

    Returns a ``DispatchResult`` with output [T, d], kept [T, k] and tokens_per_expert [E]
    (summed over all devices with ``psum``). The output equals ``dispatch('sort', ...)``
    applied to each device's tokens with the same capacity.
    """
    tokens, d_model = x.shape
    n_experts, top_k = w_gate.shape[0], expert_index.shape[1]
    check_experts_divisible(n_experts, mesh)
    if tokens % mesh.size:
        raise ValueError(f"the number of tokens ({tokens}) must be divisible by the "
                         f"{mesh.size} devices of the mesh")
    local_tokens = tokens // mesh.size
    if capacity is None:
        capacity = local_tokens
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")
    capacity = min(int(capacity), local_tokens)
    ep = expert_degree(mesh)

    def per_device(x, expert_index, expert_weights, w_gate, w_up, w_down):
        # x: [T_l, d]; expert_index, expert_weights: [T_l, k]; w_*: [E_l, ...]
        slot_token, position, kept = capacity_slots(expert_index, n_experts, capacity)
        x_padded = jnp.concatenate([x, jnp.zeros((1, d_model), x.dtype)])  # [T_l + 1, d]
        x_buf = x_padded[slot_token]  # [E, C, d], empty slots are zeros
        x_recv = send_to_experts(x_buf, ep)  # [E_l, ep * C, d]
        y_recv = expert_ffn(x_recv, w_gate, w_up, w_down)  # [E_l, ep * C, d]
        y_buf = return_to_owners(y_recv, ep)  # [E, C, d]
        y_slots = y_buf[expert_index, jnp.minimum(position, capacity - 1)]  # [T_l, k, d]
        gates = jnp.where(kept, expert_weights, 0.0)  # [T_l, k]
        output = jnp.einsum("tk,tkd->td", gates, y_slots)  # [T_l, d]
        counts = jax.lax.psum(count_tokens_per_expert(expert_index, n_experts), BATCH_AXES)
        return output, kept, counts

    tok, experts = P(BATCH_AXES, None), P(EXPERT, None, None)
    fn = shard_map(per_device, mesh, in_specs=(tok, tok, tok, experts, experts, experts),
                   out_specs=(tok, tok, P()))
    output, kept, counts = fn(x, expert_index, expert_weights, w_gate, w_up, w_down)
    return DispatchResult(output, kept, counts)


# ----------------------------------------------------------------------------------------
# The layer and the model
# ----------------------------------------------------------------------------------------

class ExpertParallelMoELayer(MoELayer):
    """An ``MoELayer`` whose routed experts run expert-parallel on ``mesh``.

    Built from an existing layer, sharing its router, experts and shared experts (the same
    ``nnx.Param``s): ``ExpertParallelMoELayer(layer, mesh)``. Token-choice routers only.

    What it computes, for x: [batch, seq, d] with the batch split over the mesh's devices:
      - routing, shared experts, and the statistics (load, aux/seq-aux/z losses) exactly as
        ``MoELayer`` on the whole batch: they are per-token computations and means, which
        ``jit`` spreads over the devices by itself;
      - the routed experts with ``expert_parallel_dispatch``: capacity per (device, expert),
        from the device's own token count, so drops are decided per device.
    Hence ``output == per_shard_reference(layer, x, mesh.size, train)``; with nothing dropped
    (``capacity_factor=None``, enough slack, or ``train=False``: as in ``MoELayer``, capacity
    applies in training only) it equals ``layer(x)``, the single-device layer on the whole
    batch. ``stats.dropped_fraction`` counts the drops that happened.

    Attributes: ``router``, ``experts``, ``shared_experts``, ``cfg`` as in ``MoELayer``;
    ``mesh``.
    """

    def __init__(self, layer: MoELayer, mesh: Mesh):
        if layer.cfg.router == "expert_choice":
            raise ValueError("expert parallelism here needs a token-choice router; got router="
                             "'expert_choice' (allowed: any other router)")
        if layer.router.hash or layer.cfg.swiglu_limit:
            raise ValueError("expert parallelism here supports neither hash routing nor the "
                             "SwiGLU clamp (swiglu_limit must be 0, the layer must route by "
                             "score); got a layer with "
                             f"hash={layer.router.hash}, swiglu_limit={layer.cfg.swiglu_limit}")
        check_experts_divisible(layer.cfg.n_experts, mesh)
        self.cfg = layer.cfg
        self.d_model = layer.d_model
        self.router = layer.router
        self.experts = layer.experts
        self.shared_experts = layer.shared_experts
        self.mesh = mesh

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | jax.Array | None = None,
                 token_ids: jax.Array | None = None) -> tuple[jax.Array, MoEStats]:
        """x: [batch, seq, d_model] -> (y [batch, seq, d_model], MoEStats): ``MoELayer``'s
        forward pass, with its dispatch step (``dispatch_routed``) run over the mesh."""
        check_moe_input(x, self.d_model)
        if x.shape[0] % self.mesh.size:
            raise ValueError(f"batch={x.shape[0]} must be divisible by the {self.mesh.size} "
                             f"devices of the mesh (each device takes whole sequences)")
        return super().__call__(x, train=train, rngs=rngs, token_ids=token_ids)

    def dispatch_routed(self, tokens: jax.Array, routing: RouterOutput, *,
                        train: bool) -> DispatchResult:
        """``MoELayer.dispatch_routed`` over the mesh: ``expert_parallel_dispatch``, each
        device's capacity from its own tokens (``device_capacity``), in training only."""
        cfg, mesh = self.cfg, self.mesh
        capacity = device_capacity(tokens.shape[0] // mesh.size, cfg.top_k, cfg.n_experts,
                                   cfg.capacity_factor if train else None)
        return expert_parallel_dispatch(tokens, routing.expert_index, routing.expert_weights,
                                        *self.experts.weights(), mesh=mesh, capacity=capacity)


def per_shard_reference(layer: MoELayer, x: jax.Array, n_shards: int, train: bool = False
                        ) -> tuple[jax.Array, MoEStats]:
    """What ``ExpertParallelMoELayer`` promises, computed with the single-device layer.

    The output is ``layer`` applied to each of the ``n_shards`` consecutive slices of the
    batch separately (so its capacity comes from the per-shard token count and drops are
    decided per shard), concatenated. The statistics are those of ``layer`` on the whole
    batch, except ``dropped_fraction``, which is the mean over the shards. ``train`` is passed
    to the layer (capacity applies in training only).
    """
    batch = x.shape[0]
    if batch % n_shards:
        raise ValueError(f"batch={batch} must be divisible by n_shards={n_shards}")
    shards = x.reshape((n_shards, batch // n_shards) + x.shape[1:])  # [n_shards, B / n, S, d]
    y, shard_stats = jax.vmap(lambda xs: layer(xs, train=train))(shards)  # each shard alone
    _, stats = layer(x, train=train)
    return (y.reshape(x.shape),
            stats._replace(dropped_fraction=jnp.mean(shard_stats.dropped_fraction)))


def to_expert_parallel(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Make every MoE layer of a ``Transformer`` expert-parallel on ``mesh`` (in place).

    Each ``block.ffn`` that is an ``MoELayer`` is replaced by an ``ExpertParallelMoELayer``
    sharing its parameters, then the parameters are placed on the mesh (``shard_params``).
    Returns the model.
    """
    for block in model.blocks:
        if isinstance(block.ffn, MoELayer):
            block.ffn = ExpertParallelMoELayer(block.ffn, mesh)
    shard_params(model, mesh)
    return model


# ----------------------------------------------------------------------------------------
# Shardings of parameters and optimizer state; the sharded train step
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


class ShardedTrainStep:
    """``train.train_step`` jitted over a mesh: data + expert parallelism.

        model = to_expert_parallel(Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
        optimizer = make_optimizer(model, tcfg)
        step = ShardedTrainStep(model, optimizer, mesh)
        metrics = step(inputs, targets, key)     # updates model and optimizer in place

    The step is ``jax.jit`` with explicit ``in_shardings``/``out_shardings``: model and
    optimizer state as ``state_shardings`` (experts split over ``EXPERT``), the batch split
    over all devices, the key and the metrics replicated. Inside, it runs the very same
    ``train_step`` as single-device training; the compiler inserts the gradient reductions
    (a ``psum`` over the devices that hold copies of a parameter).
    """

    def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer, mesh: Mesh):
        from minimoe.train import train_step

        self.model, self.optimizer, self.mesh = model, optimizer, mesh
        graphdef, state = nnx.split((model, optimizer))
        self.state_sharding = state_shardings(state, mesh)
        self.batch_sharding = batch_sharding(mesh)
        replicated = NamedSharding(mesh, P())

        def step(state, inputs, targets, key):
            model, optimizer = nnx.merge(graphdef, state)
            metrics = train_step(model, optimizer, inputs, targets, key)
            return nnx.state((model, optimizer)), metrics

        self.step_fn = step  # the pure function, e.g. for jax.make_jaxpr
        self._jitted = jax.jit(
            step, in_shardings=(self.state_sharding, self.batch_sharding, self.batch_sharding,
                                replicated),
            out_shardings=(self.state_sharding, replicated))
        nnx.update((model, optimizer), jax.device_put(state, self.state_sharding))

    def __call__(self, inputs, targets, key) -> dict:
        if inputs.shape[0] % self.mesh.size:
            raise ValueError(f"batch={inputs.shape[0]} must be divisible by the "
                             f"{self.mesh.size} devices of the mesh")
        inputs = jax.device_put(inputs, self.batch_sharding)
        targets = jax.device_put(targets, self.batch_sharding)
        state = nnx.state((self.model, self.optimizer))
        new_state, metrics = self._jitted(state, inputs, targets, key)
        nnx.update((self.model, self.optimizer), new_state)
        return metrics


# ----------------------------------------------------------------------------------------
# Communication accounting
# ----------------------------------------------------------------------------------------

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
