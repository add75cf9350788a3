"""Symbolizer tests.

The agreement tests compare every frame with binutils ``addr2line -f -i`` run
here as the oracle, on the Debian -dbg vmlinux, an in-tree debug module of the
same package and an out-of-tree module built against the headers at test time.
No kernel is named here: the kernel is the one the rest of the suite uses
(``fetch_debian_kernel``: the default series, or ``TRACEDEP_KERNEL_SERIES`` /
``TRACEDEP_KERNEL_ABI``), and its -dbg package is fetched by the session fixture;
failing to get any of it fails the tests, never skips them.

Normalising addr2line's output: `` (discriminator N)`` is dropped (a Frame has no
discriminator); ``??`` as a file and ``0``/``?`` as a line become None; a return
address is resolved at ``addr - 1`` by both sides (see symbolizer's docstring).

One known addr2line bug is not copied: binutils 2.40 starts every DWARF 5 line
sequence with file 0 instead of file 1 (DWARF 5 section 6.2.2, table 6.4), so code
of a sequence that never sets its file (e.g. ``__traceiter_*`` defined by
``include/trace/events/*.h``) is put in the CU's main file with the header's
line.  Such frames count as agreeing only if nothing but the innermost file
differs, addr2line's file is the CU's file 0, and llvm-symbolizer (when
installed) gives our answer.  The tests print how many there were.

The symbolizer runs with ``style="addr2line"`` so names and paths must be
identical; the default ``style="kernel"`` is then checked to differ only in
presentation (kallsyms symbol names, source-tree-relative paths).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracedep.analysis.findings import Frame
from tracedep.analysis.kaslr import kaslr_offset_of, verify_kaslr
from tracedep.analysis.symbolizer import ModuleImage, Symbolizer
from tracedep.common.cache import cache_root
from tracedep.common.machines import machine_for
from tracedep.errors import SymbolizerError
from tracedep.kimage.dwarf_index import DwarfIndex
from tracedep.kimage.elf_symbols import STT_FUNC, ElfFile, read_symtab
from tracedep.kimage.ko_layout import layout_sections
from tracedep.vm.debug_packages import dbg_modules_dir, dbg_vmlinux_path, ensure_dbg_vmlinux
from tracedep.vm.kernel import Kernel, fetch_debian_kernel
from tracedep.vm.modules import build_module_dir

DATA = Path(__file__).parents[1] / "data" / "symbolizer"
KASLR = 0x2C400000  # any 2 MiB multiple: the guest's offset is not known here
MODULE_BASE = 0xFFFFFFFFC0A00000
# In-tree modules of both series' -dbg packages (6.1 and 6.12), first found wins;
# failing all of them, the largest debug .ko of the package.
INTREE_CANDIDATES = (
    "kernel/net/netfilter/nf_conntrack.ko",
    "kernel/net/bridge/bridge.ko",
    "kernel/drivers/net/virtio_net.ko",
)


@dataclass(frozen=True)
class DbgKernel:
    """The suite's kernel with everything these tests read from it."""

    kernel: Kernel
    vmlinux: Path  # with DWARF, from the -dbg package
    system_map: Path  # the build's own, from the -dbg package
    intree_ko: Path  # an in-tree module with DWARF, from the -dbg package
    symtest_ko: Path  # tests/data/symbolizer/symtestmod built against the headers


@pytest.fixture(scope="session")
def dbg() -> DbgKernel:
    machine = machine_for("x86_64")
    k = fetch_debian_kernel(machine)
    assert k.packages is not None and k.packages.dbg is not None, f"{k.release}: no -dbg package"
    cache = cache_root()
    vmlinux = ensure_dbg_vmlinux(k.release, cache, k.packages.dbg.version)
    assert vmlinux == dbg_vmlinux_path(k.release, cache)
    system_map = vmlinux.with_name(f"System.map-{k.release}")
    assert system_map.is_file(), f"{system_map} missing from the -dbg package"
    mods = dbg_modules_dir(k.release, cache)
    found = [mods / c for c in INTREE_CANDIDATES if (mods / c).is_file()]
    if not found:
        found = sorted(mods.rglob("*.ko"), key=lambda p: p.stat().st_size, reverse=True)
    assert found, f"no debug .ko under {mods}"
    # Built as tracedep builds a user's module (vm/modules.py: same make arguments).
    built = build_module_dir(DATA / "symtestmod", k, machine)
    (symtest,) = [m.ko for m in built if m.name == "symtest"]
    print(f"kernel {k.release}: {vmlinux}, {found[0].name}, {symtest}")
    return DbgKernel(k, vmlinux, system_map, found[0], symtest)


# -- the oracle -----------------------------------------------------------------

Triple = tuple[str, str | None, int | None]
_DISCRIMINATOR = re.compile(r" \(discriminator \d+\)$")


def parse_addr2line(out: str) -> dict[int, list[Triple]]:
    """``addr2line -a -f -i`` output → address: [(function, file, line), ...] innermost first."""
    result: dict[int, list[Triple]] = {}
    lines = out.splitlines()
    i = 0
    cur: list[Triple] | None = None
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("0x") and re.fullmatch(r"0x[0-9a-f]+", ln):
            cur = result.setdefault(int(ln, 16), [])
            i += 1
            continue
        assert cur is not None, f"unexpected addr2line output {ln!r}"
        func = ln
        loc = _DISCRIMINATOR.sub("", lines[i + 1])
        file, _, line = loc.rpartition(":")
        cur.append(
            (
                func,
                None if file == "??" else file,
                int(line) if line.isdigit() and line != "0" else None,
            )
        )
        i += 2
    return result


def addr2line(elf: Path, addrs: list[int], section: str | None = None) -> dict[int, list[Triple]]:
    cmd = ["addr2line", "-a", "-f", "-i", "-e", str(elf)]
    if section:
        cmd[1:1] = ["-j", section]
    out: dict[int, list[Triple]] = {}
    for chunk in range(0, len(addrs), 500):
        part = addrs[chunk : chunk + 500]
        proc = subprocess.run(
            cmd + [hex(a) for a in part], capture_output=True, text=True, check=True
        )
        out.update(parse_addr2line(proc.stdout))
    return out


def triples(frames: tuple[Frame, ...]) -> list[Triple]:
    return [(f.function, f.file, f.line) for f in frames]


# -- picking addresses ------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One address to resolve: ``key`` is what addr2line is asked about."""

    section: str
    offset: int  # in the section (vmlinux: link-time address)
    call_site: bool

    @property
    def key(self) -> int:
        return self.offset - 1 if self.call_site else self.offset


PADDING = "__pfx_"


def functions(elf: ElfFile, padding: bool = False) -> list[tuple[str, str, int, int]]:
    """(name, section, value, size) of every sized STT_FUNC in an executable PROGBITS section.

    Without ``padding``, no ``__pfx_*`` symbol: the NOPs that
    CONFIG_FUNCTION_PADDING_ALIGNMENT (6.12) puts before each function are in no
    DWARF subprogram, and addr2line names their file from the symbol table's last
    STT_FILE (``usercopy_64.c`` all over vmlinux, with no line): no oracle there.
    ``check_padding`` tests them instead."""
    raw = read_symtab(elf)
    assert raw is not None
    syms, strtab = raw
    out = []
    for s in syms:
        if (int(s["info"]) & 0xF) != STT_FUNC or not s["size"] or not 0 < s["shndx"] < 0xFF00:
            continue
        sec = elf.sections[int(s["shndx"])]
        if not sec.exec or sec.type != 1:
            continue
        name = strtab[int(s["name"]) : strtab.index(b"\0", int(s["name"]))].decode()
        if name.startswith(PADDING) and not padding:
            continue
        out.append((name, sec.name, int(s["value"]), int(s["size"])))
    out.sort(key=lambda t: (t[1], t[2], t[0]))
    return out


_INSN = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2} )+)\s*(\S+)?")


def instructions(code: bytes, vma: int, tmp: Path) -> list[tuple[int, int, str]]:
    """(address, length, mnemonic) of each instruction, by objdump on the raw bytes."""
    blob = tmp / "code.bin"
    blob.write_bytes(code)
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={vma:#x}", str(blob)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    insns: list[tuple[int, int, str]] = []
    for ln in out.splitlines():
        m = _INSN.match(ln)
        if not m:
            continue
        nbytes = len(m.group(2).split())
        if m.group(3) is None and insns:  # continuation line of a long instruction
            a, n, mn = insns[-1]
            insns[-1] = (a, n + nbytes, mn)
            continue
        insns.append((int(m.group(1), 16), nbytes, m.group(3) or ""))
    return insns


def probes_for(
    elf: ElfFile,
    funcs: list[tuple[str, str, int, int]],
    tmp: Path,
    per_function: int,
    every_insn: bool = False,
) -> list[Probe]:
    """Call instructions and their return sites (the frames a stack holds), the
    function's first instruction, and with ``every_insn`` every instruction."""
    probes: list[Probe] = []
    for _name, secname, value, size in funcs:
        sec = elf.by_name[secname]
        start = value - sec.addr if not elf.is_relocatable else value
        code = bytes(elf.data(sec)[start : start + size])
        insns = instructions(code, value, tmp)
        picked: list[Probe] = [Probe(secname, value, False)]
        calls = [(a, n) for a, n, mnem in insns if mnem.startswith("call") and a != value]
        if every_insn:
            # Every instruction, also as a return address (looked up at its
            # address - 1: the last byte of the instruction before it).
            picked += [Probe(secname, a, False) for a, _, _ in insns]
            picked += [Probe(secname, a, True) for a, _, _ in insns if a != value]
        else:
            # Spread over the function (the first call is often __fentry__).
            calls = calls[:: max(1, len(calls) // per_function)][:per_function]
        for a, n in calls:
            picked.append(Probe(secname, a + n, True))  # a return address
            picked.append(Probe(secname, a, False))
        seen = set(probes)
        probes.extend(p for p in dict.fromkeys(picked) if p not in seen)
    return probes


def vmlinux_probes(vmlinux: Path, tmp: Path, nfuncs: int = 110) -> list[Probe]:
    elf = ElfFile(vmlinux)
    funcs = [f for f in functions(elf) if f[3] >= 16]
    text = [f for f in funcs if f[1] == ".text"]
    init = [f for f in funcs if f[1] == ".init.text"]
    # Evenly through .text (every subsystem, asm entry code included) and a
    # few __init functions.
    chosen = text[:: max(1, len(text) // nfuncs)][:nfuncs] + init[:: max(1, len(init) // 8)][:8]
    return probes_for(elf, chosen, tmp, per_function=2)


def module_sections(elf: ElfFile) -> dict[str, int]:
    """Runtime addresses for every allocated section, laid out as the kernel would."""
    out: dict[str, int] = {}
    cur = MODULE_BASE
    for s in elf.sections:
        if s.alloc and s.size:
            cur = (cur + 0xFFF) & ~0xFFF if s.exec else (cur + 63) & ~63
            out[s.name] = cur
            cur += s.size
    return out


# -- fixtures -----------------------------------------------------------------------


def llvm_symbolizer(
    elf: Path,
    addrs: list[int],
    section: str | None = None,
) -> dict[int, list[Triple]] | None:
    """The second opinion, in addr2line's shape; None when llvm-symbolizer is absent."""
    exe = shutil.which("llvm-symbolizer")
    # It has no addr2line -j: section-relative addresses of a .ko are not asked.
    if exe is None or not addrs or section is not None:
        return None
    out: dict[int, list[Triple]] = {}
    for a in addrs:
        proc = subprocess.run(
            [exe, "--inlining", "--no-demangle", "-e", str(elf), f"{a:#x}"],
            capture_output=True,
            text=True,
            check=True,
        )
        frames: list[Triple] = []
        ln = proc.stdout.strip().splitlines()
        for i in range(0, len(ln) - 1, 2):
            file, line, _col = ln[i + 1].rsplit(":", 2)
            frames.append(
                (
                    ln[i],
                    None if file == "??" else file,
                    int(line) if line.isdigit() and line != "0" else None,
                )
            )
        out[a] = frames
    return out


class MainFiles:
    """addr2line's path of each probe's CU file 0, from an index of our own."""

    def __init__(self, elf_path: Path) -> None:
        self.elf = ElfFile(elf_path)
        self.bases = layout_sections(self.elf) if self.elf.is_relocatable else None
        self.index = DwarfIndex(self.elf, self.bases)

    def __call__(self, p: Probe) -> str | None:
        key = p.key
        if self.bases is not None:
            key += self.bases[self.elf.by_name[p.section].index]
        return self.index.main_file(key)


def check_agreement(
    sym: Symbolizer,
    probes: list[Probe],
    runtime_of: dict[Probe, int],
    oracle: dict[Probe, list[Triple]],
    elf: Path,
    section: str | None = None,
) -> tuple[list[str], int]:
    """Disagreements, and how many frames differ only by addr2line's file-0 bug."""
    bad = []
    quirks: list[Probe] = []
    main_file = MainFiles(elf)
    for p in probes:
        got = triples(sym.resolve(runtime_of[p], call_site=p.call_site))
        want = oracle[p]
        if got == want:
            continue
        if (
            len(got) == len(want)
            and got[1:] == want[1:]
            and got[0][0] == want[0][0]
            and got[0][2] == want[0][2]
            and want[0][1] == main_file(p)
        ):
            quirks.append(p)
            continue
        bad.append(f"{p}: symbolizer {got} != addr2line {want}")
    second = llvm_symbolizer(elf, sorted({p.key for p in quirks}), section)
    if second is not None:
        for p in quirks:
            got = triples(sym.resolve(runtime_of[p], call_site=p.call_site))
            if [(f, fl) for f, fl, _ in got[:1]] != [(f, fl) for f, fl, _ in second[p.key][:1]]:
                bad.append(f"{p}: symbolizer {got} != llvm-symbolizer {second[p.key]}")
    return bad, len(quirks)


def check_padding(
    elf_path: Path, sym: Symbolizer, runtime_of: Callable[[str, int], int], n: int = 40
) -> int:
    """A padding symbol is named as kallsyms names it (``__pfx_foo+0x8/0x10``); returns
    how many were checked (0: the kernel has none).  Its file:line is not checked: a
    pad between two functions of one CU is inside the CU's line sequence, so the
    row in effect there is the previous function's last line."""
    elf = ElfFile(elf_path)
    funcs = functions(elf, padding=True)
    names: dict[tuple[str, int], set[str]] = {}
    for name, secname, value, _ in funcs:
        names.setdefault((secname, value), set()).add(name)
    # not where a function starts too (_stext is __pfx_sev_es_terminate's alias);
    # a pad of aliases has aliases (__pfx_cleanup_module is __pfx_<module>_exit)
    pads = [f for f in funcs if all(n.startswith(PADDING) for n in names[f[1], f[2]])]
    pads = pads[:: max(1, len(pads) // n)][:n]
    for _, secname, value, size in pads:
        (f,) = sym.resolve(runtime_of(secname, value) + size // 2)
        assert f.function in names[secname, value], f
        assert (f.offset, f.size) == (size // 2, size), f
    return len(pads)


def check_kernel_style(
    a2l: Symbolizer, kern: Symbolizer, probes: list[Probe], runtime_of: dict[Probe, int]
) -> list[str]:
    """The default style: same chain, kallsyms names, paths that are suffixes of addr2line's."""
    bad = []
    for p in probes:
        fa = a2l.resolve(runtime_of[p], call_site=p.call_site)
        fk = kern.resolve(runtime_of[p], call_site=p.call_site)
        ok = len(fa) == len(fk) and all(
            x.line == y.line
            and x.inlined == y.inlined
            and (x.file is None) == (y.file is None)
            and (y.file is None or x.file == y.file or (x.file or "").endswith("/" + y.file))
            and (x.inlined and x.function == y.function or not x.inlined)
            for x, y in zip(fa, fk, strict=False)
        )
        if not ok:
            bad.append(f"{p}: {[f.short() for f in fk]} vs {[f.short() for f in fa]}")
    return bad


def check_against_system_map(
    kern: Symbolizer, probes: list[Probe], runtime_of: dict[Probe, int], system_map: Path
) -> list[str]:
    """function+offset/size of the real frame as the kernel's %pS/%pB would print it,
    judged by the build's own System.map (kallsyms' input): the name is one of the
    symbols at the closest text address, the size runs to the next one."""
    sysmap: dict[int, list[str]] = {}
    for a, t, n in read_system_map(system_map):
        if t in "tTwW":
            sysmap.setdefault(a, []).append(n)
    starts = sorted(sysmap)
    bad = []
    for p in probes:
        i = bisect_right(starts, p.key) - 1
        sym_at, nxt = starts[i], starts[i + 1]
        f = kern.resolve(runtime_of[p], call_site=p.call_site)[-1]
        want_off = p.key - sym_at + p.call_site
        if f.function not in sysmap[sym_at] or f.offset != want_off or f.size != nxt - sym_at:
            bad.append(f"{p}: {f.short()} vs System.map {sysmap[sym_at]}+{want_off:#x}")
    return bad


# -- agreement with addr2line ------------------------------------------------------------


def test_vmlinux_agrees_with_addr2line(dbg: DbgKernel, tmp_path: Path) -> None:
    VMLINUX = dbg.vmlinux
    probes = vmlinux_probes(VMLINUX, tmp_path)
    assert len(probes) >= 200
    oracle_raw = addr2line(VMLINUX, sorted({p.key for p in probes}))
    oracle = {p: oracle_raw[p.key] for p in probes}
    runtime_of = {p: p.offset + KASLR for p in probes}
    sym = Symbolizer(VMLINUX, KASLR, {}, cache_dir=tmp_path / "cache", style="addr2line")
    bad, quirks = check_agreement(sym, probes, runtime_of, oracle, VMLINUX)
    inlined = sum(1 for p in probes if len(oracle[p]) > 1)
    assert not bad, f"{len(bad)}/{len(probes)} disagree:\n" + "\n".join(bad[:20])
    # 6.1: 1/3 of them, 6.12: 1/5
    assert inlined >= len(probes) // 6, f"only {inlined} addresses inside inlined code"
    kern = Symbolizer(VMLINUX, KASLR, {}, cache_dir=tmp_path / "cache")
    bad = check_kernel_style(sym, kern, probes, runtime_of)
    assert not bad, "\n".join(bad[:20])
    bad = check_against_system_map(kern, probes, runtime_of, dbg.system_map)
    assert not bad, "\n".join(bad[:20])
    pads = check_padding(VMLINUX, kern, lambda _sec, value: value + KASLR)
    print(
        f"vmlinux: {len(probes)} addresses ({inlined} in inlined code) agree with addr2line"
        f" ({quirks} of them up to addr2line's DWARF 5 file-0 bug); {pads} padding symbols"
    )


def _module_agreement(
    ko: Path, vmlinux: Path, tmp_path: Path, every_insn: bool, nfuncs: int
) -> int:
    elf = ElfFile(ko)
    funcs = functions(elf)
    funcs = funcs[:: max(1, len(funcs) // nfuncs)][:nfuncs]
    probes = probes_for(elf, funcs, tmp_path, per_function=2, every_insn=every_insn)
    sections = module_sections(elf)
    name = ko.name.removesuffix(".ko")
    runtime_of = {p: sections[p.section] + p.offset for p in probes}
    oracle: dict[Probe, list[Triple]] = {}
    for secname in sorted({p.section for p in probes}):
        mine = [p for p in probes if p.section == secname]
        raw = addr2line(ko, sorted({p.key for p in mine}), section=secname)
        oracle.update({p: raw[p.key] for p in mine})
    image = ModuleImage(name, ko, sections)
    sym = Symbolizer(
        vmlinux,
        KASLR,
        {name: image},
        cache_dir=tmp_path / "cache",
        style="addr2line",
    )
    bad, quirks = check_agreement(sym, probes, runtime_of, oracle, ko, section="module")
    assert not bad, f"{len(bad)}/{len(probes)} disagree:\n" + "\n".join(bad[:20])
    print(f"{ko.name}: {quirks} frames up to addr2line's DWARF 5 file-0 bug")
    assert all(f.module == name for p in probes for f in sym.resolve(runtime_of[p], p.call_site))
    kern = Symbolizer(None, KASLR, {name: image}, cache_dir=tmp_path / "cache")
    bad = check_kernel_style(sym, kern, probes, runtime_of)
    assert not bad, "\n".join(bad[:20])
    pads = check_padding(ko, kern, lambda sec, value: sections[sec] + value)
    print(f"{ko.name}: {pads} padding symbols")
    return len(probes)


def test_out_of_tree_module_agrees_with_addr2line(dbg: DbgKernel, tmp_path: Path) -> None:
    # Every instruction of every function: .text, .text.unlikely (the cold
    # part and the init-only helper), .init.text and .exit.text.
    n = _module_agreement(dbg.symtest_ko, dbg.vmlinux, tmp_path, every_insn=True, nfuncs=1000)
    assert n >= 200
    print(f"symtest.ko: {n} addresses agree with addr2line")


def test_in_tree_module_agrees_with_addr2line(dbg: DbgKernel, tmp_path: Path) -> None:
    n = _module_agreement(dbg.intree_ko, dbg.vmlinux, tmp_path, every_insn=False, nfuncs=80)
    assert n >= 200
    print(f"{dbg.intree_ko.name}: {n} addresses agree with addr2line")


# -- behaviour on the real vmlinux ----------------------------------------------------------


def read_system_map(path: Path) -> Iterator[tuple[int, str, str]]:
    for ln in path.read_text().splitlines():
        a, t, n = ln.split()[:3]
        yield int(a, 16), t, n


def test_kaslr_offset_is_verified(dbg: DbgKernel, tmp_path: Path) -> None:
    VMLINUX = dbg.vmlinux
    ks = [(a + KASLR, t, n) for a, t, n in read_system_map(dbg.system_map)]
    samples = [(a, n) for a, t, n in ks if n in ("_text", "schedule", "mutex_lock")]
    verify_kaslr(VMLINUX, KASLR, samples)
    text = next(a for a, _, n in ks if n == "_text")
    assert kaslr_offset_of(VMLINUX, "_text", text) == KASLR
    with pytest.raises(SymbolizerError, match="does not fit"):
        verify_kaslr(VMLINUX, KASLR + 0x200000, samples)
    with pytest.raises(SymbolizerError, match="does not fit"):
        Symbolizer(VMLINUX, KASLR - 0x200000, {}, cache_dir=tmp_path, kallsyms=ks)
    sym = Symbolizer(VMLINUX, KASLR, {}, cache_dir=tmp_path, kallsyms=ks)
    assert sym.warnings == []


def test_data_symbols(dbg: DbgKernel, tmp_path: Path) -> None:
    names: dict[int, list[str]] = {}
    for a, _, n in read_system_map(dbg.system_map):
        names.setdefault(a, []).append(n)
    addresses = {n: a for a, ns in names.items() for n in ns}
    sym = Symbolizer(dbg.vmlinux, KASLR, {}, cache_dir=tmp_path)
    assert sym.symbol(addresses["rtnl_mutex"] + KASLR + 8)[:2] == ("rtnl_mutex", 8)  # type: ignore[index]
    # jiffies_64 and jiffies alias; kallsyms prints the one nm lists first.
    at = addresses["jiffies_64"]
    assert {"jiffies", "jiffies_64"} <= set(names[at])
    assert sym.symbol(at + KASLR)[::3] == (names[at][0], "vmlinux")  # type: ignore[index]


def test_call_site_offsets_follow_the_kernel(dbg: DbgKernel, tmp_path: Path) -> None:
    sym = Symbolizer(dbg.vmlinux, KASLR, {}, cache_dir=tmp_path)
    start = dict((n, a) for a, _, n in read_system_map(dbg.system_map))["mutex_lock"]
    frames = sym.resolve(start + KASLR + 0x10)
    assert frames[-1].function == "mutex_lock" and frames[-1].offset == 0x10
    # A return address: looked up at addr - 1, offset of the return address.
    frames = sym.resolve(start + KASLR + 0x10, call_site=True)
    assert frames[-1].function == "mutex_lock" and frames[-1].offset == 0x10
    assert frames[-1].address == start + KASLR + 0x10
    # ... and its line is the one of the call: addr2line at addr - 1
    (*_, (func, file, line)) = addr2line(dbg.vmlinux, [start + 0x10 - 1])[start + 0x10 - 1]
    assert func == "mutex_lock" and frames[-1].line == line and line is not None
    assert frames[-1].file == "kernel/locking/mutex.c" and (file or "").endswith("/mutex.c")


def test_disk_cache_answers_without_dwarf(
    dbg: DbgKernel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    VMLINUX = dbg.vmlinux
    names = ("schedule", "mutex_lock")
    addrs = [a + KASLR for a, t, n in read_system_map(dbg.system_map) if n in names]
    first = Symbolizer(VMLINUX, KASLR, {}, cache_dir=tmp_path).resolve_many(addrs)
    assert list(tmp_path.glob("*/resolved-v*-kernel.json"))
    assert list(tmp_path.glob("*/symbols.npz"))

    def no_dwarf(*_a: object, **_k: object) -> None:
        raise AssertionError("DWARF read although the answer was cached")

    monkeypatch.setattr("tracedep.analysis.symbolizer.DwarfIndex", no_dwarf)
    again = Symbolizer(VMLINUX, KASLR, {}, cache_dir=tmp_path).resolve_many(addrs)
    assert again == first


# -- degraded inputs (small ELF files built here) ----------------------------------------------

FAKE_C = r"""
static int counter;
static inline __attribute__((always_inline)) int leaf(int x) { counter += x; return counter; }
__attribute__((noinline)) int helper(int x) { return leaf(x) * 2; }
__attribute__((noinline)) int entry(int x) { return helper(x) + leaf(x + 1); }
void _start(void) { entry(3); for (;;) ; }
"""


@pytest.fixture(scope="session")
def fake_vmlinux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny kernel-like ELF: linked at 0xffffffff81000000, DWARF 5, a build-id."""
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("fake")
    (d / "fake.c").write_text(FAKE_C)
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-gdwarf-5",
            "-mcmodel=kernel",
            "-fno-pie",
            "-no-pie",
            "-nostdlib",
            "-static",
            "-ffreestanding",
            "-Wl,--build-id",
            "-Wl,-Ttext=0xffffffff81000000",
            "-o",
            str(d / "vmlinux"),
            str(d / "fake.c"),
        ],
        check=True,
        cwd=d,
    )
    return d / "vmlinux"


def _fake_symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {
        ln.split()[2]: int(ln.split()[0], 16) for ln in out.splitlines() if len(ln.split()) == 3
    }


def test_fake_vmlinux_inline_chain(fake_vmlinux: Path, tmp_path: Path) -> None:
    syms = _fake_symbols(fake_vmlinux)
    sym = Symbolizer(fake_vmlinux, KASLR, {}, cache_dir=tmp_path, style="addr2line")
    addr = syms["helper"]
    want = addr2line(fake_vmlinux, [addr])[addr]
    assert triples(sym.resolve(addr + KASLR)) == want


def test_stripped_vmlinux_keeps_function_names(fake_vmlinux: Path, tmp_path: Path) -> None:
    syms = _fake_symbols(fake_vmlinux)
    stripped = tmp_path / "vmlinux.nodebug"
    subprocess.run(["objcopy", "--strip-debug", str(fake_vmlinux), str(stripped)], check=True)
    sym = Symbolizer(stripped, KASLR, {}, cache_dir=tmp_path)
    (frame,) = sym.resolve(syms["entry"] + 2 + KASLR)
    assert (frame.function, frame.offset, frame.file) == ("entry", 2, None)
    assert any("no DWARF" in w for w in sym.warnings)
    assert len(sym.warnings) == len(set(sym.warnings))
    sym.resolve(syms["helper"] + KASLR)
    assert sum("no DWARF" in w for w in sym.warnings) == 1


def test_fully_stripped_vmlinux_uses_kallsyms(fake_vmlinux: Path, tmp_path: Path) -> None:
    syms = _fake_symbols(fake_vmlinux)
    bare = tmp_path / "vmlinux.bare"
    subprocess.run(["objcopy", "--strip-all", str(fake_vmlinux), str(bare)], check=True)
    ks = [(a + KASLR, "T", n) for n, a in syms.items() if n in ("helper", "entry", "_start")]
    sym = Symbolizer(bare, KASLR, {}, cache_dir=tmp_path, kallsyms=ks)
    (frame,) = sym.resolve(syms["entry"] + 3 + KASLR)
    assert (frame.function, frame.offset) == ("entry", 3)
    assert any("no symbol table" in w for w in sym.warnings)
    nothing = Symbolizer(bare, KASLR, {}, cache_dir=tmp_path)
    assert nothing.resolve(syms["entry"] + KASLR)[-1].function in ("entry", "??")


def test_build_id_mismatch_is_warned_and_not_trusted(fake_vmlinux: Path, tmp_path: Path) -> None:
    syms = _fake_symbols(fake_vmlinux)
    ks = [(a + KASLR, "T", n) for n, a in syms.items() if n in ("helper", "entry", "_start")]
    sym = Symbolizer(
        fake_vmlinux, KASLR, {}, cache_dir=tmp_path, kallsyms=ks, vmlinux_build_id="00" * 20
    )
    assert any("build-id" in w for w in sym.warnings)
    (frame,) = sym.resolve(syms["entry"] + 1 + KASLR)
    assert (frame.function, frame.file) == ("entry", None)  # from kallsyms, not the ELF


def test_missing_module(tmp_path: Path) -> None:
    sections = {".text": MODULE_BASE, ".init.text": MODULE_BASE + 0x10000}
    image = ModuleImage("gone", tmp_path / "gone.ko", sections)
    sym = Symbolizer(None, 0, {"gone": image}, cache_dir=tmp_path)
    (frame,) = sym.resolve(MODULE_BASE + 0x1C)
    assert (frame.function, frame.offset, frame.module) == (".text", 0x1C, "gone")
    (frame,) = sym.resolve(MODULE_BASE + 0x10004, call_site=True)
    assert (frame.function, frame.offset) == (".init.text", 4)
    assert sum("gone" in w for w in sym.warnings) == 1
    ks = [(MODULE_BASE, "t", "gone_fn\t[gone]"), (MODULE_BASE + 0x40, "t", "gone_other\t[gone]")]
    sym = Symbolizer(
        None, 0, {"gone": ModuleImage("gone", None, sections)}, cache_dir=tmp_path, kallsyms=ks
    )
    (frame,) = sym.resolve(MODULE_BASE + 0x1C)
    assert (frame.function, frame.offset, frame.size) == ("gone_fn", 0x1C, 0x40)


# -- decode_stacktrace-style frames of this kernel's own symbols -------------------------------

# what scripts/decode_stacktrace.sh prints: "func+0xOFF/0xSIZE file:line" for the
# frame, "func (inlined) file:line" for each inline level within it
FRAME_LINE = re.compile(r"    (\S+)\+0x([0-9a-f]+)/0x([0-9a-f]+) (\S+):(\d+)")
INLINE_LINE = re.compile(r"    (\S+) \(inlined\) (\S+):(\d+)")


@dataclass(frozen=True)
class KindProbe:
    kind: str
    symbol: str  # the symbol table's name (what kallsyms prints)
    section: str
    value: int  # the symbol's link-time address
    offset: int  # of the address in the symbol; for a return address, the return site
    call_site: bool

    @property
    def probe(self) -> Probe:
        return Probe(self.section, self.value + self.offset, self.call_site)


def render_golden(sym: Symbolizer, picked: list[KindProbe]) -> str:
    out = []
    for k in picked:
        ret = " (return address)" if k.call_site else ""
        out.append(f"{k.kind}: {k.symbol}+{k.offset:#x}{ret}")
        for f in sym.resolve(k.value + KASLR + k.offset, call_site=k.call_site):
            out.append(f"    {f.short()}")
    return "\n".join(out) + "\n"


def pick_by_kind(vmlinux: Path, tmp: Path) -> tuple[list[KindProbe], dict[Probe, list[Triple]]]:
    """One address of each kind, chosen in this kernel's symbol table, the answers
    addr2line gives for them (every frame with a file and line) in hand."""
    elf = ElfFile(vmlinux)
    funcs = [f for f in functions(elf) if f[3] >= 32]
    text = [f for f in funcs if f[1] == ".text" and "." not in f[0]]
    cold = [f for f in funcs if f[0].endswith(".cold")]
    groups: dict[str, list[tuple[str, str, int, int]]] = {
        # plain code, inlined code at an offset, a return address: C functions
        # spread through .text
        "text": text[:: max(1, len(text) // 60)],
        "constprop": [f for f in funcs if re.search(r"\.constprop\.\d+$", f[0])][::97][:12],
        "init": [f for f in funcs if f[1] == ".init.text"][::53][:12],
        "cold": cold[:: max(1, len(cold) // 12)][:12],
    }
    cands: list[KindProbe] = []
    for group, fs in groups.items():
        for name, secname, value, size in fs:
            sec = elf.by_name[secname]
            code = bytes(elf.data(sec)[value - sec.addr : value - sec.addr + size])
            insns = instructions(code, value, tmp)
            # past the prologue (__fentry__ call, pushes): the function's own code
            for a, n, mnem in insns[len(insns) // 4 :: max(1, len(insns) // 8)]:
                cands.append(KindProbe(group, name, secname, value, a - value, False))
                if mnem.startswith("call") and group == "text":
                    ret = a + n - value
                    cands.append(KindProbe("return address", name, secname, value, ret, True))
    raw = addr2line(vmlinux, sorted({c.probe.key for c in cands}))
    oracle = {c.probe: raw[c.probe.key] for c in cands}

    def complete(c: KindProbe) -> bool:
        return all(f and ln for _, f, ln in oracle[c.probe])

    used: set[str] = set()

    def first(kind: str, group: str, ok: Callable[[list[Triple]], bool]) -> KindProbe:
        for c in cands:
            if c.kind == group and c.symbol not in used and complete(c) and ok(oracle[c.probe]):
                used.add(c.symbol)
                return KindProbe(kind, c.symbol, c.section, c.value, c.offset, c.call_site)
        raise AssertionError(f"{vmlinux}: no {kind} address among {len(cands)} candidates")

    picked = [
        first("plain", "text", lambda o: len(o) == 1 and (o[0][1] or "").endswith(".c")),
        first("inlined", "text", lambda o: len(o) >= 3),
        first("return address", "return address", lambda o: True),
        first("constprop", "constprop", lambda o: True),
        first("init", "init", lambda o: True),
    ]
    # GCC's hot/cold splitting is off in some kernels (6.12 has no .cold symbol)
    if cold:
        picked.append(first("cold", "cold", lambda o: True))
    return picked, oracle


def test_frames_by_kind_render_as_decode_stacktrace(dbg: DbgKernel, tmp_path: Path) -> None:
    """Kernel-style frames of one address of each kind, as the report prints them:
    decode_stacktrace's format, and the same chain as addr2line's."""
    picked, oracle = pick_by_kind(dbg.vmlinux, tmp_path)
    sym = Symbolizer(dbg.vmlinux, KASLR, {}, cache_dir=tmp_path / "cache")
    text = render_golden(sym, picked)
    print(text)
    blocks = text.split("\n")[:-1]
    heads = [i for i, ln in enumerate(blocks) if not ln.startswith(" ")]
    assert len(heads) == len(picked)
    kallsyms = {n for _, t, n in read_system_map(dbg.system_map) if t in "tTwW"}
    for k, h, nxt in zip(picked, heads, heads[1:] + [len(blocks)], strict=True):
        lines = blocks[h + 1 : nxt]
        want = oracle[k.probe]  # innermost first, as the lines
        assert len(lines) == len(want), f"{blocks[h]}: {lines} vs addr2line {want}"
        *inner, outer = lines
        m = FRAME_LINE.fullmatch(outer)
        assert m, f"{blocks[h]}: {outer!r} is not func+0xOFF/0xSIZE file:line"
        func, off, size = m.group(1), int(m.group(2), 16), int(m.group(3), 16)
        # the size is kallsyms' (to the next symbol): test_vmlinux_agrees_with_addr2line
        assert (func, off) == (k.symbol, k.offset) and func in kallsyms and size > off
        # addr2line names the DWARF subprogram: foo for foo.constprop.0 and foo.cold
        assert func == want[-1][0] or func.startswith(want[-1][0] + "."), (outer, want[-1])
        got = [(func, m.group(4), int(m.group(5)))]
        for ln in inner:
            mi = INLINE_LINE.fullmatch(ln)
            assert mi, f"{blocks[h]}: {ln!r} is not func (inlined) file:line"
            got.insert(len(got) - 1, (mi.group(1), mi.group(2), int(mi.group(3))))
        for (gf, _, _), (wf, _, _) in zip(got[:-1], want[:-1], strict=True):
            assert gf == wf, f"{blocks[h]}: inlined {gf} vs addr2line {wf}"
        for (_, gfile, gline), (_, wfile, wline) in zip(got, want, strict=True):
            # source-tree-relative, a suffix of addr2line's path
            assert wfile and gline == wline and (wfile == gfile or wfile.endswith("/" + gfile)), (
                f"{blocks[h]}: {gfile}:{gline} vs addr2line {wfile}:{wline}"
            )
    by_kind = {k.kind: k for k in picked}
    assert sum("(inlined)" in ln for ln in blocks) >= 2
    assert by_kind["init"].section == ".init.text"
    assert by_kind["return address"].call_site
    if "cold" in by_kind:
        assert by_kind["cold"].symbol.endswith(".cold")


# -- the -dbg package (vm/debug_packages.py), with a fake package: no network -------------


def _fake_dbg_deb(debs: Path, abi: str) -> Path:
    root = debs.parent / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{abi}-dbg\nVersion: 1\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: fake\n"
    )
    boot = root / "usr/lib/debug/boot"
    boot.mkdir(parents=True)
    (boot / f"vmlinux-{abi}").write_bytes(b"\x7fELF fake")
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"linux-image-{abi}-dbg_1_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed")
def test_ensure_dbg_vmlinux_extracts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracedep.vm import debug_packages

    abi = "9.9.9-1-fake-amd64"
    _fake_dbg_deb(tmp_path / "debs", abi)
    path = debug_packages.ensure_dbg_vmlinux(abi, tmp_path)
    assert path == dbg_vmlinux_path(abi, tmp_path) and path.read_bytes() == b"\x7fELF fake"
    assert not list((tmp_path / "dbg").glob(".*"))  # no temporary directory left

    def no_run(*_a: object, **_k: object) -> None:
        raise AssertionError("downloaded or extracted again")

    monkeypatch.setattr(debug_packages, "_run", no_run)
    assert debug_packages.ensure_dbg_vmlinux(abi, tmp_path) == path


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed")
def test_ensure_dbg_vmlinux_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracedep.vm import debug_packages
    from tracedep.vm.debug_packages import DebugSymbolsError, ensure_dbg_vmlinux

    real_run = debug_packages._run

    def apt_fails(cmd: list[str], cwd: Path, what: str) -> None:
        if cmd[0] == "apt-get":  # as apt says it, without asking any archive
            cmd = [
                "sh",
                "-c",
                "echo 'W: noise' >&2; echo 'E: Unable to locate package' >&2; exit 100",
            ]
        real_run(cmd, cwd, what)

    monkeypatch.setattr(debug_packages, "_run", apt_fails)
    abi = "9.9.9-1-fake-amd64"
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / f"linux-image-{abi}-dbg_1_all.deb").write_bytes(b"truncated")
    # The broken .deb is dropped and downloaded again, which fails.
    with pytest.raises(DebugSymbolsError) as e:
        ensure_dbg_vmlinux(abi, tmp_path)
    assert str(e.value).endswith("(exit 100): E: Unable to locate package")
    assert "\n" not in str(e.value) and "apt-get download" in str(e.value)
    assert not (debs / f"linux-image-{abi}-dbg_1_all.deb").exists()
