"""Names for the runtime addresses of one run: which module, which function or variable.

This is the fast path the rules need (lock classes, signatures, driver
attribution): symbol tables only.  File:line and inline chains for witness
frames come from ``analysis.symbolizer`` at report time.

Core kernel names come from the guest's kallsyms (kept in the run directory,
already at this boot's KASLR addresses); module names from each ``.ko`` symbol
table placed at the section addresses the guest reported.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracedep.common.run_manifest import Load, RunManifest
from tracedep.errors import TraceFormatError
from tracedep.kimage import kallsyms
from tracedep.kimage.elf_symbols import ElfFile, ElfFormatError, SymbolTable
from tracedep.tracer.module_sections import load_sections

if TYPE_CHECKING:
    from tracedep.tracer.module_sections import KernelLoad

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
    """One section of one load of a module, alive from ``t0`` until ``t1`` (trace ns)."""

    name: str
    lo: int
    hi: int
    table: SymbolTable | None
    t0: int = -(1 << 62)
    t1: int = 1 << 62
    ko: Path | None = None  # for DWARF names
    sections: tuple[tuple[str, int], ...] = ()


class RunSymbols:
    """``lookup(addr, ts)`` → :class:`Sym` for code and data of the kernel and the traced modules.

    Modules unloaded during the run free their addresses for the next module, so
    a module address means different things at different times: pass the event's
    timestamp where one is known.
    """

    def __init__(self, kernel: SymbolTable | None, kernel_span: tuple[int, int],
                 modules: list[ModuleSpan]) -> None:
        self.kernel = kernel
        self.kernel_span = kernel_span
        self.modules = sorted(modules, key=lambda m: m.lo)
        self._mod_lo = [m.lo for m in self.modules]
        self._max_hi: list[int] = []
        hi = 0
        for m in self.modules:
            hi = max(hi, m.hi)
            self._max_hi.append(hi)
        self.warnings: list[str] = []
        self._cache: dict[tuple[int, int], Sym | None] = {}
        self._src_cache: dict[tuple[int, int], Any] = {}
        self._symbolizers: dict[tuple[str, int], Any] = {}

    def _span(self, addr: int, ts: int | None) -> ModuleSpan | None:
        i = bisect_right(self._mod_lo, addr) - 1
        cands = []
        while i >= 0 and self._max_hi[i] > addr:
            m = self.modules[i]
            if m.lo <= addr < m.hi:
                cands.append(m)
            i -= 1
        if len(cands) <= 1 or ts is None:
            return max(cands, key=lambda m: m.t0) if cands else None
        live = [m for m in cands if m.t0 <= ts < m.t1]
        if live:
            return max(live, key=lambda m: m.t0)
        before = [m for m in cands if m.t0 <= ts]
        return max(before, key=lambda m: m.t0) if before else min(cands, key=lambda m: m.t0)

    def module_of(self, addr: int, ts: int | None = None) -> str | None:
        m = self._span(addr, ts)
        if m is not None:
            return m.name
        lo, hi = self.kernel_span
        if lo <= addr < hi:
            return "vmlinux"
        return None

    def epoch(self, addr: int, ts: int | None = None) -> int:
        """Which load of its module ``addr`` is in at ``ts`` (its load time; 0 for the
        kernel): an address means one thing within one epoch."""
        m = self._span(addr, ts)
        return m.t0 if m is not None else 0

    def lookup(self, addr: int, ts: int | None = None) -> Sym | None:
        m = self._span(addr, ts)
        key = (addr, m.t0 if m is not None else 0)
        if key in self._cache:
            return self._cache[key]
        res: Sym | None = None
        if m is not None:
            hit = m.table.lookup(addr) if m.table else None
            res = Sym(hit[0], addr - hit[1], hit[2], m.name) if hit else Sym(
                f"[{m.name}]", addr - m.lo, 0, m.name)
        elif self.kernel is not None:
            lo, hi = self.kernel_span
            if lo <= addr < hi:
                hit = self.kernel.lookup(addr)
                if hit:
                    res = Sym(hit[0], addr - hit[1], hit[2], "vmlinux")
        self._cache[key] = res
        return res

    def source_location(self, addr: int, ts: int | None = None) -> tuple[str, int] | None:
        """(file, line) of the driver's own code at a module address (DWARF)."""
        fr = self._own_frame(addr, ts)
        return (fr.file, fr.line) if fr is not None and fr.file and fr.line else None

    def source_function(self, addr: int, ts: int | None = None) -> str | None:
        """The innermost source function at a module address, inlined or not (DWARF).

        Signatures and class names use it for module code: it does not depend on
        what the compiler chose to inline, so one driver gives the same names on
        every architecture.  None for the core kernel or without DWARF.
        """
        fr = self._own_frame(addr, ts)
        return fr.function if fr is not None else None

    def _own_frame(self, addr: int, ts: int | None) -> Any:
        m = self._span(addr, ts)
        if m is None or m.ko is None:
            return None
        key = (addr, m.t0)
        if key in self._src_cache:
            return self._src_cache[key]
        sym = self._module_symbolizer(m)
        own_frame = None
        if sym is not None:
            try:
                frames = sym.resolve(addr)
            except Exception:  # a DWARF problem costs the name, never the run
                frames = ()
            # skip the kernel's header inlines (kmalloc, spin_lock…): the name is
            # the driver's own function around them
            own = [f for f in frames if f.file and not f.file.startswith(("include/", "arch/"))]
            if own:
                own_frame = own[0]
        self._src_cache[key] = own_frame
        return own_frame

    def _module_symbolizer(self, m: ModuleSpan) -> Any:
        from tracedep.analysis.symbolizer import ModuleImage, Symbolizer

        k = (m.name, m.t0)
        if k not in self._symbolizers:
            quiet = logging.getLogger("tracedep.analysis.symbolizer")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # "no vmlinux": by design, modules only here
            try:
                self._symbolizers[k] = Symbolizer(
                    None, 0, {m.name: ModuleImage(m.name, m.ko, dict(m.sections))},
                    use_cache=False)
            except Exception as e:
                self.warnings.append(f"{m.ko}: no DWARF names ({e})")
                self._symbolizers[k] = None
            finally:
                quiet.setLevel(level)
        return self._symbolizers[k]

    def function(self, addr: int) -> str:
        s = self.lookup(addr)
        return s.name if s else f"{addr:#x}"

    @classmethod
    def for_run(cls, run_dir: Path, info: RunManifest,
                load_times: dict[str, list[tuple[int, int]]] | None = None,
                kernel_loads: list[KernelLoad] | None = None) -> RunSymbols:
        """``load_times``: per module, the (load, free) trace times of each load, from
        the module_load/module_free events (loads before tracing have none).
        ``kernel_loads``: the sections of each load as the kernel placed them
        (tracer.module_sections), where the run had those probes."""
        by_kernel: dict[str, list[KernelLoad]] = {}
        for kl in kernel_loads or []:
            by_kernel.setdefault(kl.name, []).append(kl)
        kernel: SymbolTable | None = None
        span = (0, 0)
        warnings = []
        kpath = run_dir / "kallsyms.gz"
        if kpath.is_file():
            entries = kallsyms.read_file(kpath)
            if not entries:
                raise TraceFormatError(f"{kpath}: no symbols in it")
            kernel = SymbolTable.from_kallsyms(entries)
            span = kernel.bounds()
        else:
            warnings.append("no kallsyms in the run directory: core-kernel addresses unnamed")
        mods: list[ModuleSpan] = []
        all_loads = sorted(t for ts in (load_times or {}).values() for t, _ in ts)
        for m in info.module_records:
            ko = Path(m.ko) if m.ko else None
            elf = None
            if ko is not None and ko.is_file():
                try:
                    elf = ElfFile(ko)
                except (OSError, ElfFormatError) as e:
                    warnings.append(f"{ko}: {e}")
            elif m.ko:
                warnings.append(f"module {m.name}: {m.ko} is missing; "
                                "its functions are unnamed")
            times = (load_times or {}).get(m.name, [])
            for t0, t1, load in load_sections(m.loads, times, by_kernel.get(m.name, [])):
                mods += _load_spans(m.name, load, elf, t0, t1, all_loads)
        out = cls(kernel, span, mods)
        out.warnings = warnings
        return out


def _load_spans(name: str, load: Load, elf: ElfFile | None, t0: int, t1: int,
                all_loads: list[int]) -> list[ModuleSpan]:
    sections = load.sections
    if elf is not None and sections:
        bases = {s.index: sections[s.name] for s in elf.sections if s.name in sections}
        # lock classes are named from this table: no empty struct may name a lock
        table = SymbolTable.from_elf(elf, bases, drop_empty_objects=True)
        secs = tuple(sorted(sections.items()))
        # .init sections are freed once the module's init returns, and their
        # addresses are reused (by the next module, by ftrace trampolines): they
        # live until the next module load at most, and not at all for a module
        # loaded before tracing began
        i = bisect_right(all_loads, t0)
        init_end = all_loads[i] if i < len(all_loads) else t1
        spans = []
        for s in elf.sections:
            if not (s.alloc and s.size and s.name in sections):
                continue
            if s.name.startswith(".init"):
                if t0 == -(1 << 62):
                    continue
                end = min(t1, init_end)
            else:
                end = t1
            spans.append(ModuleSpan(name, sections[s.name], sections[s.name] + s.size, table,
                                    t0, end, elf.path, secs))
        return spans
    if load.base and load.size:
        # no .ko here: the core allocation /proc/modules reported
        return [ModuleSpan(name, load.base, load.base + load.size, None, t0, t1)]
    return []

