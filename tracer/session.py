"""One traced boot: build the guest, run it in QEMU, bring the trace home, write the run dir.

Run directory layout::

    manifest.json         see common.run_manifest; rewritten as the run progresses
    trace/cpuN.raw        binary ftrace pages of CPU N, as trace_pipe_raw gave them
    control.log           the guest's control channel (formats, modules, stats …)
    console.log           the guest's serial console
    qemu.log              QEMU's own output
    initramfs.cpio.gz     the exact guest that ran (kept: it is small)
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracedep import __version__
from tracedep.common import run_manifest as manifest
from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_write
from tracedep.common.machines import Machine, machine_for
from tracedep.common.run_manifest import (
    Ending,
    Kaslr,
    KernelRecord,
    Load,
    Lost,
    ModuleRecord,
    Probes,
    RunManifest,
)
from tracedep.errors import GuestError, InputError, ModuleBuildError, RunError
from tracedep.kimage import kallsyms as ksyms
from tracedep.tracer import control, module_sections
from tracedep.tracer.channels import Sink, open_sink
from tracedep.tracer.extra_probes import extra_probes, inline_probes_calibrated, record_calibration
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.tracer.lock_init import class_probes
from tracedep.tracer.probes import (
    TRACEPOINTS,
    Discovery,
    probe_definitions,
    stack_triggers,
)
from tracedep.vm.accel import choose_accel
from tracedep.vm.initramfs import GuestConfig, build_initramfs
from tracedep.vm.kernel import Kernel, fetch_debian_kernel
from tracedep.vm.kernel_source import ensure_source_tree
from tracedep.vm.kmodules import KernelModules, load_order, module_src_depends, with_dwarf
from tracedep.vm.kmodules import resolve as resolve_kernel_modules
from tracedep.vm.modules import (
    BuiltModule,
    build_modules,
    bundled_driver_dirs,
    is_module_file,
    module_name,
    plain_module,
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


@dataclass
class TraceResult:
    run_dir: Path
    ending: str
    manifest: RunManifest
    decoded: Decoded | None = None  # the trace, decoded once when the run ended


def boot_args(machine: Machine) -> str:
    return f"console={machine.console} {BOOT_ARGS} {machine.extra_append}".strip()


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty; tracedep never overwrites a run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace").mkdir()


async def _boot(spec: VmSpec, ports: list[tuple[str, Path]], transport: str, timeout: float,
                on_start: Any = None) -> tuple[str, str, dict[str, Any]]:
    """Boot, stream ``ports`` to files, wait for the end; return (ending, detail, timings)."""
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
        ending = await vm.wait_end(timeout)
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
                                       "socket", 180))
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


def _modules_record(under_test: list[ModuleRecord], ctl: control.Control
                    ) -> list[ModuleRecord]:
    loads: dict[str, list[Load]] = {}
    for ld in ctl.module_loads():
        loads.setdefault(ld.name, []).append(Load(ld.base, ld.size, dict(ld.sections)))
    rcs = ctl.insmod_results()
    return [replace(m,
                    loaded=bool(loads.get(m.name)),
                    # every load, in order: a module reloaded may land elsewhere, and
                    # another module may later reuse its addresses
                    loads=loads.get(m.name, []),
                    # the loader's exit codes (the errno of finit_module) in order;
                    # non-zero: the init failed and the module was freed, so its code
                    # ran only partly
                    insmod_rc=rcs.get(m.name, []))
            for m in under_test]


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


def _keep_attempt(out: Path, attempt: int) -> list[str]:
    """Move a failed boot's console, control channel and trace aside (``*.attemptN``)."""
    kept = []
    for name in ("console.log", "control.log", "qemu.log", "trace"):
        p = out / name
        if p.exists():
            dest = out / f"{name}.attempt{attempt}"
            p.rename(dest)
            kept.append(dest.name)
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
    _prepare_out(opts.out)
    t_start = time.time()
    info = RunManifest(
        state="preparing",
        tracedep_version=__version__,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        arch=machine.arch,
        transport=opts.transport,
        timeout_s=opts.timeout,
    )
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
        packages=kernel.packages.to_json() if kernel.packages else None)
    for note in kernel.packages.notes if kernel.packages else ():
        log.warning("%s", note)
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
    info.modules = under_test
    info.kernel_modules = {"requested": list(opts.kernel_modules),
                              "under_test": kmods.under_test, "builtin": kmods.builtin,
                              "dependencies": kmods.dependencies}
    info.load_order = [{"role": s.role, "name": s.name} for s in order]
    if kmods.under_test and kernel.packages is not None:
        # the kernel's own code has no source of its own here: the *_nested()
        # annotations of its modules are read from Debian's tree (analysis.nesting)
        try:
            info.kernel.source_tree = str(ensure_source_tree(kernel.packages))
        except (RunError, InputError) as e:
            log.warning("no kernel source (%s): nestings in the kernel's modules are "
                        "judged from DWARF alone", e)
    manifest.write(out, info)

    accel = choose_accel(machine, kernel.image, opts.accel)
    disc = discover(machine, kernel, accel)
    info.discovery_dir = str(discovery_dir(kernel))
    defs = probe_definitions(machine, disc)
    # lock initializers and inode re-keying: lockdep's classes (tracer.lock_init)
    vmlinux = probe_vmlinux(kernel)
    class_defs, info.lock_classes = class_probes(machine, disc, vmlinux)
    defs += class_defs
    # each load's section addresses, a load whose init fails too (tracer.module_sections)
    msec, info.module_sections = module_sections.probes(machine, disc, vmlinux)
    # calibration, inlined locks of the modules, lockdep's tracepoints (tracer.extra_probes)
    extra = extra_probes(machine, disc,
                         built + _kernel_modules_dwarf(kernel, kmods, disc, machine, vmlinux),
                         vmlinux)
    workload = opts.workload.read_text() if opts.workload else None
    cfg = GuestConfig(
        kprobes=[d.definition for d in defs] + extra.kprobes + msec,
        events=list(TRACEPOINTS) + extra.events,
        stack_triggers=stack_triggers(defs, machine=machine),
        buffer_kb=opts.buffer_kb,
        settle_s=opts.settle_s,
        workload=workload,
    )
    initrd = build_initramfs(machine, kernel, built, cfg, out / "initramfs.cpio.gz",
                             kmods, order)
    info.workload = {"script": str(opts.workload) if opts.workload else "default"}
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
    info.qemu = {"accel": accel, "smp": opts.smp, "mem_mb": opts.mem_mb,
                 "append": spec.append}
    info.state = "running"
    manifest.write(out, info)

    ports = [("tracedep.ctl", out / "control.log")]
    ports += [(f"tracedep.cpu{n}", out / "trace" / f"cpu{n}.raw") for n in range(opts.smp)]

    def record_cmdline(vm: Vm) -> None:
        info.qemu["command"] = shlex.join(vm.spec.command(vm.qmp_path))
        manifest.write(out, info)

    for attempt in (1, 2):
        how, detail, timings = asyncio.run(_boot(spec, ports, opts.transport, opts.timeout,
                                                 on_start=record_cmdline))
        if attempt == 2 or not _died_before_tracing(out, how):
            break
        # The kernel died while the guest armed the probes, before any driver ran:
        # not a finding about the drivers (seen under heavy host load: a kprobe hit
        # while the kernel patched text).  Keep that boot's files, boot once more.
        why = _console_panic(out / "console.log") or detail
        log.warning("guest %s before tracing started (%s); booting again", how, why)
        kept = _keep_attempt(out, attempt)
        info.failed_attempts.append(
            {"how": how, "detail": detail, "why": why, "files": kept})
        manifest.write(out, info)
    info.qemu["command"] = timings.pop("qemu_command", info.qemu.get("command"))
    info.qemu["events"] = timings.pop("qmp_events", [])
    info.timing = timings
    info.ending = Ending(how, detail)
    decoded = finish_manifest(out, info, under_test, machine)
    info.state = "complete" if info.trace_complete else "incomplete"
    manifest.write(out, info)
    if how != END_POWEROFF:
        said = _console_panic(out / "console.log")
        # a hang is a hang (the kernel may have complained on the way: say that too)
        why = (f"{detail}; the console says: {said}" if how == END_TIMEOUT and said and detail
               else said or detail or "see console.log")
        raise GuestError(f"guest {how}: {why}; partial trace kept in {out}")
    if not info.trace_complete:
        raise GuestError(f"guest powered off before the trace was complete; see "
                         f"{out / 'console.log'}")
    return TraceResult(out, how, info, decoded)


def finish_manifest(out: Path, info: RunManifest, under_test: list[ModuleRecord],
                    machine: Machine) -> Decoded | None:
    """Fill the manifest from what the guest sent and from the trace itself; the trace,
    decoded (None if it could not be), for the analysis to use rather than decode again."""
    ctl = control.load(out / "control.log")
    hello = ctl.keyvals("hello")
    info.guest = {"release": hello.get("release"), "cmdline": hello.get("cmdline"),
                     "ncpus": int(hello["ncpus"]) if hello.get("ncpus") else None,
                     "boot_uptime_s": _float(hello.get("uptime")),
                     # 0: mid-function kprobes all ran through int3 (tracer.calibration)
                     "kprobes_optimization":
                         (ctl.keyvals("kprobes_optimization").get("value") or "")[:16]}
    start = ctl.keyvals("start")
    wl = ctl.keyvals("workload")
    # tasks whose own events the guest filtered out (the trace pumps)
    info.untraced_pids = [int(p) for p in start.get("untraced_pids", "").split() if p.isdigit()]
    info.workload.update({"rc": int(wl["rc"]) if "rc" in wl else None,
                          "start_uptime_s": _float(start.get("uptime")),
                          "end_uptime_s": _float(wl.get("uptime"))})
    kas = ctl.kaslr_text()
    info.kaslr = Kaslr(kas[1], kas[0]) if kas else None
    if kas and info.discovery_dir:
        _copy_kallsyms(Path(info.discovery_dir) / "kallsyms.gz", out / "kallsyms.gz", kas)
    info.modules = _modules_record(under_test, ctl)
    ours = {m.name for m in under_test}
    other: dict[str, ModuleRecord] = {}
    for m in ctl.module_loads():
        if m.name not in ours:
            other.setdefault(m.name, ModuleRecord(m.name, "other", loaded=True)).loads.append(
                Load(m.base, m.size, dict(m.sections)))
    kos = {module_name(ko): ko for ko in
           Path(info.kernel.image or "/").parents[1].glob("lib/modules/*/kernel/**/*.ko*")
           if is_module_file(ko)}
    for name, rec in other.items():
        if name in kos:
            try:
                rec.ko = str(plain_module(kos[name]))
            except ModuleBuildError as e:  # its frames read .text+off [mod]: said so
                log.warning("%s", e)
    info.other_modules = other
    info.probes.failed = ctl.probe_failures()
    info.probes.failed_reasons = ctl.probe_failure_reasons()
    info.events_enabled = dict(ctl.event_status())
    stats = ctl.cpu_stats()
    info.trace_complete = "trace" in ctl.done
    lost = Lost(
        ftrace_overrun=int(sum(s.get("overrun", 0) for s in stats.values())),
        ftrace_commit_overrun=int(sum(s.get("commit_overrun", 0) for s in stats.values())),
        ftrace_dropped=int(sum(s.get("dropped_events", 0) for s in stats.values())),
        per_cpu=stats,
        guest_stats_missing=not stats,
    )
    # a kprobe that fires inside another probe's handler (the tracer's own locks,
    # mostly) is missed; count only the misses of the traced window
    end_m, start_m = (_kprobe_misses(ctl.file(f)) for f in (
        "/sys/kernel/tracing/kprobe_profile", "kprobe_profile_start"))
    per_probe = {k: v - start_m.get(k, 0) for k, v in end_m.items() if v - start_m.get(k, 0)}
    lost.kprobe_missed = sum(per_probe.values())
    lost.kprobe_missed_by_probe = per_probe
    info.lost = lost
    info.call_insn_size = machine.call_insn_size
    info.machine_kprobe_irqs_masked = info.kprobe_irqs_unknown = machine.kprobe_reports_irqs_off
    decoded: Decoded | None = None
    try:
        from tracedep.tracer.ftrace_binary import decode_run

        _write_page_sums(out, ctl)
        decoded = decode_run(out, info)
        info.event_counts = decoded.counts
        if decoded.lockdep:
            info.lockdep_events = decoded.lockdep
        record_calibration(info, decoded.calibration, machine)
        lost.decoder_torn_pages = decoded.torn_pages
        lost.decoder_backwards_pages = decoded.backwards_pages
        lost.decoder_rejected_records = sum(decoded.rejected.values())
        if decoded.rejected:
            lost.decoder_rejected = decoded.rejected
        lost.ring_buffer_missed = decoded.missed_events
        read_total = int(sum(s.get("read_events", 0) for s in stats.values()))
        lost.read_events_guest = read_total
        lost.decoded_events = decoded.total
        lost.decoded_per_cpu = {str(c): int(n) for c, n in
                                decoded.events["cpu"].value_counts().sort_index().items()}
    except Exception as e:  # the manifest must still be written
        log.warning("decoding the trace failed: %s", e)
        info.decode_error = str(e)
    # lost = what the ring buffer or the transport dropped; probe hits that kprobes
    # itself missed (an interrupt handler running inside another probe's handler:
    # its lock operations are missed as a whole, so the lock state stays
    # consistent) are counted apart, in kprobe_missed
    lost.total = (lost.ftrace_overrun + lost.ftrace_dropped + lost.ring_buffer_missed
                  + lost.decoder_torn_pages + lost.decoder_backwards_pages
                  + lost.decoder_rejected_records)
    lost.truncated = not info.trace_complete
    return decoded


def _write_page_sums(out: Path, ctl: Any) -> None:
    """Each raw trace file's per-page CRCs (tracer.page_sums): from here on, a page
    that changes is known, and not read."""
    from tracedep.tracer import page_sums
    from tracedep.tracer.ftrace_formats import parse_header_page

    hp = ctl.header_page()
    if not hp:
        return
    psize = parse_header_page(hp).page_size
    for raw in sorted((out / "trace").glob("cpu*.raw")):
        page_sums.write(raw, psize)


def _copy_kallsyms(src: Path, dest: Path, text: tuple[int, str]) -> None:
    """The discovery boot's kallsyms, moved to this boot's KASLR slide."""
    if not src.is_file():
        return
    entries = ksyms.read_file(src)
    disc_text = next((a for a, _, n in entries if n == text[1]), None)
    if disc_text is None:
        return
    ksyms.write_file(dest, ksyms.slid(entries, text[0] - disc_text))


def _kprobe_misses(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for ln in (text or "").splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


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


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
