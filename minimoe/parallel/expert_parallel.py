"""The expert-parallel MoE layer: experts split over the mesh, tokens moved by two all-to-alls.

The package's docstring (``minimoe.parallel``) walks through one layer as one device sees it.
``ExpertParallelMoELayer`` is ``MoELayer`` with one step replaced, ``dispatch_routed``: routing,
shared experts and statistics are the single-device layer's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from minimoe.moe.dispatch import (DispatchResult, compute_capacity, count_tokens_per_expert,
                                  position_in_expert, resolve_capacity)
from minimoe.moe.experts import expert_ffn
from minimoe.moe.layer import MoELayer, MoEStats, check_moe_input
from minimoe.moe.router import RouterOutput
from minimoe.parallel.mesh import (BATCH_AXES, EXPERT, check_experts_divisible, expert_degree,
                                   shard_map, shard_params)


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
    return resolve_capacity(compute_capacity(tokens_per_device, top_k, n_experts,
                                             capacity_factor), tokens_per_device)


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
    n_experts = w_gate.shape[0]
    check_experts_divisible(n_experts, mesh)
    if tokens % mesh.size:
        raise ValueError(f"the number of tokens ({tokens}) must be divisible by the "
                         f"{mesh.size} devices of the mesh")
    capacity = resolve_capacity(capacity, tokens // mesh.size)
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
