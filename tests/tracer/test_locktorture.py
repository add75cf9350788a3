"""locktorture on a real guest: tracedep's acquisition counts equal locktorture's own.

One boot (``scenarios/locktorture.sh``) loads ``torture.ko`` and then
``locktorture.ko`` once per lock type it tortures on a non-RT kernel, one
after another, each for ``SECS`` seconds with 2 writers (and 2 readers where the
type has readers), built from Debian's source of the exact kernel
(``vm/torture_modules.py``).  At rmmod locktorture prints its totals.

What locktorture counts (kernel/locking/locktorture.c, the same in 6.1 and 6.12):
``lock_torture_writer()`` increments ``n_lock_acquired`` once per return of
``cur_ops->writelock()``, i.e. once per successful acquisition of the tortured
lock in its loop; ``lock_torture_reader()`` likewise per ``readlock()``.  The
counters start at 0 in the module's init and are printed after the kthreads
stopped, so every acquisition of the loop is in the total ("Writes:  Total: N",
"Reads :  Total: N"), and nothing else takes these static locks.  So, per
load of the module, the acquisitions tracedep sees of the tortured lock
(``heldlocks`` replay: successful ones only, found by the lock's address in that
load) must equal the totals exactly, writers and readers apart:

* ww_mutex_lock: one ``writelock()`` takes all three of ``torture_ww_mutex_0/1/2``;
  a ``ww_mutex_lock()`` that returns -EDEADLK is not an acquisition (tracedep
  reads the return value), but the locks already taken are then released
  inside ``torture_ww_mutex_lock()`` and taken again (``ww_mutex_lock_slow``).
  Per lock: acquisitions less those released from ``torture_ww_mutex_lock()`` = Writes.
* rtmutex_lock, mutex_lock: the lock's internal ``wait_lock`` spinlock is at
  the same address (rt_mutex) or nearby; only acquisitions of the sleeping
  lock type are counted.
* percpu_rwsem_lock: ``percpu_down_write()`` is out of line;
  ``percpu_down_read()``/``percpu_up_read()`` are inline (a per-CPU increment)
  and seen through the probes on their instances in locktorture.ko
  (``tracer.inline_locks``), mid-function probes calibrated per architecture
  (``tracer.calibration``; x86_64's run through int3).
* raw_spin_lock*: on a non-RT kernel they torture another spinlock
  (``torture_raw_spinlock``) through the same functions.

The guest's kernel: ``TRACEDEP_KERNEL_SERIES`` (default 6.12) and
``TRACEDEP_LOCKTORTURE_ARCH`` (default x86_64).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, run_tracedep

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.heldlocks import replay
from tracedep.analysis.trace import Trace, load
from tracedep.common.machines import machine_for
from tracedep.tracer.probes import INLINE_SUFFIX
from tracedep.vm.kernel import resolve_kernel
from tracedep.vm.torture_modules import LOCK_TYPES, locktorture_dir, torture_types

ARCH = os.environ.get("TRACEDEP_LOCKTORTURE_ARCH", "x86_64")
# seconds per type: ~200k spinlock acquisitions a second under TCG on x86_64
SECS = 1
SCENARIO = REPO / "scenarios" / "locktorture.sh"
# the lock type tracedep records for each kind of acquisition locktorture makes
WRITE_TYPE = {"spin_lock": "spinlock", "spin_lock_irq": "spinlock", "raw_spin_lock": "spinlock",
              "raw_spin_lock_irq": "spinlock", "rw_lock": "rwlock-w", "rw_lock_irq": "rwlock-w",
              "mutex_lock": "mutex", "ww_mutex_lock": "mutex", "rtmutex_lock": "mutex",
              "rwsem_lock": "rwsem-w", "percpu_rwsem_lock": "rwsem-w"}
READ_TYPE = {"rw_lock": "rwlock-r", "rw_lock_irq": "rwlock-r", "rwsem_lock": "rwsem-r",
             "percpu_rwsem_lock": "rwsem-r"}
pytestmark = pytest.mark.guest


# --- locktorture's own totals, from the console -----------------------------------------------


@dataclass
class Totals:
    torture_type: str
    writes: int
    reads: int | None  # None: the type has no readers
    fails: int
    verdict: str  # SUCCESS, FAILURE, ...


_STAT = re.compile(r"\b(Writes|Reads) ?:  Total: (\d+)  Max/Min: \d+/\d+\s*(?:\?\?\?)?\s*"
                   r"Fail: (\d+)")
_END = re.compile(r"\b(\w+)-torture:--- End of test: (\w+)")


def parse_totals(console: str) -> list[Totals]:
    """Each ``End of test`` block of the console, in order, with the stat lines before it."""
    out: list[Totals] = []
    writes: int | None = None
    reads: int | None = None
    fails = 0
    for line in console.splitlines():
        if m := _STAT.search(line):
            n, f = int(m.group(2)), int(m.group(3))
            if m.group(1) == "Writes":
                writes = n
            else:
                reads = n
            fails += f
        elif (m := _END.search(line)) and writes is not None:
            out.append(Totals(m.group(1), writes, reads, fails, m.group(2)))
            writes, reads, fails = None, None, 0
    return out


def test_parse_totals() -> None:
    """The console lines of 6.12's locktorture (one rw_lock block, one mutex block)."""
    # (the kernel's lines end in a space: "%s  Fail: %d %s\\n" with an empty last %s)
    text = "\n".join([
        "[   26.213474] Writes:  Total: 408942  Max/Min: 219189/189753   Fail: 0 ",
        "[   26.213999] Reads :  Total: 5948  Max/Min: 3199/2749   Fail: 0 ",
        "[   26.214317] rw_lock-torture:--- End of test: SUCCESS: acq_writer_lim=0",
        "[   42.989310] Writes:  Total: 7473  Max/Min: 7283/190 ???  Fail: 1 !!!",
        "[   42.989967] mutex_lock-torture:--- End of test: FAILURE: acq_writer_lim=0",
    ])
    assert parse_totals(text) == [Totals("rw_lock", 408942, 5948, 0, "SUCCESS"),
                                  Totals("mutex_lock", 7473, None, 1, "FAILURE")]


# --- the run ----------------------------------------------------------------------------------


@dataclass
class LtRun:
    run_dir: Path
    manifest: dict[str, Any]
    totals: list[Totals]
    trace: Trace
    acqs: Any  # heldlocks acquisitions (pandas frame)
    types: list[str]  # what this kernel's locktorture tortures, in the order run
    # per locktorture load, in order: (type from the workload's marker, t0, t1)
    loads: list[tuple[str, int, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
def lt_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LtRun]:
    pk = resolve_kernel(machine_for(ARCH))
    src = locktorture_dir(pk)
    types = torture_types(src)
    tmp = tmp_path_factory.mktemp("locktorture")
    workload = tmp / "workload.sh"
    workload.write_text(f"TD_LT_SECS={SECS}\nTD_LT_TYPES='{' '.join(types)}'\n"
                        + SCENARIO.read_text())
    out = tmp / "run"
    res = run_tracedep("run", "--arch", ARCH, "--module-src", src, "--workload", workload,
                       "--out", out, "--timeout", "600")
    assert res.rc in (0, 1), res.explain()
    manifest = json.loads((out / "manifest.json").read_text())
    totals = parse_totals((out / "console.log").read_text(errors="replace"))
    trace = load(out)
    ev = trace.events
    lock_rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls_ids, _ = lock_classes.assign(ev, trace.symbols, lock_rows)
    classes = np.full(len(ev), -1, dtype=np.int32)  # the replay takes a class per row
    classes[lock_rows] = cls_ids
    rep = replay(ev, classes,
                 not bool(manifest.get("kprobe_irqs_unknown", False)),
                 frozenset(int(p) for p in manifest.get("untraced_pids", [])))
    markers = ev[ev["kind"] == "marker"]
    marks = [(int(t), str(s).removeprefix("tracedep: scenario locktorture "))
             for t, s in zip(markers["ts_ns"], markers["func"].astype(str), strict=True)
             if str(s).startswith("tracedep: scenario locktorture ")]
    spans = sorted({(s.t0, s.t1) for s in trace.symbols.modules if s.name == "locktorture"})
    loads = []
    for t0, t1 in spans:
        before = [ty for t, ty in marks if t < t0]
        loads.append((before[-1] if before else "?", t0, t1))
    yield LtRun(out, manifest, totals, trace, rep.acquisitions, types, loads)


def _static(run: LtRun, name: str, t0: int) -> int:
    for span in run.trace.symbols.modules:
        if span.name == "locktorture" and span.t0 == t0 and span.table is not None:
            addrs = span.table.addresses_of(name)
            if addrs:
                return addrs[0]
    raise AssertionError(f"locktorture has no symbol {name} in its load at {t0}")


def _releases_in(run: LtRun, rows: Any, function: str) -> int:
    """How many of the acquisitions ``rows`` were released by a call from ``function``."""
    ev = run.trace.events
    n = 0
    for r in rows["release_row"].to_numpy():
        if r < 0:
            continue
        sym = run.trace.symbols.lookup(int(ev["ip"].iat[r]), int(ev["ts_ns"].iat[r]))
        n += sym is not None and sym.name == function
    return n


def traced(run: LtRun, torture_type: str, t0: int, t1: int) -> tuple[int, int]:
    """(writes, reads) tracedep saw of ``torture_type``'s lock(s) during one load."""
    a = run.acqs
    during = a[(a["ts_acquired"] >= t0) & (a["ts_acquired"] <= t1)]
    w_counts, reads = [], 0
    for name in LOCK_TYPES[torture_type]:
        mine = during[during["addr"] == _static(run, name, t0)]
        w = mine[mine["lock_type"] == WRITE_TYPE[torture_type]]
        if torture_type == "ww_mutex_lock":
            # a back-off releases inside torture_ww_mutex_lock(); the completed
            # writelock()'s release is elsewhere (torture_ww_mutex_unlock(), whose
            # last ww_mutex_unlock() is a tail call: its return address is the writer's)
            w_counts.append(len(w) - _releases_in(run, w, "torture_ww_mutex_lock"))
        else:
            w_counts.append(len(w))
        if torture_type in READ_TYPE:
            reads += int((mine["lock_type"] == READ_TYPE[torture_type]).sum())
    assert len(set(w_counts)) == 1, (torture_type, w_counts)  # each lock of the set, alike
    return w_counts[0], reads


# --- the tests --------------------------------------------------------------------------------


def test_every_type_ran(lt_run: LtRun) -> None:
    mods = {m["name"]: m for m in lt_run.manifest["modules"]}
    assert mods["locktorture"]["insmod_rc"] == [0] * len(lt_run.types), mods["locktorture"]
    assert [t.torture_type for t in lt_run.totals] == lt_run.types
    assert [ty for ty, _, _ in lt_run.loads] == lt_run.types
    for t in lt_run.totals:
        assert t.verdict == "SUCCESS" and t.fails == 0, t
        assert t.writes > 0, t
        assert (t.reads is not None) == (t.torture_type in READ_TYPE), t
    assert lt_run.manifest["lost"]["total"] == 0, lt_run.manifest["lost"]


def test_traced_counts_equal_locktortures(lt_run: LtRun) -> None:
    """Per type this kernel's locktorture has: (writes, reads), locktorture's and traced."""
    got, want = {}, {}
    for ty, t0, t1 in lt_run.loads:
        (total,) = [t for t in lt_run.totals if t.torture_type == ty]
        got[ty] = traced(lt_run, ty, t0, t1)
        want[ty] = (total.writes, total.reads or 0)
        assert ty not in READ_TYPE or total.reads, (ty, "no reader ran")
    print("\n".join(f"{ty}: locktorture {want[ty]} traced {got[ty]}" for ty in want))
    assert got == want
    assert sorted(got) == sorted(lt_run.types)


def test_class_stats_count_the_tortured_locks(lt_run: LtRun) -> None:
    """analysis.json's per-class acquisitions (the report's table) agree: a static lock is
    one class over all loads, so each is the sum over the types that torture it."""
    stats = {c["lock_class"]: c for c in
             json.loads((lt_run.run_dir / "analysis.json").read_text())["classes"]
             if c["driver"] == "locktorture"}
    want: dict[str, int] = {}
    for t in lt_run.totals:
        if t.torture_type == "rtmutex_lock":
            continue  # test_rtmutex_class_is_the_rt_mutex
        seen = t.reads or 0
        for name in LOCK_TYPES[t.torture_type]:
            want[name] = want.get(name, 0) + t.writes + seen
    got = {name: stats[name]["acquisitions"] if name in stats else 0 for name in want}
    assert got == want


def test_rtmutex_class_is_the_rt_mutex(lt_run: LtRun) -> None:
    stats = {c["lock_class"]: c for c in
             json.loads((lt_run.run_dir / "analysis.json").read_text())["classes"]
             if c["driver"] == "locktorture"}
    (total,) = [t for t in lt_run.totals if t.torture_type == "rtmutex_lock"]
    findings = json.loads((lt_run.run_dir / "findings.json").read_text())
    assert [f["message"] for f in findings if f["driver"] == "locktorture"] == []
    assert stats["torture_rtmutex"]["acquisitions"] == total.writes


def test_percpu_readers_are_seen_in_the_readers_context(lt_run: LtRun) -> None:
    """A reader's probe sits mid-function, inside locktorture's reader kthread, which
    holds nothing: after calibration each reader event says process context, IRQs on,
    preempt depth 0.  On x86_64 the probe runs from the int3 handler (NMI context,
    IRQs off, the preempt nibble one lower): uncorrected, a reader was "in hardirq
    context" (tracer.calibration)."""
    cal = lt_run.manifest["calibration"]
    assert "kprobe_mid" in cal["measured"], cal
    assert cal["regime_mismatch"] == 0 and cal["uncalibrated_rows"] == 0, cal
    if ARCH == "x86_64":
        assert lt_run.manifest["guest"]["kprobes_optimization"] == "0"
        assert cal["measured"]["kprobe_mid"]["nmi"], cal  # the int3 path, measured
        assert cal["applied"]["kprobe_mid"]["exception_context"], cal
        assert cal["applied"]["kprobe_mid"]["irqs"] == "fetched", cal
    ev = lt_run.trace.events
    rd = ev[(ev["kind"] == "lock_acquire") & (ev["lock_type"] == "rwsem-r")
            & ev["event"].astype(str).str.contains(INLINE_SUFFIX, regex=False)]
    (total,) = [t for t in lt_run.totals if t.torture_type == "percpu_rwsem_lock"]
    assert len(rd) == total.reads, (len(rd), total.reads)
    ctx = rd[["in_hardirq", "in_softirq", "in_nmi", "irqs_off"]].to_numpy()
    assert not ctx.any(), rd[ctx.any(axis=1)].head()
    assert (rd["preempt_depth"] == 0).all(), rd["preempt_depth"].value_counts()
