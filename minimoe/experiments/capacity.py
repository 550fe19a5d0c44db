"""Knowledge capacity: how many bits of a random fact table a feed-forward layer can store.

The measurement (notebook 04, ``tools/capacity_sweep.py``) needs three pieces, all here:

* ``FactMemory``: a one-token model. Each entity is one input id whose embedding is a *fixed*
  random vector, and each attribute value is one output id with a *fixed* random unembedding.
  The only trainable parts are the feed-forward layers (a dense ``SwiGLU`` or an ``MoELayer``,
  pre-norm, residual) and the RMSNorm gains. With one token per entity there is nothing for
  attention to do, so storing a fact never waits for an attention circuit; and because the
  embedding tables are not trained, they cannot act as a lookup table of their own -- what is
  stored is stored in the feed-forward weights.
* ``bits_stored``: the information about the table that the predictions carry, in bits.
* ``train_seeds``: full-batch AdamW on the whole table for several seeds at once
  (``jax.vmap`` over the seeds of ``nnx.split`` states, ``jax.lax.scan`` over the steps).

The yardstick is Allen-Zhu & Li, "Physics of Language Models: Part 3.3, Knowledge Capacity
Scaling Laws" (2024): trained language models store about 2 bits per parameter.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..blocks.ffn import SwiGLU
from ..blocks.norm import RMSNorm
from ..config import MoEConfig
from ..moe.layer import MoELayer
from ..training.train import check_schedule, decay_mask

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- the metric
def bits_stored(logits: jax.Array, values: jax.Array) -> jax.Array:
    r"""Bits of the table held by the predictions: ``N log2 V - sum_i CE_i / ln 2``.

    .. math:: B = \sum_{i=1}^{N} \left(\log_2 V + \log_2 p_\theta(v_i \mid e_i)\right)

    for ``N`` facts whose values are uniform over ``V`` choices. A model that guesses uniformly
    stores 0 bits; one that is certain of every value stores ``N log2 V``, the table's entropy.
    It is the code-length argument of Allen-Zhu & Li (2024, §3): with the model in hand the
    table can be written in ``sum_i -log2 p(v_i)`` bits instead of ``N log2 V``, so the model
    holds at least ``B`` bits about it. Confident wrong answers count against the model
    (``B`` can be negative), so guessing cannot inflate it.

    logits: [..., N, V] float; values: [N] int -> [...] float32 (bits, one per leading index).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., N, V]
    logp_true = jnp.take_along_axis(
        logp, jnp.broadcast_to(values[:, None], logp.shape[:-1] + (1,)), axis=-1)[..., 0]  # [..., N]
    n, v = logits.shape[-2], logits.shape[-1]
    return n * math.log2(v) + logp_true.sum(axis=-1) / LN2


def prior_bits(values, n_values: int) -> float:
    """``bits_stored`` of the best predictor that knows only how often each value occurs
    (the table's empirical prior, ignoring the entity): ``N (log2 V - H(p_hat))``.

    A model must beat this to have stored anything about *which* entity has which value.
    """
    counts = np.bincount(np.asarray(values), minlength=n_values).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    n = counts.sum()
    return float(n * (math.log2(n_values) + (p * np.log2(p)).sum()))


def most_frequent_accuracy(values, n_values: int) -> float:
    """Exact-match accuracy of always answering the most frequent value."""
    counts = np.bincount(np.asarray(values), minlength=n_values)
    return float(counts.max() / counts.sum())


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class MemoryConfig:
    """A ``FactMemory``: fixed random embeddings around trainable feed-forward layers.

    Attributes:
        n_keys: number of entities (input ids), at least the table size.
        n_values: number of attribute values (output ids), V.
        d_model: width of the residual stream.
        n_layers: feed-forward blocks (each ``x + FFN(RMSNorm(x))``).
        d_ff: hidden units of a dense SwiGLU block; must be ``None`` when ``moe`` is set
            (nothing is silently ignored).
        moe: settings of the MoE blocks; ``None`` makes the blocks dense.
        norm_eps: RMSNorm epsilon.
    """

    n_keys: int
    n_values: int
    d_model: int = 16
    n_layers: int = 1
    d_ff: int | None = 32
    moe: MoEConfig | None = None
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("n_keys", "n_values", "d_model", "n_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.n_values < 2:
            raise ValueError(f"n_values must be >= 2 (a fact of one choice holds no bits), "
                             f"got {self.n_values}")
        if self.moe is None:
            if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
                raise ValueError(f"d_ff must be a positive integer for a dense memory, got {self.d_ff!r}")
        else:
            if not isinstance(self.moe, MoEConfig):
                raise ValueError(f"moe must be a MoEConfig or None, got {type(self.moe).__name__}")
            if self.d_ff is not None:
                raise ValueError(f"an MoE memory has no dense FFN: d_ff must be None, got {self.d_ff!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    def replace(self, **changes) -> "MemoryConfig":
        return dataclasses.replace(self, **changes)


def memory_param_counts(cfg: MemoryConfig) -> dict[str, int]:
    """Trainable parameters of a ``FactMemory``, derived from the config.

    ``total``: every trainable parameter (FFN or experts + router, RMSNorm gains); ``active``:
    those one entity's forward pass multiplies by (the selected experts only); ``ffn_total``
    and ``ffn_active``: the same for the feed-forward weights alone. The fixed random
    embedding and unembedding (``fixed``) are not trained and not in ``total``.
    """
    d, n = cfg.d_model, cfg.n_layers
    norms = (n + 1) * d
    if cfg.moe is None:
        ffn_total = ffn_active = n * 3 * d * cfg.d_ff
        router = 0
    else:
        m = cfg.moe
        ffn_total = n * 3 * d * (m.n_experts * m.d_expert + m.shared_hidden)
        ffn_active = n * 3 * d * m.active_hidden
        router = n * d * m.n_experts
    return {"total": ffn_total + router + norms, "active": ffn_active + router + norms,
            "ffn_total": ffn_total, "ffn_active": ffn_active, "router": router, "norms": norms,
            "fixed": (cfg.n_keys + cfg.n_values) * d}


class FixedEmbedding(nnx.Variable):
    """A random table that is state, not a parameter: ``nnx.grad`` and optimizers built with
    ``wrt=nnx.Param`` leave it alone, so it cannot learn to store facts itself."""


class MemoryBlock(nnx.Module):
    """``x + FFN(RMSNorm(x))`` with a dense SwiGLU or an MoE layer."""

    def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = cfg.moe is not None
        self.ffn = (MoELayer(cfg.d_model, cfg.moe, rngs=rngs) if self.is_moe
                    else SwiGLU(cfg.d_model, cfg.d_ff, rngs=rngs))

    def __call__(self, x: jax.Array):
        """x: [batch, d_model] -> (x + FFN(norm(x)), MoEStats or None)."""
        h = self.norm(x)
        if self.is_moe:
            f, stats = self.ffn(h[:, None, :])  # the MoE layer takes [batch, seq, d]
            return x + f[:, 0, :], stats
        return x + self.ffn(h), None


class MemoryOutput(NamedTuple):
    """logits: [batch, n_values] float32; moe_stats: one ``MoEStats`` per MoE block;
    aux_loss: their weighted balance losses (0 for DeepSeek's aux-loss-free routing)."""

    logits: jax.Array
    moe_stats: tuple
    aux_loss: jax.Array


class FactMemory(nnx.Module):
    """Entity id -> logits over the values: fixed ``key_embed``, trainable blocks, final
    RMSNorm, fixed ``value_unembed``.

    Attributes: ``key_embed`` [n_keys, d_model] and ``value_unembed`` [d_model, n_values]
    (``FixedEmbedding``, standard normal / scaled by 1/sqrt(d_model)), ``blocks``,
    ``final_norm``, ``cfg``.
    """

    def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.key_embed = FixedEmbedding(
            jax.random.normal(rngs.params(), (cfg.n_keys, cfg.d_model), jnp.float32))
        self.value_unembed = FixedEmbedding(
            jax.random.normal(rngs.params(), (cfg.d_model, cfg.n_values), jnp.float32)
            * cfg.d_model ** -0.5)
        self.blocks = nnx.data([MemoryBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def __call__(self, keys: jax.Array) -> MemoryOutput:
        """keys: [batch] int entity ids -> ``MemoryOutput``."""
        x = jnp.take(self.key_embed[...], keys, axis=0)  # [batch, d_model]
        stats = []
        for block in self.blocks:
            x, s = block(x)
            if s is not None:
                stats.append(s)
        logits = self.final_norm(x) @ self.value_unembed[...]  # [batch, n_values]
        aux = sum((s.loss for s in stats), jnp.zeros((), jnp.float32))
        return MemoryOutput(logits.astype(jnp.float32), tuple(stats), aux)

    def moe_layers(self) -> list:
        return [b.ffn for b in self.blocks if b.is_moe]


# The three models of the measurement: 16 experts of 16 hidden units, top-2, on a
# 16-wide residual stream; a dense FFN as wide as the two experts a token uses (the same
# FLOPs per token), and one as wide as all sixteen (the same parameters).
CAPACITY_MOE = MoEConfig(n_experts=16, top_k=2, d_expert=16, router="softmax", dispatch="dropless")
CAPACITY_MODELS = ("dense (active width)", "MoE", "dense (total width)")


def capacity_models(n_keys: int, n_values: int = 64, d_model: int = 16,
                    moe: MoEConfig = CAPACITY_MOE) -> dict[str, MemoryConfig]:
    """The dense twin at the MoE's active width, the MoE, and the dense twin at its total
    width (``CAPACITY_MODELS`` order), for a table of ``n_keys`` entities."""
    return {"dense (active width)": MemoryConfig(n_keys, n_values, d_model, d_ff=moe.active_hidden),
            "MoE": MemoryConfig(n_keys, n_values, d_model, d_ff=None, moe=moe),
            "dense (total width)": MemoryConfig(
                n_keys, n_values, d_model, d_ff=moe.n_experts * moe.d_expert + moe.shared_hidden)}


def load_sweep(path=None) -> dict:
    """The stored long run of ``tools/capacity_sweep.py`` (JSON, shipped with the package as
    ``minimoe/results/capacity_sweep.json``; ``path`` reads another file instead)."""
    import json
    from importlib import resources

    if path is None:
        return json.loads(resources.files("minimoe").joinpath("results", "capacity_sweep.json")
                          .read_text())
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class MemoryTrainConfig:
    """Full-batch training on the whole table: AdamW (decay on matrices only), ``warmup_steps``
    of linear warm-up, cosine decay to ``lr * min_lr_ratio``; ``record_every``: steps between
    the recorded points of the bits-stored curve."""

    steps: int = 2000
    lr: float = 1e-2
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    record_every: int = 100

    def __post_init__(self):
        for name in ("steps", "record_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.steps % self.record_every:
            raise ValueError(f"record_every must divide steps={self.steps}, got {self.record_every}")
        check_schedule(self)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def replace(self, **changes) -> "MemoryTrainConfig":
        return dataclasses.replace(self, **changes)


def _optimizer(tcfg: MemoryTrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        tcfg.lr / max(tcfg.warmup_steps, 1), tcfg.lr, tcfg.warmup_steps, tcfg.steps,
        end_value=tcfg.lr * tcfg.min_lr_ratio)
    return optax.adamw(schedule, weight_decay=tcfg.weight_decay, mask=decay_mask)


class SeedRuns(NamedTuple):
    """What ``train_seeds`` returns (leading axis: the seeds, in the order given).

    bits: [n_seeds] bits stored after the last step (an evaluation pass);
    accuracy: [n_seeds] fraction of facts whose value is the argmax;
    curve_steps: [n_points]; curve_bits: [n_seeds, n_points] bits stored during training
    (the full-batch loss before the update of that step, so it costs nothing extra);
    models: the trained ``FactMemory`` of each seed;
    seconds_per_step: wall-clock of one step of all seeds together, measured over the chunks
    after the first (which includes compilation); ``nan`` when there is only one chunk.
    """

    bits: np.ndarray
    accuracy: np.ndarray
    curve_steps: np.ndarray
    curve_bits: np.ndarray
    models: list
    seconds_per_step: float


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n):
    return [jax.tree_util.tree_map(lambda x: x[i], tree) for i in range(n)]


def train_seeds(cfg: MemoryConfig, keys, values, seeds, tcfg: MemoryTrainConfig) -> SeedRuns:
    """Train one ``FactMemory`` per seed on the table ``keys -> values``, all seeds at once.

    Each seed's model is built with ``nnx.Rngs(seed)``; the states are split off
    (``nnx.split``), stacked along a new seed axis and trained by one ``jax.vmap``-ed step
    inside ``jax.lax.scan``. Every step sees the whole table (full batch), so seeds differ only
    in their initial weights and the result is a pure function of (config, table, seed).
    After each optimizer step the MoE blocks' router bias is updated from the load they saw
    (DeepSeek-V3's aux-loss-free balancing, when ``bias_update_rate > 0``).

    keys, values: [N] int (entity ids < ``cfg.n_keys``, value ids < ``cfg.n_values``).
    """
    keys = jnp.asarray(keys, jnp.int32)
    values = jnp.asarray(values, jnp.int32)
    if keys.shape != values.shape or keys.ndim != 1:
        raise ValueError(f"keys and values must be 1-D of equal length, got {keys.shape} and {values.shape}")
    if int(keys.max()) >= cfg.n_keys or int(values.max()) >= cfg.n_values:
        raise ValueError(f"ids out of range: keys must be < n_keys={cfg.n_keys} and values "
                         f"< n_values={cfg.n_values}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed, got ()")
    graphdef, params, rest = None, [], []
    for s in seeds:
        g, p, r = nnx.split(FactMemory(cfg, rngs=nnx.Rngs(s)), nnx.Param, ...)
        graphdef = graphdef or g
        params.append(p)
        rest.append(r)
    params, rest = _stack(params), _stack(rest)
    tx = _optimizer(tcfg)
    opt_state = jax.vmap(tx.init)(params)

    def loss(p, r):
        out = nnx.merge(graphdef, p, r)(keys)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, values)  # [N]
        return ce.mean() + out.aux_loss, (ce.sum(), out.moe_stats)

    def step(p, r, o):
        (_, (ce_sum, stats)), g = jax.value_and_grad(loss, has_aux=True)(p, r)
        updates, o = tx.update(g, o, p)
        model = nnx.merge(graphdef, optax.apply_updates(p, updates), r)
        for layer, st in zip(model.moe_layers(), stats):
            layer.update_bias(st.load)
        _, p, r = nnx.split(model, nnx.Param, ...)
        bits = keys.shape[0] * math.log2(cfg.n_values) - ce_sum / LN2
        return p, r, o, bits

    @jax.jit
    def chunk(p, r, o):
        def body(carry, _):
            p, r, o = carry
            p, r, o, bits = jax.vmap(step)(p, r, o)
            return (p, r, o), bits
        (p, r, o), bits = jax.lax.scan(body, (p, r, o), None, length=tcfg.record_every)
        return p, r, o, bits[0]  # bits before the chunk's first update

    curve, n_chunks = [], tcfg.steps // tcfg.record_every
    for i in range(n_chunks):
        if i == 1:
            t0 = time.perf_counter()
        params, rest, opt_state, b = chunk(params, rest, opt_state)
        curve.append(np.asarray(b))  # waits for the chunk to finish
        if not np.isfinite(curve[-1]).all():
            raise FloatingPointError(f"the loss became {curve[-1]} by step {(i + 1) * tcfg.record_every}")
    seconds_per_step = ((time.perf_counter() - t0) / ((n_chunks - 1) * tcfg.record_every)
                        if n_chunks > 1 else float("nan"))

    @jax.jit
    def final(p, r):
        out = jax.vmap(lambda p, r: nnx.merge(graphdef, p, r)(keys).logits)(p, r)  # [S, N, V]
        return bits_stored(out, values), jnp.mean(jnp.argmax(out, -1) == values, axis=-1)

    bits, acc = final(params, rest)
    models = [nnx.merge(graphdef, p, r) for p, r in zip(_unstack(params, len(seeds)),
                                                       _unstack(rest, len(seeds)))]
    steps = np.arange(0, tcfg.steps, tcfg.record_every)
    return SeedRuns(np.asarray(bits, np.float64), np.asarray(acc, np.float64), steps,
                    np.stack(curve, axis=1).astype(np.float64), models, seconds_per_step)


# --------------------------------------------------------------------------- statistics
def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Mean of the per-seed differences ``a - b`` with a Student-t confidence interval.

    a, b: [n_seeds] paired by seed (same seed, same table). Returns ``mean``, ``low``,
    ``high`` (the interval), ``sd`` (sample standard deviation of the differences),
    ``min`` (the smallest difference) and ``n``.
    """
    from scipy import stats as st

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"paired_difference needs at least 2 paired values, got shape {d.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    sd = float(d.std(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half),
            "sd": sd, "min": float(d.min()), "n": int(d.size)}
