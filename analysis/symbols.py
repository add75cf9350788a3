"""Names for the runtime addresses of one run: which module, which function or variable.

This is the fast path the rules need (lock classes, signatures, driver
attribution): symbol tables only.  File:line and inline chains for witness
frames come from ``analysis.symbolizer`` at report time.

Core kernel names come from the guest's kallsyms (kept in the run directory,
already at this boot's KASLR addresses); module names from each ``.ko`` symbol
table placed at the section addresses the guest reported.
"""

from __future__ import annotations

import gzip
import logging
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracedep.analysis.elf_symbols import ElfFile, ElfFormatError, SymbolTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sym:
    name: str
    offset: int
    size: int
    module: str  # "vmlinux" or the module's name

    def __str__(self) -> str:
        mod = "" if self.module == "vmlinux" else f" [{self.module}]"
        return f"{self.name}+{self.offset:#x}/{self.size:#x}{mod}"


@dataclass(frozen=True)
class ModuleSpan:
    name: str
    lo: int
    hi: int
    table: SymbolTable | None


def read_kallsyms(text: str) -> list[tuple[int, str, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3:
            try:
                out.append((int(parts[0], 16), parts[1], parts[2]))
            except ValueError:
                continue
    return out


class RunSymbols:
    """``lookup(addr)`` → :class:`Sym` for code and data of the kernel and the traced modules."""

    def __init__(self, kernel: SymbolTable | None, kernel_span: tuple[int, int],
                 modules: list[ModuleSpan]) -> None:
        self.kernel = kernel
        self.kernel_span = kernel_span
        self.modules = sorted(modules, key=lambda m: m.lo)
        self._mod_lo = [m.lo for m in self.modules]
        self.warnings: list[str] = []
        self._cache: dict[int, Sym | None] = {}

    def module_of(self, addr: int) -> str | None:
        i = bisect_right(self._mod_lo, addr) - 1
        if i >= 0 and addr < self.modules[i].hi:
            return self.modules[i].name
        lo, hi = self.kernel_span
        if lo <= addr < hi:
            return "vmlinux"
        return None

    def lookup(self, addr: int) -> Sym | None:
        if addr in self._cache:
            return self._cache[addr]
        res: Sym | None = None
        i = bisect_right(self._mod_lo, addr) - 1
        if i >= 0 and addr < self.modules[i].hi:
            m = self.modules[i]
            hit = m.table.lookup(addr) if m.table else None
            res = Sym(hit[0], addr - hit[1], hit[2], m.name) if hit else Sym(
                f"[{m.name}]", addr - m.lo, 0, m.name)
        elif self.kernel is not None:
            lo, hi = self.kernel_span
            if lo <= addr < hi:
                hit = self.kernel.lookup(addr)
                if hit:
                    res = Sym(hit[0], addr - hit[1], hit[2], "vmlinux")
        self._cache[addr] = res
        return res

    def function(self, addr: int) -> str:
        s = self.lookup(addr)
        return s.name if s else f"{addr:#x}"

    @classmethod
    def for_run(cls, run_dir: Path, info: dict[str, Any]) -> RunSymbols:
        kernel: SymbolTable | None = None
        span = (0, 0)
        warnings = []
        kpath = run_dir / "kallsyms.gz"
        if kpath.is_file():
            with gzip.open(kpath, "rt") as fh:
                entries = read_kallsyms(fh.read())
            kernel = SymbolTable.from_kallsyms(entries)
            span = kernel.bounds()
        else:
            warnings.append("no kallsyms in the run directory: core-kernel addresses unnamed")
        mods: list[ModuleSpan] = []
        for m in _module_records(info):
            sections: dict[str, int] = m.get("sections") or {}
            if not sections:
                continue
            table = None
            sizes: dict[str, int] = {}
            ko = Path(m["ko"]) if m.get("ko") else None
            if ko is not None and ko.is_file():
                try:
                    elf = ElfFile(ko)
                    bases = {s.index: sections[s.name] for s in elf.sections
                             if s.name in sections}
                    table = SymbolTable.from_elf(elf, bases)
                    sizes = {s.name: s.size for s in elf.sections if s.alloc}
                except (OSError, ElfFormatError) as e:
                    warnings.append(f"{ko}: {e}")
            elif m.get("ko"):
                warnings.append(f"module {m['name']}: {m['ko']} is missing; "
                                "its functions are unnamed")
            if sizes:
                # one span per section: a module's init and core allocations lie apart
                for sec, addr in sections.items():
                    if sizes.get(sec):
                        mods.append(ModuleSpan(m["name"], addr, addr + sizes[sec], table))
            elif m.get("base") and m.get("size"):
                # no .ko here: the core allocation /proc/modules reported
                mods.append(ModuleSpan(m["name"], int(m["base"]),
                                       int(m["base"]) + int(m["size"]), None))
        out = cls(kernel, span, mods)
        out.warnings = warnings
        return out


def _module_records(info: dict[str, Any]) -> list[dict[str, Any]]:
    return list(info.get("modules", [])) + [
        {"name": n, **v} for n, v in (info.get("other_modules") or {}).items()]
