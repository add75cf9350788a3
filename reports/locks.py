"""Lock semantics the reports need: contexts, lockdep usage bits, cycles.

Shared by the text report (to write lockdep's blocks) and the HTML pages (to
colour the edges of reported cycles), so both always agree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tracedep.analysis.findings import (
    Analysis,
    ClassStats,
    Edge,
    Finding,
    Site,
    SiteContext,
    WitnessKind,
)
from tracedep.reports.frames import is_primitive

SLEEPING_TYPES = ("mutex", "rwsem", "semaphore", "rt_mutex", "ww_mutex")
CYCLE_KINDS = ("lock-order-inversion",)


def context_text(ctx: SiteContext | None) -> str:
    """A witness's context as the reports print it: ``preempt=1 irqs-off softirq``."""
    if ctx is None:
        return ""
    words = [f"preempt={ctx.preempt_depth}"]
    words += [w for w, on in (("irqs-off", ctx.irqs_off), ("bh-off", ctx.bh_off),
                              ("hardirq", ctx.in_hardirq), ("softirq", ctx.in_softirq)) if on]
    return " ".join(words)


def preempt_count(ctx: SiteContext) -> int:
    """``preempt_count()`` as the kernel would show it (softirq/hardirq offsets)."""
    return ctx.preempt_depth + (0x100 if ctx.in_softirq else 0) + (
        0x10000 if ctx.in_hardirq else 0)


def irq_flags(ctx: SiteContext | None) -> str:
    """lockdep's ``[HC0[0]:SC0[0]:HE1:SE1]``."""
    c = ctx or SiteContext()
    hc, sc = int(c.in_hardirq), int(c.in_softirq)
    he, se = int(not c.irqs_off), int(not (c.in_softirq or c.bh_off))
    return f"[HC{hc}[{hc}]:SC{sc}[{sc}]:HE{he}:SE{se}]"


def irqs_off(site: Site) -> bool:
    return site.context is not None and site.context.irqs_off


def is_read(lock_type: str | None) -> bool:
    return bool(lock_type) and str(lock_type).endswith(("-r", "-read", "_read"))


@dataclass
class Usage:
    """What lockdep's usage bits say about a class: contexts it was used in or
    taken with enabled (``"hardirq"``, ``"softirq"``), and if it is a read lock."""

    used: set[str] = field(default_factory=set)
    enabled: set[str] = field(default_factory=set)
    read: bool = False

    def bits(self) -> str:
        """``{+.+.}``: per hardirq then softirq, the write then the read column.

        ``-`` used in that context, ``+`` taken with it enabled, ``?`` both,
        ``.`` neither or not known.
        """
        out: list[str] = []
        for state in ("hardirq", "softirq"):
            used, enabled = state in self.used, state in self.enabled
            c = "?" if used and enabled else "-" if used else "+" if enabled else "."
            out.extend((".", c) if self.read else (c, "."))
        return "{" + "".join(out) + "}"


_DISABLES_IRQS = re.compile(r"_irq(save)?$")


def usages(classes: Iterable[ClassStats], sites: Iterable[Site]) -> dict[str, Usage]:
    """Usage of the classes whose usage is known, from stats and witnesses.

    Known means: a sleeping lock (taken in process context, so with interrupts
    enabled), a ``hardirq-on``/``softirq-on`` context in the stats, a class used
    in interrupt context, or a witness that says how it was taken (its kind, or
    its innermost frame being the locking primitive, so that the state *after*
    ``spin_lock_irqsave()`` is known).  Classes absent from the result print
    without bits rather than with bits that would claim "never with IRQs on".
    """
    out: dict[str, Usage] = {}
    types = {c.lock_class: c.lock_type for c in classes}

    def get(name: str) -> Usage:
        return out.setdefault(name, Usage(read=is_read(types.get(name))))

    for c in classes:
        ctx = {x.lower() for x in c.contexts}
        used = {x for x in ("hardirq", "softirq") if x in ctx or f"in-{x}" in ctx}
        enabled = {x for x in ("hardirq", "softirq") if f"{x}-on" in ctx}
        if c.lock_type.startswith(SLEEPING_TYPES) and "process" in ctx:
            enabled |= {"hardirq", "softirq"}
        if used or enabled:
            u = get(c.lock_class)
            u.used |= used
            u.enabled |= enabled
    for s in sites:
        if s.lock:
            _site_usage(s, s.lock, get)
    return out


def _site_usage(s: Site, lock: str, get: Callable[[str], Usage]) -> None:
    """What one witness of ``lock`` says of its usage (a class it says nothing of
    stays unknown)."""
    irq = s.kind.irq
    if irq is not None:
        u = get(lock)
        (u.enabled if s.kind.irqs_enabled else u.used).add(irq)
    if not s.frames or not is_primitive(s.frames[0].function):
        return
    prim = s.frames[0].function
    u = get(lock)
    c = s.context or SiteContext()
    if c.in_hardirq:
        u.used.add("hardirq")
    if c.in_softirq:
        u.used.add("softirq")
    hard_off = c.irqs_off or c.in_hardirq or bool(_DISABLES_IRQS.search(prim))
    if not hard_off:
        u.enabled.add("hardirq")
        if not (c.in_softirq or c.bh_off or prim.endswith("_bh")):
            u.enabled.add("softirq")


def lock_name(name: str, usage: Mapping[str, Usage]) -> str:
    """``(name){+.+.}`` as lockdep prints a class (no bits when they are not known)."""
    u = usage.get(name)
    return f"({name}){u.bits()}" if u is not None else f"({name})"


def edge_map(edges: Iterable[Edge], driver: str | None = None) -> dict[tuple[str, str], Edge]:
    """Edges by (before, after); a driver's own edge wins over a namesake's (a bug
    driver and its clean twin may name their locks alike)."""
    edges = list(edges)
    out = {(e.before, e.after): e for e in edges}
    if driver is not None:
        out.update({(e.before, e.after): e for e in edges if driver in e.drivers})
    return out


@dataclass(frozen=True)
class Dep:
    """One dependency ``before -> after`` as a finding shows it."""

    witness: Site | None  # acquisition of ``after``
    held: Site | None  # where ``before`` had been taken


def deps(f: Finding, edges: Iterable[Edge]) -> dict[tuple[str, str], Dep]:
    """The dependencies a finding can show: its own witnesses where it has them
    (B acquired while holding A, then where A had been taken), else the run's
    edges, the finding's driver's first."""
    out = {k: Dep(e.witness, e.held_witness) for k, e in edge_map(edges, f.driver).items()}
    for i, s in enumerate(f.sites):
        if s.kind != WitnessKind.ACQUIRE or s.holding is None or s.lock is None:
            continue
        a, b = s.holding, s.lock
        nxt = f.sites[i + 1] if i + 1 < len(f.sites) else None
        held = nxt if nxt is not None and nxt.kind == WitnessKind.HELD and nxt.lock == a \
            else None
        old = out.get((a, b))
        out[(a, b)] = Dep(s, held or (old.held if old else None))
    return out


def _is_cycle(order: Sequence[str], dmap: Mapping[tuple[str, str], Dep]) -> bool:
    n = len(order)
    return n >= 2 and all((order[i], order[(i + 1) % n]) in dmap for i in range(n))


def cycle_order(f: Finding, dmap: Mapping[tuple[str, str], Dep]) -> list[str] | None:
    """The finding's locks as a cycle ``c0 -> c1 -> … -> c0`` whose closing edge
    ``c[-1] -> c0`` is the dependency seen last (where lockdep would have fired).

    ``None`` if the dependencies known do not close the cycle.
    """
    locks = list(dict.fromkeys(f.locks))
    hint = f.details.get("cycle")
    cands: list[list[str]] = []
    if isinstance(hint, list) and all(isinstance(x, str) for x in hint):
        cands.append(list(dict.fromkeys(x for x in hint if isinstance(x, str))))
    cands += [locks, locks[::-1]]
    order = next((c for c in cands if _is_cycle(c, dmap)), None)
    if order is None and 2 < len(locks) <= 7:
        order = next(([locks[0], *p] for p in itertools.permutations(locks[1:])
                      if _is_cycle([locks[0], *p], dmap)), None)
    if order is None:
        return None
    n = len(order)

    def seen(i: int) -> tuple[int, int]:
        w = dmap[(order[i], order[(i + 1) % n])].witness
        ts = w.ts_ns if w is not None else None
        return (ts if ts is not None else -1, i)

    last = max(range(n), key=seen)
    start = (last + 1) % n
    return order[start:] + order[:start]


def cycle_paths(f: Finding) -> list[list[str]]:
    """The cycles of a grouped lock-order finding (``details.paths``), [] otherwise."""
    paths = f.details.get("paths")
    if not isinstance(paths, list):
        return []
    return [[x for x in p if isinstance(x, str)] for p in paths
            if isinstance(p, list) and p and all(isinstance(x, str) for x in p)]


def cycle_edges(findings: Iterable[Finding], edges: Iterable[Edge]) -> set[tuple[str, str]]:
    """Every dependency that is part of a reported lock-order cycle."""
    edges = list(edges)
    out: set[tuple[str, str]] = set()
    for f in findings:
        if f.kind not in CYCLE_KINDS:
            continue
        for p in cycle_paths(f):
            out.update((p[i], p[(i + 1) % len(p)]) for i in range(len(p)))
        order = cycle_order(f, deps(f, edges))
        if order is None:
            continue
        out.update((order[i], order[(i + 1) % len(order)]) for i in range(len(order)))
    return out


def irq_edges(findings: Iterable[Finding], edges: Iterable[Edge]) -> set[tuple[str, str]]:
    """Dependencies that connect an irq-safe lock to an irq-unsafe one, as reported."""
    emap = edge_map(edges)
    out: set[tuple[str, str]] = set()
    for f in findings:
        if f.kind != "irq-lock-inversion":
            continue
        path = list(dict.fromkeys(f.locks))  # safe lock first, unsafe last
        out.update(k for k in zip(path, path[1:], strict=False) if k in emap)
    return out


def site_irq(site: Site) -> str | None:
    """``"hardirq"``/``"softirq"`` if the site ran in that interrupt context, as its
    context says, else as its kind does (a lock taken there)."""
    c = site.context
    if c is not None and c.in_hardirq:
        return "hardirq"
    if c is not None and c.in_softirq:
        return "softirq"
    return site.kind.irq if site.kind.in_irq else None


def all_sites(a: Analysis) -> list[Site]:
    """Every witness of the analysis: findings' sites and both ends of every edge."""
    out = [s for f in a.findings for s in f.sites]
    for e in a.edges:
        out.append(e.witness)
        if e.held_witness is not None:
            out.append(e.held_witness)
    return out
