"""Symbolizer throughput and memory beside addr2line and llvm-symbolizer.

Usage: python bench/bench_symbolizer.py [--functions N] [--vmlinux PATH]

The addresses are the agreement test's (call instructions and return sites
spread evenly over vmlinux's functions, plus their first instructions); every
tool resolves the same ones, with inline chains.  Each measurement runs in a
fresh process, so "peak RSS" is that process's alone.

cold: a new process, nothing cached by the tool (the file is in the page cache
for every tool alike).  warm (disk): ours, a new process, its on-disk cache
filled by the cold run.  warm (in-process): the same addresses again in the
process that just resolved them (addr2line and llvm-symbolizer fed on stdin).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests" / "test_symbolizer.py"
KASLR = 0x2C400000


def _load_test_helpers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("test_symbolizer_helpers", TESTS)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _rss_mb(ru: resource.struct_rusage) -> float:
    return ru.ru_maxrss / 1024.0  # kB on Linux


def _run_child(args: list[str], stdin: str | None = None) -> tuple[str, float]:
    """Run a child, return its stdout and peak RSS (MB) from wait4()."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out_parts: list[str] = []
    reader = threading.Thread(target=lambda: out_parts.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    reader.join()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {err[-500:]}")
    return out_parts[0], _rss_mb(ru)


# -- child process: our symbolizer ---------------------------------------------------


def worker(vmlinux: Path, addr_file: Path, cache_dir: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    from tracedep.analysis.symbolizer import Symbolizer

    addrs = [int(x, 16) + KASLR for x in addr_file.read_text().split()]
    t0 = time.perf_counter()
    sym = Symbolizer(vmlinux, KASLR, {}, cache_dir=cache_dir, style="addr2line")
    t_init = time.perf_counter() - t0
    first = sym.resolve_many(addrs)
    t1 = time.perf_counter() - t0
    t2 = time.perf_counter()
    sym.resolve_many(addrs)
    t_again = time.perf_counter() - t2
    frames = sum(len(v) for v in first.values())
    print(json.dumps({"init": t_init, "total": t1, "again": t_again, "frames": frames}))


# -- streaming the other tools ----------------------------------------------------------


def stream_tool(
    cmd: list[str], addrs: list[int], sentinel: int, is_end: object
) -> tuple[float, float, float]:
    """Feed ``addrs`` twice through one process on stdin; return (first pass s,
    second pass s, peak RSS MB).  A sentinel query marks the end of each pass."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    assert proc.stdin and proc.stdout
    batch = "".join(f"{a:#x}\n" for a in addrs) + f"{sentinel:#x}\n"
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        writer = threading.Thread(target=lambda: (proc.stdin.write(batch), proc.stdin.flush()))  # type: ignore[union-attr]
        writer.start()
        for line in proc.stdout:
            if is_end(line):  # type: ignore[operator]
                break
        writer.join()
        times.append(time.perf_counter() - t0)
    proc.stdin.close()
    proc.stdout.read()
    _, _, ru = os.wait4(proc.pid, 0)
    return times[0], times[1], _rss_mb(ru)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--functions",
        type=int,
        default=400,
        help="functions of vmlinux to take call sites from (default 400)",
    )
    ap.add_argument("--vmlinux", type=Path, default=None)
    ap.add_argument(
        "--worker", nargs=3, metavar=("VMLINUX", "ADDRS", "CACHE"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.worker:
        worker(Path(a.worker[0]), Path(a.worker[1]), Path(a.worker[2]))
        return 0

    helpers = _load_test_helpers()
    vmlinux = a.vmlinux or helpers.VMLINUX
    if not Path(vmlinux).is_file():
        print(f"no debug vmlinux at {vmlinux}: run ensure_dbg_vmlinux() first", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="symbench."))
    try:
        probes = helpers.vmlinux_probes(tmp, nfuncs=a.functions)
        addrs = sorted({p.key for p in probes})
        n = len(addrs)
        addr_file = tmp / "addrs.txt"
        addr_file.write_text("\n".join(f"{x:x}" for x in addrs))
        print(
            f"{n} distinct vmlinux addresses from {a.functions} functions; "
            f"{Path(vmlinux).stat().st_size >> 20} MB vmlinux (page-cached)"
        )
        rows: list[tuple[str, str, float, float]] = []

        # Ours: cold (empty disk cache), then warm from the disk cache.
        cache = tmp / "cache"
        me = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(vmlinux),
            str(addr_file),
            str(cache),
        ]
        out, rss = _run_child(me)
        cold = json.loads(out)
        rows.append(("tracedep (pyelftools)", "cold", cold["total"], rss))
        rows.append(("tracedep (pyelftools)", "warm, in-process", cold["again"], rss))
        out, rss = _run_child(me)
        warm = json.loads(out)
        rows.append(("tracedep (pyelftools)", "warm, disk cache, new process", warm["total"], rss))

        # addr2line: one batch process (cold); stdin streaming for the warm pass.
        if shutil.which("addr2line"):
            t0 = time.perf_counter()
            _, rss = _run_child(
                ["addr2line", "-f", "-i", "-a", "-e", str(vmlinux)],
                stdin="".join(f"{x:#x}\n" for x in addrs),
            )
            rows.append(("addr2line -f -i", "cold", time.perf_counter() - t0, rss))
            sentinel_line = f"0x{0:016x}\n"
            _t1, t2, rss = stream_tool(
                ["addr2line", "-f", "-i", "-a", "-e", str(vmlinux)],
                addrs,
                0,
                lambda ln: ln == sentinel_line,
            )
            rows.append(("addr2line -f -i", "warm, in-process", t2, rss))
        llvm = shutil.which("llvm-symbolizer") or "/usr/bin/llvm-symbolizer"
        if Path(llvm).exists():
            t0 = time.perf_counter()
            _, rss = _run_child(
                [llvm, "--inlining", "-e", str(vmlinux)], stdin="".join(f"{x:#x}\n" for x in addrs)
            )
            rows.append(("llvm-symbolizer --inlining", "cold", time.perf_counter() - t0, rss))
            seen = {"n": 0}

            def llvm_end(line: str) -> bool:
                # One blank line ends each answer; the sentinel's is the n+1-th.
                if line == "\n":
                    seen["n"] += 1
                    if seen["n"] == n + 1:
                        seen["n"] = 0
                        return True
                return False

            _t1, t2, rss = stream_tool([llvm, "--inlining", "-e", str(vmlinux)], addrs, 0, llvm_end)
            rows.append(("llvm-symbolizer --inlining", "warm, in-process", t2, rss))

        print(f"{'tool':28} {'mode':32} {'seconds':>8} {'addr/s':>10} {'peak RSS':>9}")
        for tool, mode, secs, rss in rows:
            print(f"{tool:28} {mode:32} {secs:8.3f} {n / secs:10.0f} {rss:7.0f} MB")
        print(
            f"tracedep cold: Symbolizer() {cold['init']:.2f} s, "
            f"{cold['frames']} frames; python {sys.version.split()[0]}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
