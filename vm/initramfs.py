"""The guest's initramfs: busybox-static, tracedep's init, its pump, and the modules under test.

Written as a ``newc`` cpio archive directly (no root, no cpio binary), gzip'd.
"""

from __future__ import annotations

import gzip
import io
import logging
import shlex
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_output
from tracedep.common.machines import Machine
from tracedep.errors import RunError
from tracedep.vm.kernel import Kernel, download, extract, locked
from tracedep.vm.kmodules import (
    TRACEDEP_DIR,
    KernelModules,
    LoadStep,
    modules_alias,
    modules_dep,
)
from tracedep.vm.modules import BuiltModule, is_module_file, module_name, plain_module

log = logging.getLogger(__name__)

GUEST_DIR = Path(__file__).resolve().parent / "guest"


class Cpio:
    """A minimal newc writer; enough for an initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0)
        )
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


@dataclass
class GuestConfig:
    """What the guest's init is told (becomes /etc/tracedep/*)."""

    mode: str = "trace"  # or "discover"
    kprobes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    stack_triggers: list[str] = field(default_factory=list)
    buffer_kb: int = 16384
    settle_s: float = 0.5
    workload: str | None = None  # shell text; None = the default workload


def busybox_binary(machine: Machine) -> Path:
    """busybox-static of the guest's architecture, from its Debian package (cached)."""
    deb = download(machine.busybox_package, cache_root() / "debs")
    root = cache_root() / "busybox" / machine.debian_arch
    extract([deb], root)
    bb = root / "bin" / "busybox"
    if not bb.is_file():
        raise RunError(f"{deb.name} holds no bin/busybox")
    return bb


def guest_binary(machine: Machine, name: str) -> Path:
    """``vm/guest/<name>.c`` built static for the guest (cached by source)."""
    src = GUEST_DIR / f"{name}.c"
    import hashlib

    key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = cache_root() / "guest-bin" / machine.arch / f"{name}-{key}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.with_suffix(".lock")):
        if out.is_file():
            return out
        cc = f"{machine.cross_compile}gcc"
        with atomic_output(out) as tmp:
            proc = subprocess.run(
                [cc, "-static", "-O2", "-Wall", "-o", str(tmp), str(src)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RunError(f"cannot build the guest's {name} with {cc}: "
                               f"{proc.stderr.strip()[:300]}")
    return out


def pump_binary(machine: Machine) -> Path:
    """tdpump: moves a CPU's ring buffer to its port (vm/guest/tdpump.c)."""
    return guest_binary(machine, "tdpump")


def loader_binary(machine: Machine) -> Path:
    """tdinsmod: loads a module with one finit_module() (vm/guest/tdinsmod.c)."""
    return guest_binary(machine, "tdinsmod")


def boot_module_order(kernel: Kernel, wanted: list[str]) -> list[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in kernel.modules_dir.rglob("*.ko*"):
        if is_module_file(ko):
            index[module_name(ko)] = ko
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        ko = index.get(name)
        if ko is None:
            return  # built in
        deps = subprocess.run(
            ["/sbin/modinfo", "-F", "depends", str(ko)], capture_output=True, text=True
        ).stdout.strip()
        for dep in filter(None, deps.split(",")):
            visit(dep)
        order.append(ko)

    for w in wanted:
        visit(w)
    return order


def build_initramfs(
    machine: Machine,
    kernel: Kernel,
    modules: list[BuiltModule],
    cfg: GuestConfig,
    out: Path,
    kmods: KernelModules | None = None,
    load_order: list[LoadStep] | None = None,
) -> Path:
    """The guest's initramfs.  ``kmods``: kernel modules (under test and dependencies)
    under /lib/modules/<release>/ with their modules.dep; ``load_order``: the order the
    default workload loads every module under test in (default: the built ones by name)."""
    cpio = Cpio()
    for d in ("dev", "proc", "sys", "tmp", "root", "etc/tracedep", "lib/modules/tracedep",
              "lib/modules/boot", "sys/kernel/tracing", "sys/kernel/debug"):
        cpio.mkdir(d)
    cpio.file("bin/busybox", busybox_binary(machine).read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("bin/tdpump", pump_binary(machine).read_bytes(), 0o755)
    cpio.file("bin/tdinsmod", loader_binary(machine).read_bytes(), 0o755)
    cpio.file("init", (GUEST_DIR / "init.sh").read_bytes(), 0o755)
    boot_mods = boot_module_order(kernel, ["virtio_pci", "virtio_console", machine.panic_module])
    for ko in boot_mods:
        # decompressed on the host: busybox's insmod takes plain ELF only
        cpio.file(f"lib/modules/boot/{module_name(ko)}.ko", plain_module(ko).read_bytes())
    cpio.file(
        "etc/tracedep/kmods", "".join(module_name(ko) + "\n" for ko in boot_mods).encode()
    )
    for m in modules:
        cpio.file(f"lib/modules/tracedep/{m.name}.ko", m.ko.read_bytes())
    if kmods is not None and kmods.modules:
        kdir = f"lib/modules/{kmods.release}"
        for km in kmods.modules.values():
            cpio.file(f"{kdir}/{km.rel}", km.ko.read_bytes())
        cpio.file(f"{kdir}/modules.dep", modules_dep(kmods).encode())
        cpio.file(f"{kdir}/modules.alias", modules_alias(kmods).encode())
        # busybox modprobe reads it to say "module X is builtin" instead of "not found"
        builtin = kernel.modules_dir / "modules.builtin"
        if builtin.is_file():
            cpio.file(f"{kdir}/modules.builtin", builtin.read_bytes())
    if load_order is None:
        load_order = [LoadStep("test", m.name, f"{TRACEDEP_DIR}/{m.name}.ko")
                      for m in sorted(modules, key=lambda m: m.name)]
    cpio.file("etc/tracedep/load_order", "".join(s.line() for s in load_order).encode())
    conf = {
        "TD_MODE": cfg.mode,
        "TD_TEXT_SYMBOL": machine.text_symbol,
        "TD_BUFFER_KB": str(cfg.buffer_kb),
        "TD_SETTLE": f"{cfg.settle_s:g}",
        # the default workload reports what it loads; a custom one may use plain insmod
        "TD_POLL": "0" if cfg.workload is None else "1",
    }
    cpio.file(
        "etc/tracedep/config",
        "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()).encode(),
    )
    cpio.file("etc/tracedep/kprobes", "".join(d + "\n" for d in cfg.kprobes).encode())
    cpio.file("etc/tracedep/events", "".join(e + "\n" for e in cfg.events).encode())
    cpio.file(
        "etc/tracedep/stack_triggers", "".join(t + "\n" for t in cfg.stack_triggers).encode()
    )
    workload = cfg.workload
    if workload is None:
        workload = (GUEST_DIR / "default_workload.sh").read_text()
    cpio.file("workload.sh", workload.encode(), 0o755)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(cpio.finish(), compresslevel=1))
    return out
