"""arm64 guests: inlined-lock discovery from DWARF, calibration, and one real arm64 run.

Unit tests build a small driver for arm64 at test time (the arm64 headers
extracted from Debian's packages, the amd64 kbuild, aarch64-linux-gnu-gcc) and
check what ``tracer.inline_locks`` finds in it.  The guest test boots the
arm64 kernel ONCE (``arm64_run``, session-scoped) with the bundled drivers.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DRIVERS,
    BundledRun,
    build_c_module,
    check_expected,
    expectations,
    run_tracedep,
)

from tracedep.tracer.inline_locks import discover_module, inline_probes
from tracedep.tracer.inline_sites import _a64_in_atomic_context
from tracedep.tracer.insn_decode import arm64_probe_ok
from tracedep.tracer.ko_image import KoImage
from tracedep.tracer.probes import LOCK_FUNCS, ProbeDef, parse_event_name

BUNDLED_X86 = Path(__file__).parents[1] / "data" / "analysis" / "bundled" / "findings.json"

DRIVER_C = r"""
// SPDX-License-Identifier: GPL-2.0
/* Written by tracedep's tests: every kind of inlined lock, on several paths. */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

struct td_inl_dev {
	int pad;
	spinlock_t lock;
	rwlock_t rw;
	int vals[8];
};

static DEFINE_SPINLOCK(td_inl_static_lock);
static struct td_inl_dev *td_inl;
static int td_inl_count;

static noinline int td_inl_static(int n)
{
	int r;

	spin_lock(&td_inl_static_lock);
	td_inl_count += n;
	if (td_inl_count > 100) {
		td_inl_count = 0;
		spin_unlock(&td_inl_static_lock);
		return 1;
	}
	r = td_inl_count;
	spin_unlock(&td_inl_static_lock);
	return r;
}

static noinline void td_inl_heap(struct td_inl_dev *d, int i)
{
	unsigned long flags;

	spin_lock_irqsave(&d->lock, flags);
	d->vals[i & 7] = i;
	spin_unlock_irqrestore(&d->lock, flags);
	read_lock(&d->rw);
	i = d->vals[0];
	read_unlock(&d->rw);
	write_lock_bh(&d->rw);
	d->vals[1] = i;
	write_unlock_bh(&d->rw);
}

static noinline int td_inl_try(struct td_inl_dev *d)
{
	if (!spin_trylock(&d->lock))
		return 0;
	d->vals[2]++;
	spin_unlock(&d->lock);
	return 1;
}

static int __init td_inl_init(void)
{
	td_inl = kzalloc(sizeof(*td_inl), GFP_KERNEL);
	if (!td_inl)
		return -ENOMEM;
	spin_lock_init(&td_inl->lock);
	rwlock_init(&td_inl->rw);
	td_inl_heap(td_inl, td_inl_static(3));
	return td_inl_try(td_inl) ? 0 : -EBUSY;
}

static void __exit td_inl_exit(void)
{
	kfree(td_inl);
}

module_init(td_inl_init);
module_exit(td_inl_exit);
MODULE_LICENSE("GPL");
"""


def _build(tmp: Path, arch: str) -> Path:
    return build_c_module(tmp, "td_inl", DRIVER_C, arch)


@pytest.fixture(scope="module")
def arm64_ko(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("inl"), "arm64")


@pytest.fixture(scope="module")
def arm64_sites(arm64_ko: Path) -> Any:
    return discover_module(arm64_ko, "td_inl")


def _by(sites: Any, function: str) -> list[Any]:
    # GCC may specialise a function: td_inl_static.constprop.0
    return [s for s in sites.sites if s.function.split(".")[0] == function]


def test_every_inlined_lock_is_found(arm64_sites: Any) -> None:
    funcs = sorted({(s.function.split(".")[0], s.func) for s in arm64_sites.sites})
    assert ("td_inl_heap", "_raw_spin_lock_irqsave") in funcs
    assert ("td_inl_heap", "_raw_spin_unlock_irqrestore") in funcs
    assert ("td_inl_heap", "_raw_read_lock") in funcs
    assert ("td_inl_heap", "_raw_read_unlock") in funcs
    assert ("td_inl_heap", "_raw_write_lock_bh") in funcs
    assert ("td_inl_heap", "_raw_write_unlock_bh") in funcs
    assert ("td_inl_static", "_raw_spin_lock") in funcs
    assert ("td_inl_static", "_raw_spin_unlock") in funcs
    assert all(s.func in LOCK_FUNCS for s in arm64_sites.sites)
    assert not arm64_sites.skipped, arm64_sites.skipped


def test_an_unlock_on_two_paths_is_probed_on_both(arm64_sites: Any) -> None:
    unlocks = [s for s in _by(arm64_sites, "td_inl_static") if s.func == "_raw_spin_unlock"]
    assert len(unlocks) == 2, unlocks
    locks = [s for s in _by(arm64_sites, "td_inl_static") if s.func == "_raw_spin_lock"]
    assert len(locks) == 1, locks


def test_static_lock_is_named_by_its_symbol(arm64_sites: Any) -> None:
    for s in _by(arm64_sites, "td_inl_static"):
        assert s.lock.kind == "static"
        assert s.lock.symbol == "td_inl_static_lock" and s.lock.sym_offset == 0
        assert s.lock.section in (".bss", ".data")


def test_heap_lock_is_a_register_and_its_offset(arm64_sites: Any) -> None:
    irqsave = [s for s in _by(arm64_sites, "td_inl_heap")
               if s.func in ("_raw_spin_lock_irqsave", "_raw_spin_unlock_irqrestore")]
    for s in irqsave:
        assert s.lock.kind in ("reg", "mem"), s
        assert s.lock.fetch.startswith(("%x", "+")), s
    # spinlock_t follows an int: the lock is at offset 4 of what the register holds,
    # unless the compiler computed &d->lock into a register of its own
    assert {s.lock.addend for s in irqsave} <= {0, 4}


def test_probe_addresses_are_accepted_by_arm64_kprobes(arm64_ko: Path, arm64_sites: Any
                                                       ) -> None:
    mod = KoImage(arm64_ko, "td_inl")
    for s in arm64_sites.sites:
        idx = mod.elf.by_name[s.section].index
        insn = mod.insn(idx, s.sec_offset)
        assert insn is not None and arm64_probe_ok(insn), (s, hex(insn or 0))
        assert not _a64_in_atomic_context(mod, idx, s.sec_offset), s
        assert (idx, s.sec_offset) not in mod.jump_labels, s


def test_trylock_probe_reads_the_lock_word(arm64_sites: Any) -> None:
    tries = [s for s in arm64_sites.sites if s.func == "_raw_spin_trylock"]
    probes = inline_probes(tries, "pst=%pstate:x64")
    for p in probes:
        assert " val=" in p.definition and ":u32" in p.definition, p.definition


def test_probe_definitions_name_the_lock_function(arm64_sites: Any) -> None:
    for p in inline_probes(arm64_sites.sites, "pst=%pstate:x64"):
        role, func = parse_event_name(f"tracedep/{p.event}") or ("", "")
        assert func == p.site.func and role in ("lk", "ul"), p.event
        assert p.definition.startswith(f"p:tracedep/{p.event} td_inl:{p.site.function}+0x")
        assert p.definition.endswith("pst=%pstate:x64")
        assert len(p.event) < 64


def test_x86_locks_are_calls_not_inlined(tmp_path: Path) -> None:
    """On Debian's x86_64 kernel spin_lock() calls _raw_spin_lock: no inline probes."""
    res = discover_module(_build(tmp_path, "x86_64"), "td_inl")
    assert res.sites == [] and res.out_of_line >= 4, res


def test_event_names_of_x86_probes_are_unchanged() -> None:
    assert parse_event_name("tracedep/lk__raw_spin_lock") == ("lk", "_raw_spin_lock")
    assert parse_event_name("tracedep/lr_mutex_lock") == ("lr", "mutex_lock")
    assert parse_event_name("tracedep/ul__raw_spin_unlock__inl12") == ("ul", "_raw_spin_unlock")
    assert parse_event_name("tracedep/cal_kprobe") is None


@pytest.mark.parametrize(("insn", "ok"), [
    (0xD503201F, True),   # nop
    (0xD503233F, True),   # paciasp
    (0xD50323BF, False),  # autiasp
    (0xD53B4220, False),  # mrs x0, daif
    (0xD50342DF, False),  # msr daifset, #2
    (0x089FFC1B, False),  # stlrb w27, [x0]
    (0x88E27C64, False),  # casa w2, w4, [x3]
    (0x14000040, True),   # b (simulated)
    (0x91002260, True),   # add x0, x19, #0x8
])
def test_arm64_steppable_instructions(insn: int, ok: bool) -> None:
    assert arm64_probe_ok(insn) is ok


# --- one real arm64 run of the bundled drivers -------------------------------------------------

EXPECT = expectations()
BUG_MODULES = sorted(m for m, e in EXPECT.items() if e["findings"])
# Findings that cannot exist on Debian's arm64 kernel, whatever the tracer does: the
# kernel has no CONFIG_PREEMPT_COUNT (PREEMPT_VOLUNTARY without PREEMPT_DYNAMIC), so
# get_cpu()/preempt_disable() compile to a compiler barrier and leave nothing in the
# binary to see.  The calibration detects this (preempt_count_tracks_spinlocks).
NEEDS_PREEMPT_COUNT = frozenset(
    m for m, e in EXPECT.items()
    if any(f["kind"] == "sleep-in-atomic" and f.get("context") == ["preempt"]
           for f in e["findings"]))


@pytest.fixture(scope="session")
def arm64_run(tmp_path_factory: pytest.TempPathFactory) -> BundledRun:
    out = tmp_path_factory.mktemp("arm64") / "run"
    res = run_tracedep("run", "--arch", "arm64", "--out", out)
    assert res.rc == 1, res.explain()
    return BundledRun(out, res)


@pytest.mark.guest
def test_arm64_run_is_complete_and_calibrated(arm64_run: BundledRun) -> None:
    m = arm64_run.manifest
    assert m["state"] == "complete" and m["arch"] == "arm64", arm64_run.result.explain()
    assert m["lost"]["total"] == 0, m["lost"]
    cal = m["calibration"]
    # a kprobe's record says IRQs off (BRK) where they are on; PSTATE says the truth
    assert cal["measured"]["kprobe"]["irqs_off"] is True
    assert cal["measured"]["kprobe"]["irq_state_off"] is False
    assert cal["applied"]["kprobe"]["irqs"] == "fetched"
    assert cal["preempt_count_tracks_spinlocks"] is False
    assert m["kprobe_irqs_unknown"] is False and m["machine_kprobe_irqs_masked"] is True


@pytest.mark.guest
def test_arm64_inline_lock_probes_all_placed(arm64_run: BundledRun) -> None:
    m = arm64_run.manifest
    sites = m["inline_sites"]
    assert len(sites) > 100
    failed = [d for d in m["probes"]["failed"] if "__inl" in d]
    assert not failed, failed
    # the kernel registers a module's probes when it loads, or refuses them silently:
    # every lock site of a driver whose code ran must have fired
    ctl = (arm64_run.run_dir / "control.log").read_text(errors="replace")
    prof = ctl.split("@@TD file /sys/kernel/tracing/kprobe_profile")[-1]
    hits = {p[0]: int(p[1]) for ln in prof.splitlines() if len(p := ln.split()) == 3
            and p[1].isdigit()}
    mods_hit = {s["module"] for ev, s in sites.items() if hits.get(ev)}
    with_sites = {s["module"] for s in sites.values()}
    assert with_sites == mods_hit, sorted(with_sites - mods_hit)


@pytest.mark.guest
@pytest.mark.parametrize("module", sorted(EXPECT))
def test_arm64_expected_findings(arm64_run: BundledRun, module: str) -> None:
    if module in NEEDS_PREEMPT_COUNT:
        mine = [f for f in arm64_run.findings if f["driver"] == module]
        assert not mine, "found without a preempt count? " + json.dumps(mine)[:500]
        return
    problems = check_expected(arm64_run.findings, module, heap_names=True)
    if module in ARM64_SOMETIMES_MISSED and problems and not any(
            f["driver"] == module for f in arm64_run.findings):
        # say what the guest said, so the next occurrence explains itself
        rcs = {m["name"]: m.get("insmod_rc") for m in arm64_run.manifest["modules"]}
        console = (arm64_run.run_dir / "console.log").read_text(errors="replace")
        said = [ln for ln in console.splitlines() if module in ln][-3:]
        pytest.xfail(f"{ARM64_SOMETIMES_MISSED[module]}; insmod exit codes "
                     f"{rcs.get(module)}; console: {said}")
    assert not problems, "\n".join(problems)


# Known, open (issue 6): in some arm64 runs the timer callback's inlined spin_lock
# leaves no event at all (no softirq-context lock event of the module, no kprobe
# miss counted), so the softirq inversion cannot be seen.  Cause not found yet.
# Only a complete miss is excused; a wrong finding still fails.
ARM64_SOMETIMES_MISSED = {
    "td_softirq_bug": "arm64: timer-callback lock sometimes unseen (issue 6, open)",
}


# arm64's entry code calls schedule() with IRQs masked on purpose
# (arch/arm64/kernel/signal.c, do_notify_resume(): local_daif_restore(DAIF_PROCCTX_NOIRQ)
# then schedule()); x86 enables IRQs first.  A known core-kernel difference, listed here
# rather than hidden: it is the only vmlinux finding allowed.
ARM64_KNOWN_CORE = ("schedule() may sleep, called from do_notify_resume() with IRQs disabled",)


@pytest.mark.guest
def test_arm64_nothing_outside_the_bug_drivers(arm64_run: BundledRun) -> None:
    others = [f"{f['driver']}: {f['kind']}: {f['message']}" for f in arm64_run.findings
              if f["driver"] not in BUG_MODULES and f["message"] not in ARM64_KNOWN_CORE]
    assert not others, "\n".join(others)


@pytest.mark.guest
def test_arm64_signatures_equal_x86_64(arm64_run: BundledRun) -> None:
    """Same driver, same finding: the signature does not depend on the architecture."""
    x86 = json.loads(BUNDLED_X86.read_text())
    mine: dict[tuple[str, str], set[str]] = {}
    for f in arm64_run.findings:
        mine.setdefault((f["driver"], f["kind"]), set()).add(f["signature"])
    theirs = {(f["driver"], f["kind"]): f["signature"] for f in x86
              if f["driver"] in EXPECT and f["driver"] not in NEEDS_PREEMPT_COUNT}
    missing = sorted(set(theirs) - set(mine))
    differ = sorted(k for k in theirs if k in mine and theirs[k] not in mine[k])
    excused = [k for k in missing if k[0] in ARM64_SOMETIMES_MISSED]
    if excused and not differ and missing == excused:
        pytest.xfail(f"{excused}: " + "; ".join(ARM64_SOMETIMES_MISSED[k[0]] for k in excused))
    assert not missing and not differ, textwrap.dedent(f"""
        missing on arm64: {missing}
        different signatures: {[(k, theirs[k], mine[k]) for k in differ]}""")


def _page(findings: list[dict[str, Any]], driver: str) -> list[tuple[Any, ...]]:
    """What a driver's findings page says, less what differs between any two runs
    (counts, times, pids, addresses) and the core kernel's own frames (arch code):
    each finding's kind, signature, message and locks, and for each witness its role
    and the driver's frames (function, source file, line), inlined ones included."""
    def own(fr: dict[str, Any]) -> bool:
        return bool(fr.get("file")) and f"/{driver}/" in fr["file"]

    return [(f["kind"], f["signature"], f["message"], tuple(f["locks"]),
             tuple((s["role"], tuple((fr["function"], Path(fr["file"]).name, fr["line"])
                                     for fr in s["frames"] if own(fr)))
                   for s in f["sites"]))
            for f in sorted(findings, key=lambda f: f["signature"]) if f["driver"] == driver]


@pytest.mark.guest
def test_arm64_driver_pages_equal_x86_64(arm64_run: BundledRun) -> None:
    """The issue's bar: the same driver, run on both architectures, yields the same
    findings page (witness stacks down to the driver's source lines)."""
    x86 = json.loads(BUNDLED_X86.read_text())
    differ = []
    for driver in sorted(EXPECT):
        if driver in NEEDS_PREEMPT_COUNT:
            continue
        mine, theirs = _page(arm64_run.findings, driver), _page(x86, driver)
        if not mine and theirs and driver in ARM64_SOMETIMES_MISSED:
            continue  # excused (and reported) by test_arm64_expected_findings
        if mine != theirs:
            differ.append(f"{driver}:\n  arm64:  {mine}\n  x86_64: {theirs}")
    assert not differ, "\n".join(differ)


def test_bundled_drivers_exist() -> None:
    assert DRIVERS.is_dir() and EXPECT


def _expr(mod: KoImage, code: bytes) -> list[Any]:
    return list(mod.expr.parse_expr(list(code)))


def test_a_lock_behind_a_static_pointer_is_fetched_through_its_symbol(arm64_ko: Path) -> None:
    """``DW_OP_addr X; DW_OP_deref; DW_OP_plus_uconst N; DW_OP_stack_value`` (issue 11):
    the lock is *(X) + N, X being the module's ``static struct td_inl_dev *td_inl``.
    The expressions are parsed by pyelftools against the built module."""
    import struct

    from tracedep.tracer.inline_sites import _lock_arg

    mod = KoImage(arm64_ko, "td_inl")
    x = next(mod.bases[i] + v for i, objs in mod.objects.items() for v, _, n in objs
             if n == "td_inl")
    addr = b"\x03" + struct.pack("<Q", x)
    deref_plus = _lock_arg(mod, _expr(mod, addr + b"\x06\x23\x04\x9f"))
    assert not isinstance(deref_plus, str), deref_plus
    assert (deref_plus.kind, deref_plus.fetch, deref_plus.addend) == ("mem", "@td_inl:td_inl", 4)
    assert deref_plus.word_fetch("td_inl") == "+4(@td_inl:td_inl)"
    deref = _lock_arg(mod, _expr(mod, addr + b"\x06\x9f"))
    assert not isinstance(deref, str) and (deref.fetch, deref.addend) == ("@td_inl:td_inl", 0)
    # the argument itself stored in the pointer variable: the same fetch
    stored = _lock_arg(mod, _expr(mod, addr))
    assert not isinstance(stored, str) and (stored.kind, stored.fetch) == ("mem", "@td_inl:td_inl")
    # a probe definition that the kernel parses: memory at the module's symbol
    site = next(s for s in discover_module(arm64_ko, "td_inl").sites
                if s.func == "_raw_spin_unlock_irqrestore")
    from dataclasses import replace

    p = inline_probes([replace(site, lock=deref_plus)], "pst=%pstate:x64")[0]
    assert " lock=@td_inl:td_inl:x64 " in p.definition, p.definition
    # what still cannot be fetched says why
    nowhere = _lock_arg(mod, _expr(mod, b"\x03" + struct.pack("<Q", 0xdead0000) + b"\x06\x9f"))
    assert nowhere == "static pointer outside the module"
    odd = _lock_arg(mod, _expr(mod, addr + b"\x06\x06\x9f"))
    assert odd == "expression DW_OP_addr DW_OP_deref DW_OP_deref DW_OP_stack_value"


# A lock reached through a module's static pointer: GCC describes the lock argument
# of spin_lock(&td_sp->lock) as DW_OP_addr td_sp; DW_OP_deref; DW_OP_plus_uconst 4;
# DW_OP_stack_value on 6.1, and gives the inlined spin_unlock() no location at all
# (what issue 11 found as skipped in a real driver).
STATIC_PTR_C = r"""// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
struct td_sp_dev { int pad; spinlock_t lock; int vals[8]; };
static struct td_sp_dev *td_sp;
static int td_sp_count;
static noinline int td_sp_split(struct td_sp_dev *d, int n)
{
	spin_lock(&d->lock);
	d->vals[2] += n;
	spin_unlock(&d->lock);
	if (n > 3)
		return td_sp_count++;
	return d->vals[3];
}
static noinline void td_sp_ptr(int n)
{
	spin_lock(&td_sp->lock);
	td_sp->vals[1] = n;
	spin_unlock(&td_sp->lock);
}
static noinline int td_sp_branch(struct td_sp_dev *d, int n)
{
	int v;

	spin_lock(&d->lock);
	v = d->vals[2];
	spin_unlock(&d->lock);
	if (v)
		return n + td_sp_count;
	return 7;
}
static noinline int td_sp_branch2(struct td_sp_dev *d, int n)
{
	spin_lock(&d->lock);
	d->vals[2] = n;
	spin_unlock(&d->lock);
	if (n)
		td_sp_count++;
	return 0;
}
static int __init td_sp_init(void)
{
	td_sp = kzalloc(sizeof(*td_sp), GFP_KERNEL);
	if (!td_sp)
		return -ENOMEM;
	spin_lock_init(&td_sp->lock);
	td_sp_ptr(td_sp_split(td_sp, 5) + td_sp_branch(td_sp, 2) + td_sp_branch2(td_sp, 3));
	return 0;
}
static void __exit td_sp_exit(void) { kfree(td_sp); }
module_init(td_sp_init);
module_exit(td_sp_exit);
MODULE_LICENSE("GPL");
"""


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def static_ptr_sites(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tracedep.common.machines import machine_for
    from tracedep.vm.kernel import fetch_debian_kernel
    from tracedep.vm.modules import build_module_dir

    src = tmp_path_factory.mktemp(f"sp{request.param}") / "td_sp"
    src.mkdir()
    (src / "td_sp.c").write_text(STATIC_PTR_C)
    (src / "Kbuild").write_text("obj-m += td_sp.o\n")
    machine = machine_for("arm64")
    [mod] = build_module_dir(src, fetch_debian_kernel(machine, series=request.param), machine)
    return request.param, discover_module(mod.ko, "td_sp")


def test_locks_behind_a_static_pointer_are_all_probed(static_ptr_sites: Any) -> None:
    series, found = static_ptr_sites
    assert not found.skipped, found.skipped
    ptr = _by(found, "td_sp_ptr")
    assert {s.func for s in ptr} == {"_raw_spin_lock", "_raw_spin_unlock"}, ptr
    for s in ptr:
        if s.lock.fetch.startswith("@"):  # through the pointer's symbol
            assert (s.lock.kind, s.lock.fetch, s.lock.addend) == ("mem", "@td_sp:td_sp", 4)
        else:
            assert s.lock.kind == "reg" and s.lock.fetch.startswith("%x"), s
    if series == "6.1":
        lock = next(s for s in ptr if s.func == "_raw_spin_lock")
        assert lock.lock.fetch == "@td_sp:td_sp", lock
    # an unlock with no DWARF location: its store-release's base register, right after it
    located = [s for s in ptr if s.func == "_raw_spin_unlock" and s.arg_level ==
               "atomic instruction"]
    assert located and all(s.shifted == 4 and s.lock.addend == 0 for s in located), ptr
    for p in inline_probes(ptr, "pst=%pstate:x64"):
        assert p.definition.startswith("p:tracedep/") and " lock=" in p.definition, p


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_a_lock_in_a_loop_is_probed_once_per_acquisition(series: str) -> None:
    """td_trylock_bug's spin_lock(&q->ring_lock) (line 68), in td_txq_reclaim_work()'s
    loop."""
    from tracedep.common.machines import machine_for
    from tracedep.vm.kernel import fetch_debian_kernel
    from tracedep.vm.modules import build_module_dir

    machine = machine_for("arm64")
    [mod] = build_module_dir(DRIVERS / "td_trylock_bug",
                             fetch_debian_kernel(machine, series=series), machine)
    found = discover_module(mod.ko, "td_trylock_bug")
    assert not [s for s in found.skipped if s["call"] == "line 68"], found.skipped
    ring = [s for s in found.sites if s.call_line == 68]
    assert ring and all(s.func == "_raw_spin_lock" for s in ring), ring
    assert all(s.lock.kind == "reg" and s.lock.fetch.startswith("%x") for s in ring), ring
    # td_txq_reclaim_work() takes it in a loop: GCC hoists the lock's constants above
    # the loop head, a part of the instance that runs straight into the loop's entry;
    # one probe per execution, else each acquisition counts twice (a false recursion,
    # and a lock left "held" for ever: what an arm64 run of this commit's parent showed)
    assert len(ring) == 1, ring


def test_arm64_stack_triggers_use_the_fetched_irq_state() -> None:
    """arm64's kprobe handlers run with IRQs masked (BRK), so every probe record says
    irqs-off: a stack trigger on that flag fired on every cond_resched() (a real 6.12
    arm64 run: 4.9 M stacks and 2 M events lost).  That one probe tests the
    interrupted context's PSTATE.I instead; the rarer may-sleep probes keep a stack
    always (no PREEMPT_COUNT: a held spinlock is invisible in the guest, and their
    stack ties __flush_work() to flush_work()'s caller); tracepoints keep their flag."""
    from tracedep.common.machines import machine_for
    from tracedep.tracer.probes import (
        ATOMIC_FILTER,
        MIGHT_SLEEP_FUNC,
        probe_atomic_filter,
        stack_triggers,
    )

    arm, x86 = machine_for("arm64"), machine_for("x86_64")
    assert probe_atomic_filter(x86) == ATOMIC_FILTER
    f = probe_atomic_filter(arm)
    assert "pst & 0x80" in f and "common_flags & 0x98" in f and "0x99" not in f
    defs = [ProbeDef("sl_msleep", "msleep", "sl", "p:tracedep/sl_msleep msleep"),
            ProbeDef(f"sl_{MIGHT_SLEEP_FUNC}", MIGHT_SLEEP_FUNC, "sl", "p:…")]
    trig = stack_triggers(defs, machine=arm)
    assert trig[0] == f"tracedep/sl_msleep {ATOMIC_FILTER}"
    assert trig[1] == f"tracedep/sl_{MIGHT_SLEEP_FUNC} {f}"
    on_x86 = stack_triggers(defs, machine=x86)[:2]
    assert on_x86 == [f"tracedep/sl_msleep {ATOMIC_FILTER}",
                      f"tracedep/sl_{MIGHT_SLEEP_FUNC} {ATOMIC_FILTER}"]
    assert all("pst" not in t for t in trig[2:])  # kmem tracepoints fetch no pst
