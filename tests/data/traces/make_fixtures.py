"""Regenerate the recorded trace fixtures of the tests from real runs (README.md says how).

    .venv/bin/python tests/data/traces/make_fixtures.py tiny RUN_DIR
        crop a `tracedep trace` run of tests/data/drivers/td_tiny into tiny/
    .venv/bin/python tests/data/traces/make_fixtures.py rules RUN_DIR [MODULE ...]
        one analysis fixture per bundled driver (tests/recorded_fixture.py) into rules/<module>/
    .venv/bin/python tests/data/traces/make_fixtures.py classes RUN_DIR
        lock classes from lock initializers (tracer.lock_init): classes/raw/ (cropped
        pages around td_rwsem_recursive_bug's load) and classes/events/ (a sample of
        initialized and inode locks, their init rows and allocations)
    .venv/bin/python tests/data/traces/make_fixtures.py lockdep RUN_DIR [MODULE ...]
        a run on a lockdep kernel (vm/build-lockdep-kernel.sh): lockdep/raw/ (cropped
        pages around td_abba_bug) and lockdep/rules/<module>/; with MODULEs, only
        their rules fixtures
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from tracedep.analysis.trace import load

# the fixture writer is test code (tests/recorded_fixture.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from recorded_fixture import save_fixture  # noqa: E402
from tracedep.tracer import control
from tracedep.tracer.ftrace_binary import read_run_buffers
from tracedep.tracer.decode_stream import decode_run
from tracedep.tracer.ftrace_formats import parse_format, parse_header_page

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TINY = "td_tiny"
MARGIN_PAGES = 2


def _commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "tracer", "vm", "analysis"], capture_output=True,
                           text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


def tiny(run_dir: Path, out: Path = HERE / "tiny") -> None:
    """The pages of CPU 0 around td_tiny's load, the control blocks they need, the manifest."""
    trace, spans, load_ts = crop(run_dir, TINY, out, cpu=0)
    # facts about the module the decoder tests check, from the .ko as loaded
    table = spans[0].table
    assert table is not None
    fill = table.addresses_of("td_tiny_fill")[0]
    i = table.names.index("td_tiny_fill")
    facts = {
        "module": TINY,
        "td_tiny_lock": table.addresses_of("td_tiny_lock")[0],
        "td_tiny_mutex": table.addresses_of("td_tiny_mutex")[0],
        "td_tiny_fill": [fill, fill + int(table.sizes[i])],
        "module_load_ts": load_ts,
    }
    (out / "module.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    decoded = decode_run(out)
    print(f"tiny: {decoded.total} events, "
          f"{sum(p.stat().st_size for p in out.rglob('*') if p.is_file())} bytes")


def crop(run_dir: Path, module: str, out: Path, cpu: int | None = None,
         ) -> tuple[Any, list[Any], int]:
    """Crop one CPU's raw pages from ``module``'s load to the last event of the task
    that first ran its code (on ``cpu``, or the CPU of that task's first event), with
    the control blocks and manifest entries decoding them needs."""
    info = json.loads((run_dir / "manifest.json").read_text())
    trace = load(run_dir)
    ev = trace.events
    spans = [m for m in trace.symbols.modules if m.name == module]
    if not spans:
        raise SystemExit(f"{run_dir}: {module} was not reported by the guest")
    ip = ev["ip"].to_numpy()
    load_ts = int(ev[(ev["kind"] == "module_load") & (ev["func"] == module)]["ts_ns"].iloc[0])
    # after the load: an earlier module may have had the same addresses
    mine = ev[[any(m.lo <= int(a) < m.hi for m in spans) for a in ip.tolist()]
              & (ev["ts_ns"] >= load_ts).to_numpy()]
    if cpu is None:
        cpu = int(mine["cpu"].iloc[0])
    mine = mine[mine["cpu"] == cpu]
    first_ts, last_ts = load_ts, int(mine[mine["pid"] == mine["pid"].iloc[0]]["ts_ns"].max())
    ctl = control.load(run_dir / "control.log")
    hp = parse_header_page(ctl.header_page() or "")
    buf = read_run_buffers(run_dir)[cpu]
    npages = len(buf) // hp.page_size
    page_ts = [struct.unpack_from("<Q", buf, i * hp.page_size)[0] for i in range(npages)]
    p0 = max(0, max(i for i, t in enumerate(page_ts) if t <= first_ts) - MARGIN_PAGES)
    p1 = min(npages, max(i for i, t in enumerate(page_ts) if t <= last_ts) + 1 + MARGIN_PAGES)
    if out.exists():
        shutil.rmtree(out)
    (out / "trace").mkdir(parents=True)
    (out / "trace" / f"cpu{cpu}.raw").write_bytes(buf[p0 * hp.page_size:p1 * hp.page_size])
    # which events the crop holds: their formats are the only ones kept
    crop = buf[p0 * hp.page_size:p1 * hp.page_size]
    ids = _event_ids(crop, hp)
    keep_formats = {name for name, text in ctl.formats().items()
                    if (f := parse_format(name, text)) is not None and f.id in ids}
    lines: list[str] = []
    for b in ctl.blocks:
        if b.tag == "format" and b.args not in keep_formats:
            continue
        if b.tag == "file" and "kprobe_profile" in b.args:
            continue
        lines.append(f"@@TD {b.tag} {b.args}".rstrip())
        lines += b.lines
        if b.complete:
            lines.append(f"@@TD end {b.tag}")
    lines += [f"@@TD done {d}" for d in ctl.done]
    (out / "control.log").write_text("\n".join(lines) + "\n")
    keep = ("manifest_version", "arch", "kernel", "call_insn_size", "kprobe_reports_irqs_off",
            "machine_kprobe_reports_irqs_off", "untraced_pids", "ending", "state", "guest",
            "workload", "kaslr", "tracedep_version", "trace_complete", "calibration",
            "inline_sites")
    small = {k: info[k] for k in keep if k in info}
    small["modules"] = [{"name": m["name"], "loaded": m["loaded"], "loads": m["loads"]}
                        for m in info["modules"]]
    small["crop"] = {"cpu": cpu, "pages": [p0, p1], "of_pages": npages, "commit": _commit()}
    (out / "manifest.json").write_text(json.dumps(small, indent=1, sort_keys=True) + "\n")
    print(f"{out.name}: cpu{cpu} pages {p0}..{p1} of {npages}")
    return trace, spans, load_ts


def lockdep(run_dir: Path, modules: list[str], out: Path = HERE / "lockdep") -> None:
    """A run on a kernel built with vm/lockdep.config: raw pages of td_abba_bug's
    probe (lockdep's events merged at decode time) and one rules fixture per driver
    (``modules``: only theirs)."""
    if not modules:
        crop(run_dir, "td_abba_bug", out / "raw")
    rules(run_dir, modules, out / "rules")


def _event_ids(buf: bytes, hp: object) -> set[int]:
    from tracedep.tracer.ring_pages import RawRecords, walk_pages

    recs = RawRecords()
    walk_pages(buf, 0, 0, hp, recs)  # type: ignore[arg-type]
    return {struct.unpack_from("<H", buf, o)[0] for o in recs.off}


def _vmlinux(run_dir: Path) -> Path | None:
    """The run's kernel with DWARF, as `tracedep analyze` finds it (the -dbg package's)."""
    from tracedep.common import run_manifest
    from tracedep.vm.debug_packages import debug_vmlinux

    k = run_manifest.read(run_dir).kernel
    return Path(k.vmlinux) if k.vmlinux else debug_vmlinux(k.release, k.abi, k.packages)


def rules(run_dir: Path, modules: list[str], out: Path = HERE / "rules") -> None:
    drivers = REPO / "vm" / "drivers"
    names = modules or sorted(p.name for p in drivers.iterdir() if (p / "expect.json").is_file())
    vmlinux = _vmlinux(run_dir)
    for name in names:
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        sizes = save_fixture(run_dir, [name], dest, vmlinux=vmlinux)
        print(f"rules/{name}: {sum(sizes.values())} bytes")
    source = f"run: {run_dir}\ncommit: {_commit()}\n"
    if modules and (out / "SOURCE").is_file():
        # some fixtures redone: the others still come from the runs named before
        source = (out / "SOURCE").read_text() + f"then, for {' '.join(modules)}:\n" + "".join(
            "  " + ln for ln in source.splitlines(True))
    (out / "SOURCE").write_text(source)


def classes(run_dir: Path, out: Path = HERE / "classes", per_class: int = 2,
            max_classes: int = 60, events_per_lock: int = 8) -> None:
    """Raw pages with lock_init records, and a sample of the run's locks whose classes
    come from their initializers (every inode-lock class by file system type, up to
    ``max_classes`` others, ``per_class`` locks each), with their lock_init rows,
    the allocations and frees of the objects holding them, and the heap-class locks of
    the functions that allocate two lock-holding objects at two call sites."""
    import numpy as np

    from tracedep.analysis import classes as lock_classes
    from recorded_fixture import LOCK_KINDS, _alloc_rows, _prepare, save_rows

    crop(run_dir, "td_rwsem_recursive_bug", out / "raw")
    run = _prepare(run_dir)
    trace = run.trace
    ev = trace.events
    kinds = ev["kind"].to_numpy()
    acq = np.nonzero(kinds == "lock_acquire")[0]
    ids, table = lock_classes.assign(ev, trace.symbols, acq)
    addr = ev["lock_addr"].to_numpy()
    by_class: dict[int, list[int]] = {}
    for r, c in zip(acq.tolist(), ids.tolist(), strict=True):
        lst = by_class.setdefault(c, [])
        if int(addr[r]) not in lst and len(lst) < per_class:
            lst.append(int(addr[r]))
    inode = [c for c, k in enumerate(table) if k.key.endswith(("->i_mutex_key",
                                                               "->i_mutex_dir_key"))]
    others = [c for c, k in enumerate(table) if k.origin == "init" and c not in inode]
    # heap classes of functions that allocate lock-holding objects at two call sites
    heap: dict[tuple[str, str], dict[str, list[int]]] = {}
    for c, k in enumerate(table):
        if k.origin == "heap":  # heap:<module>:<function>@<site>:<offset>
            _, mod, rest = k.key.split(":", 2)
            fn, _, site = rest.rpartition(":")[0].partition("@")
            heap.setdefault((mod, fn), {}).setdefault(site, []).append(c)
    twins = [cs[0] for sites in heap.values() if len(sites) > 1
             for cs in list(sites.values())[:2]][:8]
    chosen = inode + others[:max_classes] + twins
    addrs = {a for c in chosen for a in by_class.get(c, [])}
    keep: set[int] = set()
    ts_all = ev["ts_ns"].to_numpy()
    lock_rows = np.nonzero(np.isin(kinds, LOCK_KINDS) & np.isin(addr, list(addrs)))[0]
    per_addr: dict[int, list[int]] = {}
    for r in lock_rows.tolist():
        per_addr.setdefault(int(addr[r]), []).append(r)
    for rows in per_addr.values():
        keep.update(rows[:events_per_lock] + rows[-events_per_lock:])
    last = {a: max(int(ts_all[r]) for r in rows) for a, rows in per_addr.items()}
    init = np.nonzero(kinds == "lock_init")[0]
    keep.update(r for r in init.tolist() if int(addr[r]) in last
                and int(ts_all[r]) <= last[int(addr[r])])
    keep |= _alloc_rows(run, keep)
    mods = np.nonzero(np.isin(ev["event"].to_numpy(),
                              ["module/module_load", "module/module_free"]))[0]
    keep.update(mods.tolist())
    names = [m["name"] for m in trace.info.get("modules", [])]
    sizes = save_rows(trace, np.array(sorted(keep), dtype=np.int64), names, out / "events")
    (out / "SOURCE").write_text(f"run: {run_dir}\ncommit: {_commit()}\n")
    print(f"classes/events: {len(keep)} rows, {len(chosen)} classes "
          f"({len(inode)} inode, {len(twins)} heap twins), {sum(sizes.values())} bytes")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("tiny", "rules", "lockdep", "classes"):
        raise SystemExit(__doc__)
    run_dir = Path(argv[1])
    if argv[0] == "tiny":
        tiny(run_dir)
    elif argv[0] == "lockdep":
        lockdep(run_dir, argv[2:])
    elif argv[0] == "classes":
        classes(run_dir)
    else:
        rules(run_dir, argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
