"""A driver's .ko as the probe planning reads it: laid out as bfd lays it out, with
its symbols, its DWARF (relocated to that layout), the code sites the kernel patches
at load time, and on arm64 the control flow between its instructions."""

from __future__ import annotations

import io
import struct
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
    ELF64_RELA,
    ELF64_SYM,
    SHT_RELA,
    STT_FUNC,
    STT_OBJECT,
    ElfFile,
    ElfFormatError,
    read_symtab,
)
from tracedep.kimage.ko_layout import EM_AARCH64, layout_sections, relocated_data
from tracedep.tracer.insn_decode import KPROBE_REGS, a64_atomic, a64_flow

_DEBUG = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line", ".debug_line_str",
          ".debug_addr", ".debug_str_offsets", ".debug_rnglists", ".debug_loclists",
          ".debug_loc", ".debug_ranges")


def _dwarf(elf: ElfFile, bases: dict[int, int]) -> DWARFInfo:
    secs: dict[str, DebugSectionDescriptor] = {}
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


class KoImage:
    """One relocatable .ko laid out as bfd lays it out, with its symbols."""

    def __init__(self, ko: Path, name: str) -> None:
        self.name = name
        self.elf = ElfFile(ko)
        self.bases = layout_sections(self.elf)
        self.dwarf = _dwarf(self.elf, self.bases)
        self.regs = KPROBE_REGS.get(self.elf.machine, {})
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
                falls, tgt = a64_flow(insn, pc)
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
                self._core[pc] = a64_atomic(insn)
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


# -- where a DIE is ------------------------------------------------------------------


def entry_address(mod: KoImage, die: DIE) -> int | None:
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


def _first_range(mod: KoImage, die: DIE) -> int | None:
    r = die_ranges(mod, die)
    return min(lo for lo, _ in r) if r else None


def die_ranges(mod: KoImage, die: DIE) -> list[tuple[int, int]]:
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


def _cu_base(mod: KoImage, die: DIE) -> int:
    top = die.cu.get_top_DIE()
    a = top.attributes.get("DW_AT_low_pc")
    return int(a.value) if a is not None else 0


def location_at(mod: KoImage, param: DIE, addr: int) -> list[Any] | None:
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
