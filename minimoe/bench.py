"""The performance benchmark: ``python -m minimoe.bench`` (a benchmark, not a test).

It asks whether sparsity is cheap on the machine at hand. One feed-forward layer is timed
forward + backward (the value and the gradient, w.r.t. the input and every weight, of
``sum(y * g)`` for a fixed random ``g``), jitted, warm-up and compilation excluded, median of
``repeats`` runs:

    dense        a SwiGLU FFN of hidden 1024;
    MoE          64 routed experts of hidden 128, top-6, plus 2 shared experts of hidden 128
                 -- 8 x 128 = 1024 active hidden units per token, the dense layer's -- with
                 each dispatch strategy (capacity factor 1.25 where the strategy has one);
    scaling      16 ... 256 routed experts, same top-6 + 2 shared and expert size: 16x the
                 parameters, and (the promise of MoE) about the same time.

Every figure is also put next to a plain matmul timed in the same run (``matmul_peak_gflops``):
*achieved* GFLOP/s count the useful work only -- 2 FLOPs per multiply-add of the weights a
token actually uses (router included), times 3 for forward + backward -- so capacity padding
and work a strategy wastes show up as a lower fraction. Last, ``tokens_per_s`` of a full
training step (forward, backward, AdamW) of a small MoE language model against its dense
twin, where the sort layer's time goes (each piece timed alone: ``breakdown_calls``), and the
speed targets (``TARGETS``) with the measured value and whether it meets them.

    python -m minimoe.bench                       # table; 2-3 minutes on a 2-core CPU
    python -m minimoe.bench --json bench.json     # the same figures as JSON
    python -m minimoe.bench --quick               # a tiny workload (seconds), for CI
    python -m minimoe.bench --strategies sort,onehot --tokens 4096 --repeats 20

A strategy that would need more than ``--max-gib`` GiB for one of its arrays (onehot's
[tokens, experts, capacity] masks, reference's per-token weight copies, ragged_dot's expanded
operand on a CPU) is skipped, with the reason in the output: at the default 8192 tokens that
is onehot and, on a CPU, ragged_dot (``--max-gib 4`` runs it: about a minute and 10 GB).
One that takes longer than ``--budget`` seconds per variant gets fewer runs (the count is
reported; a single over-budget call is reported as measured).

Timings on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from minimoe.blocks.ffn import SwiGLU
from minimoe.config import ModelConfig, MoEConfig
from minimoe.fast.buffer_dispatch import buffer_maps, sort_assignments
from minimoe.fast.gather import from_buffers, to_buffers
from minimoe.moe.dispatch import DROPLESS_STRATEGIES, STRATEGIES, compute_capacity
from minimoe.moe.experts import expert_ffn
from minimoe.moe.layer import MoELayer

DEFAULT_STRATEGIES = ("sort", "onehot", "dropless", "ragged_dot")  # reference: tests only
SCALING_EXPERTS = (16, 32, 64, 128, 256)

# The model whose full training step gives ``tokens_per_s``: a stand-in of the notebook-04
# MoE (2 routed experts of hidden 128 per token = the dense d_ff of 256), with attention tiled
# over the batch (``fast.tiled_attention``): on a 2-core CPU its training step and its dense
# twin's ran 10-25% faster that way than with the whole batch's scores at once.
TRAIN_MODEL = ModelConfig(d_model=64, n_layers=4, n_heads=4, d_ff=256, max_seq_len=128,
                          moe=MoEConfig(n_experts=16, top_k=2, d_expert=128,
                                        capacity_factor=1.25),
                          attention_tiling=True)


@dataclass(frozen=True)
class BenchConfig:
    """The workload. Defaults: 8192 tokens (batch 32 x seq 256), d_model 256, float32."""

    tokens: int = 8192
    seq_len: int = 256
    d_model: int = 256
    dense_hidden: int = 1024
    n_experts: int = 64
    top_k: int = 6
    d_expert: int = 128
    n_shared_experts: int = 2
    capacity_factor: float = 1.25
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    scaling_experts: tuple[int, ...] = SCALING_EXPERTS
    scaling_strategy: str = "sort"
    repeats: int = 10
    budget_s: float = 60.0
    max_gib: float = 1.0
    matmul_size: int = 2048
    train_model: ModelConfig = TRAIN_MODEL
    train_batch: int = 32
    train_seq: int = 128
    breakdown: bool = True  # time the sort layer's pieces too (breakdown_calls)

    def __post_init__(self):
        if self.tokens % self.seq_len:
            raise ValueError(f"tokens ({self.tokens}) must be a multiple of seq_len "
                             f"({self.seq_len})")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def batch(self) -> int:
        return self.tokens // self.seq_len

    def moe_config(self, strategy: str, n_experts: int | None = None) -> MoEConfig:
        """The MoE layer of the benchmark with ``strategy`` (dropless ones: no capacity)."""
        return MoEConfig(n_experts=n_experts or self.n_experts, top_k=self.top_k,
                         d_expert=self.d_expert, n_shared_experts=self.n_shared_experts,
                         capacity_factor=(None if strategy in DROPLESS_STRATEGIES
                                          else self.capacity_factor),
                         dispatch=strategy)

    def replace(self, **changes) -> "BenchConfig":
        return dataclasses.replace(self, **changes)


# A workload small enough for tests and CI: every code path, in seconds (3 x 16 routed
# + 16 shared hidden units = the dense 64).
QUICK = BenchConfig(tokens=256, seq_len=64, d_model=32, dense_hidden=64, n_experts=8,
                    top_k=3, d_expert=16, n_shared_experts=1, scaling_experts=(4, 8, 16),
                    repeats=3, matmul_size=256,
                    train_model=ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64,
                                            max_seq_len=32,
                                            moe=MoEConfig(n_experts=4, top_k=2, d_expert=32,
                                                          capacity_factor=1.25)),
                    train_batch=4, train_seq=32)


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Seconds per call: ``median`` of ``runs`` timed calls (warm-up excluded)."""

    median: float
    runs: int

    @property
    def ms(self) -> float:
        return self.median * 1e3


def time_many(calls: dict[str, tuple[Callable, tuple]], *, repeats: int = 10,
              budget_s: float = float("inf"),
              log: Callable[[str], None] = lambda m: None) -> dict[str, Timing]:
    """Time several jitted functions side by side: ``calls[name] = (fn, args)``.

    Each is compiled and called once to warm up (neither is timed). Then the calls are timed
    in rounds -- every function once per round -- so that a change in the machine's load
    (other programs starting or stopping) hits all of them alike, and their ratios stay
    meaningful. Returns the median of ``repeats`` runs per function.

    A slow function gets fewer runs: as many as fit in ``budget_s`` (at least one; when even
    one does not fit, its warm-up call is the measurement).
    """
    compiled, runs, warmups = {}, {}, {}
    for name, (fn, args) in calls.items():
        log(f"compiling {name} ...")
        compiled[name] = fn.lower(*args).compile()
        t0 = time.perf_counter()
        jax.block_until_ready(compiled[name](*args))
        warmups[name] = time.perf_counter() - t0
        runs[name] = repeats if warmups[name] * repeats <= budget_s \
            else int(budget_s // warmups[name])
    times = {name: [] if runs[name] >= 1 else [warmups[name]] for name in calls}
    for r in range(max(runs.values())):
        log(f"round {r + 1} of {max(runs.values())} ...")
        for name, (_, args) in calls.items():
            if r < runs[name]:
                t0 = time.perf_counter()
                jax.block_until_ready(compiled[name](*args))
                times[name].append(time.perf_counter() - t0)
    return {name: Timing(statistics.median(t), len(t)) for name, t in times.items()}


def time_call(fn: Callable, *args, repeats: int = 10, budget_s: float = float("inf")) -> Timing:
    """Median time of ``fn(*args)`` (a jitted function), warm-up excluded; see ``time_many``."""
    return time_many({"fn": (fn, args)}, repeats=repeats, budget_s=budget_s)["fn"]


def layer_inputs(cfg: BenchConfig, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Random tokens ``x`` [batch, seq, d_model] and the output probe ``g`` of the same shape."""
    kx, kg = jax.random.split(jax.random.key(seed))
    shape = (cfg.batch, cfg.seq_len, cfg.d_model)
    return jax.random.normal(kx, shape, jnp.float32), jax.random.normal(kg, shape, jnp.float32)


def layer_step(module: nnx.Module) -> tuple[Callable, nnx.State]:
    """A jitted forward + backward of an FFN layer: ``step(params, x, g)`` returns
    ``sum(y * g)`` and its gradients w.r.t. ``params`` and ``x``. Also returns the params.
    An ``MoELayer`` runs with ``train=True``, so its capacity factor applies.

    ``MoELayer`` takes ``x`` [batch, seq, d_model] and flattens the tokens itself. A dense
    ``SwiGLU`` gets them flattened too, as one [tokens, d_model] matrix: on XLA's CPU backend
    the weight gradient of a [batch, seq, d] @ [d, h] matmul (two contracting axes) is about
    2x slower than the same FLOPs on 2-D arrays, and the comparison would be unfair.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, x, g):
        layer = nnx.merge(graphdef, params, rest)
        if isinstance(layer, MoELayer):
            y, _ = layer(x, train=True)  # a training step: capacity applies
        else:
            y = layer(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return jnp.sum(y * g)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


def layer_call(module: nnx.Module, x: jax.Array, g: jax.Array) -> tuple[Callable, tuple]:
    """``(step, args)``: one forward + backward of ``module``, ready for ``time_many``."""
    step, params = layer_step(module)
    return step, (params, x, g)


def layer_output(module: nnx.Module, x: jax.Array) -> jax.Array:
    """The layer's output ``y`` for ``x`` (jitted), e.g. to check strategies agree."""
    y = nnx.jit(lambda m, x: m(x))(module, x)
    return y[0] if isinstance(y, tuple) else y


# ----------------------------------------------------------------------------------------
# Layers, FLOPs, memory guards
# ----------------------------------------------------------------------------------------

def make_dense(cfg: BenchConfig, seed: int = 0) -> SwiGLU:
    return SwiGLU(cfg.d_model, cfg.dense_hidden, rngs=nnx.Rngs(seed))


def make_moe(cfg: BenchConfig, strategy: str, n_experts: int | None = None,
             seed: int = 0) -> MoELayer:
    """The benchmark's MoE layer. The same seed gives the same weights for every strategy."""
    return MoELayer(cfg.d_model, cfg.moe_config(strategy, n_experts), rngs=nnx.Rngs(seed))


def dense_flops(cfg: BenchConfig) -> int:
    """Forward + backward FLOPs of the dense layer: 3 matmuls of d_model x hidden, 2 FLOPs
    per multiply-add, x3 for the backward pass (two matmuls per forward one)."""
    return 3 * 2 * cfg.tokens * 3 * cfg.d_model * cfg.dense_hidden


def moe_useful_flops(cfg: BenchConfig, n_experts: int | None = None) -> int:
    """Forward + backward FLOPs an MoE layer *needs*: the router (d_model x n_experts) plus
    the SwiGLU weights a token uses (top_k routed + shared experts). Padding to capacity or to
    blocks, and work a strategy wastes, are not counted."""
    n_experts = n_experts or cfg.n_experts
    active_hidden = cfg.moe_config("sort", n_experts).active_hidden
    per_token = 3 * cfg.d_model * active_hidden + cfg.d_model * n_experts
    return 3 * 2 * cfg.tokens * per_token


def largest_array_gib(cfg: BenchConfig, strategy: str, n_experts: int | None = None) -> float:
    """GiB of the largest intermediate a strategy builds that grows beyond O(tokens * d):
    onehot's [tokens, experts, capacity] mask, reference's per-assignment weight copies, and
    on a CPU ragged_dot's [assignments, experts * d_model] operand (XLA's CPU backend has no
    grouped matmul: it writes each row into its expert's block of a zero matrix, then runs
    one dense matmul against all experts' weights)."""
    n_experts = n_experts or cfg.n_experts
    assignments = cfg.tokens * cfg.top_k
    if strategy == "onehot":
        capacity = min(cfg.tokens, compute_capacity(cfg.tokens, cfg.top_k, n_experts,
                                                    cfg.capacity_factor))
        return cfg.tokens * n_experts * capacity * 4 / 2 ** 30
    if strategy == "reference":
        return assignments * 3 * cfg.d_model * cfg.d_expert * 4 / 2 ** 30
    if strategy == "ragged_dot" and jax.default_backend() == "cpu":
        return assignments * n_experts * max(cfg.d_model, cfg.d_expert) * 4 / 2 ** 30
    return 0.0


def train_tokens_per_s(model_cfg: ModelConfig, batch: int, seq: int,
                       repeats: int = 10) -> tuple[float, float]:
    """Tokens per second of a full training step (forward, backward, AdamW update) of a
    ``Transformer`` built from ``model_cfg``, and of its dense twin (``moe=None``), on random
    tokens; the two are timed in alternation."""
    from minimoe.model import Transformer
    from minimoe.training.train import TrainConfig, make_optimizer, train_step

    tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, model_cfg.vocab_size)
    inputs, targets, key = tokens[:, :-1], tokens[:, 1:], jax.random.key(1)
    runs = []
    for cfg in (model_cfg, model_cfg.replace(moe=None)):
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        optimizer = make_optimizer(model, TrainConfig(steps=10, warmup_steps=1))
        jax.block_until_ready(train_step(model, optimizer, inputs, targets, key))  # compile
        runs.append((model, optimizer, []))
    for _ in range(repeats):
        for model, optimizer, times in runs:
            t0 = time.perf_counter()
            jax.block_until_ready(train_step(model, optimizer, inputs, targets, key))
            times.append(time.perf_counter() - t0)
    moe_s, dense_s = (statistics.median(times) for _, _, times in runs)
    return batch * seq / moe_s, batch * seq / dense_s


def total_params(cfg: BenchConfig, n_experts: int) -> int:
    """Parameters of the MoE layer: router + routed experts + shared experts."""
    moe = cfg.moe_config("sort", n_experts)
    return (cfg.d_model * n_experts + n_experts * 3 * cfg.d_model * cfg.d_expert
            + 3 * cfg.d_model * moe.shared_hidden)


# ----------------------------------------------------------------------------------------
# Where the MoE layer's time goes
# ----------------------------------------------------------------------------------------

def _value_and_grad(f: Callable, argnums=(0, 1)) -> Callable:
    return jax.jit(jax.value_and_grad(f, argnums=argnums))


def breakdown_calls(cfg: BenchConfig, x: jax.Array, g: jax.Array) -> dict:
    """The pieces of the ``sort`` MoE layer, each timed alone, forward + backward like the
    layer (integer maps: forward only, they have no gradient), on the inputs the layer sees:

        router          logits, scores, top-k and weights (gradient w.r.t. x and w_router);
        sort + maps     ``sort_assignments`` and ``buffer_maps``: integers only;
        to_buffers      the gather of the tokens into the [E * C, d] buffers;
        routed experts  ``expert_ffn`` on the [E, C, d] buffers (capacity padding included);
        experts at cf 1 the same at capacity factor 1.0: what the padding costs;
        from_buffers    the gather that adds every token's k rows back up;
        shared experts  the dense SwiGLU of the shared hidden units.

    The full layer minus the pieces (without ``experts at cf 1``) is the ``rest``: dtype
    casts, the sum of routed and shared outputs, and what XLA does differently in one fused
    program (it can be negative on tiny workloads, where each piece alone pays a call's
    fixed overhead).
    """
    layer = make_moe(cfg, "sort")
    tokens = x.reshape(-1, cfg.d_model)  # [T, d]
    g_tokens = g.reshape(-1, cfg.d_model)  # [T, d]
    T, E, k = tokens.shape[0], cfg.n_experts, cfg.top_k
    capacity = compute_capacity(T, k, E, cfg.capacity_factor)
    routing = nnx.jit(lambda m, t: m.router(t, train=True))(layer, tokens)
    g_weights = jax.random.normal(jax.random.key(2), routing.expert_weights.shape)

    router_def, router_params, router_rest = nnx.split(layer.router, nnx.Param, ...)

    def router_loss(params, t):
        r = nnx.merge(router_def, params, router_rest)(t, train=True)
        return jnp.sum(r.expert_weights * g_weights)

    def maps(expert_index, expert_weights):
        s = sort_assignments(expert_index, expert_weights, E)
        return buffer_maps(s, capacity, T)

    slot_token, _, token_slots = jax.jit(maps)(routing.expert_index, routing.expert_weights)
    g_buf = jax.random.normal(jax.random.key(3), (E * capacity, cfg.d_model))
    weights = layer.experts.weights()

    def experts_call(cf: float):
        c = compute_capacity(T, k, E, cf)
        x_buf = jax.random.normal(jax.random.key(4), (E, c, cfg.d_model))
        g_c = jax.random.normal(jax.random.key(5), (E, c, cfg.d_model))
        return (_value_and_grad(lambda w, xb: jnp.sum(expert_ffn(xb, *w) * g_c)),
                (weights, x_buf))

    calls = {
        "router": (_value_and_grad(router_loss), (router_params, tokens)),
        "sort + maps": (jax.jit(maps), (routing.expert_index, routing.expert_weights)),
        "to_buffers": (_value_and_grad(
            lambda t: jnp.sum(to_buffers(t, slot_token, token_slots) * g_buf), 0), (tokens,)),
        "routed experts": experts_call(cfg.capacity_factor),
        "experts at cf 1": experts_call(1.0),
        "from_buffers": (_value_and_grad(
            lambda y: jnp.sum(from_buffers(y, slot_token, token_slots) * g_tokens), 0),
            (g_buf,)),
    }
    if layer.shared_experts is not None:
        calls["shared experts"] = layer_call(layer.shared_experts, x, g)
    calls["MoE layer (sort)"] = layer_call(layer, x, g)
    return calls


BREAKDOWN_PARTS = ("router", "sort + maps", "to_buffers", "routed experts", "from_buffers",
                   "shared experts")


def moe_breakdown(times: dict[str, Timing]) -> dict[str, float]:
    """Milliseconds of every piece of ``breakdown_calls``, plus ``rest`` = the full layer
    minus the pieces that make it up."""
    out = {name: t.ms for name, t in times.items() if name != "dense"}
    out["rest"] = out["MoE layer (sort)"] - sum(out.get(p, 0.0) for p in BREAKDOWN_PARTS)
    return out


# The speed targets: (what, key of run_benchmark's result, target, stretch target or None).
TARGETS = (
    ("MoE layer / dense (best strategy)", "moe_over_dense", 1.25, 1.15),
    ("dropless MoE layer / dense", "dropless_over_dense", 1.5, None),
    ("time, most / fewest experts (scaling)", "expert_scaling_last", 1.3, None),
    ("MoE LM training step / dense twin", "train_step_over_dense", 1.10, None),
)


def target_rows(res: dict) -> list[tuple[str, float | None, float, float | None, str]]:
    """``(what, measured, target, stretch, verdict)`` for every target of ``TARGETS``;
    ``measured`` is None (verdict 'not measured') where the run skipped it."""
    rows = []
    for what, key, target, stretch in TARGETS:
        value = res.get(key)
        if value is None:
            verdict = "not measured"
        elif stretch is not None and value <= stretch:
            verdict = "met (stretch too)"
        else:
            verdict = "met" if value <= target else f"missed by {value - target:.2f}"
        rows.append((what, value, target, stretch, verdict))
    return rows


# ----------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------

def environment() -> dict:
    """Versions and hardware, to print next to the figures."""
    device = jax.devices()[0]
    return {"jax_version": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(device, "device_kind", str(device)),
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


def moe_calls(cfg: BenchConfig, x: jax.Array, g: jax.Array) -> tuple[dict, dict]:
    """The MoE layer with every strategy of ``cfg.strategies``, ready for ``time_many``,
    and why the others were skipped (too much memory, see ``largest_array_gib``)."""
    calls, skipped = {}, {}
    for strategy in cfg.strategies:
        gib = largest_array_gib(cfg, strategy)
        if gib > cfg.max_gib:
            skipped[strategy] = (f"needs a {gib:.1f} GiB array (> --max-gib {cfg.max_gib:g}); "
                                 f"try fewer --tokens")
        else:
            calls[strategy] = layer_call(make_moe(cfg, strategy), x, g)
    return calls, skipped


def dropped_fractions(cfg: BenchConfig, x: jax.Array) -> dict[str, float]:
    """Fraction of the assignments each capacity-based strategy of ``cfg`` drops on ``x`` in a
    training call (capacity applies in training only)."""
    out = {}
    for strategy in cfg.strategies:
        if strategy not in DROPLESS_STRATEGIES and largest_array_gib(cfg, strategy) <= cfg.max_gib:
            _, stats = nnx.jit(lambda m, x: m(x, train=True))(make_moe(cfg, strategy), x)
            out[strategy] = max(0.0, float(stats.dropped_fraction))
    return out


def run_benchmark(cfg: BenchConfig = BenchConfig(), log: Callable[[str], None] = print) -> dict:
    """Run every measurement of the benchmark; return the figures as a JSON-ready dict."""
    t_start = time.perf_counter()
    x, g = layer_inputs(cfg)
    res: dict = {**environment(), "workload": {
        "tokens": cfg.tokens, "batch": cfg.batch, "seq_len": cfg.seq_len,
        "d_model": cfg.d_model, "dense_hidden": cfg.dense_hidden,
        "n_experts": cfg.n_experts, "top_k": cfg.top_k, "d_expert": cfg.d_expert,
        "n_shared_experts": cfg.n_shared_experts, "capacity_factor": cfg.capacity_factor,
        "dtype": "float32", "repeats": cfg.repeats}}

    # Everything timed together, round by round (see ``time_many``).
    n = cfg.matmul_size
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    calls = {"matmul": (jax.jit(jnp.matmul), (a, a.T)),  # the machine's practical peak
             "dense": layer_call(make_dense(cfg), x, g)}
    strategy_calls, res["skipped"] = moe_calls(cfg, x, g)
    calls.update(strategy_calls)
    scaling = {}  # number of experts -> name of its call
    for e in cfg.scaling_experts:
        name = f"{cfg.scaling_strategy}@{e}"
        if e == cfg.n_experts and cfg.scaling_strategy in calls:
            scaling[e] = cfg.scaling_strategy  # the same layer as above
        else:
            calls[name] = layer_call(make_moe(cfg, cfg.scaling_strategy, e), x, g)
            scaling[e] = name
    parts = breakdown_calls(cfg, x, g) if cfg.breakdown else {}
    part_call = {name: f"part: {name}" for name in parts}  # piece -> name of its call
    if parts and "sort" in calls:
        part_call["MoE layer (sort)"] = "sort"  # the same layer as above
        del parts["MoE layer (sort)"]
    calls.update({part_call[name]: call for name, call in parts.items()})
    t = time_many(calls, repeats=cfg.repeats, budget_s=cfg.budget_s, log=log)

    res["matmul_peak_gflops"] = 2 * n ** 3 / t["matmul"].median / 1e9
    res["dense_ms"] = t["dense"].ms
    res["moe_ms"] = {s: t[s].ms for s in strategy_calls}
    if res["moe_ms"]:
        res["best_strategy"] = min(res["moe_ms"], key=res["moe_ms"].get)
        res["moe_over_dense"] = res["moe_ms"][res["best_strategy"]] / res["dense_ms"]
    res["expert_scaling_strategy"] = cfg.scaling_strategy
    res["expert_scaling_ms"] = {str(e): t[name].ms for e, name in scaling.items()}
    first = res["expert_scaling_ms"][str(cfg.scaling_experts[0])]
    res["expert_scaling"] = {e: ms / first for e, ms in res["expert_scaling_ms"].items()}
    res["expert_scaling_params"] = {str(e): total_params(cfg, e) for e in scaling}

    peak = res["matmul_peak_gflops"]
    gflops = {"dense": dense_flops(cfg) / t["dense"].median / 1e9}
    gflops.update({s: moe_useful_flops(cfg) / t[s].median / 1e9 for s in strategy_calls})
    gflops.update({f"{cfg.scaling_strategy}@{e}": moe_useful_flops(cfg, e) / t[name].median / 1e9
                   for e, name in scaling.items()})
    res["achieved_gflops"] = gflops
    res["achieved_fraction"] = {k: v / peak for k, v in gflops.items()}
    res["repeats"] = {name: timing.runs for name, timing in t.items()}
    res["dropped_fraction"] = dropped_fractions(cfg, x)
    if part_call:
        res["breakdown_ms"] = moe_breakdown({name: t[c] for name, c in part_call.items()})
        res["breakdown_capacity_factor"] = cfg.capacity_factor

    log("training steps of a small MoE LM and its dense twin ...")
    res["tokens_per_s"], res["dense_tokens_per_s"] = train_tokens_per_s(
        cfg.train_model, cfg.train_batch, cfg.train_seq, cfg.repeats)
    res["train_model"] = cfg.train_model.to_dict()
    if "dropless" in res["moe_ms"]:
        res["dropless_over_dense"] = res["moe_ms"]["dropless"] / res["dense_ms"]
    res["expert_scaling_last"] = res["expert_scaling"][str(cfg.scaling_experts[-1])]
    res["train_step_over_dense"] = res["dense_tokens_per_s"] / res["tokens_per_s"]
    res["targets"] = [dict(zip(("what", "measured", "target", "stretch", "verdict"), row))
                      for row in target_rows(res)]
    res["wall_s"] = time.perf_counter() - t_start
    return res


def format_table(res: dict) -> str:
    """The figures of ``run_benchmark`` as a plain-text table."""
    w = res["workload"]
    peak = res["matmul_peak_gflops"]
    lines = [
        f"jax {res['jax_version']} on {res['backend']} ({res['device']}), "
        f"{res['cpu_count']} CPU cores",
        f"workload: {w['tokens']} tokens (batch {w['batch']} x seq {w['seq_len']}), "
        f"d_model {w['d_model']}, {w['dtype']}; forward + backward, median of "
        f"{w['repeats']} runs",
        f"plain matmul: {peak:.1f} GFLOP/s",
        "",
        f"{'layer':<34} {'ms':>9} {'x dense':>8} {'GFLOP/s':>8} {'of peak':>8} {'runs':>5}",
    ]

    def row(name, key, ms):
        lines.append(f"{name:<34} {ms:>9.1f} {ms / res['dense_ms']:>8.2f} "
                     f"{res['achieved_gflops'][key]:>8.1f} "
                     f"{res['achieved_fraction'][key]:>8.0%} {res['repeats'].get(key, ''):>5}")

    row(f"dense SwiGLU, hidden {w['dense_hidden']}", "dense", res["dense_ms"])
    moe = (f"{w['n_experts']}x{w['d_expert']} top-{w['top_k']} "
           f"+ {w['n_shared_experts']} shared")
    for strategy, ms in res["moe_ms"].items():
        extra = (" (no capacity)" if strategy in DROPLESS_STRATEGIES
                 else f" cf {w['capacity_factor']}")
        row(f"MoE {strategy}{extra}", strategy, ms)
    for strategy, why in res["skipped"].items():
        lines.append(f"{'MoE ' + strategy:<34} skipped: {why}")
    if "moe_over_dense" in res:
        lines.append(f"best MoE / dense: {res['moe_over_dense']:.2f} ({res['best_strategy']}); "
                     f"MoE layer: {moe}")
    for s, f in res["dropped_fraction"].items():
        lines.append(f"dropped assignments with {s}: {f:.2%}")
    lines += ["", f"expert scaling ({res['expert_scaling_strategy']}, top-{w['top_k']} "
                  f"+ {w['n_shared_experts']} shared, experts of hidden {w['d_expert']}):",
              f"{'experts':>8} {'params':>12} {'ms':>9} {'x first':>8} {'of peak':>8}"]
    for n, ms in res["expert_scaling_ms"].items():
        key = f"{res['expert_scaling_strategy']}@{n}"
        lines.append(f"{n:>8} {res['expert_scaling_params'][n]:>12,} {ms:>9.1f} "
                     f"{res['expert_scaling'][n]:>8.2f} {res['achieved_fraction'][key]:>8.0%}")
    lines += ["", f"training step, small MoE LM: {res['tokens_per_s']:,.0f} tokens/s "
                  f"(its dense twin: {res['dense_tokens_per_s']:,.0f} tokens/s)"]
    if "breakdown_ms" in res:
        b = res["breakdown_ms"]
        lines += ["", f"where the sort layer's time goes (each piece alone, forward + backward, "
                      f"cf {res['breakdown_capacity_factor']}):",
                  f"{'piece':<24} {'ms':>9} {'x dense':>8}"]
        for name in (*BREAKDOWN_PARTS, "rest", "MoE layer (sort)", "experts at cf 1"):
            if name in b:
                lines.append(f"{name:<24} {b[name]:>9.1f} {b[name] / res['dense_ms']:>8.2f}")
    lines += ["", f"targets (plain matmul peak on this machine: {peak:.1f} GFLOP/s):",
              f"{'':<40} {'measured':>9} {'target':>7} {'stretch':>8}  verdict"]
    for t in res["targets"]:
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        stretch = "-" if t["stretch"] is None else f"{t['stretch']:.2f}"
        lines.append(f"{t['what']:<40} {measured:>9} {t['target']:>7.2f} {stretch:>8}  "
                     f"{t['verdict']}")
    lines.append(f"benchmark wall time: {res['wall_s']:.0f} s")
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[BenchConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m minimoe.bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    p.add_argument("--quick", action="store_true", help="a tiny workload (seconds), for CI")
    p.add_argument("--tokens", type=int, help="tokens per layer call (default 8192)")
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 10)")
    p.add_argument("--strategies", help=f"comma-separated, from {','.join(STRATEGIES)} "
                                        f"(default {','.join(DEFAULT_STRATEGIES)})")
    p.add_argument("--budget", type=float, help="seconds of timed runs per variant (default 60)")
    p.add_argument("--max-gib", type=float, help="skip strategies needing a bigger array (1)")
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else BenchConfig()
    changes = {}
    if a.tokens:
        changes["tokens"] = a.tokens
        changes["seq_len"] = math.gcd(a.tokens, cfg.seq_len)
    if a.repeats:
        changes["repeats"] = a.repeats
    if a.strategies:
        changes["strategies"] = tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    if a.budget:
        changes["budget_s"] = a.budget
    if a.max_gib:
        changes["max_gib"] = a.max_gib
    try:
        return cfg.replace(**changes), a.json
    except ValueError as e:
        p.error(str(e))


def main(argv=None) -> int:
    cfg, json_path = parse_args(argv)
    res = run_benchmark(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
