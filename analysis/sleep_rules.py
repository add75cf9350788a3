"""``sleep-in-atomic``: a may-sleep event while a spinning lock is held, or preemption,
IRQs or BH are off, or in hardirq/softirq context (analysis.rules has the shared context)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Finding, Frame, Site, WitnessKind
from tracedep.analysis.heldlocks import (
    SleepEvent,
)
from tracedep.analysis.rules import (
    ALLOC_FUNCS,
    CONTEXT_TEXT,
    REASON_ORDER,
    SLAB_INTERNALS,
    Ctx,
    driver_of,
    gfp_text,
    site_context,
)
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.tracer.ftrace_binary import MIGHT_SLEEP
from tracedep.tracer.probes import api_name

# a task's may-sleep calls this close in time are parts of one incident
NEAR_NS = 1_000_000


class _Labels:
    """A text column read a row at a time: its categories by code, not one boxed
    string per row of the trace (what ``to_numpy()`` makes, for millions of rows)."""

    def __init__(self, col: pd.Series) -> None:
        cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
        self.codes = cat.cat.codes.to_numpy()
        self.names = cat.cat.categories.to_numpy(dtype=object)

    def __getitem__(self, r: int) -> object:
        c = self.codes[r]
        return self.names[c] if c >= 0 else None


@dataclass
class _SleepEvents:
    """The event columns the sleep rule reads, and each task's may-sleep calls."""

    kinds: _Labels
    funcs: _Labels
    events: _Labels
    pids: np.ndarray
    ts: np.ndarray
    ips: np.ndarray
    values: np.ndarray
    stack_ids: np.ndarray
    gfps: np.ndarray
    # per task, the times and rows of its may-sleep events other than might_sleep():
    # a might_sleep() inside an API whose own event is also here is the same incident
    api_ts: dict[int, list[int]] = field(default_factory=dict)
    api_rows: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, cx: Ctx) -> _SleepEvents:
        e = cx.events
        v = cls(kinds=_Labels(e["kind"]), funcs=_Labels(e["func"]),
                events=_Labels(e["event"]), pids=e["pid"].to_numpy(),
                ts=e["ts_ns"].to_numpy(), ips=e["ip"].to_numpy(), values=e["value"].to_numpy(),
                stack_ids=e["stack_id"].to_numpy(), gfps=e["gfp"].to_numpy())
        for s in cx.replay.sleeps:
            if not v.is_might_sleep(s.row):
                v.api_ts.setdefault(int(v.pids[s.row]), []).append(int(v.ts[s.row]))
                v.api_rows.setdefault(int(v.pids[s.row]), []).append(s.row)
        return v

    def is_might_sleep(self, r: int) -> bool:
        return is_might_sleep(self.kinds[r], self.funcs[r])


def is_might_sleep(kind: object, func: object) -> bool:
    """Is an event of this kind and function a might_sleep() (not a catalog call)?"""
    return bool(kind == "sleep_call" and func == MIGHT_SLEEP)


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
    """One finding per culprit function, API, first reason and classes held.

    A driver that sleeps in atomic context in a loop does it millions of times from
    a few code paths: what one event comes to (skipped, or counted in which group)
    depends only on what :func:`verdict_key` gathers, so only the first of each is
    symbolized and judged; the rest are counted (a stream has folded them already:
    analysis.sleep_fold, ``SleepEvent.repeats``)."""
    ev = _SleepEvents.of(cx)
    acq_cls = cx.replay.acquisitions["cls"].to_numpy()
    groups: dict[tuple[str, ...], Finding] = {}
    verdicts: dict[tuple[object, ...], tuple[str, ...] | None] = {}
    for s in cx.replay.sleeps:
        around = s.around if s.folded else around_of(ev, s.row)
        vkey = _verdict_key(cx, ev, s, acq_cls, around)
        if vkey in verdicts:
            seen = verdicts[vkey]
            if seen is not None:
                groups[seen].count += s.repeats
            continue
        verdicts[vkey] = None
        frames = cx.stack_frames(s.row)
        call = cx.call_frame(s.row)
        api = _sleep_api(cx, ev, s, frames, call, around)
        if api is None:
            continue
        culprit = _culprit(frames, call)
        inc = _Incident(s, frames, call, api, culprit, cx.src(culprit, int(ev.ts[s.row])),
                        sorted({int(acq_cls[a]) for a in s.held}),
                        [x for x in REASON_ORDER if x in s.reasons])
        key = inc.key(cx)
        verdicts[vkey] = key
        if key in groups:
            groups[key].count += s.repeats
        else:
            groups[key] = _sleep_finding(cx, inc, key)
            groups[key].count = s.repeats
    return list(groups.values())


@dataclass(frozen=True)
class SleepRow:
    """What the verdict on a sleep reads of its own event row."""

    ts: int
    ip: int
    stack_id: int
    kind: object
    func: object
    event: object
    value: int
    gfp: int


def verdict_key(stacks: list[tuple[int, ...]], symbols: RunSymbols, row: SleepRow,
                text_row: int | None, around: object, reasons: list[str],
                held_classes: Iterable[int]) -> tuple[object, ...]:
    """Everything the verdict on a sleep event reads: its stack and call site (and
    which load of their modules: an address means one thing within one; ``text_row``:
    a text trace's row whose site is its own), what it called, what the task's other
    may-sleep calls around it say (``around``: :func:`around_of`), its reasons and the
    classes held.  The whole frame's rule and the stream's fold both key by it."""
    sid = row.stack_id
    stack = stacks[sid] if 0 <= sid < len(stacks) else ()
    site: object = (row.ip, symbols.epoch(row.ip, row.ts)) if text_row is None else text_row
    what = (row.kind, row.func, row.event, row.value, row.gfp if row.kind == "alloc" else 0)
    return (sid if stack else ("text", sid), tuple(symbols.epoch(a, row.ts) for a in stack),
            site, what, around, tuple(reasons), tuple(sorted(set(held_classes))))


def _verdict_key(cx: Ctx, ev: _SleepEvents, s: SleepEvent, acq_cls: np.ndarray,
                 around: object) -> tuple[object, ...]:
    r = s.row
    ip = int(ev.ips[r])
    row = SleepRow(int(ev.ts[r]), ip, int(ev.stack_ids[r]), ev.kinds[r], ev.funcs[r],
                   ev.events[r], int(ev.values[r]), int(ev.gfps[r]))
    text_row = r if not ip and r in cx.text_sites else None
    return verdict_key(cx.stacks, cx.symbols, row, text_row, around, s.reasons,
                       (int(acq_cls[a]) for a in s.held))


def around_of(ev: _SleepEvents, r: int) -> object:
    """What the task's other may-sleep calls around row ``r`` make of it: for
    might_sleep(), whether one is within 1 ms (:func:`_near_api`); for a catalog call,
    the functions called in the millisecond before and whether one of them came from
    the same call site (:func:`_before`); None for the rest."""
    if ev.is_might_sleep(r):
        return _near_api(ev, r)
    if ev.kinds[r] == "sleep_call":
        before = _before(ev, r)
        ip, func = int(ev.ips[r]), ev.funcs[r]
        return (frozenset(str(ev.funcs[q]) for q in before),
                bool(ip) and any(int(ev.ips[q]) == ip and ev.funcs[q] != func for q in before))
    return None


def _near_api(ev: _SleepEvents, r: int) -> bool:
    """Is another may-sleep event of this task within 1 ms of might_sleep() row ``r``?"""
    t = int(ev.ts[r])
    near = ev.api_ts.get(int(ev.pids[r]), [])
    i = bisect_left(near, t)  # np.searchsorted would make the list an array every call
    return any(abs(near[j] - t) < NEAR_NS for j in (i - 1, i) if 0 <= j < len(near))


def _before(ev: _SleepEvents, r: int) -> list[int]:
    """The task's catalog calls in the millisecond before row ``r`` (time order, as
    ``api_ts`` is: the replay's sleeps come in row order)."""
    t = int(ev.ts[r])
    pid = int(ev.pids[r])
    times, rows = ev.api_ts.get(pid, []), ev.api_rows.get(pid, [])
    lo, hi = bisect_right(times, t - NEAR_NS), bisect_left(times, t)
    return [q for q in rows[lo:hi] if ev.kinds[q] == "sleep_call"]


def _sleep_api(cx: Ctx, ev: _SleepEvents, s: SleepEvent, frames: list[Frame], call: Frame,
               around: object) -> str | None:
    """What may sleep, as the message names it; None when this event is not the
    incident (another event of the same call is)."""
    r = s.row
    kind = ev.kinds[r]
    if ev.is_might_sleep(r):
        return _might_sleep_api(bool(around), frames, call)
    if kind == "sleep_call":
        assert isinstance(around, tuple)
        return _catalog_api(ev, s, frames, around)
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


def _might_sleep_api(close: bool, frames: list[Frame], call: Frame) -> str | None:
    # might_alloc() inside an allocator: the allocation's own event (with its GFP
    # flags) is the incident, stack or no stack
    inside_api = any(api_name(f.function) in ALLOC_FUNCS for f in [call, *frames[1:4]])
    if close or inside_api:
        return None
    where = frames[1].function if len(frames) > 1 else call.function
    return f"might_sleep() in {where}()"


def _catalog_api(ev: _SleepEvents, s: SleepEvent, frames: list[Frame],
                 around: tuple[frozenset[str], bool]) -> str | None:
    r = s.row
    outer, same_site = around
    # one catalog function calling another (flush_work → __flush_work when the
    # compiler kept both out of line): the outer call is the incident
    if any(f.function in outer for f in frames[1:]):
        return None
    # ... or tail-calling it (flush_work: jmp __flush_work): no frame of the outer
    # one is left, but both were entered from the same call site
    if same_site:
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
    driver = driver_of([inc.culprit, *inc.frames], [st.frames[0].module for st in sites[1:]]
                     + [cx.cls(c).module for c in inc.held])
    ctx_words = ", ".join(CONTEXT_TEXT[x] for x in inc.reasons)
    if held_names:
        ctx_words += f" ({', '.join(held_names)})"
    msg = f"{inc.api} may sleep, called from {inc.culprit_fn}() {ctx_words}"
    if inc.sleep.preempt_extra > 0 and "preempt" in inc.reasons:
        msg += f"; preempt_count is {inc.sleep.preempt_extra} beyond the locks held"
    return Finding(kind="sleep-in-atomic", driver=driver, locks=held_names, sites=sites,
                   message=msg, first_ts_ns=ts, count=1, key=key,
                   details={"api": inc.api, "context": list(inc.reasons),
                            "function": inc.culprit_fn})


# -- lock order ------------------------------------------------------------------
