"""Symbols of a text trace: what the text printed (``name+0x73/0x10f [mod] <addr>``),
the machine's kallsyms when one is given, and the addresses and frames made of them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracedep.analysis.findings import Frame
from tracedep.analysis.run_symbols import ModuleSpan, RunSymbols
from tracedep.analysis.text_values import HEX
from tracedep.errors import InputError, TraceFormatError
from tracedep.kimage.elf_symbols import SymbolTable, is_mapping_or_local_label
from tracedep.kimage.kallsyms import read_file as read_kallsyms_file

# one printed symbol: name[+0xoff/0xsize][ [module]][ <addr>], or a raw 0x address
_SYM = re.compile(
    r"^(?P<name>[^\s<]+?)(?:\+0x(?P<off>[0-9a-f]+)/0x(?P<size>[0-9a-f]+))?"
    r"(?: \[(?P<mod>[^\]\s]+)\])?(?: <(?P<addr>[0-9a-f]+)>)?$")
_ADDR_ONLY = re.compile(r"^<(?P<addr>[0-9a-f]+)>$")

_TEXT_CLUSTER_GAP = 0x10000  # module symbols further apart than this are separate allocations


@dataclass(frozen=True)
class TextSym:
    """One symbol as the text printed it; any part may be missing."""

    name: str | None
    off: int | None = None
    size: int | None = None
    module: str | None = None
    addr: int | None = None  # the printed address (sym-addr, or a raw 0x… address)

    @property
    def start(self) -> int | None:
        """Start of the symbol, when both its address and offset were printed."""
        if self.addr is None or self.off is None or self.name is None:
            return None
        return self.addr - self.off


def parse_sym(text: str) -> TextSym:
    """``td_x+0x73/0x10f [td_mod] <ffffffffc052f173>`` → :class:`TextSym` (any part optional)."""
    text = text.strip()
    m = _ADDR_ONLY.match(text)
    if m:
        return TextSym(None, addr=int(m.group("addr"), 16))
    m = _SYM.match(text)
    if m is None:
        return TextSym(text or None)
    name = m.group("name")
    addr = int(m.group("addr"), 16) if m.group("addr") else None
    if name.startswith("0x") and HEX.match(name):  # the kernel could not name it
        raw = int(name, 16)
        return TextSym(None, addr=addr if addr is not None else raw)
    if name == "0" and m.group("off") is None:  # seq_print_ip_sym of a NULL ip
        return TextSym(None, addr=0)
    off = int(m.group("off"), 16) if m.group("off") else None
    size = int(m.group("size"), 16) if m.group("size") else None
    return TextSym(name, off, size, m.group("mod"), addr)



def read_kallsyms(path: Path) -> list[tuple[int, str, str]]:
    try:
        entries = read_kallsyms_file(path)
    except TraceFormatError as e:
        raise InputError(f"--kallsyms {e}") from None
    if not entries:
        raise InputError(f"--kallsyms {path}: no symbols (not a /proc/kallsyms copy)")
    if not any(a for a, _, _ in entries):
        raise InputError(f"--kallsyms {path}: every address is 0 (kallsyms read without "
                         "root or with kptr_restrict set); copy it as root")
    return entries


@dataclass
class _SymEntry:
    addr: int
    name: str
    module: str  # "vmlinux" or the module
    is_exec: bool
    end: int  # 0 when unknown


def _entries(kallsyms: list[tuple[int, str, str]], printed: list[TextSym]) -> list[_SymEntry]:
    out: list[_SymEntry] = []
    for addr, typ, name in kallsyms:
        if addr == 0 or typ in "aAuUnN" or not name:
            continue
        base, _, mod = name.partition("\t")
        base = base.split(" ", 1)[0]
        if is_mapping_or_local_label(base):
            continue
        module = mod.strip().strip("[]") if mod.strip().startswith("[") else "vmlinux"
        out.append(_SymEntry(addr, base, module, typ in "tTwW", 0))
    known = {(e.addr, e.name) for e in out}
    for s in printed:
        start = s.start
        assert start is not None and s.name is not None and s.size is not None
        if (start, s.name) in known:
            continue
        known.add((start, s.name))
        out.append(_SymEntry(start, s.name, s.module or "vmlinux", True, start + s.size))
    return out


def _table(entries: list[_SymEntry]) -> SymbolTable:
    return SymbolTable.from_arrays(
        np.array([e.addr for e in entries], dtype=np.uint64), [e.name for e in entries],
        np.zeros(len(entries), dtype=bool), np.array([e.is_exec for e in entries], dtype=bool),
        np.array([e.end for e in entries], dtype=np.uint64))


def build_symbols(kallsyms: list[tuple[int, str, str]], printed: list[TextSym]
                  ) -> tuple[RunSymbols, dict[str, SymbolTable]]:
    """RunSymbols for a text trace: the core kernel and one span per allocation of each
    module, from kallsyms (``[module]``-tagged lines) and the symbols the text placed."""
    entries = _entries(kallsyms, printed)
    by_mod: dict[str, list[_SymEntry]] = {}
    for e in entries:
        by_mod.setdefault(e.module, []).append(e)
    core = by_mod.pop("vmlinux", [])
    kernel = _table(core) if core else None
    span = kernel.bounds() if kernel is not None else (0, 0)
    tables: dict[str, SymbolTable] = {}
    spans: list[ModuleSpan] = []
    for mod, ents in sorted(by_mod.items()):
        ents.sort(key=lambda e: e.addr)
        # one cluster per allocation (core, init): a module's pages are its own
        clusters: list[list[_SymEntry]] = [[ents[0]]]
        for e in ents[1:]:
            last = clusters[-1][-1]
            if e.addr - max(last.addr, last.end) > _TEXT_CLUSTER_GAP:
                clusters.append([e])
            else:
                clusters[-1].append(e)
        for cl in clusters:
            top = max(max(e.addr for e in cl) + 1, max(e.end for e in cl))
            page_end = (top + 0xFFF) & ~0xFFF
            for e in cl:
                if not e.end:
                    e.end = page_end
        table = _table(ents)
        tables[mod] = table
        for cl in clusters:
            # module memory is page-granular: the pages holding its symbols are its own
            lo = min(e.addr for e in cl) & ~0xFFF
            hi = max(e.end for e in cl)
            spans.append(ModuleSpan(mod, lo, hi, table))
    if kernel is not None:
        tables["vmlinux"] = kernel
    return RunSymbols(kernel, span, spans), tables


def resolve_sym(s: TextSym, tables: dict[str, SymbolTable]) -> int | None:
    """The address a printed symbol stands for (its start + offset), if exactly one fits."""
    if s.addr is not None:
        return s.addr
    if s.name is None:
        return None
    mods = [s.module or "vmlinux"] if s.module or s.off is not None else list(tables)
    cands: set[int] = set()
    for mod in mods:
        t = tables.get(mod)
        if t is None:
            continue
        for a in t.addresses_of(s.name):
            hit = t.lookup(a)
            if s.size is not None and hit is not None and hit[2] and hit[2] != s.size:
                continue
            cands.add(a)
    if len(cands) != 1:
        return None
    return cands.pop() + (s.off or 0)


def guess_arch(kallsyms: list[tuple[int, str, str]], code: list[int]) -> tuple[str, bool]:
    """(arch, guessed): from kallsyms' syscall wrappers, else from code addresses."""
    for _, _, name in kallsyms:
        if name.startswith("__arm64_sys_"):
            return "arm64", False
        if name.startswith("__x64_sys_"):
            return "x86_64", False
    x86 = sum(1 for a in code if a >= 0xFFFFFFFF80000000)
    arm = sum(1 for a in code if 0xFFFF000000000000 <= a < 0xFFFFFFFF00000000)
    if arm > x86:
        return "arm64", not code
    return "x86_64", not code



def _module_guess(name: str, name_module: dict[str, set[str]],
                  tables: dict[str, SymbolTable] | None = None) -> str:
    mods = name_module.get(name, set())
    if len(mods) == 1:
        return next(iter(mods))
    if tables:
        hits = [m for m, t in tables.items() if t.addresses_of(name)]
        if len(hits) == 1:
            return hits[0]
    return "?"


def site_frame(s: TextSym, adjust: int, name_module: dict[str, set[str]]) -> Frame:
    """The witness frame of a call site known by name only (``ip`` 0)."""
    assert s.name is not None
    off = max((s.off or 0) + adjust, 0) if s.off is not None else 0
    mod = s.module or (_module_guess(s.name, name_module) if s.off is None else "vmlinux")
    return Frame(function=s.name, offset=off, size=s.size or 0, module=mod, address=0)


def stack_frame(s: TextSym, addr: int | None, symbols: RunSymbols,
                 name_module: dict[str, set[str]], tables: dict[str, SymbolTable]) -> Frame:
    """A raw stack entry (a return address, as ftrace recorded it) as a frame."""
    if s.name is None:
        a = addr or s.addr or 0
        hit = symbols.lookup(a) if a else None
        if hit is not None:
            return Frame(hit.name, hit.offset, hit.size, hit.module, address=a)
        return Frame(f"{a:#x}", module=symbols.module_of(a) or "?", address=a)
    mod = s.module
    if mod is None:
        if s.off is not None:
            mod = "vmlinux"  # sym-offset prints [module] for module code
        else:
            mod = _module_guess(s.name, name_module, tables)
    return Frame(s.name, s.off or 0, s.size or 0, mod, address=addr or 0)
