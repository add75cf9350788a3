"""``sleep-in-atomic``: a may-sleep event while a spinning lock is held, or preemption,
IRQs or BH are off, or in hardirq/softirq context (analysis.rules has the shared context)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
from tracedep.tracer.ftrace_binary import MIGHT_SLEEP
from tracedep.tracer.probes import api_name


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
