"""Block diagrams for the notebooks, drawn with matplotlib (no image files to ship).

A picture of where data flows is faster than a paragraph: the MoE layer (router -> dispatch ->
experts -> combine, beside the shared experts), MLA (a small latent cached, heads rebuilt or
absorbed) and the all-to-all round trip of expert parallelism. Each function returns the
matplotlib ``Figure``; the notebooks show it. Boxes are laid out on a grid of plain
coordinates, so a diagram reads like its description.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# one colour per kind of thing, the same in every diagram
COLOURS = {"data": "#dbe9f6", "compute": "#fde6c8", "route": "#e5dbf3", "cache": "#d9f0d3",
           "comm": "#f6d5d5"}


def _canvas(width: float, height: float, title: str):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    return fig, ax


def _box(ax, x: float, y: float, text: str, kind: str = "compute", w: float = 1.6,
         h: float = 0.6, fontsize: int = 9):
    """A rounded box centred at (x, y); returns its centre for arrows."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04",
                                facecolor=COLOURS[kind], edgecolor="#555555", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return (x, y, w, h)


def _arrow(ax, a, b, text: str = "", style: str = "-|>", offset: float = 0.12, rad: float = 0.0,
           text_dx: float = 0.0):
    """An arrow from box ``a`` to box ``b`` (edge to edge, along the longer axis)."""
    (xa, ya, wa, ha), (xb, yb, wb, hb) = a, b
    if abs(xb - xa) >= abs(yb - ya):
        sign = 1 if xb > xa else -1
        start, end = (xa + sign * wa / 2, ya), (xb - sign * wb / 2, yb)
    else:
        sign = 1 if yb > ya else -1
        start, end = (xa, ya + sign * ha / 2), (xb, yb - sign * hb / 2)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10,
                                 color="#444444", linewidth=0.9,
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx + text_dx, my + offset, text, ha="center", va="bottom", fontsize=7.5,
                color="#333333")


def moe_layer():
    """The MoE feed-forward layer: y = shared(x) + sum over the top-k experts of g_i(x) E_i(x)."""
    fig, ax = _canvas(10, 4.2, "An MoE layer: each token runs its top-k experts and the shared ones")
    x = _box(ax, 0.9, 2.1, "tokens x\n[T, d]", "data", w=1.3)
    router = _box(ax, 2.9, 3.3, "router\nscores, top-k", "route")
    dispatch = _box(ax, 5.0, 2.1, "dispatch\n(group tokens\nby expert)", "route", h=1.0)
    experts = [_box(ax, 6.9, y, f"expert {i}", "compute", w=1.2, h=0.45)
               for i, y in zip((1, 2, "…"), (3.0, 2.35, 1.7))]
    combine = _box(ax, 8.7, 2.1, "combine\nΣ g_i E_i(x)", "route", w=1.4)
    shared = _box(ax, 5.0, 0.55, "shared experts (every token)", "compute", w=3.2, h=0.5)
    out = _box(ax, 8.7, 0.55, "+  ->  y [T, d]", "data", w=1.4, h=0.5)
    _arrow(ax, x, router, "x")
    _arrow(ax, router, dispatch, "expert ids,\nweights g", text_dx=0.75)
    _arrow(ax, x, dispatch)
    for e in experts:
        _arrow(ax, dispatch, e)
        _arrow(ax, e, combine)
    _arrow(ax, x, shared, rad=0.25)
    _arrow(ax, combine, out)
    _arrow(ax, shared, out)
    fig.tight_layout()
    return fig


def mla():
    """MLA: cache one latent per token, rebuild keys and values from it (or absorb the
    up-projections into the query and output sides)."""
    fig, ax = _canvas(11, 3.8, "MLA: cache a small latent per token, not every head's K and V")
    h = _box(ax, 0.9, 1.9, "hidden h_t\n[d_model]", "data", w=1.4)
    down = _box(ax, 2.7, 2.7, "W_DKV\n(down)", "compute", w=1.2)
    rope = _box(ax, 2.7, 1.1, "W_KR + RoPE\n(shared key)", "compute", w=1.5)
    cache = _box(ax, 5.0, 1.9, "KV cache\nc_t [kv_lora_rank]\n+ k_rope [rope_dim]", "cache",
                 w=2.1, h=1.1)
    up = _box(ax, 7.9, 3.0, "W_UK, W_UV (up):\nkeys, values per head", "compute", w=2.2)
    absorb = _box(ax, 7.9, 0.8, "absorbed: q·W_UK, then W_UV·o\n(no per-head K/V built)",
                  "route", w=2.8)
    attn = _box(ax, 10.3, 1.9, "attention", "compute", w=1.1)
    _arrow(ax, h, down)
    _arrow(ax, h, rope)
    _arrow(ax, down, cache)
    _arrow(ax, rope, cache)
    _arrow(ax, cache, up, "naive")
    _arrow(ax, cache, absorb, "decode")
    _arrow(ax, up, attn)
    _arrow(ax, absorb, attn)
    fig.tight_layout()
    return fig


def all_to_all():
    """Expert parallelism: tokens travel to the device holding their expert and back."""
    fig, ax = _canvas(10, 3.6, "Expert parallelism: two all-to-alls per MoE layer")
    local = _box(ax, 1.0, 1.8, "device's tokens\nrouter picks experts", "route", w=1.7, h=0.9)
    send = _box(ax, 3.2, 1.8, "all-to-all\n(dispatch)", "comm", w=1.4)
    devices = [_box(ax, 5.4, y, f"device {i}: its experts", "compute", w=2.0, h=0.45)
               for i, y in zip((0, 1, "…"), (2.8, 1.8, 0.8))]
    back = _box(ax, 7.6, 1.8, "all-to-all\n(return)", "comm", w=1.4)
    comb = _box(ax, 9.3, 1.8, "combine\nat home", "route", w=1.1)
    _arrow(ax, local, send, "tokens\n+ slots")
    for d in devices:
        _arrow(ax, send, d)
        _arrow(ax, d, back)
    _arrow(ax, back, comb, "outputs")
    fig.tight_layout()
    return fig
