"""Replayer.drain(): the acquisitions settled so far, handed out and forgotten.

The analysis must be able to run in memory that grows with the locks held, not with
every acquisition of the trace: ``drain()`` hands out the acquisitions that can no
longer change and the C replay frees them.  The invariant: all drains and the final
``finish()``, joined in ``acq`` order, are the whole table of a replay never drained,
every column, with everything else of the :class:`Replay` unchanged, in Python and in C
(with blocks of 4, 1 and 4096 rows for chunks of 1, 7 and 64 k: blocks freed, rows kept
aside and found again), draining after every chunk, on:

* every recorded fixture and the tiny run directory, with the pipeline's arguments;
* those traces damaged (gaps, acquisitions, releases and returns taken out);
* random traces of every kind of row, under every setting of the replay.

And no drain hands out an acquisition that may still change: one held (its release
is to come), or one on a wait list (a lock_return may still set its ``ts_acquired``,
after its release even).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from recorded_fixture import load_fixture

from tracedep.analysis.acquisitions import COLUMN_DTYPES, concat_frames
from tracedep.analysis.heldlocks import SLEEPING_LOCK_TYPES, Replay, Replayer, replay
from tracedep.analysis.replay_inputs import switch_baseline
from tracedep.analysis.trace import Trace, load_run
from tracedep.tracer import schema


def _native_tests() -> Any:
    """test_replay_native, whose traces and helpers these tests share."""
    spec = importlib.util.spec_from_file_location(
        "tracedep_test_replay_native", Path(__file__).with_name("test_replay_native.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rn = _native_tests()
DATA, FIXTURES, assert_same, class_array = rn.DATA, rn.FIXTURES, rn.assert_same, rn.class_array
pipeline_args, random_events, _holder = rn.pipeline_args, rn.random_events, rn._holder
CHUNKS = (1, 7, 1 << 16)
BLOCK_SHIFT = {1: 2, 7: 0}  # C's blocks per chunk size (rows: 4, 1; else 4096)
ACQ_BYTES = 72  # replay.c's acq_t


def drained(events: pd.DataFrame, classes: np.ndarray, *args: Any, chunk_rows: int,
            native: bool, block_shift: int | None = None, **kw: Any
            ) -> tuple[list[pd.DataFrame], Replay, Replayer]:
    """heldlocks.replay(), with a drain after every chunk: (the drains, finish(), the
    replayer)."""
    rp = Replayer(*args, depth_counts_spin=kw.pop("depth_counts_spin", False),
                  own_classes=kw.pop("own_classes", frozenset()),
                  baseline=switch_baseline(events), native=native)
    if block_shift is not None:
        assert rp.native is not None
        rp.native.set_block_shift(block_shift)
    frames = []
    for a in range(0, max(len(events), 1), chunk_rows):
        rp.feed(events.iloc[a:a + chunk_rows], classes[a:a + chunk_rows], row_offset=a,
                **kw)
        frames.append(rp.drain())
    return frames, rp.finish(), rp


def assert_drains_add_up(ref: Replay, frames: list[pd.DataFrame], rest: Replay,
                         what: str) -> None:
    whole = ref.acquisitions
    for f in [*frames, rest.acquisitions]:
        assert list(f.columns) == [*whole.columns, "acq"], what
        assert f["acq"].dtype == np.int64, what
        assert f["acq"].is_monotonic_increasing, what
        for c in whole.columns:
            if c != "lock_type":
                assert f[c].dtype == whole[c].dtype, f"{what} {c}"
        types = list(f["lock_type"].cat.categories)
        assert types == list(whole["lock_type"].cat.categories)[:len(types)] or (
            not len(f) and types == [""]), what
    got = concat_frames([*frames, rest.acquisitions])
    assert got["acq"].tolist() == list(range(len(whole))), f"{what} acq"
    pd.testing.assert_frame_equal(got.drop(columns="acq"), whole, check_exact=True,
                                  obj=f"{what} acquisitions")
    assert_same(dataclasses.replace(ref, acquisitions=whole.iloc[:0]),
                dataclasses.replace(rest, acquisitions=whole.iloc[:0]), what)
    # what the last drain (after the last event) kept: only acquisitions still held (no
    # end yet) or waited for (sleeping locks only go on a wait list)
    r = rest.acquisitions
    held = (r["ts_release"] < 0) & (r["release_row"] < 0) & (r["forced"] == "") & ~r[
        "handed_off"]
    assert (held | r["lock_type"].isin(SLEEPING_LOCK_TYPES)).all(), what


def check(events: pd.DataFrame, classes: np.ndarray, *args: Any,
          chunks: tuple[int, ...] = CHUNKS, **kw: Any) -> Replay:
    """The Python loop undrained against both loops drained after every chunk."""
    ref = replay(events, classes, *args, native=False, chunk_rows=1 << 30, **kw)
    for n in chunks:
        for native, shift in ((False, None), (True, BLOCK_SHIFT.get(n))):
            frames, rest, _ = drained(events, classes, *args, chunk_rows=n, native=native,
                                      block_shift=shift, **dict(kw))
            assert_drains_add_up(ref, frames, rest, f"native={native} blocks={shift} "
                                                    f"chunks of {n}:")
    return ref


def check_trace(trace: Trace, monkeypatch: pytest.MonkeyPatch) -> Replay:
    a, kw = pipeline_args(trace, monkeypatch)
    return check(*a, **kw)


# --- recorded traces -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: str(p.relative_to(DATA)))
def test_recorded_fixtures(fixture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_trace(load_fixture(fixture), monkeypatch)


def test_the_tiny_run_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    rep = check_trace(load_run(DATA / "tiny"), monkeypatch)
    assert len(rep.acquisitions) > 100


@pytest.mark.parametrize("fixture", FIXTURES[::8], ids=lambda p: str(p.relative_to(DATA)))
def test_damaged_fixtures(fixture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = load_fixture(fixture)
    rng = np.random.default_rng(zlib.crc32(fixture.name.encode()))
    for damaged in (rn._with_gaps(t.events, rng, 5),
                    rn._without(t.events, "lock_release", rng, .2),
                    rn._without(t.events, "lock_acquire", rng, .2),
                    rn._without(t.events, "lock_return", rng, .3)):
        check_trace(dataclasses.replace(t, events=damaged), monkeypatch)


# --- random traces ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_traces(seed: int) -> None:
    ev, cls, args, kw = rn.random_case(seed)
    rep = check(ev, cls, *args, **kw)
    assert len(rep.acquisitions) and rep.forced


@pytest.mark.parametrize("seed", range(2))
def test_random_traces_every_setting(seed: int) -> None:
    for _, ev, cor, args, kw in rn.setting_cases(seed):
        check(ev, cor, *args, chunks=(7,), **kw)


def test_long_random_traces_free_blocks() -> None:
    """A few thousand acquisitions in blocks of one row: most blocks freed, every held
    one found again in the rows kept aside, drained a chunk at a time or rarely."""
    ev = random_events(np.random.default_rng(77), 6000)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cor = class_array(len(ev), {int(r): int(r) % 9 for r in rows})
    ref = replay(ev, cor, native=False)
    for n in (3, 64, 1000):
        for shift in (0, 3):
            frames, rest, rp = drained(ev, cor, chunk_rows=n, native=True, block_shift=shift)
            assert_drains_add_up(ref, frames, rest, f"blocks {1 << shift}, chunks of {n}")
            assert rp.native is not None
            assert rp.native.acq_bytes() < 20_000  # a few open rows, not 2000 acquisitions


# --- what a drain hands out, and when ------------------------------------------------------


def _rows(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {"cpu": 0, "pid": 4, "irqs_off": False, "preempt_depth": 0, "bh_off": False,
            "in_hardirq": False, "in_softirq": False, "in_nmi": False, "lock_addr": 0x1040,
            "lock_type": "mutex", "gfp": 0, "value": 0, "target_pid": -1, "stack_id": -1,
            "lock_flags": ""}
    out = [{**base, **r, "ts_ns": 1_000 + 100 * i, "ip": 0xFFFF0000 + 16 * i}
           for i, r in enumerate(rows)]
    return schema.conform(pd.DataFrame(out))


def _ev(kind: str, fn: str, **kw: Any) -> dict[str, Any]:
    prefix = {"lock_acquire": "lk_", "lock_return": "lr_", "lock_release": "ul_"}[kind]
    return {"kind": kind, "event": f"tracedep/{prefix}{fn}", **kw}


@pytest.mark.parametrize("native", [False, True])
def test_a_released_lock_still_waited_for_is_not_drained(native: bool) -> None:
    """mutex_lock's acquisition goes on the wait list at its call and leaves it at its
    return, which sets its ts_acquired.  Released before that return came (events
    out of the usual order), it is still waited for: drained then, it would have been
    handed out without its ts_acquired."""
    ev = _rows(_ev("lock_acquire", "mutex_lock"),
               _ev("lock_release", "mutex_unlock"),
               _ev("lock_return", "mutex_lock"))
    cls = np.array([2, -1, -1], np.int32)
    rp = Replayer(native=native)
    rp.feed(ev.iloc[:2], cls[:2], row_offset=0)
    assert rp.drain().empty  # released, but waited for
    rp.feed(ev.iloc[2:], cls[2:], row_offset=2)
    out = rp.drain()
    assert out["acq"].tolist() == [0] and out["release_row"].tolist() == [1]
    assert out["ts_acquired"].tolist() == [1_200]  # its return's
    assert rp.drain().empty and rp.finish().acquisitions.empty


@pytest.mark.parametrize("native", [False, True])
def test_a_call_whose_return_decides_is_not_waited_for_after_it(native: bool) -> None:
    """mutex_lock_interruptible's acquisition is made at its return, whose time ends its
    wait: it is off the wait list from then, drained once released, and a later return
    with no call of its own (its call unseen) changes nothing of it."""
    ev = _rows(_ev("lock_acquire", "mutex_lock_interruptible", lock_flags="interruptible"),
               _ev("lock_return", "mutex_lock_interruptible"),
               _ev("lock_release", "mutex_unlock"),
               _ev("lock_return", "mutex_lock"))
    cls = np.array([2, -1, -1, -1], np.int32)
    rp = Replayer(native=native)
    rp.feed(ev.iloc[:3], cls[:3], row_offset=0)
    out = rp.drain()
    assert out["acq"].tolist() == [0] and out["release_row"].tolist() == [2]
    assert out["ts_acquired"].tolist() == [1_100]  # its own return's
    rp.feed(ev.iloc[3:], cls[3:], row_offset=3)
    assert rp.drain().empty and rp.finish().acquisitions.empty


@pytest.mark.parametrize("native", [False, True])
def test_held_locks_stay_until_released(native: bool) -> None:
    """A spinlock held across drains is handed out by the drain after its release, and a
    lock still held at the end is in finish(), not in any drain."""
    ev = _rows(_ev("lock_acquire", "_raw_spin_lock", lock_type="spinlock"),
               _ev("lock_acquire", "_raw_spin_lock", lock_type="spinlock", lock_addr=0x2000),
               _ev("lock_release", "_raw_spin_unlock", lock_type="spinlock",
                   lock_addr=0x2000),
               _ev("lock_release", "_raw_spin_unlock", lock_type="spinlock"),
               _ev("lock_acquire", "_raw_spin_lock", lock_type="spinlock", lock_addr=0x3000))
    cls = np.array([1, 2, -1, -1, 3], np.int32)
    rp = Replayer(native=native)
    if native:
        assert rp.native is not None
        rp.native.set_block_shift(0)
    got = []
    for i in range(len(ev)):
        rp.feed(ev.iloc[i:i + 1], cls[i:i + 1], row_offset=i)
        got.append(rp.drain()["acq"].tolist())
    assert got == [[], [], [1], [0], []]
    rest = rp.finish().acquisitions
    assert rest["acq"].tolist() == [2] and rest["release_row"].tolist() == [-1]
    assert rp.finish().acquisitions["acq"].tolist() == [2]  # finish() hands nothing out


@pytest.mark.parametrize("native", [False, True])
def test_a_drain_before_any_event_and_finish_without_drains(native: bool) -> None:
    ev = random_events(np.random.default_rng(3), 300)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls = class_array(len(ev), {int(r): int(r) % 3 for r in rows})
    rp = Replayer(baseline=switch_baseline(ev), native=native)
    first = rp.drain()
    assert first.empty and list(first.columns) == [*COLUMN_DTYPES, "acq"]
    rp.feed(ev, cls)
    whole = replay(ev, cls, native=native).acquisitions
    assert "acq" not in whole.columns
    assert_drains_add_up(replay(ev, cls, native=False), [first, rp.drain()], rp.finish(),
                         f"native={native}")


def test_c_memory_follows_the_open_acquisitions() -> None:
    """Drained after every chunk, the C state holds the few acquisitions still open;
    never drained, all of them."""
    ev = random_events(np.random.default_rng(12), 4000)
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls = class_array(len(ev), {int(r): int(r) % 5 for r in rows})
    frames, rest, rp = drained(ev, cls, chunk_rows=50, native=True, block_shift=4)
    assert rp.native is not None
    n = sum(map(len, frames)) + len(rest.acquisitions)
    assert n > 500
    kept = rp.native.acq_bytes()
    assert kept <= (len(rest.acquisitions) + 16) * ACQ_BYTES + 8 * 64, kept
    whole = Replayer(native=True)
    assert whole.native is not None
    whole.native.set_block_shift(4)
    whole.feed(ev, cls)
    assert whole.native.acq_bytes() >= n * ACQ_BYTES


def test_the_block_size_is_set_before_the_first_acquisition() -> None:
    ev = random_events(np.random.default_rng(3), 200)
    rp = Replayer(native=True)
    assert rp.native is not None
    rp.feed(ev, class_array(len(ev), {}))
    with pytest.raises(ValueError):
        rp.native.set_block_shift(2)
    with pytest.raises(ValueError):
        Replayer(native=True).native.set_block_shift(40)  # type: ignore[union-attr]


@pytest.mark.parametrize("native", [False, True], ids=["python", "c"])
@pytest.mark.parametrize("module", ["td_mutex_spin_bug", "td_alloc_spin_bug",
                                    "td_percpu_sleep_bug"])
def test_sleeps_read_and_forgotten_are_every_sleep_once(
        module: str, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream reads each chunk's sleeps (since()) and has the replay forget them
    (forget_sleeps(), analysis.sleep_fold): read together they are a whole replay's,
    and the replay keeps none of them (finish() has the sleeps not read, none)."""
    (events, classes, *args), kw = pipeline_args(
        load_fixture(DATA / "rules" / module), monkeypatch)
    ref = replay(events, classes, *args, native=False, chunk_rows=1 << 30, **kw)
    assert ref.sleeps, f"{module}: no sleep in atomic context"
    rp = Replayer(*args, depth_counts_spin=kw.pop("depth_counts_spin", False),
                  own_classes=kw.pop("own_classes", frozenset()),
                  baseline=switch_baseline(events), native=native)
    read = []
    for a in range(0, len(events), 7):
        rp.feed(events.iloc[a:a + 7], classes[a:a + 7], row_offset=a, **kw)
        read += rp.since()[0]
        rp.forget_sleeps()
        rp.drain()
    assert read == ref.sleeps
    assert rp.finish().sleeps == []
    rp.forget_sleeps()  # nothing read since: nothing to forget
    assert rp.since()[0] == []
