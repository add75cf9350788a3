"""The rules: turn a replayed trace into findings, with lockdep's semantics.

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

import numpy as np
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
    Replay,
    SleepEvent,
)
from tracedep.analysis.nesting import NestingJudge
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.witness import clean_stack, clean_text_stack, frame_at
from tracedep.tracer.ftrace_binary import MIGHT_SLEEP
from tracedep.tracer.probes import api_name

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
    (0xC00, "GFP_NOIO"), (0xA20, "GFP_ATOMIC"), (0x800, "GFP_NOWAIT"),
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
        if mod in self.own_source_modules or self.nesting is None:
            return True
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


def _driver(frames: list[Frame], fallback: list[str]) -> str:
    for f in frames:
        if f.module not in ("vmlinux", "?"):
            return f.module
    for m in fallback:
        if m not in ("vmlinux", "?"):
            return m
    return "vmlinux"


# -- sleep in atomic -------------------------------------------------------------


@dataclass
class _SleepEvents:
    """The event columns the sleep rule reads, and each task's may-sleep calls."""

    kinds: np.ndarray
    funcs: np.ndarray
    events: np.ndarray
    pids: np.ndarray
    ts: np.ndarray
    ips: np.ndarray
    values: np.ndarray
    # per task, the times and rows of its may-sleep events other than might_sleep():
    # a might_sleep() inside an API whose own event is also here is the same incident
    api_ts: dict[int, list[int]] = field(default_factory=dict)
    api_rows: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, cx: Ctx) -> _SleepEvents:
        e = cx.events
        v = cls(kinds=e["kind"].to_numpy(), funcs=e["func"].to_numpy(),
                events=e["event"].to_numpy(), pids=e["pid"].to_numpy(),
                ts=e["ts_ns"].to_numpy(), ips=e["ip"].to_numpy(), values=e["value"].to_numpy())
        for s in cx.replay.sleeps:
            if not v.is_might_sleep(s.row):
                v.api_ts.setdefault(int(v.pids[s.row]), []).append(int(v.ts[s.row]))
                v.api_rows.setdefault(int(v.pids[s.row]), []).append(s.row)
        return v

    def is_might_sleep(self, r: int) -> bool:
        return bool(self.kinds[r] == "sleep_call" and self.funcs[r] == MIGHT_SLEEP)


@dataclass
class _Incident:
    """One may-sleep event in atomic context, as its finding names it."""

    sleep: SleepEvent
    frames: list[Frame]
    call: Frame
    api: str  # what the driver called, as the message says it: "mutex_lock()"
    culprit: Frame
    culprit_fn: str
    held: list[int]  # the classes of the spinning locks held, sorted
    reasons: list[str]  # REASON_ORDER

    def key(self, cx: Ctx) -> tuple[str, ...]:
        return (self.culprit_fn, self.api.split("(")[0], self.reasons[0],
                *sorted(cx.cls(c).sig for c in self.held))


def sleep_findings(cx: Ctx) -> list[Finding]:
    """One finding per culprit function, API, first reason and classes held."""
    ev = _SleepEvents.of(cx)
    acq_cls = cx.replay.acquisitions["cls"]
    groups: dict[tuple[str, ...], Finding] = {}
    for s in cx.replay.sleeps:
        frames = cx.stack_frames(s.row)
        call = cx.call_frame(s.row)
        api = _sleep_api(cx, ev, s, frames, call)
        if api is None:
            continue
        culprit = _culprit(frames, call)
        inc = _Incident(s, frames, call, api, culprit, cx.src(culprit, int(ev.ts[s.row])),
                        sorted({int(acq_cls.iloc[a]) for a in s.held}),
                        [x for x in REASON_ORDER if x in s.reasons])
        key = inc.key(cx)
        if key in groups:
            groups[key].count += 1
        else:
            groups[key] = _sleep_finding(cx, inc, key)
    return list(groups.values())


def _sleep_api(cx: Ctx, ev: _SleepEvents, s: SleepEvent, frames: list[Frame], call: Frame
               ) -> str | None:
    """What may sleep, as the message names it; None when this event is not the
    incident (another event of the same call is)."""
    r = s.row
    kind = ev.kinds[r]
    if ev.is_might_sleep(r):
        return _might_sleep_api(ev, r, frames, call)
    if kind == "sleep_call":
        return _catalog_api(ev, s, frames)
    if kind == "alloc":
        if ev.events[r] == "kmem/mm_page_alloc" and any(
                api_name(f.function) in SLAB_INTERNALS for f in frames[1:]):
            # a slab refilling itself inside kmalloc(): that kmalloc's own event
            # (after it returns) is the incident; this one shows only sometimes
            return None
        return f"{ev.funcs[r]}({gfp_text(int(cx.events['gfp'].iloc[r]))})"
    if kind == "lock_acquire":
        fn = str(ev.events[r]).partition("_")[2]
        if fn.endswith("_nested") and not int(ev.values[r]):
            # with lockdep every mutex_lock() is mutex_lock_nested(lock, 0): name
            # what the driver called, as on a kernel without lockdep
            fn = fn[: -len("_nested")]
        return f"{fn}()"
    return "schedule() (voluntary context switch)"


def _might_sleep_api(ev: _SleepEvents, r: int, frames: list[Frame], call: Frame) -> str | None:
    t = int(ev.ts[r])
    near = ev.api_ts.get(int(ev.pids[r]), [])
    i = int(np.searchsorted(near, ev.ts[r]))
    close = any(abs(near[j] - t) < 1_000_000 for j in (i - 1, i) if 0 <= j < len(near))
    # might_alloc() inside an allocator: the allocation's own event (with its GFP
    # flags) is the incident, stack or no stack
    inside_api = any(api_name(f.function) in ALLOC_FUNCS for f in [call, *frames[1:4]])
    if close or inside_api:
        return None
    where = frames[1].function if len(frames) > 1 else call.function
    return f"might_sleep() in {where}()"


def _catalog_api(ev: _SleepEvents, s: SleepEvent, frames: list[Frame]) -> str | None:
    r = s.row
    t = int(ev.ts[r])
    # one catalog function calling another (flush_work → __flush_work when the
    # compiler kept both out of line): the outer call is the incident
    before = [q for q in ev.api_rows.get(int(ev.pids[r]), [])
              if 0 < t - int(ev.ts[q]) < 1_000_000 and ev.kinds[q] == "sleep_call"]
    outer = {str(ev.funcs[q]) for q in before}
    if any(f.function in outer for f in frames[1:]):
        return None
    # ... or tail-calling it (flush_work: jmp __flush_work): no frame of the outer
    # one is left, but both were entered from the same call site
    if int(ev.ips[r]) and any(int(ev.ips[q]) == int(ev.ips[r]) and ev.funcs[q] != ev.funcs[r]
                              for q in before):
        return None
    if ev.funcs[r] == "schedule" and s.reasons == ["irqs-off"]:
        # schedule() itself may be entered with IRQs masked (arm64's do_notify_resume
        # does): only preempt_count makes it atomic, as in the kernel's schedule_debug()
        return None
    return f"{api_name(str(ev.funcs[r]))}()"


def _culprit(frames: list[Frame], call: Frame) -> Frame:
    """The innermost frame of a module, else the call site."""
    mine = next((f for f in frames if f.module not in ("vmlinux", "?")), None)
    if mine is not None:
        return mine
    if call.module != "?":
        return call
    return frames[1] if len(frames) > 1 else call


def _sleep_finding(cx: Ctx, inc: _Incident, key: tuple[str, ...]) -> Finding:
    e = cx.events
    acq = cx.replay.acquisitions
    r = inc.sleep.row
    ts = int(e["ts_ns"].iloc[r])
    # no stack: the call site is the witness
    sites = [Site("sleep", tuple(inc.frames) or (inc.call,), None, ts, int(e["pid"].iloc[r]),
                  str(e["comm"].iat[r]), site_context(e, r), WitnessKind.SLEEP)]
    for a in inc.sleep.all_held:
        name = cx.cls(int(acq["cls"].iloc[a])).name
        sites.append(cx.site(int(acq["row"].iloc[a]), WitnessKind.HELD, f"held {name}", name,
                             with_stack=False))
    held_names = [cx.cls(c).name for c in inc.held]
    driver = _driver([inc.culprit, *inc.frames], [st.frames[0].module for st in sites[1:]]
                     + [cx.cls(c).module for c in inc.held])
    ctx_words = ", ".join(CONTEXT_TEXT[x] for x in inc.reasons)
    if held_names:
        ctx_words += f" ({', '.join(held_names)})"
    msg = f"{inc.api} may sleep, called from {inc.culprit_fn}() {ctx_words}"
    if inc.sleep.preempt_extra > 0 and "preempt" in inc.reasons:
        msg += f"; preempt_count is {inc.sleep.preempt_extra} beyond the locks held"
    return Finding(kind="sleep-in-atomic", driver=driver, locks=held_names, sites=sites,
                   message=msg, first_ts_ns=ts, count=1, key=key,
                   details={"api": inc.api, "context": inc.reasons,
                            "function": inc.culprit_fn})


# -- lock order ------------------------------------------------------------------


def _sccs(nodes: list[int], adj: dict[int, list[int]]) -> list[list[int]]:
    """Tarjan, iteratively (kernel graphs are deep)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, pi = work.pop()
            if pi == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            succ = adj.get(v, [])
            for j in range(pi, len(succ)):
                w = succ[j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
    return out


def order_findings(cx: Ctx, max_cycles: int = 500) -> list[Finding]:
    edges = cx.replay.edges
    # expanded node = class*2 + (1 if it was acquired as a recursive reader)
    adj: dict[int, list[int]] = {}
    label: dict[tuple[int, int], tuple[int, int, int]] = {}  # (xu, xv) → (u, v, variant)
    for (u, v), accs in edges.items():
        for vi, acc in enumerate(accs):
            for arrived_rr in (0, 1):
                if arrived_rr and acc.before_shared:
                    continue  # -(*R)-> then -(S*)->: not a deadlock
                xu, xv = u * 2 + arrived_rr, v * 2 + int(acc.after_recursive_read)
                adj.setdefault(xu, []).append(xv)
                label.setdefault((xu, xv), (u, v, vi))
    nodes = sorted(adj)
    cycles: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
    for comp in _sccs(nodes, adj):
        if len(comp) < 2:
            continue
        members = set(comp)
        for xu in comp:
            for xv in adj.get(xu, []):
                if xv not in members:
                    continue
                path = _bfs(adj, xv, xu, members)
                if path is None:
                    continue
                xcycle = [xu, *path]  # xu → xv … → xu
                cls_seq = tuple(x // 2 for x in xcycle[:-1])
                if len(set(cls_seq)) != len(cls_seq):
                    continue  # not elementary at class level
                canon = _canonical(cls_seq, cx)
                if canon in cycles:
                    continue
                cycles[canon] = [label[(a, b)] for a, b in zip(xcycle, xcycle[1:], strict=False)]
                if len(cycles) >= max_cycles:
                    break
    out = []
    for hub, canons in group_cycles(list(cycles), cx):
        if len(canons) == 1:
            out.append(_cycle_finding(cx, cycles[canons[0]], canons[0]))
        else:
            out.append(_grouped_finding(cx, hub, [(c, cycles[c]) for c in canons]))
    return out


def group_cycles(canons: list[tuple[int, ...]], cx: Ctx
                 ) -> list[tuple[int, list[tuple[int, ...]]]]:
    """One root cause, one finding: cycles grouped by the class they pass through.

    The rule (greedy set cover, deterministic): the class that the most remaining
    cycles pass through (ties: the smallest class signature) takes all of them as
    one group; repeat with the rest.  A class that many cycles share is the one to
    fix (an ordering around it, or a class that merges locks lockdep would key
    apart: every inode's ``i_rwsem`` as one heap class made 18 cycles); lockdep
    itself reports only the first cycle each new dependency closes.  A group of
    one cycle is the plain cycle, with the cycle's own signature.
    """
    def sigs(c: tuple[int, ...]) -> list[str]:
        return [cx.cls(x).sig for x in c]

    left = sorted(canons, key=sigs)
    out: list[tuple[int, list[tuple[int, ...]]]] = []
    while left:
        count: dict[int, int] = {}
        for c in left:
            for x in set(c):
                count[x] = count.get(x, 0) + 1
        hub = min(count, key=lambda x: (-count[x], cx.cls(x).sig, x))
        out.append((hub, [c for c in left if hub in c]))
        left = [c for c in left if hub not in c]
    return out


def _bfs(adj: dict[int, list[int]], src: int, dst: int, members: set[int]) -> list[int] | None:
    prev: dict[int, int] = {src: src}
    q = deque([src])
    while q:
        v = q.popleft()
        if v == dst:
            path = [v]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return path[::-1]
        for w in adj.get(v, []):
            if w in members and w not in prev:
                prev[w] = v
                q.append(w)
    return None


def _canonical(seq: tuple[int, ...], cx: Ctx) -> tuple[int, ...]:
    sigs = [cx.cls(c).sig for c in seq]
    k = min(range(len(seq)), key=lambda i: sigs[i:] + sigs[:i])
    return seq[k:] + seq[:k]


def _grouped_finding(cx: Ctx, hub: int,
                     group: list[tuple[tuple[int, ...], list[tuple[int, int, int]]]]
                     ) -> Finding:
    """Cycles that share the class ``hub``: one finding listing each path, keyed by
    ``hub`` alone so that the cycles a later run adds or loses keep its signature."""
    parts = [_cycle_finding(cx, labs, canon) for canon, labs in group]
    hub_name = cx.cls(hub).name
    sites: list[Site] = []
    seen: set[tuple[str, int | None, str | None]] = set()
    for f in parts:  # each dependency's witnesses once, in the paths' order
        for st in f.sites:
            k = (st.role, st.ts_ns, st.lock)
            if k not in seen:
                seen.add(k)
                sites.append(st)
    locks = list(dict.fromkeys([hub_name, *(x for f in parts for x in f.locks)]))
    paths = [f.details["cycle"] for f in parts]
    chains = [" -> ".join([*p, p[0]]) for p in paths]
    shown = "; ".join(chains[:3]) + (f"; … (+{len(chains) - 3} more)" if len(chains) > 3
                                     else "")
    msg = (f"possible circular locking dependency: {len(paths)} cycles, all through "
           f"{hub_name}: {shown}")
    frames = [fr for st in sites for fr in st.frames]
    mods = [cx.cls(hub).module, *(m for canon, _ in group for m in (cx.cls(c).module
                                                                     for c in canon))]
    edges = list(dict.fromkeys(tuple(e) for f in parts for e in f.details["edges"]))
    return Finding(kind="lock-order-inversion", driver=_driver(frames, mods), locks=locks,
                   sites=sites, message=msg, first_ts_ns=min(f.first_ts_ns for f in parts),
                   count=max(f.count for f in parts), key=("through", cx.cls(hub).sig),
                   details={"through": hub_name, "cycle": paths[0], "paths": paths,
                            "edges": [list(e) for e in edges],
                            "cycle_signatures": [f.signature for f in parts]})


def _cycle_finding(cx: Ctx, labs: list[tuple[int, int, int]], canon: tuple[int, ...]
                   ) -> Finding:
    edges = cx.replay.edges
    # witnesses in the order the message names the cycle, whichever edge was found
    # first: two runs (two architectures) then show the same page
    k = next((i for i, lab in enumerate(labs) if lab[0] == canon[0]), 0)
    labs = labs[k:] + labs[:k]
    sites: list[Site] = []
    first_ts = None
    frames_all: list[Frame] = []
    for u, v, vi in labs:
        acc = edges[(u, v)][vi]
        a, b = cx.cls(u).name, cx.cls(v).name
        s_b = cx.site(acc.row, WitnessKind.ACQUIRE, f"{b} acquired while holding {a}", b,
                      with_stack=False, holding=a)
        s_a = cx.site(acc.held_row, WitnessKind.HELD, f"{a} acquired earlier", a,
                      with_stack=False)
        sites += [s_b, s_a]
        frames_all += list(s_b.frames) + list(s_a.frames)
        t = s_b.ts_ns or 0
        first_ts = t if first_ts is None else min(first_ts, t)
    names = [cx.cls(c).name for c in canon]
    driver = _driver(frames_all, [cx.cls(c).module for c in canon])
    chain = " -> ".join(names + [names[0]])
    count = min(edges[(u, v)][vi].count for u, v, vi in labs)
    n = len(canon)
    what = "AB-BA" if n == 2 else f"{n}-lock cycle"
    instance = [cx.cls(c).name for c in canon if cx.cls(c).origin == "instance"]
    msg = f"possible circular locking dependency ({what}): {chain}"
    if instance:
        msg += ("; " + ", ".join(instance) + " identified by instance only (no allocation "
                "or symbol known)")
    return Finding(kind="lock-order-inversion", driver=driver, locks=names, sites=sites,
                   message=msg, first_ts_ns=first_ts or 0, count=count,
                   key=tuple(cx.cls(c).sig for c in canon),
                   details={"cycle": names, "edges": [[cx.cls(u).name, cx.cls(v).name]
                                                      for u, v, _ in labs]})


# -- IRQ safety ------------------------------------------------------------------

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
                kind="irq-lock-inversion", driver=_driver(
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
    return Finding(kind="irq-lock-inversion", driver=_driver(frames, [ls.module, lu.module]),
                   locks=names, sites=sites, message=msg,
                   first_ts_ns=min(st.ts_ns or 0 for st in sites), count=1,
                   key=("safe-unsafe", irq, ls.sig, lu.sig),
                   details={"irq": irq, "form": "dependency", "path": names})


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
    for rec in cx.replay.recursions:
        lc = cx.cls(rec.cls)
        if not rec.same_instance and lc.origin == "instance":
            continue
        ip, ts = int(cx.events["ip"].iloc[rec.row]), int(cx.events["ts_ns"].iloc[rec.row])
        if not rec.same_instance and not cx.nesting_visible(ip, ts):
            if cx.symbols.module_of(ip, ts) not in ("vmlinux", None):
                cx.unjudged_nesting += 1
            continue
        s2 = cx.site(rec.row, WitnessKind.ACQUIRE, f"{lc.name} acquired again", lc.name,
                     with_stack=False)
        s1 = cx.site(rec.held_row, WitnessKind.HELD, f"{lc.name} already held", lc.name,
                     with_stack=False)
        # an annotation on either side makes them two lockdep classes (class, subclass)
        if not rec.same_instance and any(
                _annotated(cx, int(cx.events["ip"].iloc[row]), int(cx.events["ts_ns"].iloc[row]))
                for row in (rec.row, rec.held_row)):
            cx.honoured_nesting += 1
            continue
        kind = "recursive-locking" if rec.same_instance else "same-class-nesting"
        fn2 = cx.src(s2.frames[0], s2.ts_ns)
        fn1 = cx.src(s1.frames[0], s1.ts_ns)
        key = (lc.sig, fn2)
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
            kind=kind, driver=_driver([*s2.frames, *s1.frames], [lc.module]), locks=[lc.name],
            sites=[s2, s1], message=msg, first_ts_ns=s2.ts_ns or 0, count=1, key=key,
            details={"function": fn2})
    return list(groups.values())
