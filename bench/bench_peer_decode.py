"""tracedep's decode next to a peer, ``trace-cmd report`` (libtraceevent), on the same events.

Usage: python bench/bench_peer_decode.py [RUN_DIR] [--repeats N] [--dat PATH] [--keep]

With no RUN_DIR the large run of bench_analysis.py is used (recorded the first time,
~1.5 min: a real traced boot).  The run's pages are written once as a trace-cmd
``trace.dat`` (tracer.trace_dat: the guest's pages unchanged, page-aligned, with the
run's tracefs formats and kallsyms), then each of these runs in a fresh process,
``--repeats`` times (the median is shown):

  tracedep decode     tracer.decode_stream.decode_run in a python child: the time of
                      decode_run alone (imports excluded); RSS is the child's peak
  tracedep process    the same child as a whole: interpreter start, imports, decode_run
  tracedep read       read_run_buffers alone (only when the run's pages are .gz: the
                      decompression that decode_run includes and trace-cmd does not do)
  trace-cmd report    ``trace-cmd report -i trace.dat > /dev/null``: every event
                      formatted by its print fmt (libtraceevent), as text
  trace-cmd report -R the same with -R: fields printed raw, no print fmt

CPU s and RSS of the process rows come from the child's own rusage (``wait4``).
"events" is the ring-buffer records each side found: tracedep's
``Decoded.records_per_cpu`` (every record read, stacks included), trace-cmd's event
lines counted in one more, untimed, run of each mode (a line with the
``[CPU] secs.usecs:`` prefix; stack-trace continuation lines and ``cpus=`` are not
events).  ev/s and ev/CPU-s divide tracedep's record count (the same events) by
each row's time; a count that differs is printed in the events column.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_transport import CACHE, loadavg  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"
EVENT_LINE = re.compile(rb"\[\d+\]\s+\d+\.\d+:")


def _self_usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def child(stage: str, run: Path) -> None:
    from tracedep.tracer.decode_stream import decode_run
    from tracedep.tracer.ftrace_binary import read_run_buffers

    t0 = time.perf_counter()
    c0, _ = _self_usage()
    if stage == "decode":
        d = decode_run(run)
        out = {"records": sum(d.records_per_cpu.values()), "rows": d.total,
               "torn": d.torn_pages, "backwards": d.backwards_pages,
               "damaged": d.damaged_pages, "missing": d.missing_pages}
    else:
        out = {"bytes": sum(len(b) for b in read_run_buffers(run).values())}
    c1, rss = _self_usage()
    out.update(wall_s=time.perf_counter() - t0, cpu_s=c1 - c0, rss_mb=rss)
    print(json.dumps(out))


def timed(cmd: list[str], stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run ``cmd`` to its end: wall s, CPU s and peak RSS MB of that child alone."""
    la = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # trace-cmd warns on stderr; a full pipe would stall it
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_peer_decode: {' '.join(cmd)} -> exit {proc.returncode}: "
                         f"{err.decode(errors='replace')[-1500:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
            "load1": la}


def python_child(stage: str, run: Path) -> dict[str, Any]:
    """A python child running ``stage``: its own numbers, and the whole process's."""
    with tempfile.TemporaryFile() as out:
        proc = timed([str(PYTHON), __file__, "--child", stage, str(run)], stdout=out)
        out.seek(0)
        inner: dict[str, Any] = json.loads(out.read().decode().strip().splitlines()[-1])
    inner["process"] = proc
    inner["load1"] = proc["load1"]
    return inner


def count_events(cmd: list[str]) -> int:
    """Event lines of a trace-cmd report (untimed)."""
    n = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as p:
        assert p.stdout is not None
        for line in p.stdout:
            if EVENT_LINE.search(line):
                n += 1
    return n


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in rows) if k != "rss_mb" else max(r[k] for r in rows)
            for k in ("wall_s", "cpu_s", "rss_mb", "load1")}


def default_run() -> Path:
    from bench_analysis import large_run

    return large_run(30, False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", nargs="?", type=Path, help="a run directory (default: the large "
                    "run of bench_analysis.py, recorded if missing)")
    ap.add_argument("--repeats", type=int, default=1, help="processes per row (median shown)")
    ap.add_argument("--dat", type=Path, default=None, help="where to write trace.dat (default: "
                    "a temporary file in the bench cache, deleted at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the trace.dat")
    ap.add_argument("--child", choices=("decode", "read"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.run_dir)
        return 0
    tc = shutil.which("trace-cmd")
    if tc is None:
        raise SystemExit("bench_peer_decode: trace-cmd is not installed "
                         "(apt-get install trace-cmd; vm/host-setup.sh does)")
    t_start = time.monotonic()
    run = a.run_dir.resolve() if a.run_dir else default_run()
    version = subprocess.run([tc, "--version"], capture_output=True, text=True).stdout.split()
    files = sorted((run / "trace").glob("cpu*.raw*"))
    gz = any(p.name.endswith(".gz") for p in files)
    print(f"bench_peer_decode: {run} ({sum(p.stat().st_size for p in files) / 1e6:.0f} MB of "
          f"{'gzip-compressed ' if gz else ''}pages); peer: {' '.join(version[:3])}")
    print(f"host: {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    dat = a.dat or Path(tempfile.mkdtemp(prefix="peer-", dir=_cache())) / "trace.dat"
    try:
        _measure(run, dat, tc, a.repeats, gz)
    finally:
        if not a.keep and a.dat is None:
            shutil.rmtree(dat.parent, ignore_errors=True)
    print(f"bench_peer_decode: {time.monotonic() - t_start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _cache() -> Path:
    d = CACHE / "peer"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _measure(run: Path, dat: Path, tc: str, repeats: int, gz: bool) -> None:
    from tracedep.tracer import trace_dat

    t0 = time.perf_counter()
    s = trace_dat.write(run, dat)
    print(f"trace.dat: {dat} ({dat.stat().st_size / 1e6:.0f} MB, {s.cpus} CPUs, "
          f"{sum(s.pages.values())} pages, kallsyms {'kept' if s.kallsyms else 'absent'}) "
          f"written in {time.perf_counter() - t0:.1f} s")
    reps = max(1, repeats)
    dec = [python_child("decode", run) for _ in range(reps)]
    n = dec[0]["records"]
    if dec[0]["torn"] or dec[0]["backwards"] or dec[0]["damaged"]:
        print(f"NOTE: tracedep left out pages (torn {dec[0]['torn']}, out of order "
              f"{dec[0]['backwards']}, damaged {dec[0]['damaged']}); trace-cmd reads them all")
    rows: list[tuple[str, Any, dict[str, Any]]] = [
        ("tracedep decode_run", n, _median(dec)),
        ("tracedep process", n, _median([d["process"] for d in dec])),
    ]
    if gz:
        rd = [python_child("read", run) for _ in range(reps)]
        rows.append(("  of which gunzip+read", "-", _median(rd)))
    for label, extra in (("trace-cmd report", []), ("trace-cmd report -R", ["-R"])):
        cmd = [tc, "report", *extra, "-i", str(dat)]
        res = [timed(cmd) for _ in range(reps)]
        counted = count_events(cmd)
        rows.append((label, counted, _median(res)))
    fmt = "{:<24} {:>10} {:>8} {:>8} {:>11} {:>11} {:>8} {:>6}"
    print()
    print(fmt.format("decoder", "events", "wall s", "CPU s", "ev/s", "ev/CPU-s", "RSS MB",
                     "load1"))
    for label, events, r in rows:
        print(fmt.format(label, events, f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                         f"{n / r['wall_s']:.0f}", f"{n / r['cpu_s']:.0f}",
                         f"{r['rss_mb']:.0f}", f"{r['load1']:.2f}"))
    print()
    print(f"events: ring-buffer records (tracedep: {n} read, {dec[0]['rows']} of them event "
          "rows; the rest are stack traces and records set aside). ev/s and ev/CPU-s use "
          f"tracedep's {n} for every row; RSS is the child's peak.")


if __name__ == "__main__":
    raise SystemExit(main())
