"""file:line and inline chains from DWARF, looked up lazily one compile unit at a time.

Whole-kernel DWARF in pyelftools takes minutes (FACTS.md), so nothing here walks
every compile unit: ``.debug_aranges`` maps an address to its CU, and only that
CU's line program and the DIEs whose ranges contain the address are decoded.

The answers follow binutils' ``addr2line -f -i`` (bfd's dwarf2.c): for duplicate
line rows the last one wins, the innermost function is the smallest range that
contains the address, and file names are joined as its ``concat_filename()``
joins them.  Each file is also given in a shorter form relative to the source
tree, as ``scripts/decode_stacktrace.sh`` prints it.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
import struct
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np
from elftools.construct.lib.container import Container
from elftools.dwarf.abbrevtable import AbbrevDecl, AbbrevTable
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo
from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG
from elftools.dwarf.ranges import BaseAddressEntry

from tracedep.errors import DwarfError

from .elf_symbols import ELF64_RELA, ELF64_SYM, SHN_LORESERVE, SHT_RELA, ElfFile, Section

log = logging.getLogger(__name__)

EM_X86_64 = 62
EM_AARCH64 = 183
# Relocation types that occur in debug sections: absolute 64- and 32-bit values.
_ABS64 = {EM_X86_64: (1,), EM_AARCH64: (257,)}
_ABS32 = {EM_X86_64: (10, 11), EM_AARCH64: (258,)}

_DEBUG_SECTIONS = (
    ".debug_info",
    ".debug_abbrev",
    ".debug_str",
    ".debug_line",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_addr",
    ".debug_str_offsets",
)
_HEADERS_TREE = re.compile(r".*/(?:linux-headers|linux-kbuild|linux)-[^/]+/(.+)$")


@dataclass(frozen=True)
class SourceFrame:
    """One level of an inline chain: the function and where in it the address is."""

    function: str | None
    file: str | None  # as addr2line prints it
    source_file: str | None  # relative to the source tree where that is known
    line: int | None
    discriminator: int = 0


# -- streams ---------------------------------------------------------------------


class _SliceRaw(io.RawIOBase):
    """A seekable read-only window onto a buffer: sections are read in place
    from the mmap instead of being copied (.debug_info of vmlinux is 164 MB)."""

    def __init__(self, buf: memoryview | bytearray) -> None:
        super().__init__()
        self._buf = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += len(self._buf)
        self._pos = max(pos, 0)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._buf) - self._pos))
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n


def _stream(buf: memoryview | bytearray) -> io.BufferedReader:
    return io.BufferedReader(_SliceRaw(buf), buffer_size=16384)


# -- relocations of a .ko ---------------------------------------------------------


def layout_sections(elf: ElfFile) -> dict[int, int]:
    """Give each allocated section of a relocatable file its own address range,
    as bfd's place_sections() does before reading DWARF; 0 is kept free."""
    bases: dict[int, int] = {}
    cur = 0x10000
    for s in elf.sections:
        if not s.alloc:
            continue
        align = max(s.addralign, 1)
        cur = (cur + align - 1) // align * align
        bases[s.index] = cur
        cur += max(s.size, 1)
    return bases


def relocated_data(elf: ElfFile, sec: Section, bases: dict[int, int]) -> bytearray:
    """Contents of ``sec`` with its RELA relocations applied, sections placed at ``bases``."""
    data = bytearray(elf.data(sec))
    abs64 = _ABS64.get(elf.machine)
    abs32 = _ABS32.get(elf.machine)
    if abs64 is None or abs32 is None:
        raise DwarfError(f"relocations for ELF machine {elf.machine} are not supported")
    for rs in elf.sections:
        if rs.type != SHT_RELA or rs.info != sec.index:
            continue
        rel = np.frombuffer(elf.data(rs), dtype=ELF64_RELA)
        syms = np.frombuffer(elf.data(elf.sections[rs.link]), dtype=ELF64_SYM)
        nsec = len(elf.sections)
        base = np.zeros(nsec + 1, dtype=np.uint64)
        for idx, addr in bases.items():
            base[idx] = addr
        sym_idx = (rel["info"] >> np.uint64(32)).astype(np.int64)
        rtype = (rel["info"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        shndx = syms["shndx"][sym_idx].astype(np.int64)
        shndx = np.where((shndx > 0) & (shndx < min(nsec, SHN_LORESERVE)), shndx, nsec)
        value = syms["value"][sym_idx] + base[shndx] + rel["addend"].astype(np.uint64)
        view = np.frombuffer(data, dtype=np.uint8)
        offsets = rel["offset"].astype(np.int64)
        known = np.zeros(len(rel), dtype=bool)
        for width, types in ((8, abs64), (4, abs32)):
            sel = np.isin(rtype, types)
            known |= sel
            if not sel.any():
                continue
            dt = "<u8" if width == 8 else "<u4"
            vals = value[sel] if width == 8 else value[sel] & np.uint64(0xFFFFFFFF)
            raw = vals.astype(dt).view(np.uint8).reshape(-1, width)
            view[offsets[sel][:, None] + np.arange(width)] = raw
        if not known.all():
            bad = sorted(set(rtype[~known].tolist()))
            log.warning("%s: %s: relocation types %s not applied", elf.path, rs.name, bad)
    return data


# -- .debug_aranges ---------------------------------------------------------------


def parse_aranges(data: memoryview | bytes | bytearray) -> list[tuple[int, int, int]]:
    """(start, end, CU offset) for every address range of .debug_aranges, sorted."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    size = len(data)
    while pos + 4 <= size:
        (unit_len,) = struct.unpack_from("<I", data, pos)
        hdr = 4
        if unit_len == 0xFFFFFFFF:
            (unit_len,) = struct.unpack_from("<Q", data, pos + 4)
            hdr = 12
        end = pos + hdr + unit_len
        off_fmt, off_size = ("<Q", 8) if hdr == 12 else ("<I", 4)
        p = pos + hdr + 2  # version
        (cu_off,) = struct.unpack_from(off_fmt, data, p)
        p += off_size
        addr_size, seg_size = data[p], data[p + 1]
        p += 2
        tup = 2 * addr_size
        p = pos + (((p - pos) + tup - 1) // tup) * tup
        fmt = "<QQ" if addr_size == 8 else "<II"
        if seg_size == 0:
            while p + tup <= end:
                a, n = struct.unpack_from(fmt, data, p)
                p += tup
                if a == 0 and n == 0:
                    break
                if n:
                    out.append((a, a + n, cu_off))
        pos = end
    out.sort()
    return out


class _IntervalIndex:
    """Intervals sorted by start; finds every one that contains a point, overlaps included."""

    def __init__(self, items: list[tuple[int, int, int]]) -> None:
        items = sorted(items)
        self.starts = [a for a, _, _ in items]
        self.items = items
        self.max_end: list[int] = []
        m = 0
        for _, e, _ in items:
            m = max(m, e)
            self.max_end.append(m)

    def containing(self, addr: int) -> list[tuple[int, int, int]]:
        i = bisect_right(self.starts, addr) - 1
        out = []
        while i >= 0 and self.max_end[i] > addr:
            s, e, v = self.items[i]
            if s <= addr < e:
                out.append((s, e, v))
            i -= 1
        return out


# -- line programs --------------------------------------------------------------------


Row = tuple[int, int, int]  # file number, line, discriminator


@dataclass
class LineSequence:
    """One DW_LNE_end_sequence-terminated run: row i covers [addrs[i], addrs[i+1] or end)."""

    addrs: list[int]
    rows: list[Row]
    end: int


def decode_line_rows(
    data: memoryview | bytes | bytearray, start: int, end: int, hdr: Any
) -> list[LineSequence]:
    """The sequences of one line program, one row per address (the last, as bfd keeps it).

    pyelftools' decoder copies a state object per row (0.7 s for kernel/sched/
    core.c); this is the same state machine (DWARF 5 section 6.2.5) on raw bytes.
    The header, with its file table, still comes from pyelftools.
    """
    min_inst = hdr["minimum_instruction_length"]
    line_base = hdr["line_base"]
    line_range = hdr["line_range"]
    opcode_base = hdr["opcode_base"]
    std_lengths = list(hdr["standard_opcode_lengths"])
    const_add = min_inst * ((255 - opcode_base) // line_range)
    buf = bytes(data[start:end])
    n = len(buf)
    seqs: list[LineSequence] = []
    addrs: list[int] = []
    rows: list[Row] = []
    # DWARF 5 keeps "file 1" as the initial file (table 6.4); binutils 2.40
    # uses file 0 there, which is a bug we do not copy.
    address, file, line, disc = 0, 1, 1, 0
    last = -1
    pos = 0

    def uleb(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7

    # Special opcodes are most of a line program: their effects, precomputed.
    addr_step = [0] * 256
    line_step = [0] * 256
    for op in range(opcode_base, 256):
        adj = op - opcode_base
        addr_step[op] = min_inst * (adj // line_range)
        line_step[op] = line_base + adj % line_range

    while pos < n:
        op = buf[pos]
        pos += 1
        if op >= opcode_base:
            address += addr_step[op]
            line += line_step[op]
            if address == last:
                rows[-1] = (file, line, disc)
            else:
                addrs.append(address)
                rows.append((file, line, disc))
                last = address
            disc = 0
        elif op == 5:  # DW_LNS_set_column: GCC sets it before almost every row
            if buf[pos] < 0x80:
                pos += 1
            else:
                _, pos = uleb(pos)
        elif op == 3:  # DW_LNS_advance_line (signed LEB128)
            b = buf[pos]
            if b < 0x80:
                line += b - 0x80 if b & 0x40 else b
                pos += 1
            else:
                v, pos = _sleb(buf, pos)
                line += v
        elif op == 0:
            length, pos = uleb(pos)
            if length == 0:
                continue
            sub = buf[pos]
            nxt = pos + length
            if sub == 1:  # DW_LNE_end_sequence
                if addrs and addrs[-1] == address:
                    # Covers no bytes; left in, it would shadow the first row
                    # of whatever section is placed right after this one.
                    addrs.pop()
                    rows.pop()
                if addrs:
                    seqs.append(LineSequence(addrs, rows, address))
                addrs, rows = [], []
                address, file, line, disc = 0, 1, 1, 0
                last = -1
            elif sub == 2:  # DW_LNE_set_address
                address = int.from_bytes(buf[pos + 1 : nxt], "little")
            elif sub == 4:  # DW_LNE_set_discriminator
                disc, _ = uleb(pos + 1)
            pos = nxt
        elif op == 1:  # DW_LNS_copy
            if address == last:
                rows[-1] = (file, line, disc)
            else:
                addrs.append(address)
                rows.append((file, line, disc))
                last = address
            disc = 0
        elif op == 2:  # DW_LNS_advance_pc
            v, pos = uleb(pos)
            address += min_inst * v
        elif op == 4:  # DW_LNS_set_file
            file, pos = uleb(pos)
        elif op == 8:  # DW_LNS_const_add_pc
            address += const_add
        elif op == 9:  # DW_LNS_fixed_advance_pc
            address += buf[pos] | (buf[pos + 1] << 8)
            pos += 2
        elif op - 1 < len(std_lengths):
            # negate_stmt, basic_block, prologue_end, set_isa, …: nothing a
            # lookup needs; skip their LEB128 operands.
            for _ in range(std_lengths[op - 1]):
                _, pos = uleb(pos)
    return seqs


def merge_sequences(seqs: list[LineSequence]) -> tuple[list[int], list[Row | None]]:
    """One sorted (address → row or None for "no line") table for bisection."""
    for seq in seqs:
        if any(b < a for a, b in zip(seq.addrs, seq.addrs[1:], strict=False)):
            # Out-of-order rows (never seen from GCC): sort, last row wins.
            pairs = dict(sorted(zip(seq.addrs, range(len(seq.rows)), strict=True)))
            seq.addrs = list(pairs)
            seq.rows = [seq.rows[i] for i in pairs.values()]
    seqs = sorted(seqs, key=lambda q: q.addrs[0])
    keys: list[int] = []
    rows: list[Row | None] = []
    for seq in seqs:
        if keys and seq.addrs[0] < keys[-1]:
            return _merge_overlapping(seqs)
        if keys and keys[-1] == seq.addrs[0]:
            keys.pop()  # the previous end marker gives way to a real row
            rows.pop()
        keys.extend(seq.addrs)
        rows.extend(seq.rows)
        keys.append(seq.end)
        rows.append(None)
    return keys, rows


_NO_ROW = 0xFFFFFFFF


class LineTable:
    """A CU's merged line rows in flat arrays: ~20 bytes a row instead of ~130 as
    Python objects (a few hundred CUs hold millions of rows)."""

    __slots__ = ("keys", "files", "lines", "discs")

    def __init__(self, keys: list[int], rows: list[Row | None]) -> None:
        self.keys = array("Q", keys)
        self.files = array("I", (_NO_ROW if r is None else r[0] for r in rows))
        self.lines = array("I", (0 if r is None else r[1] for r in rows))
        self.discs = array("I", (0 if r is None else r[2] for r in rows))

    def lookup(self, addr: int) -> Row | None:
        i = bisect_right(self.keys, addr) - 1
        if i < 0 or self.files[i] == _NO_ROW:
            return None
        return self.files[i], self.lines[i], self.discs[i]


def _merge_overlapping(seqs: list[LineSequence]) -> tuple[list[int], list[Row | None]]:
    items: list[tuple[int, int, Row | None]] = []
    for seq in seqs:
        items.extend((a, 1, r) for a, r in zip(seq.addrs, seq.rows, strict=True))
        items.append((seq.end, 0, None))
    items.sort(key=lambda t: (t[0], t[1]))
    keys: list[int] = []
    rows: list[Row | None] = []
    for addr, _, row in items:
        if keys and keys[-1] == addr:
            if row is not None:
                rows[-1] = row
            continue
        keys.append(addr)
        rows.append(row)
    return keys, rows


# -- a fast walk over a CU's top-level DIEs ----------------------------------------------

_FIXED = {
    "DW_FORM_addr": -1,
    "DW_FORM_data1": 1,
    "DW_FORM_ref1": 1,
    "DW_FORM_flag": 1,
    "DW_FORM_strx1": 1,
    "DW_FORM_addrx1": 1,
    "DW_FORM_data2": 2,
    "DW_FORM_ref2": 2,
    "DW_FORM_strx2": 2,
    "DW_FORM_addrx2": 2,
    "DW_FORM_data3": 3,
    "DW_FORM_strx3": 3,
    "DW_FORM_addrx3": 3,
    "DW_FORM_data4": 4,
    "DW_FORM_ref4": 4,
    "DW_FORM_strx4": 4,
    "DW_FORM_addrx4": 4,
    "DW_FORM_ref_sup4": 4,
    "DW_FORM_data8": 8,
    "DW_FORM_ref8": 8,
    "DW_FORM_ref_sig8": 8,
    "DW_FORM_ref_sup8": 8,
    "DW_FORM_data16": 16,
    "DW_FORM_flag_present": 0,
    "DW_FORM_implicit_const": 0,
    "DW_FORM_strp": -2,
    "DW_FORM_line_strp": -2,
    "DW_FORM_sec_offset": -2,
    "DW_FORM_ref_addr": -2,
    "DW_FORM_strp_sup": -2,
    "DW_FORM_GNU_ref_alt": -2,
    "DW_FORM_GNU_strp_alt": -2,
}
_LEB = {
    "DW_FORM_udata",
    "DW_FORM_ref_udata",
    "DW_FORM_strx",
    "DW_FORM_addrx",
    "DW_FORM_loclistx",
    "DW_FORM_rnglistx",
    "DW_FORM_GNU_addr_index",
    "DW_FORM_GNU_str_index",
}
_SLEB = {"DW_FORM_sdata"}
_BLOCK = {
    "DW_FORM_block1": 1,
    "DW_FORM_block2": 2,
    "DW_FORM_block4": 4,
    "DW_FORM_block": 0,
    "DW_FORM_exprloc": 0,
}
# Forms whose values pyelftools has already resolved when it parses a DIE.
_TRANSLATED = {
    "DW_FORM_addrx": "DW_FORM_addr",
    "DW_FORM_addrx1": "DW_FORM_addr",
    "DW_FORM_addrx2": "DW_FORM_addr",
    "DW_FORM_addrx3": "DW_FORM_addr",
    "DW_FORM_addrx4": "DW_FORM_addr",
    "DW_FORM_rnglistx": "DW_FORM_sec_offset",
}
_WANTED = {"DW_AT_sibling", "DW_AT_low_pc", "DW_AT_high_pc", "DW_AT_ranges"}


def _uleb(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


_Plan = tuple[bool, bool, list[tuple[int, int, str | None, str]]]
# Plan operations: skip N bytes, read N bytes, LEB128, C string, block with an
# N-byte (0: LEB128) length, implicit constant.
_SKIP, _READ, _LEB128, _CSTR, _BLOCKN, _IMPLICIT = range(6)


def _compile_plan(decl: AbbrevDecl, addr_size: int, off_size: int) -> _Plan | None:
    """Turn an abbreviation into a few skip/read steps; None if it uses DW_FORM_indirect."""
    is_sub = decl["tag"] == "DW_TAG_subprogram"
    ops: list[tuple[int, int, str | None, str]] = []
    for spec in decl["attr_spec"]:
        name, form = spec.name, spec.form
        keep = name == "DW_AT_sibling" or (is_sub and name in _WANTED)
        size = _FIXED.get(form)
        if form == "DW_FORM_indirect":
            return None
        if form == "DW_FORM_implicit_const":
            if keep:
                ops.append((_IMPLICIT, spec.value, name, form))
            continue
        if size is not None:
            size = addr_size if size == -1 else off_size if size == -2 else size
            if keep:
                ops.append((_READ, size, name, form))
            elif ops and ops[-1][0] == _SKIP:
                ops[-1] = (_SKIP, ops[-1][1] + size, None, "")
            elif size:
                ops.append((_SKIP, size, None, ""))
        elif form in _LEB or form in _SLEB:
            ops.append((_LEB128, 0, name if keep else None, form))
        elif form == "DW_FORM_string":
            ops.append((_CSTR, 0, None, form))
        elif form in _BLOCK:
            ops.append((_BLOCKN, _BLOCK[form], None, form))
        else:
            raise DwarfError(f"unsupported DWARF form {form}")
    return is_sub, decl.has_children(), ops


def scan_top_level_functions(
    cu: CompileUnit,
    info: memoryview | bytearray,
) -> list[tuple[int, dict[str, tuple[str, int]]]]:
    """(DIE offset, {attribute: (form, raw value)}) of each top-level subprogram.

    Reading every top-level DIE through pyelftools costs ~40 µs each (0.15 s
    for kernel/sched/core.c); this walks them on raw bytes with the CU's
    abbreviation table compiled into skip steps, jumps over subtrees by
    DW_AT_sibling, and decodes only the attributes that locate code.
    """
    abbrevs = cu.get_abbrev_table()
    addr_size = cu["address_size"]
    off_size = 8 if cu.dwarf_format() == 64 else 4
    start = cu.cu_offset
    buf = bytes(info[start : cu.cu_offset + cu.size])
    plans: dict[int, _Plan] = {}
    top = cu.get_top_DIE()
    pos = top.offset + top.size - start
    depth = 0  # nesting below the top DIE, when a subtree has no DW_AT_sibling
    out: list[tuple[int, dict[str, tuple[str, int]]]] = []
    n = len(buf)
    while pos < n:
        die_pos = pos
        code = buf[pos]
        pos += 1
        if code >= 0x80:
            code, pos = _uleb(buf, pos - 1)
        if code == 0:
            if depth == 0:
                break
            depth -= 1
            continue
        plan = plans.get(code)
        if plan is None:
            compiled = _compile_plan(abbrevs.get_abbrev(code), addr_size, off_size)
            if compiled is None:
                raise DwarfError("DW_FORM_indirect in a top-level DIE is not supported")
            plan = plans[code] = compiled
        is_sub, has_children, ops = plan
        wanted: dict[str, tuple[str, int]] = {}
        for op, arg, name, form in ops:
            if op == _SKIP:
                pos += arg
            elif op == _READ:
                assert name is not None
                wanted[name] = (form, int.from_bytes(buf[pos : pos + arg], "little"))
                pos += arg
            elif op == _LEB128:
                value, pos = _uleb(buf, pos)
                if name is not None:
                    wanted[name] = (form, value)
            elif op == _CSTR:
                pos = buf.index(b"\0", pos) + 1
            elif op == _BLOCKN:
                if arg:
                    length = int.from_bytes(buf[pos : pos + arg], "little")
                    pos += arg
                else:
                    length, pos = _uleb(buf, pos)
                pos += length
            else:  # _IMPLICIT
                assert name is not None
                wanted[name] = (form, arg)
        if is_sub and depth == 0 and ("DW_AT_low_pc" in wanted or "DW_AT_ranges" in wanted):
            out.append((start + die_pos, wanted))
        if has_children:
            sib = wanted.get("DW_AT_sibling")
            if sib is None:
                depth += 1
            elif sib[0] == "DW_FORM_ref_addr":
                pos = sib[1] - start
            else:
                pos = sib[1]  # CU-relative, as is pos
    return out


def _unit_offsets(info: memoryview | bytearray) -> list[int]:
    """Offsets of every unit header in .debug_info, from the length fields alone."""
    out = []
    pos = 0
    while pos + 4 <= len(info):
        out.append(pos)
        (length,) = struct.unpack_from("<I", info, pos)
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", info, pos + 4)
            pos += 12 + length
        else:
            pos += 4 + length
    return out


# -- one compile unit ----------------------------------------------------------------


class _CompileUnit:
    """Line table, file names and top-level functions of one CU, built on first use."""

    def __init__(
        self,
        dwarf: DWARFInfo,
        cu: CompileUnit,
        line_data: memoryview | bytearray,
        info_data: memoryview | bytearray,
    ) -> None:
        self.dwarf = dwarf
        self.line_data = line_data
        self.info_data = info_data
        self._ranges: dict[int, list[tuple[int, int]]] = {}
        self.cu = cu
        top = cu.get_top_DIE()
        self.top = top
        comp_dir = top.attributes.get("DW_AT_comp_dir")
        self.comp_dir: str | None = _text(comp_dir.value) if comp_dir else None
        self.version = cu.header.version
        self._lineprog = dwarf.line_program_for_CU(cu)
        self._files: dict[int, tuple[str | None, str | None]] = {}
        self._rows: LineTable | None = None
        self._funcs: _IntervalIndex | None = None
        self._names: dict[int, str | None] = {}
        base = top.attributes.get("DW_AT_low_pc")
        self.base_address = int(base.value) if base else 0

    # file names

    def file(self, index: int) -> tuple[str | None, str | None]:
        """(addr2line path, source-relative path) of a file number of this CU."""
        hit = self._files.get(index)
        if hit is None:
            hit = self._files[index] = self._file_names(index)
        return hit

    def _file_names(self, index: int) -> tuple[str | None, str | None]:
        lp = self._lineprog
        if lp is None:
            return None, None
        hdr = lp.header
        files = hdr["file_entry"]
        dirs = [_text(d) for d in hdr["include_directory"]]
        v5 = hdr["version"] >= 5
        # DWARF 5 numbers files and directories from 0; earlier versions from 1,
        # with directory 0 meaning the compilation directory.
        fidx = index if v5 else index - 1
        if not 0 <= fidx < len(files):
            return None, None
        entry = files[fidx]
        name = _text(entry.name)
        didx = entry.dir_index if v5 else entry.dir_index - 1
        subdir = dirs[didx] if 0 <= didx < len(dirs) else None
        return _concat_filename(self.comp_dir, subdir, name), _source_path(
            self.comp_dir, subdir if (didx > 0 or not v5) else None, name
        )

    # line table

    def line_at(self, addr: int) -> Row | None:
        """(file number, line, discriminator) of the line row covering ``addr``."""
        if self._rows is None:
            self._rows = self._build_rows()
        return self._rows.lookup(addr)

    def _build_rows(self) -> LineTable:
        lp = self._lineprog
        if lp is None:
            return LineTable([], [])
        return LineTable(
            *merge_sequences(
                decode_line_rows(
                    self.line_data, lp.program_start_offset, lp.program_end_offset, lp.header
                )
            )
        )

    # functions

    def functions_at(self, addr: int) -> list[int]:
        """Offsets of top-level subprogram DIEs whose ranges contain ``addr``."""
        if self._funcs is None:
            items: list[tuple[int, int, int]] = []
            for off, attrs in scan_top_level_functions(self.cu, self.info_data):
                for lo, hi in self._ranges_of(attrs):
                    items.append((lo, hi, off))
            self._funcs = _IntervalIndex(items)
        return [off for _, _, off in self._funcs.containing(addr)]

    def ranges(self, die: DIE) -> list[tuple[int, int]]:
        hit = self._ranges.get(die.offset)
        if hit is None:
            attrs = {
                k: (_TRANSLATED.get(v.form, v.form), v.value)
                for k, v in die.attributes.items()
                if k in ("DW_AT_low_pc", "DW_AT_high_pc", "DW_AT_ranges")
            }
            hit = self._ranges[die.offset] = self._ranges_of(attrs)
        return hit

    def _ranges_of(self, attrs: dict[str, tuple[str, int]]) -> list[tuple[int, int]]:
        if "DW_AT_ranges" in attrs:
            return self._rangelist(*attrs["DW_AT_ranges"])
        lo_attr = attrs.get("DW_AT_low_pc")
        if lo_attr is None:
            return []
        lo = self._address(*lo_attr)
        hi_attr = attrs.get("DW_AT_high_pc")
        if hi_attr is None:
            return [(lo, lo + 1)]
        hform, hi = hi_attr
        if hform == "DW_FORM_addr" or hform.startswith("DW_FORM_addrx"):
            hi = self._address(hform, hi)
        else:
            hi += lo
        return [(lo, hi)] if hi > lo else []

    def _address(self, form: str, value: int) -> int:
        # The raw walker leaves addrx indices untranslated; pyelftools does not.
        if form.startswith("DW_FORM_addrx") or form == "DW_FORM_GNU_addr_index":
            if self.dwarf.debug_addr_sec is not None:
                return int(self.dwarf.get_addr(self.cu, value))
        return int(value)

    def _rangelist(self, form: str, value: int) -> list[tuple[int, int]]:
        rl = self.dwarf.range_lists()
        if rl is None:
            return []
        offset = value
        if form == "DW_FORM_rnglistx" and self.version >= 5:
            offset = self._rnglistx_offset(value)
        elif self.version < 5 and "DW_AT_GNU_ranges_base" in self.top.attributes:
            offset += self.top.attributes["DW_AT_GNU_ranges_base"].value
        base = self.base_address
        out = []
        for e in rl.get_range_list_at_offset(offset, cu=self.cu):
            if isinstance(e, BaseAddressEntry):
                base = e.base_address
                continue
            lo, hi = (e.begin_offset, e.end_offset)
            if not e.is_absolute:
                lo, hi = lo + base, hi + base
            if hi > lo:
                out.append((lo, hi))
        return out

    def _rnglistx_offset(self, index: int) -> int:
        base_attr = self.top.attributes.get("DW_AT_rnglists_base")
        sec = self.dwarf.debug_rnglists_sec
        if base_attr is None or sec is None:
            return index
        sec.stream.seek(base_attr.value + 4 * index)
        (rel,) = struct.unpack("<I", sec.stream.read(4))
        return int(base_attr.value + rel)

    def name(self, die: DIE) -> str | None:
        hit = self._names.get(die.offset, "")
        if hit != "":
            return hit
        name = _die_name(die, 0)
        self._names[die.offset] = name
        return name


def _die_name(die: DIE, depth: int) -> str | None:
    attrs = die.attributes
    # bfd prefers the linkage name when there is one (C has none).
    for key in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name"):
        if key in attrs:
            return _text(attrs[key].value)
    if depth < 8:
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in attrs:
                try:
                    return _die_name(die.get_DIE_from_attribute(ref), depth + 1)
                except Exception as e:  # a dangling reference: no name, not a crash
                    log.debug("bad %s in DIE %#x: %s", ref, die.offset, e)
                    return None
    return None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _concat_filename(comp_dir: str | None, subdir: str | None, name: str) -> str:
    """bfd dwarf2.c concat_filename(): what addr2line prints."""
    if name.startswith("/"):
        return name
    dir_name: str | None = None
    if subdir is None or not subdir.startswith("/"):
        dir_name = comp_dir
    if dir_name is None:
        dir_name, subdir = subdir, None
    if dir_name is None:
        return name
    if subdir is not None:
        return f"{dir_name}/{subdir}/{name}"
    return f"{dir_name}/{name}"


def _source_path(comp_dir: str | None, subdir: str | None, name: str) -> str:
    """The path as decode_stacktrace.sh shows it: relative to the source tree.

    Kbuild compiles from the top of the tree, so relative directories are
    already tree-relative; absolute ones are cut at the compilation directory
    or at a linux-headers-*/linux-* tree.
    """
    path = name
    if not name.startswith("/") and subdir:
        path = f"{subdir}/{name}"
    path = posixpath.normpath(path)
    if path.startswith("/"):
        if comp_dir and comp_dir.startswith("/"):
            prefix = comp_dir.rstrip("/") + "/"
            if path.startswith(prefix):
                return path[len(prefix) :]
        m = _HEADERS_TREE.match(path)
        if m:
            return m.group(1)
    return path


# -- abbreviation tables ------------------------------------------------------------------


def _reverse(enum: dict[str, int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, code in enum.items():
        out.setdefault(code, name)
    return out


_TAG_NAMES = _reverse(ENUM_DW_TAG)
_AT_NAMES = _reverse(ENUM_DW_AT)
_FORM_NAMES = _reverse(ENUM_DW_FORM)
_DW_FORM_implicit_const = 0x21
_SPECS: dict[tuple[int, int], Container] = {}


class _FastAbbrevTable(AbbrevTable):
    """pyelftools' AbbrevTable, read without construct.

    Every kernel CU has its own table of a few hundred entries; parsing them
    through construct was 40 % of the cold lookup time.
    """

    __slots__ = ()

    def __init__(self, structs: Any, stream: Any, offset: int, data: bytes) -> None:
        self.structs = structs
        self.stream = stream
        self.offset = offset
        self._abbrev_map = _parse_abbrevs(data, offset)


def _parse_abbrevs(buf: bytes, pos: int) -> dict[int, AbbrevDecl]:
    table: dict[int, AbbrevDecl] = {}
    while True:
        code, pos = _uleb(buf, pos)
        if code == 0:
            return table
        tag, pos = _uleb(buf, pos)
        children = buf[pos]
        pos += 1
        specs = []
        while True:
            at, pos = _uleb(buf, pos)
            form, pos = _uleb(buf, pos)
            if at == 0 and form == 0:
                break
            if form == _DW_FORM_implicit_const:
                value, pos = _sleb(buf, pos)
                spec = Container(
                    name=_AT_NAMES.get(at, at), form="DW_FORM_implicit_const", value=value
                )
            else:
                # Specs are never modified: share one per (attribute, form).
                shared = _SPECS.get((at, form))
                if shared is None:
                    shared = _SPECS[(at, form)] = Container(
                        name=_AT_NAMES.get(at, at), form=_FORM_NAMES.get(form, form)
                    )
                spec = shared
            specs.append(spec)
        table[code] = AbbrevDecl(
            code,
            Container(
                tag=_TAG_NAMES.get(tag, tag),
                children_flag="DW_CHILDREN_yes" if children else "DW_CHILDREN_no",
                attr_spec=specs,
            ),
        )


def _sleb(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


class _DWARFInfo(DWARFInfo):
    """DWARFInfo whose abbreviation tables come from :class:`_FastAbbrevTable`."""

    abbrev_data: bytes = b""

    def get_abbrev_table(self, offset: int) -> AbbrevTable:
        table = self._abbrevtable_cache.get(offset)
        if table is None:
            assert self.debug_abbrev_sec is not None
            table = self._abbrevtable_cache[offset] = _FastAbbrevTable(
                self.structs, self.debug_abbrev_sec.stream, offset, self.abbrev_data
            )
        return table


# -- the index ----------------------------------------------------------------------


class DwarfIndex:
    """Address → inline chain for one ELF file; everything is decoded on demand.

    For a relocatable file (a .ko) ``bases`` places each section (from
    :func:`layout_sections`) and the DWARF sections are relocated to match.
    """

    def __init__(self, elf: ElfFile, bases: dict[int, int] | None = None) -> None:
        self.elf = elf
        secs: dict[str, DebugSectionDescriptor] = {}
        for name in _DEBUG_SECTIONS:
            sec = elf.by_name.get(name)
            if sec is None:
                continue
            buf: memoryview | bytearray
            if bases is not None:
                buf = relocated_data(elf, sec, bases)
            else:
                buf = elf.data(sec)
            if name == ".debug_line":
                self._line_data = buf
            elif name == ".debug_info":
                self._info_data = buf
            secs[name] = DebugSectionDescriptor(
                stream=_stream(buf), name=name, global_offset=sec.offset, size=len(buf), address=0
            )
        if ".debug_info" not in secs or ".debug_line" not in secs:
            raise DwarfError(f"{elf.path}: no DWARF (.debug_info/.debug_line)")
        self.dwarf = _DWARFInfo(
            config=DwarfConfig(
                little_endian=True,
                default_address_size=8,
                machine_arch="x64" if elf.machine == EM_X86_64 else "AArch64",
            ),
            debug_info_sec=secs[".debug_info"],
            debug_aranges_sec=None,
            debug_abbrev_sec=secs.get(".debug_abbrev"),
            debug_frame_sec=None,
            eh_frame_sec=None,
            debug_str_sec=secs.get(".debug_str"),
            debug_loc_sec=None,
            debug_ranges_sec=secs.get(".debug_ranges"),
            debug_line_sec=secs[".debug_line"],
            debug_pubtypes_sec=None,
            debug_pubnames_sec=None,
            debug_addr_sec=secs.get(".debug_addr"),
            debug_str_offsets_sec=secs.get(".debug_str_offsets"),
            debug_line_str_sec=secs.get(".debug_line_str"),
            debug_loclists_sec=None,
            debug_rnglists_sec=secs.get(".debug_rnglists"),
            debug_sup_sec=None,
            gnu_debugaltlink_sec=None,
            debug_types_sec=None,
        )
        abbrev = elf.by_name.get(".debug_abbrev")
        self.dwarf.abbrev_data = bytes(elf.data(abbrev)) if abbrev is not None else b""
        aranges_sec = elf.by_name.get(".debug_aranges")
        items: list[tuple[int, int, int]] = []
        if aranges_sec is not None:
            data = relocated_data(elf, aranges_sec, bases) if bases else elf.data(aranges_sec)
            items = parse_aranges(data)
        self._aranges = _IntervalIndex(items)
        self._cu_ranges: _IntervalIndex | None = None
        self._cus: dict[int, _CompileUnit] = {}
        self.cus_loaded = 0

    def _cu(self, offset: int) -> _CompileUnit:
        cu = self._cus.get(offset)
        if cu is None:
            cu = self._cus[offset] = _CompileUnit(
                self.dwarf, self.dwarf.get_CU_at(offset), self._line_data, self._info_data
            )
            self.cus_loaded += 1
        return cu

    def _cu_offsets(self, addr: int) -> list[int]:
        hits = [off for _, _, off in self._aranges.containing(addr)]
        if hits:
            return hits
        # A CU may be missing from .debug_aranges (49 of 2172 in Debian's
        # vmlinux, mostly without code; clang writes none): index the ranges
        # of those CUs' top DIEs, once.  No line programs are read for this.
        if self._cu_ranges is None:
            covered = {off for _, _, off in self._aranges.items}
            items: list[tuple[int, int, int]] = []
            for off in _unit_offsets(self._info_data):
                if off in covered:
                    continue
                c = self._cu(off)
                for lo, hi in c.ranges(c.top):
                    items.append((lo, hi, off))
            self._cu_ranges = _IntervalIndex(items)
        return [off for _, _, off in self._cu_ranges.containing(addr)]

    def main_file(self, addr: int) -> str | None:
        """addr2line's path of file 0 (the CU's own source) of the CU holding ``addr``."""
        offs = self._cu_offsets(addr)
        return self._cu(offs[0]).file(0)[0] if offs else None

    def lookup(self, addr: int) -> list[SourceFrame] | None:
        """The inline chain at ``addr``, innermost first, or None if no CU covers it.

        The last element is the function the code belongs to (its ``function``
        is None where DWARF names no function, e.g. in some assembly).
        """
        for off in self._cu_offsets(addr):
            cu = self._cu(off)
            frames = self._lookup_in(cu, addr)
            if frames is not None:
                return frames
        return None

    def scope_at(self, addr: int) -> list[DIE]:
        """The function DIEs whose code holds ``addr``: the subprogram, then each
        inlined subroutine down to the innermost (empty if no CU covers it)."""
        for off in self._cu_offsets(addr):
            chain = self._best_chain(self._cu(off), addr)
            if chain:
                return chain
        return []

    def _lookup_in(self, cu: _CompileUnit, addr: int) -> list[SourceFrame] | None:
        row = cu.line_at(addr)
        chain = self._best_chain(cu, addr)
        if row is None and not chain:
            return None
        if row is not None:
            f, s = cu.file(row[0])
            where = (f, s, row[1] or None, row[2])
        else:
            where = (None, None, None, 0)
        frames: list[SourceFrame] = []
        # chain is outermost first; each level reports where in it the next
        # level was inlined (DW_AT_call_file/line), the innermost the line row.
        for depth in range(len(chain) - 1, -1, -1):
            die = chain[depth]
            frames.append(SourceFrame(cu.name(die), where[0], where[1], where[2], where[3]))
            cf = die.attributes.get("DW_AT_call_file")
            cl = die.attributes.get("DW_AT_call_line")
            if cf is not None:
                f, s = cu.file(int(cf.value))
            else:
                f = s = None
            where = (f, s, int(cl.value) if cl is not None else None, 0)
        if not frames:
            frames.append(SourceFrame(None, where[0], where[1], where[2], where[3]))
        return frames

    def _best_chain(self, cu: _CompileUnit, addr: int) -> list[DIE]:
        """The chain subprogram → … → innermost inlined subroutine at ``addr``.

        Like bfd, the innermost is the function (subprogram or inlined
        subroutine) with the smallest range containing ``addr``; among equals,
        the later DIE.  Only DIEs whose ranges contain ``addr`` are descended.
        """
        best: tuple[int, int, list[DIE]] | None = None
        for off in cu.functions_at(addr):
            top = cu.cu.get_DIE_from_refaddr(off)
            # (DIE, chain of function DIEs down to it, is it a function itself)
            stack: list[tuple[DIE, list[DIE], bool]] = [(top, [top], True)]
            while stack:
                die, chain, is_func = stack.pop()
                if is_func:
                    size = _containing_size(cu.ranges(die), addr)
                    if size is not None and (best is None or (size, -die.offset) < best[:2]):
                        best = (size, -die.offset, chain)
                for child in die.iter_children():
                    tag = child.tag
                    if tag == "DW_TAG_inlined_subroutine":
                        if _containing_size(cu.ranges(child), addr) is not None:
                            stack.append((child, [*chain, child], True))
                    elif tag == "DW_TAG_lexical_block":
                        rs = cu.ranges(child)
                        # Blocks are transparent; one without ranges may still
                        # hold inlined code whose ranges are given below it.
                        if not rs or _containing_size(rs, addr) is not None:
                            stack.append((child, chain, False))
        return best[2] if best else []


def _containing_size(ranges: list[tuple[int, int]], addr: int) -> int | None:
    for lo, hi in ranges:
        if lo <= addr < hi:
            return hi - lo
    return None
