"""Property-based tests (hypothesis) of the lock-order rule and the held-lock replay.

Synthetic event frames (tracer.schema.conform) are fine here: the properties are
about the graph and the state machine, not about what a kernel emits.  Locks are
static: ``lock_<i>`` symbols in a made-up kernel symbol table, so each lock is
its own class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracedep.analysis.heldlocks import replay
from tracedep.analysis.pipeline import analyze
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.trace import Trace
from tracedep.common.run_manifest import RunManifest
from tracedep.kimage.elf_symbols import SymbolTable
from tracedep.tracer import schema

TEXT = 0xFFFF_FFFF_8100_0000
DATA = 0xFFFF_FFFF_8200_0000
NLOCKS = 8
NFUNCS = 16
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# (acquire event, release event, lock_type, lock_flags)
SPIN = ("tracedep/lk__raw_spin_lock", "tracedep/ul__raw_spin_unlock", "spinlock", "")
READ = ("tracedep/lk__raw_read_lock", "tracedep/ul__raw_read_unlock", "rwlock-r", "")
WRITE = ("tracedep/lk__raw_write_lock", "tracedep/ul__raw_write_unlock", "rwlock-w", "")
TRY = ("tracedep/lk__raw_spin_trylock", "tracedep/ul__raw_spin_unlock", "spinlock", "trylock")


def lock_addr(i: int) -> int:
    return DATA + 0x40 * i


def symbols() -> RunSymbols:
    entries = [(TEXT + 0x100 * j, "t", f"func_{j}") for j in range(NFUNCS + 1)]
    entries += [(lock_addr(i), "d", f"lock_{i}") for i in range(NLOCKS + 1)]
    table = SymbolTable.from_kallsyms(entries)
    return RunSymbols(table, table.bounds(), [])


@dataclass
class Builder:
    """Per-task event sequences, merged in a given interleaving."""

    tasks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    softirq: bool = False

    def _ev(self, pid: int, **kw: Any) -> None:
        seq = self.tasks.setdefault(pid, [])
        base = {"pid": pid, "cpu": pid % 2, "comm": f"task{pid}", "in_softirq": self.softirq,
                "preempt_depth": self.depth(pid) + (1 if self.softirq else 0), "lock_addr": 0,
                "value": 0, "ip": 0}
        seq.append({**base, **kw})

    def depth(self, pid: int) -> int:
        held: list[int] = []
        for e in self.tasks.get(pid, []):
            if e["kind"] == "lock_acquire" and e["lock_type"] in ("spinlock", "rwlock-r",
                                                                  "rwlock-w"):
                held.append(e["lock_addr"])
            elif e["kind"] == "lock_return" and e["value"] == 0:
                held.pop()
            elif e["kind"] == "lock_release" and e["lock_addr"] in held:
                held.remove(e["lock_addr"])
        return len(held)

    def acquire(self, pid: int, lock: int, how: tuple[str, str, str, str] = SPIN,
                fn: int = 0) -> None:
        self._ev(pid, kind="lock_acquire", event=how[0], lock_addr=lock_addr(lock),
                 lock_type=how[2], lock_flags=how[3], ip=TEXT + 0x100 * fn + 0x10)
        if how is TRY:  # the trylock's outcome: taken
            self._ev(pid, kind="lock_return", event="tracedep/lr__raw_spin_trylock", value=1,
                     lock_type="spinlock", lock_flags="trylock", ip=TEXT + 0x100 * fn + 0x10)

    def release(self, pid: int, lock: int, how: tuple[str, str, str, str] = SPIN,
                fn: int = 0) -> None:
        self._ev(pid, kind="lock_release", event=how[1], lock_addr=lock_addr(lock),
                 lock_type=how[2], lock_flags="", ip=TEXT + 0x100 * fn + 0x20)

    def nest(self, pid: int, locks: list[int], how: tuple[str, str, str, str] = SPIN,
             fn: int = 0) -> None:
        """Take ``locks`` in order, then release them in reverse."""
        for lk in locks:
            self.acquire(pid, lk, how, fn)
        for lk in reversed(locks):
            self.release(pid, lk, how, fn)

    def frame(self, order: list[int] | None = None) -> pd.DataFrame:
        """All events; ``order`` lists task pids, one per event, in merge order."""
        queues = {p: list(s) for p, s in self.tasks.items()}
        rows = []
        for p in order or []:
            if queues.get(p):
                rows.append(queues[p].pop(0))
        for p in sorted(queues):
            rows += queues[p]
        for i, r in enumerate(rows):
            r["ts_ns"] = 1_000_000 + 1000 * i
        return schema.conform(pd.DataFrame(rows))


def trace_of(ev: pd.DataFrame) -> Trace:
    return Trace(ev, [], RunManifest(call_insn_size=5), symbols(), Path("synthetic"), [])


def order_findings(ev: pd.DataFrame) -> list[Any]:
    return [f for f in analyze(trace_of(ev)).findings if f.kind == "lock-order-inversion"]


def all_findings(ev: pd.DataFrame) -> list[Any]:
    return analyze(trace_of(ev)).findings


def interleavings(b: Builder) -> st.SearchStrategy[list[int]]:
    pids = [p for p, s in b.tasks.items() for _ in s]
    return st.permutations(pids)


# --- cycle detection --------------------------------------------------------------------------


@st.composite
def cycle_case(draw: st.DrawFn) -> tuple[Builder, list[int], list[int]]:
    """A cycle over k distinct locks, one task per edge, plus acyclic noise elsewhere."""
    k = draw(st.integers(2, 5))
    locks = draw(st.permutations(list(range(NLOCKS))))
    cycle, rest = locks[:k], locks[k:]
    b = Builder()
    for i in range(k):
        b.nest(10 + i, [cycle[i], cycle[(i + 1) % k]], fn=i)
    # noise: nestings in one fixed order of the other locks (no cycle among them)
    for j in range(draw(st.integers(0, 3))):
        sub = sorted(draw(st.sets(st.sampled_from(rest), max_size=3)) if rest else [],
                     key=rest.index)
        b.nest(30 + j, sub, fn=8 + j)
    order = draw(st.permutations([p for p, s in b.tasks.items() for _ in s]))
    return b, cycle, order


@SETTINGS
@given(cycle_case())
def test_any_cycle_of_exclusive_locks_is_reported(case: tuple[Builder, list[int], list[int]]
                                                  ) -> None:
    b, cycle, order = case
    found = order_findings(b.frame(order))
    assert len(found) == 1, [f.message for f in found]
    assert sorted(found[0].locks) == sorted(f"lock_{i}" for i in cycle)
    assert found[0].driver == "vmlinux"


@st.composite
def dag_case(draw: st.DrawFn) -> tuple[Builder, list[int]]:
    """Tasks that each nest an increasing subsequence of one random total order."""
    rank = draw(st.permutations(list(range(NLOCKS))))
    b = Builder()
    for t in range(draw(st.integers(1, 6))):
        sub = draw(st.lists(st.sampled_from(rank), unique=True, max_size=5))
        sub.sort(key=rank.index)
        if draw(st.booleans()):
            b.nest(10 + t, sub, fn=t)
        else:  # release in any order: only acquisitions make dependencies
            for lk in sub:
                b.acquire(10 + t, lk, fn=t)
            for lk in draw(st.permutations(sub)):
                b.release(10 + t, lk, fn=t)
    return b, rank


@SETTINGS
@given(dag_case(), st.data())
def test_acyclic_orders_are_never_reported(case: tuple[Builder, list[int]],
                                           data: st.DataObject) -> None:
    b, _ = case
    order = data.draw(interleavings(b)) if b.tasks else []
    assert all_findings(b.frame(order)) == []


@SETTINGS
@given(st.integers(2, 5), st.permutations(list(range(NLOCKS))), st.data())
def test_read_read_cycles_in_softirq_are_not_reported(k: int, locks: list[int],
                                                      data: st.DataObject) -> None:
    """rwlock_t readers are recursive in interrupt context: a cycle made only of
    read->read edges there cannot deadlock (lockdep reports none)."""
    cycle = locks[:k]
    b = Builder(softirq=True)
    for i in range(k):
        b.nest(10 + i, [cycle[i], cycle[(i + 1) % k]], READ, fn=i)
    assert order_findings(b.frame(data.draw(interleavings(b)))) == []
    # the same cycle taken for write is a deadlock
    w = Builder(softirq=True)
    for i in range(k):
        w.nest(10 + i, [cycle[i], cycle[(i + 1) % k]], WRITE, fn=i)
    (f,) = order_findings(w.frame())
    assert sorted(f.locks) == sorted(f"lock_{i}" for i in cycle)


def test_read_read_cycle_in_process_context_is_reported() -> None:
    """Process-context readers of a queued rwlock wait behind a writer: not recursive."""
    b = Builder()
    b.nest(10, [0, 1], READ)
    b.nest(11, [1, 0], READ)
    (f,) = order_findings(b.frame())
    assert sorted(f.locks) == ["lock_0", "lock_1"]


@SETTINGS
@given(dag_case(), st.data())
def test_trylock_edges_never_create_a_finding(case: tuple[Builder, list[int]],
                                              data: st.DataObject) -> None:
    """A trylock never waits: taking any lock by trylock, under any locks held, adds no
    dependency (lockdep's rule), so an acyclic order stays clean."""
    b, _ = case
    t = Builder()
    for pid, seq in b.tasks.items():
        held: list[int] = []
        for e in seq:
            t.tasks.setdefault(pid, []).append(dict(e))
            if e["kind"] == "lock_acquire":
                held.append(int((e["lock_addr"] - DATA) // 0x40))
            elif e["kind"] == "lock_release":
                held.remove(int((e["lock_addr"] - DATA) // 0x40))
            free = [i for i in range(NLOCKS) if i not in held]
            take: bool = data.draw(st.booleans())
            if free and take:
                x = data.draw(st.sampled_from(free))
                t.acquire(pid, x, TRY, fn=15)
                t.release(pid, x, TRY, fn=15)
    order = data.draw(interleavings(t)) if t.tasks else []
    assert all_findings(t.frame(order)) == []


def test_trylock_closing_a_cycle_is_not_a_finding() -> None:
    """td_trylock_clean's shape: A then B, and B then trylock(A)."""
    b = Builder()
    b.nest(10, [0, 1])
    b.acquire(11, 1)
    b.acquire(11, 0, TRY)
    b.release(11, 0)
    b.release(11, 1)
    assert order_findings(b.frame()) == []
    # and with a plain lock in its place it is one
    c = Builder()
    c.nest(10, [0, 1])
    c.nest(11, [1, 0])
    assert len(order_findings(c.frame())) == 1


# --- the held-lock state machine --------------------------------------------------------------


def replay_of(ev: pd.DataFrame) -> Any:
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls = np.full(len(ev), -1, dtype=np.int32)
    cls[rows] = [(int(a) - DATA) // 0x40 for a in ev["lock_addr"].to_numpy()[rows]]
    return replay(ev, cls)


@st.composite
def well_nested(draw: st.DrawFn) -> Builder:
    """Random well-nested acquire/release programs of several tasks."""
    b = Builder()
    for t in range(draw(st.integers(1, 4))):
        held: list[int] = []
        for _ in range(draw(st.integers(0, 24))):
            free = [i for i in range(NLOCKS) if i not in held]
            if held and (not free or draw(st.booleans())):
                b.release(10 + t, held.pop())
            else:
                lk = draw(st.sampled_from(free))
                b.acquire(10 + t, lk, draw(st.sampled_from([SPIN, WRITE, READ])))
                held.append(lk)
        while held:
            b.release(10 + t, held.pop())
    return b


@SETTINGS
@given(well_nested(), st.data())
def test_well_nested_programs_leave_nothing_held(b: Builder, data: st.DataObject) -> None:
    ev = b.frame(data.draw(interleavings(b)) if b.tasks else [])
    rep = replay_of(ev)
    acq = rep.acquisitions
    assert len(acq) == int((ev["kind"] == "lock_acquire").sum())
    assert (acq["release_row"] >= 0).all() and (acq["ts_release"] >= acq["ts_acquire"]).all()
    assert rep.unmatched_releases == 0
    assert rep.recursions == []


@SETTINGS
@given(well_nested(), st.lists(st.integers(NLOCKS + 1, 200), max_size=6), st.data())
def test_release_of_an_unknown_lock_is_counted(b: Builder, strangers: list[int],
                                               data: st.DataObject) -> None:
    """Releases of locks taken before tracing started (never acquired in the trace)."""
    for i, s in enumerate(strangers):
        b.release(10 + i % 3, s)
    ev = b.frame(data.draw(interleavings(b)) if b.tasks else [])
    rep = replay_of(ev)
    assert rep.unmatched_releases == len(strangers)
    assert (rep.acquisitions["release_row"] >= 0).all()
