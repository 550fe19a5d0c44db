"""Training: optax AdamW, a jitted NNX train step, evaluation, history and checkpoints.

``Trainer`` owns a model, its optimizer, the step counter and a metrics history:

    trainer = Trainer(model, TrainConfig(steps=300), train_data, val_data)
    trainer.run()                     # progress bar; trainer.history holds the curves
    trainer.save("ckpt.npz")          # model + optimizer + step, no pickle
    Trainer.load("ckpt.npz", model, train_data, val_data).run()   # continues exactly

Batch ``i`` depends only on (seed, i), so a resumed run sees the same batches and reaches the
same losses as an uninterrupted one. MoE layers with aux-loss-free balancing get their router
bias nudged after every optimizer step from the load they just saw (DeepSeek-V3 §2.1.2); the
optimizer never touches that bias because it is not an ``nnx.Param``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..config import ModelConfig
from .data import Batch, TokenData, eval_batches, get_batch

CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes: steps, batch_size, seq_len; lr (peak), warmup_steps (linear warm-up), then
    cosine decay to ``lr * min_lr_ratio`` (``make_schedule``); weight_decay (AdamW, decoupled,
    on weight matrices only: ``decay_mask``); clip_norm (global gradient norm); seed (batches
    and noise); eval_every, eval_batches (validation cadence).

    DeepSeek-V3/V4 options (the defaults leave training as it was):
        optimizer: ``"adamw"``, or ``"muon"`` -- optax's Muon for the weight matrices of the
            blocks, AdamW for the embedding, output head, norms, router and mHC maps
            (``muon_labels``).
        muon_lr: Muon's peak learning rate (same warm-up and decay shape as ``lr``, which
            stays the AdamW part's rate).
        mtp_loss_weight: weight of the multi-token-prediction loss (DeepSeek-V3: 0.3, later
            0.1); > 0 needs a model with an MTP module.
    """

    steps: int = 300
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 4
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    mtp_loss_weight: float = 0.0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "clip_norm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
        check_schedule(self)
        if self.weight_decay < 0 or self.clip_norm <= 0:
            raise ValueError(f"weight_decay must be >= 0 and clip_norm > 0, got "
                             f"{self.weight_decay!r} and {self.clip_norm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (isinstance(self.muon_lr, (int, float)) and self.muon_lr > 0):
            raise ValueError(f"muon_lr must be > 0, got {self.muon_lr!r}")
        if not (isinstance(self.mtp_loss_weight, (int, float)) and self.mtp_loss_weight >= 0):
            raise ValueError(f"mtp_loss_weight must be a number >= 0, got {self.mtp_loss_weight!r}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def check_schedule(cfg) -> None:
    """The bounds of a warm-up + cosine schedule (``make_schedule``) on any config with ``steps``,
    ``lr``, ``warmup_steps`` and ``min_lr_ratio``; each failure names the field and its value."""
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr!r}")
    if not 0 <= cfg.warmup_steps < cfg.steps:
        raise ValueError(f"warmup_steps must be in [0, steps={cfg.steps}), got {cfg.warmup_steps!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio!r}")


def make_schedule(tcfg: TrainConfig) -> optax.Schedule:
    """Learning rate of optimizer step ``count`` (0-based).

    Linear warm-up over the first ``warmup_steps`` steps -- step 0 already takes
    ``lr / warmup_steps``, so no step is wasted at rate 0 -- reaching ``lr`` at step
    ``warmup_steps - 1``; then cosine decay to ``lr * min_lr_ratio`` at the last step.
    """
    base = optax.warmup_cosine_decay_schedule(
        0.0, tcfg.lr, tcfg.warmup_steps, tcfg.steps, end_value=tcfg.lr * tcfg.min_lr_ratio)
    if tcfg.warmup_steps == 0:
        return base
    return lambda count: base(count + 1)


def decay_mask(params):
    """Which parameters AdamW's weight decay applies to: weight matrices (2-D and up: linear
    layers, stacked experts, the router, the embedding), not vectors (RMSNorm gains, biases).

    Decaying a norm gain pulls it toward 0 and rescales its layer for no gain in
    regularisation; this is the usual split (nanoGPT's ``configure_optimizers``, for one).
    """
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(model: nnx.Module, tcfg: TrainConfig) -> nnx.Optimizer:
    """AdamW with global-norm clipping, over the model's ``nnx.Param``s only."""
    # settings that do not shape the transformation are reset, so that runs differing only in
    # them (seed, evaluation cadence) get the same transformation object from the cache
    return nnx.Optimizer(model, _transform(tcfg.replace(seed=0, eval_every=1, eval_batches=1)),
                         wrt=nnx.Param)


@functools.lru_cache(maxsize=64)
def _transform(tcfg: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation of ``tcfg``'s optimisation settings, built once per settings.

    The jitted ``train_step`` is compiled once per model structure *and* transformation (it is
    part of the optimizer's static structure, compared by identity): reusing one object lets a
    second run with the same settings -- another seed, say -- skip the compilation.
    """
    if tcfg.optimizer == "muon":
        return optax.chain(optax.clip_by_global_norm(tcfg.clip_norm), _muon_transform(tcfg))
    return optax.chain(optax.clip_by_global_norm(tcfg.clip_norm),
                       optax.adamw(make_schedule(tcfg), weight_decay=tcfg.weight_decay,
                                   mask=decay_mask))


# ---------------------------------------------------------------------------------- Muon
ADAMW_PARAM_NAMES = frozenset({"embed", "lm_head", "w_router", "hc_attn", "hc_ffn", "hc_head"})


def _path_names(path) -> list[str]:
    return [_key_str(k) for k in path]


def muon_labels(params):
    """Which optimizer updates each parameter under ``optimizer='muon'``: ``"muon"`` or
    ``"adamw"`` (a tree like ``params``).

    Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") replaces
    the update of a weight *matrix* by the nearest semi-orthogonal matrix (Newton-Schulz
    iterations), which only means something for the matrices inside the blocks: attention
    projections, dense and expert FFNs (stacked experts are a batch of matrices), the MTP
    projections. Everything else keeps AdamW, as in the Muon papers and DeepSeek-V4's model
    card: vectors (norm gains), the embedding and the output head, the router (its rows are
    per-expert scores, not a linear map to orthogonalise) and mHC's small coefficient maps.
    """
    def label(path, p):
        if jnp.ndim(p) < 2 or jnp.ndim(p) > 3 or ADAMW_PARAM_NAMES & set(_path_names(path)):
            return "adamw"
        return "muon"
    return jax.tree_util.tree_map_with_path(label, params)


def _muon_dimension_numbers(params):
    """The matrix axes of each Muon parameter: the last two ([d_in, d_out]); a leading axis
    (the stacked experts) is a batch of independent matrices."""
    from optax.contrib import MuonDimensionNumbers
    return jax.tree_util.tree_map(
        lambda p: MuonDimensionNumbers(jnp.ndim(p) - 2, jnp.ndim(p) - 1), params)


def _muon_transform(tcfg: TrainConfig) -> optax.GradientTransformation:
    """optax's own Muon (``optax.contrib.muon``) on the ``"muon"`` parameters, AdamW (with
    ``decay_mask``) on the rest; both with the warm-up + cosine shape, peaks ``muon_lr`` and
    ``lr``; decoupled weight decay ``weight_decay`` on both.

    The partition runs on the flat list of parameter arrays, labelled from the named tree:
    flax 0.11 (Colab's) cannot hold optax's masked placeholders inside a tree of NNX
    variables, a plain list works with both flax versions.
    """
    from optax.contrib import muon
    transforms = {
        "muon": muon(make_schedule(tcfg.replace(lr=tcfg.muon_lr)),
                     weight_decay=tcfg.weight_decay,
                     muon_weight_dimension_numbers=_muon_dimension_numbers),
        "adamw": optax.adamw(make_schedule(tcfg), weight_decay=tcfg.weight_decay,
                             mask=decay_mask)}

    def partitioned(tree) -> optax.GradientTransformation:
        return optax.partition(transforms, jax.tree_util.tree_leaves(muon_labels(tree)))

    def init(params):
        return partitioned(params).init(jax.tree_util.tree_leaves(params))

    def update(updates, state, params=None):
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        flat_params = None if params is None else jax.tree_util.tree_leaves(params)
        new, state = partitioned(updates).update(leaves, state, flat_params)
        return jax.tree_util.tree_unflatten(treedef, new), state

    return optax.GradientTransformation(init, update)


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy [batch, seq] of float32 logits [batch, seq, vocab]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def loss_fn(model, inputs, targets, key=None, train: bool = True):
    """Mean next-token cross-entropy plus the MoE balancing losses the config enables."""
    out = model(inputs, train=train, key=key)
    ce = token_cross_entropy(out.logits, targets).mean()
    return ce + out.aux_loss, (ce, out)


def _moe_metrics(out) -> dict:
    if not out.moe_stats:
        return {}
    return {"load": jnp.stack([s.load for s in out.moe_stats]),  # [n_moe_layers, n_experts]
            "dropped": jnp.stack([s.dropped_fraction for s in out.moe_stats]),
            "aux_loss": out.aux_loss}


@nnx.jit
def train_step(model, optimizer, inputs, targets, key):
    """One AdamW step; then the aux-loss-free bias update of every MoE layer."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, (ce, out)), grads = grad_fn(model, inputs, targets, key)
    optimizer.update(model, grads)
    for layer, stats in zip(model.moe_layers(), out.moe_stats):
        layer.update_bias(stats.load)
    return {"loss": loss, "ce": ce, "grad_norm": optax.tree.norm(grads), **_moe_metrics(out)}


def mtp_loss_fn(model, inputs, targets, key=None, train: bool = True, mtp_weight: float = 0.3):
    """``loss_fn`` plus ``mtp_weight`` times the MTP module's cross-entropy on the token after
    next (DeepSeek-V3 §2.2, eq. 25), and the balancing loss of its MoE block."""
    from ..v4.mtp import mtp_inputs

    out = model(inputs, train=train, key=key)
    ce = token_cross_entropy(out.logits, targets).mean()
    hidden, next_tokens, mtp_targets = mtp_inputs(out.hidden, inputs, targets)
    mtp_key = None if key is None else jax.random.fold_in(key, model.cfg.n_layers)
    mtp_logits, _, mtp_stats = model.mtp(model, hidden, next_tokens, train=train, key=mtp_key)
    mtp_ce = token_cross_entropy(mtp_logits, mtp_targets).mean()
    mtp_aux = 0.0 if mtp_stats is None else mtp_stats.loss
    return ce + out.aux_loss + mtp_weight * (mtp_ce + mtp_aux), (ce, mtp_ce, out, mtp_stats)


@functools.partial(nnx.jit, static_argnames=("mtp_weight",))
def mtp_train_step(model, optimizer, inputs, targets, key, mtp_weight: float):
    """``train_step`` with the MTP loss added (``mtp_loss_fn``); the MTP block's router bias
    is balanced like the others."""
    grad_fn = nnx.value_and_grad(mtp_loss_fn, has_aux=True)
    (loss, (ce, mtp_ce, out, mtp_stats)), grads = grad_fn(model, inputs, targets, key, True,
                                                          mtp_weight)
    optimizer.update(model, grads)
    for layer, stats in zip(model.moe_layers(), out.moe_stats):
        layer.update_bias(stats.load)
    if mtp_stats is not None:
        model.mtp.block.ffn.update_bias(mtp_stats.load)
    return {"loss": loss, "ce": ce, "mtp_ce": mtp_ce, "grad_norm": optax.global_norm(grads),
            **_moe_metrics(out)}


@nnx.jit
def _eval_tokens(model, inputs, targets):
    out = model(inputs)
    return token_cross_entropy(out.logits, targets), jnp.argmax(out.logits, -1) == targets


def evaluate(model, batches: list[Batch], domain_names: tuple[str, ...]) -> dict:
    """Validation loss over ``batches``: overall and per domain (mean cross-entropy per token)."""
    ce_sum = np.zeros(len(domain_names))
    count = np.zeros(len(domain_names))
    for b in batches:
        ce, _ = _eval_tokens(model, jnp.asarray(b.inputs), jnp.asarray(b.targets))
        ce = np.asarray(ce, np.float64)
        np.add.at(ce_sum, b.domains, ce)
        np.add.at(count, b.domains, 1)
    res = {"val_loss": float(ce_sum.sum() / count.sum())}
    for i, name in enumerate(domain_names):
        if count[i]:
            res[f"val_loss/{name}"] = float(ce_sum[i] / count[i])
    return res


def answer_metrics(model, docs, batch_size: int = 128) -> dict:
    """How well the model knows the answers of ``docs`` (teacher-forced, prompts given).

    Returns ``exact_match``: fraction of documents whose whole answer is the argmax prediction;
    ``answer_loss``: mean cross-entropy per answer token (nats), the smooth counterpart that
    moves before whole answers flip.
    """
    from .data import answer_batch

    docs = [d for d in docs if d.answer]
    if not docs:
        raise ValueError("answer_metrics and exact_match need documents with answers; "
                         "their domain has none (it asks no question)")
    hits, ce_sum, n_tokens = 0, 0.0, 0
    for i in range(0, len(docs), batch_size):
        b = answer_batch(docs[i:i + batch_size])
        ce, correct = _eval_tokens(model, jnp.asarray(b.inputs), jnp.asarray(b.targets))
        hits += int(np.where(b.answer, np.asarray(correct), True).all(axis=1).sum())
        ce_sum += float(np.asarray(ce, np.float64)[b.answer].sum())
        n_tokens += int(b.answer.sum())
    return {"exact_match": hits / len(docs), "answer_loss": ce_sum / n_tokens}


def exact_match(model, docs, batch_size: int = 128) -> float:
    """Fraction of documents whose whole answer the model predicts (teacher-forced argmax)."""
    return answer_metrics(model, docs, batch_size)["exact_match"]


PROGRESS_ENV = "MINIMOE_PROGRESS"
PROGRESS_KINDS = ("widget", "text")


def progress_bar(total: int, initial: int = 0, *, enabled: bool = True):
    """A tqdm bar for a training run, of the kind the environment variable ``MINIMOE_PROGRESS``
    names: ``widget`` (the default; a live bar in JupyterLab or Colab, plain text in a
    terminal) or ``text`` (plain text on stderr, kept when finished).

    Executed and stored notebooks use ``text`` (``tools/execute_notebooks.py`` and the root
    ``conftest.py`` set it): a stored widget cannot show its final state, so a saved notebook
    would show every run stuck at 0%; a text bar is stored as it finished.
    Refreshes at most every 2 s: a cell that trains several models must not flood the
    kernel's output channel (Jupyter drops messages past its queue limit).
    """
    import os
    import sys

    kind = os.environ.get(PROGRESS_ENV, "widget")
    if kind not in PROGRESS_KINDS:
        raise ValueError(f"{PROGRESS_ENV} must be one of {list(PROGRESS_KINDS)}, got {kind!r}")
    if kind == "text":
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, disable=not enabled, desc="train", leave=True,
                    mininterval=2.0, file=sys.stderr, ascii=True)
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", leave=False,
                mininterval=2.0)


@dataclass
class History:
    """Metrics per step: ``train`` rows (step, loss, ...) and ``val`` rows (step, val_loss, ...)."""

    train: list = field(default_factory=list)
    val: list = field(default_factory=list)

    def series(self, key: str, which: str = "train") -> tuple[np.ndarray, np.ndarray]:
        rows = [r for r in getattr(self, which) if key in r]
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows])


class Trainer:
    """Model + optimizer + step + history. See the module docstring for a tour."""

    def __init__(self, model: nnx.Module, tcfg: TrainConfig, train_data: TokenData,
                 val_data: TokenData | None = None):
        self.model, self.tcfg = model, tcfg
        if tcfg.mtp_loss_weight > 0 and getattr(model, "mtp", None) is None:
            raise ValueError(f"mtp_loss_weight={tcfg.mtp_loss_weight} needs a model with an MTP "
                             f"module (ModelConfig(num_nextn_predict_layers=1))")
        self.train_data, self.val_data = train_data, val_data
        self.optimizer = make_optimizer(model, tcfg)
        self.step = 0
        self.history = History()
        self._key = jax.random.key(tcfg.seed)
        self._val = None if val_data is None else eval_batches(
            val_data, tcfg.batch_size, tcfg.seq_len, tcfg.eval_batches)

    def evaluate(self) -> dict:
        if self._val is None:
            raise ValueError("this Trainer has no validation data (val_data=None)")
        return evaluate(self.model, self._val, self.val_data.domain_names)

    def run(self, until: int | None = None, *, progress: bool = True) -> History:
        """Train until step ``until`` (default ``tcfg.steps``), evaluating every ``eval_every``.

        ``progress`` shows a progress bar (see ``progress_bar`` for its two kinds).
        """
        until = self.tcfg.steps if until is None else until
        if until > self.tcfg.steps:
            raise ValueError(f"until={until} is beyond the schedule's steps={self.tcfg.steps}")
        t = self.tcfg
        bar = progress_bar(until, self.step, enabled=progress)
        while self.step < until:
            b = get_batch(self.train_data, t.batch_size, t.seq_len, t.seed, self.step)
            step_args = (self.model, self.optimizer, jnp.asarray(b.inputs),
                         jnp.asarray(b.targets), jax.random.fold_in(self._key, self.step))
            if t.mtp_loss_weight > 0:
                m = mtp_train_step(*step_args, mtp_weight=t.mtp_loss_weight)
            else:
                m = train_step(*step_args)
            self.step += 1
            row = {"step": self.step, "loss": float(m["loss"]), "ce": float(m["ce"]),
                   "grad_norm": float(m["grad_norm"])}
            if "mtp_ce" in m:
                row["mtp_ce"] = float(m["mtp_ce"])
            if "load" in m:
                row.update(load=np.asarray(m["load"]), dropped=np.asarray(m["dropped"]),
                           aux_loss=float(m["aux_loss"]))
            if not np.isfinite(row["loss"]):
                raise FloatingPointError(f"loss became {row['loss']} at step {self.step}")
            self.history.train.append(row)
            if self._val is not None and (self.step % t.eval_every == 0 or self.step == until):
                self.history.val.append({"step": self.step, **self.evaluate()})
                bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{self.history.val[-1]['val_loss']:.3f}")
            bar.update(1)
        bar.close()
        return self.history

    # ---------------------------------------------------------------- checkpoints
    def save(self, path) -> Path:
        """Write model + optimizer state + step as a ``.npz`` of plain arrays (no pickle)."""
        path = Path(path)
        arrays = {}
        for prefix, obj in (("model", self.model), ("optimizer", self.optimizer)):
            for name, leaf in _flat(obj):
                arrays[f"{prefix}/{name}"] = np.asarray(jax.device_get(leaf))
        meta = {"format": CHECKPOINT_FORMAT, "step": self.step,
                "model_config": self.model.cfg.to_dict(),
                "train_config": dataclasses.asdict(self.tcfg)}
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path, model: nnx.Module, train_data: TokenData,
             val_data: TokenData | None = None) -> "Trainer":
        """A Trainer continuing a saved run: ``model`` is filled in place with the saved state.

        The model must have been built with the saved config (checked). Loading never
        executes code: arrays are read with ``allow_pickle=False``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"checkpoint {str(path)!r} is not a minimoe checkpoint: {e}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r} is not supported "
                             f"(expected {CHECKPOINT_FORMAT})")
        saved_cfg = ModelConfig.from_dict(meta["model_config"])
        if saved_cfg != model.cfg:
            raise ValueError(f"checkpoint was saved from a different ModelConfig: {saved_cfg}")
        trainer = cls(model, TrainConfig(**meta["train_config"]), train_data, val_data)
        for prefix, obj in (("model", trainer.model), ("optimizer", trainer.optimizer)):
            _restore(obj, {k[len(prefix) + 1:]: v for k, v in arrays.items()
                           if k.startswith(prefix + "/")}, path)
        trainer.step = int(meta["step"])
        return trainer


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat(obj):
    pure = nnx.to_pure_dict(nnx.state(obj))
    leaves, _ = jax.tree_util.tree_flatten_with_path(pure)
    return [("/".join(_key_str(k) for k in p), leaf) for p, leaf in leaves]


def _restore(obj, arrays: dict, path) -> None:
    state = nnx.state(obj)
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new = []
    for p, leaf in leaves:
        name = "/".join(_key_str(k) for k in p)
        if name not in arrays:
            raise ValueError(f"checkpoint {str(path)!r} lacks array {name!r}")
        a = arrays[name]
        if a.shape != np.shape(leaf):
            raise ValueError(f"checkpoint array {name!r} has shape {a.shape}, "
                             f"the model expects {np.shape(leaf)}")
        new.append(jnp.asarray(a, dtype=jnp.asarray(leaf).dtype))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new))
    nnx.update(obj, state)
