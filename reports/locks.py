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
    """Usage of every class, from its stats and from acquisition witnesses.

    A witness counts only when its innermost frame is the locking primitive, so
    that the state *after* ``spin_lock_irqsave()`` disabled interrupts is known
    (the trace gives the state at the primitive's entry).  A sleeping lock
    taken in process context necessarily had interrupts enabled.
    """
    out: dict[str, Usage] = {}
    for c in classes:
        u = out.setdefault(c.lock_class, Usage())
        ctx = {x.lower() for x in c.contexts}
        u.read = is_read(c.lock_type)
        u.used.update(x for x in ("hardirq", "softirq") if x in ctx or f"in-{x}" in ctx)
        u.enabled.update(x for x in ("hardirq", "softirq") if f"{x}-on" in ctx)
        if c.lock_type.startswith(SLEEPING_TYPES) and "process" in ctx:
            u.enabled.update(("hardirq", "softirq"))
    for s in sites:
        if not s.lock or not s.frames or not is_primitive(s.frames[0].function):
            continue
        prim = s.frames[0].function
        c = parse_context(s.context)
        u = out.setdefault(s.lock, Usage())
        if c.hardirq:
            u.used.add("hardirq")
        if c.softirq:
            u.used.add("softirq")
        hard_off = c.irqs_off or c.hardirq or c.nmi or bool(_DISABLES_IRQS.search(prim))
        if not hard_off:
            u.enabled.add("hardirq")
            if not (c.softirq or c.bh_off or prim.endswith("_bh")):
                u.enabled.add("softirq")
    return out


def lock_name(name: str, usage: Mapping[str, Usage]) -> str:
    """``(name){+.+.}`` as lockdep prints a class (no bits when nothing is known)."""
    u = usage.get(name)
    return f"({name}){u.bits()}" if u is not None else f"({name})"


def edge_map(edges: Iterable[Edge]) -> dict[tuple[str, str], Edge]:
    return {(e.before, e.after): e for e in edges}


def _is_cycle(order: Sequence[str], emap: Mapping[tuple[str, str], Edge]) -> bool:
    n = len(order)
    return n >= 2 and all((order[i], order[(i + 1) % n]) in emap for i in range(n))


def cycle_order(f: Finding, emap: Mapping[tuple[str, str], Edge]) -> list[str] | None:
    """The finding's locks as a cycle ``c0 -> c1 -> … -> c0`` whose closing edge
    ``c[-1] -> c0`` is the dependency seen last (where lockdep would have fired).

    ``None`` if the edges of the run do not close the cycle.
    """
    locks = list(dict.fromkeys(f.locks))
    hint = f.details.get("cycle")
    cands: list[list[str]] = []
    if isinstance(hint, list) and all(isinstance(x, str) for x in hint):
        cands.append(list(dict.fromkeys(hint)))
    cands += [locks, locks[::-1]]
    order = next((c for c in cands if _is_cycle(c, emap)), None)
    if order is None and 2 < len(locks) <= 7:
        order = next(([locks[0], *p] for p in itertools.permutations(locks[1:])
                      if _is_cycle([locks[0], *p], emap)), None)
    if order is None:
        return None
    n = len(order)

    def seen(i: int) -> tuple[int, int]:
        ts = emap[(order[i], order[(i + 1) % n])].witness.ts_ns
        return (ts if ts is not None else -1, i)

    last = max(range(n), key=seen)
    start = (last + 1) % n
    return order[start:] + order[:start]


def cycle_edges(findings: Iterable[Finding], edges: Iterable[Edge]) -> set[tuple[str, str]]:
    """Every dependency that is part of a reported lock-order cycle."""
    emap = edge_map(edges)
    out: set[tuple[str, str]] = set()
    for f in findings:
        if f.kind not in CYCLE_KINDS:
            continue
        order = cycle_order(f, emap)
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
        locks = list(dict.fromkeys(f.locks))
        out.update(k for k in itertools.permutations(locks, 2) if k in emap)
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
    role = site.role.lower()
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
