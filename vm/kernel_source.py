"""Debian's ``linux-source-<series>`` package: the kernel's own C source, as built.

The analysis needs source lines of code nobody gave it (the core kernel, the
kernel package's own modules): on a kernel without lockdep, ``mutex_lock_nested()``
and ``spin_lock_nested()`` are macros that compile to the plain lock, and the
call site's source line is the only place the annotation still exists.  Debian's
``linux-source-6.x`` carries the patched tree its binary packages were built from,
at the same version, so the DWARF line numbers of ``linux-image-…-dbg`` point into it.

Layout under the cache root::

    debs/linux-source-<series>_<version>_all.deb
    src/<version>/linux-source-<series>/…      (the tree, published by one rename)

The tree is extracted once per version (about 1.5 GB, a minute), and only when a
run needs it (``--kernel-module``): runs of out-of-tree drivers read their own sources.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_folder
from tracedep.errors import RunError
from tracedep.vm.debian_kernels import KernelPackages, Package
from tracedep.vm.kernel import download, locked

log = logging.getLogger(__name__)


def source_package(pk: KernelPackages) -> Package:
    """The source package of a resolved kernel: same upstream series, same Debian version."""
    return Package(f"linux-source-{pk.series}", pk.image.version, "all")


def source_tree_path(pk: KernelPackages, cache: Path | None = None) -> Path:
    """Where the tree of ``pk`` lives once extracted (it may not exist yet)."""
    return (cache or cache_root()) / "src" / pk.image.version / f"linux-source-{pk.series}"


def ensure_source_tree(pk: KernelPackages) -> Path:
    """The extracted source tree of the kernel ``pk`` (downloaded and extracted once).

    Raises :class:`RunError` (one line) when apt, dpkg-deb or tar fail.
    """
    tree = source_tree_path(pk)
    if tree.is_dir():
        return tree
    pkg = source_package(pk)
    deb = download(pkg.spec, cache_root() / "debs")
    root = tree.parent
    root.parent.mkdir(parents=True, exist_ok=True)
    with locked(root.with_name(root.name + ".lock")):
        if tree.is_dir():
            return tree
        with atomic_folder(root) as tmp:
            log.info("extracting %s (the kernel's source, about 1.5 GB)", deb.name)
            _run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], f"dpkg-deb -x {deb.name}")
            tarballs = sorted((tmp / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
            if not tarballs:
                raise RunError(f"{deb.name} holds no usr/src/linux-source-*.tar.*")
            # the tarball's top folder is linux-source-<series>/
            _run(["tar", "-xf", str(tarballs[0]), "-C", str(tmp)], f"tar -xf {tarballs[0].name}")
            shutil.rmtree(tmp / "deb")
            if not (tmp / tree.name).is_dir():
                raise RunError(f"{tarballs[0].name} has no top folder {tree.name}/")
    return tree


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RunError(f"{what}: {cmd[0]} not found") from e
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise RunError(f"{what} failed (exit {proc.returncode}): {lines[-1]}")
