"""Multi-token prediction (MTP) and speculative decoding with the MTP module as the draft.

DeepSeek-V3 (report §2.2) and V4 (``num_nextn_predict_layers = 1``) train one extra block
to predict the token *after* the next one. At position ``t`` it reads the main model's last
hidden state ``h_t`` (which already predicts token ``t+1``) and the embedding of the true
token ``t+1``:

    h'_t   = W_h RMSNorm(h_t) + W_e RMSNorm(Emb(x_{t+1}))      (V3: M [h; e], the same map)
    logits = Head(Block(h'_1..t))_t                           -> distribution of x_{t+2}

with its own transformer block (causal over the positions, like the main blocks) but the
main model's embedding and output projection (V4: its own ``hc_head`` and final norm in
front of the shared projection). Training adds ``mtp_loss_weight * CE(logits, x_{t+2})`` to
the loss (``TrainConfig.mtp_loss_weight``; V3 used 0.3, then 0.1): a denser training signal.

At inference the MTP module is a free *draft model* for speculative decoding
(``speculative_generate``): it proposes ``x_{t+2}`` while the main model computes ``x_{t+1}``;
one main-model call on ``[x_{t+1}, draft]`` then checks the draft and, when it was right,
already yields the token after it. Greedy acceptance keeps the output *exactly* the main
model's greedy decoding (tested token for token); the gain is up to two tokens per main-model
call, and the acceptance rate says how often the draft was right.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..blocks.ffn import init_weight, linear
from ..blocks.norm import RMSNorm
from ..config import ModelConfig
from ..model import Block, Transformer
from .hyper_connections import HyperHead


class MTP(nnx.Module):
    """One multi-token-prediction module (DeepSeek-V3 §2.2; V4's ``MTPBlock``).

    Attributes (V4's checkpoint names): ``enorm``, ``hnorm`` (RMSNorms of the embedding and
    of the main model's hidden state), ``e_proj``, ``h_proj`` [d_model, d_model], ``block`` (a
    ``Block`` like the main model's last one: MoE when the model has MoE, mHC when it has mHC;
    never hash-routed), ``hc_head`` (its own stream combination, mHC only) and ``norm``.
    The embedding and the output projection are the main model's (passed in when called).

    ``e_proj`` and ``h_proj`` are initialised with std ``1/sqrt(2 d_model)``, which is V3's
    single projection of the concatenation ``[h; e]`` (fan-in ``2 d_model``) split in two.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.hc_mult = cfg.hc_mult
        self.enorm = RMSNorm(d, cfg.norm_eps)
        self.hnorm = RMSNorm(d, cfg.norm_eps)
        self.e_proj = nnx.Param(init_weight(rngs.params(), (d, d), 2 * d))
        self.h_proj = nnx.Param(init_weight(rngs.params(), (d, d), 2 * d))
        self.block = Block(cfg, cfg.n_layers, rngs=rngs)
        self.hc_head = (HyperHead(d, cfg.hc_mult, cfg.hc_eps, cfg.norm_eps, rngs=rngs)
                        if cfg.hc_mult > 1 else None)
        self.norm = RMSNorm(d, cfg.norm_eps)

    def __call__(self, model: Transformer, hidden: jax.Array, next_tokens: jax.Array,
                 cache=None, *, train: bool = False, key: jax.Array | None = None):
        """Predict token ``t+2`` at every position ``t``.

        model: the main model (its embedding and output projection are used); hidden: its
        ``LMOutput.hidden`` at positions t, [batch, seq, (hc_mult,) d_model]; next_tokens: the
        ids of tokens t+1, [batch, seq]. Returns ``(logits [batch, seq, vocab], cache, stats)``
        -- ``cache`` this module's attention cache (None without), ``stats`` its MoE
        statistics (None for a dense block).
        """
        e = self.enorm(jnp.take(model.embed[...], next_tokens, axis=0))  # [batch, seq, d]
        e = linear(e, self.e_proj[...])
        if self.hc_mult > 1:
            e = e[..., None, :]  # the same embedding term in every stream
        x = linear(self.hnorm(hidden), self.h_proj[...]) + e  # like hidden
        x, cache, stats = self.block(x, cache, train=train, key=key, token_ids=next_tokens)
        return model.head(x, self.hc_head, self.norm), cache, stats

    def init_cache(self, batch_size: int, max_len: int):
        return self.block.attn.init_cache(batch_size, max_len)


def mtp_inputs(hidden: jax.Array, inputs: jax.Array, targets: jax.Array):
    """Align a training batch for the MTP loss: position t of the result pairs the main
    model's hidden state at t with input token t+1 and target token t+2.

    hidden: [batch, seq, ...]; inputs, targets: [batch, seq] (targets = inputs shifted by one)
    -> (hidden [:, :-1], next tokens inputs[:, 1:], MTP targets targets[:, 1:]).
    """
    return hidden[:, :-1], inputs[:, 1:], targets[:, 1:]


# ----------------------------------------------------------------------------------------
# Speculative decoding with the MTP draft
# ----------------------------------------------------------------------------------------

class SpeculativeResult(NamedTuple):
    """tokens: [1, prompt_len + max_new_tokens]; drafted / accepted: drafts checked and drafts
    the main model agreed with; main_calls: main-model calls after the prefill (one per
    draft)."""

    tokens: jax.Array
    prompt_len: int
    drafted: int
    accepted: int
    main_calls: int

    @property
    def acceptance_rate(self) -> float:
        """Fraction of the drafts the main model agreed with."""
        return self.accepted / max(self.drafted, 1)

    @property
    def tokens_per_step(self) -> float:
        """Tokens each decoding step (one main-model call) produces: ``1 + acceptance_rate``,
        between 1 (plain decoding) and 2."""
        return 1.0 + self.acceptance_rate


@nnx.jit
def _main_step(model, tokens, cache):
    out = model(tokens, cache)
    return jnp.argmax(out.logits, axis=-1), out.hidden, out.cache


@nnx.jit
def _draft_step(model, hidden, next_tokens, cache):
    logits, cache, _ = model.mtp(model, hidden, next_tokens, cache)
    return jnp.argmax(logits[:, -1], axis=-1), cache


def _rewind(cache, n: int):
    """Forget the last ``n`` tokens of a per-layer cache tuple (their slots get overwritten)."""
    return tuple(c._replace(pos=c.pos - n) for c in cache)


def speculative_generate(model: Transformer, prompt: jax.Array,
                         max_new_tokens: int) -> SpeculativeResult:
    """Greedy decoding, sped up by the MTP module as a one-token draft; output identical to
    ``generate(model, prompt, max_new_tokens, key, temperature=0)``.

    Invariant: the main cache holds every token but the last one ``x_n``; ``pending`` holds the
    (hidden state, next token) pairs the MTP module has not read yet. One step:
      1. draft: the MTP module reads ``pending`` and proposes ``d`` for position ``n+1``;
      2. verify: the main model reads ``[x_n, d]``, giving its own greedy ``y1`` (position
         ``n+1``) and ``y2`` (position ``n+2``, valid only if ``d`` was right);
      3. if ``d == y1``: keep ``d`` and ``y2`` (two tokens for one call); otherwise keep ``y1``
         and rewind the main cache by one (forget ``d``).
    Every kept token is the main model's own greedy choice given the kept tokens before it,
    so the output does not depend on the draft -- only the number of calls does.

    prompt: [1, prompt_len] int (one sequence: acceptance differs between sequences). The
    attention must keep every position in its cache (``gqa`` or ``mla``), so that forgetting
    a token is moving the write position back.
    """
    cfg = model.cfg
    if model.mtp is None:
        raise ValueError("speculative_generate needs a model with an MTP module "
                         "(ModelConfig(num_nextn_predict_layers=1))")
    if cfg.attention not in ("gqa", "mla"):
        raise ValueError(f"speculative_generate rewinds the KV cache, which needs attention "
                         f"'gqa' or 'mla'; got {cfg.attention!r}")
    b, p = prompt.shape
    if b != 1:
        raise ValueError(f"speculative_generate decodes one sequence; got batch size {b}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    slots = p + max_new_tokens + 1  # a verify call may write one token past the end
    if slots > cfg.max_seq_len:
        raise ValueError(f"prompt length + max_new_tokens + 1 = {slots} exceeds "
                         f"max_seq_len={cfg.max_seq_len} (one slot for the last draft)")
    cache = model.init_cache(1, slots)
    mtp_cache = model.mtp.init_cache(1, slots)
    greedy, hidden, cache = _main_step(model, prompt, cache)
    out = [int(t) for t in np.asarray(prompt[0])] + [int(greedy[0, -1])]
    # the MTP module reads (h_t, x_{t+1}) for every prompt position; the last pair is pending
    if p > 1:
        _, mtp_cache = _draft_step(model, hidden[:, :-1], prompt[:, 1:], mtp_cache)
    pending_h, pending_tok = hidden[:, -1:], greedy[:, -1:]
    drafted = accepted = calls = 0
    while len(out) < p + max_new_tokens:
        draft, mtp_cache = _draft_step(model, pending_h, pending_tok, mtp_cache)
        step = jnp.stack([jnp.asarray([out[-1]]), draft], axis=1)  # [1, 2]: x_n, d
        greedy, hidden, cache = _main_step(model, step, cache)
        calls += 1
        drafted += 1
        y1, y2 = int(greedy[0, 0]), int(greedy[0, 1])
        if y1 == int(draft[0]):
            accepted += 1
            out += [y1, y2]
            pending_h, pending_tok = hidden, greedy  # (h_n, d), (h_{n+1}, y2)
        else:
            out.append(y1)
            cache = _rewind(cache, 1)
            pending_h, pending_tok = hidden[:, :1], greedy[:, :1]  # (h_n, y1)
    tokens = jnp.asarray([out[:p + max_new_tokens]], jnp.int32)
    return SpeculativeResult(tokens, p, drafted, accepted, calls)
