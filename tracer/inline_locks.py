"""Inlined spinlocks: find every lock/unlock a driver's compiler inlined, from its DWARF.

On kernels built with ``CONFIG_INLINE_SPIN_LOCK=y`` and friends (Debian's arm64
kernels), ``spin_lock()`` is not a call to ``_raw_spin_lock``: the whole lock is
inlined into the driver, so there is no function to probe.  The driver's DWARF
still says where each lock is: a ``DW_TAG_inlined_subroutine`` of
``__raw_spin_lock`` (inside one of ``spin_lock``), with the location of its
``lock`` parameter at each address.  For every such instance this module gives:

* the probe address as ``module:function+offset`` (the entry of the outermost
  lock API instance, moved forward past instructions kprobes cannot single-step
  on arm64, such as ``mrs xN, daif`` or exclusive loads/stores);
* how to fetch the lock's address there: a register (plus a constant), memory
  at register + offset, or a static symbol of the module whose runtime address
  the decoder works out from the module's section addresses (kprobe fetch
  arguments cannot produce a symbol's address, only its contents).

Instances whose ``__raw_*`` body is not inlined (x86's Debian kernel calls
``_raw_spin_lock``) are skipped: the out-of-line probe sees them.

Some lock APIs are inline on every kernel: a percpu_rw_semaphore's readers
(``percpu_down_read()``/``percpu_up_read()`` are a per-CPU increment and
decrement, with an out-of-line slow path only while a writer is pending).  They
are found the same way, on every architecture: the whole instance is the lock,
its ``sem`` parameter the lock's address.  ``percpu_down_read_trylock()`` is
listed as skipped: its outcome is in no register the DWARF describes and the
lock word (a per-CPU counter) does not tell it either.

Probe events are named ``<role>_<lock function>__inl<N>``, e.g.
``lk__raw_spin_lock_irqsave__inl12``; :func:`tracedep.tracer.probes.parse_event_name`
strips the suffix, so lock type and flags come from ``LOCK_FUNCS`` as for the
out-of-line probes.  Their records have no ``ret`` field: the call site is the
probe address (``__probe_ip``).  An inlined trylock's outcome cannot be
observed after the fact (its result lives in an undescribed register), so its
probe also fetches the lock word (``val``) just before the attempt: a spinlock
or write lock is taken iff it was 0, a read lock iff no writer held it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo
from elftools.dwarf.locationlists import (
    BaseAddressEntry,
    LocationEntry,
    LocationExpr,
    LocationParser,
)
from elftools.dwarf.ranges import BaseAddressEntry as RangeBaseEntry

from tracedep.kimage.elf_symbols import (
    STT_FUNC,
    STT_OBJECT,
    ElfFile,
    ElfFormatError,
    read_symtab,
)
from tracedep.kimage.ko_layout import EM_AARCH64, EM_X86_64, layout_sections, relocated_data
from tracedep.tracer.module_sections import KernelLoad, load_sections
from tracedep.tracer.probes import GROUP, INLINE_SUFFIX, LOCK_FUNCS

log = logging.getLogger(__name__)

CACHE_FORMAT = 6  # 3: static-pointer locks; 4: atomic base register, no hoisted double entries;
# 5: always-inline APIs (percpu rwsem readers), discovery mode in the key; 6: x86 static calls

# Inlined functions that are a lock API level above the __raw_* body (their
# ``lock`` parameter is the same lock: rlock is the first member of spinlock_t).
_API = re.compile(
    r"^(raw_)?(spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|_irqrestore)?$"
    r"|^__raw_(spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|_irqrestore)?$")
_BODY = re.compile(r"^__raw_((spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|"
                   r"_irqrestore)?)$")
# lock APIs that are inline functions on every kernel: the instance is the body and
# its name the LOCK_FUNCS key
_ALWAYS_INLINE = re.compile(r"^percpu_(down_read|up_read|down_read_trylock)$")
_UNOBSERVABLE = {"percpu_down_read_trylock": "an inlined percpu rwsem trylock: its outcome "
                 "cannot be read at any probe-able address"}

# DWARF register number → kprobe fetch-arg register, per ELF machine
_KPROBE_REGS: dict[int, dict[int, str]] = {
    EM_AARCH64: {**{n: f"%x{n}" for n in range(31)}, 31: "%sp"},
    EM_X86_64: dict(enumerate(("%ax", "%dx", "%cx", "%bx", "%si", "%di", "%bp", "%sp",
                               "%r8", "%r9", "%r10", "%r11", "%r12", "%r13", "%r14", "%r15"))),
}
# how far past an instance's entry a probe may move to find a steppable instruction
_MAX_SHIFT_INSNS = 12


@dataclass(frozen=True)
class LockArg:
    """Where the lock's address is at the probe.

    ``kind``: ``"reg"`` (value of ``fetch`` + ``addend``), ``"mem"`` (the value
    stored at ``fetch``'s address, i.e. ``fetch`` is ``+off(%reg)`` or, for a
    static pointer, ``@module:symbol+off``; plus ``addend``), or
    ``"static"`` (``section`` + ``sec_offset`` of the module: ``symbol`` +
    ``sym_offset`` where a symbol covers it).
    """

    kind: str
    fetch: str = ""
    addend: int = 0
    section: str = ""
    sec_offset: int = 0
    symbol: str = ""
    sym_offset: int = 0

    def word_fetch(self, module: str) -> str:
        """A fetch-arg reading the lock word (u32 at the lock's address)."""
        if self.kind == "reg":
            return f"+{self.addend}({self.fetch})" if self.addend >= 0 else \
                f"{self.addend}({self.fetch})"
        if self.kind == "mem":
            return f"+{self.addend}({self.fetch})"
        if self.symbol:
            off = f"+{self.sym_offset}" if self.sym_offset else ""
            return f"@{module}:{self.symbol}{off}"
        return ""


@dataclass(frozen=True)
class InlineSite:
    module: str
    func: str  # LOCK_FUNCS key of the inlined body, e.g. _raw_spin_lock_irqsave
    api: str  # the outermost lock API function inlined there, e.g. spin_lock
    function: str  # the module function (symbol) that holds the code
    offset: int  # probe address − function
    section: str
    sec_offset: int
    lock: LockArg
    arg_level: str  # the inlined function whose parameter gave the lock
    shifted: int = 0  # bytes the probe moved past the instance's entry
    call_file: str = ""
    call_line: int = 0

    @property
    def target(self) -> str:
        return f"{self.module}:{self.function}+{self.offset:#x}"


@dataclass
class Discovered:
    sites: list[InlineSite] = field(default_factory=list)
    # instances that cannot be probed, with the reason (reported in the manifest)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    out_of_line: int = 0  # API instances whose body is a call (seen by the normal probes)


# -- arm64: what kprobes can single-step (arch/arm64/kernel/probes/decode-insn.c) --

_STEPPABLE_HINTS = {0x000, 0x0E0, 0x100, 0x140, 0x300, 0x320, 0x340, 0x360, 0x400, 0x440,
                    0x480, 0x4C0}


def arm64_probe_ok(insn: int) -> bool:
    """Can a kprobe sit on this A64 instruction?  Mirrors ``aarch64_insn_is_steppable()``
    (branches and literal loads are simulated, so they are fine)."""
    if (insn & 0x3F000000) == 0x08000000:  # load/store exclusive, acquire/release, CAS
        return False
    if (insn & 0xFFFFFFE0) == 0xD53B4220:  # mrs xN, daif
        return False
    if (insn & 0xFFF8F01F) == 0xD500401F:  # msr (immediate): daifset/daifclr, pan …
        return False
    if (insn & 0xFFF00000) == 0xD5100000:  # msr (register)
        return False
    if (insn & 0xFF000000) == 0xD4000000:  # exception generation: brk, svc, hvc …
        return False
    if insn in (0xD69F03E0, 0xD69F0BFF, 0xD69F0FFF):  # eret, eretaa, eretab
        return False
    if (insn & 0xFFFFF01F) == 0xD503201F:  # hint space
        return (insn & 0xFE0) in _STEPPABLE_HINTS
    return True


# -- DWARF ------------------------------------------------------------------------

_DEBUG = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line", ".debug_line_str",
          ".debug_addr", ".debug_str_offsets", ".debug_rnglists", ".debug_loclists",
          ".debug_loc", ".debug_ranges")


def _dwarf(elf: ElfFile, bases: dict[int, int]) -> DWARFInfo:
    secs: dict[str, DebugSectionDescriptor] = {}
    import io

    for name in _DEBUG:
        sec = elf.by_name.get(name)
        if sec is None:
            continue
        buf = bytes(relocated_data(elf, sec, bases))
        secs[name] = DebugSectionDescriptor(io.BytesIO(buf), name, sec.offset, len(buf), 0)
    if ".debug_info" not in secs:
        raise ElfFormatError(f"{elf.path}: no .debug_info")
    return DWARFInfo(
        config=DwarfConfig(little_endian=True, default_address_size=8,
                           machine_arch="AArch64" if elf.machine == EM_AARCH64 else "x64"),
        debug_info_sec=secs[".debug_info"], debug_aranges_sec=None,
        debug_abbrev_sec=secs.get(".debug_abbrev"), debug_frame_sec=None, eh_frame_sec=None,
        debug_str_sec=secs.get(".debug_str"), debug_loc_sec=secs.get(".debug_loc"),
        debug_ranges_sec=secs.get(".debug_ranges"), debug_line_sec=secs.get(".debug_line"),
        debug_pubtypes_sec=None, debug_pubnames_sec=None, debug_addr_sec=secs.get(".debug_addr"),
        debug_str_offsets_sec=secs.get(".debug_str_offsets"),
        debug_line_str_sec=secs.get(".debug_line_str"),
        debug_loclists_sec=secs.get(".debug_loclists"),
        debug_rnglists_sec=secs.get(".debug_rnglists"), debug_sup_sec=None,
        gnu_debugaltlink_sec=None, debug_types_sec=None,
    )


class _Module:
    """One relocatable .ko laid out as bfd lays it out, with its symbols."""

    def __init__(self, ko: Path, name: str) -> None:
        self.name = name
        self.elf = ElfFile(ko)
        self.bases = layout_sections(self.elf)
        self.dwarf = _dwarf(self.elf, self.bases)
        self.regs = _KPROBE_REGS.get(self.elf.machine, {})
        self.arm64 = self.elf.machine == EM_AARCH64
        self._spans = sorted((b, b + max(self.elf.sections[i].size, 1), i)
                             for i, b in self.bases.items())
        self.funcs: dict[int, list[tuple[int, int, str]]] = {}
        self.objects: dict[int, list[tuple[int, int, str]]] = {}
        tab = read_symtab(self.elf)
        if tab is not None:
            syms, strtab = tab
            for s in syms:
                typ = int(s["info"]) & 0xF
                idx = int(s["shndx"])
                if typ not in (STT_FUNC, STT_OBJECT) or idx not in self.bases:
                    continue
                end = strtab.index(b"\0", int(s["name"]))
                nm = strtab[int(s["name"]):end].decode()
                dest = self.funcs if typ == STT_FUNC else self.objects
                dest.setdefault(idx, []).append((int(s["value"]), int(s["size"]), nm))
        self.loc = LocationParser(self.dwarf.location_lists())
        self.expr = DWARFExprParser(self.dwarf.structs)
        self._names: dict[int, str | None] = {}
        self.jump_labels = self._sites_of("__jump_table", 16)
        # static_call sites (x86: might_sleep()'s might_resched() under PREEMPT_DYNAMIC)
        # are rewritten by the module loader, after a kprobe there may be armed: the
        # probe is lost without a word (0 hits), so the walk steps over them
        self.static_calls = self._sites_of(".static_call_sites", 8)
        self._preds: dict[int, set[int]] | None = None
        self._succs: dict[int, list[int]] = {}
        self._core: dict[int, bool] = {}
        self._starts = {self.bases[i] + v for i, fs in self.funcs.items() for v, _, _ in fs}

    def preds(self) -> dict[int, set[int]]:
        """Predecessors of every A64 instruction (layout addresses), from branches,
        fall-through and the branch relocations between sections."""
        if self._preds is not None:
            return self._preds
        from tracedep.kimage.elf_symbols import ELF64_RELA, ELF64_SYM, SHT_RELA

        preds: dict[int, set[int]] = {}
        for idx, base in self.bases.items():
            sec = self.elf.sections[idx]
            if not sec.exec:
                continue
            data = bytes(self.elf.data(sec))
            fixed: dict[int, int | None] = {}
            for rs in self.elf.sections:
                if rs.type != SHT_RELA or rs.info != idx:
                    continue
                rel = np.frombuffer(self.elf.data(rs), dtype=ELF64_RELA)
                syms = np.frombuffer(self.elf.data(self.elf.sections[rs.link]), dtype=ELF64_SYM)
                for r in rel:
                    typ = int(r["info"]) & 0xFFFFFFFF
                    if typ in (279, 280, 282, 283):  # TSTBR14, CONDBR19, JUMP26, CALL26
                        sym = syms[int(r["info"]) >> 32]
                        sb = self.bases.get(int(sym["shndx"]))
                        fixed[int(r["offset"])] = (None if sb is None or typ == 283 else
                                                   sb + int(sym["value"]) + int(r["addend"]))
            for o in range(0, len(data) - 3, 4):
                pc = base + o
                insn = int.from_bytes(data[o:o + 4], "little")
                falls, tgt = _a64_flow(insn, pc)
                if o in fixed:
                    tgt = fixed[o]
                nxt = []
                if falls:
                    preds.setdefault(pc + 4, set()).add(pc)
                    nxt.append(pc + 4)
                if tgt is not None:
                    preds.setdefault(tgt, set()).add(pc)
                    nxt.append(tgt)
                self._succs[pc] = nxt
                self._core[pc] = _a64_atomic(insn)
        self._preds = preds
        return preds

    def entries(self, ranges: list[tuple[int, int]]) -> list[int]:
        """Instructions of an inline instance reached from outside it: each is one
        execution of the instance (compilers duplicate small bodies on several paths)."""
        preds = self.preds()

        def inside(a: int) -> bool:
            return any(lo <= a < hi for lo, hi in ranges)

        def reaches_lock(a: int) -> bool:
            # hoisted address computations also belong to the instance: an entry
            # counts only if the lock's own atomic access follows inside it
            todo, seen = [a], {a}
            while todo:
                pc = todo.pop()
                if self._core.get(pc):
                    return True
                for n in self._succs.get(pc, ()):
                    if n not in seen and inside(n):
                        seen.add(n)
                        todo.append(n)
            return False

        out = []
        for lo, hi in ranges:
            for a in range(lo, hi, 4):
                p = preds.get(a, set())
                if (a in self._starts or any(not inside(x) for x in p)) and reaches_lock(a):
                    out.append(a)
        entries = set(out)

        def leads_to_another(a: int) -> bool:
            # a hoisted part of the instance (its constants, before a loop head) that
            # runs straight into another entry: probing both would count one
            # acquisition twice, and leave the lock "held" after its one release
            pc, seen = a, set()
            while pc not in seen and not self._core.get(pc):
                seen.add(pc)
                nxt = self._succs.get(pc, [])
                if len(nxt) != 1 or not inside(nxt[0]):
                    return False
                pc = nxt[0]
                if pc in entries:
                    return True
            return False

        return sorted(a for a in out if not leads_to_another(a))

    def _sites_of(self, table: str, entry: int) -> set[tuple[int, int]]:
        """(section, offset) of every code site a patch table lists: ``__jump_table``
        (static branches, 16-byte entries: s32 code, s32 target, s64 key; kprobes
        refuse them, ``jump_label_text_reserved``) or ``.static_call_sites`` (8-byte:
        s32 site, s32 key).  Each entry's first field is a relative reference to the site."""
        out: set[tuple[int, int]] = set()
        jt = self.elf.by_name.get(table)
        if jt is None:
            return out
        from tracedep.kimage.elf_symbols import ELF64_RELA, ELF64_SYM, SHT_RELA

        for rs in self.elf.sections:
            if rs.type != SHT_RELA or rs.info != jt.index:
                continue
            rel = np.frombuffer(self.elf.data(rs), dtype=ELF64_RELA)
            syms = np.frombuffer(self.elf.data(self.elf.sections[rs.link]), dtype=ELF64_SYM)
            for r in rel:
                if int(r["offset"]) % entry != 0:
                    continue
                k = int(r["info"]) >> 32
                if k >= len(syms):
                    continue
                sym = syms[k]
                out.add((int(sym["shndx"]), int(sym["value"]) + int(r["addend"])))
        return out

    def place(self, addr: int) -> tuple[int, int] | None:
        """Layout address → (section index, offset in it)."""
        for lo, hi, idx in self._spans:
            if lo <= addr < hi:
                return idx, addr - lo
        return None

    def symbol(self, table: dict[int, list[tuple[int, int, str]]], idx: int, off: int,
               ) -> tuple[str, int] | None:
        best = None
        for value, size, nm in table.get(idx, []):
            if value <= off < value + max(size, 1) and (best is None or value > best[1]):
                best = (nm, value)
        return (best[0], off - best[1]) if best else None

    def insn(self, idx: int, off: int) -> int | None:
        data = self.elf.data(self.elf.sections[idx])
        if off + 4 > len(data):
            return None
        return int(struct.unpack_from("<I", data, off)[0])

    def name_of(self, die: DIE) -> str | None:
        key = die.offset
        if key in self._names:
            return self._names[key]
        name = None
        d: DIE | None = die
        for _ in range(4):
            if d is None:
                break
            if "DW_AT_name" in d.attributes:
                v = d.attributes["DW_AT_name"].value
                name = v.decode() if isinstance(v, bytes) else str(v)
                break
            nxt = None
            for a in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if a in d.attributes:
                    nxt = d.get_DIE_from_attribute(a)
                    break
            d = nxt
        self._names[key] = name
        return name


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v & (1 << (bits - 1)) else v


def _a64_flow(insn: int, pc: int) -> tuple[bool, int | None]:
    """(falls through, branch target) of an A64 instruction; calls fall through."""
    if (insn & 0x7C000000) == 0x14000000:  # b / bl
        if insn & 0x80000000:
            return True, None
        return False, pc + 4 * _sext(insn & 0x3FFFFFF, 26)
    if (insn & 0xFF000010) == 0x54000000 or (insn & 0x7E000000) == 0x34000000:  # b.cond, cbz
        return True, pc + 4 * _sext((insn >> 5) & 0x7FFFF, 19)
    if (insn & 0x7E000000) == 0x36000000:  # tbz/tbnz
        return True, pc + 4 * _sext((insn >> 5) & 0x3FFF, 14)
    if (insn & 0xFE000000) == 0xD6000000:  # br, blr, ret, eret (+ pointer-auth forms)
        return ((insn >> 21) & 0xF) == 1, None  # only blr* comes back
    return True, None


def _a64_atomic(insn: int) -> bool:
    """Exclusive, acquire/release or LSE atomic access: what a lock or unlock is made of."""
    return (insn & 0x3F000000) == 0x08000000 or (insn & 0x3F200C00) == 0x38200000


def _entry(mod: _Module, die: DIE) -> int | None:
    at = die.attributes
    low = None
    if "DW_AT_low_pc" in at:
        low = at["DW_AT_low_pc"].value
        if at["DW_AT_low_pc"].form == "DW_FORM_addrx":
            low = mod.dwarf.get_addr(die.cu, low)
    if "DW_AT_entry_pc" in at:
        a = at["DW_AT_entry_pc"]
        if a.form == "DW_FORM_addr":
            return int(a.value)
        if a.form in ("DW_FORM_addrx", "DW_FORM_addrx1", "DW_FORM_addrx2", "DW_FORM_addrx4"):
            return int(mod.dwarf.get_addr(die.cu, a.value))
        base = low if low is not None else _first_range(mod, die)
        return None if base is None else int(base) + int(a.value)
    if low is not None:
        return int(low)
    return _first_range(mod, die)


def _first_range(mod: _Module, die: DIE) -> int | None:
    r = _ranges(mod, die)
    return min(lo for lo, _ in r) if r else None


def _ranges(mod: _Module, die: DIE) -> list[tuple[int, int]]:
    """The instance's address ranges (layout addresses), [lo, hi)."""
    at = die.attributes
    if "DW_AT_low_pc" in at and "DW_AT_high_pc" in at:
        lo = int(at["DW_AT_low_pc"].value)
        hi = at["DW_AT_high_pc"]
        return [(lo, int(hi.value) if hi.form == "DW_FORM_addr" else lo + int(hi.value))]
    if "DW_AT_ranges" not in at:
        return []
    rl = mod.dwarf.range_lists()
    if rl is None:
        return []
    a = at["DW_AT_ranges"]
    try:
        if a.form == "DW_FORM_rnglistx":
            return []  # not emitted by GCC for kernel modules
        entries = rl.get_range_list_at_offset(a.value, cu=die.cu)  # type: ignore[arg-type]
    except Exception:  # malformed lists: no address rather than a wrong one
        return []
    base = _cu_base(mod, die)
    out = []
    for e in entries:
        if isinstance(e, RangeBaseEntry):
            base = e.base_address
        elif getattr(e, "is_absolute", False):
            out.append((int(e.begin_offset), int(e.end_offset)))
        else:
            out.append((base + int(e.begin_offset), base + int(e.end_offset)))
    return out


def _cu_base(mod: _Module, die: DIE) -> int:
    top = die.cu.get_top_DIE()
    a = top.attributes.get("DW_AT_low_pc")
    return int(a.value) if a is not None else 0


def _location_at(mod: _Module, param: DIE, addr: int) -> list[Any] | None:
    """The location expression (parsed ops) of ``param`` valid at ``addr``."""
    attr = param.attributes.get("DW_AT_location")
    if attr is None:
        return None
    try:
        loc = mod.loc.parse_from_attribute(attr, param.cu.header.version, param)
    except Exception:
        return None
    if isinstance(loc, LocationExpr):
        return list(mod.expr.parse_expr(loc.loc_expr))
    base = _cu_base(mod, param)
    for e in loc:
        if isinstance(e, BaseAddressEntry):
            base = e.base_address
        elif isinstance(e, LocationEntry):
            lo, hi = (e.begin_offset, e.end_offset) if e.is_absolute else (
                base + e.begin_offset, base + e.end_offset)
            if lo <= addr < hi:
                return list(mod.expr.parse_expr(e.loc_expr))
    return None


def _lock_arg(mod: _Module, ops: list[Any]) -> LockArg | str:
    """A fetch for the lock address from a location expression, or why there is none."""
    names = [o.op_name for o in ops]
    if not ops:
        return "empty location"
    first = ops[0]
    rest = names[1:]
    if first.op_name.startswith("DW_OP_reg") and not rest:
        n = first.args[0] if first.op_name == "DW_OP_regx" else int(first.op_name[9:])
        reg = mod.regs.get(n)
        return LockArg("reg", reg) if reg else f"register {n}"
    if first.op_name.startswith("DW_OP_breg"):
        n = first.args[0] if first.op_name == "DW_OP_bregx" else int(first.op_name[10:])
        off = int(first.args[-1])
        reg = mod.regs.get(n)
        if not reg:
            return f"register {n}"
        if rest == ["DW_OP_stack_value"]:
            return LockArg("reg", reg, addend=off)
        if rest == ["DW_OP_plus_uconst", "DW_OP_stack_value"]:
            return LockArg("reg", reg, addend=off + int(ops[1].args[0]))
        mem = f"{'+' if off >= 0 else ''}{off}({reg})"
        if not rest:
            return LockArg("mem", mem)
        if rest == ["DW_OP_deref", "DW_OP_stack_value"]:
            return LockArg("mem", mem)
        if rest == ["DW_OP_deref", "DW_OP_plus_uconst", "DW_OP_stack_value"]:
            return LockArg("mem", mem, addend=int(ops[2].args[0]))
        return "expression " + " ".join(names)
    if first.op_name == "DW_OP_addr" and rest in (["DW_OP_stack_value"],
                                                  ["DW_OP_plus_uconst", "DW_OP_stack_value"]):
        addr = int(first.args[0]) + (int(ops[1].args[0]) if len(rest) == 2 else 0)
        placed = mod.place(addr)
        if placed is None:
            return "address outside the module"
        idx, off = placed
        sym = mod.symbol(mod.objects, idx, off)
        return LockArg("static", section=mod.elf.sections[idx].name, sec_offset=off,
                       symbol=sym[0] if sym else "", sym_offset=sym[1] if sym else 0)
    if first.op_name == "DW_OP_addr":
        return _static_pointer(mod, int(first.args[0]), ops[1:])
    return "expression " + " ".join(names)


def _static_pointer(mod: _Module, addr: int, ops: list[Any]) -> LockArg | str:
    """The lock is in an object a static pointer of the module points to.

    ``DW_OP_addr X; DW_OP_deref; [DW_OP_plus_uconst N;] DW_OP_stack_value``: the
    lock is ``*(X) + N`` (``spin_lock(&dev->lock)`` with ``static struct foo *dev``);
    ``DW_OP_addr X; [DW_OP_plus_uconst N]`` (no stack value): the ``lock``
    argument itself is stored at ``X + N``, so the lock is ``*(X + N)``.  A kprobe
    reads memory at a symbol (``@module:symbol+off``, resolved when the module
    loads; Documentation/trace/kprobetrace.rst, 6.1 and 6.12): that is the pointer,
    and the decoder adds N (kind ``mem``, as for ``+off(%reg)``).
    """
    names = [o.op_name for o in ops]
    if names in (["DW_OP_deref", "DW_OP_stack_value"],
                 ["DW_OP_deref", "DW_OP_plus_uconst", "DW_OP_stack_value"]):
        at, addend = addr, int(ops[1].args[0]) if len(ops) == 3 else 0
    elif names in ([], ["DW_OP_plus_uconst"]):
        at, addend = addr + (int(ops[0].args[0]) if ops else 0), 0
    else:
        return "expression DW_OP_addr " + " ".join(names)
    placed = mod.place(at)
    if placed is None:
        return "static pointer outside the module"
    idx, off = placed
    sym = mod.symbol(mod.objects, idx, off)
    if sym is None:  # a fetch can name a symbol, not a section
        return "static pointer that no symbol covers"
    where = f"@{mod.name}:{sym[0]}" + (f"+{sym[1]}" if sym[1] else "")
    return LockArg("mem", where, addend=addend, section=mod.elf.sections[idx].name,
                   sec_offset=off, symbol=sym[0], sym_offset=sym[1])


def _lock_param(mod: _Module, inst: DIE) -> DIE | None:
    params = [c for c in inst.iter_children() if c.tag == "DW_TAG_formal_parameter"]
    for p in params:
        if mod.name_of(p) == "lock":
            return p
    return params[0] if params else None


def _is_body(nm: str | None, spin_bodies: bool) -> bool:
    return bool(nm) and (bool(spin_bodies and _BODY.match(nm or "")) or
                         bool(_ALWAYS_INLINE.match(nm or "")))


def _walk(die: DIE, chain: list[DIE], out: list[list[DIE]], mod: _Module,
          spin_bodies: bool = True) -> None:
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            nm = mod.name_of(child)
            path = [*chain, child]
            if _is_body(nm, spin_bodies):
                out.append(path)
                continue  # nothing below a lock body is a lock of the driver's
            _walk(child, path, out, mod, spin_bodies)
        elif child.has_children:
            _walk(child, chain, out, mod, spin_bodies)


def discover_module(ko: Path, module: str, spin_bodies: bool = True) -> Discovered:
    """Every inlined lock/unlock of ``ko`` (module ``module``) that can be probed.

    ``spin_bodies``: the kernel inlines its spinlock bodies (``CONFIG_INLINE_SPIN_*``)
    and they are looked for; APIs that are inline everywhere always are."""
    mod = _Module(ko, module)
    res = Discovered()
    seen: set[tuple[str, int, str, LockArg]] = set()
    for cu in mod.dwarf.iter_CUs():
        bodies: list[list[DIE]] = []
        _walk(cu.get_top_DIE(), [], bodies, mod, spin_bodies)
        # API instances with no inlined body below them call the out-of-line lock
        if spin_bodies:
            res.out_of_line += _count_out_of_line(cu.get_top_DIE(), mod)
        for path in bodies:
            body = path[-1]
            bname = mod.name_of(body) or ""
            m = _BODY.match(bname)
            func = f"_raw_{m.group(1)}" if m is not None else bname
            # the outermost contiguous run of lock API levels ending at the body
            k = len(path) - 1
            while k > 0 and _API.match(mod.name_of(path[k - 1]) or ""):
                k -= 1
            levels = path[k:]
            outer = levels[0]
            api = mod.name_of(outer) or bname
            where = {"module": module, "func": func, "api": api,
                     "call": _call_site(mod, outer)}
            if func in _UNOBSERVABLE:
                res.skipped.append({**where, "reason": _UNOBSERVABLE[func]})
                continue
            if func not in LOCK_FUNCS:
                res.skipped.append({**where, "reason": "no lock function of that name"})
                continue
            entry = _entry(mod, outer)
            if entry is None:
                res.skipped.append({**where, "reason": "no address (optimized out)"})
                continue
            starts = [entry]
            if mod.arm64:
                starts = mod.entries(_ranges(mod, outer) or [(entry, entry + 4)]) or [entry]
            for start in starts:
                site = _site_at(mod, module, func, api, levels, start)
                if isinstance(site, str):
                    res.skipped.append({**where, "at": start, "reason": site})
                    continue
                # two sites may share a probe address (moved past the same store)
                key = (site.section, site.sec_offset, site.func, site.lock)
                if key in seen:
                    continue
                seen.add(key)
                res.sites.append(site)
    # kprobes sharing an address run newest first: at one address, define the site
    # whose code comes later first, so that events keep the program's order
    res.sites.sort(key=lambda s: (s.section, s.sec_offset, s.shifted))
    return res


def _count_out_of_line(die: DIE, mod: _Module) -> int:
    n = 0
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            nm = mod.name_of(child) or ""
            if _API.match(nm) and not _BODY.match(nm):
                inner: list[list[DIE]] = []
                _walk(child, [], inner, mod)
                if not inner:
                    n += 1
                    continue
        if child.has_children:
            n += _count_out_of_line(child, mod)
    return n


def _call_site(mod: _Module, inst: DIE) -> str:
    line = inst.attributes.get("DW_AT_call_line")
    return f"line {line.value}" if line is not None else ""


def _a64_writes(insn: int) -> set[int]:
    """General registers an instruction may write (a superset: destination, second
    destination, base register of a load/store)."""
    rd, rn, rt2 = insn & 31, (insn >> 5) & 31, (insn >> 10) & 31
    if (insn & 0x3F000000) == 0x08000000:  # exclusive / ordered / CAS
        if (insn & 0x3FFF7C00) == 0x089F7C00:  # stlr/stllr: none
            return set()
        return {rd, (insn >> 16) & 31, rt2}
    if (insn & 0x1C000000) == 0x14000000:  # branches, exceptions, system
        if (insn & 0xFC000000) == 0x94000000 or (insn & 0xFFFFFC1F) == 0xD63F0000:
            return {30}  # bl, blr
        if (insn & 0xFFF00000) == 0xD5300000:  # mrs
            return {rd}
        return set()
    if (insn & 0x0A000000) == 0x08000000:  # loads and stores
        return {rd, rn, rt2}
    return {rd}  # data processing: Rd


def _a64_in_atomic_context(mod: _Module, idx: int, off: int) -> bool:
    """The kernel refuses a kprobe that may sit inside an LL/SC sequence: scanning
    back at most 30 instructions (not past the function's start), a load-exclusive
    class instruction met before a store-exclusive one rejects it
    (``is_probed_address_atomic()`` in arch/arm64/kernel/probes/decode-insn.c;
    CAS and load-acquire count as load-exclusive there)."""
    fn = mod.symbol(mod.funcs, idx, off)
    start = off - fn[1] if fn else max(off - 120, 0)
    o = off - 4
    while o >= max(start, off - 30 * 4):
        insn = mod.insn(idx, o)
        if insn is None:
            return False
        if (insn & 0x3F400000) == 0x08000000:
            return False
        if (insn & 0x3F400000) == 0x08400000:
            return True
        o -= 4
    return False


def _reg_num(mod: _Module, fetch: str) -> int | None:
    """The DWARF register number a fetch-arg reads (``%x19``, ``+8(%di)``), if any."""
    m = re.search(r"%\w+", fetch)
    if m is None:
        return None
    for n, name in mod.regs.items():
        if name == m.group(0):
            return n
    return None


# DWARF numbers of x86_64's caller-saved registers: rax rdx rcx rsi rdi r8-r11
_X86_CALLER_SAVED = frozenset({0, 1, 2, 4, 5, 8, 9, 10, 11})


def _site_at(mod: _Module, module: str, func: str, api: str, levels: list[DIE],
             entry: int) -> InlineSite | str:
    """The probe for one execution path of an instance entered at ``entry``."""
    placed = mod.place(entry)
    if placed is None:
        return "entry outside every section"
    idx, off = placed
    params = [(lvl, p) for lvl in levels if (p := _lock_param(mod, lvl)) is not None]
    # where the lock is at the entry, per level (outermost first)
    at_entry: list[tuple[DIE, LockArg]] = []
    reason = "no location for the lock argument"
    for lvl, p in params:
        ops = _location_at(mod, p, entry)
        if ops is None:
            continue
        arg = _lock_arg(mod, ops)
        if isinstance(arg, str):
            reason = f"lock argument: {arg}"
            continue
        at_entry.append((lvl, arg))
    core = False
    if not at_entry and mod.arm64:
        # no DWARF location for the lock (GCC omits it, e.g. for &static_ptr->lock or
        # a lock whose address lives in a callee-saved register): the lock's own
        # atomic access addresses the lock word, at offset 0 of every lock type
        # (qspinlock.val/locked, qrwlock.cnts/wlocked; little-endian)
        rn = _core_base(mod, idx, off, entry)
        if rn is not None and rn in mod.regs:
            at_entry = [(levels[-1], LockArg("reg", mod.regs[rn]))]
            core = True
    walk = _Walk(mod, module, func, api, levels, entry, idx, params, at_entry,
                 _MAX_SHIFT_INSNS if mod.arm64 else 3, core)
    return walk.run(entry, off, set(), reason)


def _core_base(mod: _Module, idx: int, off: int, at: int, budget: int = 16) -> int | None:
    """The base register of the first atomic access on the straight path from ``at``,
    if nothing on the way there writes it (a call clobbers x0-x18): the lock's
    address, already in that register at ``at``."""
    written: set[int] = set()
    for _ in range(budget):
        insn = mod.insn(idx, off)
        if insn is None:
            return None
        if _a64_atomic(insn):
            rn = (insn >> 5) & 31
            return None if rn in written or rn == 31 else rn
        if (insn & 0xFFC00000) != 0xF9800000:  # prfm (the LL/SC loop's) writes nothing
            written |= _a64_writes(insn)
        if (insn & 0xFC000000) == 0x94000000 or (insn & 0xFFFFFC1F) == 0xD63F0000:
            written |= set(range(19))  # bl / blr: the callee may clobber them
        falls, tgt = _a64_flow(insn, at)
        if falls and tgt is None:
            at, off = at + 4, off + 4
        elif not falls and tgt is not None and (mod.place(tgt) or (None,))[0] == idx:
            off += tgt - at
            at = tgt
        else:
            return None  # a conditional branch or a return: not one path any more
    return None


@dataclass
class _Walk:
    """Forward from an instance's entry to the first instruction a kprobe can sit on."""

    mod: _Module
    module: str
    func: str
    api: str
    levels: list[DIE]
    entry: int
    idx: int
    params: list[tuple[DIE, DIE]]
    at_entry: list[tuple[DIE, LockArg]]
    budget: int
    core_reg: bool = False  # the lock is its atomic instruction's base register (_core_base)

    def run(self, at: int, o: int, written: set[int], reason: str) -> InlineSite | str:
        mod, idx = self.mod, self.idx
        while self.budget > 0:
            self.budget -= 1
            insn = mod.insn(idx, o) if mod.arm64 else None
            if mod.arm64:
                if insn is None:
                    return "entry past the end of its section"
                if (not arm64_probe_ok(insn) or (idx, o) in mod.jump_labels
                        or _a64_in_atomic_context(mod, idx, o)):
                    reason = "no probe-able instruction on the instance's path"
                    written |= _a64_writes(insn)
                    # follow the path the CPU takes: through unconditional branches (the
                    # LSE/LL-SC alternative), never past a conditional one (kprobes
                    # simulate those, so one that cannot be probed is inside an LL/SC
                    # sequence)
                    falls, tgt = _a64_flow(insn, at)
                    tplace = mod.place(tgt) if tgt is not None else None
                    if falls and tgt is None:
                        at, o = at + 4, o + 4
                    elif not falls and tgt is not None and tplace is not None \
                            and tplace[0] == idx:
                        o += tgt - at
                        at = tgt
                    else:
                        return reason
                    continue
            if not mod.arm64 and (idx, o) in mod.jump_labels:
                return "a static branch site (jump label) at the instance's entry"
            if not mod.arm64 and (idx, o) in mod.static_calls:
                # a 5-byte call (or the NOP it may become): the next instruction follows
                # it on every path; the call clobbers the caller-saved registers
                reason = "a static call site at the instance's entry"
                written |= _X86_CALLER_SAVED
                at, o = at + 5, o + 5
                continue
            choice: tuple[DIE, LockArg] | None = None
            for lvl, p in self.params:  # outermost first; inner frames when optimized out
                ops = _location_at(mod, p, at) if at != self.entry else None
                if ops is not None:
                    arg = _lock_arg(mod, ops)
                    if not isinstance(arg, str):
                        choice = (lvl, arg)
                        break
            if choice is None:
                for lvl, arg in self.at_entry:  # still valid past instructions that keep it
                    if arg.kind == "static" or _reg_num(mod, arg.fetch) not in written:
                        choice = (lvl, arg)
                        break
            if choice is None:
                return reason
            sym = mod.symbol(mod.funcs, idx, o)
            if sym is None:
                return "no function symbol covers the site"
            line = self.levels[0].attributes.get("DW_AT_call_line")
            level = "atomic instruction" if self.core_reg else mod.name_of(choice[0]) or ""
            return InlineSite(self.module, self.func, self.api, sym[0], sym[1],
                              mod.elf.sections[idx].name, o, choice[1], level, at - self.entry,
                              call_line=int(line.value) if line is not None else 0)
        return reason


# -- cache and probe definitions ----------------------------------------------------


def discover_cached(ko: Path, module: str, cache: Path | None,
                    spin_bodies: bool = True) -> Discovered:
    """:func:`discover_module`, remembered per .ko content and mode."""
    key = hashlib.sha256(ko.read_bytes()).hexdigest()[:16]
    mode = "" if spin_bodies else "-always"
    path = cache / f"{module}-{key}{mode}-v{CACHE_FORMAT}.json" if cache else None
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            return Discovered([InlineSite(**{**s, "lock": LockArg(**s["lock"])})
                               for s in d["sites"]], d["skipped"], d["out_of_line"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s: %s", path, e)
    res = discover_module(ko, module, spin_bodies)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sites": [asdict(s) for s in res.sites],
                                   "skipped": res.skipped, "out_of_line": res.out_of_line}))
        tmp.replace(path)
    return res


@dataclass(frozen=True)
class InlineProbe:
    event: str
    site: InlineSite
    definition: str


def event_name(role: str, func: str, n: int) -> str:
    return f"{role}_{func}{INLINE_SUFFIX}{n}"


def inline_probes(sites: list[InlineSite], irq_state: str = "") -> list[InlineProbe]:
    """kprobe definitions for ``sites``; ``irq_state``: the machine's fetch of the
    interrupted context's IRQ mask (``pst=%pstate:x64`` on arm64), appended to each."""
    out: list[InlineProbe] = []
    for n, s in enumerate(sites):
        lf = LOCK_FUNCS[s.func]
        role = "ul" if lf.release else "lk"
        ev = event_name(role, s.func, n)
        args = []
        if s.lock.kind in ("reg", "mem"):
            args.append(f"lock={s.lock.fetch}:x64")
        if lf.success:
            word = s.lock.word_fetch(s.module)
            if not word:
                continue  # a trylock whose outcome cannot be told: better no event
            args.append(f"val={word}:u32")
        if irq_state:
            args.append(irq_state)
        out.append(InlineProbe(ev, s, f"p:{GROUP}/{ev} {s.target} {' '.join(args)}".rstrip()))
    return out


def site_table(probes: list[InlineProbe]) -> dict[str, dict[str, Any]]:
    """What the decoder needs per inline event (kept in the run's manifest)."""
    return {p.event: {"module": p.site.module, "func": p.site.func, "api": p.site.api,
                      "target": p.site.target, "lock": asdict(p.site.lock)}
            for p in probes}


# -- decoding: what the records cannot carry themselves ------------------------------


def trylock_taken(func: str, word: np.ndarray) -> np.ndarray:
    """Did an inlined trylock succeed, given the lock word just before it?"""
    if func.startswith("_raw_read"):
        return (word & 0x1FF) == 0  # queued rwlock: no writer (_QW_WMASK)
    return word == 0  # qspinlock / queued write lock: free


def static_lock_addresses(table: dict[str, dict[str, Any]], info: dict[str, Any],
                          ev_names: np.ndarray, ts: np.ndarray, load_ts: dict[str, list[int]],
                          kernel_loads: list[KernelLoad] | None = None) -> dict[int, int]:
    """Row index → runtime lock address for rows of inline events with static locks.

    The module load a row belongs to is the last one loaded before it (the
    module_load events' times, ``load_ts``); loads reported before tracing
    started have no event and come first.  A traced load's sections are the
    kernel's account (``kernel_loads``, tracer.module_sections) where there is
    one: a module whose init failed has no report of the guest's.
    """
    told: dict[str, list[KernelLoad]] = {}
    for kl in kernel_loads or []:
        told.setdefault(kl.name, []).append(kl)
    loads: dict[str, list[dict[str, int]]] = {}
    for m in list(info.get("modules", [])):
        starts = load_ts.get(m["name"], [])
        spans = list(zip(starts, [*starts[1:], 1 << 62], strict=True))
        loads[m["name"]] = [ld.get("sections") or {} for _, _, ld in load_sections(
            m.get("loads") or [], spans, told.get(m["name"], []))]
    out: dict[int, int] = {}
    for ev, row in table.items():
        lk = row.get("lock") or {}
        if lk.get("kind") != "static":
            continue
        rows = np.nonzero(ev_names == f"{GROUP}/{ev}")[0]
        secs = loads.get(row["module"], [])
        if not len(rows) or not secs:
            continue
        times = np.asarray(load_ts.get(row["module"], []), dtype=np.int64)
        first = len(secs) - len(times)
        k = np.searchsorted(times, ts[rows], side="right") - 1 + first
        k = np.clip(k, 0, len(secs) - 1)
        for r, kk in zip(rows.tolist(), k.tolist(), strict=True):
            base = secs[kk].get(lk["section"])
            if base is not None:
                out[r] = int(base) + int(lk["sec_offset"])
    return out
