"""analysis.class_stream: lock classes fed a window at a time are the whole trace's.

The reference is ``tests/classes_reference.py``: analysis.classes.assign as it was
before the stream, reading the whole frame at once (a verbatim copy).  For every lock
row the stream must give the reference's class key and name, and the same table
(every field, in the same order):

* on every recorded trace (the rules fixtures of both kernels, the classes sample, the
  tiny, classes and lockdep run directories), fed whole (``classes.assign``) and in
  windows of 1000, 5 and 1 rows (1: the smaller traces), through both passes: the
  first pass's ids resolved with its plan, and the second pass's final ids;
* on traces built by hand for the corners: an address reused by another allocation
  site, an initializer ended by its object's free, an inode re-keyed by its file
  system type, a freed allocation shadowing an older live one, lockdep's names (a row
  before its address's first name, one name at two addresses), spinning and sleeping
  rows of one class, and ties of time stamps between allocations, frees and locks;
  fed in every window size from 1 row to the whole, and again forgetting what can no
  longer matter after every window.

The state the engine keeps does not grow with the events: a trace four times longer
of the same objects, allocated and freed over and over, leaves the same state; and
forgetting what can no longer matter after every window changes no class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import classes_reference as ref
import numpy as np
import pandas as pd
import pytest
from recorded_fixture import load_fixture

from tracedep.analysis import classes
from tracedep.analysis.class_stream import ClassEngine, ClassPlan
from tracedep.analysis.heap_state import HeapState
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.trace import load_run
from tracedep.kimage.elf_symbols import SymbolTable
from tracedep.tracer import schema
from tracedep.tracer.decode_stream import Window
from tracedep.tracer.lock_init import INODE_DIR_KEY_NAME, INODE_KEY_NAME, S_IFDIR
from tracedep.tracer.window_cuts import whole_timestamps

DATA = Path(__file__).parents[1] / "data" / "traces"
FIXTURES = ([DATA / "classes" / "events"]
            + sorted(p.parent for p in DATA.glob("rules/*/manifest.json"))
            + sorted(p.parent for p in DATA.glob("lockdep/rules/*/manifest.json")))
RUNS = [DATA / "tiny", DATA / "classes" / "raw", DATA / "lockdep" / "raw"]
ONE_ROW = {DATA / "classes" / "events", DATA / "lockdep" / "rules" / "td_abba_bug",
           DATA / "rules" / "td_heap_class_bug", DATA / "rules" / "td_waitdep_bug"}


def _cut(ts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Windows of about ``size`` rows that split no time stamp."""
    out = []
    lo = 0
    while lo < len(ts):
        hi = min(lo + size, len(ts))
        if hi < len(ts):
            at = int(np.searchsorted(ts, ts[hi], side="left"))
            hi = at if at > lo else int(np.searchsorted(ts, ts[lo], side="right"))
        out.append((lo, hi))
        lo = hi
    return out


def _windows(ev: pd.DataFrame, size: int) -> list[Window]:
    return [Window(ev.iloc[lo:hi], lo) for lo, hi in _cut(ev["ts_ns"].to_numpy(), size)]


def _feed(eng: ClassEngine, wins: list[Window], sel: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    for w in wins:
        lo, hi = w.row0, w.row0 + len(w.events)
        out[lo:hi] = eng.feed(w.events, lo, np.nonzero(sel[lo:hi])[0])
    return out


def _two_passes(ev: pd.DataFrame, symbols: RunSymbols, rows: np.ndarray,
                wins: list[Window]) -> tuple[np.ndarray, np.ndarray, ClassPlan]:
    """(first pass's ids resolved, second pass's ids) of ``rows``, and the plan."""
    sel = np.zeros(len(ev), dtype=bool)
    sel[rows] = True
    first = ClassEngine(symbols)
    prov = _feed(first, wins, sel, len(ev))
    plan = first.finish()
    resolved = plan.resolve(prov[rows], ev["lock_addr"].to_numpy()[rows])
    final = _feed(ClassEngine(symbols, plan=plan), wins, sel, len(ev))[rows]
    return resolved, final, plan


def _same(want: tuple[np.ndarray, list[Any]], got: tuple[np.ndarray, list[Any]],
          what: str) -> None:
    (wi, wt), (gi, gt) = want, got
    assert [(wt[i].key, wt[i].name) for i in wi] == [(gt[i].key, gt[i].name) for i in gi], what
    assert [vars(c) for c in wt] == [vars(c) for c in gt], what
    assert np.array_equal(wi, gi), what


def _check(ev: pd.DataFrame, symbols: RunSymbols, sizes: list[int],
           rows: np.ndarray | None = None) -> tuple[np.ndarray, list[Any]]:
    """The stream against the reference, whole and in windows; the reference's answer."""
    if rows is None:
        rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    want = ref.assign(ev, symbols, rows)
    _same(want, classes.assign(ev, symbols, rows), "whole frame")
    for size in sizes:
        resolved, final, plan = _two_passes(ev, symbols, rows, _windows(ev, size))
        _same(want, (resolved, plan.table), f"first pass, windows of {size}")
        _same(want, (final, plan.table), f"second pass, windows of {size}")
    return want


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: str(p.relative_to(DATA)))
def test_recorded_fixtures(fixture: Path) -> None:
    t = load_fixture(fixture)
    _check(t.events, t.symbols, [1000, 5] + ([1] if fixture in ONE_ROW else []))


@pytest.mark.parametrize("run", RUNS, ids=lambda p: str(p.relative_to(DATA)))
def test_recorded_run_directories(run: Path) -> None:
    t = load_run(run)
    _check(t.events, t.symbols, [1000, 5, 1])


@pytest.mark.parametrize("trace", FIXTURES[:1] + RUNS + FIXTURES[1::6],
                         ids=lambda p: str(p.relative_to(DATA)))
def test_forgetting_after_every_window(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heap records nothing refers to any more are dropped after every window
    (a long trace drops them now and then): the classes stay the same."""
    monkeypatch.setattr(HeapState, "due", lambda self: True)
    t = load_run(trace) if trace in RUNS else load_fixture(trace)
    _check(t.events, t.symbols, [7, 100])


def test_passes_cut_alike_or_not() -> None:
    """The plan of a first pass fed in windows of one size serves a second pass fed in
    windows of another: the bases are found by class key and instance pair."""
    t = load_fixture(DATA / "classes" / "events")
    ev = t.events
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    sel = np.zeros(len(ev), dtype=bool)
    sel[rows] = True
    first = ClassEngine(t.symbols)
    _feed(first, _windows(ev, 1000), sel, len(ev))
    plan = first.finish()
    want = ref.assign(ev, t.symbols, rows)
    for size in (3, len(ev)):
        final = _feed(ClassEngine(t.symbols, plan=plan), _windows(ev, size), sel, len(ev))
        _same(want, (final[rows], plan.table), f"second pass in windows of {size}")


def test_the_recorded_traces_exist() -> None:
    assert len(FIXTURES) >= 77 and all(p.is_dir() for p in RUNS)


def test_wait_objects_are_classed_as_locks_are() -> None:
    """analysis.waits classes the work items, timers and completions of its rows."""
    t = load_fixture(DATA / "rules" / "td_waitdep_bug")
    ev = t.events
    lt = ev["lock_type"].astype(str).to_numpy()
    rows = np.nonzero(np.isin(lt, ("work", "timer", "completion"))
                      & (ev["lock_addr"].to_numpy() != 0)
                      & (ev["kind"].astype(str).to_numpy() != "work_queued"))[0]
    assert len(rows)
    _check(ev, t.symbols, [5, 1], rows)


def test_whole_timestamps_recuts_windows() -> None:
    """Windows that split a time stamp come out whole, row for row."""
    t = load_run(RUNS[0])
    ev = t.events
    ts = ev["ts_ns"].to_numpy()
    assert (ts[1:] == ts[:-1]).any(), "no tie in the recording"
    wins = [Window(ev.iloc[i:i + 3].reset_index(drop=True), i) for i in range(0, len(ev), 3)]
    got = list(whole_timestamps(wins))
    assert all(w.events["ts_ns"].iloc[-1] < g.events["ts_ns"].iloc[0]
               for w, g in zip(got, got[1:], strict=False))
    assert all(isinstance(w.events["kind"].dtype, pd.CategoricalDtype) for w in got)
    whole = pd.concat([w.events for w in got], ignore_index=True)
    assert len(whole) == len(ev) and (whole["ts_ns"].to_numpy() == ts).all()
    for w in got:
        assert (w.events["ts_ns"].to_numpy() == ts[w.row0:w.row0 + len(w.events)]).all()
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    resolved, final, plan = _two_passes(ev, t.symbols, rows, got)
    _same(ref.assign(ev, t.symbols, rows), (final, plan.table), "whole_timestamps")


def test_windows_must_not_split_a_time_stamp() -> None:
    t = load_run(RUNS[0])
    ev = t.events
    ts = ev["ts_ns"].to_numpy()
    i = int(np.nonzero(ts[1:] == ts[:-1])[0][0]) + 1
    eng = ClassEngine(t.symbols)
    eng.feed(ev.iloc[:i], 0)
    with pytest.raises(ValueError, match="time stamp"):
        eng.feed(ev.iloc[i:], i)


# -- traces built by hand --------------------------------------------------------

TEXT = 0xFFFFFFFF81000000
DATA_SEG = 0xFFFFFFFF82000000
HEAP = 0xFFFF888000100000
FUNCS = ("make_foo", "make_bar", "init_foo", "take", "take_other", "inode_init_always_gfp",
         "unlock_new_inode", "kmalloc_array", "make_baz")


def _symbols() -> RunSymbols:
    entries = [(TEXT + 0x100 * j, "t", f) for j, f in enumerate(FUNCS)]
    entries += [(TEXT + 0x100 * len(FUNCS), "t", "_etext"),
                (DATA_SEG, "d", "static_lock"), (DATA_SEG + 0x40, "d", "ext4_fs_type"),
                (DATA_SEG + 0x100, "d", "_edata")]
    table = SymbolTable.from_kallsyms(entries)
    return RunSymbols(table, table.bounds(), [])


def _at(f: str) -> int:
    return TEXT + 0x100 * FUNCS.index(f) + 0x10


ROW: dict[str, Any] = {"ts_ns": 0, "pid": 7, "cpu": 0, "kind": "", "event": "",
                       "lock_addr": 0, "lock_type": "", "ip": 0, "ptr": 0, "bytes": 0,
                       "func": "", "lock_name": "", "key_addr": 0, "value": 0}
U64 = ("lock_addr", "ip", "ptr", "key_addr")


class Trace:
    """Rows in time order: ``t`` advances by one unless a row says otherwise (a
    lock's release has its acquisition's time stamp)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.t = 1000

    def _add(self, dt: int, **kw: Any) -> None:
        self.t += dt
        self.rows.append({**ROW, "ts_ns": self.t, **kw})

    def alloc(self, ptr: int, size: int, site: str, dt: int = 1) -> None:
        self._add(dt, kind="alloc", event="kmem/kmalloc", ptr=ptr, bytes=size, ip=_at(site))

    def free(self, ptr: int, dt: int = 1) -> None:
        self._add(dt, kind="free", event="kmem/kfree", ptr=ptr)

    def init(self, addr: int, func: str, site: str, name: str, dt: int = 1, **kw: Any) -> None:
        self._add(dt, kind="lock_init", event=f"tracedep/li_{func}", lock_addr=addr, func=func,
                  ip=_at(site), lock_name=name, **kw)

    def lock(self, addr: int, ltype: str = "mutex", site: str = "take", name: str = "",
             dt: int = 1) -> None:
        self._add(dt, kind="lock_acquire", event="tracedep/lk", lock_addr=addr,
                  lock_type=ltype, ip=_at(site), lock_name=name)
        self._add(0, kind="lock_release", event="tracedep/ul", lock_addr=addr,
                  lock_type=ltype, ip=_at(site))

    def frame(self) -> pd.DataFrame:
        cols = {c: [r[c] for r in self.rows] for c in ROW}
        return schema.conform(pd.DataFrame({c: np.array(v, dtype=np.uint64) if c in U64 else v
                                            for c, v in cols.items()}))


def _by_hand(build: Callable[[Trace], None]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The trace ``build`` makes, checked in every window size; each lock row's class
    name and origin."""
    tr = Trace()
    build(tr)
    ev = tr.frame()
    sizes = sorted({1, 2, 3, 5, 7, len(ev)})
    ids, table = _check(ev, _symbols(), sizes)
    with pytest.MonkeyPatch.context() as mp:  # and forgetting after every window
        mp.setattr(HeapState, "due", lambda self: True)
        _check(ev, _symbols(), sizes[:4])
    return ev, [table[i].name for i in ids], [table[i].origin for i in ids]


def test_an_address_reused_by_another_allocation_site() -> None:
    def build(t: Trace) -> None:
        t.alloc(HEAP, 64, "make_foo")
        t.lock(HEAP + 8)
        t.free(HEAP)
        t.alloc(HEAP, 64, "make_bar")
        t.lock(HEAP + 8)
        t.lock(HEAP + 8, "spinlock")

    _, names, origins = _by_hand(build)
    assert origins == ["heap"] * 3
    assert names[0].startswith("make_foo") and names[1].startswith("make_bar"), names


def test_an_initializer_ends_with_its_objects_free() -> None:
    def build(t: Trace) -> None:
        t.alloc(HEAP, 64, "make_foo")
        t.init(HEAP + 8, "__mutex_init", "init_foo", "&foo->lock")
        t.lock(HEAP + 8)
        t.lock(HEAP + 8, "spinlock")  # not a type __mutex_init sets up: the heap's
        t.free(HEAP)
        t.lock(HEAP + 8)  # freed: no class of its own, an instance
        t.alloc(HEAP, 64, "make_bar")
        t.lock(HEAP + 8)  # the new object's
        t.init(HEAP + 0x1000, "__mutex_init", "init_foo", "&foo->lock")  # no object
        t.lock(HEAP + 0x1000)
        t.free(HEAP + 0x1000)  # frees nothing the trace allocated: the class stays
        t.lock(HEAP + 0x1000)
        t.alloc(HEAP + 0x2000, 64, "make_foo")
        t.init(HEAP + 0x2008, "__mutex_init", "init_foo", "&foo->lock")
        t.alloc(HEAP + 0x1F00, 0x200, "make_bar")  # over the first, its free not seen yet
        t.lock(HEAP + 0x2008)
        t.free(HEAP + 0x2000)  # the hidden object's free still ends its initializer
        t.lock(HEAP + 0x2008)

    _, names, origins = _by_hand(build)
    assert origins == ["init", "heap", "instance", "heap", "init", "init", "init", "heap"], origins
    assert names[0] == names[4] == names[5] and names[3].startswith("make_bar"), names
    assert names[7].startswith("make_bar"), names


def test_an_inode_is_rekeyed_by_its_file_system_type() -> None:
    fstype = DATA_SEG + 0x40

    def build(t: Trace) -> None:
        for ino, mode in ((HEAP, 0o100644), (HEAP + 0x400, S_IFDIR | 0o755)):
            t.alloc(ino, 0x300, "make_foo")
            t.init(ino + 0x80, "inode_init_always_gfp", "inode_init_always_gfp", "ext4",
                   key_addr=fstype)
            t.init(ino + 0x80, "__init_rwsem", "inode_init_always_gfp", "&inode->i_rwsem")
            t.init(ino + 0x80, "unlock_new_inode", "unlock_new_inode", "ext4",
                   key_addr=fstype, value=mode)
            t.lock(ino + 0x80, "rwsem-w")
        t.init(HEAP + 0x80, "__init_rwsem", "init_foo", "&other->sem", pid=8)
        t.lock(HEAP + 0x80, "rwsem-r")

    _, names, origins = _by_hand(build)
    assert names[0] == f"{INODE_KEY_NAME} [ext4]", names
    assert names[1] == f"{INODE_DIR_KEY_NAME} [ext4]", names
    assert names[2] == "&other->sem" and origins == ["init"] * 3


def test_a_freed_allocation_hides_an_older_live_one() -> None:
    def build(t: Trace) -> None:
        t.alloc(HEAP, 256, "make_foo")
        t.lock(HEAP + 72)
        t.alloc(HEAP + 64, 64, "make_bar")  # inside the first: its free was not seen
        t.lock(HEAP + 72)
        t.free(HEAP + 64)
        t.lock(HEAP + 72)  # the latest object here is freed: not make_foo's again
        t.lock(HEAP + 200)  # make_foo's, outside the freed one
        t.alloc(HEAP + 128, 8, "kmalloc_array")  # a generic allocator: no class
        t.lock(HEAP + 128, "spinlock")

    ev, names, origins = _by_hand(build)
    assert origins == ["heap", "heap", "instance", "heap", "instance"], origins
    assert names[0].startswith("make_foo") and names[1].startswith("make_bar")
    assert names[3].startswith("make_foo")


def test_dead_allocations_still_name_their_class() -> None:
    """An allocation whose locks all come after its free has a class in the table
    (and no row), as the whole-trace reading made it."""
    def build(t: Trace) -> None:
        t.alloc(HEAP, 64, "make_baz")
        t.free(HEAP)
        t.lock(HEAP + 8)

    ev = Trace()
    build(ev)
    ids, table = _check(ev.frame(), _symbols(), [1, 2, 5])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HeapState, "due", lambda self: True)
        _check(ev.frame(), _symbols(), [1, 2])
    assert any(c.name.startswith("make_baz") for c in table)
    assert table[ids[0]].origin == "instance"


def test_lockdep_names() -> None:
    def build(t: Trace) -> None:
        t.alloc(HEAP, 64, "make_foo")
        t.lock(HEAP + 8)  # before the address's first name: takes it
        t.lock(HEAP + 8, name="&foo->lock")
        t.lock(HEAP + 8)  # after it: the nearest before
        t.lock(HEAP + 0x400, name="&foo->lock", site="take_other")  # an instance
        t.lock(DATA_SEG, "spinlock")  # never named
        t.lock(DATA_SEG + 0x8, "spinlock", name="static_lock")

    _, names, origins = _by_hand(build)
    assert names[:4] == ["&foo->lock"] * 4 and origins[:4] == ["lockdep"] * 4, names
    assert origins[4] == "static" and names[5] == "static_lock" and origins[5] == "lockdep"


def test_spinning_and_sleeping_rows_of_one_class() -> None:
    def build(t: Trace) -> None:
        t.lock(HEAP + 0x800, "mutex", site="take")
        t.lock(HEAP + 0x800, "spinlock", site="take")
        t.lock(HEAP + 0x900, "spinlock", site="take")  # the same instance class

    _, names, _ = _by_hand(build)
    assert names[0] == "lock@take" and names[1] == names[2] == "lock@take:spinlock", names


def test_ties_of_time_stamps() -> None:
    """A row counts what happens at its own time stamp whichever comes first:
    an allocation or initializer at the lock's time stamp holds for it, a free at
    that time stamp does not end an allocation (it does end an initializer), and a
    free at the allocation's own time stamp frees an older one only."""
    def build(t: Trace) -> None:
        t.lock(HEAP + 8, dt=10)
        t.alloc(HEAP, 64, "make_foo", dt=0)  # the lock above is this object's
        t.alloc(HEAP + 0x100, 64, "make_foo", dt=10)
        t.init(HEAP + 0x108, "__mutex_init", "init_foo", "&foo->lock")
        t.lock(HEAP + 0x108, dt=10)
        t.free(HEAP + 0x100, dt=0)  # the init ends at the lock's time stamp, the heap not
        t.alloc(HEAP + 0x200, 64, "make_foo", dt=10)
        t.free(HEAP + 0x200, dt=0)  # same time stamp as its allocation: not its free
        t.lock(HEAP + 0x208, dt=10)
        t.alloc(HEAP + 0x300, 64, "make_foo", dt=10)
        t.alloc(HEAP + 0x320, 64, "make_bar", dt=0)  # overlapping, same time stamp
        t.lock(HEAP + 0x328, dt=10)  # the higher pointer's
        t.init(HEAP + 0x338, "__mutex_init", "init_foo", "&foo->m", dt=0)
        t.free(HEAP + 0x300, dt=10)  # the init's object is the lower pointer's
        t.lock(HEAP + 0x338, dt=10)

    _, names, origins = _by_hand(build)
    assert origins[:3] == ["heap", "heap", "heap"], (names, origins)
    assert names[3].startswith("make_bar") and origins[4] == "heap", (names, origins)


def test_bounded_state() -> None:
    """The same objects allocated, initialized, locked and freed again and again: the
    state after 4 n rounds is the state after n."""
    def run(rounds: int) -> dict[str, int]:
        t = Trace()
        for r in range(rounds):
            for k in range(8):
                p = HEAP + 0x1000 * k
                t.alloc(p, 128, "make_foo" if (r + k) % 2 else "make_bar")
                if r % 7 == 0:
                    t.init(p + 16, "__mutex_init", "init_foo", "&foo->lock")
                t.lock(p + 16)
                t.lock(p + 48, "spinlock", site="take_other")
                t.free(p)
            t.lock(HEAP + 0x100000 + 8 * (r % 16), "spinlock")
        ev = t.frame()
        eng = ClassEngine(_symbols())
        for w in _windows(ev, 997):
            eng.feed(w.events, w.row0)
        eng.finish()
        eng.compact()
        size = eng.state_size()
        assert size.pop("events") == len(ev)
        return size

    a, b = run(700), run(2800)  # the last round alike in both (r % 7, r % 2)
    assert a == b, (a, b)
    assert a["heap_records"] <= 16 and a["heap_segments"] <= 8, a
