"""The long version of notebook 04's capacity measurement; writes minimoe/results/capacity_sweep.json.

    PYTHONPATH=. python tools/capacity_sweep.py   # 24 minutes on a shared 2-core CPU

For every table size in ``SIZES`` and every seed in ``SEEDS`` it trains three ``FactMemory``
models on ``capacity_facts(n, N_VALUES)`` -- a dense one with the MoE's active feed-forward
width, the MoE, and a dense one with the MoE's total width -- and records the bits each
stores (``bits_stored``), its accuracy and its measured time per step. It then trains the small
dense model for as many steps as the MoE's wall-clock allows (equal time, not equal steps), and
the ablations (coarse vs fine experts, a shared expert or not) at one table size. Everything is
a pure function of the settings below and the seeds, except the timings.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from minimoe.experiments.capacity import (CAPACITY_MOE, MemoryConfig, MemoryTrainConfig,
                                          capacity_models, memory_param_counts,
                                          most_frequent_accuracy, prior_bits, train_seeds)
from minimoe.training.data import capacity_facts

N_VALUES = 64  # each fact is log2(64) = 6 bits
D_MODEL = 16
MOE = CAPACITY_MOE  # 16 experts x 16 hidden units, top-2, softmax router
MODELS = {name: (lambda n, name=name: capacity_models(n, N_VALUES, D_MODEL, MOE)[name])
          for name in capacity_models(1)}
ABLATIONS = {  # all 32 active and 256 total hidden units
    "coarse: 8 x 32, top-1": MOE.replace(n_experts=8, top_k=1, d_expert=32),
    "fine: 16 x 16, top-2": MOE,
    "finer: 32 x 8, top-4": MOE.replace(n_experts=32, top_k=4, d_expert=8),
    "shared 16 + 15 x 16, top-1": MOE.replace(n_experts=15, top_k=1, n_shared_experts=1),
}
SIZES = (256, 512, 1024, 2048, 4096, 8192)
SEEDS = (0, 1, 2, 3, 4)
TRAIN = MemoryTrainConfig(steps=1000, lr=1e-2, warmup_steps=50, record_every=100)
ABLATION_SIZE = 4096


def run(cfg: MemoryConfig, n: int, seeds, tcfg: MemoryTrainConfig) -> dict:
    keys, values = capacity_facts(n, N_VALUES)
    r = train_seeds(cfg, keys, values, seeds, tcfg)
    return {"bits": r.bits.tolist(), "accuracy": r.accuracy.tolist(),
            "seconds_per_step": r.seconds_per_step, "curve_steps": r.curve_steps.tolist(),
            "curve_bits": r.curve_bits.tolist(), "steps": tcfg.steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "minimoe" / "results" / "capacity_sweep.json"))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--steps", type=int, default=TRAIN.steps)
    args = ap.parse_args(argv)
    tcfg = TRAIN.replace(steps=args.steps, record_every=min(TRAIN.record_every, args.steps // 2))
    seeds = tuple(args.seeds)
    t_start = time.perf_counter()
    out = {"command": "PYTHONPATH=. python tools/capacity_sweep.py " + " ".join(argv or sys.argv[1:]),
           "jax": jax.__version__, "backend": jax.default_backend(), "machine": platform.machine(),
           "n_values": N_VALUES, "d_model": D_MODEL, "seeds": list(seeds), "sizes": list(args.sizes),
           "train": {"steps": tcfg.steps, "lr": tcfg.lr, "warmup_steps": tcfg.warmup_steps,
                     "min_lr_ratio": tcfg.min_lr_ratio, "weight_decay": tcfg.weight_decay},
           "moe": {k: getattr(MOE, k) for k in ("n_experts", "top_k", "d_expert", "router")},
           "params": {name: memory_param_counts(make(1)) for name, make in MODELS.items()},
           "baselines": {}, "runs": {name: {} for name in MODELS}}
    for n in args.sizes:
        _, values = capacity_facts(n, N_VALUES)
        out["baselines"][str(n)] = {"table_bits": n * math.log2(N_VALUES),
                                    "prior_bits": prior_bits(values, N_VALUES),
                                    "most_frequent_accuracy": most_frequent_accuracy(values, N_VALUES)}
        for name, make in MODELS.items():
            out["runs"][name][str(n)] = res = run(make(n), n, seeds, tcfg)
            print(f"n={n:>5} {name:<22} bits {np.mean(res['bits']):>8.0f} "
                  f"acc {np.mean(res['accuracy']):.3f}  {res['seconds_per_step'] * 1e3:.1f} ms/step",
                  flush=True)
    # equal wall-clock: the small dense model gets the steps the MoE's time buys
    n = ABLATION_SIZE if ABLATION_SIZE in args.sizes else max(args.sizes)
    moe_s = out["runs"]["MoE"][str(n)]["seconds_per_step"]
    dense_s = out["runs"]["dense (active width)"][str(n)]["seconds_per_step"]
    ratio = moe_s / dense_s
    steps = int(math.ceil(ratio)) * tcfg.steps
    res = run(MODELS["dense (active width)"](n), n, seeds,
              tcfg.replace(steps=steps, record_every=tcfg.record_every * int(math.ceil(ratio))))
    out["equal_time"] = {"n": n, "moe_over_dense_time_per_step": ratio, "dense_steps": steps, **res}
    print(f"equal time at n={n}: MoE step = {ratio:.1f}x dense; dense with {steps} steps "
          f"stores {np.mean(res['bits']):.0f} bits", flush=True)
    out["ablations"] = {"n": n}
    for name, m in ABLATIONS.items():
        cfg = MemoryConfig(n, N_VALUES, D_MODEL, d_ff=None, moe=m)
        out["ablations"][name] = {**run(cfg, n, seeds, tcfg), "params": memory_param_counts(cfg)}
        print(f"ablation {name:<28} bits {np.mean(out['ablations'][name]['bits']):>8.0f}", flush=True)
    out["wall_seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} in {out['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
