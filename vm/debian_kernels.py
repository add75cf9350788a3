"""Which Debian cloud kernel to use: resolved from this host's apt lists, never pinned.

Debian's archive keeps only the newest ``linux-kbuild-6.1``; older ABIs' images
and headers linger, but without the kbuild they cannot build a module.  So the
kernel is chosen when it is fetched: the newest ABI of the chosen series whose
image, headers, common headers, kbuild (same upstream version) and ``-dbg``
all have an apt candidate.  A pinned ABI would break every fresh machine the
day a security update lands.

Debian names ABIs in two forms, both accepted:

* ``6.1.0-57``: the 6.1 series (bookworm), release ``6.1.0-57-cloud-amd64``;
* ``6.12.118+deb12``: the 6.12 series (Debian 13's kernel, in bookworm-security
  and bookworm-backports), release ``6.12.118+deb12-cloud-amd64``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

from tracedep.common.kernel_packages import KernelPackages, Package
from tracedep.errors import InputError

__all__ = ["DEFAULT_SERIES", "SERIES", "KernelPackages", "Package", "resolve"]

# Debian stable (13, trixie, since 2025-08) runs 6.12: what users run is the default.
DEFAULT_SERIES = "6.12"
SERIES = ("6.1", "6.12")

ABI_RE = re.compile(r"(?P<series>\d+\.\d+)(?:\.0-\d+|\.\d+\+deb\d+)")


def series_of(abi: str) -> str:
    m = ABI_RE.fullmatch(abi)
    if not m:
        raise InputError(f"kernel ABI {abi!r} is not Debian's (6.1.0-57 or 6.12.118+deb12)")
    return m.group("series")


def check_series(series: str) -> str:
    if series not in SERIES:
        raise InputError(f"kernel series {series!r} is not one of {', '.join(SERIES)}")
    return series


def _abi_key(abi: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", abi))


def upstream(version: str) -> str:
    """``6.12.118-1~deb12u1`` → ``6.12.118``; ``6.1.192-3`` → ``6.1.192``."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


class Apt:
    """This host's apt lists, read through ``apt-cache`` (no network)."""

    def _run(self, *args: str) -> str:
        try:
            proc = subprocess.run(["apt-cache", *args], capture_output=True, text=True)
        except FileNotFoundError:
            raise InputError("apt-cache not found: Debian kernels need a Debian host") from None
        return proc.stdout

    def names(self, prefix: str) -> list[str]:
        return self._run("pkgnames", prefix).split()

    def candidates(self, names: list[str]) -> dict[str, str]:
        """``name[:arch]`` → candidate version, for those that have one."""
        out: dict[str, str] = {}
        current = None
        for line in self._run("policy", *names).splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                current = line[:-1]
            elif current and line.strip().startswith("Candidate:"):
                v = line.split(":", 1)[1].strip()
                if v and v != "(none)":
                    out[current] = v
        return out

    def depends(self, name: str, version: str) -> str:
        for line in self._run("show", f"{name}={version}").splitlines():
            if line.startswith("Depends:"):
                return line.partition(":")[2]
        return ""


def _abis(apt: Apt, flavour: str, series: str) -> list[str]:
    pat = re.compile(rf"linux-image-(?P<abi>.+)-{re.escape(flavour)}-unsigned")
    found = []
    for n in apt.names("linux-image-"):
        m = pat.fullmatch(n)
        if m and ABI_RE.fullmatch(m["abi"]) and series_of(m["abi"]) == series:
            found.append(m["abi"])
    return sorted(set(found), key=_abi_key, reverse=True)


def _try(apt: Apt, abi: str, flavour: str, arch: str, host_arch: str
         ) -> KernelPackages | str:
    """The packages of ``abi``, or why they cannot all be had."""
    release = f"{abi}-{flavour}"
    q = f":{arch}" if arch != host_arch else ""
    want = {"image": f"linux-image-{release}-unsigned{q}",
            "headers": f"linux-headers-{release}{q}",
            "headers_common": f"linux-headers-{abi}-common",
            "dbg": f"linux-image-{release}-dbg{q}"}
    cand = apt.candidates(list(want.values()))
    missing = [n for n in want.values() if n not in cand]
    if missing:
        return f"{abi}: no {', '.join(missing)}"
    pkgs = {k: Package(n.split(":")[0], cand[n], arch if k != "headers_common" else "all")
            for k, n in want.items()}
    # kbuild's host tools (fixdep, modpost) run on the host, for cross builds too
    deps = apt.depends(pkgs["headers"].name, pkgs["headers"].version)
    m = re.search(r"(linux-kbuild-[\w.+~-]+?)(?=[\s,(]|$)", deps)
    if not m:
        return f"{abi}: {pkgs['headers'].name} names no linux-kbuild package"
    kname = m.group(1)
    kcand = apt.candidates([kname]).get(kname)
    if not kcand:
        return f"{abi}: no {kname}"
    want_v = pkgs["headers"].version
    if upstream(kcand) != upstream(want_v):
        return f"{abi}: {kname} is {kcand}, built for another kernel than {want_v}"
    notes = []
    if kcand != want_v:
        notes.append(f"{kname} {kcand} used with headers {want_v} (same upstream "
                     f"{upstream(want_v)}, another Debian revision)")
    return KernelPackages(series=series_of(abi), abi=abi, release=release,
                          image=pkgs["image"], headers=pkgs["headers"],
                          headers_common=pkgs["headers_common"],
                          kbuild=Package(kname, kcand, host_arch), dbg=pkgs["dbg"],
                          notes=tuple(notes))


def resolve(flavour: str, arch: str, host_arch: str, *, series: str | None = None,
            abi: str | None = None, apt: Apt | None = None) -> KernelPackages:
    """The kernel to fetch: ``abi`` if given, else the newest complete one of ``series``.

    Raises :class:`InputError` with one line naming what is available instead.
    """
    apt = apt or Apt()
    if abi:
        ser = series_of(abi)
        if series and series != ser:
            raise InputError(f"--abi {abi} is not of --kernel-series {series}")
        got = _try(apt, abi, flavour, arch, host_arch)
        if isinstance(got, KernelPackages):
            return got
        avail = _abis(apt, flavour, ser)
        raise InputError(f"kernel {abi}-{flavour} cannot be had ({got}); available "
                         f"{ser} ABIs: {', '.join(avail[:6]) or 'none'}")
    ser = check_series(series or DEFAULT_SERIES)
    why: list[str] = []
    for cand in _abis(apt, flavour, ser):
        got = _try(apt, cand, flavour, arch, host_arch)
        if isinstance(got, KernelPackages):
            if why:
                got = replace(got, notes=(*got.notes, f"newer ABIs skipped: {'; '.join(why)}"))
            return got
        why.append(got)
        if len(why) >= 4:
            break
    others = {s: _abis(apt, flavour, s)[:1] for s in SERIES if s != ser}
    other = ", ".join(f"{s}: {a[0]}" for s, a in others.items() if a) or "none"
    detail = "; ".join(why) if why else "apt knows no such package (run apt-get update?)"
    raise InputError(f"no Debian {ser} kernel for {flavour} can be downloaded ({detail}); "
                     f"other series: {other}")
