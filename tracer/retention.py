"""What a run keeps of its raw pages once they are analysed (``--raw``).

A busy guest writes ~4.5 MB of ring-buffer pages a second: 8 GB in 30 minutes.
After the analysis has written its reports, ``--raw`` says what to keep of
``trace/cpuN.raw``:

* ``keep`` (the default): everything, as the guest sent it;
* ``compress``: each file becomes ``cpuN.raw.gz`` (gzip, level 1: trace pages
  are mostly small integers and compress well, and level 1 costs the least CPU
  per byte); the decoder reads it back transparently (:func:`read_raw`);
* ``drop``: only the pages around each finding's witnesses are kept (the page
  holding each witness time, and :data:`MARGIN` pages either side, per CPU).
  The others become holes of a sparse file the same length, so a page keeps
  its offset and its recorded CRC (tracer.page_sums): a later decode finds
  every dropped page changed, does not read it and leaves a gap there, so a
  re-analysis loses what was dropped and invents nothing.

What was done and what it cost (bytes on disk before and after, pages kept,
seconds) goes into ``manifest.json`` → ``retention``.  The pages' checksums are
written before any of this (the run's end), so ``compress`` and ``drop`` never
change what a later decode trusts.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracedep.common import run_manifest as manifest
from tracedep.common.run_manifest import JsonObject
from tracedep.errors import TraceFormatError
from tracedep.tracer import control
from tracedep.tracer.ftrace_formats import parse_header_page

MODES = ("keep", "compress", "drop")
MARGIN = 2  # pages kept either side of a witness's page, per CPU
GZ_SUFFIX = ".gz"
_COPY_CHUNK = 16 << 20


def raw_files(trace_dir: Path) -> dict[int, Path]:
    """Each CPU's raw pages: ``cpuN.raw``, or ``cpuN.raw.gz`` after ``--raw compress``."""
    out: dict[int, Path] = {}
    for p in sorted(trace_dir.glob("cpu*.raw*")):
        stem = p.name.split(".", 1)[0][3:]
        if stem.isdigit() and p.name.endswith((".raw", ".raw" + GZ_SUFFIX)):
            out.setdefault(int(stem), p)
    return out


def read_raw(path: Path) -> bytes:
    """The pages of ``path``, decompressed if it is a ``.gz``.  A damaged ``.gz``
    gives what could be read before the damage (its lost pages are then counted
    from the page sums, as a truncated file's are)."""
    if not path.name.endswith(GZ_SUFFIX):
        return path.read_bytes()
    out = bytearray()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                out += chunk
    except (OSError, EOFError, zlib.error):
        pass  # the pages read so far are kept; the rest count as lost
    return bytes(out)


def _disk_bytes(p: Path) -> int:
    st = p.stat()
    return int(st.st_blocks) * 512 if hasattr(st, "st_blocks") else st.st_size


def pages_to_keep(page_ts: np.ndarray, witness_ts: Iterable[int], margin: int = MARGIN
                  ) -> np.ndarray:
    """Sorted page indices holding each witness time, ``margin`` pages either side."""
    ts = np.fromiter(witness_ts, dtype=np.int64)
    n = len(page_ts)
    if n == 0 or len(ts) == 0:
        return np.zeros(0, np.int64)
    # a page holds the events from its own start to the next page's
    at = np.clip(np.searchsorted(page_ts, ts, side="right") - 1, 0, n - 1)
    keep = np.unique(np.concatenate([at + d for d in range(-margin, margin + 1)]))
    return keep[(keep >= 0) & (keep < n)]


def _compress(raw: Path) -> Path:
    dest = raw.with_name(raw.name + GZ_SUFFIX)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with raw.open("rb") as src, gzip.open(tmp, "wb", compresslevel=1) as out:
        shutil.copyfileobj(src, out, _COPY_CHUNK)
    tmp.replace(dest)
    raw.unlink()
    return dest


def _decompress(gz: Path, raw: Path) -> None:
    """``gz`` back into ``raw`` a piece at a time, up to any damage (as :func:`read_raw`)."""
    with raw.open("wb") as out:
        try:
            with gzip.open(gz, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    out.write(chunk)
        except (OSError, EOFError, zlib.error):
            pass  # the pages read so far are kept; the rest count as lost


def _drop(raw: Path, page_size: int, witness_ts: list[int], margin: int) -> tuple[int, int]:
    """Rewrite ``raw`` as a sparse file holding only the pages to keep: (kept, pages)."""
    size = raw.stat().st_size
    with raw.open("rb") as f:
        headers = bytearray()
        for i in range(size // page_size):
            f.seek(i * page_size)
            headers += f.read(8)
    page_ts = np.frombuffer(bytes(headers), dtype="<u8").astype(np.int64)
    keep = pages_to_keep(page_ts, witness_ts, margin)
    tmp = raw.with_name(f".{raw.name}.tmp")
    with raw.open("rb") as src, tmp.open("wb") as out:
        for i in keep.tolist():
            src.seek(i * page_size)
            out.seek(i * page_size)
            out.write(src.read(page_size))
        out.truncate(size)
    os.replace(tmp, raw)
    return len(keep), len(page_ts)


@dataclass
class Retention:
    """What ``--raw`` did (manifest.json ``retention``)."""

    mode: str
    disk_bytes_before: int  # allocated on disk (a dropped page is a hole: no block)
    disk_bytes_after: int = 0
    seconds: float = 0.0
    pages: dict[str, dict[str, int]] = field(default_factory=dict)  # drop: per CPU kept/pages
    margin_pages: int | None = None  # drop: pages kept either side of a witness's page

    def to_json(self) -> JsonObject:
        d: JsonObject = {"mode": self.mode, "disk_bytes_before": self.disk_bytes_before,
                         "disk_bytes_after": self.disk_bytes_after, "seconds": self.seconds}
        if self.mode == "drop":
            d["pages"] = {k: dict(v) for k, v in self.pages.items()}
            d["margin_pages"] = self.margin_pages
        return d


def apply(trace_dir: Path, mode: str, page_size: int, witness_ts: list[int],
          margin: int = MARGIN) -> Retention:
    """Apply ``--raw mode`` to the raw pages in ``trace_dir``.  ``witness_ts``: every
    finding's witness times."""
    if mode not in MODES:
        raise TraceFormatError(f"--raw {mode}: not one of {', '.join(MODES)}")
    t0 = time.monotonic()
    files = raw_files(trace_dir)
    rec = Retention(mode, sum(_disk_bytes(p) for p in files.values()))
    if mode == "compress":
        for cpu, p in files.items():
            if not p.name.endswith(GZ_SUFFIX):
                files[cpu] = _compress(p)
    elif mode == "drop":
        for cpu, p in files.items():
            if p.name.endswith(GZ_SUFFIX):
                raw = p.with_name(p.name[:-len(GZ_SUFFIX)])
                _decompress(p, raw)
                p.unlink()
                files[cpu] = p = raw
            k, n = _drop(p, page_size, witness_ts, margin)
            rec.pages[f"cpu{cpu}"] = {"kept_pages": k, "pages": n}
        rec.margin_pages = margin
    rec.disk_bytes_after = sum(_disk_bytes(p) for p in files.values())
    rec.seconds = round(time.monotonic() - t0, 3)
    return rec


def retain_run(run_dir: Path, mode: str, witness_ts: list[int]) -> Retention | None:
    """Apply ``--raw mode`` to an analysed run directory and record it in its
    manifest; None when there is nothing to do (``keep``, or no pages at all)."""
    if mode == "keep":
        return None
    hp = control.load(run_dir / "control.log").header_page() if (
        run_dir / "control.log").is_file() else None
    if not hp:
        return None
    rec = apply(run_dir / "trace", mode, parse_header_page(hp).page_size, witness_ts)
    info = manifest.read(run_dir)
    info.retention = rec.to_json()
    manifest.write(run_dir, info)
    return rec
