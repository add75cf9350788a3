"""Out-of-tree driver modules: build each ``--module-src`` with kbuild against the guest kernel.

Sources are copied to a build directory in the cache keyed by their content, so
the user's tree never receives build products and an unchanged driver is not
rebuilt.  Debug info comes from the kernel's own config (``CONFIG_DEBUG_INFO``);
``-g`` is forced in case a user kernel lacks it, because the symbolizer needs it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_write
from tracedep.common.machines import Machine
from tracedep.errors import InputError, ModuleBuildError
from tracedep.vm.kernel import Kernel, locked

log = logging.getLogger(__name__)

BUILD_PRODUCTS = re.compile(r"\.(o|ko|mod|mod\.c|cmd|symvers|order|a)$|^\.tmp_|^modules\.order$")


@dataclass(frozen=True)
class BuiltModule:
    name: str  # as the kernel names it (dashes become underscores)
    ko: Path
    src_dir: Path  # the user's directory, for reports
    build_dir: Path  # where the .ko and its objects are (DWARF paths point here)


def _source_files(src: Path) -> list[Path]:
    files = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and not BUILD_PRODUCTS.search(p.name) and not any(
            part.startswith(".") for part in rel.parts
        ):
            files.append(p)
    return files


def _digest(src: Path, files: list[Path], kernel: Kernel, machine: Machine) -> str:
    h = hashlib.sha256()
    h.update(f"{kernel.release}\0{machine.arch}\0{kernel.build_dir}\0".encode())
    for p in files:
        h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if re.search(r"\berror\b|No rule to make target|missing", line, re.I):
            return line.strip()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def build_module_dir(src: Path, kernel: Kernel, machine: Machine) -> list[BuiltModule]:
    """Build one kbuild directory; return every module it produced."""
    src = src.resolve()
    if not src.is_dir():
        raise InputError(f"--module-src {src}: no such directory")
    files = _source_files(src)
    if not any(p.name in ("Kbuild", "Makefile") for p in files):
        raise ModuleBuildError(f"--module-src {src}: no Kbuild or Makefile")
    if kernel.build_dir is None:
        raise InputError("this kernel has no build tree (headers) to build modules against")
    key = _digest(src, files, kernel, machine)
    out = cache_root() / "build" / kernel.release / f"{src.name}-{key}"
    with locked(out.with_name(out.name + ".lock")):
        done = out / ".tracedep-built"
        if not done.exists():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            for p in files:
                dest = out / p.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest)
            cmd = [
                "make",
                "-C",
                str(kernel.build_dir),
                f"M={out}",
                f"ARCH={machine.kbuild_arch}",
                "modules",
                # -g for the symbolizer even on kernels built without DEBUG_INFO
                "KCFLAGS=-g",
                f"-j{os.cpu_count() or 1}",
            ]
            if machine.cross_compile:
                cmd.append(f"CROSS_COMPILE={machine.cross_compile}")
            log.info("building %s", src)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                (out / "build.log").write_text(proc.stdout + proc.stderr)
                if "pahole" in proc.stdout + proc.stderr and not shutil.which("pahole"):
                    # 6.12's headers ship a BTF vmlinux: kbuild runs "BTF [M]" with pahole
                    raise ModuleBuildError(f"--module-src {src} does not build: this kernel "
                                           "builds BTF for modules and needs pahole "
                                           "(apt-get install dwarves)")
                raise ModuleBuildError(
                    f"--module-src {src} does not build: {_first_error(proc.stderr + proc.stdout)}"
                )
            done.write_text(" ".join(cmd) + "\n")
    kos = sorted(out.rglob("*.ko"))
    if not kos:
        raise ModuleBuildError(f"--module-src {src} built no .ko (is obj-m set?)")
    return [
        BuiltModule(name=k.stem.replace("-", "_"), ko=k, src_dir=src, build_dir=out) for k in kos
    ]


def build_modules(srcs: list[Path], kernel: Kernel, machine: Machine) -> list[BuiltModule]:
    built: list[BuiltModule] = []
    seen: dict[str, Path] = {}
    for src in srcs:
        for m in build_module_dir(src, kernel, machine):
            if m.name in seen:
                raise InputError(
                    f"module {m.name} is built by both {seen[m.name]} and {m.src_dir}"
                )
            seen[m.name] = m.src_dir
            built.append(m)
    return built


# Debian compresses the kernel package's modules since 6.x (``.ko.xz`` on 6.12);
# the guest's busybox insmod and our ELF readers want the plain ELF.
_DECOMPRESSORS = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"], ".gz": ["gzip", "-dc"]}


def is_module_file(p: Path) -> bool:
    return p.name.endswith(".ko") or (
        p.name[:-len(p.suffix)].endswith(".ko") and p.suffix in _DECOMPRESSORS)


def module_name(p: Path) -> str:
    """``pvpanic-pci.ko.xz`` → ``pvpanic_pci``, as the kernel names it."""
    return p.name.split(".ko")[0].replace("-", "_")


def plain_module(ko: Path) -> Path:
    """``ko`` itself if it is a plain ELF, else a decompressed copy in the cache (once)."""
    if ko.suffix == ".ko":
        return ko
    tool = _DECOMPRESSORS.get(ko.suffix)
    if tool is None:
        raise ModuleBuildError(f"{ko}: not a kernel module file")
    st = ko.stat()
    key = hashlib.sha256(f"{ko.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    # keep the tree's lib/modules/<release>/… path under the cache key: the symbolizer
    # finds a module's -dbg twin by that path (analysis.dwarf_pass)
    rel = str(ko)[:-len(ko.suffix)]
    tail = "lib/modules/" + rel.split("/lib/modules/", 1)[1] if "/lib/modules/" in rel else \
        Path(rel).name
    out = cache_root() / "kmod" / key[:16] / tail
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*tool, str(ko)], capture_output=True)
    if proc.returncode != 0 or not proc.stdout.startswith(b"\x7fELF"):
        why = proc.stderr.decode(errors="replace").strip() or "not an ELF inside"
        raise ModuleBuildError(f"{ko}: cannot decompress ({why})")
    atomic_write(out, proc.stdout, fsync=False)
    return out


def bundled_drivers_dir() -> Path:
    return Path(__file__).resolve().parent / "drivers"


def bundled_driver_dirs() -> list[Path]:
    root = bundled_drivers_dir()
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "Kbuild").exists()) if (
        root.is_dir()
    ) else []
