"""The slowdown a user pays: the guest's work rate traced against untraced.

Usage: python bench/bench_work_rate.py [--seconds S] [--pairs N] [--transport socket]
                                       [--smp 2] [--keep]

Each pair is one ``tracedep trace`` and one ``tracedep trace --untraced`` of the
saturating workload (bench/workloads/saturate.sh: bench/drivers/td_bench_load spins
spinlocks, a mutex and kmalloc/kfree in one kthread per CPU for S seconds).  Both
boot the same kernel, the same initramfs (but for its mode word), the same modules
and the same QEMU command line (TCG, same -smp/-m); the untraced guest arms no
probe, no tracepoint and no trace pump.  The order alternates pair by pair, so that
other load on the host falls on both alike.  Runs go to
~/.cache/tracedep/bench/work_rate/ and are deleted once measured (--keep keeps
them).  Prints numbers; asserts nothing.

Per run:
  start      guest uptime when the workload started (traced: after arming ~170
             probes and the tracepoints, and starting the pumps)
  window     guest seconds from the workload's start to its end (manifest
             workload.start/end_uptime_s): insmod, S seconds of load, rmmod
  rounds     the bench module's loop rounds (``td_bench_load: rounds=R``, console.log)
  rounds/s   rounds / window: the guest's work rate
  r/mod-s    rounds / S: the rate while the module's threads ran (they stop after S
             seconds of jiffies), without insmod/rmmod
  wall, cpu-s  the host's wall seconds and CPU seconds (tracedep and QEMU) of the run

At the end, the medians side by side, with
  slowdown   traced rounds/s / untraced rounds/s (1.0: tracing costs nothing)
  cost       untraced / traced - 1, in %: what lockdep's "+36-83 % on a kernel build"
             would be for this workload (its work takes that much longer)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transport import CACHE, loadavg, measure, record, workload_file  # noqa: E402

MODES = {"traced": (), "untraced": ("--untraced",)}


def one_run(session: Path, mode: str, pair: int, a: argparse.Namespace,
            workload: Path) -> dict[str, Any] | None:
    out = session / f"{mode}-{pair}"
    rr = record(out, a.transport, a.smp, workload, a.seconds, MODES[mode])
    if not (out / "manifest.json").is_file():
        return None
    try:
        m = measure(out)
    except (ValueError, KeyError) as e:
        print(f"  ! {out}: unreadable manifest ({e})", file=sys.stderr)
        return None
    from tracedep.common.run_manifest import read

    wl = read(out).workload
    r = {**m, **rr, "start_uptime_s": wl.start_uptime_s,
         "rounds_per_module_s": m["rounds"] / a.seconds if m["rounds"] is not None else None}
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
    return r


ROW = "{:<9} {:>4} {:>7} {:>7} {:>10} {:>9} {:>9} {:>7} {:>7} {:>9}"
HEAD = ROW.format("mode", "pair", "start", "window", "rounds", "rounds/s", "r/mod-s", "wall",
                  "cpu-s", "load1 b/a")


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_run(mode: str, pair: int, r: dict[str, Any]) -> None:
    print(ROW.format(mode, pair, fmt(r["start_uptime_s"], ".2f"), fmt(r["window_s"], ".2f"),
                     fmt(r["rounds"], "d"), fmt(r["rounds_per_s"], ".0f"),
                     fmt(r["rounds_per_module_s"], ".0f"), fmt(r["wall_s"], ".1f"),
                     fmt(r["cpu_s"], ".1f"),
                     f"{r['load_before']:.1f}/{r['load_after']:.1f}"), flush=True)


def median(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return float(statistics.median(vals)) if vals else None


def summary(results: dict[str, list[dict[str, Any]]]) -> None:
    print()
    print("medians (side by side)")
    print(f"{'':<34}{'untraced':>12}{'traced':>12}")
    rows = [("runs", None, "d"), ("workload start, guest uptime s", "start_uptime_s", ".2f"),
            ("window, guest s", "window_s", ".2f"), ("bench rounds", "rounds", ".0f"),
            ("rounds/s (window)", "rounds_per_s", ".0f"),
            ("rounds/s (module's S seconds)", "rounds_per_module_s", ".0f"),
            ("wall s", "wall_s", ".1f"), ("CPU s (tracedep+QEMU)", "cpu_s", ".1f"),
            ("  QEMU vCPU (non-main) threads", "vcpu_cpu_s", ".1f"),
            ("load avg 1 min (before)", "load_before", ".2f")]
    for label, key, spec in rows:
        cells = []
        for mode in ("untraced", "traced"):
            rs = results.get(mode, [])
            cells.append(str(len(rs)) if key is None else fmt(median(rs, key), spec))
        print(f"{label:<34}" + "".join(f"{c:>12}" for c in cells))
    for label, key in (("window", "rounds_per_s"), ("module's S seconds", "rounds_per_module_s")):
        u, t = (median(results.get(mode, []), key) for mode in ("untraced", "traced"))
        if not u or not t:
            print(f"slowdown ({label}): -")
            continue
        print(f"slowdown ({label}): traced/untraced rounds/s = {t / u:.4f} "
              f"({u / t:.1f}x slower); cost = untraced/traced - 1 = {100 * (u / t - 1):+.0f} %")
    print("(lockdep on a kernel build: +36 % to +83 %)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20, help="workload length (default 20)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="traced/untraced pairs, order alternating (default 2)")
    ap.add_argument("--transport", default="socket")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    a = ap.parse_args(argv)
    session = CACHE / "work_rate" / time.strftime("%Y%m%d-%H%M%S")
    session.mkdir(parents=True, exist_ok=True)
    workload = workload_file(a.seconds, session)
    t_start = time.monotonic()
    print(f"bench_work_rate: {a.seconds} s saturating workload, {a.pairs} pair(s), "
          f"transport {a.transport}, smp {a.smp}; runs in {session}")
    print(f"host: {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(HEAD)
    results: dict[str, list[dict[str, Any]]] = {}
    for pair in range(a.pairs):
        order = ("traced", "untraced") if pair % 2 == 0 else ("untraced", "traced")
        for mode in order:
            r = one_run(session, mode, pair, a, workload)
            if r is None:
                continue
            results.setdefault(mode, []).append(r)
            print_run(mode, pair, r)
    if not a.keep:
        shutil.rmtree(session, ignore_errors=True)
    summary(results)
    print(f"\nbench_work_rate: {time.monotonic() - t_start:.0f} s; load average now "
          f"{loadavg():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
