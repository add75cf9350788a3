"""The kernel package's own modules in the guest, and the order every module under test loads in.

``--kernel-module NAME`` asks for a module of the kernel's module tree
(:attr:`Kernel.modules_dir`).  Debian's image package carries no ``modules.dep``
(``depmod`` makes it at install time, and we never install), so dependencies
come from each module's ``.modinfo`` section (``depends=``, written by modpost),
read here on the host.  The guest receives the plain (decompressed) modules
under ``/lib/modules/<release>/`` with a ``modules.dep`` and ``modules.alias`` of
its own, so a workload can ``modprobe NAME params``, and an ordered list
(``/etc/tracedep/load_order``) from which the default workload loads every
module under test once, dependencies first.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tracedep.errors import InputError, ModuleBuildError
from tracedep.vm.kernel import Kernel
from tracedep.vm.modules import BuiltModule, is_module_file, module_name, plain_module

log = logging.getLogger(__name__)

# where the guest finds --module-src builds (vm.initramfs puts them there)
TRACEDEP_DIR = "/lib/modules/tracedep"


def modinfo(ko: Path) -> dict[str, list[str]]:
    """The ``key=value`` strings of a plain ELF64 module's ``.modinfo`` section."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ModuleBuildError(f"{ko}: not a little-endian ELF64 module")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
            return name, off, size

        _, stroff, strsize = section(shstrndx)
        for i in range(shnum):
            name, off, size = section(i)
            end = data.find(b"\0", stroff + name, stroff + strsize)
            if data[stroff + name:end] != b".modinfo":
                continue
            if off + size > len(data):
                raise ModuleBuildError(f"{ko}: .modinfo lies outside the file")
            out: dict[str, list[str]] = {}
            for item in data[off:off + size].split(b"\0"):
                k, sep, v = item.decode(errors="replace").partition("=")
                if sep:
                    out.setdefault(k, []).append(v)
            return out
    except struct.error as e:
        raise ModuleBuildError(f"{ko}: truncated ELF ({e})") from None
    return {}


def depends(info: dict[str, list[str]]) -> list[str]:
    return [d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",") if d]


@dataclass(frozen=True)
class KernelModule:
    """One module of the kernel package, as the guest gets it."""

    name: str
    src: Path  # in the kernel tree (maybe .ko.xz)
    ko: Path  # plain ELF (a decompressed copy in the cache if need be)
    rel: str  # guest path under /lib/modules/<release>/, e.g. kernel/drivers/net/dummy.ko
    depends: tuple[str, ...]
    aliases: tuple[str, ...]


@dataclass
class KernelModules:
    """What ``--kernel-module`` names resolved to."""

    release: str
    under_test: list[str] = field(default_factory=list)  # named, modular, in the order given
    builtin: dict[str, str] = field(default_factory=dict)  # named, built in: name -> as what
    modules: dict[str, KernelModule] = field(default_factory=dict)  # these and all their deps

    @property
    def dependencies(self) -> list[str]:
        return [n for n in self.modules if n not in self.under_test]


class ModuleTree:
    """Name → file index of a kernel's ``lib/modules/<release>`` tree, and its builtins."""

    def __init__(self, modules_dir: Path) -> None:
        self.dir = modules_dir
        self.files: dict[str, Path] = {}
        if modules_dir.is_dir():
            for ko in sorted(modules_dir.rglob("*.ko*")):
                if is_module_file(ko):
                    self.files.setdefault(module_name(ko), ko)
        self.builtin: set[str] = set()
        bi = modules_dir / "modules.builtin"
        if bi.is_file():
            for ln in bi.read_text(errors="replace").split():
                self.builtin.add(module_name(Path(ln)))
        # modules.builtin.modinfo: NUL-separated "module.key=value"; the aliases
        # name what a built-in module also answers to (ext4 serves "ext2")
        self.builtin_alias: dict[str, str] = {}
        bim = modules_dir / "modules.builtin.modinfo"
        if bim.is_file():
            for item in bim.read_bytes().split(b"\0"):
                mod, _, kv = item.decode(errors="replace").partition(".")
                k, _, v = kv.partition("=")
                if k == "alias" and v:
                    self.builtin_alias.setdefault(v.replace("-", "_"), mod)


def resolve(kernel: Kernel, names: list[str],
            extra_deps: list[str] | None = None) -> KernelModules:
    """The modules ``names`` and their dependencies; a built-in one is noted, an unknown
    one is an input error (before anything boots).  ``extra_deps``: kernel modules that
    ``--module-src`` builds depend on, put in the guest as dependencies."""
    res = KernelModules(kernel.release)
    if not names and not extra_deps:
        return res
    tree = ModuleTree(kernel.modules_dir)
    unknown = []
    for raw in names:
        n = raw.replace("-", "_")
        if n in tree.files:
            if n not in res.under_test:
                res.under_test.append(n)
        elif n in tree.builtin:
            res.builtin[n] = n
        elif n in tree.builtin_alias:
            res.builtin[n] = tree.builtin_alias[n]
        else:
            unknown.append(raw)
    if unknown:
        where = kernel.modules_dir if tree.files else f"{kernel.modules_dir} (no modules there)"
        raise InputError(f"--kernel-module {', '.join(unknown)}: no such module in {where}")

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in res.modules or n in tree.builtin or n not in tree.files:
            return  # done, built in, or (for a module-src dependency) not the kernel's
        if n in stack:
            raise InputError("kernel modules depend on each other in a cycle: "
                             f"{' -> '.join((*stack, n))}")
        src = tree.files[n]
        ko = plain_module(src)
        info = modinfo(ko)
        deps = tuple(depends(info))
        for d in deps:
            visit(d, (*stack, n))
        rel = str(src.relative_to(tree.dir))
        rel = rel[:rel.index(".ko") + 3]
        res.modules[n] = KernelModule(n, src, ko, rel, deps, tuple(info.get("alias", [])))

    for n in res.under_test + [d for d in (extra_deps or []) if d not in res.under_test]:
        visit(n, ())
    return res


@dataclass(frozen=True)
class LoadStep:
    """One line of the guest's load order: ``test`` modules are reported, ``dep`` ones not."""

    role: str  # "test" or "dep"
    name: str
    path: str  # in the guest

    def line(self) -> str:
        return f"{self.role} {self.name} {self.path}\n"


def module_src_depends(built: list[BuiltModule]) -> dict[str, list[str]]:
    return {m.name: depends(modinfo(m.ko)) for m in built}


def load_order(built: list[BuiltModule], kmods: KernelModules,
               built_deps: dict[str, list[str]]) -> list[LoadStep]:
    """Every module under test once, each after what it depends on (depth first, in the
    order given: kernel modules as named, then the ``--module-src`` ones by name)."""
    test = set(kmods.under_test) | {m.name for m in built}
    path = {m.name: f"{TRACEDEP_DIR}/{m.name}.ko" for m in built}
    deps = dict(built_deps)
    for n, km in kmods.modules.items():
        path[n] = f"/lib/modules/{kmods.release}/{km.rel}"
        deps[n] = list(km.depends)
    out: list[LoadStep] = []
    done: set[str] = set()

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in done or n not in path:
            return  # loaded already, or built in
        if n in stack:
            raise InputError(f"modules under test depend on each other in a cycle: "
                             f"{' -> '.join((*stack, n))}")
        for d in deps.get(n, []):
            visit(d, (*stack, n))
        done.add(n)
        out.append(LoadStep("test" if n in test else "dep", n, path[n]))

    for n in kmods.under_test + sorted(m.name for m in built):
        visit(n, ())
    return out


def _closure(kmods: KernelModules, name: str) -> list[str]:
    """Everything ``name`` needs, each after what it needs in turn."""
    out: list[str] = []

    def visit(n: str) -> None:
        for d in kmods.modules[n].depends:
            if d in kmods.modules and d not in out:
                visit(d)
                out.append(d)

    visit(name)
    return out


def modules_dep(kmods: KernelModules) -> str:
    """``modules.dep`` as depmod writes it: each module's whole dependency closure, the one
    to load first last (busybox and kmod modprobe load the list from its end)."""
    return "".join(f"{km.rel}:" + "".join(f" {kmods.modules[d].rel}"
                                          for d in reversed(_closure(kmods, n))) + "\n"
                   for n, km in kmods.modules.items())


def modules_alias(kmods: KernelModules) -> str:
    return "".join(f"alias {a} {n}\n" for n, km in kmods.modules.items() for a in km.aliases)


def with_dwarf(kernel: Kernel, kmods: KernelModules) -> tuple[list[BuiltModule], list[str]]:
    """The modules under test as .ko files with DWARF, for finding their inlined locks:
    Debian's stripped modules have none, their twins in the -dbg package do (same
    build, same layout).  Returns those found and, in words, those not."""
    from tracedep.common.cache import cache_root
    from tracedep.errors import TracedepError
    from tracedep.vm.debug_packages import dbg_modules_dir, ensure_dbg_vmlinux

    if not kmods.under_test:
        return [], []
    dbg_dir: Path | None = None
    why = ""
    if kernel.abi:
        pk = kernel.packages
        try:
            ensure_dbg_vmlinux(kernel.release, cache_root(),
                               pk.dbg.version if pk is not None and pk.dbg else None)
            dbg_dir = dbg_modules_dir(kernel.release, cache_root())
        except TracedepError as e:
            why = str(e)
    out: list[BuiltModule] = []
    missing: list[str] = []
    for n in kmods.under_test:
        km = kmods.modules[n]
        # a user's kernel: its own modules may carry DWARF
        ko = dbg_dir / km.rel if dbg_dir is not None else km.ko
        if ko.is_file():
            out.append(BuiltModule(n, ko, ko.parent, ko.parent))
        else:
            missing.append(f"{n}: no debug .ko ({why or ko})")
    return out, missing
