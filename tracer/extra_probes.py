"""Probes beyond the out-of-line catalog of ``tracer.probes``, decided per kernel and run.

* calibration probes (``tracer.calibration``), on every kernel that has ``ksys_sync``;
* probes on the driver's inlined locks (``tracer.inline_locks``) on kernels that
  inline their spinlocks (no ``_raw_spin_lock`` & co. to probe): the spinlocks, and
  the lock APIs that are inline everywhere (percpu rwsem readers);
* lockdep's own lock tracepoints (``lock/lock_acquire``, ``lock/lock_release``) on
  kernels built with them (``CONFIG_LOCKDEP``; see vm/lockdep.config): the guest
  enables them when they exist and reports them ``MISSING`` otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracedep.common.cache import cache_root
from tracedep.common.machines import Machine
from tracedep.common.run_manifest import InlineLocks, JsonObject, RunManifest
from tracedep.tracer import calibration
from tracedep.tracer.inline_locks import discover_cached, inline_probes, site_table
from tracedep.tracer.probes import Discovery
from tracedep.vm.modules import BuiltModule

log = logging.getLogger(__name__)

LOCKDEP_EVENTS = ("lock/lock_acquire", "lock/lock_release")
# the lock bodies a kernel either has out of line or inlines into every caller
_BODIES = ("_raw_spin_lock", "_raw_spin_unlock", "_raw_spin_lock_irqsave",
           "_raw_spin_unlock_irqrestore", "_raw_spin_lock_bh", "_raw_spin_unlock_bh",
           "_raw_spin_lock_irq", "_raw_spin_unlock_irq", "_raw_spin_trylock",
           "_raw_read_lock", "_raw_read_unlock", "_raw_write_lock", "_raw_write_unlock")


@dataclass
class Extras:
    kprobes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    # for the manifest (common.run_manifest.RunManifest fields of the same names)
    calibration_mid_offset: int | None = None
    inline_sites: dict[str, JsonObject] = field(default_factory=dict)
    inline_locks: InlineLocks | None = None

    def record(self, info: RunManifest) -> None:
        info.calibration_mid_offset = self.calibration_mid_offset
        info.inline_sites = self.inline_sites
        info.inline_locks = self.inline_locks


def inlines_locks(disc: Discovery) -> bool:
    """Does this kernel inline (some of) its spinlock bodies into their callers?"""
    return any(f not in disc.functions for f in _BODIES)


def inline_probes_calibrated(machine: Machine, disc: Discovery, vmlinux: Path | None,
                             mid: int | None = None) -> bool:
    """Can this kernel's mid-function probes (inlined locks) be calibrated?"""
    if mid is None:
        mid = calibration.mid_offset(machine, vmlinux)
    return bool(mid) and bool(calibration.probes(machine, disc, mid))


def extra_probes(machine: Machine, disc: Discovery, built: list[BuiltModule],
                 vmlinux: Path | None = None) -> Extras:
    """``vmlinux``: the kernel's ELF, where a variable-width ISA finds its mid-function
    calibration point (tracer.calibration.mid_offset)."""
    ex = Extras(events=list(LOCKDEP_EVENTS))
    mid = calibration.mid_offset(machine, vmlinux)
    ex.kprobes += calibration.probes(machine, disc, mid)
    ex.calibration_mid_offset = mid
    # Probes on inlined locks sit mid-function: placed only where such a probe is
    # calibrated (x86_64's report the int3 handler's context, NMI and IRQs off; a
    # percpu reader probed there uncalibrated was "in hardirq context" in CI).
    if not built or not inline_probes_calibrated(machine, disc, vmlinux, mid):
        return ex
    # spinlock bodies are looked for where the kernel inlines them; the APIs inline
    # on every kernel (percpu rwsem readers) always
    spin_bodies = inlines_locks(disc)
    sites = []
    skipped: list[dict[str, Any]] = []
    out_of_line = 0
    for m in built:
        try:
            d = discover_cached(m.ko, m.name, cache_root() / "inline-locks", spin_bodies)
        except Exception as e:  # a .ko without usable DWARF: its locks go unseen, said so
            log.warning("%s: inlined locks not found: %s", m.ko, e)
            # which inlined releases go unseen: analysis.missing ends those locks early
            types = ["spinlock", "rwlock-r", "rwlock-w"] if spin_bodies else []
            skipped.append({"module": m.name, "reason": f"DWARF unusable: {e}",
                            "lock_types": [*types, "rwsem-r"]})
            continue
        sites += d.sites
        skipped += d.skipped
        out_of_line += d.out_of_line
    probes = inline_probes(sites, machine.mid_irq_fetch)
    ex.kprobes += [p.definition for p in probes]
    ex.inline_sites = site_table(probes)
    ex.inline_locks = InlineLocks(sites=len(probes), skipped=skipped,
                                  calls_out_of_line=out_of_line)
    return ex


def record_calibration(info: RunManifest, cal: dict[str, Any], machine: Machine) -> None:
    """Put the decoder's calibration in the manifest, and what it means for the analysis."""
    info.machine_kprobe_irqs_masked = machine.kprobe_reports_irqs_off
    if not any(k in cal for k in calibration.KINDS):
        info.kprobe_irqs_unknown = machine.kprobe_reports_irqs_off
        return
    info.calibration = calibration.summary(cal, machine.arch)
    # after calibration, are any of our kprobe rows' irqs_off still unknown?
    info.kprobe_irqs_unknown = bool(cal.get("_irqs_unreliable_rows"))
