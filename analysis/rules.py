"""The rules: turn a replayed trace into findings, with lockdep's semantics.

The rule families live apart (``analysis.sleep_rules``, ``analysis.order_rules``, the
IRQ and recursion rules here); this module holds what they share (``Ctx``, the
context of a site, the driver a finding is blamed on).

* ``sleep-in-atomic``: a may-sleep event (allocation allowed to reclaim, sleeping
  lock, sleep catalog, might_sleep(), voluntary switch) while a spinning lock is
  held, or preemption, IRQs or BH are off, or in hardirq/softirq context.
* ``lock-order-inversion``: a cycle in the class dependency graph that lockdep
  would call a deadlock: trylocks add no dependency, and a cycle is harmless if
  it passes a lock acquired as a recursive reader and left while held shared
  (lockdep's "strong path" rule; ``rwlock_t`` readers are recursive).
* ``irq-lock-inversion``: a class used in hardirq (softirq) context and taken
  elsewhere with hardirqs (softirqs) enabled; or an IRQ-safe class held while an
  IRQ-unsafe class is taken (``HARDIRQ-safe -> HARDIRQ-unsafe``).
* ``recursive-locking``: an instance taken again by its holder;
  ``same-class-nesting``: two instances of one class nested without a
  ``*_nested`` annotation (invisible on kernels without lockdep: said so).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tracedep.analysis.classes import LockClass
from tracedep.analysis.findings import Finding, Frame, Site, SiteContext, WitnessKind
from tracedep.analysis.heldlocks import (
    ENABLED_HARDIRQ,
    ENABLED_HARDIRQ_READ,
    ENABLED_SOFTIRQ,
    ENABLED_SOFTIRQ_READ,
    USED_IN_HARDIRQ,
    USED_IN_HARDIRQ_READ,
    USED_IN_SOFTIRQ,
    USED_IN_SOFTIRQ_READ,
    EdgeAcc,
    Replay,
)
from tracedep.analysis.nesting import NestingJudge
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.witness import clean_stack, clean_text_stack, frame_at

# Allocator entry points by API name (tracer.probes.api_name: 6.10+ spells them
# ``*_noprof``; 6.10 also renamed kmalloc_trace/kmalloc_large to __kmalloc_cache/_large).
ALLOC_FUNCS = frozenset({
    "kmalloc_trace", "__kmalloc", "kmem_cache_alloc", "kmem_cache_alloc_lru", "__kmalloc_node",
    "kmalloc_node_trace", "kmem_cache_alloc_node", "__alloc_pages", "alloc_pages",
    "__get_free_pages", "__vmalloc_node_range", "__kmem_cache_alloc_node", "slab_pre_alloc_hook",
    "__kmalloc_node_track_caller", "kmalloc_large", "alloc_pages_exact",
    "__kmalloc_cache", "__kmalloc_cache_node", "__kmalloc_large", "__kmalloc_large_node",
    "alloc_pages_mpol", "__alloc_pages_node", "alloc_pages_node", "__vmalloc_node",
    "__kvmalloc_node", "kvmalloc_node", "mempool_alloc", "__folio_alloc", "folio_alloc",
})

# The slab allocator's own path to the page allocator (mm/slub.c)
SLAB_INTERNALS = frozenset({
    "new_slab", "allocate_slab", "___slab_alloc", "__slab_alloc", "__kmem_cache_alloc_node",
    "kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node", "kmalloc_trace",
    "kmalloc_node_trace", "__kmalloc", "__kmalloc_node", "__kmalloc_node_track_caller",
    "kmem_cache_alloc_bulk", "__kmalloc_cache", "__kmalloc_cache_node", "slab_alloc_node",
    "__slab_alloc_node", "alloc_slab_page",
})

GFP_NAMES = (  # most specific first, as the kernel's show_gfp_flags prints them
    (0xCC0 | 0x400000, "GFP_KERNEL_ACCOUNT"), (0xCC0, "GFP_KERNEL"), (0xC40, "GFP_NOFS"),
    (0xC00, "GFP_NOIO"), (0xA20, "GFP_ATOMIC"),
    (0x820, "GFP_ATOMIC"),  # 6.2+: __GFP_ATOMIC is gone (__GFP_HIGH|__GFP_KSWAPD_RECLAIM)
    (0x800, "GFP_NOWAIT"),
)
CONTEXT_TEXT = {
    "hardirq": "in hardirq context",
    "softirq": "in softirq context",
    "spinlock": "with a spinning lock held",
    "irqs-off": "with IRQs disabled",
    "bh-off": "with softirqs (BH) disabled",
    "preempt": "with preemption disabled",
}
REASON_ORDER = ("hardirq", "softirq", "spinlock", "irqs-off", "bh-off", "preempt")


def gfp_text(gfp: int) -> str:
    for mask, name in GFP_NAMES:
        if gfp & mask == mask:
            rest = gfp & ~mask
            return name if not rest else f"{name}|{rest:#x}"
    return f"{gfp:#x}"


@dataclass
class Ctx:
    events: pd.DataFrame
    stacks: list[tuple[int, ...]]
    symbols: RunSymbols
    classes: list[LockClass]
    replay: Replay
    call_insn_size: int
    lockdep_events: bool = False
    honoured_nesting: int = 0
    # annotations read from DWARF and source (analysis.nesting); None: the old way,
    # the driver's own source line only
    nesting: NestingJudge | None = None
    own_source_modules: frozenset[str] = frozenset()  # --module-src modules
    unjudged_nesting: int = 0
    # ftrace text traces: stacks and call sites known by name (see Trace)
    text_stacks: list[tuple[Frame, ...]] = field(default_factory=list)
    text_sites: dict[int, Frame] = field(default_factory=dict)
    # edges through waits and the object kind of their classes (analysis.waits)
    wait_edges: dict[tuple[int, int], list[EdgeAcc]] = field(default_factory=dict)
    wait_kinds: dict[int, str] = field(default_factory=dict)

    def all_edges(self) -> dict[tuple[int, int], list[EdgeAcc]]:
        """The class graph: lock dependencies and the edges through waits."""
        if not self.wait_edges:
            return self.replay.edges
        out = dict(self.replay.edges)
        for k, accs in self.wait_edges.items():
            out[k] = [*out.get(k, []), *accs]
        return out

    def row(self, r: int) -> pd.Series:
        return self.events.iloc[r]

    def stack_frames(self, r: int) -> list[Frame]:
        """The cleaned kernel stack of event row ``r`` ([] when it has none)."""
        sid = int(self.events["stack_id"].iloc[r])
        if sid < 0:
            return []
        if not self.stacks[sid] and sid < len(self.text_stacks):
            return clean_text_stack(self.text_stacks[sid], self.call_insn_size)
        frames = clean_stack(self.symbols, self.stacks[sid], self.call_insn_size,
                             int(self.events["ts_ns"].iloc[r]))
        # A kprobe at a function's first instruction on arm64: the caller is only in
        # the link register (the callee has not pushed its frame record yet), so the
        # frame-pointer unwind skips it.  The probe fetched it: put it back.
        if frames and frames[0].offset == 0 and int(self.events["ip"].iloc[r]):
            call = self.call_frame(r)
            if call.module != "?" and not any(f.address == call.address for f in frames[1:3]):
                frames.insert(1, call)
        return frames

    def call_frame(self, r: int) -> Frame:
        """The call site of event row ``r`` as a frame."""
        ip = int(self.events["ip"].iloc[r])
        if ip == 0 and r in self.text_sites:
            return self.text_sites[r]
        return frame_at(self.symbols, ip, True, int(self.events["ts_ns"].iloc[r]))

    def site(self, r: int, kind: WitnessKind, role: str, lock: str | None = None,
             with_stack: bool = True, holding: str | None = None) -> Site:
        """The witness of event row ``r``; ``role`` says it in words for the reports."""
        e = self.events
        sid = int(e["stack_id"].iloc[r])
        if with_stack and sid >= 0:
            frames = self.stack_frames(r)
        else:
            frames = [self.call_frame(r)]
        return Site(role=role, frames=tuple(frames), lock=lock, ts_ns=int(e["ts_ns"].iloc[r]),
                    pid=int(e["pid"].iloc[r]), comm=str(e["comm"].iat[r]),
                    context=site_context(e, r), kind=kind, holding=holding)

    def nesting_visible(self, ip: int, ts: int) -> bool:
        """Can a ``*_nested`` annotation at this call site be seen?  With lockdep's own
        events; in a module given with its source; in a kernel package's module when
        its DWARF and the kernel's source are at hand (analysis.nesting).  The core
        kernel's own nestings are not judged."""
        if self.lockdep_events:
            return True
        mod = self.symbols.module_of(ip, ts)
        if mod in ("vmlinux", None):
            return False
        if mod in self.own_source_modules:
            return True
        if self.nesting is None:
            return False  # no DWARF (--no-dwarf): a package module's annotation is unseen
        return self.nesting.at(frame_at(self.symbols, ip, True, ts), ts).known

    def src(self, f: Frame, ts: int | None) -> str:
        """The function to name in signatures and messages: for module code the
        innermost source function (inlining-independent), else the symbol."""
        if f.module in ("vmlinux", "?") or not f.address:
            return f.function
        return self.symbols.source_function(f.address, ts) or f.function

    def cls(self, c: int) -> LockClass:
        return self.classes[c] if c >= 0 else LockClass("?", "?", "instance", "vmlinux", sig="?")


def site_context(e: pd.DataFrame, r: int) -> SiteContext:
    return SiteContext(preempt_depth=int(e["preempt_depth"].iloc[r]),
                       irqs_off=bool(e["irqs_off"].iat[r]), bh_off=bool(e["bh_off"].iat[r]),
                       in_hardirq=bool(e["in_hardirq"].iat[r]),
                       in_softirq=bool(e["in_softirq"].iat[r]))


def driver_of(frames: list[Frame], fallback: list[str]) -> str:
    for f in frames:
        if f.module not in ("vmlinux", "?"):
            return f.module
    for m in fallback:
        if m not in ("vmlinux", "?"):
            return m
    return "vmlinux"


# -- sleep in atomic -------------------------------------------------------------


IRQ_KINDS = (
    ("hardirq", (USED_IN_HARDIRQ, USED_IN_HARDIRQ_READ), (ENABLED_HARDIRQ, ENABLED_HARDIRQ_READ)),
    ("softirq", (USED_IN_SOFTIRQ, USED_IN_SOFTIRQ_READ), (ENABLED_SOFTIRQ, ENABLED_SOFTIRQ_READ)),
)


def irq_findings(cx: Ctx) -> list[Finding]:
    usage = cx.replay.usage
    out: list[Finding] = []
    adj: dict[int, set[int]] = {}
    for src, dst in cx.replay.edges:
        adj.setdefault(src, set()).add(dst)
    for irq, (used_w, used_r), (en_w, en_r) in IRQ_KINDS:
        safe = {c for c, u in usage.items() if used_w in u or used_r in u}
        unsafe = {c for c, u in usage.items() if en_w in u or en_r in u}
        inconsistent = set()
        for c in sorted(safe):
            u = usage[c]
            # read-in-irq vs read-with-irqs-on is fine for recursive readers
            bad_used = used_w if used_w in u else used_r
            bad_en = en_w if en_w in u else (en_r if (en_r in u and used_w in u) else None)
            if bad_en is None:
                continue
            inconsistent.add(c)
            lc = cx.cls(c)
            s_irq = cx.site(u[bad_used], WitnessKind.taken_in(irq),
                            f"{lc.name} taken in {irq} context", lc.name, with_stack=False)
            s_on = cx.site(u[bad_en], WitnessKind.taken_enabled(irq),
                           f"{lc.name} taken with {irq}s enabled", lc.name, with_stack=False)
            up = irq.upper()
            msg = (f"inconsistent lock state: {lc.name} is taken in {irq} context "
                   f"({s_irq.frames[0].function}) and with {irq}s enabled "
                   f"({s_on.frames[0].function}); {{IN-{up}-W}} -> {{{up}-ON-W}} usage: "
                   f"an interrupt arriving while it is held there deadlocks")
            out.append(Finding(
                kind="irq-lock-inversion", driver=driver_of(
                    [*s_on.frames, *s_irq.frames], [lc.module]),
                locks=[lc.name], sites=[s_on, s_irq], message=msg,
                first_ts_ns=min(s_irq.ts_ns or 0, s_on.ts_ns or 0), count=1,
                key=("inconsistent", irq, lc.sig), details={"irq": irq, "form": "usage"}))
        # the dependency form: a safe class held while an unsafe class is taken
        for s in sorted(safe):
            prev: dict[int, int] = {s: s}
            q = deque([s])
            while q:
                v = q.popleft()
                for w in sorted(adj.get(v, ())):
                    if w in prev:
                        continue
                    prev[w] = v
                    q.append(w)
                    if w in unsafe and w != s and w not in inconsistent and s not in (
                            inconsistent):
                        path = [w]
                        while path[-1] != s:
                            path.append(prev[path[-1]])
                        path.reverse()
                        out.append(_safe_unsafe(cx, irq, path))
    return out


def _safe_unsafe(cx: Ctx, irq: str, path: list[int]) -> Finding:
    usage = cx.replay.usage
    s, u = path[0], path[-1]
    ls, lu = cx.cls(s), cx.cls(u)
    used = next(b for b in usage[s] if b.startswith("IN-"))
    enabled = next(b for b in usage[u] if "-ON-" in b)
    sites = [cx.site(usage[s][used], WitnessKind.taken_in(irq),
                     f"{ls.name} taken in {irq} context ({irq}-safe)", ls.name,
                     with_stack=False),
             cx.site(usage[u][enabled], WitnessKind.taken_enabled(irq),
                     f"{lu.name} taken with {irq}s enabled ({irq}-unsafe)", lu.name,
                     with_stack=False)]
    for a, b in zip(path, path[1:], strict=False):
        acc = cx.replay.edges[(a, b)][0]
        la, lb = cx.cls(a).name, cx.cls(b).name
        sites.append(cx.site(acc.row, WitnessKind.ACQUIRE, f"{lb} acquired while holding {la}",
                             lb, with_stack=False, holding=la))
    names = [cx.cls(c).name for c in path]
    up = irq.upper()
    msg = (f"{up}-safe -> {up}-unsafe lock order detected: {ls.name} (taken in {irq} context) "
           f"is held while {lu.name} (taken elsewhere with {irq}s enabled) is acquired"
           + (f" via {' -> '.join(names)}" if len(path) > 2 else ""))
    frames = [f for st in sites for f in st.frames]
    return Finding(kind="irq-lock-inversion", driver=driver_of(frames, [ls.module, lu.module]),
                   locks=names, sites=sites, message=msg,
                   first_ts_ns=min(st.ts_ns or 0 for st in sites), count=1,
                   key=("safe-unsafe", irq, ls.sig, lu.sig),
                   details={"irq": irq, "form": "dependency", "path": list(names)})


# -- recursion -------------------------------------------------------------------


def _annotated(cx: Ctx, ip: int, ts: int) -> bool:
    """``spin_lock_nested()`` and friends compile to the plain lock without lockdep:
    the annotation is read from the DWARF inline chain and the source lines of the
    acquisition (analysis.nesting), or, without a judge, the driver's own line."""
    if cx.nesting is not None:
        n = cx.nesting.at(frame_at(cx.symbols, ip, True, ts), ts)
        if n.known or cx.symbols.module_of(ip, ts) not in cx.own_source_modules:
            return n.annotated
    loc = cx.symbols.source_location(ip, ts)
    if loc is None:
        return False
    try:
        lines = Path(loc[0]).read_text(errors="replace").splitlines()
    except OSError:
        return False
    text = lines[loc[1] - 1] if 0 < loc[1] <= len(lines) else ""
    return "_nested(" in text or "_nest_lock(" in text


def recursion_findings(cx: Ctx) -> list[Finding]:
    groups: dict[tuple[str, ...], Finding] = {}
    ips = cx.events["ip"].to_numpy()
    times = cx.events["ts_ns"].to_numpy()
    # What one recursion came to depends only on its class and its two call sites (an
    # address within one load of its module): the verdict of the first is the verdict
    # of the many more a loop repeats (a count, or a counter of the health notes).
    verdicts: dict[tuple[int, ...], tuple[str, tuple[str, ...]]] = {}

    def repeat(verdict: tuple[str, tuple[str, ...]]) -> None:
        what, gkey = verdict
        if what == "unjudged":
            cx.unjudged_nesting += 1
        elif what == "honoured":
            cx.honoured_nesting += 1
        elif what == "group":
            groups[gkey].count += 1

    for rec in cx.replay.recursions:
        lc = cx.cls(rec.cls)
        if not rec.same_instance and lc.origin == "instance":
            continue
        ip, ts = int(ips[rec.row]), int(times[rec.row])
        hip, hts = int(ips[rec.held_row]), int(times[rec.held_row])
        vkey = (int(rec.same_instance), rec.cls, ip, cx.symbols.epoch(ip, ts), hip,
                cx.symbols.epoch(hip, hts))
        seen = verdicts.get(vkey)
        if seen is not None:
            repeat(seen)
            continue
        if not rec.same_instance and not cx.nesting_visible(ip, ts):
            unjudged = cx.symbols.module_of(ip, ts) not in ("vmlinux", None)
            verdicts[vkey] = ("unjudged" if unjudged else "none", ())
            repeat(verdicts[vkey])
            continue
        s2 = cx.site(rec.row, WitnessKind.ACQUIRE, f"{lc.name} acquired again", lc.name,
                     with_stack=False)
        s1 = cx.site(rec.held_row, WitnessKind.HELD, f"{lc.name} already held", lc.name,
                     with_stack=False)
        # an annotation on either side makes them two lockdep classes (class, subclass)
        if not rec.same_instance and any(_annotated(cx, a, t) for a, t in ((ip, ts), (hip, hts))):
            verdicts[vkey] = ("honoured", ())
            repeat(verdicts[vkey])
            continue
        kind = "recursive-locking" if rec.same_instance else "same-class-nesting"
        fn2 = cx.src(s2.frames[0], s2.ts_ns)
        fn1 = cx.src(s1.frames[0], s1.ts_ns)
        key = (lc.sig, fn2)
        verdicts[vkey] = ("group", (kind, *key))
        f = groups.get((kind, *key))
        if f is not None:
            f.count += 1
            continue
        if rec.same_instance:
            msg = (f"possible recursive locking: {lc.name} is acquired again in "
                   f"{fn2}() by the task that already holds it (taken in {fn1}())")
        else:
            msg = (f"two locks of class {lc.name} nested: taken in {fn1}() "
                   f"then again in {fn2}(); if intended, lockdep needs "
                   f"spin_lock_nested()/mutex_lock_nested() (not visible on a kernel "
                   f"without lockdep)")
        groups[(kind, *key)] = Finding(
            kind=kind, driver=driver_of([*s2.frames, *s1.frames], [lc.module]), locks=[lc.name],
            sites=[s2, s1], message=msg, first_ts_ns=s2.ts_ns or 0, count=1, key=key,
            details={"function": fn2})
    return list(groups.values())
