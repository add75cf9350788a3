"""Stack frames as kernel developers read them.

Call-trace lines follow syzbot's decoded form (``scripts/decode_stacktrace.sh``
with names for inlined frames): ``func+0x1c/0x80 [mod] drivers/x.c:42`` for a
real frame, ``inner drivers/x.c:40 [inline]`` for each function inlined into it,
listed innermost first, just before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracedep.analysis.findings import Frame

# The lock/sleep primitives themselves: "at:" names the caller, as lockdep's
# _RET_IP_ does, not the primitive the probe sat on.
_PRIMITIVE = re.compile(
    r"^(_raw_|__raw_|do_raw_|queued_|native_queued_|lock_acquire|__lock_acquire|"
    r"(__)?mutex_(lock|trylock)|(__)?down(_read|_write)?(_trylock|_killable|_interruptible)?$|"
    r"__might_(sleep|resched)|might_sleep|rt_(spin|read|write)_lock|"
    r"(spin|read|write)_lock(_irq|_irqsave|_bh)?$|(spin|read|write)_trylock)"
)


# Inlined tracepoint helpers the probes sit in (trace_kmalloc() inside kmalloc_trace()).
_TRACEPOINT = re.compile(r"^(trace_|__trace_|perf_trace_)")


def is_primitive(function: str) -> bool:
    return bool(_PRIMITIVE.match(function))


def dedup(frames: Sequence[Frame]) -> list[Frame]:
    """The frames without immediate repeats (one DWARF inline entry seen twice)."""
    out: list[Frame] = []
    for f in frames:
        if out and (f.function, f.file, f.line, f.inlined, f.module) == (
                out[-1].function, out[-1].file, out[-1].line, out[-1].inlined, out[-1].module):
            continue
        out.append(f)
    return out


def sleep_site(frames: Sequence[Frame]) -> Frame | None:
    """The frame of the sleeping function itself, past any tracepoint helper."""
    return next((f for f in frames if not _TRACEPOINT.match(f.function)),
                frames[0] if frames else None)


def where(f: Frame) -> str:
    return f"{f.file}:{f.line}" if f.file and f.line else (f.file or "")


def symbol(f: Frame) -> str:
    """``func+off/size [mod]`` as ``%pS`` prints it (no file:line)."""
    name = f.function or (f"0x{f.address:x}" if f.address else "?")
    if f.size:
        name = f"{name}+{f.offset:#x}/{f.size:#x}"
    elif f.offset:
        name = f"{name}+{f.offset:#x}"
    if f.module and f.module != "vmlinux":
        name = f"{name} [{f.module}]"
    return name


def frame_line(f: Frame) -> str:
    """One call-trace line, without the leading space."""
    loc = where(f)
    if f.inlined:
        return f"{f.function or '?'} {loc} [inline]" if loc else f"{f.function or '?'} [inline]"
    return f"{symbol(f)} {loc}" if loc else symbol(f)


def call_site(frames: Sequence[Frame]) -> Frame | None:
    """The first frame that is not a locking/sleeping primitive (lockdep's ``at:``)."""
    for f in frames:
        if f.function and not is_primitive(f.function):
            return f
    return frames[0] if frames else None


def at(frames: Sequence[Frame]) -> str:
    """``func+0x1c/0x80 [mod] file:line`` of the call site.

    If the call site is inlined, the real function around it gives the symbol
    and the innermost frame gives file:line, the most precise place.
    """
    site = call_site(frames)
    if site is None:
        return "?"
    if site.inlined:
        i = frames.index(site)
        outer = next((f for f in frames[i:] if not f.inlined), None)
        if outer is not None:
            loc = where(site)
            return f"{symbol(outer)} {loc}" if loc else symbol(outer)
    return frame_line(site)
