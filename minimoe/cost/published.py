"""Published figures, each with its source: quoted, never computed.

* :data:`DEEPSEEK_SERVING_DAY`: one day of DeepSeek-V3/R1 serving as DeepSeek published it;
* :data:`DEEPSEEK_V4_PUBLISHED`: V4's headline sizes (to check the counts against);
* :data:`MTP_ACCEPTANCE`: how often DeepSeek-V3's second predicted token is accepted;
* :func:`price_table` / :func:`price_on`: dated API prices from ``published_prices.json``
  (one row per model and period, with cache-hit and cache-miss input prices and sources).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Mapping

from .serving import dollars_per_million_tokens


@dataclass(frozen=True)
class PublishedServingDay:
    """One day of serving as a provider published it.

    Attributes:
        nodes: average nodes in service over the day; peak_nodes: the day's peak.
        gpus_per_node: GPUs per node.
        dollars_per_gpu_hour: the rental price assumed.
        cost_per_day: the published daily cost, dollars.
        input_tokens_per_day, output_tokens_per_day: tokens served.
        input_cache_hit_fraction: share of input tokens found in the on-disk KV cache.
        prefill_tokens_per_s_per_node: input tokens/s per node during prefill (cache hits
            included).
        decode_tokens_per_s_per_node: output tokens/s per node during decoding.
        user_tokens_per_s: (low, high) output tokens/s one user sees.
        mean_kv_length: mean KV-cache length (tokens of context) per output token.
        prefill_gpus, prefill_routed_slots_per_gpu: the prefill unit (EP32: 4 nodes, each
            GPU 9 routed experts, one shared expert, attention data-parallel).
        decode_gpus, decode_routed_slots_per_gpu: the decode unit (EP144: 18 nodes, each GPU
            2 routed experts, one shared expert, attention data-parallel).
        dispatch_bytes, combine_bytes: bytes per value of the all-to-all (FP8 dispatch,
            BF16 combine); matmuls in FP8, core MLA attention in BF16.
        revenue_per_day_at_r1_prices: the post's theoretical revenue, dollars.
        source: where the figures come from.
    """

    nodes: float
    gpus_per_node: int
    dollars_per_gpu_hour: float
    cost_per_day: float
    input_tokens_per_day: float
    output_tokens_per_day: float
    input_cache_hit_fraction: float
    prefill_tokens_per_s_per_node: float
    decode_tokens_per_s_per_node: float
    source: str
    peak_nodes: int = 278
    user_tokens_per_s: tuple = (20.0, 22.0)
    mean_kv_length: int = 4_989
    prefill_gpus: int = 32
    prefill_routed_slots_per_gpu: int = 9
    decode_gpus: int = 144
    decode_routed_slots_per_gpu: int = 2
    dispatch_bytes: float = 1.0
    combine_bytes: float = 2.0
    revenue_per_day_at_r1_prices: float = 562_027.0


DEEPSEEK_SERVING_DAY = PublishedServingDay(
    nodes=226.75, gpus_per_node=8, dollars_per_gpu_hour=2.0, cost_per_day=87_072.0,
    input_tokens_per_day=608e9, output_tokens_per_day=168e9, input_cache_hit_fraction=0.563,
    prefill_tokens_per_s_per_node=73.7e3, decode_tokens_per_s_per_node=14.8e3,
    source="deepseek-ai/open-infra-index, day 6 (Feb 2025): DeepSeek-V3/R1 inference system "
           "overview, 24-hour statistics on H800 nodes (27-28 Feb 2025)",
)

#: Acceptance rate of DeepSeek-V3's second (MTP-predicted) token in speculative decoding,
#: (low, high), and the speed-up DeepSeek reports for it.
MTP_ACCEPTANCE = MappingProxyType({
    "low": 0.85, "high": 0.90, "tokens_per_s_speedup": 1.8,
    "source": "DeepSeek-V3 technical report, section 5.4.3 (multi-token prediction evaluation)",
})


def serving_day_costs(day: PublishedServingDay = DEEPSEEK_SERVING_DAY) -> dict:
    """Dollars per million tokens implied by a published serving day.

    * ``cost_per_day_computed = nodes * gpus_per_node * 24 * dollars_per_gpu_hour``
      (checks the published cost);
    * ``dollars_per_million_tokens = cost_per_day / (input + output tokens) * 1e6``;
    * ``dollars_per_million_output = cost_per_day / output tokens * 1e6`` (all cost charged
      to output);
    * ``prefill_dollars_per_million_input`` and ``decode_dollars_per_million_output``: a
      node's hourly price over its published per-node rate (:func:`dollars_per_million_tokens`
      with one node as the unit);
    * ``implied_nodes = (input / prefill rate + output / decode rate) / 86400``: the nodes
      the per-node rates need to serve the day's tokens, compared with ``nodes``.
    """
    node_hour = day.gpus_per_node * day.dollars_per_gpu_hour
    tokens = day.input_tokens_per_day + day.output_tokens_per_day
    busy_node_seconds = (day.input_tokens_per_day / day.prefill_tokens_per_s_per_node
                         + day.output_tokens_per_day / day.decode_tokens_per_s_per_node)
    return {
        "cost_per_day_published": day.cost_per_day,
        "cost_per_day_computed": day.nodes * 24 * node_hour,
        "tokens_per_day": tokens,
        "dollars_per_million_tokens": day.cost_per_day / tokens * 1e6,
        "dollars_per_million_output": day.cost_per_day / day.output_tokens_per_day * 1e6,
        "prefill_dollars_per_million_input": dollars_per_million_tokens(
            day.prefill_tokens_per_s_per_node, node_hour),
        "decode_dollars_per_million_output": dollars_per_million_tokens(
            day.decode_tokens_per_s_per_node, node_hour),
        "implied_nodes": busy_node_seconds / 86400.0,
        "nodes_published": day.nodes,
    }


@dataclass(frozen=True)
class PublishedModelFigures:
    """Sizes a model's authors published, to compare the counts with.

    Attributes:
        name, total_params, active_params, context_len, source, note.
    """

    name: str
    total_params: float
    active_params: float
    context_len: int
    source: str
    note: str = "published figures (rounded), to check the counted ones against"


_V4_SOURCE = ("DeepSeek V4 technical report abstract and model cards (deepseek-ai/DeepSeek-V4-Pro, "
              "-Flash on Hugging Face): totals without the MTP module, active without the input "
              "embedding")
DEEPSEEK_V4_PUBLISHED: Mapping[str, PublishedModelFigures] = MappingProxyType({
    "DeepSeek-V4-Flash": PublishedModelFigures(
        "DeepSeek-V4-Flash", 284e9, 13e9, 1_048_576, _V4_SOURCE),
    "DeepSeek-V4-Pro": PublishedModelFigures(
        "DeepSeek-V4-Pro", 1.6e12, 49e9, 1_048_576, _V4_SOURCE),
})


# ---------------------------------------------------------------------------------------
# Dated prices (published_prices.json)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedPrice:
    """One row of ``published_prices.json``: a model's API prices over one period, dollars
    per million tokens.

    Attributes:
        model, period: the model and what the period is ('launch list price', ...).
        start, end: first day a source shows the price in force; the day it ended
            (``None``: in force when last checked).
        input_cache_hit, input_cache_miss, output: the three prices.
        source, source_kind ('vendor' or 'third-party'), note.
    """

    model: str
    period: str
    start: _dt.date
    end: _dt.date | None
    input_cache_hit: float
    input_cache_miss: float
    output: float
    source: str
    source_kind: str
    note: str = ""

    @property
    def input_per_million(self) -> float:
        """The cache-miss input price (what a first-time prompt pays)."""
        return self.input_cache_miss

    @property
    def output_per_million(self) -> float:
        return self.output

    def in_force(self, date: _dt.date) -> bool:
        return self.start <= date and (self.end is None or date < self.end)


def _date(text):
    return None if text is None else _dt.date.fromisoformat(text)


def price_table() -> tuple[PublishedPrice, ...]:
    """Every row of ``published_prices.json``, in file order."""
    text = resources.files("minimoe.cost").joinpath("published_prices.json").read_text("utf-8")
    rows = json.loads(text)["rows"]
    out = []
    for row in rows:
        if row["source_kind"] not in ("vendor", "third-party"):
            raise ValueError(f"source_kind must be 'vendor' or 'third-party', got "
                             f"{row['source_kind']!r} ({row['model']})")
        out.append(PublishedPrice(row["model"], row["period"], _date(row["from"]),
                                  _date(row["to"]), float(row["input_cache_hit"]),
                                  float(row["input_cache_miss"]), float(row["output"]),
                                  row["source"], row["source_kind"], row.get("note", "")))
    return tuple(out)


def price_on(model: str, date) -> PublishedPrice:
    """The row of ``model`` in force on ``date`` (a ``datetime.date`` or ISO string)."""
    day = _dt.date.fromisoformat(date) if isinstance(date, str) else date
    rows = [p for p in price_table() if p.model == model]
    if not rows:
        known = sorted({p.model for p in price_table()})
        raise ValueError(f"no published price for model {model!r}; known: {known}")
    match = [p for p in rows if p.in_force(day)]
    if not match:
        spans = [f"{p.start}..{p.end or 'now'}" for p in rows]
        raise ValueError(f"no price of {model!r} in force on {day}; rows cover {spans}")
    return match[0]


def percent_cheaper(price: float, rival: float) -> float:
    """How much cheaper ``price`` is than ``rival``, in percent: ``100 * (1 - price / rival)``
    (negative when it is dearer)."""
    if not rival > 0:
        raise ValueError(f"rival must be > 0, got {rival!r}")
    return 100.0 * (1.0 - price / rival)
