"""A kernel built with lockdep's lock tracepoints (vm/lockdep.config) as an event source.

Recorded from one real run of the bundled drivers on such a kernel, built by
vm/build-lockdep-kernel.sh (x86_64); how the fixtures were cut is in
tests/data/traces/README.md.  ``raw/`` is CPU 0's ring-buffer pages around
td_abba_bug's probe, decoded here as a run is; the rules fixtures of that run are
checked by tests/analysis/test_rules_recorded.py with the other recorded runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracedep.tracer import schema
from tracedep.tracer.decode_stream import decode_run
from tracedep.tracer.lockdep_events import merge_lockdep

RAW = Path(__file__).parents[1] / "data" / "traces" / "lockdep" / "raw"


@pytest.fixture(scope="module")
def decoded():  # type: ignore[no-untyped-def]
    return decode_run(RAW)


def test_lockdep_rows_are_retired_and_probe_rows_named(decoded) -> None:  # type: ignore[no-untyped-def]
    ev = decoded.events
    schema.validate(ev)
    names = ev["event"].astype(str)
    ld = ev[names.str.startswith("lock/")]
    assert decoded.counts["lock/lock_acquire"] > 100 and len(ld) == decoded.lockdep["lockdep_rows"]
    # lockdep's own rows never reach the replay: the probes' rows are the lock events
    assert set(ld["kind"].astype(str)) == {"other"}
    lock = ev[ev["kind"].isin(["lock_acquire", "lock_release"])]
    assert len(lock) and names[lock.index].str.startswith("tracedep/").all()
    named = (lock["lock_name"].astype(str) != "").mean()
    assert named > 0.95, named
    assert decoded.lockdep["named"] == int((lock["lock_name"].astype(str) != "").sum())


def test_driver_locks_get_lockdep_names(decoded) -> None:  # type: ignore[no-untyped-def]
    ev = decoded.events
    lock = ev[ev["kind"] == "lock_acquire"]
    by_name = lock.groupby(lock["lock_name"].astype(str), observed=True)["lock_addr"].nunique()
    # td_abba_bug's two static spinlocks: lockdep names a static lock by its variable
    for name in ("td_xfer_queue_lock", "td_xfer_stats_lock"):
        assert by_name.get(name) == 1, by_name.to_dict()
    # a name is one lock per address, and each address keeps one name here
    per_addr = lock.groupby("lock_addr")["lock_name"].nunique()
    assert (per_addr <= 1).all()
    # and the context is our probe's, taken before the lock function disabled anything
    rq = lock[lock["lock_name"].astype(str) == "&rq->__lock"]
    assert len(rq) and (rq["lock_type"].astype(str) == "spinlock").all()


def _frame(rows: list[tuple[str, str, int, int, int]]) -> pd.DataFrame:
    """(event, kind, cpu, pid, lock_addr) rows, in time order."""
    df = pd.DataFrame(rows, columns=["event", "kind", "cpu", "pid", "lock_addr"])
    df["ts_ns"] = np.arange(len(df), dtype=np.int64)
    df["func"] = [f"L{a:#x}" if e.startswith("lock/") else "" for e, a in
                  zip(df["event"], df["lock_addr"], strict=True)]
    return schema.conform(df.assign(kind=pd.Categorical(df["kind"], categories=schema.KINDS)))


def test_merge_pairs_by_lock_not_by_order() -> None:
    """An interrupt between a probe and its lockdep event (its own probe missed), a
    failed trylock (no lockdep event at all), a pseudo-lock (no probe)."""
    P, L = "tracedep/lk__raw_spin_lock", "lock/lock_acquire"
    ev = _frame([
        (P, "lock_acquire", 0, 10, 0x1000),      # 0: task's spin_lock(A) ...
        (L, "lock_acquire", 0, 10, 0x9018),      # 1: ... interrupted: lockdep of B (probe missed)
        (L, "lock_acquire", 0, 10, 0x1018),      # 2: A's own lockdep event
        (P, "lock_acquire", 0, 11, 0x2000),      # 3: a failed trylock: no lockdep event
        (L, "lock_acquire", 0, 10, 0x3000),      # 4: rcu_read_lock-like pseudo-lock
        (P, "lock_acquire", 1, 12, 0x4000),      # 5: another CPU
        (L, "lock_acquire", 1, 12, 0x4070),      # 6: its lockdep event (a mutex: map at +0x70)
    ])
    counts = merge_lockdep(ev)
    names = ev["lock_name"].astype(str).tolist()
    assert names[0] == "L0x1018" and names[3] == "" and names[5] == "L0x4070"
    assert counts == {"lockdep_rows": 4, "named": 2, "unmatched": 2}
    assert ev["kind"].astype(str).tolist() == ["lock_acquire", "other", "other", "lock_acquire",
                                               "other", "lock_acquire", "other"]
