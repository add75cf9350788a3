"""Per-page checksums of a run's raw trace: what changed since the run is not read.

When a run's trace is complete, ``trace/cpuN.raw`` gets a sidecar
``trace/cpuN.sums``: a CRC-32 of each ring-buffer page, little-endian u32s in
page order.  A later ``tracedep analyze`` (or any decode of the directory)
compares them: a page whose CRC differs (a flipped byte, a truncated or
overwritten file) is not read, and the decoder leaves a gap where its events
were (tracer.ftrace_binary), so the analysis forgets what it believed held
there.  Damage to the files after the run can then lose findings, never add one.

CRC-32 guards against accident (disks, copies, editors), not against someone who
rewrites both files on purpose.  A run directory without sums (older runs,
foreign traces) is decoded as before, on its own structural checks only.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

SUFFIX = ".sums"


def page_sums(buf: bytes, page_size: int) -> np.ndarray:
    """CRC-32 of each whole page of ``buf``."""
    n = len(buf) // page_size
    mv = memoryview(buf)
    return np.fromiter((zlib.crc32(mv[i * page_size:(i + 1) * page_size]) for i in range(n)),
                       dtype="<u4", count=n)


READ_PAGES = 4096  # pages read at a time: a 30-minute trace is gigabytes a CPU


def write(raw: Path, page_size: int) -> Path:
    """Write ``raw``'s sidecar, reading ``raw`` a piece at a time; returns its path."""
    dest = raw.with_suffix(SUFFIX)
    tmp = dest.with_name(f".{dest.name}.tmp")
    piece = max(page_size, 1) * READ_PAGES
    with raw.open("rb") as src, tmp.open("wb") as out:
        while len(buf := src.read(piece)) >= page_size > 0:
            out.write(page_sums(buf, page_size).tobytes())
            if len(buf) < piece:
                break
    tmp.replace(dest)
    return dest


def recorded_pages(raw: Path) -> int | None:
    """How many pages ``raw`` had when its sums were written (None: no sums)."""
    side = raw.with_suffix(SUFFIX)
    return side.stat().st_size // 4 if side.is_file() else None


def recorded(raw: Path) -> np.ndarray | None:
    """The sums written for ``raw``, one per page (None: none were written)."""
    side = raw.with_suffix(SUFFIX)
    if not side.is_file():
        return None
    data = side.read_bytes()
    return np.frombuffer(data[: len(data) // 4 * 4], dtype="<u4")


def damaged(raw: Path, buf: bytes, page_size: int) -> np.ndarray | None:
    """Per page of ``buf`` (the contents of ``raw``): does it differ from what was
    recorded?  None when no sums were recorded.  A page the sums do not cover (the
    file grew) counts as changed; pages the file lost are counted by the caller
    (:func:`recorded_pages`)."""
    want = recorded(raw)
    if want is None:
        return None
    have = page_sums(buf, page_size)
    out = np.ones(len(have), dtype=bool)
    k = min(len(want), len(have))
    out[:k] = have[:k] != want[:k]
    return out
