"""One traced boot: build the guest, run it in QEMU, bring the trace home, write the run dir.

Run directory layout::

    manifest.json         see common.run_manifest; rewritten as the run progresses
    trace/cpuN.raw        binary ftrace pages of CPU N, as trace_pipe_raw gave them
                          (none in an untraced run: ``TraceOptions.untraced``)
    control.log           the guest's control channel (formats, modules, stats …)
    console.log           the guest's serial console
    qemu.log              QEMU's own output
    initramfs.cpio.gz     the exact guest that ran (kept: it is small)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracedep import __version__
from tracedep.common import run_lock
from tracedep.common import run_manifest as manifest
from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_write
from tracedep.common.machines import Machine, machine_for
from tracedep.common.run_manifest import (
    Ending,
    KernelRecord,
    ModuleRecord,
    Probes,
    RunManifest,
)
from tracedep.common.run_records import QemuRecord, TimingRecord, WorkloadRecord
from tracedep.errors import GuestError, InputError, QemuError, RunError, TracedepError
from tracedep.kimage import kallsyms as ksyms
from tracedep.tracer import control, module_sections
from tracedep.tracer.channels import Sink, open_sink
from tracedep.tracer.early_stop import END_INTERRUPTED, STOP_LINE, EarlyStop
from tracedep.tracer.extra_probes import extra_probes, inline_probes_calibrated
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.tracer.live import LiveAnalyses
from tracedep.tracer.lock_init import class_probes
from tracedep.tracer.probes import (
    TRACEPOINTS,
    Discovery,
    probe_definitions,
    stack_triggers,
)
from tracedep.tracer.progress import ProgressMeter
from tracedep.tracer.run_record import finish_manifest, finish_untraced
from tracedep.tracer.wait_probes import wait_probe_definitions, workqueue_name_offset
from tracedep.vm.accel import choose_accel
from tracedep.vm.initramfs import GuestConfig, build_initramfs
from tracedep.vm.kernel import Kernel, fetch_debian_kernel
from tracedep.vm.kernel_source import ensure_source_tree
from tracedep.vm.kmodules import (
    KernelModules,
    LoadStep,
    load_order,
    module_src_depends,
    with_dwarf,
)
from tracedep.vm.kmodules import resolve as resolve_kernel_modules
from tracedep.vm.modules import (
    BuiltModule,
    build_modules,
    bundled_driver_dirs,
)
from tracedep.vm.qemu import END_PANIC, END_POWEROFF, END_RESET, END_TIMEOUT, Vm, VmSpec

log = logging.getLogger(__name__)

# what loads modules in the guest (vm/guest/tdinsmod.c): its exit code is the errno
LOADER = "tdinsmod"

BOOT_ARGS = (
    # no_hash_pointers: kmalloc's ptr would print as (____ptrval____) otherwise;
    # preempt=voluntary: might_sleep() then calls __cond_resched, our catch-all probe
    "panic=-1 no_hash_pointers preempt=voluntary quiet loglevel=4 tsc=reliable "
    # an oops (a driver's or the kernel's) ends the run at once as a panic, with the
    # trace so far, instead of a guest limping on until the timeout
    "oops=panic"
)


@dataclass
class TraceOptions:
    out: Path
    arch: str = "x86_64"
    abi: str | None = None
    series: str | None = None  # Debian kernel series (6.1, 6.12); None: the default
    kernel: Kernel | None = None  # a user kernel instead of Debian's
    module_srcs: list[Path] = field(default_factory=list)
    kernel_modules: list[str] = field(default_factory=list)  # the kernel package's own, by name
    no_modules: bool = False  # trace the kernel alone
    workload: Path | None = None
    timeout: float = 300.0
    transport: str = "socket"
    smp: int = 2
    mem_mb: int = 1024
    accel: str = "auto"
    buffer_kb: int = 16384
    settle_s: float = 0.5
    progress: float = 0.0  # seconds between progress lines on stderr (0: none)
    # the same guest, modules, QEMU and workload with nothing armed in the guest (no
    # probe, event or pump) and no trace: what tracing costs the guest, measured
    untraced: bool = False
    # the trace is analysed next (``tracedep run``): a trace too long for the whole frame
    # keeps the windows of its one decode for the stream (Decoded.windows)
    for_analysis: bool = False


@dataclass
class TraceResult:
    run_dir: Path
    ending: str
    manifest: RunManifest
    decoded: Decoded | None = None  # the trace, decoded once when the run ended


def boot_args(machine: Machine) -> str:
    return f"console={machine.console} {BOOT_ARGS} {machine.extra_append}".strip()


def _prepare_out(out: Path, untraced: bool = False) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty; tracedep never overwrites a run")
    out.mkdir(parents=True, exist_ok=True)
    if not untraced:
        (out / "trace").mkdir()


async def _progress(run_dir: Path, interval: float, live: LiveAnalyses) -> None:
    """Print the progress line (tracer.progress) every ``interval`` seconds, and start
    the live analyses (tracer.live)."""
    meter = ProgressMeter(run_dir)
    while True:
        await asyncio.sleep(interval)
        try:
            p = await asyncio.to_thread(meter.sample)
        except (TracedepError, OSError, ValueError) as e:
            # the pages came from the guest: the decoder judges them when the run
            # ends; the progress line just stops
            log.warning("progress line stopped: %s", e)
            return
        if p is None:
            continue
        got = live.latest()
        if got is not None:
            p = replace(p, findings=got.findings, findings_uptime_s=round(got.until_ns / 1e9, 1))
        print(p.line(), file=sys.stderr, flush=True)
        try:
            await live.tick(p.trace_mb)
        except OSError as e:  # the machine's refusal: the run goes on without them
            log.warning("live analysis not started: %s", e)


async def _boot(spec: VmSpec, ports: list[tuple[str, Path]], transport: str, timeout: float,
                on_start: Any = None, progress: float = 0.0, workload: bool = True
                ) -> tuple[str, str, dict[str, Any]]:
    """Boot, stream ``ports`` to files, wait for the end; return (ending, detail, timings).
    ``progress``: seconds between progress lines (0: none); ``workload``: the guest
    runs one, which SIGINT and SIGTERM end (tracer.early_stop; not the discovery
    boot, which Ctrl-C just interrupts)."""
    t0 = time.monotonic()
    timings: dict[str, Any] = {}
    sinks: list[Sink] = []
    async with Vm(spec) as vm:
        if on_start:
            on_start(vm)
        for name, path in ports:
            sinks.append(await open_sink(vm, transport, name, path))
        await vm.cont()
        t_cont = time.monotonic()
        live = LiveAnalyses(ports[0][1].parent)
        meter = asyncio.create_task(_progress(ports[0][1].parent, progress, live)) if (
            progress > 0) else None
        try:
            if workload:
                # sinks[0]: the control port, where the guest listens for "stop"
                with EarlyStop(lambda: sinks[0].send(STOP_LINE)) as stop:
                    ending = await stop.wait_end(vm.wait_end(timeout))
                timings["stop_signal"] = stop.signal
            else:
                ending = await vm.wait_end(timeout)
            if ending.how == END_INTERRUPTED:
                # at once: the guest runs no further, what is in flight still comes
                with contextlib.suppress(QemuError):
                    await vm.execute("stop")
        finally:
            if meter is not None:
                meter.cancel()
            await live.stop()
        # -no-shutdown keeps QEMU alive after the guest stops: drain what is in flight
        for s in sinks:
            await s.drain(idle=0.3, limit=10)
        timings["qemu_command"] = shlex.join(vm.cmdline)
        timings["qmp_events"] = vm.events
        for s in sinks:
            await s.close()
        firsts = [s.first_byte_at for s in sinks[1:] if s.first_byte_at]
        timings["boot_to_first_event_s"] = round(min(firsts) - t_cont, 3) if firsts else None
        timings["bytes"] = {s.name: s.nbytes for s in sinks}
    timings["wall_s"] = round(time.monotonic() - t0, 3)
    return ending.how, ending.detail, timings


def _discovery_key(kernel: Kernel) -> str:
    h = hashlib.sha256()
    with open(kernel.image, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def discovery_dir(kernel: Kernel) -> Path:
    return cache_root() / "discovery" / f"{kernel.release or 'kernel'}-{_discovery_key(kernel)}"


def discover(machine: Machine, kernel: Kernel, accel: str) -> Discovery:
    """What this kernel can probe; one boot per kernel image, cached."""
    cdir = discovery_dir(kernel)
    cfile = cdir / "discovery.json"
    if cfile.is_file():
        d = json.loads(cfile.read_text())
        return Discovery(frozenset(d["functions"]), frozenset(d["traceable"]),
                         frozenset(d["blacklist"]), tuple(d["sched_text"]))
    cdir.mkdir(parents=True, exist_ok=True)
    initrd = build_initramfs(machine, kernel, [], GuestConfig(mode="discover"),
                             cdir / "initramfs.cpio.gz")
    spec = VmSpec(machine, kernel.image, initrd, boot_args(machine), cdir, accel=accel)
    how, detail, _ = asyncio.run(_boot(spec, [("tracedep.ctl", cdir / "control.log")],
                                       "socket", 180, workload=False))
    ctl = control.load(cdir / "control.log")
    if "discover" not in ctl.done:
        raise RunError(f"discovery boot of {kernel.image} did not finish ({how} {detail}); "
                       f"see {cdir / 'console.log'}")
    kallsyms = ctl.file("/proc/kallsyms") or ""
    funcs = ksyms.text_functions(ksyms.parse(kallsyms))
    addr = {n: a for a, n in funcs}
    lo, hi = addr.get("__sched_text_start"), addr.get("__sched_text_end")
    sched = [n for a, n in funcs if lo is not None and hi is not None and lo <= a < hi]
    traceable = {ln.split()[0] for ln in (ctl.file(
        "/sys/kernel/tracing/available_filter_functions") or "").splitlines() if ln.strip()}
    blacklist: set[str] = set()
    for ln in (ctl.file("/sys/kernel/debug/kprobes/blacklist") or "").splitlines():
        parts = ln.split()
        if len(parts) >= 2:
            blacklist.add(parts[-1])
    data = {"functions": sorted({n for _, n in funcs}), "traceable": sorted(traceable),
            "blacklist": sorted(blacklist), "sched_text": sched}
    with gzip.open(cdir / "kallsyms.gz", "wt") as fh:
        fh.write(kallsyms)
    atomic_write(cfile, json.dumps(data))
    return discover(machine, kernel, accel)


def _under_test(built: list[BuiltModule], kmods: KernelModules) -> list[ModuleRecord]:
    """The manifest's record of each module under test, before the boot."""
    out = [ModuleRecord(m.name, "module-src", ko=str(m.ko), src_dir=str(m.src_dir),
                        build_dir=str(m.build_dir), loader=LOADER) for m in built]
    for n in kmods.under_test:
        km = kmods.modules[n]
        # the kernel's own: no source or build tree here; frames come from the -dbg .ko
        out.append(ModuleRecord(n, "kernel", ko=str(km.ko), kernel_path=km.rel,
                                loader=LOADER))
    return out


def _kernel_modules_dwarf(kernel: Kernel, kmods: KernelModules, disc: Discovery,
                          machine: Machine, vmlinux: Path | None) -> list[BuiltModule]:
    """The kernel's modules under test with DWARF (their -dbg twins), so that their
    inlined locks are probed like a --module-src module's (spinlock bodies where the
    kernel inlines them, percpu rwsem readers everywhere); only where such probes
    are calibrated (tracer.extra_probes)."""
    if not kmods.under_test or not inline_probes_calibrated(machine, disc, vmlinux):
        return []
    found, missing = with_dwarf(kernel, kmods)
    for m in missing:
        log.warning("--kernel-module %s: its inlined locks go unseen", m)
    return found


def _died_before_tracing(out: Path, how: str) -> bool:
    """A panic or reset before the guest said tracing started (``@@TD start``)."""
    if how not in (END_PANIC, END_RESET):
        return False
    ctl = out / "control.log"
    return not (ctl.is_file() and b"@@TD start" in ctl.read_bytes())


def _keep_attempt(out: Path, attempt: int, untraced: bool = False) -> list[str]:
    """Move a failed boot's console, control channel and trace aside (``*.attemptN``)."""
    kept = []
    for name in ("console.log", "control.log", "qemu.log", "trace"):
        p = out / name
        if p.exists():
            dest = out / f"{name}.attempt{attempt}"
            p.rename(dest)
            kept.append(dest.name)
    if not untraced:
        (out / "trace").mkdir(exist_ok=True)
    return kept


def trace(opts: TraceOptions) -> TraceResult:
    """Run one traced boot into ``opts.out``; raise after recording if the run failed."""
    machine = machine_for(opts.arch)
    if opts.timeout <= 0:
        raise InputError("--timeout must be positive")
    if opts.workload is not None and not opts.workload.is_file():
        raise InputError(f"--workload {opts.workload}: no such file")
    for src in opts.module_srcs:
        if not src.is_dir():
            raise InputError(f"--module-src {src}: no such directory")
    _prepare_out(opts.out, opts.untraced)
    t_start = time.time()
    info = RunManifest(
        state="preparing",
        tracedep_version=__version__,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        arch=machine.arch,
        transport=opts.transport,
        timeout_s=opts.timeout,
        untraced=opts.untraced,
    )
    with run_lock.held(opts.out):
        manifest.write(opts.out, info)
        try:
            return _trace(opts, machine, info)
        except BaseException as e:
            info.state = "failed"
            info.error = str(e) or type(e).__name__
            manifest.write(opts.out, info)
            raise


def probe_vmlinux(kernel: Kernel) -> Path | None:
    """A vmlinux with BTF for probe generation: the given one, else Debian's -dbg."""
    if kernel.vmlinux is not None:
        return kernel.vmlinux
    from tracedep.vm.debug_packages import ensure_dbg_vmlinux

    dbg = kernel.packages.dbg if kernel.packages else None
    try:
        return ensure_dbg_vmlinux(kernel.release, cache_root(), dbg.version if dbg else None)
    except Exception as e:  # offline: the probes that need struct offsets are left out
        log.warning("no debug vmlinux for %s: %s", kernel.release, e)
        return None


def _trace(opts: TraceOptions, machine: Machine, info: RunManifest) -> TraceResult:
    out = opts.out
    kernel = opts.kernel or fetch_debian_kernel(machine, opts.abi, opts.series)
    info.kernel = KernelRecord(
        release=kernel.release, abi=kernel.abi, package_version=kernel.package_version,
        image=str(kernel.image), build_dir=str(kernel.build_dir) if kernel.build_dir else None,
        vmlinux=str(kernel.vmlinux) if kernel.vmlinux else None, flavour=machine.flavour,
        # exactly which Debian packages (name, version, arch) were used
        packages=kernel.packages)
    for note in kernel.packages.notes if kernel.packages else ():
        log.warning("%s", note)
    mods = _modules_under_test(opts, kernel, machine, info)
    manifest.write(out, info)
    spec = _prepare_guest(opts, machine, kernel, mods, info)
    info.state = "running"
    manifest.write(out, info)
    how, detail = _boot_until_traced(opts, spec, info)
    if opts.untraced:
        decoded = None
        done = finish_untraced(out, info, mods.under_test)
    else:
        decoded = finish_manifest(out, info, mods.under_test, machine, opts.for_analysis)
        done = info.trace_complete
    info.state = "complete" if done else "incomplete"
    manifest.write(out, info)
    if how != END_POWEROFF:
        said = _console_panic(out / "console.log")
        # a hang is a hang (the kernel may have complained on the way: say that too)
        why = (f"{detail}; the console says: {said}" if how == END_TIMEOUT and said and detail
               else said or detail or "see console.log")
        raise GuestError(f"guest {how}: {why}; partial trace kept in {out}", partial=decoded)
    if not done:
        what = "workload" if opts.untraced else "trace"
        raise GuestError(f"guest powered off before the {what} was complete; see "
                         f"{out / 'console.log'}", partial=decoded)
    return TraceResult(out, how, info, decoded)


@dataclass
class _Modules:
    """The modules of one run: built from source, the kernel's own, and their order."""

    built: list[BuiltModule]
    kmods: KernelModules
    order: list[LoadStep]
    under_test: list[ModuleRecord]


def _modules_under_test(opts: TraceOptions, kernel: Kernel, machine: Machine,
                        info: RunManifest) -> _Modules:
    if opts.no_modules and (opts.module_srcs or opts.kernel_modules):
        raise InputError("--no-modules excludes --module-src and --kernel-module")
    # an unknown --kernel-module is an input error before anything is built or booted
    resolve_kernel_modules(kernel, opts.kernel_modules)
    # the bundled example drivers are the default only when nothing else is under test
    bundled = not opts.module_srcs and not opts.no_modules and not opts.kernel_modules
    srcs = bundled_driver_dirs() if bundled else opts.module_srcs
    info.bundled_drivers = bundled
    built = build_modules(srcs, kernel, machine)
    built_deps = module_src_depends(built)
    # kernel modules a --module-src build needs go in too (as dependencies)
    own = {m.name for m in built}
    kmods = resolve_kernel_modules(
        kernel, opts.kernel_modules,
        sorted({d for ds in built_deps.values() for d in ds} - own))
    for name, what in kmods.builtin.items():
        log.warning("--kernel-module %s: built into this kernel%s; nothing to load", name,
                    f" (as {what})" if what != name else "")
    order = load_order(built, kmods, built_deps)
    under_test = _under_test(built, kmods)
    info.modules = list(under_test)
    info.kernel_modules = {"requested": list(opts.kernel_modules),
                              "under_test": kmods.under_test, "builtin": kmods.builtin,
                              "dependencies": kmods.dependencies}
    info.load_order = [{"role": s.role, "name": s.name} for s in order]
    if kmods.under_test and kernel.packages is not None:
        # the kernel's own code has no source of its own here: the *_nested()
        # annotations of its modules are read from Debian's tree (analysis.nesting)
        try:
            info.kernel = replace(info.kernel,
                                  source_tree=str(ensure_source_tree(kernel.packages)))
        except (RunError, InputError) as e:
            log.warning("no kernel source (%s): nestings in the kernel's modules are "
                        "judged from DWARF alone", e)
    return _Modules(built, kmods, order, under_test)


def _prepare_guest(opts: TraceOptions, machine: Machine, kernel: Kernel, mods: _Modules,
                   info: RunManifest) -> VmSpec:
    """Discover the kernel, plan every probe, build the initramfs: the guest to boot."""
    out = opts.out
    built, kmods = mods.built, mods.kmods
    accel = choose_accel(machine, kernel.image, opts.accel)
    disc = discover(machine, kernel, accel)
    info.discovery_dir = str(discovery_dir(kernel))
    defs = probe_definitions(machine, disc)
    # lock initializers and inode re-keying: lockdep's classes (tracer.lock_init)
    vmlinux = probe_vmlinux(kernel)
    class_defs, info.lock_classes = class_probes(machine, disc, vmlinux)
    defs += class_defs
    # waits on work items, workqueues, timers, completions, kthreads (tracer.wait_probes)
    wq_off, info.lock_classes["workqueue_name"] = workqueue_name_offset(vmlinux)
    defs += wait_probe_definitions(machine, disc, wq_off)
    # each load's section addresses, a load whose init fails too (tracer.module_sections)
    msec, info.module_sections = module_sections.probes(machine, disc, vmlinux)
    # calibration, inlined locks of the modules, lockdep's tracepoints (tracer.extra_probes)
    extra = extra_probes(machine, disc,
                         built + _kernel_modules_dwarf(kernel, kmods, disc, machine, vmlinux),
                         vmlinux)
    workload = opts.workload.read_text() if opts.workload else None
    cfg = GuestConfig(
        # untraced: the very same initramfs but for this word (its init arms nothing)
        mode="untraced" if opts.untraced else "trace",
        kprobes=[d.definition for d in defs] + extra.kprobes + msec,
        events=list(TRACEPOINTS) + extra.events,
        stack_triggers=stack_triggers(defs, machine=machine),
        buffer_kb=opts.buffer_kb,
        settle_s=opts.settle_s,
        workload=workload,
    )
    initrd = build_initramfs(machine, kernel, built, cfg, out / "initramfs.cpio.gz",
                             kmods, mods.order)
    info.workload = WorkloadRecord(script=str(opts.workload) if opts.workload else "default")
    info.probes = Probes(defined=len(defs) + len(extra.kprobes) + len(msec),
                         definitions=[d.definition for d in defs] + extra.kprobes + msec,
                         # kprobe events refuse a function without an ftrace location
                         # (trace_kprobe.c within_notrace_func) unless the kernel has
                         # CONFIG_KPROBE_EVENTS_ON_NOTRACE: the reason behind its
                         # "Failed to register probe event"
                         notrace=sorted({d.func for d in defs} - disc.traceable))
    extra.record(info)
    spec = VmSpec(machine, kernel.image, initrd, boot_args(machine), out, smp=opts.smp,
                  mem_mb=opts.mem_mb, accel=accel)
    info.qemu = QemuRecord(accel=accel, smp=opts.smp, mem_mb=opts.mem_mb, append=spec.append)
    return spec


def _boot_until_traced(opts: TraceOptions, spec: VmSpec, info: RunManifest
                       ) -> tuple[str, str]:
    """Boot the guest; once more if the kernel died before tracing started.  Returns
    how the (last) guest ended."""
    out = opts.out
    ports = [("tracedep.ctl", out / "control.log")]
    # untraced: the same ports (the same guest), which no pump writes to
    ports += [(f"tracedep.cpu{n}", Path(os.devnull) if opts.untraced
               else out / "trace" / f"cpu{n}.raw") for n in range(opts.smp)]

    def record_cmdline(vm: Vm) -> None:
        info.qemu = replace(info.qemu, command=shlex.join(vm.spec.command(vm.qmp_path)))
        manifest.write(out, info)

    for attempt in (1, 2):
        how, detail, timings = asyncio.run(_boot(spec, ports, opts.transport, opts.timeout,
                                                 on_start=record_cmdline,
                                                 progress=0.0 if opts.untraced
                                                 else opts.progress))
        if attempt == 2 or not _died_before_tracing(out, how):
            break
        # The kernel died while the guest armed the probes, before any driver ran:
        # not a finding about the drivers (seen under heavy host load: a kprobe hit
        # while the kernel patched text).  Keep that boot's files, boot once more.
        why = _console_panic(out / "console.log") or detail
        log.warning("guest %s before tracing started (%s); booting again", how, why)
        kept = _keep_attempt(out, attempt, opts.untraced)
        info.failed_attempts.append(
            {"how": how, "detail": detail, "why": why, "files": kept})
        manifest.write(out, info)
    # the QMP events as the manifest has always recorded them, read by the one reader
    # the guest's word decides whether it was the workload's end (tracer.run_record)
    info.workload = replace(info.workload, stopped_by=timings.pop("stop_signal", None))
    events = QemuRecord.from_manifest({"events": timings.pop("qmp_events", [])}).events
    info.qemu = replace(info.qemu, command=timings.pop("qemu_command", info.qemu.command),
                        events=events)
    info.timing = TimingRecord.from_manifest(timings)
    info.ending = Ending(how, detail)
    return how, detail


def _console_panic(console: Path) -> str | None:
    """The kernel's own words for a panic or oops, from the serial console."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return None
    found = [m.group(0).strip() for pat in (r"Kernel panic - not syncing: .*",
                                            r"(?:kernel )?BUG[: ].*", r"Oops: .*")
             if (m := re.search(pat, text))]
    if not found:
        return None
    # an oops made a panic by oops=panic: the panic says "Fatal exception", the oops why
    return f"{found[0]} ({found[1]})" if len(found) > 1 and "Fatal exception" in found[0] \
        else found[0]
