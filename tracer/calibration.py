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
* preempt depth: whatever the kind adds at depth 0 is subtracted.

It also measures from the trace whether preempt_count counts held spinlocks at
all (``preempt_count_tracks_spinlocks``): kernels without ``CONFIG_PREEMPT_COUNT``
(Debian's arm64 ``PREEMPT_VOLUNTARY`` kernel) compile ``preempt_disable()`` to a
compiler barrier, so a held spinlock shows in no record; the analysis then takes
held spinlocks from its own replay only.

The result goes into the run's manifest as ``calibration``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracedep.tracer.probes import GROUP, Discovery
from tracedep.vm.machines import Machine

CAL_FUNC = "ksys_sync"
CAL_PREFIX = "cal_"
# probe kind → event name in GROUP
KINDS = {"kprobe": "cal_kprobe", "kprobe_mid": "cal_kprobe_mid", "kretprobe": "cal_kretprobe"}
MARKER = "tracedep: calibrate"
TRACE_FLAG_IRQS_OFF = 0x01


def probes(machine: Machine, disc: Discovery) -> list[str]:
    """kprobe_events lines of the calibration probes (none if the kernel lacks CAL_FUNC)."""
    if CAL_FUNC not in disc.functions or CAL_FUNC in disc.blacklist:
        return []
    irq = f" {machine.irq_state_fetch}" if machine.irq_state_fetch else ""
    out = [f"p:{GROUP}/{KINDS['kprobe']} {CAL_FUNC}{irq}".rstrip(),
           f"r:{GROUP}/{KINDS['kretprobe']} {CAL_FUNC}{irq}".rstrip()]
    if machine.calibration_mid_offset:
        out.append(f"p:{GROUP}/{KINDS['kprobe_mid']} {CAL_FUNC}+{machine.calibration_mid_offset}"
                   f"{irq}".rstrip())
    return out


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
    return not c["irqs_off"]


def summary(cal: dict[str, Any], arch: str) -> dict[str, Any]:
    """The manifest's ``calibration``: per kind what was measured and how it is applied."""
    applied = {}
    for kind, c in cal.items():
        if kind.startswith("_"):
            continue
        ok = not c["irqs_off"]
        applied[kind] = {
            "irqs": "record" if ok else ("fetched" if c["irq_state_fetched"] else "unreliable"),
            "preempt_offset": c["preempt"],
        }
    return {"arch": arch, "point": f"{CAL_FUNC} (process context, IRQs on, preempt 0)",
            "measured": {k: v for k, v in cal.items() if not k.startswith("_")},
            "applied": applied,
            "preempt_count_tracks_spinlocks": cal.get("_spin_preempt")}
