"""The held-lock replay in C (analysis/native/replay.c) gives what the Python loop gives.

heldlocks.Replayer runs its loop in C where the library builds (analysis.replay_native)
and keeps the Python loop as the reference.  Every field of the :class:`Replay` must be
the same, in the same order (acquisitions frame, edges with their accumulators, usage
bits, recursions, sleeps, forced releases, IRQ-ended holds, counters), with the events
fed in chunks of 1, 7 and 64 k rows (the state crosses chunks, and each chunk gets its
slice of the per-row class array: a call whose return decides keeps the class it had at
the call), on:

* every recorded fixture (tests/data/traces: both kernels' rules fixtures, the tiny run
  directory), with the arguments the pipeline gives the replay;
* those traces damaged: gap rows inserted, acquisitions or releases taken out
  (unmatched releases, locks left held), the releases of a module lost with and without
  preempt_count evidence (forced releases, ``holder_on_stack``), pages flipped in a
  run directory's raw trace (gaps the decoder places);
* random traces: test_properties' well-nested programs (hypothesis), and a generator of
  every kind of row the replay reads in any order (all lock functions, lock types and
  flags, return values, contexts, switches to untraced and idle tasks, markers, gaps),
  under every setting of the replay.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_run_copy
from hypothesis import given
from hypothesis import strategies as st
from recorded_fixture import load_fixture

from tracedep.analysis import pipeline, replay_native
from tracedep.analysis.heldlocks import Replay, Replayer, replay
from tracedep.analysis.replay_types import RowSet
from tracedep.analysis.trace import Trace, load, load_run
from tracedep.common.run_manifest import InlineLocks
from tracedep.tracer import page_sums, schema
from tracedep.tracer.probes import LOCK_FUNCS

DATA = Path(__file__).parents[1] / "data" / "traces"
FIXTURES = sorted(p.parent for p in DATA.glob("rules/*/manifest.json")) + sorted(
    p.parent for p in DATA.glob("lockdep/rules/*/manifest.json"))
CHUNKS = (1, 7, 1 << 16)
PAGE = 4096


def _props() -> Any:
    spec = importlib.util.spec_from_file_location(
        "tracedep_test_properties", Path(__file__).with_name("test_properties.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


props = _props()


def assert_same(py: Replay, c: Replay, what: str = "") -> None:
    """Every field, in order."""
    pd.testing.assert_frame_equal(py.acquisitions, c.acquisitions, check_exact=True,
                                  obj=f"{what} acquisitions")
    assert list(py.edges.items()) == list(c.edges.items()), f"{what} edges"
    assert [(k, list(v.items())) for k, v in py.usage.items()] == [
        (k, list(v.items())) for k, v in c.usage.items()], f"{what} usage"
    assert py.recursions == c.recursions, f"{what} recursions"
    assert py.sleeps == c.sleeps, f"{what} sleeps"
    assert py.forced == c.forced, f"{what} forced"
    assert py.irq_ended == c.irq_ended, f"{what} irq_ended"
    assert (py.switch_baseline, py.unmatched_releases, py.irq_leaked, py.warnings) == (
        c.switch_baseline, c.unmatched_releases, c.irq_leaked, c.warnings), what


def class_array(n: int, of_row: dict[int, int], dtype: Any = np.int32) -> np.ndarray:
    """The per-row class array the replay takes (pipeline.analyze's): -1 but in ``of_row``."""
    out = np.full(n, -1, dtype)
    if of_row:
        out[list(of_row)] = list(of_row.values())
    return out


def check(events: pd.DataFrame, classes: np.ndarray, *args: Any,
          chunks: tuple[int, ...] = CHUNKS, **kw: Any) -> Replay:
    """The Python loop in one chunk against C in chunks of :data:`CHUNKS`."""
    ref = replay(events, classes, *args, native=False, chunk_rows=1 << 30, **kw)
    for n in chunks:
        assert_same(ref, replay(events, classes, *args, native=True, chunk_rows=n,
                                **kw), f"chunks of {n}:")
    return ref


def pipeline_args(trace: Trace, monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments pipeline.analyze gives the replay for ``trace``."""
    got: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def spy(*a: Any, **kw: Any) -> Replay:
        got.append((a, kw))
        return replay(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "replay", spy)
        pipeline.analyze(trace)
    return got[0]


def check_trace(trace: Trace, monkeypatch: pytest.MonkeyPatch) -> Replay:
    a, kw = pipeline_args(trace, monkeypatch)
    return check(*a, **kw)


def test_the_native_replay_builds() -> None:
    assert replay_native.library() is not None, "replay.c did not build (is cc missing?)"


# --- recorded traces -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: str(p.relative_to(DATA)))
def test_recorded_fixtures(fixture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_trace(load_fixture(fixture), monkeypatch)


def test_the_tiny_run_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    rep = check_trace(load_run(DATA / "tiny"), monkeypatch)
    assert len(rep.acquisitions) and rep.edges and rep.usage


# --- damaged traces --------------------------------------------------------------------------


def _with_gaps(ev: pd.DataFrame, rng: np.random.Generator, n: int) -> pd.DataFrame:
    at = np.sort(rng.choice(len(ev), size=min(n, len(ev)), replace=False))
    gaps = ev.iloc[at].copy()
    for c, v in (("kind", "gap"), ("event", "tracedep/gap"), ("lock_type", ""),
                 ("lock_flags", ""), ("lock_addr", 0), ("value", 0)):
        gaps[c] = v
    both = pd.concat([ev.astype(object), gaps.astype(object)])
    order = np.argsort(np.concatenate([np.arange(len(ev)) * 2 + 1, at * 2]), kind="stable")
    return schema.conform(both.iloc[order].reset_index(drop=True))


def _without(ev: pd.DataFrame, kind: str, rng: np.random.Generator, frac: float
             ) -> pd.DataFrame:
    rows = np.nonzero(ev["kind"].to_numpy() == kind)[0]
    gone = rows[rng.random(len(rows)) < frac]
    return schema.conform(ev.drop(index=ev.index[gone]).reset_index(drop=True))


@pytest.mark.parametrize("fixture", FIXTURES[::8], ids=lambda p: str(p.relative_to(DATA)))
def test_damaged_fixtures(fixture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = load_fixture(fixture)
    rng = np.random.default_rng(zlib.crc32(fixture.name.encode()))
    for damaged in (_with_gaps(t.events, rng, 5), _without(t.events, "lock_release", rng, .2),
                    _without(t.events, "lock_acquire", rng, .2),
                    _without(t.events, "lock_return", rng, .3)):
        check_trace(dataclasses.replace(t, events=damaged), monkeypatch)


def _module_releases_gone(t: Trace, module: str) -> Trace:
    ev = t.events
    rows = [r for r in np.nonzero(ev["kind"].to_numpy() == "lock_release")[0].tolist()
            if t.symbols.module_of(int(ev["ip"].iat[r]), int(ev["ts_ns"].iat[r])) == module]
    return dataclasses.replace(t, events=schema.conform(
        ev.drop(index=ev.index[rows]).reset_index(drop=True)))


@pytest.mark.parametrize("module", ["td_alloc_spin_clean", "td_alloc_spin_bug",
                                    "td_wait_spin_bug"])
def test_lost_releases(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced releases: preempt-count evidence; a skipped inline unlock (suspect rows,
    holder_on_stack); no evidence at all."""
    rep = check_trace(_module_releases_gone(load_fixture(DATA / "rules" / module), module),
                      monkeypatch)
    assert rep.forced or rep.sleeps
    t = _module_releases_gone(load_fixture(DATA / "rules" / module), module)
    t.info.calibration["preempt_count_tracks_spinlocks"] = False
    t.info.inline_locks = InlineLocks(sites=0, calls_out_of_line=0, skipped=[
        {"module": module, "func": "_raw_spin_unlock", "api": "spin_unlock",
         "call": "line 1", "reason": "test"}])
    a, kw = pipeline_args(t, monkeypatch)
    assert kw["suspect_rows"]
    check(*a, **kw)
    kw["holder_on_stack"] = None
    check(*a, **kw)


def test_a_damaged_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages changed after the run (their checksums say so) and a cut: gaps."""
    d = tiny_run_copy(tmp_path)
    raw = d / "trace" / "cpu0.raw"
    page_sums.write(raw, PAGE)
    data = bytearray(raw.read_bytes())
    for at in (PAGE + 100, 3 * PAGE + 2000):
        data[at] ^= 0xFF
    raw.write_bytes(bytes(data[:len(data) - 1000]))
    t = load(d)
    assert (t.events["kind"] == "gap").any()
    check_trace(t, monkeypatch)


# --- random traces ---------------------------------------------------------------------------


@props.SETTINGS
@given(props.well_nested(), st.lists(st.integers(props.NLOCKS + 1, 200), max_size=6),
       st.data())
def test_well_nested_programs(b: Any, strangers: list[int], data: st.DataObject) -> None:
    for i, s in enumerate(strangers):
        b.release(10 + i % 3, s)
    ev = b.frame(data.draw(props.interleavings(b)) if b.tasks else [])
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls = {int(r): int((int(ev["lock_addr"].iat[r]) - props.DATA) // 0x40) for r in rows}
    check(ev, class_array(len(ev), cls))


_ACQUIRE = sorted(f for f, lf in LOCK_FUNCS.items() if not lf.release)
_RELEASE = sorted(f for f, lf in LOCK_FUNCS.items() if lf.release)
_SUCCESS = sorted(f for f, lf in LOCK_FUNCS.items() if lf.success)
_TYPES = (*schema.LOCK_TYPES, "")
_PIDS = (0, 0, 1, 2, 3, 5, 9)  # 9: untraced
_KINDS = ("lock_acquire",) * 8 + ("lock_release",) * 6 + ("lock_return",) * 3 + (
    "sleep_call", "sleep_call", "alloc", "alloc", "sched_switch", "sched_switch", "marker",
    "gap", "irq_entry")


# long: one row per draw, every column the replay reads
def random_events(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` random rows of every kind the replay reads (and one it skips), with the
    returns of pending calls often matching them, so every branch is taken."""
    cols: dict[str, list[Any]] = {c: [] for c in (
        "ts_ns", "cpu", "pid", "irqs_off", "preempt_depth", "bh_off", "in_hardirq",
        "in_softirq", "in_nmi", "kind", "event", "lock_addr", "lock_type", "lock_flags",
        "gfp", "value", "target_pid", "ip", "stack_id")}
    pending: dict[tuple[int, int], list[str]] = {}
    for i in range(n):
        pid = int(rng.choice(_PIDS))
        ctx = int(rng.choice(4, p=(.7, .12, .12, .06)))
        kind = str(rng.choice(_KINDS))
        addr = 0x1000 + 0x40 * int(rng.integers(0, 10))
        fn, lt, flags, value, target, gfp = "", "", "", 0, -1, 0
        if kind == "lock_acquire":
            fn = str(rng.choice(_ACQUIRE + ["not_a_lock_fn"]))
            lf = LOCK_FUNCS.get(fn)
            lt = lf.lock_type if lf and rng.random() < .9 else str(rng.choice(_TYPES))
            flags = "+".join(lf.flags) if lf and rng.random() < .8 else "+".join(
                rng.choice(schema.LOCK_FLAGS, size=int(rng.integers(0, 3)), replace=False))
            value = int(rng.choice((0, 0, 1, 2)))
            if lf and lf.success:
                pending.setdefault((pid, ctx), []).append(fn)
        elif kind == "lock_return":
            pend = pending.get((pid, ctx))
            fn = pend.pop() if pend and rng.random() < .8 else str(rng.choice(_SUCCESS))
            lt = LOCK_FUNCS[fn].lock_type
            value = int(rng.choice((0, 1, -4)))
        elif kind == "lock_release":
            fn = str(rng.choice(_RELEASE))
            lt = str(rng.choice(_TYPES)) if rng.random() < .3 else LOCK_FUNCS[fn].lock_type
        elif kind == "sched_switch":
            value = int(rng.choice((0, 1, 2, 0x100, 0x101, 0x10, 0x20, 0x80)))
            target = int(rng.choice(_PIDS))
        elif kind == "alloc":
            gfp = int(rng.choice((0, 0x400, 0xCC0)))
        prefix = {"lock_acquire": "lk_", "lock_return": "lr_", "lock_release": "ul_"}.get(
            kind)
        event = f"tracedep/{prefix}{fn}" if prefix else {
            "gap": "tracedep/gap", "marker": "ftrace/print", "sched_switch":
            "sched/sched_switch"}.get(kind, f"tracedep/sl_{kind}")
        for c, v in (("ts_ns", 1_000_000 + 100 * i), ("cpu", int(rng.integers(0, 3))),
                     ("pid", pid), ("irqs_off", bool(rng.random() < .3)),
                     # (a negative depth, never decoded, on switches breaks switch_baseline)
                     ("preempt_depth", int(rng.choice((0, 0, 0, 1, 2, 3, 15) if
                                                      kind == "sched_switch" else
                                                      (0, 0, 0, 1, 2, 3, -1)))),
                     ("bh_off", bool(rng.random() < .15)), ("in_hardirq", ctx == 2),
                     ("in_softirq", ctx == 1 or (ctx == 3 and rng.random() < .5)),
                     ("in_nmi", ctx == 3), ("kind", kind), ("event", event),
                     ("lock_addr", addr if prefix else 0), ("lock_type", lt),
                     ("lock_flags", flags), ("gfp", gfp), ("value", value),
                     ("target_pid", target), ("ip", 0xFFFF0000 + 16 * i),
                     ("stack_id", -1)):
            cols[c].append(v)
    return schema.conform(pd.DataFrame(cols))


def _holder(seed: int) -> Callable[[int, int], bool | None]:
    def ask(acq_row: int, row: int) -> bool | None:
        return (None, True, False)[zlib.crc32(f"{seed} {acq_row} {row}".encode()) % 3]
    return ask


def random_case(seed: int) -> tuple[pd.DataFrame, np.ndarray, tuple[Any, ...], dict[str, Any]]:
    """A random trace and replay settings: (events, classes, args, keywords) of
    ``check``.  Classes are shared by several locks; some rows have none (-1)."""
    rng = np.random.default_rng(seed)
    ev = random_events(rng, 1000)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cor = {int(r): int(ev["lock_addr"].iat[r]) // 0x40 % 7 for r in rows
           if rng.random() < .95}
    settings = [bool(b) for b in rng.integers(0, 2, 3)]
    suspect = frozenset(int(r) for r in rows if rng.random() < .3)
    return (ev, class_array(len(ev), cor), (settings[0], frozenset({9}), settings[1]),
            {"depth_counts_spin": settings[2], "suspect_rows": suspect,
             "holder_on_stack": _holder(seed) if seed % 4 else None,
             "own_classes": frozenset({1, 3})})


@pytest.mark.parametrize("seed", range(16))
def test_random_traces(seed: int) -> None:
    ev, cls, args, kw = random_case(seed)
    rep = check(ev, cls, *args, **kw)
    assert len(rep.acquisitions) and rep.forced


def setting_cases(seed: int) -> Iterator[tuple[int, pd.DataFrame, np.ndarray,
                                               tuple[Any, ...], dict[str, Any]]]:
    """One random trace under each of the 16 combinations of the replay's settings:
    (the combination's bits, events, classes, args, keywords) of ``check``."""
    ev = random_events(np.random.default_rng(100 + seed), 400)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cor = class_array(len(ev), {int(r): int(ev["lock_addr"].iat[r]) // 0x40 % 5 for r in rows})
    suspect = frozenset(int(r) for r in rows[::3])
    for bits in range(16):
        yield (bits, ev, cor, (bool(bits & 1), frozenset({9}) if bits & 8 else frozenset(),
                               bool(bits & 2)),
               {"depth_counts_spin": bool(bits & 4), "suspect_rows": suspect,
                "holder_on_stack": _holder(bits), "own_classes": frozenset({2})})


@pytest.mark.parametrize("seed", range(4))
def test_random_traces_every_setting(seed: int) -> None:
    for bits, ev, cor, args, kw in setting_cases(seed):
        check(ev, cor, *args, chunks=CHUNKS if bits in (0, 15) else CHUNKS[1:], **kw)


def test_a_raising_holder_on_stack_raises() -> None:
    ev = random_events(np.random.default_rng(5), 400)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]

    def boom(acq_row: int, row: int) -> bool | None:
        raise KeyError(acq_row)

    for native in (False, True):
        with pytest.raises(KeyError):
            replay(ev, class_array(len(ev), {}), suspect_rows=frozenset(rows.tolist()),
                   holder_on_stack=boom, native=native)


def test_without_native_code_the_python_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_native, "library", lambda: None)
    ev = random_events(np.random.default_rng(3), 200)
    none = class_array(len(ev), {})
    rep = replay(ev, none)
    with pytest.raises(RuntimeError):
        replay(ev, none, native=True)
    assert_same(rep, replay(ev, none, native=False))


def test_class_arrays_of_any_integer_type() -> None:
    """The pipeline's int32 array, an int64 one, a plain list: the same replay."""
    ev = random_events(np.random.default_rng(11), 300)
    acq = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    of_row = dict(zip(acq.tolist(), (acq % 4).tolist(), strict=True))
    py = check(ev, class_array(len(ev), of_row))
    for classes in (class_array(len(ev), of_row, np.int64),
                    class_array(len(ev), of_row, np.int16)):
        check(ev, classes)
        assert_same(py, replay(ev, classes, native=True))


def test_tracedep_native_0_runs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEDEP_NATIVE", "0")
    assert replay_native.library() is None
    ev = random_events(np.random.default_rng(4), 100)
    assert replay(ev, class_array(len(ev), {})).acquisitions is not None


def test_text_columns_without_categories() -> None:
    """Object columns (a frame not from schema.conform) and a missing lock_flags on a row
    that never reads it: the same as the Python loop."""
    ev = random_events(np.random.default_rng(21), 500)
    ev = ev.assign(**{c: ev[c].astype(object) for c in (
        "kind", "event", "lock_type", "lock_flags")})
    ev.loc[ev.index[ev["kind"] == "sleep_call"], "lock_flags"] = None
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    check(ev, class_array(len(ev), {int(r): int(r) % 3 for r in rows}),
          own_classes=frozenset({1}))
    plain = [r for r in rows.tolist() if not LOCK_FUNCS.get(
        str(ev["event"].iat[r]).partition("_")[2], LOCK_FUNCS["_raw_spin_lock"]).success]
    ev.loc[ev.index[plain[len(plain) // 2]], "lock_flags"] = None
    for native in (False, True):
        with pytest.raises(TypeError):
            replay(ev, class_array(len(ev), {}), native=native)


def test_tables_that_change_between_chunks() -> None:
    """Replayer.feed gets each chunk's own class array and may get other suspect_rows per
    chunk: a call still pending from an earlier chunk keeps the class it had at the call
    and takes the suspicion of the chunk that returns it, as in the Python loop."""
    ev = random_events(np.random.default_rng(8), 800)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0].tolist()
    out = []
    for native in (False, True):
        rp = Replayer(True, frozenset({9}), True, native=native, own_classes=frozenset({1}))
        for k, a in enumerate(range(0, len(ev), 13)):
            cls = class_array(len(ev), {r: (r + k) % 4 for r in rows})[a:a + 13]
            sus = frozenset(r for r in rows if (r + k) % 3 == 0)
            rp.feed(ev.iloc[a:a + 13], cls, row_offset=a, suspect_rows=sus,
                    holder_on_stack=_holder(k))
        out.append(rp.finish())
    assert_same(*out)


def _pending_call_and_return() -> pd.DataFrame:
    """mutex_lock_interruptible of one lock (row 0), its successful return (row 1), then
    its release (row 2): one task, process context."""
    base = {"cpu": 0, "pid": 4, "irqs_off": False, "preempt_depth": 0, "bh_off": False,
            "in_hardirq": False, "in_softirq": False, "in_nmi": False, "lock_addr": 0x1040,
            "lock_type": "mutex", "gfp": 0, "value": 0, "target_pid": -1, "stack_id": -1}
    rows = [{**base, "kind": "lock_acquire",
             "event": "tracedep/lk_mutex_lock_interruptible", "lock_flags": "interruptible"},
            {**base, "kind": "lock_return",
             "event": "tracedep/lr_mutex_lock_interruptible", "lock_flags": ""},
            {**base, "kind": "lock_release", "event": "tracedep/ul_mutex_unlock",
             "lock_flags": ""}]
    for i, r in enumerate(rows):
        r.update(ts_ns=1_000 + 100 * i, ip=0xFFFF0000 + 16 * i)
    return schema.conform(pd.DataFrame(rows))


@pytest.mark.parametrize("native", [False, True])
def test_a_pending_call_keeps_the_class_it_had_at_the_call(native: bool) -> None:
    """The call (class 2, chunk 0) returns in chunk 1, whose class array says 3 for every
    row: the acquisition is of class 2, in C as in Python, fed whole or a row a time."""
    ev = _pending_call_and_return()
    for chunk in (1, 1 << 16):
        rep = replay(ev, np.array([2, -1, -1], np.int32), native=native, chunk_rows=chunk)
        assert rep.acquisitions["cls"].tolist() == [2], chunk
    rp = Replayer(native=native)
    rp.feed(ev.iloc[:1], np.array([2], np.int32), row_offset=0)
    rp.feed(ev.iloc[1:], np.array([3, 3], np.int32), row_offset=1)
    acqs = rp.finish().acquisitions
    assert acqs["cls"].tolist() == [2] and acqs["row"].tolist() == [0]
    assert acqs["release_row"].tolist() == [2]


def test_the_c_state_is_freed_with_its_replayer() -> None:
    """No reference cycle keeps a replay's C state (its acquisitions: a hundred MB on a
    few million events) alive after its Replayer, until some garbage collection."""
    ev = random_events(np.random.default_rng(6), 300)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    was = gc.isenabled()
    gc.disable()
    try:
        rp = Replayer(native=True)
        rp.feed(ev, class_array(len(ev), {int(r): int(r) % 3 for r in rows}),
                suspect_rows=frozenset(rows[::2].tolist()), holder_on_stack=_holder(2))
        assert len(rp.finish().acquisitions)
        assert rp.native is not None
        freed = rp.native._free
        assert freed.alive
        del rp
        assert not freed.alive, "the C state outlived its Replayer"
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("seed", range(4))
def test_suspect_rows_as_a_sorted_array_are_the_set(seed: int) -> None:
    """missing.suspect_rows gives a RowSet (one sorted array, millions of rows on a trace
    whose kprobes missed releases): the same replay as the frozenset, in C and Python."""
    rng = np.random.default_rng(200 + seed)
    ev = random_events(rng, 600)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cor = class_array(len(ev), {int(r): int(ev["lock_addr"].iat[r]) // 0x40 % 5 for r in rows})
    picked = [int(r) for r in rows if rng.random() < .4]
    as_set = frozenset(picked)
    as_rows = RowSet(reversed(picked))
    assert sorted(as_rows) == sorted(as_set) and len(as_rows) == len(as_set)
    assert all((r in as_rows) == (r in as_set) for r in range(-2, len(ev) + 2))
    assert "1" not in as_rows and 1.0 not in as_rows  # rows are ints only
    probe = np.arange(-2, len(ev) + 2)
    assert as_rows.contains(probe).tolist() == [int(r) in as_set for r in probe]
    assert not RowSet().contains(probe).any()
    ref = check(ev, cor, suspect_rows=as_set, holder_on_stack=_holder(seed))
    assert ref.forced  # the suspects mattered
    for native in (False, True):
        assert_same(ref, replay(ev, cor, suspect_rows=as_rows, holder_on_stack=_holder(seed),
                                native=native), f"native={native}:")
