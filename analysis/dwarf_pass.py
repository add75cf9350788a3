"""Give every witness frame of an analysis its file:line and inline chain (DWARF).

The rules name frames from symbol tables only (fast, enough for signatures);
this pass resolves just the frames that reach a report, through
``analysis.symbolizer``, with one symbolizer per generation of module loads (a
module reloaded elsewhere needs its own layout).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracedep.analysis.findings import Analysis, Frame, Site
from tracedep.analysis.kaslr import kaslr_offset_of
from tracedep.analysis.nesting import NestingJudge, SourceLines
from tracedep.analysis.symbolizer import ModuleImage, Symbolizer
from tracedep.analysis.trace import Trace
from tracedep.analysis.type_names import HeapNamer
from tracedep.errors import SymbolizerError
from tracedep.kimage.kallsyms import read_file as read_kallsyms_file

log = logging.getLogger(__name__)

# The lock implementation below the API a driver calls (``spin_lock`` and the
# like).  Where spinlocks are inlined (arm64) a probe sits inside it and DWARF
# names a dozen frames of atomics; x86_64 calls ``_raw_spin_lock`` out of line, so
# its chain starts at the API.  Cut there, and both read the same.
_LOCK_INTERNALS = re.compile(r"^(_raw_|__raw_|do_raw_)(spin|read|write)_")


def _trim_lock_internals(chain: list[Frame]) -> list[Frame]:
    """``chain``: one address's frames, innermost first (inlined ones, then the real)."""
    cut = max((i for i, f in enumerate(chain) if f.inlined and _LOCK_INTERNALS.match(f.function)),
              default=-1)
    return chain[cut + 1:] if 0 <= cut < len(chain) - 1 else chain


class _Resolver:
    def __init__(self, trace: Trace, vmlinux: Path | None) -> None:
        self.trace = trace
        self.vmlinux = vmlinux
        self.warnings: list[str] = []
        self._by_key: dict[tuple[str, int], Symbolizer | None] = {}
        info = trace.info
        kas = info.kaslr
        self.kaslr = 0
        if vmlinux is not None and kas is not None and kas.runtime is not None and kas.symbol:
            try:
                self.kaslr = kaslr_offset_of(vmlinux, kas.symbol, kas.runtime)
            except SymbolizerError as e:
                self.warnings.append(str(e))
                self.vmlinux = None
        self.build_dirs = {m.name: (m.build_dir, m.src_dir) for m in info.modules
                           if m.build_dir and m.src_dir}
        kpath = trace.source / "kallsyms.gz" if trace.source.is_dir() else None
        self.kallsyms: list[tuple[int, str, str]] = []
        if kpath is not None and kpath.is_file():
            self.kallsyms = read_kallsyms_file(kpath)

    def _image(self, name: str, gen: int) -> ModuleImage | None:
        """Load ``gen`` of module ``name``, with the sections the symbol spans have: the
        guest's report, or the kernel's own account of a load whose init failed
        (tracer.module_sections), which the manifest's loads lack."""
        # one entry per load, indexed as generation_of() counts them
        by_t0 = {m.t0: (m.sections, m.ko) for m in self.trace.symbols.modules
                 if m.name == name}
        loads = [by_t0[t] for t in sorted(by_t0)]
        if not loads:
            return None
        sections, ko = loads[min(gen, len(loads) - 1)]
        ko = self._debug_ko(ko) or ko
        return ModuleImage(name, ko if ko and ko.is_file() else None, dict(sections))

    def _debug_ko(self, ko: Path | None) -> Path | None:
        """An in-tree module's twin with DWARF from the -dbg package, if extracted."""
        if ko is None or self.vmlinux is None or "/lib/modules/" not in str(ko):
            return None
        rel = str(ko).split("/lib/modules/", 1)[1]
        root = self.vmlinux.parents[1]  # …/usr/lib/debug/boot/vmlinux → …/usr/lib/debug
        cand = root / "lib" / "modules" / rel
        return cand if cand.is_file() else None

    def symbolizer(self, module: str, gen: int) -> Symbolizer | None:
        """The core kernel's, or one module load's: freed init sections of one module
        are reused by the next, so module layouts are never mixed in one symbolizer."""
        key = (module, gen)
        if key not in self._by_key:
            try:
                if module in ("vmlinux", "?"):
                    s = Symbolizer(self.vmlinux, self.kaslr, {},
                                   kallsyms=self.kallsyms or None)
                else:
                    img = self._image(module, gen)
                    s = Symbolizer(None, 0, {module: img} if img else {}, kallsyms=None)
                self.warnings += [w for w in s.warnings if w not in self.warnings]
            except SymbolizerError as e:
                self.warnings.append(str(e))
                s = None
            self._by_key[key] = s
        return self._by_key[key]

    def generation(self, f: Frame, ts: int | None) -> int:
        """Which load of ``f.module`` was live at ``ts`` (0 for the core kernel)."""
        return self.generation_of(f.module, f.address, ts)

    def generation_of(self, module: str, address: int, ts: int | None) -> int:
        if module in ("vmlinux", "?"):
            return 0
        spans = [m for m in self.trace.symbols.modules if m.name == module]
        t0s = sorted({m.t0 for m in spans})
        span = self.trace.symbols._span(address, ts)
        return t0s.index(span.t0) if span is not None and span.t0 in t0s else 0

    def scope(self, module: str, address: int, ts: int | None) -> list[Any]:
        """The DWARF function DIEs holding a code address (analysis.type_names)."""
        s = self.symbolizer(module, self.generation_of(module, address, ts))
        return s.scope(address) if s is not None else []

    def frames(self, frames: tuple[Frame, ...], ts: int | None) -> tuple[Frame, ...]:
        out: list[Frame] = []
        for i, f in enumerate(frames):
            if not f.address or f.inlined:
                out.append(f)
                continue
            s = self.symbolizer(f.module, self.generation(f, ts))
            if s is None:
                out.append(f)
                continue
            # frames below the first are call sites (return address − call size):
            # resolve the call instruction itself, keep its offset
            res = s.resolve(f.address)
            if not res:
                out.append(f)
                continue
            if len(frames) == 1 and f.offset == 0 and len(res) == 1:
                # a function's entry alone (a callback's witness): its declaration
                entry = s.entry_frame(f.address)
                if entry is not None:
                    res = (replace(entry, address=f.address, offset=0),)
            for r in _trim_lock_internals(list(res)):
                out.append(self._source_path(replace(r, address=f.address)
                                             if not r.inlined else r))
            del i
        return tuple(out)

    def _source_path(self, f: Frame) -> Frame:
        """Module sources were built in a cache copy: show the user's own path."""
        m = self.build_dirs.get(f.module)
        if m and f.file and f.file.startswith(m[0] + "/"):
            return replace(f, file=m[1] + f.file[len(m[0]):])
        return f


def symbolize(a: Analysis, trace: Trace, vmlinux: Path | None) -> list[str]:
    """Resolve every witness frame in place; return the warnings to show (each once)."""
    r = _Resolver(trace, vmlinux)

    def site(s: Site) -> Site:
        return replace(s, frames=r.frames(s.frames, s.ts_ns))

    for f in a.findings:
        f.sites = [site(s) for s in f.sites]
    a.edges = [replace(e, witness=site(e.witness),
                       held_witness=site(e.held_witness) if e.held_witness else None)
               for e in a.edges]
    for s in r._by_key.values():
        if s is not None:
            s.save_cache()
    return r.warnings


def heap_namer(trace: Trace, vmlinux: Path | None, r: _Resolver | None = None) -> HeapNamer:
    """Type names for heap lock classes (analysis.type_names), from the DWARF of the
    allocating code: the debug vmlinux and the modules' .ko files."""
    r = r or _Resolver(trace, vmlinux)
    return HeapNamer(r.scope)


def dwarf_aids(trace: Trace, vmlinux: Path | None) -> tuple[NestingJudge, HeapNamer]:
    """The nesting judge and the heap namer of one run, sharing one set of symbolizers
    (a debug vmlinux's DWARF is opened once)."""
    r = _Resolver(trace, vmlinux)
    return nesting_judge(trace, vmlinux, r), heap_namer(trace, vmlinux, r)


def nesting_judge(trace: Trace, vmlinux: Path | None, r: _Resolver | None = None
                  ) -> NestingJudge:
    """A judge of ``*_nested()`` annotations (analysis.nesting) for this run: DWARF from
    the same symbolizers as the witnesses, source from the kernel's tree if the run
    fetched it (``kernel.source_tree`` in the manifest), never downloaded here."""
    r = r or _Resolver(trace, vmlinux)
    tree = trace.info.kernel.source_tree
    roots = [Path(tree)] if tree else []
    return NestingJudge(lambda f, ts: r.frames((f,), ts), SourceLines(roots))
