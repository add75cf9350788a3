"""The two guest→host trace transports side by side, at saturation.

Usage: python bench/bench_transport.py [--seconds S] [--repeats N] [--repeats-smp1 N]
                                       [--smp 2,1] [--transports socket,ringbuf] [--keep]

Each run is one real ``tracedep trace`` of the saturating workload
(bench/workloads/saturate.sh: bench/drivers/td_bench_load spins spinlocks, a
mutex and kmalloc/kfree in one kthread per CPU for S seconds, as fast as the
guest can), with every probe unfiltered.  Runs go to
~/.cache/tracedep/bench/transport/ and are deleted once measured (--keep keeps
them).  Transports are interleaved run by run so that the load of anything else
on the host falls on both alike; the 1-minute load average is printed next to
each run.  Prints numbers; asserts nothing.

Per run:
  boot→ev    manifest timing.boot_to_first_event_s: QMP ``cont`` to the first trace
             byte on the host (boot, probe set-up in the guest, module load)
  window     guest seconds from "tracing on" to "tracing off" (workload start/end)
  events     events decoded on the host
  ev/s       events / window: the rate the whole path sustained
  MB/s       trace bytes / window
  B/ev       trace bytes per decoded event (pages included: 4 KiB each)
  lost       ftrace overruns + dropped + ring-buffer missed + torn pages + kprobe
             misses (all from manifest ``lost``; its own ``total`` leaves kprobe
             misses out and is shown apart); loss% = lost / (events + lost)
  torn       pages the decoder found overwritten (ringbuf only can tear)
  g-read     the guest's own ``read events`` (per_cpu/*/stats) minus the records the
             host decoded (stack records included): events that left the ring
             buffer but never arrived whole (a ringbuf overwrite shows here)
  rounds/s   the bench module's loop rounds per guest second: how much the tracing
             path slows the traced guest itself
  cpu-s      CPU seconds used by tracedep and QEMU together (wait4 rusage)
  vcpu/main/td  that CPU time split: QEMU's threads other than its main thread
             (the vCPUs, mostly), QEMU's main thread (main loop: chardev I/O, QMP
             commands such as ringbuf-read, base64), and tracedep's own process
             (the sinks, then the decode for the manifest); sampled every 0.25 s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tracedep.common.cache import cache_dir
from tracedep.common.run_options import RunOptions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRACEDEP = ROOT / ".venv" / "bin" / "tracedep"
BENCH_DRIVER = HERE / "drivers" / "td_bench_load"
WORKLOAD = HERE / "workloads" / "saturate.sh"
CACHE = cache_dir("bench")


def loadavg() -> float:
    return os.getloadavg()[0]


def workload_file(seconds: int, dest_dir: Path, atomic_sleep: bool = False) -> Path:
    """saturate.sh for ``seconds`` (``atomic_sleep``: every round also sleeps in atomic
    context, td_bench_load's ``atomic_sleep=1``)."""
    p = dest_dir / f"saturate-{seconds}s{'-sleep' if atomic_sleep else ''}.sh"
    p.write_text(f"TD_BENCH_SECONDS={seconds}\n"
                 + ("TD_BENCH_ATOMIC_SLEEP=1\n" if atomic_sleep else "") + WORKLOAD.read_text())
    return p


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def _thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid``'s main thread and of all its other threads together."""
    main = rest = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            stat = (task / "stat").read_text()
            if "qemu-system" not in stat[:stat.rindex(")")]:
                return 0.0, 0.0
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            if task.name == str(pid):
                main += cpu
            else:
                rest += cpu
    except (OSError, ValueError):
        pass
    return main, rest


def record(out: Path, transport: str, smp: int, workload: Path, seconds: int,
           extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """One traced boot into ``out``; returns the CLI's rc, wall and CPU seconds.
    ``extra_args``: more ``tracedep trace`` arguments (bench_work_rate: ``--untraced``).

    While it runs, QEMU's threads are sampled every 0.25 s so that its CPU time
    can be split into its main thread (the main loop, where chardev I/O and QMP
    commands such as ``ringbuf-read`` run) and its other threads (the vCPUs,
    mostly); what is left of the total is tracedep's own Python process.
    """
    opts = RunOptions(transport=transport, smp=smp, module_src=(BENCH_DRIVER,),
                      workload=workload, timeout=float(seconds + 300), out=out)
    cmd = [str(TRACEDEP), "trace", *opts.to_argv(), *extra_args]
    la0 = loadavg()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output_parts: list[str] = []
    reader = threading.Thread(
        target=lambda: output_parts.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    qemu: dict[int, tuple[float, float]] = {}
    while True:
        # wait4, not Popen.poll: poll would reap the child and lose its rusage
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        for c in _children(proc.pid):
            # CPU time only grows: keep the largest sample (a read while QEMU exits
            # sees only the threads still alive)
            m0, r0 = qemu.get(c, (0.0, 0.0))
            m1, r1 = _thread_cpu(c)
            if m1 + r1:
                qemu[c] = (max(m0, m1), max(r0, r1))
        time.sleep(0.25)
    reader.join()
    output = output_parts[0] if output_parts else ""
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(f"  ! tracedep trace exited {rc}: {output.strip()[-400:]}", file=sys.stderr)
    main = sum(m for m, _ in qemu.values())
    vcpu = sum(r for _, r in qemu.values())
    total = ru.ru_utime + ru.ru_stime
    return {"rc": rc, "wall_s": wall, "cpu_s": total, "vcpu_cpu_s": vcpu,
            "qemu_main_cpu_s": main,
            "tracedep_cpu_s": total - main - vcpu,
            "load_before": la0, "load_after": loadavg()}


def start_block_uptime(run: Path) -> float | None:
    """The guest's uptime at "tracing on", read from control.log directly.

    With a custom workload the guest's module poller can write a module report
    into the middle of init's multi-line ``start`` block (a race in init.sh); the
    manifest then lacks ``workload.start_uptime_s`` and ``untraced_pids``.
    """
    try:
        lines = (run / "control.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    in_start = False
    for line in lines:
        if line.startswith("@@TD start"):
            in_start = True
        elif in_start and line.startswith("uptime="):
            return float(line.split("=", 1)[1])
    return None


def measure(run: Path) -> dict[str, Any]:
    m = json.loads((run / "manifest.json").read_text())
    lost = m.get("lost", {})
    timing = m.get("timing", {})
    wl = m.get("workload", {})
    trace_bytes = sum(p.stat().st_size for p in (run / "trace").glob("cpu*.raw"))
    decoded = int(lost.get("decoded_events", 0) or 0)
    # the guest's count includes the stack records, which decode into no row
    records = sum(int(v) for v in (m.get("event_counts") or {}).values())
    read_guest = int(lost.get("read_events_guest", 0) or 0)
    window = None
    start = wl.get("start_uptime_s")
    if start is None:
        start = start_block_uptime(run)
    if start is not None and wl.get("end_uptime_s") is not None:
        window = float(wl["end_uptime_s"]) - float(start)
    rounds = None
    console = run / "console.log"
    if console.is_file():
        mm = re.search(r"td_bench_load: rounds=(\d+)", console.read_text(errors="replace"))
        rounds = int(mm.group(1)) if mm else None
    def n(key: str) -> int:
        return int(lost.get(key, 0) or 0)

    # every event that never reached the trace: the ring buffer's and the
    # transport's losses (the manifest's ``total``) plus kprobe misses, which the
    # manifest counts apart
    ring = n("ftrace_overrun") + n("ftrace_dropped") + n("ring_buffer_missed")
    total_lost = ring + n("decoder_torn_pages") + n("kprobe_missed")
    return {
        "boot_to_first_event_s": timing.get("boot_to_first_event_s"),
        "window_s": window,
        "events": decoded,
        "events_per_s": decoded / window if window else None,
        "mb_per_s": trace_bytes / window / 1e6 if window else None,
        "bytes_per_event": trace_bytes / decoded if decoded else None,
        "trace_bytes": trace_bytes,
        "lost": total_lost,
        "loss_pct": 100.0 * total_lost / (decoded + total_lost) if decoded + total_lost else 0.0,
        "manifest_lost_total": n("total"),
        "ftrace_overrun": ring,
        "kprobe_missed": n("kprobe_missed"),
        "torn_pages": n("decoder_torn_pages"),
        "read_events_guest": read_guest,
        "guest_minus_decoded": read_guest - records,
        "rounds": rounds,
        "rounds_per_s": rounds / window if rounds is not None and window else None,
        "complete": bool(m.get("trace_complete")),
        # init.sh's start block was cut by a module report (see start_block_uptime)
        "ctl_race": not m.get("untraced_pids"),
    }


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


ROW = ("{:<8} {:>3} {:>3} {:>7} {:>6} {:>9} {:>8} {:>6} {:>5} {:>8} {:>6} {:>5} {:>6} {:>9} "
       "{:>6} {:>15} {:>9}")
HEAD = ROW.format("transp", "smp", "rep", "boot→ev", "window", "events", "ev/s", "MB/s", "B/ev",
                  "lost", "loss%", "torn", "g-read", "rounds/s", "cpu-s",
                  "vcpu/main/td", "load1 b/a")


def print_run(transport: str, smp: int, rep: int, r: dict[str, Any]) -> None:
    print(ROW.format(
        transport, smp, rep, fmt(r["boot_to_first_event_s"], ".2f"), fmt(r["window_s"], ".2f"),
        r["events"], fmt(r["events_per_s"], ".0f"), fmt(r["mb_per_s"], ".2f"),
        fmt(r["bytes_per_event"], ".1f"), r["lost"], fmt(r["loss_pct"], ".2f"), r["torn_pages"],
        r["guest_minus_decoded"], fmt(r["rounds_per_s"], ".0f"), fmt(r["cpu_s"], ".1f"),
        f"{r['vcpu_cpu_s']:.0f}/{r['qemu_main_cpu_s']:.0f}/{r['tracedep_cpu_s']:.0f}",
        f"{r['load_before']:.1f}/{r['load_after']:.1f}"), flush=True)


def median(vals: list[Any]) -> Any:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="workload length (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per transport at smp 2")
    ap.add_argument("--repeats-smp1", type=int, default=1, help="runs per transport at smp 1")
    ap.add_argument("--smp", default="2,1", help="comma-separated CPU counts (default 2,1)")
    ap.add_argument("--transports", default="socket,ringbuf")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    a = ap.parse_args(argv)
    transports = a.transports.split(",")
    smps = [int(s) for s in a.smp.split(",")]
    session = CACHE / "transport" / time.strftime("%Y%m%d-%H%M%S")
    session.mkdir(parents=True, exist_ok=True)
    workload = workload_file(a.seconds, session)
    t_start = time.monotonic()
    print(f"bench_transport: {a.seconds} s saturating workload; runs in {session}")
    print(f"host: {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(HEAD)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    races = 0
    max_rep = max(a.repeats if s != 1 else a.repeats_smp1 for s in smps)
    for rep in range(max_rep):
        for smp in smps:
            if rep >= (a.repeats_smp1 if smp == 1 else a.repeats):
                continue
            for transport in transports:
                out = session / f"{transport}-smp{smp}-{rep}"
                rr = record(out, transport, smp, workload, a.seconds)
                if not (out / "manifest.json").is_file():
                    continue
                try:
                    r = {**measure(out), **rr}
                except (ValueError, KeyError) as e:
                    print(f"  ! {out}: unreadable manifest ({e})", file=sys.stderr)
                    continue
                results.setdefault((transport, smp), []).append(r)
                print_run(transport, smp, rep, r)
                if r["ctl_race"]:
                    races += 1
                if not a.keep:
                    shutil.rmtree(out, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(session, ignore_errors=True)

    print()
    print("medians (side by side)")
    metrics = [
        ("runs", None, ""),
        ("boot to first event, s", "boot_to_first_event_s", ".2f"),
        ("traced window, guest s", "window_s", ".2f"),
        ("events decoded", "events", ".0f"),
        ("events/s", "events_per_s", ".0f"),
        ("trace MB/s", "mb_per_s", ".2f"),
        ("bytes/event", "bytes_per_event", ".1f"),
        ("lost events (all)", "lost", ".0f"),
        ("  manifest lost.total", "manifest_lost_total", ".0f"),
        ("  ftrace overrun+dropped+missed", "ftrace_overrun", ".0f"),
        ("  kprobe misses", "kprobe_missed", ".0f"),
        ("  torn pages (decoder)", "torn_pages", ".0f"),
        ("loss %", "loss_pct", ".2f"),
        ("guest read - decoded", "guest_minus_decoded", ".0f"),
        ("bench rounds/s (guest work)", "rounds_per_s", ".0f"),
        ("CPU s (tracedep+QEMU)", "cpu_s", ".1f"),
        ("  QEMU vCPU (non-main) threads", "vcpu_cpu_s", ".1f"),
        ("  QEMU main thread", "qemu_main_cpu_s", ".1f"),
        ("  tracedep process", "tracedep_cpu_s", ".1f"),
        ("wall s", "wall_s", ".1f"),
        ("load avg 1 min (before)", "load_before", ".2f"),
    ]
    cols = [(t, s) for s in smps for t in transports if (t, s) in results]
    print(f"{'':<32}" + "".join(f"{f'{t} smp{s}':>16}" for t, s in cols))
    for label, key, spec in metrics:
        cells = []
        for c in cols:
            rs = results[c]
            if key is None:
                cells.append(str(len(rs)))
                continue
            v = median([r[key] for r in rs])
            cells.append(fmt(float(v) if isinstance(v, (int, float)) else v, spec))
        print(f"{label:<32}" + "".join(f"{c:>16}" for c in cells))
    if races:
        print(f"\nNOTE: in {races} run(s) the guest's control-channel start block was cut by a "
              "module report (init.sh race): untraced_pids missing from the manifest; the "
              "traced window was read from control.log instead.")
    print(f"\nbench_transport: {time.monotonic() - t_start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
