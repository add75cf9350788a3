"""Lock classes from lock initializers and inode re-keying (tracer.lock_init, analysis.classes).

Recorded data (tests/data/traces/classes, README.md there says how it was made):

* ``raw/``: one CPU's ring-buffer pages around td_rwsem_recursive_bug's load, as
  the guest sent them, with ``li_``/``lc_`` records;
* ``events/``: a sample of a real run's initialized and inode locks, their
  lock_init rows and the allocations and frees of the objects holding them.

The struct offsets the inode probes use are checked against pahole's reading of a
module's DWARF from the suite kernel's -dbg package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recorded_fixture import load_fixture

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.trace import Trace
from tracedep.kimage.btf import read_btf
from tracedep.tracer.decode_stream import decode_run
from tracedep.tracer.lock_init import (
    INODE_DIR_KEY_NAME,
    INODE_KEY_NAME,
    LOCK_INITS,
    NAME_MAX,
    clean_name,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "traces" / "classes"


@pytest.fixture(scope="module")
def trace() -> Trace:
    return load_fixture(DATA / "events")


def _assign(t: Trace, ev: pd.DataFrame | None = None
            ) -> tuple[pd.DataFrame, np.ndarray, list[lock_classes.LockClass], np.ndarray]:
    ev = t.events if ev is None else ev
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    ids, table = lock_classes.assign(ev, t.symbols, rows)
    return ev, rows, table, ids


def _latest_init(ev: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """For each lock row, the latest lock_init row at its address before it (pandas)."""
    locks = pd.DataFrame({"row": rows, "ts": ev["ts_ns"].to_numpy()[rows],
                          "addr": ev["lock_addr"].to_numpy()[rows].astype(np.int64)})
    init = ev[ev["kind"] == "lock_init"]
    inits = pd.DataFrame({"init_row": init.index.to_numpy(), "ts": init["ts_ns"].to_numpy(),
                          "addr": init["lock_addr"].to_numpy().astype(np.int64),
                          "func": init["func"].astype(str).to_numpy(),
                          "name": init["lock_name"].astype(str).to_numpy()})
    m = pd.merge_asof(locks.sort_values("ts"), inits.sort_values("ts"), on="ts", by="addr",
                      allow_exact_matches=False, direction="backward")
    return m.set_index("row").loc[rows]


def _extent(allocs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each allocation, as uint64 (pandas would add in float64)."""
    ptr = allocs["ptr"].to_numpy().astype(np.uint64)
    return ptr, ptr + allocs["bytes"].to_numpy().astype(np.uint64)


# -- the probes' struct offsets ----------------------------------------------------


def test_btf_offsets_agree_with_dwarf() -> None:
    """BTF (what probe generation reads) and DWARF (pahole on an in-tree module of the
    same -dbg package) give the same member offsets."""
    from tracedep.common.cache import cache_root
    from tracedep.common.machines import machine_for
    from tracedep.vm.debug_packages import dbg_modules_dir, ensure_dbg_vmlinux
    from tracedep.vm.kernel import fetch_debian_kernel

    if shutil.which("pahole") is None:
        pytest.skip("pahole (dwarves) not installed: no DWARF oracle")
    k = fetch_debian_kernel(machine_for("x86_64"))
    assert k.packages is not None and k.packages.dbg is not None
    vmlinux = ensure_dbg_vmlinux(k.release, cache_root(), k.packages.dbg.version)
    ko = dbg_modules_dir(k.release, cache_root()) / "kernel/fs/binfmt_misc.ko"
    assert ko.is_file(), ko
    btf = read_btf(vmlinux)
    for struct, members in (("inode", ("i_mode", "i_sb", "i_rwsem")),
                            ("super_block", ("s_type",)), ("file_system_type", ("name",))):
        out = subprocess.run(["pahole", "-F", "dwarf", "--hex", "-C", struct, str(ko)],
                             capture_output=True, text=True, check=True).stdout
        for m in members:
            hit = re.search(rf"[\s*]{m};\s+/\*\s+(0x[0-9a-f]+|0)\s", out)
            assert hit, (struct, m, out[:400])
            assert btf.member_offset(struct, m) == int(hit.group(1), 16), (struct, m)


# -- the binary decoder ------------------------------------------------------------


def test_binary_decoder_reads_lock_init_records() -> None:
    d = decode_run(DATA / "raw")
    ev = d.events
    init = ev[ev["kind"] == "lock_init"]
    funcs = set(init["func"].astype(str))
    assert funcs & set(LOCK_INITS), funcs
    names = init["lock_name"].astype(str)
    assert (init["lock_addr"] != 0).all()
    assert all(len(n) <= NAME_MAX and all(" " <= c <= "~" for c in n) for n in names)
    # init_rwsem(&cs->cfg_rwsem) in the module: the name and a call site in its code
    mine = init[(names == "&cs->cfg_rwsem").to_numpy()]
    assert len(mine) >= 1 and set(mine["func"].astype(str)) == {"__init_rwsem"}
    assert (mine["key_addr"] != 0).all() and (mine["ip"] != 0).all()
    # every initializer names its lock: lockdep's names are C expressions
    assert (names != "").mean() > 0.95
    rekey = init[init["func"].astype(str).str.startswith("inode_init_always")]
    if len(rekey):
        assert (rekey["lock_name"].astype(str) != "").all()


def test_clean_name_bounds_guest_strings() -> None:
    assert clean_name(b"&q->sysfs_lock\0junk") == "&q->sysfs_lock"
    assert clean_name("(fault)") == ""
    s = clean_name("\x1b[31m" + "x" * 500)
    assert len(s) == NAME_MAX and s.startswith("?[31m") and s.endswith("~")


# -- classes -----------------------------------------------------------------------


def test_inode_locks_are_classed_by_file_system_type(trace: Trace) -> None:
    ev, rows, table, ids = _assign(trace)
    m = _latest_init(ev, rows)
    inode_rows = m["func"].fillna("").str.startswith(("inode_init_always", "__init_rwsem"))
    inode_cls = [table[c] for c in ids[inode_rows.to_numpy()] if c >= 0]
    kinds = {c.name for c in inode_cls if INODE_KEY_NAME in c.name or INODE_DIR_KEY_NAME
             in c.name}
    assert len({n.split(" [")[1] for n in kinds}) >= 2, kinds
    # no inode lock is left with the one heap class of every inode
    assert not any("alloc_inode" in table[c].name for c in ids if c >= 0)
    # two file system types never share a class
    by_key: dict[str, set[str]] = {}
    for c in table:
        if c.key.endswith((INODE_KEY_NAME, INODE_DIR_KEY_NAME)):
            by_key.setdefault(c.key, set()).add(c.name)
    assert all(len(v) == 1 for v in by_key.values())


def test_initialized_locks_take_lockdeps_name(trace: Trace) -> None:
    ev, rows, table, ids = _assign(trace)
    m = _latest_init(ev, rows)
    plain = m["func"].isin([f for f in LOCK_INITS]).to_numpy()
    checked = 0
    for i in np.nonzero(plain)[0].tolist():
        c = table[ids[i]]
        if c.origin != "init":
            continue  # freed since, or another lock type at that address
        if c.key.endswith((INODE_KEY_NAME, INODE_DIR_KEY_NAME)):
            # inode_init_always()'s init_rwsem(), re-keyed by the fs type right after
            assert m["name"].iloc[i] == "&inode->i_rwsem", (c, m.iloc[i])
            continue
        checked += 1
        assert c.name.split(" [")[0].split(" (")[0] == m["name"].iloc[i], (c, m.iloc[i])
        assert c.key.startswith("init:") and not re.search(r"0x[0-9a-f]{8,}", c.key), c.key
    assert checked >= 10


def test_a_free_ends_the_initializers_class(trace: Trace) -> None:
    """The same events with the holding object freed between init and lock (a row of
    the recording moved there): the lock is no longer the initializer's class."""
    ev, rows, table, ids = _assign(trace)
    m = _latest_init(ev, rows)
    allocs = ev[(ev["kind"] == "alloc") & (ev["ptr"] != 0)]
    lo, hi = _extent(allocs)
    for i in np.nonzero(m["func"].isin(list(LOCK_INITS)).to_numpy())[0].tolist():
        a, t = np.uint64(int(m["addr"].iloc[i]) & (2**64 - 1)), int(m["ts"].iloc[i])
        hold = allocs[(lo <= a) & (hi > a) & (allocs["ts_ns"].to_numpy() < t)]
        if table[ids[i]].origin == "init" and len(hold):
            break
    else:
        pytest.fail("no initialized heap lock in the recording")
    free = ev[ev["kind"] == "free"].iloc[[0]].copy()
    free["ptr"] = np.uint64(hold["ptr"].iloc[-1])
    free["ts_ns"] = t - 1
    ev2 = pd.concat([ev, free]).sort_values("ts_ns", kind="stable").reset_index(drop=True)
    ev2["kind"] = ev2["kind"].astype("category")
    _, rows2, table2, ids2 = _assign(trace, ev2)
    at = np.nonzero((ev2["lock_addr"].to_numpy()[rows2] == np.uint64(a))
                    & (ev2["ts_ns"].to_numpy()[rows2] == t))[0]
    assert len(at) and table2[ids2[at[0]]].origin != "init"
    assert table2[ids2[at[0]]].key != table[ids[i]].key


def test_init_class_only_for_its_lock_type(trace: Trace) -> None:
    """A spinlock event at an address a mutex initializer named is not that mutex."""
    ev, rows, table, ids = _assign(trace)
    m = _latest_init(ev, rows)
    sel = np.nonzero((m["func"] == "__mutex_init").to_numpy())[0]
    assert len(sel), "no __mutex_init'd lock in the recording"
    assert all(table[ids[i]].origin == "init" for i in sel)
    ev2 = ev.copy()
    lt = ev2["lock_type"].astype(str).to_numpy().copy()
    lt[rows[sel]] = "spinlock"
    ev2["lock_type"] = pd.Categorical(lt)
    _, rows2, table2, ids2 = _assign(trace, ev2)
    assert not any(table2[ids2[i]].origin == "init" for i in sel)


def test_heap_classes_are_keyed_by_call_site(trace: Trace) -> None:
    """Two allocation call sites of one function are two classes, even for a lock at
    the same offset (swapon's swap_info_struct and cluster_info were one class).  The
    recording has a function allocating lock-holding objects at two call sites; the
    locks of the first site's object are replayed in an object from the second."""
    ev, rows, table, ids = _assign(trace)
    sites: dict[tuple[str, str], dict[str, int]] = {}
    for c, k in enumerate(table):
        if k.origin == "heap":  # heap:<module>:<function>@<site>:<offset>
            _, mod, rest = k.key.split(":", 2)
            fn, _, site = rest.rpartition(":")[0].partition("@")
            sites.setdefault((mod, fn), {}).setdefault(site, c)
    two = next((v for v in sites.values() if len(v) > 1), None)
    assert two is not None, "no function with two allocation call sites in the recording"
    ca, cb = list(two.values())[:2]
    a_rows = rows[ids == ca]
    addr = int(ev["lock_addr"].iat[int(a_rows[0])])
    allocs = ev[(ev["kind"] == "alloc") & (ev["ptr"] != 0)]
    ptr, end = _extent(allocs)

    def holder(a: int, t: int) -> pd.Series:
        h = allocs[(ptr <= np.uint64(a)) & (end > np.uint64(a))
                   & (allocs["ts_ns"].to_numpy() < t)]
        return h.iloc[-1]

    ra = holder(addr, int(ev["ts_ns"].iat[int(a_rows[0])]))
    b_row = int(rows[ids == cb][0])
    rb = holder(int(ev["lock_addr"].iat[b_row]), int(ev["ts_ns"].iat[b_row]))
    off = addr - int(ra["ptr"])
    # an object from site B at a fresh address (past every recorded one), big enough
    base = int(end.max()) + 0x10000
    t0 = int(ev["ts_ns"].max()) + 1000
    new_alloc = ev.loc[[rb.name]].copy()
    new_alloc["ptr"] = np.uint64(base)
    new_alloc["bytes"] = max(int(rb["bytes"]), off + 64)
    new_alloc["ts_ns"] = t0
    locks = ev.loc[a_rows[:4]].copy()
    locks["lock_addr"] = np.uint64(base + off)
    locks["ts_ns"] = t0 + 1 + np.arange(len(locks))
    ev2 = pd.concat([ev, new_alloc, locks]).reset_index(drop=True)
    for col in ("kind", "event", "lock_type", "lock_flags", "func", "comm", "lock_name"):
        ev2[col] = ev2[col].astype(str).astype("category")
    _, rows2, table2, ids2 = _assign(trace, ev2)
    moved = ids2[np.isin(rows2, np.arange(len(ev), len(ev2)))]
    orig = table2[ids2[np.searchsorted(rows2, int(a_rows[0]))]]
    assert len(moved) and all(table2[c].origin == "heap" for c in moved)
    assert {table2[c].key for c in moved} != {orig.key}, orig.key
    # the same function and offset: the name tells the two sites apart
    assert {table2[c].name for c in moved} != {orig.name}


@pytest.mark.guest  # a discovery boot per arch (cached after the first)
def test_every_class_probe_fetches_the_irq_state_where_records_cannot_tell() -> None:
    """On arm64 a kprobe row without the interrupted context's IRQ state makes the
    decoder take every row's IRQ state as unknown (5 bundled IRQ bugs were lost): the
    class probes fetch it like the others.  On the suite kernel's own discovery."""
    from tracedep.common.machines import machine_for
    from tracedep.tracer.lock_init import class_probes
    from tracedep.tracer.probes import probe_definitions
    from tracedep.tracer.session import discover, probe_vmlinux
    from tracedep.vm.accel import choose_accel
    from tracedep.vm.kernel import fetch_debian_kernel

    for arch in ("arm64", "x86_64"):
        machine = machine_for(arch)
        kernel = fetch_debian_kernel(machine)
        disc = discover(machine, kernel, choose_accel(machine, kernel.image, "auto"))
        defs, info = class_probes(machine, disc, probe_vmlinux(kernel))
        assert {d.role for d in defs} == {"li", "lc"}, info
        assert info["inode_rekey"] and not str(info["inode_rekey"]).startswith("absent")
        base = [d for d in probe_definitions(machine, disc) if d.role == "lk"]
        for d in defs:
            fetch = machine.irq_state_fetch
            assert fetch in d.definition if fetch else "%pstate" not in d.definition
            assert d.definition.rsplit(" ", 1)[1].startswith("name=")  # the string last
        assert all(machine.irq_state_fetch in d.definition for d in base)
