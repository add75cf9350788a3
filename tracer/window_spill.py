"""The decoded windows of one analysis, kept on disk between its passes.

A streamed analysis (analysis.stream_pipeline) reads the trace's events four times.
Decoding the pages is most of each read: about 0.7 µs an event here, against a few
hundredths for reading the same window back from this file.  So the first pass writes
every window it decodes, and the later passes read them back: one decode per analysis.

The file is the analysis's own scratch: an unlinked temporary file (nothing is left
behind however the process ends) in the cache root's ``spill/`` folder, read back by the
process that wrote it.  A window comes back as the decoder gave it: the same columns,
dtypes, categories (with their dtype) and values.

It costs disk, about as much as the raw pages (~40 bytes an event: flags packed to
bits, columns mostly zero or -1 stored as their other rows).  :func:`room_for` says
whether the file system has it; when it does not, or a write fails (a full disk), the
passes decode the pages again instead, as they did before this file existed.

Layout, per window: a little-endian u32 header length, the header (JSON: ``row0``, the
row count and per column its name, encoding, dtype and byte count), then each column's
bytes in header order.  Encodings: ``dense`` (the array's bytes), ``bits``
(``np.packbits`` of a bool column), ``sparse`` (a fill value, the u32 positions of the
other rows, then their values) and ``cat`` (a categorical's codes; its categories in
the header).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from tracedep.common.cache import cache_dir
from tracedep.tracer.window import Window
from tracedep.tracer.window_cuts import Recut

BYTES_PER_EVENT = 48  # an upper estimate (about 40 measured on a saturating benchmark run)
_MARGIN = 1 << 30  # what the file system keeps free beyond the spill
_SPARSE_BELOW = 0.25  # a numeric column with fewer other rows than this is stored sparse
_HEAD = struct.Struct("<I")


def spill_dir() -> Path:
    return cache_dir("spill")


def events_bound(run_dir: Path) -> int:
    """At least the events a run directory's pages hold (a record takes 30 bytes or
    more), for deciding on a spill before decoding."""
    return sum(p.stat().st_size for p in (run_dir / "trace").glob("cpu*.raw*")
               if p.is_file()) // 30


def room_for(events: int | None, where: Path | None = None) -> bool:
    """Has the spill's file system room for ``events`` events (unknown: assumed
    small), with a margin to spare?"""
    where = where or spill_dir()
    try:
        where.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(where).free
    except OSError:
        return False
    return free >= (events or 0) * BYTES_PER_EVENT + _MARGIN


@dataclass
class _Entry:
    offset: int
    row0: int
    rows: int


class _Scratch:
    """An unlinked file in ``where`` (the spill folder), open until :meth:`close`."""

    def __init__(self, where: Path | None, prefix: str) -> None:
        where = where or spill_dir()
        where.mkdir(parents=True, exist_ok=True)
        self.f: IO[bytes] | None = tempfile.TemporaryFile(dir=where, prefix=prefix)
        self.failed: str | None = None

    def close(self) -> None:
        f, self.f = self.f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # its buffer could not be written either: it is dropped all the same


class WindowSpill(_Scratch):
    """Windows written once (:meth:`add`, then :meth:`close_writing`) and read back in
    order (:meth:`windows`) as often as needed.  ``failed``: a write failed; the caller
    decodes again instead (what was written is dropped)."""

    def __init__(self, where: Path | None = None) -> None:
        super().__init__(where, "windows-")
        self.index: list[_Entry] = []
        self.complete = False
        self.bytes = 0
        self.events = 0

    def add(self, w: Window) -> None:
        if self.f is None or self.failed:
            return
        head, blobs = _encode(w)
        try:
            at = self.f.tell()
            self.f.write(_HEAD.pack(len(head)) + head)
            for b in blobs:
                self.f.write(b.data)
        except OSError as e:
            self.drop(f"writing the analysis's window file failed ({e.strerror or e}); "
                      "its passes decode the pages again instead")
            return
        self.index.append(_Entry(at, w.row0, len(w.events)))
        self.events += len(w.events)
        self.bytes = at + _HEAD.size + len(head) + sum(b.nbytes for b in blobs)

    def close_writing(self) -> None:
        """Every window is in: the file may be read."""
        if self.f is not None and not self.failed:
            try:
                self.f.flush()
                self.complete = True
            except OSError as e:
                self.drop(f"writing the analysis's window file failed ({e.strerror or e})")

    def drop(self, why: str) -> None:
        self.failed = why
        self.close()

    @property
    def usable(self) -> bool:
        return self.complete and self.f is not None and not self.failed

    def windows(self, rows: np.ndarray | None = None) -> Iterator[Window]:
        """The windows as written; ``rows`` (sorted): only the windows holding one of
        them (the rest are not read)."""
        assert self.usable and self.f is not None
        f = self.f
        for e in self.index:
            if rows is not None:
                lo, hi = np.searchsorted(rows, [e.row0, e.row0 + e.rows])
                if hi == lo:
                    continue
            f.seek(e.offset)
            yield _decode(f)


def spill_while_decoding(run_dir: Path, rows: int | None
                         ) -> tuple[WindowSpill | None, Callable[[Window], None] | None,
                                    Callable[[], None]]:
    """For a decode that will be cut at ``rows`` (and then streamed): a spill, the
    ``windows`` callback that writes the decoder's windows into it as a stream cuts
    them (``decode_run(..., windows=...)``), and what to call once the decode ends.
    No spill (None, None) when the trace seems to fit, or the disk has no room."""
    bound = events_bound(run_dir)
    if rows is None or bound <= rows or not room_for(bound):
        return None, None, lambda: None
    spill, cuts = WindowSpill(), Recut()

    def add(w: Window) -> None:
        for x in cuts.push(w):
            spill.add(x)

    def done() -> None:
        for x in cuts.end():
            spill.add(x)
        spill.close_writing()

    return spill, add, done


class ArraySpill(_Scratch):
    """Arrays a pass works out per window, kept on disk for a later pass that reads
    them back in the same order (the class engines' first-pass ids: pass 3 resolves
    them instead of running the engines again).  ``failed`` as for WindowSpill."""

    def __init__(self, where: Path | None = None) -> None:
        super().__init__(where, "arrays-")

    def add(self, arrays: list[np.ndarray]) -> None:
        if self.f is None or self.failed:
            return
        head = json.dumps([[a.dtype.str, len(a)] for a in arrays]).encode()
        try:
            self.f.write(_HEAD.pack(len(head)) + head)
            for a in arrays:
                self.f.write(np.ascontiguousarray(a).tobytes())
        except OSError as e:
            self.failed = f"writing the analysis's array file failed ({e.strerror or e})"
            self.close()

    def close_writing(self) -> None:
        """Every window's arrays are in (a write still buffered may fail here)."""
        if self.f is not None and not self.failed:
            try:
                self.f.flush()
            except OSError as e:
                self.failed = f"writing the analysis's array file failed ({e.strerror or e})"
                self.close()

    def read(self) -> Iterator[list[np.ndarray]]:
        """The arrays, window after window, as added (after :meth:`close_writing`)."""
        f = self.f
        if f is None or self.failed:
            raise OSError(self.failed or "the analysis's array file is closed")
        f.seek(0)
        while head := f.read(_HEAD.size):
            (hlen,) = _HEAD.unpack(head)
            out = []
            for dtype, n in json.loads(_read(f, hlen)):
                size = np.dtype(dtype).itemsize * int(n)
                out.append(np.frombuffer(bytearray(_read(f, size)), dtype=dtype))
            yield out

    @property
    def usable(self) -> bool:
        return self.f is not None and not self.failed


def _encode(w: Window) -> tuple[bytes, list[np.ndarray]]:
    cols: list[list[Any]] = []
    blobs: list[np.ndarray] = []  # written as they are (their buffers, not copies)
    n = len(w.events)
    for name in w.events.columns:
        col = w.events[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cat = col.array
            assert isinstance(cat, pd.Categorical)
            codes = np.ascontiguousarray(cat.codes)
            cats = cat.categories
            blobs.append(codes)
            cols.append([name, "cat", str(codes.dtype), codes.nbytes,
                         cats.tolist(), str(cats.dtype), bool(cat.ordered)])
            continue
        a = np.ascontiguousarray(col.to_numpy())
        if a.dtype == np.bool_:
            blobs.append(np.packbits(a))
            cols.append([name, "bits", "bool", blobs[-1].nbytes])
            continue
        fill, at = _sparse(a, n)
        if at is not None:
            pos, vals = at.astype(np.uint32), a[at]
            blobs += [pos, vals]
            cols.append([name, "sparse", a.dtype.str, pos.nbytes + vals.nbytes, fill, len(at)])
        else:
            blobs.append(a)
            cols.append([name, "dense", a.dtype.str, a.nbytes])
    head = json.dumps({"row0": w.row0, "rows": n, "cols": cols}).encode()
    return head, blobs


def _sparse(a: np.ndarray, n: int) -> tuple[int, np.ndarray | None]:
    """The fill (0 or -1) and the positions of the other rows, when few enough."""
    if not n or a.dtype.kind not in "iu" or n >= 1 << 32:
        return 0, None
    for fill in (0, -1) if a.dtype.kind == "i" else (0,):
        other = a != fill
        k = int(np.count_nonzero(other))
        if k < n * _SPARSE_BELOW:
            return fill, np.flatnonzero(other)
    return 0, None


def _decode(f: IO[bytes]) -> Window:
    (hlen,) = _HEAD.unpack(_read(f, _HEAD.size))
    head = json.loads(_read(f, hlen))
    n = int(head["rows"])
    body = bytearray(sum(int(c[3]) for c in head["cols"]))
    if f.readinto(body) != len(body):  # type: ignore[attr-defined]
        raise OSError("the analysis's window file ends early")
    cols: dict[str, Any] = {}
    at = 0
    for c in head["cols"]:
        name, enc, dtype, size = c[0], c[1], c[2], int(c[3])
        raw = memoryview(body)[at:at + size]
        at += size
        if enc == "cat":
            codes = np.frombuffer(raw, dtype=dtype)
            cats = pd.Index(c[4], dtype=c[5])
            cols[name] = pd.Categorical.from_codes(codes, categories=cats, ordered=c[6],
                                                   validate=False)
        elif enc == "bits":
            cols[name] = np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool)
        elif enc == "sparse":
            fill, k = int(c[4]), int(c[5])
            pos = np.frombuffer(raw[:4 * k], np.uint32)
            out = np.full(n, fill, dtype=dtype)
            out[pos] = np.frombuffer(raw[4 * k:], dtype=dtype)
            cols[name] = out
        else:
            cols[name] = np.frombuffer(raw, dtype=dtype)
    return Window(pd.DataFrame(cols, index=pd.RangeIndex(n), copy=False), int(head["row0"]))


def _read(f: IO[bytes], n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise OSError("the analysis's window file ends early")
    return b
