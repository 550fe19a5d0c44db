"""Training with data and expert parallelism: the single-device train step, jitted over a mesh."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from minimoe.parallel.mesh import batch_sharding, state_shardings


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
        from minimoe.training.train import train_step

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
