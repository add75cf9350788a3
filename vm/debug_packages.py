"""Debian ``linux-image-<abi>-dbg`` packages: the vmlinux and .ko files with DWARF.

Layout under ``cache`` (the tracedep cache root, e.g. ``~/.cache/tracedep``)::

    debs/linux-image-<abi>-dbg_<version>_<arch>.deb
    dbg/<abi>/usr/lib/debug/boot/vmlinux-<abi>
    dbg/<abi>/usr/lib/debug/lib/modules/<abi>/kernel/...ko

Each ABI gets its own extraction root so that the extraction can be published
with one atomic ``rename``: a half-extracted 590 MB vmlinux is never seen.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_folder
from tracedep.common.kernel_packages import KernelPackages
from tracedep.errors import DebugSymbolsError

log = logging.getLogger(__name__)


def dbg_package_name(abi: str) -> str:
    return f"linux-image-{abi}-dbg"


def dbg_root(abi: str, cache: Path) -> Path:
    """Extraction root of the -dbg package of ``abi`` (exists only once complete)."""
    return cache / "dbg" / abi


def dbg_vmlinux_path(abi: str, cache: Path) -> Path:
    return dbg_root(abi, cache) / "usr/lib/debug/boot" / f"vmlinux-{abi}"


def dbg_modules_dir(abi: str, cache: Path) -> Path:
    """Directory of the debug .ko files of in-tree modules (``kernel/...``)."""
    return dbg_root(abi, cache) / "usr/lib/debug/lib/modules" / abi


def _find_deb(abi: str, debs: Path, version: str | None = None) -> Path | None:
    # A crashed download leaves apt's "*.deb.partial"-style names or nothing; the
    # glob only matches finished files, and dpkg-deb rejects a truncated one below.
    ver = version.replace(":", "%3a") if version else "*"
    found = sorted(debs.glob(f"{dbg_package_name(abi)}_{ver}_*.deb"))
    return found[-1] if found else None


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise DebugSymbolsError(f"{what}: {cmd[0]} not found") from e
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        # apt prints warnings before its error; the last E: line is the useful one.
        errs = [ln for ln in lines if ln.startswith("E:")]
        detail = (errs or lines or ["no output"])[-1]
        raise DebugSymbolsError(f"{what} failed (exit {proc.returncode}): {detail}")


def download_dbg_deb(abi: str, cache: Path, version: str | None = None) -> Path:
    """Return the -dbg .deb for ``abi`` under ``cache/debs``, downloading it if needed.

    ``version``: the exact Debian version (the one the run's kernel came with).
    """
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(abi, debs, version)
    if deb is not None:
        return deb
    pkg = dbg_package_name(abi) + (f"={version}" if version else "")
    log.info("downloading %s (about 300 MB)", pkg)
    _run(["apt-get", "download", pkg], debs, f"apt-get download {pkg}")
    deb = _find_deb(abi, debs, version)
    if deb is None:
        raise DebugSymbolsError(f"apt-get download {pkg} succeeded but left no .deb in {debs}")
    return deb


def ensure_dbg_vmlinux(abi: str, cache: Path, version: str | None = None) -> Path:
    """Return the path of the debug vmlinux of ``abi``, downloading and extracting once.

    Idempotent and safe against interruption: the package is extracted into a
    temporary directory next to its final place and renamed into place only when
    ``dpkg-deb -x`` finished.  Raises :class:`DebugSymbolsError` (one line) if
    apt or dpkg-deb fails.
    """
    vmlinux = dbg_vmlinux_path(abi, cache)
    if vmlinux.is_file():
        return vmlinux
    had_deb = _find_deb(abi, cache / "debs", version) is not None
    deb = download_dbg_deb(abi, cache, version)
    try:
        _extract(deb, abi, cache)
    except DebugSymbolsError:
        if not had_deb:
            raise
        # A .deb left by an interrupted download is truncated: fetch it again, once.
        log.warning("%s does not extract; downloading it again", deb.name)
        deb.unlink()
        _extract(download_dbg_deb(abi, cache, version), abi, cache)
    return vmlinux


def _extract(deb: Path, abi: str, cache: Path) -> None:
    root = dbg_root(abi, cache)
    vmlinux = dbg_vmlinux_path(abi, cache)
    # Another process may publish the same extraction first: keep theirs.
    with atomic_folder(root, keep_existing=True) as tmp:
        log.info("extracting %s", deb.name)
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], root.parent, f"dpkg-deb -x {deb.name}")
        if not (tmp / vmlinux.relative_to(root)).is_file():
            raise DebugSymbolsError(f"{deb.name} has no {vmlinux.relative_to(root)}")


def debug_vmlinux(release: str | None, abi: str | None, packages: KernelPackages | None
                  ) -> Path | None:
    """The Debian -dbg vmlinux of a Debian kernel (downloaded once), or None.

    ``packages``: the kernel's packages as the run recorded them, for the exact -dbg
    version.  The command line calls this before an analysis, which itself never
    downloads."""
    if not release or not abi:
        return None
    version = packages.dbg.version if packages is not None and packages.dbg else None
    try:
        return ensure_dbg_vmlinux(release, cache_root(), version)
    except Exception as e:  # no network, no space: names from kallsyms still work
        log.warning("no debug vmlinux for %s: %s", release, e)
        return None
