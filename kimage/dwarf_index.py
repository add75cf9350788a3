"""file:line and inline chains from DWARF, looked up lazily one compile unit at a time.

Whole-kernel DWARF in pyelftools takes minutes (docs/FACTS.md, "DWARF costs"), so
nothing here walks every compile unit: ``.debug_aranges`` maps an address to its CU,
and only that CU's line program and the DIEs whose ranges contain the address are
decoded.

The answers follow binutils' ``addr2line -f -i`` (bfd's dwarf2.c): for duplicate
line rows the last one wins, the innermost function is the smallest range that
contains the address, and file names are joined as its ``concat_filename()``
joins them.  Each file is also given in a shorter form relative to the source
tree, as ``scripts/decode_stacktrace.sh`` prints it.

This module holds the index and the inline chains; a compile unit is
:mod:`.dwarf_cu`, its line program and file names :mod:`.dwarf_lines`, the
fast DIE reading :mod:`.dwarf_dies`, a .ko's section layout :mod:`.ko_layout`.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Any

from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig

from tracedep.errors import DwarfError

from .dwarf_cu import CompileUnitIndex, IntervalIndex
from .dwarf_dies import FastDWARFInfo, unit_offsets
from .elf_symbols import ElfFile
from .ko_layout import EM_X86_64, relocated_data

log = logging.getLogger(__name__)

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
        self.dwarf = FastDWARFInfo(
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
        self._aranges = IntervalIndex(items)
        self._cu_ranges: IntervalIndex | None = None
        self._cus: dict[int, CompileUnitIndex] = {}
        self.cus_loaded = 0

    def _cu(self, offset: int) -> CompileUnitIndex:
        cu = self._cus.get(offset)
        if cu is None:
            cu = self._cus[offset] = CompileUnitIndex(
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
            for off in unit_offsets(self._info_data):
                if off in covered:
                    continue
                c = self._cu(off)
                for lo, hi in c.ranges(c.top):
                    items.append((lo, hi, off))
            self._cu_ranges = IntervalIndex(items)
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

    def _lookup_in(self, cu: CompileUnitIndex, addr: int) -> list[SourceFrame] | None:
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

    def _best_chain(self, cu: CompileUnitIndex, addr: int) -> list[DIE]:
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
