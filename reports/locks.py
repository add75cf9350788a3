"""Lock semantics the reports need: contexts, lockdep usage bits, cycles.

Shared by the text report (to write lockdep's blocks) and the HTML pages (to
colour the edges of reported cycles), so both always agree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tracedep.analysis.findings import ClassStats, Edge, Finding, Site

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
        return f"[HC{hc}[{hc}]:SC{sc}[{sc}]:HE{int(not self.irqs_off)}:SE{int(not (self.softirq or self.bh_off))}]"


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


def usage_bits(cls: ClassStats | None) -> str:
    """lockdep's ``{+.+.}``: per hardirq and softirq, write then read usage.

    ``-`` taken in that interrupt context, ``+`` taken with it enabled, ``?``
    both, ``.`` neither (or not known).  A sleeping lock taken in process
    context necessarily had interrupts enabled; for spinlocks only what the
    analysis recorded (``hardirq-on``/``softirq-on`` contexts) is claimed.
    """
    if cls is None:
        return ""
    ctx = {c.lower() for c in cls.contexts}
    sleeping = cls.lock_type.startswith(SLEEPING_TYPES)
    read = is_read(cls.lock_type)
    out = []
    for state in ("hardirq", "softirq"):
        used = state in ctx or f"in-{state}" in ctx
        enabled = f"{state}-on" in ctx or (sleeping and "process" in ctx)
        c = "?" if used and enabled else "-" if used else "+" if enabled else "."
        out.extend((".", c) if read else (c, "."))
    return "{" + "".join(out) + "}"


def lock_name(name: str, classes: Mapping[str, ClassStats]) -> str:
    """``(name){+.+.}`` as lockdep prints a class."""
    return f"({name}){usage_bits(classes.get(name))}"


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


def site_irq(site: Site) -> str | None:
    """``"hardirq"``/``"softirq"`` if the site ran in that interrupt context."""
    c = parse_context(site.context)
    if c.hardirq or "hardirq" in site.role.lower():
        return "hardirq"
    if c.softirq or "softirq" in site.role.lower():
        return "softirq"
    if "irq" in site.role.lower():
        return "irq"
    return None
