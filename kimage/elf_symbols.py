"""ELF headers and symbol tables, read fast and looked up by bisection.

pyelftools' ``iter_symbols()`` costs seconds on a vmlinux (86k functions); the
symbol table is read here as one numpy structured array instead, and kept as
sorted address arrays (docs/FACTS.md, "ELF symbol tables": 0.13 s to build,
microseconds per lookup).

Offsets and sizes follow kallsyms, not ``st_size``: a symbol extends to the next
symbol, and aliases are broken as ``scripts/kallsyms.c`` breaks them, so that
``func+0x1c/0x80`` reads exactly as the kernel's own ``%pS`` would print it.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tracedep.common.files import atomic_output
from tracedep.errors import ElfFormatError

log = logging.getLogger(__name__)

SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_RELA = 4
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHN_LORESERVE = 0xFF00
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_WEAK = 2
ET_REL = 1
NT_GNU_BUILD_ID = 3

ELF64_SYM = np.dtype(
    [
        ("name", "<u4"),
        ("info", "u1"),
        ("other", "u1"),
        ("shndx", "<u2"),
        ("value", "<u8"),
        ("size", "<u8"),
    ]
)
ELF64_RELA = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


class ElfFile:
    """A memory-mapped ELF64 little-endian file: section headers, notes, raw data."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as e:  # empty file
                raise ElfFormatError(f"{path}: empty file") from e
        mm = self._mm
        if mm[:4] != b"\x7fELF":
            raise ElfFormatError(f"{path}: not an ELF file")
        if mm[4] != 2 or mm[5] != 1:
            raise ElfFormatError(f"{path}: only ELF64 little-endian is supported")
        self.type: int
        self.machine: int
        self.type, self.machine = struct.unpack_from("<HH", mm, 16)
        (shoff,) = struct.unpack_from("<Q", mm, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", mm, 0x3A)
        if shoff == 0 or shnum == 0:
            raise ElfFormatError(f"{path}: no section headers")
        raw = [struct.unpack_from("<IIQQQQIIQQ", mm, shoff + i * shentsize) for i in range(shnum)]
        strtab_off = raw[shstrndx][4]
        self.sections: list[Section] = []
        for i, (nm, typ, flg, addr, off, size, link, info, align, ent) in enumerate(raw):
            self.sections.append(
                Section(
                    i,
                    self._cstr(strtab_off + nm),
                    typ,
                    flg,
                    addr,
                    off,
                    size,
                    link,
                    info,
                    align,
                    ent,
                )
            )
        self.by_name: dict[str, Section] = {}
        for s in self.sections:
            self.by_name.setdefault(s.name, s)
        self.build_id = self._find_build_id()

    @property
    def is_relocatable(self) -> bool:
        return self.type == ET_REL

    def _cstr(self, off: int) -> str:
        end = self._mm.find(b"\0", off)
        return self._mm[off:end].decode("utf-8", "replace")

    def data(self, sec: Section) -> memoryview:
        if sec.type == SHT_NOBITS:
            return memoryview(b"")
        return memoryview(self._mm)[sec.offset : sec.offset + sec.size]

    def _find_build_id(self) -> str | None:
        for sec in self.sections:
            if sec.type != SHT_NOTE:
                continue
            for name, ntype, desc in _iter_notes(bytes(self.data(sec))):
                if name == b"GNU" and ntype == NT_GNU_BUILD_ID:
                    return desc.hex()
        return None

    def has_section(self, name: str) -> bool:
        return name in self.by_name

    def cache_key(self) -> str:
        """The build-id, or a digest of path, size and mtime for files without one."""
        if self.build_id:
            return self.build_id
        st = os.stat(self.path)
        ident = f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
        return "nobuildid-" + hashlib.sha1(ident).hexdigest()[:20]

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            pass  # numpy views of the symbol table are still alive; the GC unmaps later


def _iter_notes(data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        name = data[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        yield name, ntype, desc


def read_build_id(path: Path) -> str | None:
    """The GNU build-id of an ELF file as hex, or None."""
    elf = ElfFile(path)
    try:
        return elf.build_id
    finally:
        elf.close()


def read_symtab(elf: ElfFile) -> tuple[npt.NDArray[np.void], bytes] | None:
    """The raw ``.symtab`` as an ELF64_SYM array and its string table, or None if stripped."""
    symtab = next((s for s in elf.sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        return None
    syms = np.frombuffer(elf.data(symtab), dtype=ELF64_SYM)
    strtab = bytes(elf.data(elf.sections[symtab.link]))
    return syms, strtab


def is_mapping_or_local_label(name: str) -> bool:
    # arm64 "$x"/"$d" mapping symbols and assembler-local ".L" labels never
    # reach kallsyms; listing them would split real functions.
    return name.startswith(("$", ".L")) or name.startswith("L0\x01")


def _alias_rank(name: str, weak: bool) -> tuple[int, int, int, str]:
    """Sort key among aliases, as scripts/kallsyms.c compare_symbols() orders them:
    weak last, linker-script symbols last, fewer leading underscores first, then
    nm's order for equal addresses (by name)."""
    linker = 0
    if len(name) >= 8 and name.startswith("__"):
        rest = name[2:]
        linker = int(
            rest.startswith(("start_", "stop_", "end_")) or name.endswith(("_start", "_end"))
        )
    return (int(weak), linker, len(name) - len(name.lstrip("_")), name)


class SymbolTable:
    """Sorted, alias-free symbols: ``lookup(addr)`` gives the kallsyms name, start and size.

    ``addrs`` are in whatever address space the table was built for (link-time
    for vmlinux, runtime for modules and kallsyms); sizes run to the next symbol.
    """

    def __init__(
        self,
        addrs: npt.NDArray[np.uint64],
        sizes: npt.NDArray[np.uint64],
        names: list[str],
        exec_mask: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        self.addrs = addrs
        self.sizes = sizes
        self.names = names
        self.is_exec = exec_mask if exec_mask is not None else np.ones(len(names), dtype=bool)
        # bisect on a plain list is ~3x faster per single lookup than np.searchsorted.
        self._keys: list[int] = addrs.tolist()
        self._by_name: dict[str, list[int]] | None = None
        self.aliases: dict[str, int] = {}  # names dropped for an alias at the same address

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, addr: int) -> tuple[str, int, int] | None:
        """(name, symbol address, size) of the symbol containing ``addr``, or None."""
        i = bisect_right(self._keys, addr) - 1
        if i < 0:
            return None
        start = self._keys[i]
        size = int(self.sizes[i])
        # Size 0 means "extent unknown" (the last kallsyms entry): only its
        # own address is known to be inside it.
        if addr >= start + size and not (size == 0 and addr == start):
            return None
        return self.names[i], start, size

    def addresses_of(self, name: str) -> list[int]:
        """Every address of ``name`` (static functions may share a name), aliases included."""
        if self._by_name is None:
            by: dict[str, list[int]] = {}
            for n, a in zip(self.names, self._keys, strict=True):
                by.setdefault(n, []).append(a)
            for n, a in self.aliases.items():
                by.setdefault(n, []).append(a)
            self._by_name = by
        return self._by_name.get(name, [])

    def bounds(self) -> tuple[int, int]:
        """[lowest symbol, end of the highest symbol) or (0, 0) when empty."""
        if not self._keys:
            return 0, 0
        return self._keys[0], self._keys[-1] + int(self.sizes[-1])

    # -- construction -------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        addrs: npt.NDArray[np.uint64],
        names: list[str],
        weak: npt.NDArray[np.bool_],
        execs: npt.NDArray[np.bool_],
        ends: npt.NDArray[np.uint64],
        first_alias: bool = False,
    ) -> SymbolTable:
        """Build from parallel arrays in symbol-table order.

        ``ends`` bounds the size of the last symbol of a region (its section
        end, or 0 if unknown).  Of aliases, the one kallsyms prints is kept:
        ranked as scripts/kallsyms.c ranks them, or with ``first_alias`` the
        first in symbol-table order, as the kernel's module kallsyms does.
        """
        n = len(names)
        order = np.argsort(addrs, kind="stable")
        sa = addrs[order]
        dup = np.zeros(n, dtype=bool)
        if n > 1:
            same = sa[1:] == sa[:-1]
            dup[1:] |= same
            dup[:-1] |= same
        keep = ~dup
        aliases: dict[str, int] = {}
        # Alias groups are rare (a few hundred): rank them in Python.
        if dup.any():
            groups: dict[int, list[int]] = {}
            for pos in np.nonzero(dup)[0].tolist():
                groups.setdefault(int(sa[pos]), []).append(pos)
            for members in groups.values():
                if first_alias:
                    best = members[0]  # argsort is stable: symbol-table order
                else:
                    best = min(
                        members, key=lambda p: _alias_rank(names[order[p]], bool(weak[order[p]]))
                    )
                keep[best] = True
                for p in members:
                    if p != best:
                        aliases.setdefault(names[order[p]], int(sa[p]))
        pick = order[keep]
        out_addrs = addrs[pick]
        out_ends = ends[pick]
        m = len(pick)
        sizes = np.zeros(m, dtype=np.uint64)
        if m:
            nxt = np.empty(m, dtype=np.uint64)
            nxt[:-1] = out_addrs[1:]
            nxt[-1] = max(int(out_ends[-1]), int(out_addrs[-1]))
            # A symbol never runs past its region end (the kernel stops at _etext).
            limit = np.where(out_ends > out_addrs, np.minimum(nxt, out_ends), nxt)
            sizes = limit - out_addrs
        table = cls(out_addrs, sizes, [names[i] for i in pick.tolist()], execs[pick])
        table.aliases = aliases
        return table

    @classmethod
    def from_elf(
        cls, elf: ElfFile, bases: dict[int, int] | None = None, first_alias: bool = False,
        drop_empty_objects: bool = False,
    ) -> SymbolTable | None:
        """Symbols of ``elf``; None if it has no ``.symtab``.

        ``bases`` maps section index to the address at which that section is
        placed (relocatable files); without it ``st_value`` is taken as absolute
        and sections without an address (per-CPU data) are left out.
        """
        raw = read_symtab(elf)
        if raw is None:
            return None
        syms, strtab = raw
        typ = syms["info"] & 0xF
        shndx = syms["shndx"].astype(np.int64)
        nsec = len(elf.sections)
        sec_ok = np.zeros(nsec + 1, dtype=bool)
        sec_base = np.zeros(nsec + 1, dtype=np.uint64)
        sec_end = np.zeros(nsec + 1, dtype=np.uint64)
        sec_exec = np.zeros(nsec + 1, dtype=bool)
        for s in elf.sections:
            if not s.alloc:
                continue
            if bases is None:
                if s.addr == 0:
                    continue
                sec_ok[s.index], sec_end[s.index] = True, s.addr + s.size
            elif s.index in bases:
                sec_ok[s.index] = True
                sec_base[s.index] = bases[s.index]
                sec_end[s.index] = bases[s.index] + s.size
            sec_exec[s.index] = s.exec
        # Out-of-range indices (SHN_ABS, SHN_COMMON, ...) land on the spare slot.
        sh = np.where(shndx < nsec, shndx, nsec)
        keep = (syms["name"] != 0) & sec_ok[sh]
        keep &= (typ == STT_NOTYPE) | (typ == STT_OBJECT) | (typ == STT_FUNC)
        if drop_empty_objects:
            # A zero-size object holds no byte (a lock_class_key without lockdep is
            # an empty struct): as a data address's name it would only hide the
            # object that really lives there.  (kallsyms lists them: the
            # symbolizer keeps them to name as the kernel names.)
            keep &= ~((typ == STT_OBJECT) & (syms["size"] == 0))
        idx = np.nonzero(keep)[0]
        sh = sh[idx]
        addrs = syms["value"][idx] + sec_base[sh]
        weak = (syms["info"][idx] >> 4) == STB_WEAK
        execs = sec_exec[sh]
        ends = sec_end[sh]
        name_off = syms["name"][idx].astype(np.int64)
        raw_tab = np.frombuffer(strtab, dtype=np.uint8)
        # Mapping symbols ($x, $d) and .L labels, recognised on raw bytes.
        c0 = raw_tab[name_off]
        c1 = raw_tab[np.minimum(name_off + 1, len(raw_tab) - 1)]
        good = (c0 != ord("$")) & ~((c0 == ord(".")) & (c1 == ord("L")))
        name_off = name_off[good]
        addrs, weak, execs, ends = addrs[good], weak[good], execs[good], ends[good]
        nuls = np.flatnonzero(raw_tab == 0)
        name_end = nuls[np.searchsorted(nuls, name_off)]
        if raw_tab.max(initial=0) < 0x80:
            # ASCII: str indices equal byte offsets, so slice one decoded string.
            text = strtab.decode("ascii")
            names = [text[a:b] for a, b in zip(name_off.tolist(), name_end.tolist(), strict=True)]
        else:
            names = [
                strtab[a:b].decode("utf-8", "replace")
                for a, b in zip(name_off.tolist(), name_end.tolist(), strict=True)
            ]
        return cls.from_arrays(addrs, names, weak, execs, ends, first_alias)

    @classmethod
    def from_kallsyms(cls, entries: Iterable[tuple[int, str, str]]) -> SymbolTable:
        """From /proc/kallsyms-like (address, type letter, name) tuples (runtime addresses).

        A trailing ``\\t[module]`` in the name (as /proc/kallsyms prints it) is dropped.
        """
        addrs: list[int] = []
        names: list[str] = []
        weak: list[bool] = []
        execs: list[bool] = []
        for addr, typ, name in entries:
            if addr == 0 or typ in "aAuUnN" or not name:
                continue
            name = name.split("\t", 1)[0].split(" ", 1)[0]
            if is_mapping_or_local_label(name):
                continue
            addrs.append(addr)
            names.append(name)
            weak.append(typ in "wWvV")
            execs.append(typ in "tTwW")
        # Without section ends, the last symbol gets size 0.
        return cls.from_arrays(
            np.array(addrs, dtype=np.uint64),
            names,
            np.array(weak, dtype=bool),
            np.array(execs, dtype=bool),
            np.zeros(len(names), dtype=np.uint64),
        )

    # -- on-disk cache --------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_output(directory / "symbols.npz") as tmp, open(tmp, "wb") as f:
            alias_names = list(self.aliases)
            np.savez(
                f,
                addrs=self.addrs,
                sizes=self.sizes,
                is_exec=self.is_exec,
                names=np.frombuffer("\n".join(self.names).encode(), dtype=np.uint8),
                alias_names=np.frombuffer("\n".join(alias_names).encode(), dtype=np.uint8),
                alias_addrs=np.array([self.aliases[n] for n in alias_names], dtype=np.uint64),
            )

    @classmethod
    def load(cls, directory: Path) -> SymbolTable | None:
        path = directory / "symbols.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                names_blob = z["names"].tobytes().decode()
                names = names_blob.split("\n") if names_blob else []
                table = cls(z["addrs"], z["sizes"], names, z["is_exec"])
                blob = z["alias_names"].tobytes().decode()
                table.aliases = dict(
                    zip(blob.split("\n") if blob else [], z["alias_addrs"].tolist(), strict=True)
                )
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable symbol cache %s: %s", path, e)
            return None
        if len(table.names) != len(table.addrs):
            return None
        return table
