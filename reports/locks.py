"""Lock semantics the reports need: contexts, lockdep usage bits, cycles.

Shared by the text report (to write lockdep's blocks) and the HTML pages (to
colour the edges of reported cycles), so both always agree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tracedep.analysis.findings import Analysis, ClassStats, Edge, Finding, Site
from tracedep.reports.frames import is_primitive

SLEEPING_TYPES = ("mutex", "rwsem", "semaphore", "rt_mutex", "ww_mutex")
CYCLE_KINDS = ("lock-order-inversion",)


@dataclass(frozen=True)
class Context:
    preempt: int | None
    irqs_off: bool
    hardirq: bool
    softirq: bool
    nmi: bool
    bh_off: bool = False  # softirqs disabled (spin_lock_bh), not serving one

    @property
    def preempt_count(self) -> int:
        """``preempt_count()`` as the kernel would show it (softirq/hardirq offsets)."""
        return (self.preempt or 0) + (0x100 if self.softirq else 0) + (
            0x10000 if self.hardirq else 0) + (0x100000 if self.nmi else 0)

    def flags(self) -> str:
        """lockdep's ``[HC0[0]:SC0[0]:HE1:SE1]``."""
        hc, sc = int(self.hardirq), int(self.softirq)
        he, se = int(not self.irqs_off), int(not (self.softirq or self.bh_off))
        return f"[HC{hc}[{hc}]:SC{sc}[{sc}]:HE{he}:SE{se}]"


_PREEMPT = re.compile(r"preempt(?:_depth|_count)?[=:](\d+)")


def parse_context(ctx: str | None) -> Context:
    """Read a ``Site.context`` such as ``"preempt=1 irqs-off softirq"``."""
    text = (ctx or "").lower()
    m = _PREEMPT.search(text)
    words = set(re.split(r"[\s,;]+", text))
    return Context(
        preempt=int(m.group(1)) if m else None,
        irqs_off=bool(words & {"irqs-off", "irqs_off", "irqsoff", "irqs-disabled"}),
        hardirq=bool(words & {"hardirq", "in-hardirq"}),
        softirq=bool(words & {"softirq", "in-softirq"}),
        nmi="nmi" in words,
        bh_off=bool(words & {"bh", "bh-off", "bh-disabled", "softirqs-off"}),
    )


def role_text(site: Site) -> str:
    """The site's role in lower case with its lock's name left out, so that a
    lock called ``irq_lock`` or ``l`` is not read as a word of the role."""
    role = site.role
    if site.lock:
        role = re.sub(rf"(?<![\w.@:]){re.escape(site.lock)}(?![\w.@:])", " ", role)
    return " ".join(role.lower().split())


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
# The analysis says in a witness's role how the lock was used ("X taken with
# hardirqs enabled", "X taken in softirq context").
_ROLE_ENABLED = re.compile(r"\btaken with (hard|soft)irqs enabled\b")
_ROLE_USED = re.compile(r"\btaken in (hard|soft)irq context\b")


def usages(classes: Iterable[ClassStats], sites: Iterable[Site]) -> dict[str, Usage]:
    """Usage of the classes whose usage is known, from stats and witnesses.

    Known means: a sleeping lock (taken in process context, so with interrupts
    enabled), a ``hardirq-on``/``softirq-on`` context in the stats, a class used
    in interrupt context, or a witness that says how it was taken (its role, or
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
        if not s.lock:
            continue
        role = role_text(s)
        if m := _ROLE_ENABLED.search(role):
            get(s.lock).enabled.add(f"{m.group(1)}irq")
        if m := _ROLE_USED.search(role):
            get(s.lock).used.add(f"{m.group(1)}irq")
        if not s.frames or not is_primitive(s.frames[0].function):
            continue
        prim = s.frames[0].function
        pc = parse_context(s.context)
        u = get(s.lock)
        if pc.hardirq:
            u.used.add("hardirq")
        if pc.softirq:
            u.used.add("softirq")
        hard_off = pc.irqs_off or pc.hardirq or pc.nmi or bool(_DISABLES_IRQS.search(prim))
        if not hard_off:
            u.enabled.add("hardirq")
            if not (pc.softirq or pc.bh_off or prim.endswith("_bh")):
                u.enabled.add("softirq")
    return out


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


_ACQ_WHILE = re.compile(r"^(?P<b>.+) acquired while holding (?P<a>.+)$")
_EARLIER = " acquired earlier"


def deps(f: Finding, edges: Iterable[Edge]) -> dict[tuple[str, str], Dep]:
    """The dependencies a finding can show: its own witnesses where it has them
    (``"B acquired while holding A"``, then ``"A acquired earlier"``), else the
    run's edges, the finding's driver's first."""
    out = {k: Dep(e.witness, e.held_witness) for k, e in edge_map(edges, f.driver).items()}
    for i, s in enumerate(f.sites):
        m = _ACQ_WHILE.match(s.role)
        if m is None:
            continue
        a, b = m.group("a"), m.group("b")
        nxt = f.sites[i + 1] if i + 1 < len(f.sites) else None
        held = nxt if nxt is not None and nxt.role == a + _EARLIER else None
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
        cands.append(list(dict.fromkeys(hint)))
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
    return [list(p) for p in paths
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


_IRQ_ROLE = re.compile(r"\b(in[- ])?(hard|soft)?irq([- ]context)?\b")


def site_irq(site: Site) -> str | None:
    """``"hardirq"``/``"softirq"`` if the site ran in that interrupt context.

    ``"irq"`` when only the role says so (``"irq-context"``); roles such as
    ``"irqs-on"`` describe process context and do not count.
    """
    c = parse_context(site.context)
    if c.hardirq:
        return "hardirq"
    if c.softirq:
        return "softirq"
    role = role_text(site)
    if _ROLE_ENABLED.search(role):
        return None
    m = _IRQ_ROLE.search(role)
    if m is None:
        return None
    return f"{m.group(2)}irq" if m.group(2) else "irq"


def all_sites(a: Analysis) -> list[Site]:
    """Every witness of the analysis: findings' sites and both ends of every edge."""
    out = [s for f in a.findings for s in f.sites]
    for e in a.edges:
        out.append(e.witness)
        if e.held_witness is not None:
            out.append(e.held_witness)
    return out
