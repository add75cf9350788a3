"""The ``tracedep`` command line.  Exit codes are decided here and only here.

0  no findings (or, for ``trace``, a complete trace)
1  findings
2  usage or input error
3  the run itself failed (no boot, guest crash or hang, QEMU failure)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracedep.common.run_options import RunOptions, add_arguments
from tracedep.errors import INTERNAL_ERROR, TracedepError

if TYPE_CHECKING:
    from tracedep.analysis.classes import ClassNamer
    from tracedep.analysis.findings import Analysis
    from tracedep.analysis.nesting import NestingJudge
    from tracedep.analysis.trace_model import Trace
    from tracedep.tracer.ftrace_binary import Decoded
    from tracedep.tracer.session import TraceOptions

log = logging.getLogger("tracedep")


class StrictParser(argparse.ArgumentParser):
    """An argument parser that takes no option by a prefix of its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def _trace_options(a: argparse.Namespace) -> TraceOptions:
    from tracedep.tracer.session import TraceOptions
    from tracedep.vm.kernel import user_kernel

    o = RunOptions.from_namespace(a)
    assert o.out is not None  # required by the parser
    kernel = None
    if o.kernel is not None:
        kernel = user_kernel(o.kernel, o.kernel_modules, o.kernel_build, o.vmlinux)
    return TraceOptions(
        out=o.out, arch=o.arch, abi=o.abi, series=o.kernel_series, kernel=kernel,
        module_srcs=list(o.module_src), kernel_modules=list(o.kernel_module),
        no_modules=o.no_modules, workload=o.workload, timeout=o.timeout, progress=o.progress,
        transport=o.transport, smp=o.smp, mem_mb=o.memory, accel=o.accel,
        untraced=getattr(a, "untraced", False),
    )


def cmd_trace(a: argparse.Namespace) -> int:
    from tracedep.tracer.session import trace

    res = trace(_trace_options(a))
    if res.manifest.untraced:
        wl = res.manifest.workload
        window = (f"{wl.end_uptime_s - wl.start_uptime_s:.2f} s" if wl.start_uptime_s
                  is not None and wl.end_uptime_s is not None else "unknown")
        print(f"tracedep: untraced run in {res.run_dir}: workload rc={wl.rc}, "
              f"window {window} (guest), guest {res.ending}")
        return 0
    counts = res.manifest.event_counts
    lost = res.manifest.lost.total
    print(f"tracedep: trace in {res.run_dir}: {sum(counts.values())} events, {lost} lost, "
          f"guest {res.ending}")
    return 0


def _analyze_and_report(source: Path, out: Path, vmlinux: Path | None, dwarf: bool,
                        kallsyms: Path | None = None, decoded: Decoded | None = None,
                        stream: bool = False) -> Analysis:
    """Analyze a run directory or trace file into ``out``; return the analysis.
    ``decoded``: the run's trace as the tracer decoded it (a run is decoded once).
    A run directory whose trace does not fit in memory, or any with ``stream``, is
    read a window at a time (analysis.stream_pipeline)."""
    from tracedep.analysis.dwarf_pass import dwarf_aids, symbolize
    from tracedep.analysis.pipeline import analyze
    from tracedep.analysis.stream_pipeline import How, analyze_run, too_long
    from tracedep.analysis.trace import load, load_run
    from tracedep.common import heap, run_manifest
    from tracedep.reports.serialize import write_run_outputs
    from tracedep.tracer import schema
    from tracedep.vm.debug_packages import debug_vmlinux

    def vml_of(trace: Trace) -> Path | None:
        k = trace.info.kernel
        return (vmlinux or (Path(k.vmlinux) if k.vmlinux else None)
                or debug_vmlinux(k.release, k.abi, k.packages)) if dwarf else None

    if source.is_dir() and (stream or (decoded.cut is not None if decoded is not None
                                       else too_long(run_manifest.read(source)))):
        if decoded is not None:  # its first events only: the stream reads them all again
            decoded.events = schema.empty()
            heap.give_back()
        vml: Path | None = None

        def aids(t: Trace) -> tuple[NestingJudge | None, ClassNamer | None]:
            nonlocal vml
            vml = vml_of(t)
            return dwarf_aids(t, vml) if dwarf else (None, None)

        a, trace = analyze_run(source, run_manifest.read(source), aids, How(
            say=lambda line: print(line, file=sys.stderr, flush=True), decoded=decoded))
    else:
        trace = load_run(source, decoded) if decoded is not None else load(source, kallsyms)
        vml = vml_of(trace)
        a = analyze(trace, *dwarf_aids(trace, vml)) if dwarf else analyze(trace)
    if dwarf:
        for w in symbolize(a, trace, vml):
            a.health.add_warning(w)
    out.mkdir(parents=True, exist_ok=True)
    write_run_outputs(out, a)
    by_driver: dict[str, int] = {}
    for f in a.findings:
        by_driver[f.driver] = by_driver.get(f.driver, 0) + 1
    summary = ", ".join(f"{d}: {n}" for d, n in sorted(by_driver.items())) or "none"
    print(f"tracedep: {len(a.findings)} findings ({summary}); report in {out / 'index.html'}")
    for w in a.health.warnings:
        print(f"tracedep: warning: {w}", file=sys.stderr)
    return a


def _retain(run_dir: Path, mode: str, a: Analysis) -> None:
    """``--raw``: what to keep of the raw pages now that they are analysed."""
    from tracedep.tracer.retention import retain_run

    witness = [f.first_ts_ns for f in a.findings] + [
        s.ts_ns for f in a.findings for s in f.sites if s.ts_ns is not None]
    rec = retain_run(run_dir, mode, witness)
    if rec is not None:
        print(f"tracedep: raw pages ({mode}): {rec.disk_bytes_before / 1e6:.1f} MB -> "
              f"{rec.disk_bytes_after / 1e6:.1f} MB on disk in {rec.seconds} s")


def _export_run(a: argparse.Namespace, failure: str | None) -> None:
    """``--kcidb``/``--sarif`` of a run: written whatever became of it (a run that
    failed is an ERROR there); a run that left no run directory has nothing to say."""
    from tracedep.reports.export_runs import load_export_run
    from tracedep.reports.exports import write_exports

    if a.kcidb is None and a.sarif is None:
        return
    if not any((a.out / f).is_file() for f in ("manifest.json", "findings.json")):
        print(f"tracedep: warning: {a.out} holds no run: no KCIDB/SARIF written",
              file=sys.stderr)
        return
    write_exports([load_export_run(a.out, failure=failure)], a.kcidb, a.sarif)


def cmd_run(a: argparse.Namespace) -> int:
    from tracedep.reports.exports import check_output

    for path in (a.kcidb, a.sarif):
        if path is not None:
            check_output(path)
    try:
        rc = _run(a)
    except TracedepError as e:
        try:
            _export_run(a, str(e) or type(e).__name__)
        except TracedepError as e2:
            print(f"tracedep: error: {e2}", file=sys.stderr)
        raise
    _export_run(a, None)
    return rc


def _run(a: argparse.Namespace) -> int:
    from tracedep.errors import GuestError
    from tracedep.tracer.ftrace_binary import Decoded
    from tracedep.tracer.session import trace

    opts = replace(_trace_options(a), for_analysis=True)
    failure: GuestError | None = None
    decoded: Decoded | None = None
    try:
        decoded = trace(opts).decoded
    except GuestError as e:
        # keep and analyze what the guest sent before it died; still a failed run
        failure = e
        decoded = e.partial if isinstance(e.partial, Decoded) else None
        if not (a.out / "control.log").is_file():
            raise
    try:
        an = _analyze_and_report(a.out, a.out, a.vmlinux, not a.no_dwarf, decoded=decoded)
        n = len(an.findings)
        _retain(a.out, a.raw, an)
    except TracedepError as e:
        if failure is not None:
            print(f"tracedep: error: {e}", file=sys.stderr)
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return 1 if n else 0


def cmd_analyze(a: argparse.Namespace) -> int:
    from tracedep.tracer.run_record import recover

    src: Path = a.trace
    if a.live:
        return _analyze_live(src, a.out)
    out: Path = a.out or (src if src.is_dir() else src.with_name(src.name + ".tracedep"))
    if src.is_dir() and recover(src):
        print(f"tracedep: warning: {src}: the tracedep that ran it died while the guest ran; "
              f"its manifest is now completed from what reached the disk", file=sys.stderr)
    n = len(_analyze_and_report(src, out, a.vmlinux, not a.no_dwarf, a.kallsyms,
                                stream=a.stream).findings)
    return 1 if n else 0


def _analyze_live(run_dir: Path, out: Path | None) -> int:
    """``analyze --live``: the trace of a run still going, as far as every CPU has sent
    it (tracer.live_prefix), streamed, into ``RUN/live`` (tracer.live)."""
    from tracedep.analysis.stream_pipeline import How, analyze_run
    from tracedep.common import run_manifest
    from tracedep.errors import InputError
    from tracedep.reports.serialize import write_run_outputs
    from tracedep.tracer.live import LIVE_DIR, LiveResult
    from tracedep.tracer.live_prefix import readable_prefix
    from tracedep.tracer.run_record import calibrate, snapshot

    if not run_dir.is_dir():
        raise InputError(f"--live: {run_dir}: not a run directory")
    state = run_manifest.read(run_dir).state
    if state != "running":
        raise InputError(f"--live: {run_dir} is not a run in progress (state: {state}); "
                         f"`tracedep analyze {run_dir}` reads it whole")
    prefix = readable_prefix(run_dir)
    if prefix is None:
        raise InputError(f"--live: {run_dir}: no page of the trace has reached the disk yet")
    info = snapshot(run_dir)
    an, _ = analyze_run(run_dir, info, None, How(
        prefix=prefix, on_decoded=lambda d: calibrate(info, d)))
    an.health.add_warning(
        f"analysed while the run went on: its events up to {prefix.until_ns / 1e9:.3f} s "
        f"(guest clock), by which every CPU's pages had arrived; the run's own report, "
        f"when the guest has stopped, supersedes this one")
    out = out or run_dir / LIVE_DIR
    write_run_outputs(out, an)
    LiveResult(len(an.findings), prefix.until_ns, an.health.events).write(out)
    print(f"tracedep: {len(an.findings)} findings up to {prefix.until_ns / 1e9:.1f} s of "
          f"the run so far; report in {out / 'index.html'}")
    return 1 if an.findings else 0


def cmd_report(a: argparse.Namespace) -> int:
    from tracedep.reports.serialize import load_run_outputs, write_run_outputs

    analysis = load_run_outputs(a.run_dir)
    write_run_outputs(a.run_dir, analysis)
    print(f"tracedep: report in {a.run_dir / 'index.html'}")
    return 1 if analysis.findings else 0


def cmd_export_dat(a: argparse.Namespace) -> int:
    from tracedep.tracer import trace_dat

    s = trace_dat.write(a.run_dir, a.out)
    cut = f"; a cut last page left out on CPU {sorted(s.partial_bytes)}" if s.partial_bytes else ""
    print(f"tracedep: {a.out}: trace.dat v6, {s.cpus} CPUs, {sum(s.pages.values())} pages, "
          f"{s.events} event formats, kallsyms {'kept' if s.kallsyms else 'absent'}{cut}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``tracedep kcidb|sarif RUN_DIR… --out FILE``: existing runs as KCIDB or SARIF."""
    from tracedep.reports.export_runs import load_export_run
    from tracedep.reports.exports import check_output, document, write_json

    check_output(a.out)
    runs = [load_export_run(d) for d in a.run_dirs]
    write_json(a.out, document(a.cmd, runs))
    if str(a.out) != "-":
        n = sum(len(r.findings) for r in runs)
        print(f"tracedep: {a.cmd} of {len(runs)} run(s), {n} findings, in {a.out}")
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    """Download and prepare everything a run needs, so later runs start at once."""
    from tracedep.common.machines import machine_for
    from tracedep.tracer.session import discover
    from tracedep.vm.accel import choose_accel
    from tracedep.vm.debug_packages import debug_vmlinux
    from tracedep.vm.initramfs import busybox_binary, loader_binary, pump_binary
    from tracedep.vm.kernel import fetch_debian_kernel

    machine = machine_for(a.arch)
    kernel = fetch_debian_kernel(machine, a.abi, a.kernel_series)
    busybox_binary(machine)
    pump_binary(machine)
    loader_binary(machine)
    discover(machine, kernel, choose_accel(machine, kernel.image, a.accel))
    vml = None if a.no_dwarf else debug_vmlinux(kernel.release, kernel.abi, kernel.packages)
    print(f"tracedep: ready: {kernel.release} ({kernel.package_version}), "
          f"debug symbols {'at ' + str(vml) if vml else 'not fetched'}")
    return 0


def cmd_probes(a: argparse.Namespace) -> int:
    """Print a shell script that arms tracedep's probes on a real machine."""
    from tracedep.common.machines import machine_for
    from tracedep.tracer.lock_init import class_probes
    from tracedep.tracer.probes import TRACEPOINTS, probe_definitions, stack_triggers
    from tracedep.tracer.session import discover, probe_vmlinux
    from tracedep.tracer.wait_probes import wait_probe_definitions, workqueue_name_offset
    from tracedep.vm.accel import choose_accel
    from tracedep.vm.kernel import fetch_debian_kernel

    machine = machine_for(a.arch)
    kernel = fetch_debian_kernel(machine, a.abi, a.kernel_series)
    disc = discover(machine, kernel, choose_accel(machine, kernel.image, "auto"))
    defs = probe_definitions(machine, disc)
    vmlinux = probe_vmlinux(kernel)
    defs += class_probes(machine, disc, vmlinux)[0]
    defs += wait_probe_definitions(machine, disc, workqueue_name_offset(vmlinux)[0])
    print("#!/bin/sh\n# tracedep probes for", kernel.release)
    print("T=/sys/kernel/tracing\necho 0 > $T/tracing_on")
    # exact addresses next to every symbol: stacks and call sites stay resolvable
    print("echo 1 > $T/options/sym-offset\necho 1 > $T/options/sym-addr")
    for d in defs:
        # printf, not echo: some shells' echo would eat the backslash of an immediate (\\152)
        print(f"printf '%s\\n' '{d.definition}' >> $T/kprobe_events")
    print("echo 1 > $T/events/tracedep/enable")
    for tp in TRACEPOINTS:
        print(f"[ -e $T/events/{tp}/enable ] && echo 1 > $T/events/{tp}/enable")
    for trig in stack_triggers(defs, machine=machine):
        ev, _, cond = trig.partition(" ")
        print(f"echo 'stacktrace {cond}' > $T/events/{ev}/trigger")
    print("echo 1 > $T/tracing_on")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """``--kcidb FILE`` and ``--sarif FILE`` (run and nightly)."""
    p.add_argument("--kcidb", type=Path, default=None, metavar="FILE",
                   help="also write the results as a KCIDB v5 document (KernelCI) to FILE")
    p.add_argument("--sarif", type=Path, default=None, metavar="FILE",
                   help="also write the findings as SARIF 2.1.0 (code scanning) to FILE")


def build_parser() -> argparse.ArgumentParser:
    # No prefix abbreviations: `--kernel-module X` must never be taken for
    # `--kernel-modules X`.  allow_abbrev is not inherited by subparsers, so every
    # parser the subparsers make (nightly's and bisect's too) is built strict.
    p = StrictParser(prog="tracedep", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=StrictParser)
    t = sub.add_parser("trace", help="boot a kernel with the modules under test and trace it")
    add_arguments(t, exclude=("no_dwarf", "raw"))
    # trace's own (not a run option: `run` has nothing to analyze without a trace)
    t.add_argument("--untraced", action="store_true",
                   help="boot the same guest, modules and workload with nothing armed (no "
                        "probe, event or trace pump) and write no trace: console.log and a "
                        "manifest (untraced: true), to measure what tracing costs the guest")
    t.set_defaults(func=cmd_trace)
    r = sub.add_parser("run", help="trace, analyze and report (exit 1 when there are findings)")
    add_arguments(r)
    add_export_arguments(r)
    r.set_defaults(func=cmd_run)
    an = sub.add_parser("analyze", help="analyze a run directory or an ftrace text file")
    an.add_argument("trace", type=Path, help="run directory, or `trace`/`trace_pipe` text")
    an.add_argument("--vmlinux", type=Path, default=None, help="vmlinux with DWARF")
    an.add_argument("--kallsyms", type=Path, default=None,
                    help="the traced machine's /proc/kallsyms (for text traces)")
    an.add_argument("--no-dwarf", action="store_true")
    an.add_argument("--stream", action="store_true",
                    help="read a run directory a window at a time even if it fits in memory "
                         "(the way a trace longer than memory is read: same findings, and "
                         "free disk about the size of the trace while it runs)")
    an.add_argument("--live", action="store_true",
                    help="a run still going: analyse the trace as far as every CPU has sent "
                         "it, into RUN/live (what `run` does as the trace doubles)")
    an.add_argument("--out", type=Path, default=None,
                    help="where to write the report (default: the run directory)")
    an.set_defaults(func=cmd_analyze)
    rp = sub.add_parser("report", help="regenerate the text and HTML reports of a run")
    rp.add_argument("run_dir", type=Path)
    rp.set_defaults(func=cmd_report)
    ex = sub.add_parser("export-dat", help="write a run's pages as a trace-cmd trace.dat (v6)")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("out", type=Path)
    ex.set_defaults(func=cmd_export_dat)
    for fmt, what in (("kcidb", "a KCIDB v5 document (checkouts, builds, tests, issues, "
                                "incidents) for KernelCI"),
                      ("sarif", "SARIF 2.1.0 (one result per finding) for code scanning")):
        x = sub.add_parser(fmt, help=f"write analysed run directories as {what}")
        x.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
        x.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="the file to write (- for standard output)")
        x.set_defaults(func=cmd_export)
    f = sub.add_parser("fetch", help="download and prepare the default kernel and tools")
    add_arguments(f, only=("arch", "kernel_series", "abi", "accel"))
    f.add_argument("--no-dwarf", action="store_true",
                   help="do not download the debug vmlinux (runs with --no-dwarf do not need it)")
    f.set_defaults(func=cmd_fetch)
    pr = sub.add_parser("probes", help="print a script arming tracedep's probes on a machine")
    add_arguments(pr, only=("arch", "kernel_series", "abi"))
    pr.set_defaults(func=cmd_probes)
    from tracedep.nightly import command, gitbisect

    command.add_parser(sub, add_export_arguments)
    gitbisect.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage line
        return 0 if e.code == 0 else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="tracedep: %(message)s",
    )
    if not args.verbose:
        # their warnings reach the user once, through the report's health section
        logging.getLogger("tracedep.analysis.symbolizer").setLevel(logging.ERROR)
        # qemu.qmp logs (with tracebacks) what our QemuError then says in one line
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL + 1)
    # a SIGTERM (a CI job's time limit, kill) ends tracedep as Ctrl-C does: one line,
    # exit 3, files half-written removed; while a guest runs, both first end its
    # workload and report the trace so far (tracer.early_stop)
    with contextlib.suppress(ValueError):  # not the main thread: Python's own handling
        signal.signal(signal.SIGTERM, _terminated)
    try:
        rc: int = args.func(args)
        return rc
    except TracedepError as e:
        print(f"tracedep: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tracedep: interrupted", file=sys.stderr)
        return 3
    except OSError as e:  # the machine's refusal (disk full, permissions): not a defect
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"tracedep: error: {e.strerror or e}{where}", file=sys.stderr)
        return 3
    except Exception as e:  # a defect of tracedep: one line, the traceback kept
        log_path = _crash_log(argv, e)
        print(f"tracedep: internal error ({type(e).__name__}: {e}); "
              f"details in {log_path}", file=sys.stderr)
        return INTERNAL_ERROR


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _crash_log(argv: list[str] | None, e: BaseException) -> str:
    """Write the traceback of ``e`` where the user can find it; return the path."""
    import tempfile
    import time
    import traceback

    from tracedep.common.cache import cache_root

    text = (f"tracedep {' '.join(argv if argv is not None else sys.argv[1:])}\n"
            + "".join(traceback.format_exception(e)))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for d in (cache_root() / "crashes", Path(tempfile.gettempdir())):
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
            return str(d / name)
        except OSError:
            continue
    return "(nowhere: no writable folder)"


if __name__ == "__main__":
    sys.exit(main())
