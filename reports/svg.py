"""Inline SVG: the lock-order graph of a driver and small histograms.

The graph is laid out in layers (a small Sugiyama): dependencies point
downwards where they can, so a driver whose locks are well ordered reads top
to bottom, and an edge that has to climb back up is one that closes a cycle.
No JavaScript and no external tool: the page must read the same with JS off.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tracedep.reports.htmlkit import Markup, el, join

CHAR_W = 7.2  # monospace 12px
NODE_H = 40
LAYER_GAP = 110
NODE_GAP = 36
MARGIN = 24
MAX_ROW_W = 1100
MAX_LABEL = 44

COLORS = {"cycle": "#c62828", "irq": "#e65100", "normal": "#5f6b7a"}


@dataclass(frozen=True)
class GNode:
    name: str
    sub: str = ""  # second line: type, contexts, owner
    title: str = ""  # tooltip
    foreign: bool = False  # belongs to another module / the core kernel
    flagged: bool = False  # part of a finding


@dataclass(frozen=True)
class GEdge:
    before: str
    after: str
    style: str = "normal"  # "normal", "cycle" or "irq"
    label: str = ""
    title: str = ""
    dashed: bool = False


def _short(s: str, n: int = MAX_LABEL) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _width(node: GNode) -> float:
    return max(len(_short(node.name)), len(_short(node.sub)) * 0.85, 6) * CHAR_W + 24


def _layers(names: Sequence[str], edges: Sequence[GEdge]) -> tuple[dict[str, int],
                                                                   set[tuple[str, str]]]:
    """Longest-path layers after reversing the back edges of a DFS."""
    succ: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        if e.before != e.after:
            succ[e.before].append(e.after)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done

    for root in names:
        if root in state:
            continue
        stack = [(root, iter(sorted(succ[root])))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(succ[nxt]))))
    preds: dict[str, set[str]] = defaultdict(set)
    for u in names:
        for v in succ[u]:
            a, b = (v, u) if (u, v) in back else (u, v)
            preds[b].add(a)
    layer: dict[str, int] = {}

    def depth(n: str) -> int:  # preds is acyclic once the back edges are reversed
        if n not in layer:
            layer[n] = 1 + max((depth(p) for p in preds[n]), default=-1)
        return layer[n]

    for n in names:
        depth(n)
    return layer, back


def _order(rows: list[list[str]], edges: Sequence[GEdge]) -> None:
    """Barycentre sweeps to untangle crossings, in place."""
    nbrs: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        nbrs[e.before].add(e.after)
        nbrs[e.after].add(e.before)
    for _ in range(4):
        for seq in (range(1, len(rows)), range(len(rows) - 2, -1, -1)):
            for i in seq:
                ref = rows[i - 1] if seq.step == 1 else rows[i + 1]
                pos = {n: k for k, n in enumerate(ref)}
                cur = {n: k for k, n in enumerate(rows[i])}

                def bary(n: str, pos: dict[str, int] = pos, cur: dict[str, int] = cur) -> float:
                    ks = [pos[m] for m in nbrs[n] if m in pos]
                    return sum(ks) / len(ks) if ks else float(cur[n])

                rows[i].sort(key=bary)


def _clip(cx: float, cy: float, hw: float, hh: float, dx: float, dy: float) -> tuple[float,
                                                                                      float]:
    """Where the ray from a box's centre in direction (dx, dy) leaves the box."""
    tx = hw / abs(dx) if dx else math.inf
    ty = hh / abs(dy) if dy else math.inf
    t = min(tx, ty)
    return cx + dx * t, cy + dy * t


def _components(names: Sequence[str], edges: Sequence[GEdge]) -> list[list[str]]:
    """Weakly connected components, each in the order of ``names``."""
    nbrs: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        nbrs[e.before].add(e.after)
        nbrs[e.after].add(e.before)
    comp_of: dict[str, int] = {}
    comps: list[list[str]] = []
    for root in names:
        if root in comp_of:
            continue
        comp_of[root] = len(comps)
        todo, members = [root], {root}
        while todo:
            for m in nbrs[todo.pop()]:
                if m not in members:
                    members.add(m)
                    comp_of[m] = comp_of[root]
                    todo.append(m)
        comps.append([n for n in names if n in members])
    return comps


@dataclass
class _Block:
    """One laid-out piece of the graph, positions relative to its corner."""

    width: float
    height: float
    pos: dict[str, tuple[float, float]]


def _block(rows: list[list[str]], byname: Mapping[str, GNode], side: float) -> _Block:
    widths = [sum(_width(byname[n]) for n in r) + NODE_GAP * (len(r) - 1) for r in rows]
    width = max(widths, default=0.0) + 2 * side
    pos: dict[str, tuple[float, float]] = {}
    for i, r in enumerate(rows):
        x = (width - widths[i]) / 2
        for n in r:
            w = _width(byname[n])
            pos[n] = (x + w / 2, i * LAYER_GAP + NODE_H / 2)
            x += w + NODE_GAP
    return _Block(width, max(len(rows) - 1, 0) * LAYER_GAP + NODE_H, pos)


def lock_graph(nodes: Sequence[GNode], edges: Sequence[GEdge], title: str) -> Markup:
    """The lock-order graph as an ``<svg>`` element.

    Each connected group of locks is laid out on its own, those with a lock
    of a finding first, then the groups are packed in bands.
    """
    byname = {n.name: n for n in nodes}
    edges = [e for e in edges if e.before in byname and e.after in byname]
    linked = {e.before for e in edges} | {e.after for e in edges}
    names = [n.name for n in nodes if n.name in linked]
    loners = [n.name for n in nodes if n.name not in linked]
    flagged = {n.name for n in nodes if n.flagged}
    comps = sorted(_components(names, edges),
                   key=lambda c: (not flagged.intersection(c), -len(c), c[0]))
    layer: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    blocks: list[_Block] = []
    for comp in comps:
        members = set(comp)
        cedges = [e for e in edges if e.before in members]
        clayer, cback = _layers(comp, cedges)
        layer.update(clayer)
        back |= cback
        rows: list[list[str]] = [[] for _ in range(max(clayer.values()) + 1)]
        for n in comp:
            rows[clayer[n]].append(n)
        _order(rows, cedges)
        # Room beside the nodes for curves that bow out and the labels next to them.
        label_w = max((len(_short(e.label, 32)) * 6.4 for e in cedges), default=0.0)
        blocks.append(_block(rows, byname, 30 + label_w))
    row: list[str] = []  # locks without dependencies go last, wrapped
    lone_rows: list[list[str]] = []
    for n in loners:
        if row and sum(_width(byname[m]) + NODE_GAP for m in [*row, n]) > MAX_ROW_W:
            lone_rows.append(row)
            row = []
        row.append(n)
    if row:
        lone_rows.append(row)
    if lone_rows:
        blocks.append(_block(lone_rows, byname, 0.0))

    pos: dict[str, tuple[float, float]] = {}
    x = y = band_h = total_w = 0.0
    for b in blocks:
        if x and x + b.width > MAX_ROW_W:
            x, y, band_h = 0.0, y + band_h + LAYER_GAP * 0.6, 0.0
        for n, (px, py) in b.pos.items():
            pos[n] = (MARGIN + x + px, MARGIN + 10 + y + py)
        x += b.width + NODE_GAP
        band_h = max(band_h, b.height)
        total_w = max(total_w, x - NODE_GAP)
    total_w = max(total_w, 240.0) + 2 * MARGIN
    total_h = MARGIN * 2 + 10 + y + band_h

    max_hw = max((_width(byname[n]) / 2 for n in names), default=0.0)
    pairs = {(e.before, e.after) for e in edges}
    parts: list[Markup] = [_defs()]
    wide = 2 * (max_hw + 18)  # a curve bows half its bend: clear the widest node
    for e in sorted(edges, key=lambda e: (e.style != "normal", e.before, e.after)):
        parts.append(_edge(e, pos, byname, pairs, back, layer, wide))
    for node in nodes:
        if node.name in pos:
            parts.append(_node(node, pos[node.name]))
    return el("svg", el("title", title), *parts,
              xmlns="http://www.w3.org/2000/svg", class_="graph", role="img",
              viewBox=f"0 0 {total_w:.0f} {total_h:.0f}", width=f"{total_w:.0f}",
              height=f"{total_h:.0f}", aria_label=title)


def _defs() -> Markup:
    markers = [
        el("marker", el("path", d="M0,0 L10,5 L0,10 z", fill=color), id=f"arrow-{style}",
           viewBox="0 0 10 10", refX="9", refY="5", markerWidth="7", markerHeight="7",
           orient="auto-start-reverse")
        for style, color in COLORS.items()
    ]
    return el("defs", *markers)


def _node(n: GNode, at: tuple[float, float]) -> Markup:
    x, y = at
    w = _width(n)
    cls = "node" + (" foreign" if n.foreign else "") + (" flagged" if n.flagged else "")
    label = [el("text", _short(n.name), x=f"{x:.1f}", y=f"{y - 3:.1f}", class_="nl")]
    if n.sub:
        label.append(el("text", _short(n.sub), x=f"{x:.1f}", y=f"{y + 12:.1f}", class_="ns"))
    return el("g", el("title", n.title or n.name),
              el("rect", x=f"{x - w / 2:.1f}", y=f"{y - NODE_H / 2:.1f}", width=f"{w:.1f}",
                 height=str(NODE_H), rx="6"), *label, class_=cls)


def _edge(e: GEdge, pos: Mapping[str, tuple[float, float]], byname: Mapping[str, GNode],
          pairs: set[tuple[str, str]], back: set[tuple[str, str]],
          layer: Mapping[str, int], wide: float) -> Markup:
    color = COLORS.get(e.style, COLORS["normal"])
    attrs: dict[str, object] = {
        "fill": "none", "stroke": color, "stroke_width": "2.5" if e.style != "normal" else "1.5",
        "marker_end": f"url(#arrow-{e.style if e.style in COLORS else 'normal'})",
        "stroke_dasharray": "6 4" if e.dashed else None,
    }
    (x1, y1), (x2, y2) = pos[e.before], pos[e.after]
    hw1, hw2 = _width(byname[e.before]) / 2, _width(byname[e.after]) / 2
    hh = NODE_H / 2
    if e.before == e.after:
        d = (f"M{x1 + hw1:.1f},{y1 - 8:.1f} C{x1 + hw1 + 50:.1f},{y1 - 36:.1f} "
             f"{x1 + hw1 + 50:.1f},{y1 + 36:.1f} {x1 + hw1 + 2:.1f},{y1 + 9:.1f}")
        lx, ly = x1 + hw1 + 44, y1
        anchor = "start"
    else:
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1.0
        span = abs(layer.get(e.after, 0) - layer.get(e.before, 0))
        bend = 0.0
        if (e.after, e.before) in pairs:
            bend = 42.0  # the two directions of an AB/BA pair bow apart
        elif span > 1:
            bend = wide  # would cross the layers in between
        elif (e.before, e.after) in back or span == 0:
            bend = 44.0
        nx, ny = dy / length, -dx / length  # the left of the direction of travel
        cx, cy = (x1 + x2) / 2 + nx * bend, (y1 + y2) / 2 + ny * bend
        sx, sy = _clip(x1, y1, hw1, hh, cx - x1, cy - y1)
        ex, ey = _clip(x2, y2, hw2 + 2, hh + 2, cx - x2, cy - y2)
        d = f"M{sx:.1f},{sy:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{ey:.1f}"
        mx, my = 0.25 * sx + 0.5 * cx + 0.25 * ex, 0.25 * sy + 0.5 * cy + 0.25 * ey
        # The label sits on the outer side of the curve, clear of its twin.
        side = 1.0 if bend else (1.0 if ny <= 0 else -1.0)
        lx, ly = mx + nx * 8 * side, my + ny * 8 * side
        anchor = "start" if nx * side >= 0 else "end"
    parts = [el("title", e.title or f"{e.before} → {e.after}"), el("path", d=d, **attrs)]
    if e.label:
        parts.append(el("text", _short(e.label, 32), x=f"{lx:.1f}", y=f"{ly + 4:.1f}",
                        class_="el", fill=color, style=f"text-anchor:{anchor}"))
    return el("g", *parts, class_=f"edge {e.style}")


_BOUND = re.compile(r"^(<)?\s*([0-9.]+)\s*(ns|us|µs|ms|s)\b")
_UNIT_NS = {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}


def _in_order(buckets: Mapping[str, int]) -> list[tuple[str, int]]:
    """Buckets by their lower bound when every label says it ("8us-16us", "<1us"):
    a JSON writer that sorted keys must not scramble the axis."""
    keyed = []
    for k, v in buckets.items():
        m = _BOUND.match(k)
        if m is None:
            return list(buckets.items())
        low = 0.0 if m.group(1) else float(m.group(2)) * _UNIT_NS[m.group(3)]
        keyed.append((low, k, v))
    return [(k, v) for _, k, v in sorted(keyed, key=lambda t: t[0])]


def histogram(buckets: Mapping[str, int], title: str, width: int = 210,
              height: int = 64) -> Markup:
    """Bars of a log2-bucket histogram, a tooltip per bucket."""
    items = _in_order(buckets)
    if not items or not any(v for _, v in items):
        return el("span", "no samples", class_="muted")
    top = max(v for _, v in items)
    pad_x, pad_top, pad_bottom = 4, 12, 14
    bw = (width - 2 * pad_x) / len(items)
    ph = height - pad_top - pad_bottom
    bars = []
    for i, (k, v) in enumerate(items):
        h = 0.0 if not v else max(1.5, ph * v / top)
        bars.append(el("rect", el("title", f"{k}: {v:,}"), x=f"{pad_x + i * bw + 1:.1f}",
                       y=f"{pad_top + ph - h:.1f}", width=f"{max(bw - 2, 1):.1f}",
                       height=f"{h:.1f}", class_="bar"))
    axis = el("line", x1=str(pad_x), x2=str(width - pad_x), y1=f"{pad_top + ph + 0.5:.1f}",
              y2=f"{pad_top + ph + 0.5:.1f}", class_="axis")
    labels = join([
        el("text", f"max {top:,}", x=str(pad_x), y="9", class_="hl"),
        el("text", items[0][0], x=str(pad_x), y=str(height - 2), class_="hl"),
        el("text", items[-1][0], x=str(width - pad_x), y=str(height - 2), class_="hl",
           text_anchor="end"),
    ])
    return el("svg", el("title", title), *bars, axis, labels, xmlns="http://www.w3.org/2000/svg",
              class_="hist", width=str(width), height=str(height),
              viewBox=f"0 0 {width} {height}", role="img", aria_label=title)
