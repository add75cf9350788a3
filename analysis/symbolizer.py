"""Runtime kernel addresses → frames that read like ``scripts/decode_stacktrace.sh``.

A frame is ``function+0x1c/0x80 [module] file:line`` with the functions inlined
at that address listed before it, innermost first, exactly in the order
``addr2line -f -i`` prints them.

Address spaces: the core kernel is resolved at its link-time address
(runtime − ``kaslr_offset``, checked against kallsyms, never trusted blindly);
a module address is mapped through the runtime address of the section that
contains it (every section, not only ``.text``: GCC puts init-only code in
``.text.unlikely``) to an offset in that section of the ``.ko``.

Names and sizes follow kallsyms (``func+off/size`` as the kernel itself prints
it; ``foo.cold``, ``foo.constprop.0`` included); file:line and inline chains
follow binutils' addr2line, paths relative to the source tree as
decode_stacktrace.sh shows them.  With ``style="addr2line"`` names and paths
are what ``addr2line -f -i`` prints (DWARF function names, addr2line's path
joining), which the agreement test relies on — except where binutils 2.40 is
wrong (it starts DWARF 5 line sequences at file 0; see dwarf_lines).

Without a usable .ko a module address reads ``.text+0x1c [mod]``: the section
and offset that ``addr2line -j .text -e mod.ko 0x1c`` decodes later.

Return addresses (``call_site=True``) are resolved as the kernel's ``%pB``
does: everything is looked up at ``addr - 1`` (so a call at the very end of a
function stays in that function, and file:line is the call's, not the next
statement's), but the reported offset is that of the return address, so
``func+0x1c/0x80`` is what a kernel backtrace of the same frame shows.

Exceptions: :class:`SymbolizerError` (an :class:`~tracedep.errors.InputError`)
for a KASLR offset that does not match the vmlinux.  Everything else that is
wrong with the inputs (stripped vmlinux, build-id mismatch, missing .ko) is
said once in :attr:`Symbolizer.warnings` and degrades the answer, never to a
wrong one.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tracedep.analysis.findings import Frame
from tracedep.analysis.kaslr import kaslr_samples, verify_offset
from tracedep.common.cache import cache_dir as cache_dir_named
from tracedep.common.files import atomic_write
from tracedep.errors import DwarfError
from tracedep.kimage.dwarf_index import DwarfIndex, SourceFrame
from tracedep.kimage.elf_symbols import ElfFile, ElfFormatError, SymbolTable
from tracedep.kimage.ko_layout import layout_sections

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
Style = Literal["kernel", "addr2line"]
# A cached answer: (function, offset from the looked-up address's symbol start
# or -1 for inlined, size, file, line, inlined) per frame.
_Proto = tuple[tuple[str, int, int, str | None, int | None, bool], ...]


@dataclass(frozen=True)
class ModuleImage:
    """A loaded module: its debug .ko (None if unavailable) and where its sections are.

    ``sections`` maps section names to runtime addresses as
    ``/sys/module/<name>/sections/*`` reports them.  ``build_id`` is the one the
    guest reports in ``/sys/module/<name>/notes/.note.gnu.build-id``, if known.
    """

    name: str
    ko_path: Path | None
    sections: dict[str, int]
    build_id: str | None = None


def _hexkey(addr: int) -> str:
    return f"{addr:x}"


class _Object:
    """One ELF image (vmlinux or a .ko): symbols, lazily its DWARF, and its answer cache."""

    def __init__(
        self,
        name: str,
        elf: ElfFile,
        bases: dict[int, int] | None,
        symbols: SymbolTable | None,
        cache_dir: Path | None,
        style: Style,
    ) -> None:
        self.name = name
        self.elf = elf
        self.bases = bases
        self.symbols = symbols
        self.has_dwarf = elf.has_section(".debug_info") and elf.has_section(".debug_line")
        self._dwarf: DwarfIndex | None = None
        self._dwarf_failed = False
        self.cache_path = (
            cache_dir / elf.cache_key() / f"resolved-v{CACHE_FORMAT}-{style}.json"
            if cache_dir is not None
            else None
        )
        self._cache: dict[str, _Proto] | None = None
        self.dirty = False

    def dwarf(self) -> DwarfIndex | None:
        if self._dwarf is None and self.has_dwarf and not self._dwarf_failed:
            try:
                self._dwarf = DwarfIndex(self.elf, self.bases)
            except (DwarfError, ElfFormatError) as e:
                self._dwarf_failed = True
                raise DwarfError(str(e)) from e
        return self._dwarf

    def cached(self, key: int) -> _Proto | None:
        if self._cache is None:
            self._cache = {}
            if self.cache_path is not None and self.cache_path.is_file():
                try:
                    raw = json.loads(self.cache_path.read_text())
                    self._cache = {k: tuple(tuple(f) for f in v) for k, v in raw.items()}
                except (OSError, ValueError) as e:
                    log.warning("ignoring unreadable cache %s: %s", self.cache_path, e)
        return self._cache.get(_hexkey(key))

    def remember(self, key: int, proto: _Proto) -> None:
        if self._cache is None:
            self.cached(key)
        assert self._cache is not None
        self._cache[_hexkey(key)] = proto
        self.dirty = True

    def save(self) -> None:
        if not self.dirty or self.cache_path is None or self._cache is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_path, json.dumps(self._cache, separators=(",", ":")),
                         fsync=False)
            self.dirty = False
        except OSError as e:
            log.warning("cannot write symbol cache %s: %s", self.cache_path, e)


@dataclass
class _ModuleMap:
    """Runtime section ranges of one module."""

    image: ModuleImage
    # (runtime start, runtime end, section name, section index or -1)
    ranges: list[tuple[int, int, str, int]] = field(default_factory=list)
    obj: _Object | None = None
    kallsyms: SymbolTable | None = None


class Symbolizer:
    """Resolves runtime addresses of a kernel and its modules to :class:`Frame` tuples.

    ``vmlinux`` is the debug vmlinux (None if unavailable), ``kaslr_offset`` its
    runtime − link-time displacement, ``modules`` the loaded modules by name,
    ``kallsyms`` the guest's /proc/kallsyms as (address, type, name), a module
    symbol's name optionally followed by ``\t[module]`` — used to verify the
    KASLR offset and as the names of last resort.  ``vmlinux_build_id``
    is the running kernel's build-id (/sys/kernel/notes), if known.
    ``style="kernel"`` gives kallsyms names and source-tree-relative paths;
    ``"addr2line"`` gives exactly what ``addr2line -f -i`` prints.
    """

    def __init__(
        self,
        vmlinux: Path | None,
        kaslr_offset: int,
        modules: dict[str, ModuleImage],
        cache_dir: Path | None = None,
        kallsyms: list[tuple[int, str, str]] | None = None,
        *,
        vmlinux_build_id: str | None = None,
        style: Style = "kernel",
        use_cache: bool = True,
    ) -> None:
        self.kaslr_offset = kaslr_offset
        self.style: Style = style
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._cache_dir = ((cache_dir or cache_dir_named("symbols")).expanduser()
                           if use_cache else None)
        self._core: _Object | None = None
        self._core_range: tuple[int, int] | None = None  # link-time
        self._core_kallsyms: SymbolTable | None = None
        self._modules: list[_ModuleMap] = []

        module_ks, core_ks = self._split_kallsyms(kallsyms or [], modules)
        if core_ks:
            self._core_kallsyms = SymbolTable.from_kallsyms(core_ks)
        if vmlinux is not None:
            self._core = self._open_vmlinux(Path(vmlinux), vmlinux_build_id)
        elif core_ks:  # a module-only symbolizer has no core addresses to resolve
            self._warn("no vmlinux given: core-kernel addresses resolve from kallsyms only")
        if self._core is not None and self._core.symbols is not None:
            if core_ks:
                samples = kaslr_samples(core_ks)
                verify_offset(self._core.symbols, kaslr_offset, samples, self._core.elf.path)
            else:
                self._warn("KASLR offset not verified: no kallsyms given")
            self._core_range = self._core.symbols.bounds()
        for image in modules.values():
            self._modules.append(self._open_module(image, module_ks.get(image.name, [])))

    # -- setup ----------------------------------------------------------------------

    def _warn(self, msg: str, key: str | None = None) -> None:
        """Say ``msg`` once; ``key`` groups messages that differ only in detail."""
        key = key or msg
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(msg)
            log.warning("%s", msg)

    @staticmethod
    def _split_kallsyms(
        kallsyms: list[tuple[int, str, str]],
        modules: dict[str, ModuleImage],
    ) -> tuple[dict[str, list[tuple[int, str, str]]], list[tuple[int, str, str]]]:
        """Module symbols and core ones.

        A module symbol is known by the ``[mod]`` tag /proc/kallsyms prints after
        its name or, untagged, by lying within 1 MiB after one of the module's
        section starts (modules live far from the core kernel on every arch).
        """
        starts = sorted((a, m.name) for m in modules.values() for a in m.sections.values())
        keys = [a for a, _ in starts]
        per_mod: dict[str, list[tuple[int, str, str]]] = {}
        core: list[tuple[int, str, str]] = []
        for addr, typ, name in kallsyms:
            mod = None
            if "[" in name:
                base, _, tag = name.partition("[")
                mod = tag.rstrip("]").strip()
                name = base.strip()
            elif starts:
                i = bisect_right(keys, addr) - 1
                if i >= 0 and addr - keys[i] < (1 << 20):
                    mod = starts[i][1]
            if mod:
                per_mod.setdefault(mod, []).append((addr, typ, name))
            else:
                core.append((addr, typ, name))
        return per_mod, core

    def _open_vmlinux(self, path: Path, expected_build_id: str | None) -> _Object | None:
        try:
            elf = ElfFile(path)
        except (OSError, ElfFormatError) as e:
            self._warn(f"cannot read vmlinux {path}: {e}")
            return None
        if expected_build_id and elf.build_id and elf.build_id != expected_build_id.lower():
            self._warn(
                f"vmlinux {path} has build-id {elf.build_id}, the running kernel "
                f"{expected_build_id}: ignoring it"
            )
            elf.close()
            return None
        cache = self._cache_dir / elf.cache_key() if self._cache_dir else None
        symbols = SymbolTable.load(cache) if cache else None
        if symbols is None:
            symbols = SymbolTable.from_elf(elf)
            if symbols is not None and cache is not None:
                try:
                    symbols.save(cache)
                except OSError as e:
                    log.warning("cannot write symbol cache %s: %s", cache, e)
        obj = _Object("vmlinux", elf, None, symbols, self._cache_dir, self.style)
        if symbols is None:
            self._warn(
                f"vmlinux {path} has no symbol table (stripped): names from "
                + ("kallsyms" if self._core_kallsyms else "nowhere")
            )
        if not obj.has_dwarf:
            self._warn(f"vmlinux {path} has no DWARF: no file:line or inline frames")
        return obj

    def _open_module(self, image: ModuleImage, ks: list[tuple[int, str, str]]) -> _ModuleMap:
        mm = _ModuleMap(image)
        if ks:
            mm.kallsyms = SymbolTable.from_kallsyms(ks)
        elf: ElfFile | None = None
        if image.ko_path is None:
            self._warn(
                f"module {image.name}: no .ko given: "
                + ("names from kallsyms" if ks else "addresses stay section+offset")
            )
        else:
            try:
                elf = ElfFile(Path(image.ko_path))
            except (OSError, ElfFormatError) as e:
                self._warn(f"module {image.name}: cannot read {image.ko_path}: {e}")
        if (
            elf is not None
            and image.build_id
            and elf.build_id
            and elf.build_id != image.build_id.lower()
        ):
            self._warn(
                f"module {image.name}: {image.ko_path} has build-id {elf.build_id}, "
                f"the loaded module {image.build_id}: ignoring it"
            )
            elf.close()
            elf = None
        if elf is not None:
            bases = layout_sections(elf)
            symbols = SymbolTable.from_elf(elf, bases, first_alias=True)
            mm.obj = _Object(image.name, elf, bases, symbols, self._cache_dir, self.style)
            if symbols is None:
                self._warn(f"module {image.name}: {image.ko_path} has no symbol table")
            if not mm.obj.has_dwarf:
                self._warn(f"module {image.name}: {image.ko_path} has no DWARF")
            for sec_name, start in image.sections.items():
                sec = elf.by_name.get(sec_name)
                if sec is None or not sec.alloc:
                    continue
                mm.ranges.append((start, start + max(sec.size, 1), sec_name, sec.index))
        else:
            # Without the .ko the section sizes are unknown: a section is taken
            # to run to the next known section start, at most 1 MiB.
            starts = sorted((a, n) for n, a in image.sections.items())
            for i, (start, name) in enumerate(starts):
                end = starts[i + 1][0] if i + 1 < len(starts) else start + (1 << 20)
                mm.ranges.append((start, min(end, start + (1 << 20)), name, -1))
        return mm

    # -- lookup ---------------------------------------------------------------------

    def resolve(self, runtime_addr: int, call_site: bool = False) -> tuple[Frame, ...]:
        """Frames for one address, inlined ones first (innermost first), the real
        function last.  ``call_site``: the address is a return address (see module doc)."""
        look = runtime_addr - 1 if call_site else runtime_addr
        bump = 1 if call_site else 0
        for mm in self._modules:
            for start, end, sec_name, sec_idx in mm.ranges:
                if start <= look < end:
                    return self._resolve_module(
                        mm, runtime_addr, look, bump, start, sec_name, sec_idx
                    )
        return self._resolve_core(runtime_addr, look, bump)

    def resolve_many(
        self,
        addrs: Iterable[int],
        call_site: bool = False,
    ) -> dict[int, tuple[Frame, ...]]:
        """:meth:`resolve` for many addresses (each once); the disk cache is saved after."""
        out: dict[int, tuple[Frame, ...]] = {}
        for a in sorted(set(addrs)):
            out[a] = self.resolve(a, call_site)
        self.save_cache()
        return out

    def save_cache(self) -> None:
        """Write newly resolved addresses to the on-disk cache."""
        if self._core is not None:
            self._core.save()
        for mm in self._modules:
            if mm.obj is not None:
                mm.obj.save()

    def _resolve_core(self, addr: int, look: int, bump: int) -> tuple[Frame, ...]:
        link = look - self.kaslr_offset
        core = self._core
        if core is not None:
            if core.symbols is not None:
                lo, hi = self._core_range or (0, 0)
                if lo <= link < hi:
                    return self._from_object(core, "vmlinux", addr, link, bump)
            elif self._core_kallsyms is None:
                # No symbol table and no kallsyms: DWARF may still name the function.
                return self._from_object(core, "vmlinux", addr, link, bump)
        if self._core_kallsyms is not None:
            hit = self._core_kallsyms.lookup(look)
            if hit is not None:
                name, start, size = hit
                # A vmlinux without .symtab may still have DWARF for file:line.
                dwarf: tuple[Frame, ...] = ()
                if core is not None and core.symbols is None:
                    dwarf = self._from_object(core, "vmlinux", addr, link, bump)
                file = dwarf[-1].file if dwarf else None
                line = dwarf[-1].line if dwarf else None
                last = Frame(name, look - start + bump, size, "vmlinux", file, line, False, addr)
                return (*dwarf[:-1], last)
        if core is None and self._core_kallsyms is None:
            return (Frame("[vmlinux]", link + bump, 0, "vmlinux", None, None, False, addr),)
        self._warn(
            f"some addresses are outside vmlinux and every known module (first: {addr:#x})",
            key="outside",
        )
        return (Frame("??", 0, 0, "??", None, None, False, addr),)

    def scope(self, runtime_addr: int) -> list[Any]:
        """The DWARF function DIEs (outermost first, as ``DwarfIndex.scope_at``) that
        hold a code address; empty without DWARF.  For reading the variables in scope."""
        obj, key = self._object_key(runtime_addr)
        if obj is None:
            return []
        try:
            dwarf = obj.dwarf()
            return dwarf.scope_at(key) if dwarf is not None else []
        except Exception as e:  # pyelftools raises many types on malformed DWARF
            self._warn(f"{obj.name}: DWARF scope lookup failed ({type(e).__name__}: {e})",
                       key=f"dwarf-scope:{obj.name}")
            return []

    def entry_frame(self, runtime_addr: int) -> Frame | None:
        """The frame naming the function that starts at a runtime address by its
        declaration line.  A function's first bytes may be patchable-entry NOPs that
        the line table gives to whatever came before (arm64:
        ``-fpatchable-function-entry``), so a function pointer (a work item's or
        timer's callback) is resolved where its own code begins."""
        for step in range(0, 20, 4):  # past the NOPs: the function's DIE begins there
            scope = self.scope(runtime_addr + step)
            if scope:
                break
        else:
            return None
        own = [f for f in self.resolve(runtime_addr + step) if not f.inlined]
        for die in reversed(scope):
            if die.tag != "DW_TAG_subprogram":
                continue
            for _ in range(4):  # a concrete instance names its declaration indirectly
                line = die.attributes.get("DW_AT_decl_line")
                if line is not None:
                    return replace(own[-1], line=int(line.value)) if own else None
                ref = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification")
                            if a in die.attributes), None)
                if ref is None:
                    break
                try:
                    die = die.get_DIE_from_attribute(ref)
                except Exception:  # a reference out of its unit: malformed DWARF
                    break
            return None
        return None

    def _object_key(self, runtime_addr: int) -> tuple[_Object | None, int]:
        """The ELF image holding a runtime address and the address in its own layout."""
        for mm in self._modules:
            for start, end, _sec, idx in mm.ranges:
                if start <= runtime_addr < end:
                    if mm.obj is not None and mm.obj.bases is not None and idx >= 0:
                        return mm.obj, mm.obj.bases[idx] + runtime_addr - start
                    return None, 0
        if self._core is not None:
            return self._core, runtime_addr - self.kaslr_offset
        return None, 0

    def symbol(self, runtime_addr: int) -> tuple[str, int, int, str] | None:
        """(name, offset, size, module) of the symbol holding any address, data
        included — a static lock's class is its symbol, e.g. ``rtnl_mutex``."""
        for mm in self._modules:
            for start, end, _sec, idx in mm.ranges:
                if not start <= runtime_addr < end:
                    continue
                hit = None
                if mm.obj is not None and mm.obj.symbols is not None and mm.obj.bases:
                    key = mm.obj.bases[idx] + runtime_addr - start
                    hit = mm.obj.symbols.lookup(key)
                    if hit is not None:
                        return hit[0], key - hit[1], hit[2], mm.image.name
                if mm.kallsyms is not None:
                    hit = mm.kallsyms.lookup(runtime_addr)
                    if hit is not None:
                        return hit[0], runtime_addr - hit[1], hit[2], mm.image.name
                return None
        if self._core is not None and self._core.symbols is not None:
            link = runtime_addr - self.kaslr_offset
            hit = self._core.symbols.lookup(link)
            if hit is not None:
                return hit[0], link - hit[1], hit[2], "vmlinux"
        if self._core_kallsyms is not None:
            hit = self._core_kallsyms.lookup(runtime_addr)
            if hit is not None:
                return hit[0], runtime_addr - hit[1], hit[2], "vmlinux"
        return None

    def _resolve_module(
        self,
        mm: _ModuleMap,
        addr: int,
        look: int,
        bump: int,
        sec_start: int,
        sec_name: str,
        sec_idx: int,
    ) -> tuple[Frame, ...]:
        name = mm.image.name
        off = look - sec_start
        if mm.obj is not None and sec_idx >= 0 and mm.obj.bases is not None:
            return self._from_object(mm.obj, name, addr, mm.obj.bases[sec_idx] + off, bump)
        if mm.kallsyms is not None:
            hit = mm.kallsyms.lookup(look)
            if hit is not None:
                sym, start, size = hit
                return (Frame(sym, look - start + bump, size, name, None, None, False, addr),)
        # Decodable later with `addr2line -j <section> -e <module>.ko <offset>`.
        return (Frame(sec_name, off + bump, 0, name, None, None, False, addr),)

    def _from_object(
        self,
        obj: _Object,
        module: str,
        addr: int,
        key: int,
        bump: int,
    ) -> tuple[Frame, ...]:
        protos = self._lookup_object(obj, key)
        frames = []
        for func, off, size, file, line, inlined in protos:
            frames.append(
                Frame(
                    func, off + bump if not inlined else 0, size, module, file, line, inlined, addr
                )
            )
        return tuple(frames)

    def _lookup_object(self, obj: _Object, key: int) -> _Proto:
        hit = obj.cached(key)
        if hit is not None:
            return hit
        proto, complete = self._compute(obj, key)
        if complete:  # a degraded answer must not outlive the problem that caused it
            obj.remember(key, proto)
        return proto

    def _compute(self, obj: _Object, key: int) -> tuple[_Proto, bool]:
        sym = obj.symbols.lookup(key) if obj.symbols is not None else None
        chain: list[SourceFrame] | None = None
        complete = True
        try:
            dwarf = obj.dwarf()
            if dwarf is not None:
                chain = dwarf.lookup(key)
        except (DwarfError, ElfFormatError) as e:
            complete = False
            self._warn(f"{obj.name}: unreadable DWARF ({e}): no file:line", key=f"dwarf:{obj.name}")
        except Exception as e:  # pyelftools raises many types on malformed DWARF
            complete = False
            self._warn(
                f"{obj.name}: DWARF lookup failed for some addresses (first: "
                f"{key:#x}, {type(e).__name__}: {e})",
                key=f"dwarf-lookup:{obj.name}",
            )
            log.debug("DWARF lookup of %#x in %s", key, obj.name, exc_info=True)
        addr2line = self.style == "addr2line"
        out: list[tuple[str, int, int, str | None, int | None, bool]] = []
        if chain:
            for sf in chain[:-1]:
                file = sf.file if addr2line else sf.source_file
                out.append((sf.function or "??", -1, 0, file, sf.line, True))
            outer = chain[-1]
            file = outer.file if addr2line else outer.source_file
            line = outer.line
            dwarf_name = outer.function
        else:
            file = line = dwarf_name = None
        if sym is not None:
            sym_name, start, size = sym
            # addr2line names the DWARF function; kallsyms the symbol (foo.cold,
            # foo.constprop.0), which is also what the kernel prints.
            name = (dwarf_name or sym_name) if addr2line else sym_name
            out.append((name, key - start, size, file, line, False))
        else:
            out.append((dwarf_name or "??", 0, 0, file, line, False))
        return tuple(out), complete
