"""The end of a run: what the guest sent, and the trace itself, into the run manifest.

Everything here reads what came home (``control.log``, the raw trace) and fills in the
fields of :class:`~tracedep.common.run_manifest.RunManifest` that only exist once the
guest has stopped: what the guest said of itself, the modules it loaded, what was lost,
and the one decode of the trace (kept for the analysis, so a run is decoded once).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracedep.common import run_lock
from tracedep.common.machines import Machine
from tracedep.common.memory_budget import whole_rows
from tracedep.common.run_manifest import Ending, Kaslr, Load, Lost, ModuleRecord, RunManifest
from tracedep.errors import ModuleBuildError
from tracedep.kimage import kallsyms as ksyms
from tracedep.tracer import control
from tracedep.tracer.extra_probes import record_calibration
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.vm.modules import is_module_file, module_name, plain_module

log = logging.getLogger(__name__)


def finish_manifest(out: Path, info: RunManifest, under_test: list[ModuleRecord],
                    machine: Machine, for_analysis: bool = False) -> Decoded | None:
    """Fill the manifest from what the guest sent and from the trace itself; the trace,
    decoded (None if it could not be), for the analysis to use rather than decode again
    (``for_analysis``: a trace too long for the frame keeps its windows for the stream,
    ``Decoded.windows``)."""
    ctl = control.load(out / "control.log")
    _from_guest(out, info, under_test, ctl, machine)
    info.trace_complete = "trace" in ctl.done
    info.lost = _guest_losses(ctl)
    decoded = _decode(out, info, ctl, machine, for_analysis)
    lost = info.lost
    # lost = what the ring buffer or the transport dropped; probe hits that kprobes
    # itself missed (an interrupt handler running inside another probe's handler:
    # its lock operations are missed as a whole, so the lock state stays
    # consistent) are counted apart, in kprobe_missed
    lost.total = (lost.ftrace_overrun + lost.ftrace_dropped + lost.ring_buffer_missed
                  + lost.decoder_torn_pages + lost.decoder_backwards_pages
                  + lost.decoder_rejected_records + lost.decoder_unseen_switches)
    lost.truncated = not info.trace_complete
    return decoded


def snapshot(run_dir: Path) -> RunManifest:
    """The manifest of a run still going (``tracedep analyze --live``), from what the
    guest has said so far; the trace's own counts are the analysis's to make.  Its
    only write: the guest's kallsyms (as the run's end writes it), for the symbols."""
    from tracedep.common import run_manifest as manifest
    from tracedep.common.machines import machine_for

    info = manifest.read(run_dir)
    ctl = control.load(run_dir / "control.log")
    _from_guest(run_dir, info, list(info.modules), ctl, machine_for(info.arch or "x86_64"))
    info.trace_complete = False
    info.lost = replace(Lost(), truncated=True)
    return info


def calibrate(info: RunManifest, decoded: Decoded) -> None:
    """A decode's calibration into a manifest the run has not finished (``snapshot``):
    what the run's end does with its own decode."""
    from tracedep.common.machines import machine_for

    record_calibration(info, decoded.calibration, machine_for(info.arch or "x86_64"))


def _from_guest(out: Path, info: RunManifest, under_test: list[ModuleRecord],
                ctl: control.Control, machine: Machine) -> None:
    """What the guest said of itself, its modules and probes, into the manifest."""
    _guest_said(info, ctl)
    kas = ctl.kaslr_text()
    info.kaslr = Kaslr(kas[1], kas[0]) if kas else None
    if kas and info.discovery_dir:
        _copy_kallsyms(Path(info.discovery_dir) / "kallsyms.gz", out / "kallsyms.gz", kas)
    info.modules = _modules_record(under_test, ctl)
    info.other_modules = _other_modules(info, under_test, ctl)
    info.probes.failed = ctl.probe_failures()
    info.probes.failed_reasons = ctl.probe_failure_reasons()
    info.events_enabled = dict(ctl.event_status())
    info.call_insn_size = machine.call_insn_size
    info.machine_kprobe_irqs_masked = info.kprobe_irqs_unknown = machine.kprobe_reports_irqs_off


END_HOST_DIED = "host-died"


def recover(run_dir: Path) -> bool:
    """A run whose tracedep process died while the guest ran (``kill -9``, the OOM
    killer, the machine going down) left its manifest at ``state: running``, the
    guest's words and trace as far as they reached the disk, and no process holding
    it (common.run_lock).  Complete its manifest from them as the run's end would
    have (``finish_manifest``), its ending ``host-died``; True if it was such a run."""
    from tracedep.common import run_manifest as manifest
    from tracedep.common.machines import machine_for

    info = manifest.read(run_dir)
    if info.state != "running" or info.untraced or run_lock.in_use(run_dir):
        return False
    if not (run_dir / "control.log").is_file():
        return False  # the guest never spoke: check_traced says so
    finish_manifest(run_dir, info, list(info.modules), machine_for(info.arch or "x86_64"))
    info.ending = Ending(END_HOST_DIED, "tracedep stopped while the guest ran; the trace "
                                        "is what had reached the disk")
    info.state = "incomplete"
    manifest.write(run_dir, info)
    return True


def finish_untraced(out: Path, info: RunManifest, under_test: list[ModuleRecord]) -> bool:
    """An untraced run's manifest (``trace --untraced``): what the guest said of itself,
    its workload and the modules it loaded; nothing was armed, so no trace, no loss.
    Whether the guest finished its workload."""
    ctl = control.load(out / "control.log")
    _guest_said(info, ctl)
    kas = ctl.kaslr_text()
    info.kaslr = Kaslr(kas[1], kas[0]) if kas else None
    info.modules = _modules_record(under_test, ctl)
    info.other_modules = _other_modules(info, under_test, ctl)
    info.events_enabled = {}
    info.trace_complete = False
    return "untraced" in ctl.done


def _guest_said(info: RunManifest, ctl: control.Control) -> None:
    """The guest's words about itself and its workload."""
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
    info.workload = replace(info.workload, rc=int(wl["rc"]) if "rc" in wl else None,
                            start_uptime_s=_float(start.get("uptime")),
                            end_uptime_s=_float(wl.get("uptime")),
                            # asked (the session's signal) and done (the guest's word)
                            stopped_by=info.workload.stopped_by
                            if wl.get("stopped") == "host" else None)


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


def _other_modules(info: RunManifest, under_test: list[ModuleRecord], ctl: control.Control
                   ) -> dict[str, ModuleRecord]:
    """The modules that loaded but are not under test, with their .ko where the kernel
    package has one (their frames are then named)."""
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
    return other


def _guest_losses(ctl: control.Control) -> Lost:
    """What the guest's ring buffers and kprobes say they lost."""
    stats = ctl.cpu_stats()
    lost = Lost(
        ftrace_overrun=int(sum(s.get("overrun", 0) for s in stats.values())),
        ftrace_commit_overrun=int(sum(s.get("commit_overrun", 0) for s in stats.values())),
        ftrace_dropped=int(sum(s.get("dropped_events", 0) for s in stats.values())),
        per_cpu=stats,
        guest_stats_missing=not stats,
        read_events_guest=int(sum(s.get("read_events", 0) for s in stats.values())),
    )
    # a kprobe that fires inside another probe's handler (the tracer's own locks,
    # mostly) is missed; count only the misses of the traced window
    end_m, start_m = (_kprobe_misses(ctl.file(f)) for f in (
        "/sys/kernel/tracing/kprobe_profile", "kprobe_profile_start"))
    per_probe = {k: v - start_m.get(k, 0) for k, v in end_m.items() if v - start_m.get(k, 0)}
    lost.kprobe_missed = sum(per_probe.values())
    lost.kprobe_missed_by_probe = per_probe
    return lost


def _decode(out: Path, info: RunManifest, ctl: control.Control, machine: Machine,
            for_analysis: bool) -> Decoded | None:
    """The run's one decode: counts, calibration and the decoder's losses into the
    manifest; None (and ``decode_error``) if the trace cannot be decoded."""
    from tracedep.tracer.decode_stream import decode_run
    from tracedep.tracer.window_spill import spill_while_decoding

    lost = info.lost
    spill = None
    try:
        _write_page_sums(out, ctl)
        rows, why = whole_rows()
        spill, windows, done = (spill_while_decoding(out, rows) if for_analysis
                                else (None, None, lambda: None))
        decoded = decode_run(out, info, rows, windows)
        done()
        if decoded.cut:
            decoded.cut.why = why
            if spill is not None and spill.usable:
                decoded.windows, spill = spill, None
    except Exception as e:  # the manifest must still be written
        log.warning("decoding the trace failed: %s", e)
        info.decode_error = str(e)
        lost.read_events_guest = None
        return None
    finally:
        if spill is not None:  # not handed to the analysis: the trace fit after all
            spill.close()
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
    lost.decoder_unseen_switches = decoded.unseen_switches
    if decoded.unseen_switch_first:
        lost.decoder_unseen_switch = decoded.unseen_switch_first.record()
    lost.decoded_events = decoded.total
    lost.decoded_per_cpu = {str(c): int(n) for c, n in decoded.rows_per_cpu().items()}
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


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
