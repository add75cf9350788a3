"""``report.txt``: every finding of a run, written as the kernel would have.

Each finding is printed in the words of the kernel report a developer already
knows — ``CONFIG_DEBUG_ATOMIC_SLEEP``'s ``BUG: sleeping function called from
invalid context`` and lockdep's ``WARNING:`` blocks — with tracedep's witness
stacks decoded to file:line, preceded by a line giving the finding's driver,
signature and count.  The header says first whether the trace was whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tracedep.analysis.findings import Analysis, ClassStats, Edge, Finding, Site, WitnessKind
from tracedep.reports import frames as fr
from tracedep.reports import locks as lk
from tracedep.reports import model

RULE = "-" * 72


@dataclass
class TextContext:
    """What the finding renderers need from the rest of the analysis."""

    kernel: str
    arch: str
    classes: Mapping[str, ClassStats]
    edges: Sequence[Edge]
    usage: Mapping[str, lk.Usage]

    @classmethod
    def of(cls, a: Analysis) -> TextContext:
        facts = model.run_facts(a)
        return cls(facts.kernel, facts.arch, model.class_index(a.classes), a.edges,
                   lk.usages(a.classes, lk.all_sites(a)))

    def name(self, lock: str | None) -> str:
        return lk.lock_name(lock or "?", self.usage)

    def is_read(self, lock: str) -> bool:
        u = self.usage.get(lock)
        return u is not None and u.read

    def lock_call(self, lock: str) -> str:
        return f"{'r' if self.is_read(lock) else ''}lock({lock});"


@dataclass
class _Out:
    lines: list[str] = field(default_factory=list)
    shown: list[Site] = field(default_factory=list)  # sites whose whole stack was printed

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def at(self, site: Site | None) -> str:
        """The ``at:`` text of a site; a one-frame site is then shown in full."""
        if site is None:
            return "?"
        if len(site.frames) <= 1:
            self.shown.append(site)
        return fr.at(site.frames)

    def stack(self, site: Site | None, indent: str) -> None:
        if site is None:
            self.add(f"{indent}(no witness stack recorded)")
            return
        self.shown.append(site)
        if not site.frames:
            self.add(f"{indent}(empty stack)")
        self.add(*(f"{indent}{fr.frame_line(f)}" for f in fr.dedup(site.frames)))


def _task(site: Site | None) -> str:
    if site is None or (site.comm is None and site.pid is None):
        return "?/?"
    comm = site.comm if site.comm is not None else "?"
    return f"{comm}/{site.pid if site.pid is not None else '?'}"


def _banner(out: _Out, title: str, kernel: str) -> None:
    out.add("=" * len(title), title, f"{kernel} (tracedep)", "-" * len(title))


def _by_ts(sites: Sequence[Site]) -> list[Site]:
    return sorted(sites, key=lambda s: (s.ts_ns is None, s.ts_ns or 0))


def _call_trace(out: _Out, site: Site, ctx: TextContext) -> None:
    c = site.context
    if ctx.arch in ("arm64", "aarch64"):
        out.add("Call trace:")
        out.stack(site, " ")
        return
    mark = "IRQ" if c is not None and (c.in_hardirq or c.in_softirq) else "TASK"
    out.add("Call Trace:", f" <{mark}>")
    out.stack(site, " ")
    out.add(f" </{mark}>")


def _sleep_in_atomic(f: Finding, ctx: TextContext, out: _Out) -> None:
    sleep = next((s for s in f.sites if s.kind == WitnessKind.SLEEP),
                 f.sites[0] if f.sites else None)
    held = _by_ts([s for s in f.sites if s.kind == WitnessKind.HELD])
    top = fr.sleep_site(sleep.frames) if sleep is not None else None
    where = fr.where(top) if top is not None else ""
    func = str(f.details.get("api") or (top.function if top is not None else "?"))
    c = sleep.context if sleep is not None else None
    pc = lk.preempt_count(c) if c is not None else len(held)
    irqs_off = c is not None and c.irqs_off
    out.add(f"BUG: sleeping function called from invalid context at {where or func}",
            f"in_atomic(): {int(pc != 0)}, irqs_disabled(): {int(irqs_off)}, non_block: 0, "
            f"pid: {sleep.pid if sleep and sleep.pid is not None else '?'}, "
            f"name: {sleep.comm if sleep and sleep.comm is not None else '?'}",
            f"preempt_count: {pc:x}, expected: 0")
    n = len(held)
    who = _task(sleep)
    out.add(f"no locks held by {who}." if n == 0 else
            f"{n} lock{'s' if n > 1 else ''} held by {who}:")
    for i, h in enumerate(held):
        out.add(f" #{i}: {ctx.name(h.lock)}, at: {out.at(h)}")
    if held:
        out.add("Preemption disabled at:", f" {out.at(held[0])}")
    if sleep is not None:
        _call_trace(out, sleep, ctx)
    for i, h in enumerate(held):
        if len(h.frames) > 1:  # a one-frame witness is its "at:" line above
            out.add("", f"tracedep: held lock #{i} {ctx.name(h.lock)} was taken at:")
            out.stack(h, " ")


def _scenario(order: Sequence[str], ctx: TextContext, out: _Out) -> None:
    """lockdep's CPU table, generalised to one CPU per lock of the cycle."""
    n = len(order)
    width = max(29, max(len(x) for x in order) + 10)

    def col(i: int, text: str) -> str:
        return " " * (2 + width * i) + text

    def heads(label: Callable[[int], str]) -> str:
        line = ""
        for i in range(n):  # lockdep: CPU0 at column 7, the others above their locks
            line = line.ljust(7 if i == 0 else 2 + width * i) + label(i)
        return line

    out.add(" Possible unsafe locking scenario:", "")
    out.add(heads(lambda i: f"CPU{i}"), heads(lambda i: "----"))
    # CPU0 holds the last lock and wants the first; CPU i holds lock i-1, wants lock i.
    out.add(col(0, ctx.lock_call(order[-1])))
    out.add(*(col(i, ctx.lock_call(order[i - 1])) for i in range(1, n)))
    out.add(*(col(i, ctx.lock_call(order[i])) for i in range(1, n)))
    out.add(col(0, ctx.lock_call(order[0])), "", " *** DEADLOCK ***")


def _paths(f: Finding, out: _Out) -> None:
    """A grouped lock-order finding (analysis.order_rules.group_cycles): every cycle."""
    paths = lk.cycle_paths(f)
    if len(paths) < 2:
        return
    out.add("", f"tracedep: {len(paths)} cycles share one root cause, all through "
                f"{f.details.get('through', '?')} (the report above is path #1):")
    out.add(*(f"  path #{i}: {' -> '.join([*p, p[0]])}" for i, p in enumerate(paths, 1)))


def _lock_order(f: Finding, ctx: TextContext, out: _Out) -> None:
    _lock_order_first(f, ctx, out)
    _paths(f, out)


def _lock_order_first(f: Finding, ctx: TextContext, out: _Out) -> None:
    dmap = lk.deps(f, ctx.edges)
    order = lk.cycle_order(f, dmap)
    if order is None:
        _generic(f, ctx, out, "WARNING: possible circular locking dependency detected")
        out.add("", "tracedep: the run's dependency edges do not close this cycle; "
                    "witnesses as recorded above")
        return
    n = len(order)
    closing = dmap[(order[-1], order[0])]
    new = closing.witness
    _banner(out, "WARNING: possible circular locking dependency detected", ctx.kernel)
    out.add(f"{_task(new)} is trying to acquire lock:",
            f" {ctx.name(order[0])}, at: {out.at(new)}", "",
            "but task is already holding lock:",
            f" {ctx.name(order[-1])}, at: {out.at(closing.held)}", "",
            "which lock already depends on the new lock.", "", "",
            "the existing dependency chain (in reverse order) is:")
    for i in range(n - 1, 0, -1):
        out.add("", f"-> #{i} {ctx.name(order[i])}:")
        out.stack(dmap[(order[i - 1], order[i])].witness, " " * 7)
    out.add("", f"-> #0 {ctx.name(order[0])}:")
    out.stack(new, " " * 7)
    out.add("", "other info that might help us debug this:", "")
    if n > 2:
        out.add("Chain exists of:", "  " + " --> ".join(order), "")
    if n <= 4:
        _scenario(order, ctx, out)


def _irq_state(f: Finding, sites: Sequence[Site]) -> str:
    for s in sites:
        where = lk.site_irq(s)
        if where in ("hardirq", "softirq"):
            return where.upper()
    return "SOFTIRQ" if f.details.get("irq") == "softirq" else "HARDIRQ"


def _irq_inversion(f: Finding, ctx: TextContext, out: _Out) -> None:
    locks = list(dict.fromkeys(f.locks))
    irq_sites = [s for s in f.sites if lk.site_irq(s)]
    state = _irq_state(f, irq_sites)
    if not locks:
        _generic(f, ctx, out, "WARNING: inconsistent lock state")
    elif len(locks) == 1:
        _inconsistent(f, locks[0], state, irq_sites, ctx, out)
    else:
        _safe_unsafe(f, locks, state, irq_sites, ctx, out)


def _inconsistent(f: Finding, lock: str, state: str, irq_sites: Sequence[Site],
                  ctx: TextContext, out: _Out) -> None:
    rw = "R" if ctx.is_read(lock) else "W"
    in_irq = irq_sites[0] if irq_sites else None
    others = _by_ts([s for s in f.sites if s not in irq_sites])
    on = next((s for s in others if s.kind.irqs_enabled), None) or next(
        (s for s in others if not lk.irqs_off(s)), others[0] if others else None)
    used, enabled = f"{{IN-{state}-{rw}}}", f"{{{state}-ON-{rw}}}"
    # lockdep fires on the second usage; the first is "registered".
    first_irq = (in_irq is not None and on is not None and (in_irq.ts_ns or 0) <= (on.ts_ns or 0))
    old, new = (in_irq, on) if first_irq else (on, in_irq)
    old_state, new_state = (used, enabled) if first_irq else (enabled, used)
    _banner(out, "WARNING: inconsistent lock state", ctx.kernel)
    flags = lk.irq_flags(new.context) if new is not None else ""
    out.add(f"inconsistent {old_state} -> {new_state} usage.",
            f"{_task(new)} {flags} takes:",
            f" {ctx.name(lock)}, at: {out.at(new)}",
            f"{old_state} state was registered at:")
    out.stack(old, "  ")
    out.add("", "other info that might help us debug this:",
            " Possible unsafe locking scenario:", "",
            "       CPU0", "       ----",
            f"  {ctx.lock_call(lock)}", "  <Interrupt>", f"    {ctx.lock_call(lock)}", "",
            " *** DEADLOCK ***", "", "stack backtrace:")
    if new is not None:
        _call_trace(out, new, ctx)


def _safe_unsafe(f: Finding, locks: list[str], state: str, irq_sites: Sequence[Site],
                 ctx: TextContext, out: _Out) -> None:
    # locks is the dependency path: the irq-safe lock first, the irq-unsafe one last
    safe, prev, unsafe = locks[0], locks[-2], locks[-1]
    dep = lk.deps(f, ctx.edges).get((prev, unsafe), lk.Dep(None, None))
    acquire = dep.witness or next((s for s in f.sites if s.lock == unsafe
                                   and s.kind == WitnessKind.ACQUIRE), None)
    holding = dep.held
    safe_site = next((s for s in irq_sites if s.lock == safe), irq_sites[0] if irq_sites else None)
    cands = [s for s in f.sites if s.lock == unsafe and s not in irq_sites and s != acquire]
    unsafe_site = next((s for s in cands if s.kind.irqs_enabled),
                       next((s for s in cands if not lk.irqs_off(s)),
                            cands[0] if cands else None))
    disable = "local_bh_disable();" if state == "SOFTIRQ" else "local_irq_disable();"
    _banner(out, f"WARNING: {state}-safe -> {state}-unsafe lock order detected", ctx.kernel)
    flags = lk.irq_flags(acquire.context) if acquire is not None else ""
    out.add(f"{_task(acquire)} {flags} is trying to acquire:",
            f" {ctx.name(unsafe)}, at: {out.at(acquire)}", "",
            "and this task is already holding:",
            f" {ctx.name(prev)}, at: {out.at(holding)}",
            "which would create a new lock dependency:",
            f" {ctx.name(prev)} -> {ctx.name(unsafe)}", "",
            f"but this new dependency connects a {state}-irq-safe lock:",
            f" {ctx.name(safe)}", "", f"... which became {state}-irq-safe at:")
    out.stack(safe_site, "  ")
    out.add("", f"to a {state}-irq-unsafe lock:", f" {ctx.name(unsafe)}", "",
            f"... which became {state}-irq-unsafe at:", "...")
    out.stack(unsafe_site, "  ")
    w = 29
    out.add("", "other info that might help us debug this:", "",
            " Possible interrupt unsafe locking scenario:", "",
            "       CPU0                    CPU1", "       ----                    ----",
            f"  {ctx.lock_call(unsafe)}", " " * (2 + w) + disable,
            " " * (2 + w) + ctx.lock_call(safe), " " * (2 + w) + ctx.lock_call(unsafe),
            "  <Interrupt>", f"    {ctx.lock_call(safe)}", "", " *** DEADLOCK ***", "",
            "stack backtrace:")
    if acquire is not None:
        _call_trace(out, acquire, ctx)


def _recursive(f: Finding, ctx: TextContext, out: _Out) -> None:
    ordered = _by_ts(f.sites)
    new = next((s for s in f.sites if s.kind == WitnessKind.ACQUIRE),
               ordered[-1] if ordered else None)
    old = next((s for s in f.sites if s is not new and s.kind == WitnessKind.HELD),
               next((s for s in ordered if s is not new), None))
    lock_new = (new.lock if new and new.lock else None) or (f.locks[0] if f.locks else "?")
    lock_old = (old.lock if old and old.lock else None) or (f.locks[-1] if f.locks else "?")
    _banner(out, "WARNING: possible recursive locking detected", ctx.kernel)
    out.add(f"{_task(new)} is trying to acquire lock:", f" {ctx.name(lock_new)}, at: {out.at(new)}",
            "", "but task is already holding lock:", f" {ctx.name(lock_old)}, at: {out.at(old)}",
            "", "other info that might help us debug this:",
            " Possible unsafe locking scenario:", "", "       CPU0", "       ----",
            f"  {ctx.lock_call(lock_old)}", f"  {ctx.lock_call(lock_new)}", "",
            " *** DEADLOCK ***", "", " May be due to missing lock nesting notation", "",
            "stack backtrace:")
    if new is not None:
        _call_trace(out, new, ctx)
    if old is not None:
        out.add("", f"tracedep: {ctx.name(lock_old)} was first taken at:")
        out.stack(old, " ")


def _invalid_wait(f: Finding, ctx: TextContext, out: _Out) -> None:
    """lockdep's "BUG: Invalid wait context" (PROVE_RAW_LOCK_NESTING), said to be
    about PREEMPT_RT only: on the traced kernel nothing is wrong."""
    new = next((s for s in f.sites if s.kind in (WitnessKind.ACQUIRE, WitnessKind.SLEEP)),
               f.sites[0] if f.sites else None)
    held = _by_ts([s for s in f.sites if s.kind == WitnessKind.HELD])
    inner = str(f.details.get("inner") or "?")
    title = "[ BUG: Invalid wait context ]"
    _banner(out, title, ctx.kernel)
    if inner == "allocation":
        out.add(f"{_task(new)} is trying to allocate: {f.details.get('api', '?')}, "
                f"at: {out.at(new)}")
    else:
        lock = new.lock if new is not None and new.lock else (f.locks[-1] if f.locks else "?")
        out.add(f"{_task(new)} is trying to lock:", f" {ctx.name(lock)} ({inner}), "
                                                     f"at: {out.at(new)}")
    out.add("other info that might help us debug this:",
            f"{len(held)} lock{'s' if len(held) != 1 else ''} held by {_task(new)}:")
    for i, s in enumerate(held):
        out.add(f" #{i}: {ctx.name(s.lock or '?')} (raw_spinlock_t), at: {out.at(s)}")
    out.add("tracedep: PREEMPT_RT only: on PREEMPT_RT a spinlock_t or rwlock_t is a "
            "sleeping lock and the allocator takes such locks; a raw_spinlock_t still "
            "spins. Not a bug on this (non-RT) kernel.", "stack backtrace:")
    if new is not None:
        _call_trace(out, new, ctx)


def _generic(f: Finding, ctx: TextContext, out: _Out, title: str | None = None) -> None:
    _banner(out, title or f"WARNING: {f.kind}", ctx.kernel)
    out.add(f.message)
    for s in f.sites:
        lock = f" {ctx.name(s.lock)}" if s.lock else ""
        out.add("", f"{s.role}:{lock} by {_task(s)} {model.fmt_ts(s.ts_ns)} "
                    f"{lk.context_text(s.context)}".rstrip())
        out.stack(s, " ")


RENDERERS: dict[str, Callable[[Finding, TextContext, _Out], None]] = {
    "sleep-in-atomic": _sleep_in_atomic,
    "lock-order-inversion": _lock_order,
    "irq-lock-inversion": _irq_inversion,
    "recursive-locking": _recursive,
    "same-class-nesting": _recursive,
    "invalid-wait-context": _invalid_wait,
}


def render_finding(f: Finding, ctx: TextContext) -> list[str]:
    """One finding's kernel-style block, then any witness it did not show in full."""
    out = _Out()
    RENDERERS.get(f.kind, _generic)(f, ctx, out)
    rest = [s for s in f.sites if s not in out.shown]
    if rest:
        out.add("", "tracedep: other witnesses:")
        for s in rest:
            lock = f" {ctx.name(s.lock)}" if s.lock else ""
            out.add(f" {s.role}:{lock} by {_task(s)} {model.fmt_ts(s.ts_ns)} "
                    f"{lk.context_text(s.context)}".rstrip())
            out.stack(s, "   ")
    return out.lines


def finding_heading(f: Finding, i: int, n: int) -> list[str]:
    times = "once" if f.count == 1 else f"{f.count} times"
    lines = [f"tracedep finding {i}/{n}: [{f.driver}] {f.kind}: {f.message}",
             f"  signature {f.signature}, seen {times}, first at {model.fmt_ts(f.first_ts_ns)}",
             f"  locks: {', '.join(f.locks) if f.locks else '-'}"]
    if f.details:
        lines.append(f"  details: {model.details_text(f.details)}")
    return lines


def _header(a: Analysis, facts: model.RunFacts, generated: str | None) -> list[str]:
    title = "tracedep report: sleep-in-atomic and lock-order findings"
    lines = [title, "=" * len(title)]
    if facts.problems:
        bar = "!" * 72
        lines += [bar, "!!! TRACE INCOMPLETE: this report may be missing findings"]
        lines += [f"!!!   {p}" for p in facts.problems]
        lines += [bar]
    lines += [f"tracedep warning: {w}" for w in facts.warnings]
    run = ", ".join(x for x in (f"started {facts.started}" if facts.started else "",
                                 model.fmt_duration(facts.duration_s)
                                 if facts.duration_s is not None else "") if x)
    ev = f"{facts.events:,}"
    lost = f"{facts.lost:,} LOST" if facts.lost else "0 lost"
    kinds = model.kinds(a.findings)
    per_kind = [(k, sum(1 for f in a.findings if f.kind == k)) for k in kinds]
    nd = len({f.driver for f in a.findings})
    lines += [f"kernel     {facts.kernel} ({facts.arch})",
              f"run        {run or '-'}",
              f"events     {ev} analysed, {lost}",
              f"trace      {'complete' if not facts.problems else 'INCOMPLETE'}"
              + (f", guest ended: {facts.ending}" if facts.ending else ""),
              f"findings   {len(a.findings)} in {nd} driver{'s' if nd != 1 else ''}"
              + (" (" + ", ".join(f"{k} {n}" for k, n in per_kind if n) + ")"
                 if a.findings else "")]
    if generated:
        lines.append(f"generated  {generated}")
    return lines


def _summary(a: Analysis) -> list[str]:
    counts = model.counts(a)
    drows = {r.name: r for r in model.driver_rows(a)}
    kinds = model.kinds(a.findings)
    short = [model.kind_abbrev(k) for k in kinds]
    names = list(counts)
    w = max([len("driver"), *(len(n) for n in names)]) + 2
    # what each driver exercised, beside what it found: no finding from a driver
    # that took no lock, or whose load failed, is not a clean driver
    cols = [*short, "total", "classes", "lock-events", "load"]
    lines = ["Findings per driver:", "  " + "driver".ljust(w) + "  ".join(cols)]
    for d in names:
        c = counts[d]
        r = drows.get(d)
        cells = [str(c[k] or "-").rjust(len(h)) for k, h in zip(kinds, short, strict=True)]
        cells.append(str(sum(c.values()) or "-").rjust(len("total")))
        cells.append(str(r.lock_classes if r else 0).rjust(len("classes")))
        ev = r.lock_events if r else None
        cells.append((str(ev) if ev is not None else "-").rjust(len("lock-events")))
        cells.append((r.load if r and r.load else "-")
                     + (" (kernel's module)" if r and r.origin == "kernel" else ""))
        lines.append("  " + d.ljust(w) + "  ".join(cells))
    lines.append("  (" + ", ".join(f"{h} = {k}" for h, k in zip(short, kinds, strict=True))
                 + "; classes = lock classes it owns, lock-events = lock operations at its "
                   "code, load = its insmod)")
    return lines


def render_text(a: Analysis, generated: str | None = None) -> str:
    """The whole ``report.txt``."""
    facts = model.run_facts(a)
    ctx = TextContext.of(a)
    lines = _header(a, facts, generated) + [""] + _summary(a) + [""]
    fs = model.sorted_findings(a.findings)
    if not fs:
        lines += ["No findings."]
    for i, f in enumerate(fs, 1):
        lines += [RULE, *finding_heading(f, i, len(fs)), "", *render_finding(f, ctx), ""]
    lines += [RULE, "Trace health, as recorded:"]
    lines += [f"  {k}: {v}" for k, v in model.flatten(a.health.to_json())] or [
        "  (nothing recorded)"]
    return "\n".join(lines).rstrip() + "\n"
