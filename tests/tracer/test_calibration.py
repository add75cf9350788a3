"""Context calibration of mid-function kprobes (tracer.calibration).

The record values below are what a real x86_64 6.12 guest wrote (the
``calibration`` of a ``tests/tracer/test_locktorture.py`` run, 2026-12-06): at the
calibration point (``ksys_sync+9``, process context, IRQs on, preempt 0) the
int3 path's record says flags 0x48 (hardirq + NMI; IRQS_OFF lost to the
preempt nibble's borrow) and preempt nibble 15, with the fetched EFLAGS.IF set.
The guest proof is test_locktorture's ``test_percpu_readers_are_seen_in_the_readers_context``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from tracedep.common.machines import machine_for
from tracedep.tracer import calibration
from tracedep.tracer.event_rows import CatColumn
from tracedep.tracer.ftrace_binary import _calibrate

IF = 0x200  # EFLAGS.IF: IRQs on
# (flags, preempt byte, fetched EFLAGS) as the int3 path writes them
INT3_AT_0 = (0x48, 0xFF, IF)
INT3_AT = {d: (0x49, d - 1, IF) for d in range(1, 16)}


def _decode(rows: list[tuple[int, int, int]], pkind: list[int], cal_row: int | None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the decoder's calibration step on rows given as (flags, pc byte, eflags)."""
    n = len(rows)
    flags = np.array([r[0] for r in rows], dtype=np.uint64)
    pc = np.array([r[1] for r in rows], dtype=np.uint64)
    efl = np.array([r[2] for r in rows], dtype=np.uint64)
    cols: dict[str, Any] = {
        "pid": np.full(n, 100, np.int32),
        "irqs_off": (flags & 0x01) != 0,
        "preempt_depth": (pc & 0xF).astype(np.int8),
        "in_hardirq": (flags & 0x08) != 0,
        "in_softirq": (flags & 0x10) != 0,
        "in_nmi": (flags & 0x40) != 0,
    }
    # what fetch_irq_state makes of the ``efl`` field: 1 = IRQs off
    irq_state = ((efl & np.uint64(IF)) == 0).astype(np.int8)
    cal_rows = {"kprobe_mid": np.array([cal_row])} if cal_row is not None else {}
    kind, lock_type = CatColumn(n, ""), CatColumn(n, "")
    cal = _calibrate(cols, cal_rows, flags, irq_state, np.array(pkind, np.int8), False,
                     kind, lock_type)
    return cols, cal


def test_int3_rows_get_the_probed_context_back() -> None:
    depths = [0, 1, 2, 5, 15]
    rows = [INT3_AT_0] + [INT3_AT_0 if d == 0 else INT3_AT[d] for d in depths]
    # one reader with IRQs off at depth 0: the record cannot tell, the fetch can
    rows.append((0x48, 0xFF, 0))
    cols, cal = _decode(rows, [0] + [3] * (len(rows) - 1), cal_row=0)
    assert cal["kprobe_mid"]["nmi"] and cal["kprobe_mid"]["preempt"] == 15
    assert calibration.preempt_offset(cal["kprobe_mid"]) == -1
    assert calibration.irqs_reliable(cal, "kprobe_mid") is False
    got = cols["preempt_depth"][1:].tolist()
    assert got == [*depths, 0]
    assert not cols["in_hardirq"][1:].any() and not cols["in_nmi"][1:].any()
    assert cols["irqs_off"][1:].tolist() == [False] * len(depths) + [True]
    assert cal["_regime_mismatch"] == 0 and cal["_uncalibrated_rows"] == 0


def test_rows_of_another_regime_are_not_given_the_calibrations_correction() -> None:
    """An optimized probe's row (no NMI) is not an int3 row: +1 would invent a level."""
    rows = [INT3_AT_0, (0x00, 0x00, IF), (0x01, 0x02, 0)]
    cols, cal = _decode(rows, [0, 3, 3], cal_row=0)
    assert cal["_regime_mismatch"] == 2
    assert cols["preempt_depth"][1:].tolist() == [0, 0]  # unknown: never a finding
    assert cols["irqs_off"][1:].tolist() == [False, True]  # the fetched state


def test_uncalibrated_exception_rows_never_look_atomic() -> None:
    """No mid-function calibration record (the probe was refused): int3 rows must not
    fall back to the entry probes' calibration, whose context is the probed code's."""
    rows = [INT3_AT_0, INT3_AT[3]]
    cols, cal = _decode(rows, [3, 3], cal_row=None)
    assert cal["_uncalibrated_rows"] == 2
    assert cols["preempt_depth"].tolist() == [0, 0]
    assert not cols["in_hardirq"].any() and not cols["in_nmi"].any()
    assert not cols["irqs_off"].any()


def test_positive_offsets_still_subtract() -> None:
    """A kind that adds a level (an arm64 record at depth 1 where the code is at 0)."""
    cal = {"preempt": 1}
    assert calibration.preempt_offset(cal) == 1
    assert calibration.preempt_offset({"preempt": 8}) == -8


def test_x86_mid_offset_is_the_first_body_instruction() -> None:
    """On the suite kernel's vmlinux: right past endbr64 and the __fentry__ call."""
    from tracedep.common.cache import cache_root
    from tracedep.vm.debug_packages import ensure_dbg_vmlinux
    from tracedep.vm.kernel import fetch_debian_kernel

    machine = machine_for("x86_64")
    k = fetch_debian_kernel(machine)
    assert k.packages is not None and k.packages.dbg is not None
    vmlinux = ensure_dbg_vmlinux(k.release, cache_root(), k.packages.dbg.version)
    off = calibration.mid_offset(machine, vmlinux)
    assert off in (5, 9), off  # [endbr64 (4)] + call __fentry__ (5)
    assert re.fullmatch(machine.entry_prologue, b"\xf3\x0f\x1e\xfa\xe8\x01\x02\x03\x04")
    assert re.fullmatch(machine.entry_prologue, b"\x0f\x1f\x44\x00\x00")
    assert calibration.mid_offset(machine_for("arm64"), None) == 12
    assert calibration.mid_offset(machine, None) == 0
