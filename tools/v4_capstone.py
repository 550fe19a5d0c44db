"""The multi-seed runs behind notebook 10; writes minimoe/results/v4_capstone.json.

    PYTHONPATH=. python tools/v4_capstone.py             # about 30 minutes on a 2-core CPU
    PYTHONPATH=. python tools/v4_capstone.py --timings   # then, on an idle machine: step times

For every seed in ``SEEDS`` it trains each run of ``miniature.capstone_runs()`` -- the mini
DeepSeek-V4 built from V4-Flash's shrunk config.json, a DeepSeek-V3-shaped twin, a dense twin
with the same active parameters, and the mini V4 with one change at a time (one residual
stream, learned routing instead of hashing, window-only attention, the MTP loss, Muon) -- on
the course corpus with ``capstone_train_config(seed)`` and records ``run_capstone``'s
measurements (the FP8/FP4 expert rounding on the mini V4 itself). The seed sets the model's
initialisation and the order of the batches. Everything is a pure function of the settings and
the seeds, except the timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

from minimoe.experiments.miniature import capstone_runs, capstone_train_config, run_capstone
from minimoe.training.data import course_corpus

SEEDS = (0, 1, 2, 3)
TIMED_STEPS = 50
OUT = Path(__file__).resolve().parents[1] / "minimoe" / "results" / "v4_capstone.json"


def add_timings(out: Path, runs: dict, names, train, val, steps: int = TIMED_STEPS) -> int:
    """Milliseconds per training step of each run, timed alone after its compiling step (the
    runs' own ``ms_per_step`` are only as clean as the machine was during the long run)."""
    from flax import nnx

    from minimoe.model import Transformer
    from minimoe.training.train import Trainer

    data = json.loads(out.read_text())
    data["timing"] = {"steps": steps, "jax": jax.__version__, "backend": jax.default_backend(),
                      "machine": platform.machine(), "ms_per_step": {}}
    for name in names:
        cfg, changes = runs[name]
        trainer = Trainer(Transformer(cfg, rngs=nnx.Rngs(0)),
                          capstone_train_config(0).replace(**changes), train, val)
        trainer.run(1, progress=False)
        t0 = time.perf_counter()
        trainer.run(1 + steps, progress=False)
        ms = data["timing"]["ms_per_step"][name] = 1e3 * (time.perf_counter() - t0) / steps
        print(f"{name:<28} {ms:.0f} ms/step", flush=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--runs", nargs="+", default=None, help="names of runs (default: all)")
    ap.add_argument("--timings", action="store_true",
                    help="only time each run's training step (on an idle machine) and add the "
                         "figures to an existing --out file as 'timing'")
    args = ap.parse_args(argv)
    runs = capstone_runs()
    names = args.runs or list(runs)
    train, val = course_corpus()
    if args.timings:
        return add_timings(Path(args.out), runs, names, train, val)
    t_start = time.perf_counter()
    tcfg = capstone_train_config()
    out = {"command": "PYTHONPATH=. python tools/v4_capstone.py " + " ".join(argv or sys.argv[1:]),
           "jax": jax.__version__, "backend": jax.default_backend(), "machine": platform.machine(),
           "seeds": list(args.seeds),
           "train": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "seq_len", "lr",
                                                     "warmup_steps", "eval_batches")},
           "runs": {name: [] for name in names}}
    for seed in args.seeds:
        for name in names:
            cfg, changes = runs[name]
            r = run_capstone(cfg, capstone_train_config(seed).replace(**changes), train, val,
                             quantize=name == "V4 (mini)")
            out["runs"][name].append(r)
            print(f"seed {seed} {name:<28} val {r['val_loss']:.4f} recall "
                  f"{r['recall']['exact_match']:.3f} {r['ms_per_step']:.0f} ms/step", flush=True)
    out["wall_seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} in {out['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
