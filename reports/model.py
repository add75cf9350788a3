"""What the text and HTML reports both say about a run: facts, health, drivers.

Read from the typed ``Analysis.run`` (analysis.run_summary) and ``Analysis.health``
(analysis.health): a fact the analysis does not record is not looked for.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracedep.analysis.findings import FINDING_KINDS, Analysis, ClassStats, Finding
from tracedep.analysis.health import Ending
from tracedep.analysis.run_summary import ModuleSummary, RunSummary
from tracedep.common.jsonvalue import JSON
from tracedep.reports.htmlkit import slug

# Short column titles; kinds a newer analysis invents are appended after these.
KIND_TITLES = {
    "sleep-in-atomic": "sleep in atomic",
    "lock-order-inversion": "lock order",
    "irq-lock-inversion": "irq inversion",
    "recursive-locking": "recursive",
    "same-class-nesting": "same-class nesting",
    "invalid-wait-context": "PREEMPT_RT wait context",
}

KIND_ABBREV = {
    "sleep-in-atomic": "sleep",
    "lock-order-inversion": "order",
    "irq-lock-inversion": "irq",
    "recursive-locking": "recursive",
    "same-class-nesting": "nesting",
    "invalid-wait-context": "rt-wait",
}

CORE = "vmlinux"


@dataclass
class RunFacts:
    kernel: str
    arch: str
    started: str | None
    duration_s: float | None
    events: int
    lost: int
    truncated: bool
    ending: str  # how the guest ended, with detail
    ended_cleanly: bool
    problems: list[str] = field(default_factory=list)  # the trace is not whole: said first
    warnings: list[str] = field(default_factory=list)  # anything else the analysis noticed

    @property
    def complete(self) -> bool:
        return not self.problems


def _kernel(run: RunSummary) -> str:
    k = run.kernel
    names = (k.release, k.abi, k.image) if k is not None else ()
    return next((n for n in names if n is not None), "unknown kernel")


def _ending(e: Ending) -> str:
    how = e.how or "unknown"
    return f"{how}: {e.detail}" if e.detail else how


def run_facts(a: Analysis) -> RunFacts:
    """The run's identity and the trace's health, with every problem spelled out."""
    run, health = a.run, a.health
    facts = RunFacts(
        kernel=_kernel(run),
        arch=run.arch or "unknown arch",
        started=run.started,
        duration_s=run.duration_s,
        events=health.events,
        lost=health.lost,
        truncated=health.truncated,
        ending=_ending(health.ending),
        ended_cleanly=health.ending.clean,
    )
    if facts.lost:
        facts.problems.append(f"{facts.lost:,} events LOST: findings may be missing")
    if facts.truncated:
        facts.problems.append("trace truncated: the stream ended before the guest said it was "
                              "complete")
    if not facts.ended_cleanly:
        facts.problems.append(f"guest did not end cleanly: {facts.ending}")
    said = health.problem_notes()
    facts.warnings.extend(w for w in health.warnings if w not in said)
    return facts


def flatten(d: JSON, prefix: str = "", limit: int = 6) -> list[tuple[str, str]]:
    """Scalar leaves of a nested record as ``("a.b", "value")``, long lists shortened."""
    out: list[tuple[str, str]] = []
    if isinstance(d, Mapping):
        for k in d:
            out.extend(flatten(d[k], f"{prefix}.{k}" if prefix else str(k), limit))
    elif isinstance(d, list | tuple):
        if all(not isinstance(x, Mapping | list | tuple) for x in d):
            shown = ", ".join(str(x) for x in d[:limit])
            more = f", … (+{len(d) - limit} more)" if len(d) > limit else ""
            out.append((prefix, f"[{shown}{more}]"))
        else:
            for i, x in enumerate(d[:limit]):
                out.extend(flatten(x, f"{prefix}[{i}]", limit))
            if len(d) > limit:
                out.append((f"{prefix}[…]", f"+{len(d) - limit} more"))
    else:
        out.append((prefix, "" if d is None else str(d)))
    return out


def details_text(details: Mapping[str, Any]) -> str:
    """A finding's extra details as ``key=value, …`` (nested values as JSON)."""
    import json

    def show(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)

    return ", ".join(f"{k}={show(v)}" for k, v in details.items())


def kinds(findings: Iterable[Finding]) -> list[str]:
    """The known kinds in their fixed order, then any others seen."""
    seen = {f.kind for f in findings}
    return list(FINDING_KINDS) + sorted(seen - set(FINDING_KINDS))


def kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, kind)


def kind_abbrev(kind: str) -> str:
    """A column header a few letters wide."""
    return KIND_ABBREV.get(kind, kind)


def drivers(a: Analysis) -> list[str]:
    """Every driver the run is about: modules under test, and any with findings or locks.

    The core kernel is one only if it has findings (its locks alone would make a
    page of every lock in the kernel).  Sorted by name, with the core kernel last.
    """
    names = {m.name for m in a.run.modules}
    names.update(f.driver for f in a.findings)
    names.update(c.driver for c in a.classes if c.driver != CORE)
    for e in a.edges:
        names.update(d for d in e.drivers if d != CORE)
    return sorted(names, key=lambda n: (n == CORE, n))


@dataclass(frozen=True)
class DriverRow:
    """One row of the driver table: what a driver exercised, whatever it found."""

    name: str
    under_test: bool
    origin: str  # "module-src", "kernel" (the kernel package's own), "" if not known
    lock_classes: int
    lock_events: int | None  # lock operations at its code; None: not measured
    load: str  # the load's outcome in words ("ok", "failed: ENODEV (19)", …); "" if not ours


def _load_words(m: ModuleSummary) -> str:
    rcs = m.insmod_rc or []
    bad = [r for r in rcs if r != 0]
    if bad:
        # tdinsmod's exit code is finit_module's errno; busybox insmod's (older runs) is 1
        name = errno.errorcode.get(bad[0]) if m.loader == "tdinsmod" else None
        return f"failed: {name} ({bad[0]})" if name else f"failed (exit {bad[0]})"
    if rcs:
        return "ok" if len(rcs) == 1 else f"ok ×{len(rcs)}"
    return "loaded" if m.loaded else "not loaded"


def driver_rows(a: Analysis) -> list[DriverRow]:
    """Every driver of :func:`drivers`, modules under test with their load and coverage."""
    by_name = {m.name: m for m in a.run.modules}
    seen = Counter(c.driver for c in a.classes)
    rows = []
    for d in drivers(a):
        m = by_name.get(d)
        if m is None:
            rows.append(DriverRow(d, False, "", seen[d], None, ""))
            continue
        rows.append(DriverRow(d, True, m.origin or "",
                              m.lock_classes if m.lock_classes is not None else seen[d],
                              m.lock_events, _load_words(m)))
    return rows


def counts(a: Analysis) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {d: Counter() for d in drivers(a)}
    for f in a.findings:
        out.setdefault(f.driver, Counter())[f.kind] += 1
    return out


def sorted_findings(findings: Iterable[Finding]) -> list[Finding]:
    order = {k: i for i, k in enumerate(FINDING_KINDS)}
    return sorted(findings, key=lambda f: (f.driver == CORE, f.driver,
                                           order.get(f.kind, len(order)), f.kind,
                                           f.first_ts_ns, f.signature))


def page_names(names: Iterable[str]) -> dict[str, str]:
    """Driver → file name under ``drivers/``; guest-chosen names never escape the folder."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for n in sorted(set(names)):
        base = slug(n)
        cand, i = base, 1
        while cand.lower() in used:  # case-insensitive file systems
            i += 1
            cand = f"{base}-{i}"
        used.add(cand.lower())
        out[n] = f"{cand}.html"
    return out


def class_index(classes: Iterable[ClassStats]) -> dict[str, ClassStats]:
    idx: dict[str, ClassStats] = {}
    for c in classes:
        idx.setdefault(c.lock_class, c)
    return idx


def fmt_ts(ns: int | None) -> str:
    """A guest timestamp the way dmesg prints it."""
    if ns is None:
        return "[        ?]"
    return f"[{ns / 1e9:12.6f}]"


def fmt_ns(ns: float | None, micro: str = "us") -> str:
    if ns is None or ns != ns:  # NaN: no sample
        return "-"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} {micro}"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_duration(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"
