"""End to end, on a real guest: the bundled drivers' run, and a driver never seen before.

Boots: one ``tracedep run`` of the bundled drivers (the session fixture
``bundled_run``, shared with every test that needs it) and one ``tracedep
trace`` of a driver written below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import BundledRun, Result, check_expected, expectations, run_tracedep

from tracedep.analysis.trace import Trace

pytestmark = pytest.mark.guest

EXPECT = expectations()
BUG_MODULES = sorted(m for m, e in EXPECT.items() if e["findings"])
CLEAN_MODULES = sorted(m for m, e in EXPECT.items() if not e["findings"])
GFP_KERNEL = 0xCC0
GFP_DIRECT_RECLAIM = 0x400


# --- helpers ----------------------------------------------------------------------------------


def module_rows(trace: Trace, module: str) -> np.ndarray:
    """Boolean mask: events whose call site is in ``module``'s code at that time."""
    ev = trace.events
    syms = trace.symbols
    return np.array([syms.module_of(int(ip), int(t)) == module
                     for ip, t in zip(ev["ip"].to_numpy(), ev["ts_ns"].to_numpy(),
                                      strict=True)], dtype=bool)


def functions_of(trace: Trace, rows: pd.DataFrame) -> list[str]:
    return [s.name if (s := trace.symbols.lookup(int(ip), int(t))) else "?"
            for ip, t in zip(rows["ip"], rows["ts_ns"], strict=True)]


def static_address(trace: Trace, module: str, name: str) -> int:
    for span in trace.symbols.modules:
        if span.name == module and span.table is not None:
            addrs = span.table.addresses_of(name)
            if addrs:
                return addrs[0]
    raise AssertionError(f"{module} has no symbol {name}")


# --- the bundled run --------------------------------------------------------------------------


def test_bundled_run_is_complete(bundled_run: BundledRun) -> None:
    m = bundled_run.manifest
    assert m["state"] == "complete", bundled_run.result.explain()
    assert m["ending"]["how"] == "poweroff"
    assert m["trace_complete"] is True
    assert m["workload"]["rc"] == 0
    assert "Traceback" not in bundled_run.result.stderr
    assert not bundled_run.result.errors, bundled_run.result.explain()
    for f in ("report.txt", "findings.json", "index.html", "control.log", "console.log",
              "kallsyms.gz"):
        assert (bundled_run.run_dir / f).is_file(), f


def test_every_bundled_module_loaded_and_located(bundled_run: BundledRun,
                                                 bundled_trace: Trace) -> None:
    """The manifest has each module's load address and sections; the trace agrees."""
    mods = {m["name"]: m for m in bundled_run.manifest["modules"]}
    assert set(EXPECT) <= set(mods)
    loads_in_trace = set(bundled_trace.events.loc[
        bundled_trace.events["event"] == "module/module_load", "func"].astype(str))
    for name in EXPECT:
        m = mods[name]
        assert m["loaded"], name
        assert m["insmod_rc"] == [0], (name, m["insmod_rc"])  # its init ran to the end
        (load,) = m["loads"]  # loaded once by the default workload
        base, secs = load["base"], load["sections"]
        assert base and load["size"] > 0, name
        # the core allocation starts with the module's code (.text, or .text.unlikely
        # when all of it is reached from __init only)
        assert base in (secs.get(".text"), secs.get(".text.unlikely")), (name, hex(base), secs)
        assert ".init.text" in secs and (".bss" in secs or ".data" in secs), (name, secs)
        assert all(0xFFFF_FFFF_C000_0000 <= a < 1 << 64 for a in secs.values()), (name, secs)
        assert name in loads_in_trace, f"no module_load event for {name}"
    # every module address in the trace resolves to a function of that module
    ev = bundled_trace.events
    rows = ev[module_rows(bundled_trace, "td_abba_bug")]
    assert len(rows) > 0
    # (module_init/module_exit functions go by their aliases init_module/cleanup_module)
    assert all(f.startswith("td_") or f in ("init_module", "cleanup_module")
               for f in functions_of(bundled_trace, rows)), set(functions_of(bundled_trace, rows))


def test_no_events_lost_in_transport(bundled_run: BundledRun, bundled_trace: Trace) -> None:
    """Nothing lost between the guest's ring buffer and the decoded frame."""
    lost = bundled_run.manifest["lost"]
    assert lost["truncated"] is False
    for k in ("ftrace_overrun", "ftrace_commit_overrun", "ftrace_dropped", "ring_buffer_missed",
              "decoder_torn_pages"):
        assert lost[k] == 0, (k, lost[k])
    assert not lost["guest_stats_missing"]
    # every record the guest read reached the frame (stack records become the stack
    # table, the do_init_module rows the symbolizer's module sections)
    from tracedep.tracer import module_sections

    counts = bundled_run.manifest["event_counts"]
    set_aside = counts.get("ftrace/kernel_stack", 0) + sum(
        n for ev, n in counts.items()
        if module_sections.parse_event(ev.partition("/")[2]) is not None)
    assert lost["read_events_guest"] == lost["decoded_events"] + set_aside
    assert lost["decoded_events"] == len(bundled_trace.events)


def test_no_events_lost(bundled_run: BundledRun) -> None:
    lost = bundled_run.manifest["lost"]
    assert lost["total"] == 0, {k: v for k, v in lost.items() if k != "per_cpu"}


def test_missed_probe_hits_are_counted_and_reported(bundled_run: BundledRun) -> None:
    """kprobes drops a probe that fires while another probe's handler runs on the same CPU
    (an interrupt arriving during a handler): the run must count those per probe, keep
    them apart from lost.total, and say so in the report whenever there are any."""
    lost = bundled_run.manifest["lost"]
    by_probe = lost["kprobe_missed_by_probe"]
    assert lost["kprobe_missed"] == sum(by_probe.values())
    assert all(v > 0 for v in by_probe.values())
    report = (bundled_run.run_dir / "report.txt").read_text()
    if lost["kprobe_missed"]:
        assert f"{lost['kprobe_missed']} probe hits were missed" in report


def test_planted_gfp_kernel_allocation_under_spinlock(bundled_trace: Trace) -> None:
    """td_alloc_spin_bug's kmalloc(GFP_KERNEL) under ring->lock is in the trace as planted."""
    ev = bundled_trace.events
    mine = ev[module_rows(bundled_trace, "td_alloc_spin_bug")]
    allocs = mine[(mine["kind"] == "alloc") & ((mine["gfp"] & GFP_KERNEL) == GFP_KERNEL)]
    atomic = allocs[allocs["preempt_depth"] > 0]
    assert len(atomic) >= EXPECT["td_alloc_spin_bug"]["findings"][0]["count_min"], (
        allocs[["ts_ns", "preempt_depth", "gfp", "bytes", "func"]])
    # the spin lock it holds was taken, in the module, just before, by the same task
    for _, a in atomic.iterrows():
        before = mine[(mine["pid"] == a["pid"]) & (mine["ts_ns"] < a["ts_ns"])
                      & (mine["kind"] == "lock_acquire")]
        assert len(before) and before.iloc[-1]["lock_type"] == "spinlock"
    fns = set(functions_of(bundled_trace, atomic))
    sym = EXPECT["td_alloc_spin_bug"]["findings"][0]["symbols"]["td_ring_add_entry"]
    assert fns <= {"td_ring_add_entry", sym}, fns


def test_abba_paths_acquire_and_release(bundled_trace: Trace) -> None:
    """Both orders of td_abba_bug's two static locks, each acquire paired with its release."""
    ev = bundled_trace.events
    q = static_address(bundled_trace, "td_abba_bug", "td_xfer_queue_lock")
    s = static_address(bundled_trace, "td_abba_bug", "td_xfer_stats_lock")
    locks = ev[ev["lock_addr"].isin([q, s])
               & ev["kind"].isin(["lock_acquire", "lock_release"])]
    acq = locks[locks["kind"] == "lock_acquire"]
    assert set(functions_of(bundled_trace, acq)) <= {
        "td_xfer_probe_work_fn", "td_xfer_complete_work", "td_xfer_submit",
        "td_xfer_complete_one"}
    orders: dict[tuple[int, int], int] = {}
    for _pid, seq in locks.groupby("pid", sort=False):
        held: list[int] = []
        for kind, addr in zip(seq["kind"], seq["lock_addr"].tolist(), strict=True):
            if kind == "lock_acquire":
                if held:
                    orders[(held[-1], addr)] = orders.get((held[-1], addr), 0) + 1
                held.append(addr)
            else:
                assert addr in held, "a release without its acquire"
                held.remove(addr)
        assert not held, "an acquire without its release"
    assert orders.get((q, s), 0) >= 1 and orders.get((s, q), 0) >= 1, orders
    # releases too are made by the module (or tail-called from it)
    rel = locks[locks["kind"] == "lock_release"]
    assert module_rows(bundled_trace, "td_abba_bug")[rel.index].any()


@pytest.mark.parametrize("module", sorted(EXPECT))
def test_expected_findings(bundled_run: BundledRun, module: str) -> None:
    problems = check_expected(bundled_run.findings, module, heap_names=True)
    assert not problems, "\n".join(problems)


def test_no_findings_outside_the_bug_drivers(bundled_run: BundledRun) -> None:
    others = [f"{f['driver']}: {f['kind']}: {f['message']}" for f in bundled_run.findings
              if f["driver"] not in BUG_MODULES]
    assert not others, "\n".join(others)


# --- a driver never seen before -----------------------------------------------------------------

NOVEL_C = r"""
// SPDX-License-Identifier: GPL-2.0
/* Written by tracedep's test suite: a clean driver tracedep has never seen. */
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

struct td_novel_dev {
	spinlock_t lock;
	struct mutex cfg;
	int vals[8];
};

static struct td_novel_dev *td_novel;
static DEFINE_SPINLOCK(td_novel_global_lock);
static int td_novel_count;

static noinline void td_novel_store(struct td_novel_dev *d, int i)
{
	spin_lock(&d->lock);
	d->vals[i] = i * i;
	spin_unlock(&d->lock);
}

static noinline int td_novel_setup(void)
{
	int i;

	td_novel = kzalloc(sizeof(*td_novel), GFP_KERNEL);
	if (!td_novel)
		return -ENOMEM;
	spin_lock_init(&td_novel->lock);
	mutex_init(&td_novel->cfg);
	mutex_lock(&td_novel->cfg);
	for (i = 0; i < 8; i++)
		td_novel_store(td_novel, i);
	mutex_unlock(&td_novel->cfg);
	msleep(2);
	spin_lock_irq(&td_novel_global_lock);
	td_novel_count++;
	spin_unlock_irq(&td_novel_global_lock);
	return 0;
}

static int __init td_novel_init(void)
{
	return td_novel_setup();
}

static void __exit td_novel_exit(void)
{
	kfree(td_novel);
}

module_init(td_novel_init);
module_exit(td_novel_exit);
MODULE_LICENSE("GPL");
"""

# plain insmod/rmmod, as a user's own script would do it
NOVEL_WORKLOAD = """\
insmod /lib/modules/tracedep/td_novel.ko
sleep 0.3
rmmod td_novel
"""


@pytest.fixture(scope="module")
def novel_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    root = tmp_path_factory.mktemp("novel")
    src = root / "td_novel"
    src.mkdir()
    (src / "td_novel.c").write_text(NOVEL_C)
    (src / "Kbuild").write_text("obj-m := td_novel.o\n")
    wl = root / "workload.sh"
    wl.write_text(NOVEL_WORKLOAD)
    out = root / "run"
    res = run_tracedep("trace", "--module-src", src, "--workload", wl, "--smp", "1",
                       "--out", out)
    assert res.rc == 0, res.explain()
    return out, res


def test_novel_driver_is_traced(novel_run: tuple[Path, Result]) -> None:
    from tracedep.analysis.trace import load

    out, res = novel_run
    assert "Traceback" not in res.stderr
    info = json.loads((out / "manifest.json").read_text())
    (mod,) = info["modules"]
    assert mod["name"] == "td_novel" and mod["loaded"], mod
    trace = load(out)
    ev = trace.events
    mine = ev[module_rows(trace, "td_novel")].copy()
    mine["function"] = functions_of(trace, mine)

    def one(kind: str, fn: str, **cols: Any) -> pd.DataFrame:
        sel = mine[(mine["kind"] == kind) & (mine["function"] == fn)]
        for c, v in cols.items():
            sel = sel[sel[c] == v]
        assert len(sel), (kind, fn, cols, mine[["kind", "event", "function"]])
        return sel

    spins = one("lock_acquire", "td_novel_store", lock_type="spinlock")
    assert len(spins) == 8
    heap = spins["lock_addr"].unique()
    assert len(heap) == 1 and trace.symbols.lookup(int(heap[0])) is None  # in the kzalloc'ed dev
    # each acquire is released (by address: spin_unlock may be a tail call)
    rel = ev[(ev["kind"] == "lock_release") & (ev["lock_addr"] == heap[0])]
    assert len(rel) == 8
    one("lock_acquire", "td_novel_setup", lock_type="mutex")
    glob = one("lock_acquire", "td_novel_setup", lock_flags="irq")
    assert set(glob["lock_addr"]) == {static_address(trace, "td_novel", "td_novel_global_lock")}
    allocs = one("alloc", "td_novel_setup")
    assert all(allocs["gfp"] & GFP_KERNEL == GFP_KERNEL)
    assert int(allocs["ptr"].iloc[0]) <= int(heap[0]) < int(allocs["ptr"].iloc[0]) + int(
        allocs["bytes"].iloc[0])
    sleeps = one("sleep_call", "td_novel_setup", func="msleep")
    assert (sleeps["preempt_depth"] == 0).all()


def test_novel_driver_has_no_findings(novel_run: tuple[Path, Result], tmp_path: Path) -> None:
    out, _ = novel_run
    res = run_tracedep("analyze", out, "--no-dwarf", "--out", tmp_path / "an")
    findings = json.loads((tmp_path / "an" / "findings.json").read_text())
    assert res.rc == 0, [f"{f['driver']}: {f['message']}" for f in findings]
