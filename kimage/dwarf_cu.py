"""One compile unit, decoded on first use: its line table, file names, top-level
functions and the address ranges of its DIEs."""

from __future__ import annotations

import struct
from bisect import bisect_right

from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.ranges import BaseAddressEntry

from .dwarf_dies import TRANSLATED_FORMS, attr_text, die_name, scan_top_level_functions
from .dwarf_lines import (
    LineTable,
    Row,
    concat_filename,
    decode_line_rows,
    merge_sequences,
    source_path,
)


class IntervalIndex:
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


class CompileUnitIndex:
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
        self.comp_dir: str | None = attr_text(comp_dir.value) if comp_dir else None
        self.version = cu.header.version
        self._lineprog = dwarf.line_program_for_CU(cu)
        self._files: dict[int, tuple[str | None, str | None]] = {}
        self._rows: LineTable | None = None
        self._funcs: IntervalIndex | None = None
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
        dirs = [attr_text(d) for d in hdr["include_directory"]]
        v5 = hdr["version"] >= 5
        # DWARF 5 numbers files and directories from 0; earlier versions from 1,
        # with directory 0 meaning the compilation directory.
        fidx = index if v5 else index - 1
        if not 0 <= fidx < len(files):
            return None, None
        entry = files[fidx]
        name = attr_text(entry.name)
        didx = entry.dir_index if v5 else entry.dir_index - 1
        subdir = dirs[didx] if 0 <= didx < len(dirs) else None
        return concat_filename(self.comp_dir, subdir, name), source_path(
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
            self._funcs = IntervalIndex(items)
        return [off for _, _, off in self._funcs.containing(addr)]

    def ranges(self, die: DIE) -> list[tuple[int, int]]:
        hit = self._ranges.get(die.offset)
        if hit is None:
            attrs = {
                k: (TRANSLATED_FORMS.get(v.form, v.form), v.value)
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
        name = die_name(die, 0)
        self._names[die.offset] = name
        return name
