"""The nightly report site, rendered from the history database.

Under the nightly output folder::

    index.html                 every night (newest first) and every driver
    <night>/index.html         the night: its cells, and each finding with its class
    <night>/junit.xml          JUnit XML of every run of the night
    <night>/<cell>/            the cell's ordinary run directory (index.html, junit.xml, …)
    drivers/<driver>.html      the driver across nights: findings per night (inline SVG),
                               first and last seen of each finding, links to each run

Pages are static (inline CSS and SVG, no JavaScript).  Every string from the
database went through a guest or a configuration file, so all markup is built
with :mod:`tracedep.reports.htmlkit`, which escapes anything it did not build.
Night pages are written only for nights of this output folder; nights another
nightly recorded in a shared database are listed and linked where they live.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tracedep.common.files import atomic_write
from tracedep.nightly.history import History
from tracedep.reports.html import CSS
from tracedep.reports.htmlkit import Markup, el, join
from tracedep.reports.model import page_names

DRIVERS_DIR = "drivers"
INDEX = "index.html"

EXTRA_CSS = """
.c-new { background: var(--red); } .c-fixed { background: var(--green); }
.c-flaky { background: var(--orange); } .c-still { background: #5f6b7a; }
.s-ok, .s-complete { color: var(--green); }
.s-error, .s-failed, .s-interrupted { color: var(--red); }
.s-running { color: var(--orange); }
svg.plot text { font: 11px ui-monospace, "DejaVu Sans Mono", monospace; fill: #687385; }
svg.plot .line { fill: none; stroke: var(--blue); stroke-width: 2; }
svg.plot .pt { fill: var(--blue); } svg.plot .pt.new { fill: var(--red); }
svg.plot .axis { stroke: #d8dde6; }
"""

CLASS_CSS = {"new": "c-new", "fixed": "c-fixed", "flaky": "c-flaky", "still present": "c-still"}


def _page(title: str, body: Iterable[object], crumbs: Markup | None = None) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    foot = el("p", "tracedep nightly · generated ", generated, class_="muted")
    doc = el("html",
             el("head", Markup('<meta charset="utf-8">'),
                Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
                el("title", title), el("style", Markup(CSS + EXTRA_CSS))),
             el("body", el("div", crumbs, class_="crumbs") if crumbs else None, *body, foot),
             lang="en")
    return "<!DOCTYPE html>\n" + doc + "\n"


def _badge(cls: str) -> Markup:
    return el("span", cls, class_=f"badge {CLASS_CSS.get(cls, 'k-other')}")


def _status(status: str) -> Markup:
    return el("span", status, class_=f"s-{status}")


def _rel(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target, page_dir)).as_posix()


def _n(v: object) -> Markup:
    return el("td", v if v else "·", class_="n" + ("" if v else " zero"))


class NightlySite:
    """Renders every page of one output folder from one history database."""

    def __init__(self, history: History, out: Path) -> None:
        self.h = history
        self.out = out.resolve()
        self.pages = page_names(history.drivers())

    def driver_href(self, driver: str, page_dir: Path) -> str:
        return _rel(self.out / DRIVERS_DIR / self.pages.get(driver, "_.html"), page_dir)

    def night_page(self, night: sqlite3.Row) -> Path:
        return Path(night["out_dir"]).resolve() / str(night["name"]) / INDEX

    def render(self) -> list[Path]:
        """Write the whole site; return the files written."""
        nights = self.h.nights()
        files: dict[Path, str] = {self.out / INDEX: self.render_index(nights)}
        for n in nights:
            if Path(n["out_dir"]).resolve() == self.out:
                files[self.night_page(n)] = self.render_night(n)
        for d, page in self.pages.items():
            files[self.out / DRIVERS_DIR / page] = self.render_driver(d, nights)
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text)
        return list(files)

    # -- index ------------------------------------------------------------------------

    def render_index(self, nights: Sequence[sqlite3.Row]) -> str:
        rows = []
        for n in nights:
            rows.append(el(
                "tr", el("td", el("a", n["name"], href=_rel(self.night_page(n), self.out))),
                el("td", n["started"]), el("td", _status(n["status"])),
                _n(n["cells"]), _n(n["bad_runs"]), _n(n["new"]), _n(n["fixed"]),
                _n(n["flaky"]), _n(n["still"])))
        night_table = el("table", el("tr", *(el("th", h) for h in (
            "night", "started", "status", "cells", "failed runs", "new", "fixed", "flaky",
            "still present"))), *rows) if rows else el("p", "No nights yet.", class_="muted")
        latest = self._latest_counts()
        drows = [el("tr", el("td", el("a", d, href=self.driver_href(d, self.out))),
                    _n(latest.get(d, 0))) for d in self.pages]
        driver_table = el("table", el("tr", el("th", "driver"),
                                      el("th", "findings, latest night", class_="n")), *drows)
        return _page("tracedep nightly", [
            el("h1", "tracedep nightly"),
            el("h2", "Nights"), night_table,
            el("h2", "Drivers"), driver_table if drows else el("p", "No drivers yet.",
                                                                class_="muted")])

    def _latest_counts(self) -> dict[str, int]:
        rows = self.h.query(
            "SELECT f.driver, COUNT(DISTINCT f.signature) AS n FROM findings f"
            " JOIN runs r ON r.id = f.run_id"
            " WHERE r.night_id = (SELECT MAX(night_id) FROM runs WHERE status = 'ok')"
            " GROUP BY f.driver")
        return {str(r["driver"]): int(r["n"]) for r in rows}

    # -- one night --------------------------------------------------------------------

    def render_night(self, night: sqlite3.Row) -> str:
        page_dir = self.night_page(night).parent
        runs = self.h.runs_of_night(int(night["id"]))
        verdicts = self.h.verdicts_of_night(int(night["id"]))
        cells = []
        for r in runs:
            run_dir = Path(r["run_dir"])
            log = run_dir.with_name(run_dir.name + ".log")
            links = [el("a", "report", href=_rel(run_dir / INDEX, page_dir))
                     if (run_dir / INDEX).is_file() else None,
                     el("a", "junit", href=_rel(run_dir / "junit.xml", page_dir))
                     if (run_dir / "junit.xml").is_file() else None,
                     el("a", "log", href=_rel(log, page_dir)) if log.is_file() else None]
            cells.append(el(
                "tr", el("td", el("code", r["cell"])), _n(r["attempt"]),
                el("td", _status(r["status"]),
                   el("div", r["error"], class_="muted") if r["error"] else None,
                   el("div", f"retried: {r['retried']}", class_="muted retried")
                   if r["retried"] else None,
                   el("div", f"on {r['worker']}", class_="muted") if r["worker"] else None),
                el("td", "" if r["exit_code"] is None else r["exit_code"], class_="n"),
                el("td", "" if r["elapsed_s"] is None else f"{r['elapsed_s']:.1f} s",
                   class_="n"),
                _n(r["nfindings"]), el("td", join((x for x in links if x), " · "))))
        counts: dict[str, int] = defaultdict(int)
        for v in verdicts:
            counts[v["class"]] += 1
        summary = ", ".join(f"{counts.get(c, 0)} {c}" for c in ("new", "fixed", "flaky",
                                                               "still present"))
        banner_cls = "bad" if counts.get("new") else "ok"
        status = str(night["status"])
        frows = [el("tr", el("td", el("code", v["cell"])), el("td", _badge(v["class"])),
                    el("td", el("a", v["driver"], href=self.driver_href(v["driver"], page_dir))),
                    el("td", v["kind"]), el("td", el("code", v["function"] or "")),
                    el("td", v["message"], el("br"), el("code", v["signature"], class_="sig")))
                 for v in verdicts]
        body = [
            el("h1", "Night ", el("code", night["name"])),
            el("div", f"{summary}", class_=f"banner {banner_cls}"),
            el("table", el("tr", el("th", "started"), el("td", night["started"])),
               el("tr", el("th", "finished"), el("td", night["finished"] or "—")),
               el("tr", el("th", "status"), el("td", _status(status))),
               el("tr", el("th", "config"), el("td", el("code", night["config"]))),
               class_="facts"),
            el("p", "This night did not finish: the cells below are those that did.",
               class_="banner warn") if status == "interrupted" else None,
            el("h2", "Cells"),
            el("table", el("tr", *(el("th", h) for h in (
                "cell", "attempt", "status", "exit", "time", "findings", "links"))), *cells),
            el("h2", "Findings"),
            el("table", el("tr", *(el("th", h) for h in (
                "cell", "class", "driver", "kind", "function", "finding"))), *frows)
            if frows else el("p", "No findings.", class_="muted"),
        ]
        crumbs = el("a", "all nights", href=_rel(self.out / INDEX, page_dir))
        return _page(f"tracedep night {night['name']}", body, crumbs)

    # -- one driver across nights ---------------------------------------------------------

    def render_driver(self, driver: str, nights: Sequence[sqlite3.Row]) -> str:
        page_dir = self.out / DRIVERS_DIR
        by_id = {int(n["id"]): n for n in nights}
        runs = self.h.query(
            "SELECT r.*, (SELECT COUNT(*) FROM findings f WHERE f.run_id = r.id AND"
            " f.driver = ?) AS n FROM runs r WHERE r.id IN (SELECT run_id FROM run_drivers"
            " WHERE driver = ? UNION SELECT run_id FROM findings WHERE driver = ?)"
            " ORDER BY r.night_id, r.cell, r.attempt", (driver, driver, driver))
        per_night = self.h.query(
            "SELECT r.night_id, COUNT(DISTINCT f.signature) AS n FROM findings f"
            " JOIN runs r ON r.id = f.run_id WHERE f.driver = ? GROUP BY r.night_id", (driver,))
        counts = {int(r["night_id"]): int(r["n"]) for r in per_night}
        changes: dict[int, dict[str, int]] = defaultdict(dict)
        for r in self.h.query("SELECT night_id, class, COUNT(*) AS n FROM verdicts WHERE"
                              " driver = ? AND class IN ('new', 'fixed') GROUP BY night_id,"
                              " class", (driver,)):
            changes[int(r["night_id"])][str(r["class"])] = int(r["n"])
        night_ids = sorted({int(r["night_id"]) for r in runs if r["status"] == "ok"}
                           | set(counts))
        points = [Point(str(by_id[i]["name"]), counts.get(i, 0), changes[i].get("new", 0),
                        changes[i].get("fixed", 0)) for i in night_ids if i in by_id]
        # night → its runs of this driver, each with a link to the run's own page
        run_rows = []
        for nid in sorted({int(r["night_id"]) for r in runs}, reverse=True):
            n = by_id.get(nid)
            if n is None:
                continue
            links = []
            for r in runs:
                if int(r["night_id"]) != nid:
                    continue
                run_dir = Path(r["run_dir"])
                label = f"{r['cell']}" + (f" #{r['attempt']}" if r["attempt"] > 1 else "")
                text = f"{label}: {r['n']} finding{'s' if r['n'] != 1 else ''}" \
                    if r["status"] == "ok" else f"{label}: {r['status']}"
                links.append(el("div", el("a", text, href=_rel(run_dir / INDEX, page_dir))
                                if (run_dir / INDEX).is_file() else text))
            run_rows.append(el("tr", el("td", el("a", n["name"],
                                                 href=_rel(self.night_page(n), page_dir))),
                               _n(counts.get(nid, 0)), el("td", *links)))
        sigs = self.h.query(
            "SELECT f.signature, f.kind, f.function, f.message,"
            " MIN(r.night_id) AS first, MAX(r.night_id) AS last,"
            " COUNT(DISTINCT r.night_id) AS nights FROM findings f JOIN runs r"
            " ON r.id = f.run_id WHERE f.driver = ? GROUP BY f.signature"
            " ORDER BY MAX(r.night_id) DESC, f.kind", (driver,))
        latest_class = {str(r["signature"]): str(r["class"]) for r in self.h.query(
            "SELECT signature, class FROM verdicts WHERE driver = ? ORDER BY night_id",
            (driver,))}

        def night_link(nid: int) -> Markup:
            n = by_id.get(nid)
            return el("a", n["name"], href=_rel(self.night_page(n), page_dir)) if n \
                else Markup("?")

        srows = [el("tr", el("td", _badge(latest_class[str(s["signature"])])
                              if str(s["signature"]) in latest_class else ""),
                    el("td", s["kind"]), el("td", el("code", s["function"] or "")),
                    el("td", s["message"], el("br"), el("code", s["signature"], class_="sig")),
                    el("td", night_link(int(s["first"]))), el("td", night_link(int(s["last"]))),
                    _n(s["nights"])) for s in sigs]
        body = [
            el("h1", "Driver ", el("code", driver)),
            el("h2", "Findings per night"), plot(points),
            el("h2", "Findings"),
            el("table", el("tr", *(el("th", h) for h in (
                "latest class", "kind", "function", "finding", "first seen", "last seen",
                "nights"))), *srows) if srows else el("p", "No findings, ever.", class_="muted"),
            el("h2", "Runs"),
            el("table", el("tr", el("th", "night"), el("th", "findings", class_="n"),
                           el("th", "runs")), *run_rows),
        ]
        crumbs = el("a", "all nights", href=_rel(self.out / INDEX, page_dir))
        return _page(f"tracedep driver {driver}", body, crumbs)


@dataclass(frozen=True)
class Point:
    night: str
    findings: int
    new: int = 0
    fixed: int = 0


def plot(points: Sequence[Point], width: int = 720, height: int = 180) -> Markup:
    """Findings per night as a line; a red point is a night with new findings."""
    if not points:
        return el("p", "No successful runs yet.", class_="muted")
    left, right, top, bottom = 40, 16, 12, 28
    ymax = max(1, *(p.findings for p in points))
    step = (width - left - right) / max(1, len(points) - 1)

    def xy(i: int, c: int) -> tuple[float, float]:
        x = left + (i * step if len(points) > 1 else (width - left - right) / 2)
        return x, top + (height - top - bottom) * (1 - c / ymax)

    coords = [xy(i, p.findings) for i, p in enumerate(points)]
    parts: list[Markup] = [
        el("line", x1=left, y1=top, x2=left, y2=height - bottom, class_="axis"),
        el("line", x1=left, y1=height - bottom, x2=width - right, y2=height - bottom,
           class_="axis"),
        el("text", ymax, x=left - 6, y=top + 4, text_anchor="end"),
        el("text", 0, x=left - 6, y=height - bottom + 4, text_anchor="end"),
        el("polyline", points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coords), class_="line"),
    ]
    label_every = max(1, len(points) // 6)
    last = len(points) - 1
    for i, (p, (x, y)) in enumerate(zip(points, coords, strict=True)):
        tip = f"{p.night}: {p.findings} finding{'s' if p.findings != 1 else ''}"
        if p.new or p.fixed:
            tip += f" ({p.new} new, {p.fixed} fixed)"
        parts.append(el("circle", el("title", tip), cx=f"{x:.1f}", cy=f"{y:.1f}", r=4,
                        class_="pt new" if p.new else "pt"))
        if i % label_every == 0 or i == last:
            # the end labels hang inwards so the night names are not clipped
            anchor = "start" if i == 0 and last else "end" if i == last and last else "middle"
            parts.append(el("text", p.night, x=f"{x:.1f}", y=height - 8, text_anchor=anchor))
    svg = el("svg", *parts, xmlns="http://www.w3.org/2000/svg", class_="plot", width=width,
             height=height, viewBox=f"0 0 {width} {height}", role="img",
             aria_label="findings per night")
    return el("div", svg, el("div", "distinct findings per night; a red point is a night that "
                                     "brought new ones (hover for new/fixed counts)",
                             class_="muted"))
