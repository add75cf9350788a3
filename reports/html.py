"""``index.html`` and ``drivers/<driver>.html``: the run as pages.

Static pages with inline CSS and SVG only, readable with JavaScript off and
without network access.  Every guest-supplied string goes through
:mod:`tracedep.reports.htmlkit`, which escapes anything it did not build.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tracedep.analysis.findings import Analysis, ClassStats, Edge, Finding, Frame, Site
from tracedep.reports import frames as fr
from tracedep.reports import locks as lk
from tracedep.reports import model, svg, text
from tracedep.reports.htmlkit import Markup, el, join, slug

CSS = """
:root { --fg:#1d2330; --muted:#687385; --line:#d8dde6; --bg:#fff; --soft:#f5f7fa;
  --red:#c62828; --orange:#e65100; --green:#2e7d32; --blue:#1f5fae; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; padding: 20px 28px 60px; max-width: 1320px; }
h1 { font-size: 22px; margin: 4px 0 12px; } h2 { font-size: 18px; margin: 30px 0 10px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 8px; }
h1 code { font-size: inherit; }
.locks div { white-space: nowrap; }
.sig { font-size: 11.5px; color: var(--muted); }
.stats { white-space: nowrap; font-size: 12.5px; font-variant-numeric: tabular-nums; }
.stats span { display: inline-block; min-width: 3ch; color: var(--muted); }
a { color: var(--blue); text-decoration: none; } a:hover { text-decoration: underline; }
code, pre, .mono, .stack { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas,
  monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.zero { color: #b0b7c3; }
.muted { color: var(--muted); }
.crumbs { margin-bottom: 6px; color: var(--muted); }
.banner { border-radius: 6px; padding: 10px 14px; margin: 10px 0 16px; font-weight: 500; }
.banner.ok { background: #e8f5e9; border: 1px solid #a5d6a7; color: #1b5e20; }
.banner.bad { background: #ffebee; border: 2px solid var(--red); color: #8e0000; }
.banner.bad strong { font-size: 16px; }
.banner.warn { background: #fff8e1; border: 1px solid #ffcc80; color: #6d4c00; }
.banner ul { margin: 6px 0 0 18px; padding: 0; }
.facts th { background: none; text-align: left; color: var(--muted); font-weight: 500;
  border: none; padding: 2px 14px 2px 0; }
.facts td { border: none; padding: 2px 0; }
.badge { display: inline-block; border-radius: 4px; padding: 1px 7px; font-size: 12px;
  font-weight: 600; color: #fff; white-space: nowrap; }
.k-sleep-in-atomic { background: #ad1457; } .k-lock-order-inversion { background: var(--red); }
.k-irq-lock-inversion { background: var(--orange); } .k-recursive-locking { background: #6a1b9a; }
.k-same-class-nesting { background: #00695c; }
.k-invalid-wait-context { background: #5d4037; } .k-other { background: #455a64; }
.finding { border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
  margin: 14px 0; }
.finding .meta { color: var(--muted); margin: 0 0 10px; }
.finding .meta code { color: var(--fg); }
.site { margin: 10px 0 0; }
.site-head { font-weight: 600; margin-bottom: 3px; }
.site-head .ctx { font-weight: 400; color: var(--muted); }
.stack { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px 10px; overflow-x: auto; white-space: nowrap; }
.fr { padding: 1px 0; } .fr.core { color: var(--muted); }
.fr.own .fn { font-weight: 700; color: #0d3c78; }
.fr.inl { padding-left: 2ch; } .fr .tag { color: var(--orange); font-size: 11px; }
.fr .loc { color: #1b6e3a; } .fr.core .loc { color: var(--muted); }
details > summary { cursor: pointer; color: var(--blue); margin-top: 10px; }
pre.kernel { background: #111827; color: #e5e7eb; padding: 12px 14px; border-radius: 6px;
  overflow-x: auto; line-height: 1.35; }
.graph-wrap { overflow-x: auto; text-align: center; border: 1px solid var(--line);
  border-radius: 8px; padding: 8px; background: #fcfdff; }
svg.graph { max-width: 100%; height: auto; }
svg.graph .node rect { fill: #e3edf9; stroke: #7a9cc6; stroke-width: 1.2; }
svg.graph .node.foreign rect { fill: #eef0f3; stroke: #a3acb9; stroke-dasharray: 4 3; }
svg.graph .node.flagged rect { stroke: var(--red); stroke-width: 2.2; }
svg.graph text { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  text-anchor: middle; }
svg.graph .nl { font-size: 12px; fill: #10243e; font-weight: 600; }
svg.graph .ns { font-size: 10px; fill: var(--muted); }
svg.graph .el { font-size: 10.5px; paint-order: stroke; stroke: #fff; stroke-width: 4px;
  stroke-linejoin: round; }
.legend { color: var(--muted); font-size: 12.5px; margin: 6px 0; }
.legend span { margin-right: 16px; white-space: nowrap; }
.sw { display: inline-block; width: 22px; height: 0; vertical-align: middle; margin-right: 5px;
  border-top: 2.5px solid; }
svg.hist .bar { fill: #5b8bd0; } svg.hist .axis { stroke: #9aa4b2; }
svg.hist text { font: 9px ui-monospace, monospace; fill: var(--muted); }
.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.empty { color: var(--muted); font-style: italic; }
"""


class _Ids:
    """Unique, safe element ids for guest-named things on one page."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def __call__(self, prefix: str, name: str) -> str:
        key = (prefix, name)
        if key not in self._ids:
            base = f"{prefix}-{slug(name)}"
            cand, i = base, 1
            while cand in self._used:
                i += 1
                cand = f"{base}-{i}"
            self._used.add(cand)
            self._ids[key] = cand
        return self._ids[key]


def _page(title: str, body: Iterable[object], generated: str | None) -> str:
    foot = el("p", "tracedep", f" · generated {generated}" if generated else "", class_="muted")
    doc = el("html",
             el("head", Markup('<meta charset="utf-8">'),
                Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
                el("title", title), el("style", Markup(CSS))),
             el("body", *body, foot), lang="en")
    return "<!DOCTYPE html>\n" + doc + "\n"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _badge(kind: str) -> Markup:
    cls = f"k-{kind}" if kind in model.KIND_TITLES else "k-other"
    return el("span", kind, class_=f"badge {cls}")


def _banner(facts: model.RunFacts) -> Markup:
    ev = f"{facts.events:,}"
    warn = (el("div", el("strong", "Warnings from the analysis:"),
               el("ul", *(el("li", w) for w in facts.warnings)), class_="banner warn")
            if facts.warnings else Markup(""))
    if facts.problems:
        return join([el("div", el("strong", "Trace incomplete: this report may be missing "
                                            "findings."),
                         el("ul", *(el("li", p) for p in facts.problems)), class_="banner bad"),
                     warn])
    ending = f", guest ended: {facts.ending}" if facts.ending else ""
    return join([el("div", f"Trace complete: {ev} events analysed, 0 lost{ending}.",
                    class_="banner ok"), warn])


def _facts_table(facts: model.RunFacts, extra: Sequence[tuple[str, object]] = ()) -> Markup:
    rows: list[tuple[str, object]] = [
        ("kernel", facts.kernel), ("arch", facts.arch),
        ("started", facts.started or "-"), ("run time", model.fmt_duration(facts.duration_s)),
        ("events analysed", f"{facts.events:,}"),
        ("events lost", el("strong", f"{facts.lost:,}") if facts.lost else "0"),
        ("guest ended", facts.ending or "-"), *extra,
    ]
    return el("table", *(el("tr", el("th", k), el("td", v)) for k, v in rows), class_="facts")


def _kv_table(pairs: Sequence[tuple[str, str]]) -> Markup:
    if not pairs:
        return el("p", "nothing recorded", class_="empty")
    return el("table", *(el("tr", el("th", k, class_="mono"), el("td", v, class_="mono"))
                         for k, v in pairs))


def _anchors(findings: Sequence[Finding]) -> dict[int, str]:
    """Element id of each finding of one driver page, by ``id()`` of the finding.

    Unique even if two findings share a signature; the index links with the same ids.
    """
    out: dict[int, str] = {}
    used: set[str] = set()
    for f in findings:
        base = cand = f"f-{slug(f.signature)}"
        i = 1
        while cand in used:
            i += 1
            cand = f"{base}-{i}"
        used.add(cand)
        out[id(f)] = cand
    return out


# ---------------------------------------------------------------------------- index


def render_index(a: Analysis, generated: str | None = None) -> str:
    """The run's summary page."""
    facts = model.run_facts(a)
    pages = model.page_names(model.drivers(a))
    counts = model.counts(a)
    kinds = model.kinds(a.findings)
    drows = {r.name: r for r in model.driver_rows(a)}
    head = el("tr", el("th", "driver"), *(el("th", model.kind_title(k), class_="n") for k in kinds),
              el("th", "total", class_="n"), el("th", "lock classes", class_="n"),
              el("th", "lock events at its code", class_="n"), el("th", "load"))
    rows = []
    for d, c in counts.items():
        total = sum(c.values())
        r = drows.get(d)
        cells = [el("td", c[k] or "·", class_="n" + ("" if c[k] else " zero")) for k in kinds]
        ev = r.lock_events if r is not None else None
        rows.append(el("tr", el("td", el("a", d, href=f"drivers/{pages[d]}"),
                                " (kernel's)" if r is not None and r.origin == "kernel" else ""),
                       *cells,
                       el("td", el("strong", total) if total else "·",
                          class_="n" + ("" if total else " zero")),
                       el("td", r.lock_classes if r is not None else 0, class_="n"),
                       el("td", f"{ev:,}" if ev is not None else "·",
                          class_="n" + ("" if ev else " zero")),
                       el("td", r.load if r is not None and r.load else "·")))
    anchors: dict[int, str] = {}
    for d in counts:
        anchors.update(_anchors(model.sorted_findings(f for f in a.findings if f.driver == d)))
    frows = []
    for i, f in enumerate(model.sorted_findings(a.findings), 1):
        href = f"drivers/{pages.get(f.driver, '')}#{anchors.get(id(f), '')}"
        frows.append(el("tr", el("td", i, class_="n"),
                        el("td", el("a", f.driver, href=f"drivers/{pages.get(f.driver, '')}")),
                        el("td", _badge(f.kind)),
                        el("td", el("a", f.message, href=href), el("br"),
                           el("code", f.signature, class_="sig")),
                        el("td", *(el("div", el("code", x)) for x in f.locks), class_="locks"),
                        el("td", f.count, class_="n"),
                        el("td", model.fmt_ts(f.first_ts_ns).strip("[] "), class_="n num")))
    findings = (el("table", el("tr", el("th", "#", class_="n"), el("th", "driver"),
                                el("th", "kind"), el("th", "finding · signature"),
                                el("th", "locks"), el("th", "count", class_="n"),
                                el("th", "first seen (s)", class_="n")), *frows)
                if frows else el("p", "No findings.", class_="empty"))
    title = f"tracedep: {facts.kernel} ({facts.arch})"
    body = [
        el("h1", title), _banner(facts), _facts_table(facts),
        el("p", el("a", "report.txt", href="report.txt"), " (lockdep-style text) · ",
           el("a", "findings.json", href="findings.json"), " · ",
           el("a", "analysis.json", href="analysis.json")),
        el("h2", "Drivers"), el("table", head, *rows),
        el("h2", f"Findings ({len(a.findings)})"), findings,
        el("h2", "Trace health"), _kv_table(model.flatten(a.health.to_json())),
        el("details", el("summary", "Run record"), _kv_table(model.flatten(a.run.to_json()))),
    ]
    return _page(title, body, generated)


# ---------------------------------------------------------------------------- driver page


def _frame(f: Frame, driver: str) -> Markup:
    own = f.module == driver
    cls = "fr" + (" inl" if f.inlined else "") + (" own" if own else "") + (
        " core" if f.module == model.CORE and not own else "")
    parts: list[object] = [el("span", f.function or "?", class_="fn")]
    if not f.inlined and f.size:
        parts.append(el("span", f"+{f.offset:#x}/{f.size:#x}", class_="off"))
    if f.module and f.module != model.CORE and not f.inlined:
        parts += [" ", el("span", f"[{f.module}]", class_="mod")]
    loc = fr.where(f)
    if loc:
        parts += [" ", el("span", loc, class_="loc")]
    if f.inlined:
        parts += [" ", el("span", "[inline]", class_="tag")]
    return el("div", *parts, class_=cls)


def _site(s: Site, driver: str, lock_ids: _Ids) -> Markup:
    who = f"{s.comm if s.comm is not None else '?'}/{s.pid if s.pid is not None else '?'}"
    head: list[object] = [s.role]
    if s.lock:
        link = el("a", el("code", s.lock), href=f"#{lock_ids('c', s.lock)}")
        before, found, after = s.role.partition(s.lock)
        head = [before, link, after] if found else [s.role, " ", link]
    ctx = " · ".join(x for x in (who, model.fmt_ts(s.ts_ns).strip("[] ") + " s"
                                 if s.ts_ns is not None else "", lk.context_text(s.context))
                   if x)
    head += [" ", el("span", f"— {ctx}", class_="ctx")]
    stack = (el("div", *(_frame(f, driver) for f in fr.dedup(s.frames)), class_="stack")
             if s.frames
             else el("div", "no stack recorded", class_="stack empty"))
    return el("div", el("div", *head, class_="site-head"), stack, class_="site")


def _finding(f: Finding, driver: str, tctx: text.TextContext, ids: _Ids, anchor: str
             ) -> Markup:
    times = "once" if f.count == 1 else f"{f.count} times"
    meta = el("p", "seen ", times, ", first at ", model.fmt_ts(f.first_ts_ns).strip("[] "),
              " s · locks: ",
              join((el("a", el("code", x), href=f"#{ids('c', x)}") for x in f.locks), ", ")
              if f.locks else "none",
              " · signature ", el("code", f.signature),
              *((el("br"), "details: ", el("code", model.details_text(f.details)))
                if f.details else ()), class_="meta")
    kernel = "\n".join(text.render_finding(f, tctx))
    paths = lk.cycle_paths(f)
    grouped = (el("div", el("p", f"{len(paths)} cycles, all through ",
                            el("code", str(f.details.get("through", "?"))), ":"),
                  el("ol", *(el("li", el("code", " -> ".join([*p, p[0]]))) for p in paths)),
                  class_="paths")
               if len(paths) > 1 else Markup(""))
    return el("section",
              el("h3", _badge(f.kind), " ", f.message), meta, grouped,
              *(_site(s, driver, ids) for s in f.sites),
              el("details", el("summary", "Kernel-style report (as in report.txt)"),
                 el("pre", kernel, class_="kernel")),
              class_="finding", id=anchor)


def _driver_classes(a: Analysis, driver: str, findings: Sequence[Finding],
                    edges: Sequence[Edge]) -> list[str]:
    names = [c.lock_class for c in a.classes if c.driver == driver]
    names += [x for f in findings for x in f.locks]
    names += [x for e in edges for x in (e.before, e.after)]
    return list(dict.fromkeys(names))


def _classes_for(a: Analysis, driver: str) -> dict[str, ClassStats]:
    """Class by name as this driver sees it: its own class wins over a namesake
    of another module (a bug driver and its clean twin name locks alike)."""
    idx = model.class_index(a.classes)
    idx.update({c.lock_class: c for c in a.classes if c.driver == driver})
    return idx


def _graph(a: Analysis, driver: str, findings: Sequence[Finding], edges: Sequence[Edge],
           names: Sequence[str]) -> Markup:
    if not edges:
        return el("p", "No lock-order dependencies were recorded for this driver's locks.",
                  class_="empty")
    cidx = _classes_for(a, driver)
    red = lk.cycle_edges(findings, a.edges)
    orange = lk.irq_edges(findings, a.edges)
    flagged = {x for f in findings for x in f.locks}
    nodes = []
    for n in names:
        c = cidx.get(n)
        owner = c.driver if c is not None else "other module"
        sub = " · ".join(x for x in (c.lock_type if c else "", ", ".join(c.contexts) if c else "",
                                     owner if owner != driver else "") if x)
        tip = f"{n}\n{sub}" if sub else n
        nodes.append(svg.GNode(n, sub, tip, foreign=owner != driver, flagged=n in flagged))
    gedges = []
    for e in edges:
        key = (e.before, e.after)
        style = "cycle" if key in red else "irq" if key in orange else "normal"
        site = fr.call_site(e.witness.frames)
        where = fr.at(e.witness.frames)
        gedges.append(svg.GEdge(
            e.before, e.after, style, label=site.function if site else "",
            title=f"{e.before} → {e.after}: {e.count}× , first at {where}"
                  + (" (trylock)" if e.trylock else "") + (" (read/read)" if e.read_only else ""),
            dashed=e.trylock or e.read_only))
    graph = svg.lock_graph(nodes, gedges, f"lock-order graph of {driver}")
    legend = el("div",
                el("span", el("span", class_="sw", style=f"border-color:{svg.COLORS['cycle']}"),
                   "dependency in a reported cycle"),
                el("span", el("span", class_="sw", style=f"border-color:{svg.COLORS['irq']}"),
                   "irq-safe → irq-unsafe dependency"),
                el("span", el("span", class_="sw", style=f"border-color:{svg.COLORS['normal']}"),
                   "other dependency (A → B: B taken while A held; label: where)"),
                el("span", el("span", class_="sw",
                              style=f"border-color:{svg.COLORS['normal']};border-top-style:dashed"),
                   "trylock or read/read only"),
                el("span", "red box: lock in a finding; dashed box: lock of another module"),
                class_="legend")
    return join([el("div", graph, class_="graph-wrap"), legend])


def _stat_cell(stats: dict[str, float]) -> Markup:
    if not stats:
        return el("td", "-", class_="muted")
    return el("td", *(el("div", el("span", k), " ", model.fmt_ns(stats.get(k), "µs"))
                      for k in ("mean", "p50", "p99", "max") if k in stats), class_="stats")


def _classes_table(classes: Sequence[ClassStats], ids: _Ids) -> Markup:
    if not classes:
        return el("p", "No lock of this driver was seen.", class_="empty")
    head = el("tr", el("th", "lock class"), el("th", "type"), el("th", "acquired", class_="n"),
              el("th", "contexts"), el("th", "hold time"), el("th", "hold histogram"),
              el("th", "wait time"), el("th", "wait histogram"))
    rows = []
    for c in classes:
        rows.append(el("tr",
                       el("td", el("code", c.lock_class), id=ids("c", c.lock_class)),
                       el("td", c.lock_type), el("td", f"{c.acquisitions:,}", class_="n"),
                       el("td", ", ".join(c.contexts)), _stat_cell(c.hold_ns),
                       el("td", svg.histogram(c.hold_hist, f"hold time of {c.lock_class}")),
                       _stat_cell(c.wait_ns),
                       el("td", svg.histogram(c.wait_hist, f"wait time of {c.lock_class}")
                          if c.wait_hist else el("span", "not a sleeping lock", class_="muted"))))
    return el("div", el("table", head, *rows), style="overflow-x:auto")


def _edges_table(edges: Sequence[Edge], red: set[tuple[str, str]], driver: str,
                 ids: _Ids) -> Markup:
    if not edges:
        return el("p", "None.", class_="empty")
    rows = []
    for e in sorted(edges, key=lambda e: (e.before, e.after)):
        notes = [x for x in ("in a reported cycle" if (e.before, e.after) in red else "",
                             "trylock only" if e.trylock else "",
                             "read/read" if e.read_only else "") if x]
        others = [d for d in e.drivers if d != driver]
        if others:
            notes.append("with " + ", ".join(others))
        held = fr.at(e.held_witness.frames) if e.held_witness is not None else "-"
        rows.append(el("tr",
                       el("td", el("a", el("code", e.before), href=f"#{ids('c', e.before)}"),
                          " → ", el("a", el("code", e.after), href=f"#{ids('c', e.after)}")),
                       el("td", e.count, class_="n"), el("td", el("code", held)),
                       el("td", el("code", fr.at(e.witness.frames))),
                       el("td", "; ".join(notes))))
    return el("div", el("table", el("tr", el("th", "dependency (held → taken)"),
                                    el("th", "seen", class_="n"),
                                    el("th", "first lock taken at"),
                                    el("th", "second lock taken at"), el("th", "notes")),
                        *rows), style="overflow-x:auto")


def render_driver(a: Analysis, driver: str, generated: str | None = None) -> str:
    """One driver's page: its findings, lock-order graph and lock statistics."""
    facts = model.run_facts(a)
    findings = model.sorted_findings(f for f in a.findings if f.driver == driver)
    edges = [e for e in a.edges if driver in e.drivers]
    names = _driver_classes(a, driver, findings, edges)
    classes = [c for c in a.classes if c.driver == driver]
    # Other modules' locks only where this driver's findings name them.
    cidx = _classes_for(a, driver)
    named = [x for f in findings for x in f.locks]
    classes += [cidx[n] for n in dict.fromkeys(named)
                if n in cidx and cidx[n].driver != driver]
    ids = _Ids()
    anchors = _anchors(findings)
    tctx = text.TextContext.of(a)
    red = lk.cycle_edges(findings, a.edges)
    c = model.counts(a).get(driver)
    summary = (", ".join(f"{n} {k}" for k, n in c.items() if n) if c and sum(c.values())
               else "no findings")
    title = f"{driver} — tracedep"
    body = [
        el("div", el("a", "← run summary", href="../index.html"), " · ", facts.kernel, " (",
           facts.arch, ")", class_="crumbs"),
        el("h1", el("code", driver)),
        _banner(facts),
        el("p", el("strong", _plural(len(findings), "finding")),
           f" ({summary})" if findings else "",
           f" · {_plural(len(classes), 'lock class', 'lock classes')}"
           f" · {_plural(len(edges), 'dependency', 'dependencies')}"),
        el("h2", "Findings"),
        *([_finding(f, driver, tctx, ids, anchors[id(f)]) for f in findings]
          or [el("p", "No findings for this driver.", class_="empty")]),
        el("h2", "Lock-order graph"), _graph(a, driver, findings, edges, names),
        el("h2", "Lock classes: hold and wait times"), _classes_table(classes, ids),
        el("h2", "Lock-order dependencies"), _edges_table(edges, red, driver, ids),
    ]
    return _page(title, body, generated)


def render_site(a: Analysis, generated: str | None = None) -> dict[str, str]:
    """``index.html`` and every ``drivers/<page>``, keyed by path relative to the run."""
    pages = model.page_names(model.drivers(a))
    out = {"index.html": render_index(a, generated)}
    for d, page in pages.items():
        out[f"drivers/{page}"] = render_driver(a, d, generated)
    return out
