"""Expert parallelism (minimoe.parallel) on 8 devices: the mesh, the all-to-all round trip,
equality with the single-device MoE layer (outputs, statistics, gradients, dropped tokens),
sharded training, communication accounting and the error messages.

Needs 8 devices. On a CPU, simulate them by setting, before Python starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_parallel.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from minimoe import parallel as par
from minimoe.config import ModelConfig, MoEConfig
from minimoe.model import Transformer
from minimoe.moe.layer import MoELayer
from minimoe.training.data import CorpusConfig, course_corpus, get_batch
from minimoe.training.train import TrainConfig, make_optimizer, train_step

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason=f"needs 8 devices, found {jax.device_count()}; on a CPU run with "
           f"XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax is imported")

D_MODEL = 16
ATOL = 2e-5


def moe_layer(seed=0, **cfg):
    cfg.setdefault("n_experts", 8)
    cfg.setdefault("d_expert", 16)
    return MoELayer(D_MODEL, MoEConfig(**cfg), rngs=nnx.Rngs(seed))


def tokens(batch=16, seq=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, seq, D_MODEL))


# Training calls (capacity applies only with train=True; inference is dropless)
forward = nnx.jit(lambda m, x: m(x, train=True))
forward_eval = nnx.jit(lambda m, x: m(x))
reference = nnx.jit(lambda m, x, n: par.per_shard_reference(m, x, n, True), static_argnums=2)


def _loss(y, stats):
    probe = jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
    return jnp.sum(y * probe) + stats.loss


layer_grad = nnx.jit(nnx.grad(lambda m, x: _loss(*m(x, train=True))))  # MoELayer or EP version
ref_grad = nnx.jit(nnx.grad(lambda m, x, n: _loss(*par.per_shard_reference(m, x, n, True))),
                   static_argnums=2)


def assert_trees_close(a, b, atol=ATOL):
    a, b = nnx.to_pure_dict(a), nnx.to_pure_dict(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5)


def assert_stats_close(s, r):
    for name in ("load", "dropped_fraction", "aux_loss", "seq_aux_loss", "z_loss", "loss"):
        np.testing.assert_allclose(getattr(s, name), getattr(r, name), atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(s.tokens_per_expert, r.tokens_per_expert)


# ----------------------------------------------------------------------------------------
# The mesh and the errors
# ----------------------------------------------------------------------------------------

def test_make_mesh_uses_every_device():
    for ep, data in ((1, 8), (2, 4), (4, 2), (8, 1)):
        mesh = par.make_mesh(ep)
        assert dict(mesh.shape) == {"data": data, "expert": ep}
        assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    assert dict(par.make_mesh(2, devices=jax.devices()[:4]).shape) == {"data": 2, "expert": 2}


def test_mesh_errors_name_the_value_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"expert=3 does not divide the 8 available devices; "
                                         r"allowed: \[1, 2, 4, 8\]"):
        par.make_mesh(3)
    with pytest.raises(ValueError, match=r"data=4 x expert=4 = 16 devices does not match the 8"):
        par.make_mesh(4, data=4)
    with pytest.raises(ValueError, match=r"data=1 x expert=4 = 4 devices does not match the 8"):
        par.make_mesh(4, data=1)
    with pytest.raises(ValueError, match="expert .* positive integer, got 0"):
        par.make_mesh(0)


def test_expert_layer_errors():
    mesh = par.make_mesh(4)
    with pytest.raises(ValueError, match=r"n_experts=6 must be divisible by the expert-axis "
                                         r"size 4; allowed .* \[1, 2, 3, 6\]"):
        par.ExpertParallelMoELayer(moe_layer(n_experts=6), mesh)
    with pytest.raises(ValueError, match="token-choice router; got router='expert_choice'"):
        par.ExpertParallelMoELayer(moe_layer(router="expert_choice", capacity_factor=1.0), mesh)
    ep = par.ExpertParallelMoELayer(moe_layer(), mesh)
    with pytest.raises(ValueError, match="batch=4 must be divisible by the 8 devices"):
        ep(tokens(batch=4))
    with pytest.raises(ValueError, match="n_experts=6 must be divisible by ep=4"):
        par.all_to_all_volume(8, 2, 16, 6, 4)


# ----------------------------------------------------------------------------------------
# The all-to-all round trip
# ----------------------------------------------------------------------------------------

def test_all_to_all_sends_each_expert_block_to_its_owner_and_back():
    mesh = par.make_mesh(4)  # data 2 x expert 4; 8 experts, 2 per device
    n_experts, capacity = 8, 3

    def per_device(tag):
        # tag: [1, 1]; this device's buffer: value = 1000 * device + 10 * expert + slot
        me = tag[0, 0]
        buf = (1000 * me + 10 * jnp.arange(n_experts)[:, None]
               + jnp.arange(capacity)[None, :])  # [E, C]
        received = par.send_to_experts(buf, 4)  # [E_l, 4 * C]
        back = par.return_to_owners(received, 4)  # [E, C]
        return received[None], (back == buf).all()[None, None]

    tags = jnp.arange(8, dtype=jnp.int32).reshape(2, 4)  # device (data, expert) -> its id
    fn = par.shard_map(per_device, mesh, in_specs=P("data", "expert"),
                       out_specs=(P(("data", "expert")), P("data", "expert")))
    received, round_trip = fn(tags)
    assert bool(round_trip.all())
    received = np.asarray(received)  # [8 devices, E_l, 4 * C]
    for device in range(8):
        group, j = divmod(device, 4)  # data index, position in the expert group
        for local in range(2):
            expert = 2 * j + local
            expected = [1000 * (4 * group + src) + 10 * expert + c
                        for src in range(4) for c in range(capacity)]
            assert received[device, local].tolist() == expected


# ----------------------------------------------------------------------------------------
# Equality with the single-device layer
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ep,dispatch", [(4, "sort"), (8, "onehot"), (2, "dropless")])
def test_dropless_equals_the_single_device_layer_on_the_whole_batch(ep, dispatch):
    layer = moe_layer(dispatch=dispatch, capacity_factor=None, aux_loss_coef=0.1,
                      z_loss_coef=0.01, seq_aux_loss_coef=0.1)
    ep_layer = par.ExpertParallelMoELayer(layer, par.make_mesh(ep))
    x = tokens()
    y, stats = forward(ep_layer, x)
    y_ref, stats_ref = forward(layer, x)
    np.testing.assert_allclose(y, y_ref, atol=ATOL)
    assert_stats_close(stats, stats_ref)
    assert float(stats.dropped_fraction) == 0.0
    assert_trees_close(layer_grad(ep_layer, x), layer_grad(layer, x))


@pytest.mark.parametrize("ep,dispatch,capacity_factor,shared", [
    (4, "sort", 1.0, 0), (2, "onehot", 1.0, 1), (8, "sort", 0.5, 0)])
def test_drops_are_decided_per_device_like_the_layer_applied_per_shard(
        ep, dispatch, capacity_factor, shared):
    router = "deepseek_v3" if shared else "softmax"
    layer = moe_layer(dispatch=dispatch, capacity_factor=capacity_factor, router=router,
                      n_shared_experts=shared, aux_loss_coef=0.1, z_loss_coef=0.01)
    if shared:  # a non-zero selection bias, so the bias is part of what must agree
        layer.router.bias[...] = jnp.linspace(-0.2, 0.2, 8)
    ep_layer = par.ExpertParallelMoELayer(layer, par.make_mesh(ep))
    x = tokens()
    y, stats = forward(ep_layer, x)
    y_ref, stats_ref = reference(layer, x, 8)
    assert float(stats.dropped_fraction) > 0.1, "this case must drop tokens"
    np.testing.assert_allclose(y, y_ref, atol=ATOL)
    assert_stats_close(stats, stats_ref)
    assert_trees_close(layer_grad(ep_layer, x), ref_grad(layer, x, 8))
    # ...and the per-shard reference is not the same as one capacity for the whole batch
    y_global, _ = forward(layer, x)
    assert float(jnp.abs(y_global - y).max()) > 1e-3
    # inference is dropless on one device and on the mesh alike
    y_eval, stats_eval = forward_eval(ep_layer, x)
    np.testing.assert_allclose(y_eval, forward_eval(layer, x)[0], atol=ATOL)
    assert float(stats_eval.dropped_fraction) == 0.0


# ----------------------------------------------------------------------------------------
# Communication accounting
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ep,capacity_factor", [(1, 1.0), (2, 1.25), (4, None), (8, 1.0)])
def test_bytes_exchanged_match_the_all_to_all_operands(ep, capacity_factor):
    mesh = par.make_mesh(ep)
    layer = moe_layer(capacity_factor=capacity_factor)
    ep_layer = par.ExpertParallelMoELayer(layer, mesh)
    x = tokens()  # 64 tokens: 8 per device
    tokens_per_device = x.shape[0] * x.shape[1] // 8
    vol = par.all_to_all_volume(tokens_per_device, 2, D_MODEL, 8, ep,
                                capacity_factor=capacity_factor, bytes_per_element=4)
    graphdef, state = nnx.split(ep_layer)
    fwd = lambda state, x: nnx.merge(graphdef, state)(x, train=True)[0]  # noqa: E731
    ops = par.traced_all_to_alls(fwd, state, x)
    assert len(ops) == vol.n_all_to_all == 2
    c = vol.capacity
    assert [o.shape for o in ops] == [(ep, 8 // ep, c, D_MODEL)] * 2  # [ep, E_l, C, d]
    assert all(par.nbytes(o) == vol.operand_bytes == 8 * c * D_MODEL * 4 for o in ops)
    assert vol.sent_bytes * ep == vol.operand_bytes * (ep - 1)
    # the backward pass adds two more all-to-alls of the same size (when the gradient must
    # also reach x, as it does inside a model)
    bwd = jax.grad(lambda state, x: fwd(state, x).sum(), argnums=(0, 1))
    ops_bwd = par.traced_all_to_alls(bwd, state, x)
    vol_bwd = par.all_to_all_volume(tokens_per_device, 2, D_MODEL, 8, ep,
                                    capacity_factor=capacity_factor, backward=True)
    assert len(ops_bwd) == vol_bwd.n_all_to_all == 4
    assert sum(map(par.nbytes, ops_bwd)) == 4 * vol.operand_bytes
    assert vol_bwd.total_sent_bytes == 2 * vol.total_sent_bytes
    # and XLA receives real all-to-all collectives (a group of one device needs none)
    hlo = jax.jit(fwd).lower(state, x).as_text()
    assert hlo.count("all_to_all") == (2 if ep > 1 else 0)


def test_bytes_per_token_formula_and_deepseek_scale():
    # the large-batch limit of all_to_all_volume
    vol = par.all_to_all_volume(4096, 8, 64, 64, 8, capacity_factor=1.0, bytes_per_element=2)
    assert vol.total_sent_bytes / 4096 == pytest.approx(
        par.bytes_per_token(8, 64, 8, bytes_per_element=2))
    assert par.bytes_per_token(8, 64, 1) == 0.0
    # DeepSeek-V3 at EP144: d_model 7168, top-8, bf16 -> about 228 kB per token per layer
    assert par.bytes_per_token(8, 7168, 144, bytes_per_element=2) == pytest.approx(
        2 * 8 * 7168 * 2 * 143 / 144)


# ----------------------------------------------------------------------------------------
# Sharded training
# ----------------------------------------------------------------------------------------

def test_sharded_training_follows_the_single_device_run():
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
                      first_k_dense=1,
                      moe=MoEConfig(n_experts=8, top_k=2, d_expert=32, router="deepseek_v3",
                                    n_shared_experts=1, aux_loss_coef=0.01,
                                    bias_update_rate=0.01))
    tcfg = TrainConfig(steps=10, batch_size=16, seq_len=16, warmup_steps=1)
    data, _ = course_corpus(CorpusConfig(n_tokens=5_000))
    mesh = par.make_mesh(4)
    single = Transformer(cfg, rngs=nnx.Rngs(0))
    single_opt = make_optimizer(single, tcfg)
    sharded = par.to_expert_parallel(Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    step = par.ShardedTrainStep(sharded, make_optimizer(sharded, tcfg), mesh)
    w_gate = sharded.blocks[1].ffn.experts.w_gate
    assert w_gate[...].sharding.spec == P("expert", None, None)
    assert "device 7: [6:8, :, :]" in par.describe_sharding(w_gate[...])
    key = jax.random.key(0)
    for i in range(3):
        b = get_batch(data, tcfg.batch_size, tcfg.seq_len, 0, i)
        k = jax.random.fold_in(key, i)
        m_single = train_step(single, single_opt, jnp.asarray(b.inputs), jnp.asarray(b.targets), k)
        m_sharded = step(b.inputs, b.targets, k)
        np.testing.assert_allclose(m_sharded["loss"], m_single["loss"], rtol=1e-5)
        np.testing.assert_allclose(m_sharded["load"], m_single["load"], atol=1e-6)
    assert w_gate[...].sharding.spec == P("expert", None, None), "experts stay sharded"
    assert isinstance(sharded.blocks[1].ffn, par.ExpertParallelMoELayer)
    np.testing.assert_allclose(sharded.blocks[1].ffn.router.bias[...],
                               single.blocks[1].ffn.router.bias[...], atol=1e-6)
    np.testing.assert_allclose(w_gate[...], single.blocks[1].ffn.experts.w_gate[...], atol=1e-5)
    with pytest.raises(ValueError, match="batch=4 must be divisible by the 8 devices"):
        step(b.inputs[:4], b.targets[:4], key)
