"""A relocatable file (a .ko) placed as bfd places it, its sections relocated to match.

A .ko's sections all start at 0 and its DWARF refers to code through relocations:
before its DWARF can be read, each allocated section is given its own address range
and the debug sections are relocated against those addresses.
"""

from __future__ import annotations

import logging

import numpy as np

from tracedep.errors import DwarfError

from .elf_symbols import ELF64_RELA, ELF64_SYM, SHN_LORESERVE, SHT_RELA, ElfFile, Section

log = logging.getLogger(__name__)

EM_X86_64 = 62
EM_AARCH64 = 183
# Relocation types that occur in debug sections: absolute 64- and 32-bit values.
_ABS64 = {EM_X86_64: (1,), EM_AARCH64: (257,)}
_ABS32 = {EM_X86_64: (10, 11), EM_AARCH64: (258,)}


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
