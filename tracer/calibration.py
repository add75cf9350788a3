"""Context-flag calibration: what each kind of probe reports in a state known in advance.

An ftrace record's IRQ and preempt flags describe the context that *wrote* the
record.  For a tracepoint that is the traced code.  For a kprobe it depends on
the architecture: on x86_64 an entry kprobe runs from the ftrace trampoline and
the flags are the probed code's; on arm64 every kprobe handler runs from a BRK
exception with IRQs masked, so the record always says IRQs off.

So the guest calibrates at boot: right after tracing starts, its init writes a
marker and runs ``sync``, whose syscall entry ``ksys_sync`` runs in process
context with IRQs on and no lock held (preempt depth 0).  Probes of every kind
sit there (``tracedep/cal_<kind>``); the decoder reads what each kind reported
(:func:`measure`), and corrects the records of that kind (:func:`apply`):

* IRQs: if a kind reports IRQs off at that known IRQs-on point, its own flag is
  useless; the interrupted context's IRQ mask fetched by the probe (the
  ``pst`` field, arm64 PSTATE, bit 7 = I) is used instead, and rows without it
  are marked unreliable;
* exception context: a kind whose record says hardirq or NMI at that
  process-context point runs its handler from an exception (x86's int3 handler
  enters NMI context, IRQs masked): those flags are the handler's, so they are
  cleared on its rows and the IRQ state is the fetched one (x86: ``efl``, the
  interrupted EFLAGS, bit 9 = IF);
* preempt depth: whatever the kind adds at depth 0 is subtracted.  It can be
  negative: a kprobe event takes one level off the preempt count it records
  (``tracing_gen_ctx_dec()``, for the preempt_disable() a tracepoint adds), and
  the int3 path adds none, so at depth 0 the low nibble wraps to 15; a measured
  15 is therefore -1, and the correction is taken modulo 16.

x86_64's mid-function probes (the inline percpu-rwsem readers of modules) run
from int3 until the kprobe optimizer turns them into jumps, and then from a
detour whose ``optimized_callback()`` adds a preempt level and keeps the
hardirq flags: two regimes that one calibration record cannot both describe.
The guest turns optimization off (``debug.kprobes-optimization = 0``) before
it arms any probe, so every mid-function record comes through int3, as the
calibration's; a row whose NMI flag says otherwise is counted
(``regime_mismatch``) and only its fetched IRQ state is used.

x86 is a variable-width ISA: the mid-function calibration probe goes right past
``ksys_sync``'s prologue as the vmlinux bytes show it (:func:`mid_offset`).

It also measures from the trace whether preempt_count counts held spinlocks at
all (``preempt_count_tracks_spinlocks``): kernels without ``CONFIG_PREEMPT_COUNT``
(Debian's arm64 ``PREEMPT_VOLUNTARY`` kernel) compile ``preempt_disable()`` to a
compiler barrier, so a held spinlock shows in no record; the analysis then takes
held spinlocks from its own replay only.

The result goes into the run's manifest as ``calibration``.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from tracedep.common.machines import Machine
from tracedep.tracer.probes import GROUP, Discovery

CAL_FUNC = "ksys_sync"
CAL_PREFIX = "cal_"
# probe kind → event name in GROUP
KINDS = {"kprobe": "cal_kprobe", "kprobe_mid": "cal_kprobe_mid", "kretprobe": "cal_kretprobe"}
MARKER = "tracedep: calibrate"
TRACE_FLAG_IRQS_OFF = 0x01
TRACE_FLAG_HARDIRQ = 0x08
TRACE_FLAG_NMI = 0x40
# the recorded preempt depth is a nibble: a measured offset at or past this is negative
_NEGATIVE_FROM = 8

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def mid_offset(machine: Machine, vmlinux: Path | None) -> int:
    """Where in CAL_FUNC a mid-function probe may sit (0: nowhere known).

    Fixed-width ISAs name a constant; on x86 it is the end of the function's
    prologue in ``vmlinux`` (``Machine.entry_prologue``): the first instruction
    of the body, a boundary the kernel's ``can_probe()`` accepts.
    """
    if machine.calibration_mid_offset:
        return machine.calibration_mid_offset
    if not machine.entry_prologue or vmlinux is None:
        return 0
    from tracedep.kimage.elf_symbols import ElfFile, ElfFormatError, SymbolTable

    try:
        elf = ElfFile(vmlinux)
        syms = SymbolTable.from_elf(elf)
        addrs = syms.addresses_of(CAL_FUNC) if syms else []
        if len(addrs) != 1:
            return 0
        for sec in elf.sections:
            if sec.exec and sec.addr <= addrs[0] < sec.addr + sec.size:
                head = bytes(elf.data(sec)[addrs[0] - sec.addr:addrs[0] - sec.addr + 16])
                m = re.match(machine.entry_prologue, head)
                return m.end() if m else 0
    except (OSError, ElfFormatError) as e:
        log.warning("%s: no mid-function calibration point: %s", vmlinux, e)
    return 0


def probes(machine: Machine, disc: Discovery, mid: int = 0) -> list[str]:
    """kprobe_events lines of the calibration probes (none if the kernel lacks CAL_FUNC);
    ``mid``: :func:`mid_offset`, 0 for no mid-function probe."""
    if CAL_FUNC not in disc.functions or CAL_FUNC in disc.blacklist:
        return []
    irq = f" {machine.irq_state_fetch}" if machine.irq_state_fetch else ""
    out = [f"p:{GROUP}/{KINDS['kprobe']} {CAL_FUNC}{irq}".rstrip(),
           f"r:{GROUP}/{KINDS['kretprobe']} {CAL_FUNC}{irq}".rstrip()]
    if mid:
        mirq = f" {machine.mid_irq_fetch}" if machine.mid_irq_fetch else ""
        out.append(f"p:{GROUP}/{KINDS['kprobe_mid']} {CAL_FUNC}+{mid}{mirq}".rstrip())
    return out


def preempt_offset(c: dict[str, Any]) -> int:
    """What a kind adds to the recorded preempt depth, signed (see the module doc)."""
    p = int(c["preempt"])
    return p - 16 if p >= _NEGATIVE_FROM else p


def in_exception(c: dict[str, Any]) -> bool:
    """Does this kind's handler run in an exception context of its own (int3: NMI)?"""
    return bool(c.get("hardirq") or c.get("nmi"))


def measure(kind_rows: dict[str, np.ndarray], flags: np.ndarray, depth: np.ndarray,
            irq_state: np.ndarray, pid: np.ndarray) -> dict[str, Any]:
    """Per probe kind: what its records said at the calibration point.

    ``irq_state``: per row, 1 = IRQs off, 0 = on, -1 = not fetched.  Only the
    first record of each kind is used, and only if it was written by the task
    whose ``sync`` the marker announced (any other task's sync is not the
    known state); the marker's own record calibrates trace events (``marker``).
    """
    out: dict[str, Any] = {}
    for kind, rows in kind_rows.items():
        if not len(rows):
            continue
        r = int(rows[0])
        out[kind] = {
            "irqs_off": bool(flags[r] & TRACE_FLAG_IRQS_OFF),
            "preempt": int(depth[r]),
            "hardirq": bool(flags[r] & 0x08),
            "softirq": bool(flags[r] & 0x10),
            "nmi": bool(flags[r] & TRACE_FLAG_NMI),
            "irq_state_fetched": bool(irq_state[r] >= 0),
            "irq_state_off": bool(irq_state[r] == 1) if irq_state[r] >= 0 else None,
            "samples": int(len(rows)),
        }
    return out


def kind_of(event_role: str) -> str:
    """The calibration kind that applies to one of our probe events."""
    return "kretprobe" if event_role == "lr" else "kprobe"


def irqs_reliable(cal: dict[str, Any], kind: str) -> bool | None:
    """Do records of ``kind`` carry the probed code's IRQ state?  None: not calibrated."""
    c = cal.get(kind)
    if c is None:
        return None
    # in an exception handler the flag is the handler's; at depth 0 the int3 path's
    # record even loses its IRQS_OFF bit to the preempt nibble's borrow
    return not c["irqs_off"] and not in_exception(c)


def summary(cal: dict[str, Any], arch: str) -> dict[str, Any]:
    """The manifest's ``calibration``: per kind what was measured and how it is applied."""
    applied = {}
    for kind, c in cal.items():
        if kind.startswith("_"):
            continue
        ok = not c["irqs_off"] and not in_exception(c)
        applied[kind] = {
            "irqs": "record" if ok else ("fetched" if c["irq_state_fetched"] else "unreliable"),
            "preempt_offset": preempt_offset(c),
            # hardirq/NMI flags of its rows are the handler's and are cleared
            "exception_context": in_exception(c),
        }
    return {"arch": arch, "point": f"{CAL_FUNC} (process context, IRQs on, preempt 0)",
            "measured": {k: v for k, v in cal.items() if not k.startswith("_")},
            "applied": applied,
            "preempt_count_tracks_spinlocks": cal.get("_spin_preempt"),
            # mid-function rows that came another way than the calibration's (see above)
            "regime_mismatch": int(cal.get("_regime_mismatch", 0)),
            "uncalibrated_rows": int(cal.get("_uncalibrated_rows", 0))}
