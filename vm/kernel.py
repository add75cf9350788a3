"""Kernel packages: download, extract and cache a Debian kernel, its modules and headers.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
(never installed), under ``~/.cache/tracedep`` (``TRACEDEP_CACHE`` overrides).
Extraction goes to a temporary directory renamed into place, under a file
lock, so a killed or concurrent run never leaves a half-extracted tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_folder
from tracedep.common.machines import Machine
from tracedep.errors import InputError, RunError
from tracedep.vm.debian_kernels import DEFAULT_SERIES, KernelPackages, resolve

log = logging.getLogger(__name__)


def default_abi() -> str | None:
    return os.environ.get("TRACEDEP_KERNEL_ABI") or None


def default_series() -> str:
    return os.environ.get("TRACEDEP_KERNEL_SERIES") or DEFAULT_SERIES


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot and to build modules against."""

    release: str  # uname -r, e.g. 6.12.118+deb12-cloud-amd64
    abi: str  # Debian ABI, e.g. 6.1.0-57 or 6.12.118+deb12 ("" for a user-supplied kernel)
    package_version: str  # Debian package version, e.g. 6.1.192-3 ("" if unknown)
    image: Path  # bzImage / Image given to -kernel
    modules_dir: Path  # lib/modules/<release>
    build_dir: Path | None  # kbuild tree (headers) for out-of-tree modules
    config: Path | None
    vmlinux: Path | None = None  # with DWARF, when known
    packages: KernelPackages | None = None  # the Debian packages it came from


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(package: str, dest: Path) -> Path:
    """``apt-get download`` one package into ``dest`` (cached); return the .deb path."""
    dest.mkdir(parents=True, exist_ok=True)
    # name[:arch][=version], as apt-get takes it
    spec, _, version = package.partition("=")
    name, _, arch = spec.partition(":")

    def cached() -> list[Path]:
        ver = version.replace(":", "%3a") if version else "*"
        return sorted(dest.glob(f"{name}_{ver}_{arch or '*'}.deb"))

    found = cached()
    if found:
        return found[-1]
    with locked(dest / f".{name}.lock"):
        found = cached()
        if found:
            return found[-1]
        log.info("downloading %s", package)
        proc = subprocess.run(
            ["apt-get", "download", package],
            cwd=dest,
            capture_output=True,
            text=True,
        )
        found = cached()
        if proc.returncode != 0 or not found:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"cannot download Debian package {package}: {err}")
        return found[-1]


def extract(debs: list[Path], dest: Path) -> None:
    """Unpack ``debs`` into ``dest`` atomically (skip if already there)."""
    if dest.is_dir():
        return
    with locked(dest.with_name(dest.name + ".lock")):
        if dest.is_dir():
            return
        with atomic_folder(dest) as tmp:
            for deb in debs:
                proc = subprocess.run(
                    ["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True
                )
                if proc.returncode != 0:
                    raise RunError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")


def _fix_headers(root: Path, release: str) -> Path:
    """Point the extracted headers' Makefile at the extracted common tree.

    Debian's headers carry an absolute ``include /usr/src/...`` that assumes an
    installed package; their relative ``scripts`` links already resolve inside
    the tree because linux-kbuild is extracted beside them.
    """
    src = root / "usr" / "src"
    build = src / f"linux-headers-{release}"
    makefile = build / "Makefile"
    text = makefile.read_text()
    fixed = re.sub(r"^include /usr/src/", f"include {src}/", text, flags=re.M)
    if fixed != text:
        makefile.write_text(fixed)
    return build


def package_version(deb: Path) -> str:
    # name_version_arch.deb; the version's epoch colon is encoded as %3a
    return deb.name.split("_")[1].replace("%3a", ":")


def resolve_kernel(machine: Machine, abi: str | None = None,
                   series: str | None = None) -> KernelPackages:
    """The Debian kernel packages to use (see :mod:`tracedep.vm.debian_kernels`)."""
    abi = abi or default_abi()
    # an explicit ABI names its own series; the default series applies only without one
    return resolve(machine.flavour, machine.debian_arch, host_debian_arch(),
                   series=series or (None if abi else default_series()), abi=abi)


def fetch_debian_kernel(machine: Machine, abi: str | None = None,
                        series: str | None = None) -> Kernel:
    """Download (once) and unpack Debian's kernel image and headers for ``machine``."""
    pk = resolve_kernel(machine, abi, series)
    debs_dir = cache_root() / "debs"
    image_deb = download(pk.image.spec, debs_dir)
    debs = [image_deb, download(pk.headers.spec, debs_dir),
            download(pk.headers_common.spec, debs_dir), download(pk.kbuild.spec, debs_dir)]
    root = cache_root() / "kernels" / pk.release
    # keyed by the exact package versions: a rebuilt upload is a new tree
    digest = hashlib.sha256(" ".join(d.name for d in debs).encode()).hexdigest()[:12]
    tree = root / f"tree-{digest}"
    extract(debs, tree)
    with locked(root / "fixup.lock"):
        build = _fix_headers(tree, pk.release)
    image = tree / machine.kernel_in_pkg.format(abi=pk.abi, flavour=machine.flavour)
    return Kernel(
        release=pk.release,
        abi=pk.abi,
        package_version=pk.image.version,
        image=image,
        modules_dir=tree / "lib" / "modules" / pk.release,
        build_dir=build,
        config=tree / "boot" / f"config-{pk.release}",
        packages=pk,
    )


def user_kernel(image: Path, modules_dir: Path | None, build_dir: Path | None,
                vmlinux: Path | None) -> Kernel:
    """A kernel given on the command line instead of a Debian package."""
    if not image.is_file():
        raise InputError(f"--kernel {image}: no such file")
    for opt, p in (("--kernel-modules", modules_dir), ("--kernel-build", build_dir)):
        if p is not None and not p.is_dir():
            raise InputError(f"{opt} {p}: no such directory")
    release = modules_dir.name if modules_dir else ""
    if not release and build_dir and (build_dir / "include/config/kernel.release").is_file():
        release = (build_dir / "include/config/kernel.release").read_text().strip()
    config = build_dir / ".config" if build_dir and (build_dir / ".config").is_file() else None
    return Kernel(
        release=release,
        abi="",
        package_version="",
        image=image,
        modules_dir=modules_dir or Path("/nonexistent"),
        build_dir=build_dir,
        config=config,
        vmlinux=vmlinux,
    )


_host_arch: str | None = None


def host_debian_arch() -> str:
    global _host_arch
    if _host_arch is None:
        _host_arch = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return _host_arch
