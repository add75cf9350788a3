"""Witness frames: call sites and kernel stacks turned into :class:`Frame` lists.

Stacks taken by ftrace's stacktrace trigger start inside the tracing code
(the kprobe or tracepoint handler); those frames are dropped so a stack starts
at the probed function, as a developer reading it expects.  The tracing frames
end at the first interrupt entry: an interrupt that lands inside the tracing code
of the interrupted task's own event (between its commit and its stack) puts that
task's tracing frames below the interrupt's, and past them is not the incident.
"""

from __future__ import annotations

import re
from dataclasses import replace

from tracedep.analysis.findings import Frame
from tracedep.analysis.run_symbols import RunSymbols

_TRACING = re.compile(
    r"^(kprobe_.*|aggr_pre_handler|trace_event_raw_event_.*|perf_trace_.*|trace_event_buffer_.*|"
    r"event_trigger.*|.*stacktrace_.*|__ftrace_trace_stack|__trace_stack|ftrace_.*|"
    r"trace_buffer_unlock_commit.*|.*_trace_func|kprobe_int3_handler|exc_int3|asm_exc_int3|"
    r"optimized_callback|optprobe_template_.*|arch_ftrace_ops_list_func|trace_.*_probe|"
    r"__traceiter_.*|trace_call_bpf|brk_handler|do_debug_exception|el1_dbg|el1h_64_sync.*|"
    r"call_break_hook|kprobe_breakpoint_handler)$"
)


# Where interrupt context begins on a stack.  Past it is the code the interrupt
# happened to land in, not the incident; arm64's unwinder crosses into it, and
# on either arch it depends on timing.
_IRQ_BOUNDARY = re.compile(
    r"^(__do_softirq|handle_softirqs|____do_softirq|do_softirq_own_stack|__irq_exit_rcu|"
    r"irq_exit_rcu|__sysvec_\w+|sysvec_\w+|asm_sysvec_\w+|common_interrupt|"
    r"asm_common_interrupt|call_on_irq_stack|el[01]_interrupt|el[01]h?_64_irq\w*|"
    r"gic_handle_irq|do_interrupt_handler)$"
)


def cut_at_interrupt(frames: list[Frame]) -> list[Frame]:
    """The frames up to and including the first interrupt-entry frame."""
    for i, f in enumerate(frames):
        if _IRQ_BOUNDARY.match(f.function):
            return frames[:i + 1]
    return frames


def frame_at(symbols: RunSymbols, addr: int, call_site: bool, ts: int | None = None
             ) -> Frame:
    """A frame for a runtime address (``call_site``: already return address − call size)."""
    s = symbols.lookup(addr, ts)
    if s is None:
        mod = symbols.module_of(addr, ts) or "?"
        return Frame(function=f"{addr:#x}" if mod == "?" else f"[{mod}]", offset=0, size=0,
                     module=mod, address=addr)
    return Frame(function=s.name, offset=s.offset, size=s.size, module=s.module, address=addr)


def clean_stack(symbols: RunSymbols, stack: tuple[int, ...], call_insn_size: int,
                ts: int | None = None) -> list[Frame]:
    """Frames of a trigger stack, innermost first, starting at the probed function.

    Entries after the first are return addresses; they are turned into call
    sites (address − call size) so that file:line names the call.
    """
    names = [symbols.lookup(a, ts) for a in stack]
    start = 0
    for i, s in enumerate(names[:12]):
        if s is not None and _IRQ_BOUNDARY.match(s.name):
            break  # tracing frames past it are those of the task the interrupt landed in
        if s is None and symbols.module_of(stack[i], ts) in (None, "?"):
            start = i + 1  # ftrace trampoline: no symbol
        elif s is not None and _TRACING.match(s.name):
            start = i + 1
        elif s is None:
            start = i + 1  # an unnamed trampoline in module space
    # After the tracing frames comes the probed function itself (a kprobe at its
    # entry) or the function that fired the tracepoint; both are real.
    frames = []
    for j, a in enumerate(stack[start:]):
        site = a if j == 0 else a - call_insn_size
        frames.append(frame_at(symbols, site, j > 0, ts))
    return cut_at_interrupt(frames)


def clean_text_stack(stack: tuple[Frame, ...], call_insn_size: int) -> list[Frame]:
    """:func:`clean_stack` for a stack known from ftrace text (``Trace.text_stacks``):
    the tracing frames dropped by name, and return addresses after the first frame
    turned into call sites where the text gave their offset or address."""
    start = 0
    for i, f in enumerate(stack[:12]):
        if _IRQ_BOUNDARY.match(f.function):
            break
        if f.function.startswith("0x") or _TRACING.match(f.function):
            start = i + 1
    frames = []
    for j, f in enumerate(stack[start:]):
        if j > 0 and (f.size or f.address):
            f = replace(f, offset=max(f.offset - call_insn_size, 0) if f.size else f.offset,
                        address=f.address - call_insn_size if f.address else 0)
        frames.append(f)
    return cut_at_interrupt(frames)
