"""Parse ftrace *text* (what ``trace`` and ``trace_pipe`` print) into the events frame.

A trace captured on a real machine with tracedep's probes (``tracedep probes``)
is read into exactly the frame :mod:`tracedep.tracer.ftrace_binary` decodes
from ring-buffer pages, validated against :mod:`tracedep.tracer.schema`.

The text format (``kernel/trace/trace_output.c``), one event per line::

    # tracer: nop
    # entries-in-buffer/entries-written: 896/896   #P:2
    #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
     kworker/0:1-17  [000] ...1.  91.263361: kmalloc: call_site=td_x+0x73/0x10f [td_mod] ...
     kworker/0:1-17  [000] ...1.  91.263373: <stack trace>
     => trace_event_raw_event_kmalloc
     => kmalloc_trace
    CPU:1 [LOST 1414 EVENTS]

* the flags column is irqs-off/BH-off, need-resched, hardirq/softirq, preempt
  depth and (5.13+, 5 characters) migrate-disable; older kernels print 4;
* ``options/sym-offset`` adds ``+0x73/0x10f [module]`` to printed symbols,
  ``options/sym-addr`` adds `` <ffffffffc052f173>``; without sym-offset stack
  frames are bare function names;
* an address the kernel can no longer name (a module unloaded before the trace
  was read) prints raw, ``0xffffffffc052f173``.

Addresses come from the text where it has them (kprobe ``ret=``, ``<addr>``,
raw call sites); a symbolized call site (``call_site=%pS``) is turned back into
an address through the machine's kallsyms when one is given, or through the
symbols the text itself placed (every ``name+off/size <addr>`` it printed).
Call sites that stay unresolved keep ``ip`` 0 and are listed by event row in
:attr:`Trace.text_sites`; kernel stacks whose frames are not all exact
addresses keep an empty entry in :attr:`Trace.stacks` and their frames, as
names, in :attr:`Trace.text_stacks` (see ``analysis.witness.clean_text_stack``).

Lost events are never silent: ``CPU:n [LOST m EVENTS]`` lines, the events a
``trace`` header says were overwritten, and a truncated last line are counted
into ``info["lost"]`` (the run's health).  Anything else that is not ftrace
text raises :class:`~tracedep.errors.TraceFormatError` naming file and line.
"""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Frame
from tracedep.analysis.symbols import ModuleSpan, RunSymbols
from tracedep.analysis.trace_model import Trace
from tracedep.common.machines import MACHINES
from tracedep.errors import InputError, TraceFormatError
from tracedep.kimage.elf_symbols import SymbolTable, is_mapping_or_local_label
from tracedep.kimage.kallsyms import read_file as read_kallsyms_file
from tracedep.tracer import schema
from tracedep.tracer.event_rows import MIGHT_SLEEP, SOFTIRQ_NAMES
from tracedep.tracer.lock_init import OFFSET_MAX, clean_name
from tracedep.tracer.probes import (
    GROUP,
    LOCK_FUNCS,
    MIGHT_SLEEP_FUNC,
    TRACEPOINTS,
    parse_event_name,
)

log = logging.getLogger(__name__)

MASK64 = (1 << 64) - 1

# GFP flag names as ``show_gfp_flags()`` prints them, with their values: taken from
# the print fmt of events/kmem/kmalloc/format of Debian's 6.1 kernel (a copy is in
# tests/data/text/kmem_kmalloc.format; :func:`gfp_names_from_format` reads one).
# Combined names come first, as __print_flags matches them in this order.
GFP_FLAG_NAMES: dict[str, int] = {
    "GFP_TRANSHUGE": 0x1C24CA,
    "GFP_TRANSHUGE_LIGHT": 0x1C20CA,
    "GFP_HIGHUSER_MOVABLE": 0x100CCA,
    "GFP_HIGHUSER": 0x100CC2,
    "GFP_USER": 0x100CC0,
    "GFP_KERNEL_ACCOUNT": 0x400CC0,
    "GFP_KERNEL": 0xCC0,
    "GFP_NOFS": 0xC40,
    "GFP_ATOMIC": 0xA20,
    "GFP_NOIO": 0xC00,
    "GFP_NOWAIT": 0x800,
    "GFP_DMA": 0x1,
    "__GFP_HIGHMEM": 0x2,
    "GFP_DMA32": 0x4,
    "__GFP_HIGH": 0x20,
    "__GFP_ATOMIC": 0x200,
    "__GFP_IO": 0x40,
    "__GFP_FS": 0x80,
    "__GFP_NOWARN": 0x2000,
    "__GFP_RETRY_MAYFAIL": 0x4000,
    "__GFP_NOFAIL": 0x8000,
    "__GFP_NORETRY": 0x10000,
    "__GFP_COMP": 0x40000,
    "__GFP_ZERO": 0x100,
    "__GFP_NOMEMALLOC": 0x80000,
    "__GFP_MEMALLOC": 0x20000,
    "__GFP_HARDWALL": 0x100000,
    "__GFP_THISNODE": 0x200000,
    "__GFP_RECLAIMABLE": 0x10,
    "__GFP_MOVABLE": 0x8,
    "__GFP_ACCOUNT": 0x400000,
    "__GFP_WRITE": 0x1000,
    "__GFP_RECLAIM": 0xC00,
    "__GFP_DIRECT_RECLAIM": 0x400,
    "__GFP_KSWAPD_RECLAIM": 0x800,
    "__GFP_ZEROTAGS": 0x800000,
}

# sched_switch prev_state letters (events/sched/sched_switch/format, 6.1); "R" is 0
# and a trailing "+" (preempted) is TASK_REPORT_MAX, twice the highest letter.
SCHED_STATE_LETTERS: dict[str, int] = {
    "S": 0x1, "D": 0x2, "T": 0x4, "t": 0x8, "X": 0x10, "Z": 0x20, "P": 0x40, "I": 0x80,
}
SCHED_STATE_PREEMPTED = 0x100

# events named without their system in the text → full names, as the binary has them
_SYSTEM_OF: dict[str, str] = {tp.partition("/")[2]: tp.partition("/")[0] for tp in TRACEPOINTS}
_SYSTEM_OF.update({
    "kernel_stack": "ftrace", "user_stack": "ftrace", "print": "ftrace", "bprint": "ftrace",
    "bputs": "ftrace", "function": "ftrace", "funcgraph_entry": "ftrace",
    "funcgraph_exit": "ftrace", "tracing_mark_write": "ftrace",
    "kfree": "kmem", "kmem_cache_free": "kmem", "mm_page_free": "kmem",
    "mm_page_free_batched": "kmem", "mm_page_alloc_zone_locked": "kmem",
    "mm_page_pcpu_drain": "kmem", "mm_page_alloc_extfrag": "kmem", "rss_stat": "kmem",
    "softirq_raise": "irq", "tasklet_entry": "irq", "tasklet_exit": "irq",
    "module_get": "module", "module_put": "module", "module_request": "module",
    "contention_begin": "lock", "contention_end": "lock",
})

_HEADER = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S{4,5})\s+)?(?P<ts>\d+(?:\.\d+)?):(?: (?P<body>.*))?$")
_LOST = re.compile(r"^CPU:(?P<cpu>\d+) \[LOST (?:(?P<n>\d+) )?EVENTS\]\s*$")
_ENTRIES = re.compile(r"^#\s*entries-in-buffer/entries-written:\s*(?P<inbuf>\d+)/(?P<written>\d+)"
                      r"(?:\s+#P:(?P<ncpu>\d+))?")
_TRACER = re.compile(r"^#\s*tracer:\s*(?P<tracer>\S+)")
# an event body: "name: rest"; the name of a print event is the symbol of its ip
# (with sym-offset/sym-addr: "tracing_mark_write+0xdd/0x240 <ffffffff9e7b348d>")
_BODY = re.compile(
    r"^(?P<name>[^\s:<>()\[\]+]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[[^\]\s]+\])?"
    r"(?: <[0-9a-f]+>)?: ?(?P<rest>.*)$")
# one printed symbol: name[+0xoff/0xsize][ [module]][ <addr>], or a raw 0x address
_SYM = re.compile(
    r"^(?P<name>[^\s<]+?)(?:\+0x(?P<off>[0-9a-f]+)/0x(?P<size>[0-9a-f]+))?"
    r"(?: \[(?P<mod>[^\]\s]+)\])?(?: <(?P<addr>[0-9a-f]+)>)?$")
_ADDR_ONLY = re.compile(r"^<(?P<addr>[0-9a-f]+)>$")
_KV = re.compile(r"(?:^| )(\w+)=")
_SWITCH = re.compile(
    r"^prev_comm=(?P<pc>.*) prev_pid=(?P<pp>-?\d+) prev_prio=-?\d+ prev_state=(?P<ps>\S+) "
    r"==> next_comm=(?P<nc>.*) next_pid=(?P<np>-?\d+) next_prio=-?\d+$")
_SOFTIRQ = re.compile(r"^vec=(?P<vec>\d+)")
_HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")

_TEXT_CLUSTER_GAP = 0x10000  # module symbols further apart than this are separate allocations


@dataclass(frozen=True)
class TextSym:
    """One symbol as the text printed it; any part may be missing."""

    name: str | None
    off: int | None = None
    size: int | None = None
    module: str | None = None
    addr: int | None = None  # the printed address (sym-addr, or a raw 0x… address)

    @property
    def start(self) -> int | None:
        """Start of the symbol, when both its address and offset were printed."""
        if self.addr is None or self.off is None or self.name is None:
            return None
        return self.addr - self.off


def parse_sym(text: str) -> TextSym:
    """``td_x+0x73/0x10f [td_mod] <ffffffffc052f173>`` → :class:`TextSym` (any part optional)."""
    text = text.strip()
    m = _ADDR_ONLY.match(text)
    if m:
        return TextSym(None, addr=int(m.group("addr"), 16))
    m = _SYM.match(text)
    if m is None:
        return TextSym(text or None)
    name = m.group("name")
    addr = int(m.group("addr"), 16) if m.group("addr") else None
    if name.startswith("0x") and _HEX.match(name):  # the kernel could not name it
        raw = int(name, 16)
        return TextSym(None, addr=addr if addr is not None else raw)
    if name == "0" and m.group("off") is None:  # seq_print_ip_sym of a NULL ip
        return TextSym(None, addr=0)
    off = int(m.group("off"), 16) if m.group("off") else None
    size = int(m.group("size"), 16) if m.group("size") else None
    return TextSym(name, off, size, m.group("mod"), addr)


def _eval_c_int(expr: str) -> int:
    """Value of a constant C integer expression from a print fmt (casts, | & ~ + << only)."""
    e = re.sub(r"\(\s*(?:unsigned long|gfp_t|unsigned int|int)\s*\)", "", expr)
    e = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", e)
    if not re.fullmatch(r"[0-9a-fA-Fx|&~()+<> \t]*", e) or not e.strip():
        raise ValueError(f"not a constant expression: {expr!r}")
    return int(eval(e, {"__builtins__": {}}, {}))  # noqa: S307 - characters checked above


def gfp_names_from_format(fmt_text: str) -> dict[str, int]:
    """GFP flag names and values from the print fmt of a kmem event ``format`` file."""
    out: dict[str, int] = {}
    for m in re.finditer(r'\{\s*\(\s*unsigned long\s*\)(?P<expr>.*?),\s*"(?P<name>[\w]+)"\s*\}',
                         fmt_text):
        out[m.group("name")] = _eval_c_int(m.group("expr"))
    return out


def sched_states_from_format(fmt_text: str) -> dict[str, int]:
    """prev_state letters and values from the print fmt of sched_switch's ``format`` file."""
    return {m.group(2): int(m.group(1), 16)
            for m in re.finditer(r'\{\s*(0x[0-9a-fA-F]+),\s*"(\w)"\s*\}', fmt_text)}


def parse_gfp(text: str, unknown: set[str] | None = None) -> int:
    """``GFP_KERNEL|__GFP_ZERO`` → 0xdc0; ``none`` → 0; hex leftovers are kept."""
    v = 0
    if text in ("none", "0", ""):
        return 0
    for tok in text.split("|"):
        tok = tok.strip()
        if tok in GFP_FLAG_NAMES:
            v |= GFP_FLAG_NAMES[tok]
        elif _HEX.match(tok):
            v |= int(tok, 16) if tok.lower().startswith("0x") else int(tok, 0)
        elif unknown is not None:
            unknown.add(tok)
    return v


def parse_sched_state(text: str) -> int:
    """``S`` → 1, ``R`` → 0, ``R+`` → TASK_REPORT_MAX, ``D|K`` → the or of the letters."""
    v = 0
    if text.endswith("+"):
        v |= SCHED_STATE_PREEMPTED
        text = text[:-1]
    for tok in text.split("|"):
        v |= SCHED_STATE_LETTERS.get(tok, 0)
    return v


def _flags(s: str | None) -> tuple[bool, bool, bool, bool, bool, int]:
    """(irqs_off, bh_off, hardirq, softirq, nmi, preempt depth) from the flags column."""
    if s is None:
        return (False, False, False, False, False, 0)
    c0, c2, c3 = s[0], s[2], s[3]
    irqs_off = c0 in "dD"
    bh_off = c0 in "bD"
    nmi = c2 in "zZ"
    hard = c2 in "hHZ"
    soft = c2 in "sH"
    depth = int(c3, 16) if c3 in "0123456789abcdef" else 0
    return (irqs_off, bh_off, hard, soft, nmi, depth)


def _kv(rest: str) -> dict[str, str]:
    """``a=1 b=foo+0x1/0x2 [mod] c=x`` → {a: 1, b: "foo+0x1/0x2 [mod]", c: x}."""
    out: dict[str, str] = {}
    ms = list(_KV.finditer(rest))
    for i, m in enumerate(ms):
        end = ms[i + 1].start() if i + 1 < len(ms) else len(rest)
        out[m.group(1)] = rest[m.end():end].strip()
    return out


_MAX_CPU = 8191  # NR_CPUS of any distro kernel
_MAX_PID = 4194304  # PID_MAX_LIMIT


def _int(v: str | None, base: int = 0) -> int:
    """A number from the text, as the 64-bit value a kernel could have printed: a
    decimal beyond 64 bits wraps like its hex would (the columns are 64-bit)."""
    if v is None or v == "":
        return 0
    v = v.strip()
    if base == 16 or (base == 0 and _HEX.match(v) and not v.lstrip("-").isdigit()):
        return int(v, 16) & MASK64
    try:
        n = int(v, 10)
    except ValueError:
        return int(v, 16) & MASK64
    if -(1 << 63) <= n < 1 << 63:
        return n
    n &= MASK64
    return n - (1 << 64) if n >= 1 << 63 else n


def _ptr(v: str | None) -> int:
    """%p as the kernel prints it: hex without 0x (with no_hash_pointers), or 0x…, or (null)."""
    if not v or not _HEX.match(v):
        return 0
    return int(v, 16) & MASK64


def _full_event(name: str) -> str:
    if name == "tracing_mark_write":  # a print event is named after its ip
        return "ftrace/print"
    if "/" in name:
        return name
    if name in _SYSTEM_OF:
        return f"{_SYSTEM_OF[name]}/{name}"
    if parse_event_name(f"{GROUP}/{name}") is not None:
        return f"{GROUP}/{name}"
    return name


def _ts_ns(ts: str) -> int:
    sec, _, frac = ts.partition(".")
    if not frac:
        return int(sec)  # a counter clock: its raw value
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


class _Rows:
    """Growing columns of the events frame, one append per event line."""

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.cpu: list[int] = []
        self.pid: list[int] = []
        self.comm: list[str] = []
        self.ctx: list[tuple[bool, bool, bool, bool, bool, int]] = []
        self.kind: list[str] = []
        self.event: list[str] = []
        self.lock_addr: list[int] = []
        self.lock_type: list[str] = []
        self.lock_flags: list[str] = []
        self.ip: list[int] = []
        self.gfp: list[int] = []
        self.ptr: list[int] = []
        self.nbytes: list[int] = []
        self.func: list[str] = []
        self.value: list[int] = []
        self.stack_id: list[int] = []
        self.target_pid: list[int] = []
        # sparse: only lock_init rows have them (row -> value)
        self.lock_name: dict[int, str] = {}
        self.key_addr: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class _Site:
    """A call site printed as a symbol, to be turned into an ``ip`` once symbols are known."""

    row: int
    sym: TextSym
    return_address: bool  # ip = address − call size (else a function pointer: ip = address)


class _TextParser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = _Rows()
        self.sites: list[_Site] = []
        self.stacks: list[list[TextSym]] = []
        self.stack_owner: list[int] = []  # row the stack belongs to, or -1
        self.last_row_on_cpu: dict[int, int] = {}
        self.comms: dict[int, str] = {}
        self.counts: dict[str, int] = {}
        self.lost_lines: list[dict[str, Any]] = []
        self.overwritten = 0
        self.ncpus: int | None = None
        self.tracer: str | None = None
        self.header = False
        self.flag_widths: set[int] = set()
        self.no_flags = False
        self.truncated_lines = 0
        self.continuations = 0
        self.unknown_gfp: set[str] = set()
        self.code_addrs: list[int] = []  # raw code addresses seen (arch guess)
        self.printed: list[TextSym] = []  # symbols printed with name, offset and address
        self.name_module: dict[str, set[str]] = {}  # function names printed with [module]
        self.last_entry: dict[int, tuple[str, int]] = {}  # pid → (lock function, ret) of lk_
        self.sym_addr = False
        self.sym_offset = False
        self.ptrs_seen = 0
        self.ptrs_small = 0

    # -- lines ------------------------------------------------------------------

    def error(self, lineno: int, what: str) -> TraceFormatError:
        return TraceFormatError(f"{self.path}:{lineno}: {what}")

    def parse(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            # no newline at the end: the capture stopped inside this line
            lines.pop()
            self.truncated_lines += 1
        stack: list[TextSym] | None = None
        user_stack = False
        text_continues = False  # the last event was free text (a marker): may span lines
        seen_event = False
        for lineno, raw in enumerate(lines, start=1):
            if b"\0" in raw:
                raise self.error(lineno, "binary data, not an ftrace text trace")
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if line.startswith(" => "):
                if stack is not None:
                    s = parse_sym(line[4:])
                    self.sym_offset = self.sym_offset or s.off is not None
                    self._note_sym(s)
                    stack.append(s)
                    continue
                if user_stack:
                    continue
                if text_continues:  # free text that happens to start with " => "
                    self._continue(line)
                    continue
                raise self.error(lineno, "stack entry without a <stack trace> line")
            stack = None
            user_stack = False
            if not line.strip():
                continue
            if line.startswith("#"):
                self._comment(line)
                continue
            m = _LOST.match(line)
            if m:
                n = m.group("n")
                self.lost_lines.append({
                    "line": lineno, "cpu": int(m.group("cpu")),
                    "count": int(n) if n is not None else None,
                    # where: after the event printed last (trace time)
                    "after_ts_ns": self.rows.ts[-1] if len(self.rows) else None})
                text_continues = False
                continue
            h = _HEADER.match(line)
            if h is None:
                if text_continues:
                    # a marker or trace_printk whose text held a newline
                    self._continue(line)
                    continue
                if not seen_event and not self.header:
                    raise self.error(lineno, "not an ftrace text trace (expected '# tracer:' "
                                             "or 'task-pid [cpu] flags timestamp: event')")
                raise self.error(lineno, f"not an ftrace event line: {line[:80]!r}")
            seen_event = True
            text_continues = False
            body = h.group("body") or ""
            cpu = int(h.group("cpu"))
            if cpu > _MAX_CPU or int(h.group("pid")) > _MAX_PID:
                raise self.error(lineno, f"cpu {h.group('cpu')[:20]} or pid "
                                         f"{h.group('pid')[:20]} out of range")
            if body == "<stack trace>":
                stack = []
                owner = self.last_row_on_cpu.get(cpu, -1)
                if owner >= 0 and self.rows.stack_id[owner] >= 0:
                    owner = -1  # a second stack for one event: kept, owned by none
                if owner >= 0:
                    self.rows.stack_id[owner] = len(self.stacks)
                self.stacks.append(stack)
                self.stack_owner.append(owner)
                self._count("ftrace/kernel_stack")
                continue
            if body == "<user stack trace>":
                user_stack = True
            text_continues = self._event(lineno, h, cpu, body)
        if not seen_event and not self.header:
            raise TraceFormatError(f"{self.path}: no ftrace events and no ftrace header")
        self._place_callers()

    def _place_callers(self) -> None:
        """In the stack of a probe event, the frame after the probed function is its
        caller, at exactly the probe's ``ret=``: that places the caller's symbol when
        the text printed its offset but not its address (sym-offset without sym-addr)."""
        for frames, owner in zip(self.stacks, self.stack_owner, strict=True):
            if owner < 0:
                continue
            ours = parse_event_name(self.rows.event[owner])
            if ours is None or ours[0] not in ("lk", "sl"):
                continue
            fn = ours[1]
            for i, f in enumerate(frames[:-1]):
                if f.name == fn:
                    c = frames[i + 1]
                    if c.addr is None and c.off is not None and c.name is not None:
                        self._place(TextSym(c.name, c.off, c.size, c.module,
                                            self.rows.ip[owner]))
                    break

    def _continue(self, line: str) -> None:
        self.continuations += 1
        if self.rows.kind[-1] == "marker":
            self.rows.func[-1] = f"{self.rows.func[-1]}\n{line}"

    def _comment(self, line: str) -> None:
        m = _TRACER.match(line)
        if m:
            self.tracer = m.group("tracer")
            self.header = True
            return
        m = _ENTRIES.match(line)
        if m:
            self.header = True
            self.overwritten += max(0, int(m.group("written")) - int(m.group("inbuf")))
            if m.group("ncpu"):
                self.ncpus = int(m.group("ncpu"))

    def _count(self, ev: str) -> None:
        self.counts[ev] = self.counts.get(ev, 0) + 1

    def _note_sym(self, s: TextSym) -> None:
        if s.addr is not None:
            self.code_addrs.append(s.addr)
            self.sym_addr = self.sym_addr or s.name is not None
        if s.name is not None and s.module is not None:
            self.name_module.setdefault(s.name, set()).add(s.module)
        self._place(s)

    def _place(self, s: TextSym) -> None:
        """Keep ``s`` as a symbol of the trace if its start and size are known."""
        if s.start is not None and s.size:
            self.printed.append(s)

    # -- one event --------------------------------------------------------------

    def _event(self, lineno: int, h: re.Match[str], cpu: int, body: str) -> bool:
        """Append the row of one event line; return whether its text may continue."""
        r = self.rows
        row = len(r)
        flags = h.group("flags")
        if flags is None:
            self.no_flags = True
        else:
            self.flag_widths.add(len(flags))
        pid = int(h.group("pid"))
        comm = h.group("comm").strip() or "<...>"
        if comm != "<...>" and pid not in self.comms:
            self.comms[pid] = comm
        r.ts.append(_ts_ns(h.group("ts")))
        r.cpu.append(cpu)
        r.pid.append(pid)
        r.comm.append(comm)
        r.ctx.append(_flags(flags))
        r.kind.append("other")
        r.lock_addr.append(0)
        r.lock_type.append("")
        r.lock_flags.append("")
        r.ip.append(0)
        r.gfp.append(0)
        r.ptr.append(0)
        r.nbytes.append(0)
        r.func.append("")
        r.value.append(0)
        r.stack_id.append(-1)
        r.target_pid.append(-1)
        self.last_row_on_cpu[cpu] = row
        if body == "<user stack trace>":
            r.event.append("ftrace/user_stack")
            self._count("ftrace/user_stack")
            return False
        m = _BODY.match(body)
        if m is None:
            # e.g. the function tracer's "func <-parent": kept, as "other"
            ev = "ftrace/function" if " <-" in body else ""
            r.event.append(ev)
            self._count(ev)
            return False
        name, rest = m.group("name"), m.group("rest")
        head = body[:m.start("rest")].rstrip(": ")
        if head != name:  # a print event named after its ip, with sym-offset/sym-addr
            self.sym_offset = self.sym_offset or "+0x" in head
            self._note_sym(parse_sym(head))
        ev = _full_event(name)
        r.event.append(ev)
        self._count(ev)
        try:
            return self._fields(row, ev, rest)
        except (ValueError, IndexError) as e:
            raise self.error(lineno, f"cannot read the fields of {ev}: {e}") from None

    def _fields(self, row: int, ev: str, rest: str) -> bool:
        r = self.rows
        ours = parse_event_name(ev)
        if ours is not None:
            self._probe(row, ours[0], ours[1], rest)
            return False
        system, _, name = ev.partition("/")
        if ev == "ftrace/print":
            r.kind[row] = "marker"
            r.func[row] = rest
            return True
        if system == "kmem" and "gfp_flags=" in rest:
            kv = _kv(rest)
            r.kind[row] = "alloc"
            r.gfp[row] = parse_gfp(kv.get("gfp_flags", ""), self.unknown_gfp)
            if "ptr" in kv:
                r.ptr[row] = self._pointer(kv["ptr"])
            if "bytes_alloc" in kv:
                r.nbytes[row] = _int(kv["bytes_alloc"], 10)
            elif "order" in kv:
                order = _int(kv["order"], 10)
                r.nbytes[row] = 4096 << order if 0 <= order <= 20 else 0  # MAX_PAGE_ORDER ≤ 10
            if "call_site" in kv:
                self._call_site(row, kv["call_site"])
            r.func[row] = name
            return False
        if system == "kmem" and name in ("kfree", "kmem_cache_free"):
            kv = _kv(rest)
            r.kind[row] = "free"
            r.ptr[row] = self._pointer(kv.get("ptr"))
            self._call_site(row, kv.get("call_site", "0"))
            return False
        if ev == "sched/sched_switch":
            m = _SWITCH.match(rest)
            if m is None:
                raise ValueError("unexpected sched_switch fields")
            r.kind[row] = "sched_switch"
            r.value[row] = parse_sched_state(m.group("ps"))
            r.target_pid[row] = int(m.group("np"))
            self.comms[int(m.group("pp"))] = m.group("pc")
            self.comms[int(m.group("np"))] = m.group("nc")
            return False
        if ev in ("irq/irq_handler_entry", "irq/irq_handler_exit"):
            kv = _kv(rest)
            r.kind[row] = "irq_entry" if name.endswith("entry") else "irq_exit"
            r.value[row] = _int(kv.get("irq"), 10)
            if "name" in kv:
                r.func[row] = kv["name"]
            return False
        if ev in ("irq/softirq_entry", "irq/softirq_exit"):
            m = _SOFTIRQ.match(rest)
            if m is None:
                raise ValueError("no vec=")
            vec = int(m.group("vec"))
            r.kind[row] = "softirq_entry" if name.endswith("entry") else "softirq_exit"
            r.value[row] = vec
            r.func[row] = SOFTIRQ_NAMES[vec] if vec < len(SOFTIRQ_NAMES) else str(vec)
            return False
        if ev in ("module/module_load", "module/module_free"):
            r.kind[row] = "module_load" if name == "module_load" else "other"
            r.func[row] = rest.split()[0] if rest.split() else ""
            return False
        if ev.startswith("timer/timer_expire"):
            fn = _kv(rest).get("function")
            if fn:
                self._call_site(row, fn, return_address=False)
            return False
        # anything else is kept as "other"; printk-like text may span lines
        return ev in ("ftrace/bprint", "ftrace/bputs") or "/" not in ev

    def _probe(self, row: int, role: str, fn: str, rest: str) -> None:
        """A tracedep kprobe/kretprobe line.  Entry probes keep their raw return
        address in ``ip`` until the architecture (call size) is known."""
        r = self.rows
        if not rest.startswith("("):
            raise ValueError("no (symbol) after the probe name")
        close = rest.find(")")
        if close < 0:
            raise ValueError("unclosed (symbol)")
        inside, args = rest[1:close], rest[close + 1:]
        kv = dict(re.findall(r"(\w+)=(\S+)", args))
        lf = LOCK_FUNCS.get(fn)
        if role in ("li", "lc"):
            self._note_sym(parse_sym(inside))
            self._lock_init(row, fn, args, kv)
        elif role in ("lk", "ul"):
            self._note_sym(parse_sym(inside))
            if role == "lk":
                self.last_entry[r.pid[row]] = (fn, _int(kv.get("ret"), 16))
            r.kind[row] = "lock_acquire" if role == "lk" else "lock_release"
            r.lock_type[row] = lf.lock_type if lf else ""
            r.lock_flags[row] = "+".join(lf.flags) if lf else ""
            r.lock_addr[row] = _int(kv.get("lock"), 16)
            ret = _int(kv.get("ret"), 16)
            self.code_addrs.append(ret)
            r.ip[row] = ret
            if "sub" in kv:
                r.value[row] = _int(kv["sub"], 10)
        elif role == "lr":
            site, _, func = inside.partition(" <- ")
            self._note_sym(parse_sym(func))
            s = parse_sym(site)
            last = self.last_entry.get(r.pid[row])
            if s.addr is None and s.off is not None and last is not None and last[0] == fn:
                # the return site of this call is the ret= its entry probe read
                self._place(TextSym(s.name, s.off, s.size, s.module, last[1]))
            r.kind[row] = "lock_return"
            r.lock_type[row] = lf.lock_type if lf else ""
            r.lock_flags[row] = "+".join(lf.flags) if lf else ""
            r.value[row] = _int(kv.get("rv"), 10)
            self._call_site(row, site)
        else:
            self._note_sym(parse_sym(inside))
            r.kind[row] = "sleep_call"
            r.func[row] = MIGHT_SLEEP if fn == MIGHT_SLEEP_FUNC else fn
            ret = _int(kv.get("ret"), 16)
            self.code_addrs.append(ret)
            r.ip[row] = ret

    def _lock_init(self, row: int, fn: str, args: str, kv: dict[str, str]) -> None:
        """A lock initializer or re-keying (tracer.lock_init): ``lock=`` (or ``obj=``
        plus ``off=``), ``key=``, ``ret=``, and last the ``name="…"`` string, which may
        hold spaces: it runs to the line's last quote."""
        r = self.rows
        at = args.find(' name="')
        if at >= 0:  # the guest's string may itself hold "lock=…": never read fields in it
            kv = dict(re.findall(r"(\w+)=(\S+)", args[:at]))
        if "lock" in kv:
            lock = _int(kv.get("lock"), 16)
        else:
            moff = _int(kv.get("off"), 0)
            lock = (_int(kv.get("obj"), 16) + moff) & MASK64 if 0 <= moff < OFFSET_MAX else 0
        if not lock:
            return
        r.kind[row] = "lock_init"
        r.func[row] = fn
        r.lock_addr[row] = lock
        r.key_addr[row] = _int(kv.get("key"), 16)
        if "mode" in kv:  # a directory re-key's i_mode (u16: printed in decimal)
            r.value[row] = _int(kv["mode"], 10)
        ret = _int(kv.get("ret"), 16)
        self.code_addrs.append(ret)
        r.ip[row] = ret
        if at >= 0:
            raw = args[at + 7:]
            r.lock_name[row] = clean_name(raw[:raw.rfind('"')] if '"' in raw else raw)

    def _call_site(self, row: int, text: str, return_address: bool = True) -> None:
        """A return address (call_site, kretprobe's return site) or a function pointer,
        as text; its ``ip`` is set in ``_finish``, once the call size and symbols are known."""
        s = parse_sym(text)
        self._note_sym(s)
        self.sites.append(_Site(row, s, return_address))

    def _pointer(self, v: str | None) -> int:
        p = _ptr(v)
        if p:
            self.ptrs_seen += 1
            if p < 1 << 32:
                self.ptrs_small += 1
        return p


# -- symbols -----------------------------------------------------------------------


def _read_kallsyms(path: Path) -> list[tuple[int, str, str]]:
    try:
        entries = read_kallsyms_file(path)
    except TraceFormatError as e:
        raise InputError(f"--kallsyms {e}") from None
    if not entries:
        raise InputError(f"--kallsyms {path}: no symbols (not a /proc/kallsyms copy)")
    if not any(a for a, _, _ in entries):
        raise InputError(f"--kallsyms {path}: every address is 0 (kallsyms read without "
                         "root or with kptr_restrict set); copy it as root")
    return entries


@dataclass
class _SymEntry:
    addr: int
    name: str
    module: str  # "vmlinux" or the module
    is_exec: bool
    end: int  # 0 when unknown


def _entries(kallsyms: list[tuple[int, str, str]], printed: list[TextSym]) -> list[_SymEntry]:
    out: list[_SymEntry] = []
    for addr, typ, name in kallsyms:
        if addr == 0 or typ in "aAuUnN" or not name:
            continue
        base, _, mod = name.partition("\t")
        base = base.split(" ", 1)[0]
        if is_mapping_or_local_label(base):
            continue
        module = mod.strip().strip("[]") if mod.strip().startswith("[") else "vmlinux"
        out.append(_SymEntry(addr, base, module, typ in "tTwW", 0))
    known = {(e.addr, e.name) for e in out}
    for s in printed:
        start = s.start
        assert start is not None and s.name is not None and s.size is not None
        if (start, s.name) in known:
            continue
        known.add((start, s.name))
        out.append(_SymEntry(start, s.name, s.module or "vmlinux", True, start + s.size))
    return out


def _table(entries: list[_SymEntry]) -> SymbolTable:
    return SymbolTable.from_arrays(
        np.array([e.addr for e in entries], dtype=np.uint64), [e.name for e in entries],
        np.zeros(len(entries), dtype=bool), np.array([e.is_exec for e in entries], dtype=bool),
        np.array([e.end for e in entries], dtype=np.uint64))


def build_symbols(kallsyms: list[tuple[int, str, str]], printed: list[TextSym]
                  ) -> tuple[RunSymbols, dict[str, SymbolTable]]:
    """RunSymbols for a text trace: the core kernel and one span per allocation of each
    module, from kallsyms (``[module]``-tagged lines) and the symbols the text placed."""
    entries = _entries(kallsyms, printed)
    by_mod: dict[str, list[_SymEntry]] = {}
    for e in entries:
        by_mod.setdefault(e.module, []).append(e)
    core = by_mod.pop("vmlinux", [])
    kernel = _table(core) if core else None
    span = kernel.bounds() if kernel is not None else (0, 0)
    tables: dict[str, SymbolTable] = {}
    spans: list[ModuleSpan] = []
    for mod, ents in sorted(by_mod.items()):
        ents.sort(key=lambda e: e.addr)
        # one cluster per allocation (core, init): a module's pages are its own
        clusters: list[list[_SymEntry]] = [[ents[0]]]
        for e in ents[1:]:
            last = clusters[-1][-1]
            if e.addr - max(last.addr, last.end) > _TEXT_CLUSTER_GAP:
                clusters.append([e])
            else:
                clusters[-1].append(e)
        for cl in clusters:
            top = max(max(e.addr for e in cl) + 1, max(e.end for e in cl))
            page_end = (top + 0xFFF) & ~0xFFF
            for e in cl:
                if not e.end:
                    e.end = page_end
        table = _table(ents)
        tables[mod] = table
        for cl in clusters:
            # module memory is page-granular: the pages holding its symbols are its own
            lo = min(e.addr for e in cl) & ~0xFFF
            hi = max(e.end for e in cl)
            spans.append(ModuleSpan(mod, lo, hi, table))
    if kernel is not None:
        tables["vmlinux"] = kernel
    return RunSymbols(kernel, span, spans), tables


def _resolve(s: TextSym, tables: dict[str, SymbolTable]) -> int | None:
    """The address a printed symbol stands for (its start + offset), if exactly one fits."""
    if s.addr is not None:
        return s.addr
    if s.name is None:
        return None
    mods = [s.module or "vmlinux"] if s.module or s.off is not None else list(tables)
    cands: set[int] = set()
    for mod in mods:
        t = tables.get(mod)
        if t is None:
            continue
        for a in t.addresses_of(s.name):
            hit = t.lookup(a)
            if s.size is not None and hit is not None and hit[2] and hit[2] != s.size:
                continue
            cands.add(a)
    if len(cands) != 1:
        return None
    return cands.pop() + (s.off or 0)


def _guess_arch(kallsyms: list[tuple[int, str, str]], code: list[int]) -> tuple[str, bool]:
    """(arch, guessed): from kallsyms' syscall wrappers, else from code addresses."""
    for _, _, name in kallsyms:
        if name.startswith("__arm64_sys_"):
            return "arm64", False
        if name.startswith("__x64_sys_"):
            return "x86_64", False
    x86 = sum(1 for a in code if a >= 0xFFFFFFFF80000000)
    arm = sum(1 for a in code if 0xFFFF000000000000 <= a < 0xFFFFFFFF00000000)
    if arm > x86:
        return "arm64", not code
    return "x86_64", not code


# -- the whole file --------------------------------------------------------------------


def load_text(path: Path, kallsyms: Path | None = None) -> Trace:
    """Read an ftrace text trace (``trace`` or ``trace_pipe`` output; gzip is fine).

    ``kallsyms``: a copy of the traced machine's ``/proc/kallsyms`` (module lines
    included), to turn symbolized call sites back into addresses and to name the
    kernel's and modules' addresses.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TraceFormatError(f"{path}: broken gzip data: {e}") from None
    p = _TextParser(path)
    p.parse(data)
    ksyms = _read_kallsyms(kallsyms) if kallsyms is not None else []
    try:
        return _finish(p, ksyms, kallsyms)
    except OverflowError as e:  # a number no kernel prints into a column of its width
        raise TraceFormatError(f"{path}: a value out of range for its field ({e})") from None


def _finish(p: _TextParser, ksyms: list[tuple[int, str, str]], kallsyms: Path | None
            ) -> Trace:
    r = p.rows
    n = len(r)
    warnings: list[str] = []
    arch, guessed = _guess_arch(ksyms, p.code_addrs)
    machine = MACHINES[arch]
    cs = machine.call_insn_size
    symbols, tables = build_symbols(ksyms, p.printed)

    ip = np.array(r.ip, dtype=np.uint64)
    ours = np.array([parse_event_name(e) is not None for e in r.event], dtype=bool)
    # kprobe rows hold their raw return address: now the call size is known
    lk_sl = ours & np.isin(np.array(r.kind, dtype=object), ["lock_acquire", "lock_release",
                                                             "sleep_call", "lock_init"])
    ip[lk_sl] = ip[lk_sl] - np.uint64(cs)
    site_of_row: dict[int, Frame] = {}
    unresolved = 0
    for st in p.sites:
        adj = -cs if st.return_address else 0
        a = _resolve(st.sym, tables)
        if a is not None:
            ip[st.row] = np.uint64((a + adj) & MASK64)
        else:
            ip[st.row] = 0
            if st.sym.name is not None:
                unresolved += 1
                site_of_row[st.row] = _site_frame(st.sym, adj, p.name_module)
    if unresolved:
        why = "not in the kallsyms given" if ksyms else "no --kallsyms given"
        warnings.append(f"{unresolved} call sites are known only by name ({why}): their "
                        "events have ip 0 and heap lock classes may be missing")
    if p.unknown_gfp:
        warnings.append("unknown GFP flag names (another kernel version?): "
                        + ", ".join(sorted(p.unknown_gfp)))
    if p.ptrs_seen and p.ptrs_small == p.ptrs_seen:
        warnings.append("allocation pointers look hashed (the machine booted without "
                        "no_hash_pointers): heap lock classes cannot be found")
    if p.no_flags:
        warnings.append("the trace has no flags column (options/irq-info off): IRQ, "
                        "softirq and preemption state are unknown")
    if guessed:
        warnings.append("architecture not recognisable from the trace; assumed x86_64")

    ctx = np.array(r.ctx, dtype=np.int64).reshape(n, 6) if n else np.zeros((0, 6), np.int64)
    irqs_off = ctx[:, 0].astype(bool)
    if machine.kprobe_reports_irqs_off:
        irqs_off[ours] = False
    comms = dict(p.comms)
    comms[0] = "<idle>"
    comm = [c if c != "<...>" else comms.get(pid, c) for c, pid in zip(r.comm, r.pid,
                                                                      strict=True)]
    stack_id = np.array(r.stack_id, dtype=np.int32)
    df = pd.DataFrame({
        "ts_ns": np.array(r.ts, dtype=np.int64),
        "cpu": np.array(r.cpu, dtype=np.int16),
        "pid": np.array(r.pid, dtype=np.int32),
        "comm": pd.Categorical(comm),
        "irqs_off": irqs_off,
        "preempt_depth": ctx[:, 5].astype(np.int8),
        "bh_off": ctx[:, 1].astype(bool),
        "in_hardirq": ctx[:, 2].astype(bool),
        "in_softirq": ctx[:, 3].astype(bool),
        "in_nmi": ctx[:, 4].astype(bool),
        "kind": pd.Categorical(r.kind),
        "event": pd.Categorical(r.event),
        "lock_addr": np.array(r.lock_addr, dtype=np.uint64),
        "lock_type": pd.Categorical(r.lock_type),
        "lock_flags": pd.Categorical(r.lock_flags),
        "ip": ip,
        "gfp": np.array(r.gfp, dtype=np.uint64).astype(np.uint32),
        "ptr": np.array(r.ptr, dtype=np.uint64),
        "bytes": np.array(r.nbytes, dtype=np.int64),
        "func": pd.Categorical(r.func),
        "value": np.array(r.value, dtype=np.int64),
        "stack_id": stack_id,
        "target_pid": np.array(r.target_pid, dtype=np.int32),
        "lock_name": pd.Categorical(_sparse(r.lock_name, n, "")),
        "key_addr": np.array(_sparse(r.key_addr, n, 0), dtype=np.uint64),
        "_row": np.arange(n, dtype=np.int64),
    })
    df = df.sort_values("ts_ns", kind="stable")
    new_row = np.empty(n, dtype=np.int64)
    new_row[df["_row"].to_numpy()] = np.arange(n)
    df = df.drop(columns="_row")
    events = schema.conform(df)
    schema.validate(events)
    text_sites = {int(new_row[row]): f for row, f in site_of_row.items()}

    stacks: list[tuple[int, ...]] = []
    text_stacks: list[tuple[Frame, ...]] = []
    names_only = 0
    for frames in p.stacks:
        addrs = [_resolve(s, tables) if (s.addr is not None or s.off is not None) else None
                 for s in frames]
        exact = [a for a in addrs if a is not None]
        if frames and len(exact) == len(frames):
            stacks.append(tuple(a for a in exact if a))
        else:
            stacks.append(())
            names_only += 1
        text_stacks.append(tuple(_stack_frame(s, a, symbols, p.name_module, tables)
                                 for s, a in zip(frames, addrs, strict=True)))
    if names_only:
        warnings.append(
            f"{names_only} kernel stacks are known by name, not by address (capture with "
            "options/sym-addr, or with options/sym-offset and pass --kallsyms, for exact "
            "frames)")

    lost_reported = sum(int(x["count"]) for x in p.lost_lines if x["count"] is not None)
    unknown_markers = sum(1 for x in p.lost_lines if x["count"] is None)
    if unknown_markers:
        warnings.append(f"{unknown_markers} '[LOST EVENTS]' lines without a count: at least "
                        "one event lost at each")
    if p.truncated_lines:
        warnings.append("the last line of the trace file is cut short (capture interrupted); "
                        "it was ignored")
    total = lost_reported + p.overwritten + unknown_markers + p.truncated_lines
    kas = None
    if ksyms:
        runtime = next((a for a, _, nm in ksyms if nm == machine.text_symbol), None)
        if runtime is not None:
            kas = {"symbol": machine.text_symbol, "runtime": runtime}
    info: dict[str, Any] = {
        "source": {
            "format": "ftrace-text",
            "path": str(p.path),
            "kallsyms": str(kallsyms) if kallsyms is not None else None,
            "tracer": p.tracer,
            "reader": "trace" if p.header else "trace_pipe",
            "flags_width": sorted(p.flag_widths),
            "sym_addr": p.sym_addr,
            "sym_offset": p.sym_offset,
            "ncpus": p.ncpus,
            "marker_continuations": p.continuations,
        },
        "arch": arch,
        "call_insn_size": cs,
        "kprobe_reports_irqs_off": machine.kprobe_reports_irqs_off,
        "kaslr": kas,
        "modules": [],
        "event_counts": dict(sorted(p.counts.items())),
        "lost": {
            "total": total,
            "lost_lines": p.lost_lines,
            "reported": lost_reported,
            "unknown_count_lines": unknown_markers,
            "overwritten": p.overwritten,
            "truncated_lines": p.truncated_lines,
            "truncated": bool(p.truncated_lines),
        },
    }
    return Trace(events, stacks, info, symbols, p.path, warnings, text_stacks=text_stacks,
                 text_sites=text_sites)


def _sparse(values: dict[int, Any], n: int, default: Any) -> list[Any]:
    out = [default] * n
    for row, v in values.items():
        out[row] = v
    return out


def _module_guess(name: str, name_module: dict[str, set[str]],
                  tables: dict[str, SymbolTable] | None = None) -> str:
    mods = name_module.get(name, set())
    if len(mods) == 1:
        return next(iter(mods))
    if tables:
        hits = [m for m, t in tables.items() if t.addresses_of(name)]
        if len(hits) == 1:
            return hits[0]
    return "?"


def _site_frame(s: TextSym, adjust: int, name_module: dict[str, set[str]]) -> Frame:
    """The witness frame of a call site known by name only (``ip`` 0)."""
    assert s.name is not None
    off = max((s.off or 0) + adjust, 0) if s.off is not None else 0
    mod = s.module or (_module_guess(s.name, name_module) if s.off is None else "vmlinux")
    return Frame(function=s.name, offset=off, size=s.size or 0, module=mod, address=0)


def _stack_frame(s: TextSym, addr: int | None, symbols: RunSymbols,
                 name_module: dict[str, set[str]], tables: dict[str, SymbolTable]) -> Frame:
    """A raw stack entry (a return address, as ftrace recorded it) as a frame."""
    if s.name is None:
        a = addr or s.addr or 0
        hit = symbols.lookup(a) if a else None
        if hit is not None:
            return Frame(hit.name, hit.offset, hit.size, hit.module, address=a)
        return Frame(f"{a:#x}", module=symbols.module_of(a) or "?", address=a)
    mod = s.module
    if mod is None:
        if s.off is not None:
            mod = "vmlinux"  # sym-offset prints [module] for module code
        else:
            mod = _module_guess(s.name, name_module, tables)
    return Frame(s.name, s.off or 0, s.size or 0, mod, address=addr or 0)
