"""Reading DIEs fast: abbreviation tables without construct, and a raw walk over the
top-level DIEs of a compile unit that decodes only what locates code.

pyelftools parses every DIE and abbreviation through construct; for a kernel CU
that is most of the cost of a cold lookup.  These read the same bytes directly
and hand pyelftools' own types back where the rest of the code expects them.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from elftools.construct.lib.container import Container
from elftools.dwarf.abbrevtable import AbbrevDecl, AbbrevTable
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG

from tracedep.errors import DwarfError

from .leb128 import sleb128, uleb128

log = logging.getLogger(__name__)

# -- a fast walk over a CU's top-level DIEs ----------------------------------

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
TRANSLATED_FORMS = {
    "DW_FORM_addrx": "DW_FORM_addr",
    "DW_FORM_addrx1": "DW_FORM_addr",
    "DW_FORM_addrx2": "DW_FORM_addr",
    "DW_FORM_addrx3": "DW_FORM_addr",
    "DW_FORM_addrx4": "DW_FORM_addr",
    "DW_FORM_rnglistx": "DW_FORM_sec_offset",
}
_WANTED = {"DW_AT_sibling", "DW_AT_low_pc", "DW_AT_high_pc", "DW_AT_ranges"}


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
            code, pos = uleb128(buf, pos - 1)
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
                value, pos = uleb128(buf, pos)
                if name is not None:
                    wanted[name] = (form, value)
            elif op == _CSTR:
                pos = buf.index(b"\0", pos) + 1
            elif op == _BLOCKN:
                if arg:
                    length = int.from_bytes(buf[pos : pos + arg], "little")
                    pos += arg
                else:
                    length, pos = uleb128(buf, pos)
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


def unit_offsets(info: memoryview | bytearray) -> list[int]:
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


# -- names ---------------------------------------------------------------------------


def die_name(die: DIE, depth: int) -> str | None:
    attrs = die.attributes
    # bfd prefers the linkage name when there is one (C has none).
    for key in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name"):
        if key in attrs:
            return attr_text(attrs[key].value)
    if depth < 8:
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in attrs:
                try:
                    return die_name(die.get_DIE_from_attribute(ref), depth + 1)
                except Exception as e:  # a dangling reference: no name, not a crash
                    log.debug("bad %s in DIE %#x: %s", ref, die.offset, e)
                    return None
    return None


def attr_text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


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
        code, pos = uleb128(buf, pos)
        if code == 0:
            return table
        tag, pos = uleb128(buf, pos)
        children = buf[pos]
        pos += 1
        specs = []
        while True:
            at, pos = uleb128(buf, pos)
            form, pos = uleb128(buf, pos)
            if at == 0 and form == 0:
                break
            if form == _DW_FORM_implicit_const:
                value, pos = sleb128(buf, pos)
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


class FastDWARFInfo(DWARFInfo):
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
