"""What the text and HTML reports both say about a run: facts, health, drivers.

``Analysis.run`` and ``Analysis.health`` are open dictionaries filled by the
tracer and the analysis; the readers here accept the spellings those stages
use (``lost`` as a number or as the manifest's ``{"total": …}`` record, the
guest ending as a string or ``{"how", "detail"}``) so that a report never
crashes, and never hides a trace problem, because a key moved.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracedep.analysis.findings import FINDING_KINDS, Analysis, ClassStats, Finding
from tracedep.reports.htmlkit import slug

# Short column titles; kinds a newer analysis invents are appended after these.
KIND_TITLES = {
    "sleep-in-atomic": "sleep in atomic",
    "lock-order-inversion": "lock order",
    "irq-lock-inversion": "irq inversion",
    "recursive-locking": "recursive",
    "same-class-nesting": "same-class nesting",
}

KIND_ABBREV = {
    "sleep-in-atomic": "sleep",
    "lock-order-inversion": "order",
    "irq-lock-inversion": "irq",
    "recursive-locking": "recursive",
    "same-class-nesting": "nesting",
}

CORE = "vmlinux"
CLEAN_ENDINGS = frozenset({"poweroff", "powered-off", "power-off", "shutdown", "clean", "exit"})


@dataclass
class RunFacts:
    kernel: str
    arch: str
    started: str | None
    duration_s: float | None
    events: int | None
    lost: int
    lost_detail: list[tuple[str, int]]
    truncated: bool
    ending: str | None  # how the guest ended, with detail
    ended_cleanly: bool | None
    problems: list[str] = field(default_factory=list)  # the trace is not whole: said first
    warnings: list[str] = field(default_factory=list)  # anything else the analysis noticed

    @property
    def complete(self) -> bool:
        return not self.problems


def _get(d: Mapping[str, Any], *paths: str) -> Any:
    """The first present value among dotted ``paths``."""
    for path in paths:
        cur: Any = d
        for part in path.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            return cur
    return None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


def _kernel(run: Mapping[str, Any]) -> str:
    k = _get(run, "kernel", "release", "guest.release", "kernel_release")
    if isinstance(k, Mapping):
        k = _get(k, "release", "abi", "version", "name", "image")
    return str(k) if k is not None else "unknown kernel"


def _events(a: Analysis) -> int | None:
    for src in (a.health, a.run):
        v = _get(src, "events_analysed", "events_analyzed", "events", "event_total",
                 "decoded_events", "lost.decoded_events")
        if isinstance(v, Mapping):
            v = sum(x for x in (_int(y) for y in v.values()) if x is not None)
        n = _int(v)
        if n is not None:
            return n
        counts = _get(src, "event_counts")
        if isinstance(counts, Mapping):
            return sum(x for x in (_int(y) for y in counts.values()) if x is not None)
    return None


def _lost(health: Mapping[str, Any], run: Mapping[str, Any]) -> tuple[int, list[tuple[str, int]],
                                                                      bool]:
    lost = _get(health, "lost", "lost_events")
    if lost is None:
        lost = _get(run, "lost")
    detail: list[tuple[str, int]] = []
    truncated = bool(_get(health, "truncated") or False)
    if isinstance(lost, Mapping):
        total = _int(lost.get("total"))
        for k, v in lost.items():
            n = _int(v)
            if k in ("total", "truncated", "guest_stats_missing", "read_events_guest",
                     "decoded_events") or isinstance(v, bool) or not n:
                continue
            detail.append((str(k), n))
        if total is None:
            total = sum(n for _, n in detail)
        truncated = truncated or bool(lost.get("truncated"))
    else:
        total = _int(lost) or 0
    if _get(health, "trace_complete") is False or _get(run, "trace_complete") is False:
        truncated = True
    return total, detail, truncated


def _ending(health: Mapping[str, Any], run: Mapping[str, Any]) -> tuple[str | None, bool | None]:
    e = _get(health, "ending", "guest_end", "guest_ending", "end")
    if e is None:
        e = _get(run, "ending")
    if e is None:
        return None, None
    if isinstance(e, Mapping):
        how = str(e.get("how") or e.get("state") or "unknown")
        detail = e.get("detail")
        text = f"{how}: {detail}" if detail else how
    else:
        how = text = str(e)
    return text, how.lower() in CLEAN_ENDINGS


def _said(warning: str, facts: RunFacts) -> bool:
    """Is this analysis warning one of the problems already spelled out?"""
    w = warning.lower()
    return bool((facts.lost and "lost" in w) or (facts.truncated and "truncat" in w)
                or (facts.ended_cleanly is False and ("power off" in w or "cleanly" in w)))


def run_facts(a: Analysis) -> RunFacts:
    """The run's identity and the trace's health, with every problem spelled out."""
    run, health = a.run, a.health
    total, detail, truncated = _lost(health, run)
    ending, clean = _ending(health, run)
    dur = _get(run, "duration_s", "run_time_s", "elapsed_s", "timing.total_s", "timing.wall_s",
               "timing.run_s")
    started = _get(run, "started", "start_time", "started_at", "date")
    facts = RunFacts(
        kernel=_kernel(run),
        arch=str(_get(run, "arch", "machine.arch") or "unknown arch"),
        started=str(started) if started is not None else None,
        duration_s=float(dur) if isinstance(dur, int | float) else None,
        events=_events(a),
        lost=total,
        lost_detail=detail,
        truncated=truncated,
        ending=ending,
        ended_cleanly=clean,
    )
    if total:
        how = ", ".join(f"{k} {n:,}" for k, n in detail)
        facts.problems.append(f"{total:,} events LOST" + (f" ({how})" if how else "")
                              + ": findings may be missing")
    if truncated:
        facts.problems.append("trace truncated: the stream ended before the guest said it was "
                              "complete")
    if clean is False:
        facts.problems.append(f"guest did not end cleanly: {ending}")
    err = _get(health, "decode_error") or _get(run, "decode_error")
    if err:
        facts.problems.append(f"trace decoding failed: {err}")
    warnings = _get(health, "warnings")
    if isinstance(warnings, str):
        warnings = [warnings]
    if isinstance(warnings, Iterable):
        facts.warnings.extend(str(w) for w in warnings if not _said(str(w), facts))
    return facts


def flatten(d: Any, prefix: str = "", limit: int = 6) -> list[tuple[str, str]]:
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


def _module_names(run: Mapping[str, Any]) -> list[str]:
    mods = _get(run, "modules", "modules_under_test")
    names: list[str] = []
    if isinstance(mods, Mapping):
        names = [str(k) for k in mods]
    elif isinstance(mods, list | tuple):
        for m in mods:
            n = _get(m, "name") if isinstance(m, Mapping) else m
            if n is not None:
                names.append(str(n))
    return names


def drivers(a: Analysis) -> list[str]:
    """Every driver the run is about: modules under test, and any with findings or locks.

    The core kernel is one only if it has findings (its locks alone would make a
    page of every lock in the kernel).  Sorted by name, with the core kernel last.
    """
    names = set(_module_names(a.run))
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


def _load_words(m: Mapping[str, Any]) -> str:
    rcs = [r for r in (m.get("insmod_rc") or []) if isinstance(r, int)]
    bad = [r for r in rcs if r != 0]
    if bad:
        # tdinsmod's exit code is finit_module's errno; busybox insmod's (older runs) is 1
        name = errno.errorcode.get(bad[0]) if m.get("loader") == "tdinsmod" else None
        return f"failed: {name} ({bad[0]})" if name else f"failed (exit {bad[0]})"
    if rcs:
        return "ok" if len(rcs) == 1 else f"ok ×{len(rcs)}"
    return "loaded" if m.get("loaded") else "not loaded"


def driver_rows(a: Analysis) -> list[DriverRow]:
    """Every driver of :func:`drivers`, modules under test with their load and coverage."""
    mods = _get(a.run, "modules")
    by_name: dict[str, Mapping[str, Any]] = {}
    if isinstance(mods, list):
        by_name = {str(m["name"]): m for m in mods if isinstance(m, Mapping) and "name" in m}
    seen = Counter(c.driver for c in a.classes)
    rows = []
    for d in drivers(a):
        m = by_name.get(d)
        if m is None:
            rows.append(DriverRow(d, False, "", seen[d], None, ""))
            continue
        nc = _int(m.get("lock_classes"))
        rows.append(DriverRow(d, True, str(m.get("origin") or ""),
                              nc if nc is not None else seen[d], _int(m.get("lock_events")),
                              _load_words(m)))
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
