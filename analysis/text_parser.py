"""The line parser of ftrace text: one row of the events frame per event line.

It reads what ``kernel/trace/trace_output.c`` prints (see :mod:`.ftrace_text` for the
format and what becomes of the rows): the header comments, ``[LOST n EVENTS]``
lines, event lines and the ``=>`` lines of their stacks.  Addresses it cannot know
yet (a call site printed as a symbol, a kprobe's raw return address before the
architecture is known) are kept for :mod:`.ftrace_text` to resolve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracedep.analysis.text_symbols import TextSym, parse_sym
from tracedep.analysis.text_values import (
    MASK64,
    parse_gfp,
    parse_int,
    parse_ptr,
    parse_sched_state,
)
from tracedep.errors import TraceFormatError
from tracedep.tracer.event_rows import MIGHT_SLEEP, SOFTIRQ_NAMES
from tracedep.tracer.lock_init import OFFSET_MAX, clean_name
from tracedep.tracer.probes import (
    GROUP,
    LOCK_FUNCS,
    MIGHT_SLEEP_FUNC,
    TRACEPOINTS,
    parse_event_name,
)
from tracedep.tracer.wait_probes import WAIT_FUNCS

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
_KV = re.compile(r"(?:^| )(\w+)=")
_SWITCH = re.compile(
    r"^prev_comm=(?P<pc>.*) prev_pid=(?P<pp>-?\d+) prev_prio=-?\d+ prev_state=(?P<ps>\S+) "
    r"==> next_comm=(?P<nc>.*) next_pid=(?P<np>-?\d+) next_prio=-?\d+$")
_SOFTIRQ = re.compile(r"^vec=(?P<vec>\d+)")


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


class Rows:
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
class Site:
    """A call site printed as a symbol, to be turned into an ``ip`` once symbols are known."""

    row: int
    sym: TextSym
    return_address: bool  # ip = address − call size (else a function pointer: ip = address)


class TextParser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = Rows()
        self.sites: list[Site] = []
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

    def _lost(self, m: re.Match[str], lineno: int) -> None:
        n = m.group("n")
        self.lost_lines.append({
            "line": lineno, "cpu": int(m.group("cpu")), "count": int(n) if n is not None else None,
            # where: after the row printed last (its time), before the next
            "after_ts_ns": self.rows.ts[-1] if len(self.rows) else None, "row": len(self.rows)})

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
                self._lost(m, lineno)
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
                r.nbytes[row] = parse_int(kv["bytes_alloc"], 10)
            elif "order" in kv:
                order = parse_int(kv["order"], 10)
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
            r.value[row] = parse_int(kv.get("irq"), 10)
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
                self.last_entry[r.pid[row]] = (fn, parse_int(kv.get("ret"), 16))
            r.kind[row] = "lock_acquire" if role == "lk" else "lock_release"
            r.lock_type[row] = lf.lock_type if lf else ""
            r.lock_flags[row] = "+".join(lf.flags) if lf else ""
            r.lock_addr[row] = parse_int(kv.get("lock"), 16)
            ret = parse_int(kv.get("ret"), 16)
            self.code_addrs.append(ret)
            r.ip[row] = ret
            if "sub" in kv:
                r.value[row] = parse_int(kv["sub"], 10)
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
            r.value[row] = parse_int(kv.get("rv"), 10)
            self._call_site(row, site)
        elif role in ("wt", "sg", "qw"):
            # a wait or signal (tracer.wait_probes): never a may-sleep event of its own
            # (complete() is no sleep); the sleep catalog probes the waits apart
            self._note_sym(parse_sym(inside))
            wf = WAIT_FUNCS.get(fn)
            r.kind[row] = {"wt": "wait", "sg": "signal"}.get(role, "work_queued")
            r.func[row] = fn
            r.lock_type[row] = "work" if role == "qw" else (wf.obj if wf else "")
            r.lock_addr[row] = parse_int(kv.get("obj"), 16)
            if "wq" in kv:
                r.ptr[row] = parse_int(kv["wq"], 16)
            ret = parse_int(kv.get("ret"), 16)
            self.code_addrs.append(ret)
            r.ip[row] = ret
        else:
            self._note_sym(parse_sym(inside))
            r.kind[row] = "sleep_call"
            r.func[row] = MIGHT_SLEEP if fn == MIGHT_SLEEP_FUNC else fn
            ret = parse_int(kv.get("ret"), 16)
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
            lock = parse_int(kv.get("lock"), 16)
        else:
            moff = parse_int(kv.get("off"), 0)
            lock = (parse_int(kv.get("obj"), 16) + moff) & MASK64 if 0 <= moff < OFFSET_MAX else 0
        if not lock:
            return
        r.kind[row] = "lock_init"
        r.func[row] = fn
        r.lock_addr[row] = lock
        r.key_addr[row] = parse_int(kv.get("key"), 16)
        if "mode" in kv:  # a directory re-key's i_mode (u16: printed in decimal)
            r.value[row] = parse_int(kv["mode"], 10)
        ret = parse_int(kv.get("ret"), 16)
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
        self.sites.append(Site(row, s, return_address))

    def _pointer(self, v: str | None) -> int:
        p = parse_ptr(v)
        if p:
            self.ptrs_seen += 1
            if p < 1 << 32:
                self.ptrs_small += 1
        return p
