"""The Debian packages of one kernel, as a run records them (manifest ``kernel.packages``).

Resolved by ``vm.debian_kernels`` (apt), written into the run manifest, and read back by
the analysis's run summary: a record every stage shares, so it sits below them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Package:
    """One Debian binary package, exactly as downloaded."""

    name: str
    version: str
    arch: str  # dpkg architecture ("all" for arch-independent packages)

    @property
    def spec(self) -> str:
        """``name:arch=version`` as ``apt-get download`` takes it."""
        qual = f":{self.arch}" if self.arch != "all" else ""
        return f"{self.name}{qual}={self.version}"


@dataclass(frozen=True)
class KernelPackages:
    """A resolved kernel: the packages of one ABI (recorded in the run manifest)."""

    series: str
    abi: str
    release: str  # uname -r
    image: Package
    headers: Package
    headers_common: Package
    kbuild: Package
    dbg: Package | None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KernelPackages:
        def pkg(v: Any) -> Package:
            return Package(str(v["name"]), str(v["version"]), str(v["arch"]))

        return cls(series=str(d["series"]), abi=str(d["abi"]), release=str(d["release"]),
                   image=pkg(d["image"]), headers=pkg(d["headers"]),
                   headers_common=pkg(d["headers_common"]), kbuild=pkg(d["kbuild"]),
                   dbg=pkg(d["dbg"]) if d.get("dbg") else None,
                   notes=tuple(str(n) for n in d.get("notes", ())))
