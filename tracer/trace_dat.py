"""Write a run directory's ring-buffer pages as a trace-cmd ``trace.dat`` (version 6).

So that another decoder (``trace-cmd report``, libtraceevent) can read the same
events tracedep decodes (bench/bench_peer_decode.py).  Layout, from trace-cmd's
``trace-cmd.dat.v6(5)``; numbers little-endian, sizes in front of each part::

    "\\x17\\x08\\x44" "tracing" "6\\0"  endian (0)  long size (8)  page size (u32)
    "header_page\\0"  u64 size  events/header_page
    "header_event\\0" u64 size  events/header_event
    u32 count of ftrace formats, each: u64 size, text
    u32 count of systems, each: name\\0, u32 count, each: u64 size, format text
    u32 size, kallsyms;  u32 size, printk_formats;  u64 size, saved_cmdlines
    u32 cpus  "flyrecord\\0"  per CPU: u64 offset, u64 size
    per CPU, at a page-aligned offset: its pages, as the guest's ring buffer wrote them

Everything comes from the run directory: the tracefs texts from ``control.log``
(tracer.control), the pages from ``trace/cpuN.raw[.gz]`` (tracer.retention), the
symbols from ``kallsyms.gz`` when the run kept them (else the section is empty and
trace-cmd prints addresses).  The guest wrote all of it: the page layout is checked
(tracer.ftrace_formats), names and sizes are bounded, and a CPU file that ends
inside a page has that page left out (trace-cmd reads whole pages only).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tracedep.errors import TraceFormatError
from tracedep.tracer import control
from tracedep.tracer.ftrace_formats import parse_format, parse_header_page
from tracedep.tracer.retention import GZ_SUFFIX, raw_files

MAGIC = b"\x17\x08\x44tracing"
VERSION = b"6\0"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MAX_CPU = 4096  # CPU numbers above this are not a machine's: the file name is damage
_U32_MAX = (1 << 32) - 1
_MAX_KALLSYMS = 256 << 20  # a kernel's /proc/kallsyms is ~10 MB; more is not one
_CHUNK = 16 << 20


@dataclass
class DatSummary:
    """What went into a trace.dat."""

    path: Path
    page_size: int
    cpus: int
    pages: dict[int, int] = field(default_factory=dict)  # whole pages written, per CPU
    partial_bytes: dict[int, int] = field(default_factory=dict)  # left out: a cut page
    events: int = 0  # event formats written
    kallsyms: bool = False


def _sized(data: bytes, width: int) -> bytes:
    fmt = "<I" if width == 4 else "<Q"
    if width == 4 and len(data) > _U32_MAX:
        raise TraceFormatError(f"a section of {len(data)} bytes does not fit trace.dat v6")
    return struct.pack(fmt, len(data)) + data


def _formats(ctl: control.Control) -> dict[str, list[bytes]]:
    """Each system's event format texts, checked to be formats with sane names."""
    systems: dict[str, list[bytes]] = {}
    for name, text in sorted(ctl.formats().items()):
        system, _, event = name.partition("/")
        if not (_NAME.fullmatch(system) and _NAME.fullmatch(event)):
            raise TraceFormatError(f"control.log: an event format named {name[:80]!r}")
        if parse_format(name, text) is None:
            raise TraceFormatError(f"control.log: the format of {name} has no ID")
        systems.setdefault(system, []).append(text.encode())
    return systems


def _kallsyms(run_dir: Path) -> bytes:
    """The guest's /proc/kallsyms if the run kept it (``kallsyms.gz``), else nothing."""
    path = run_dir / "kallsyms.gz"
    if not path.is_file():
        return b""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(_MAX_KALLSYMS + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise TraceFormatError(f"{path}: not readable gzip ({e})") from None
    if len(data) > _MAX_KALLSYMS:
        raise TraceFormatError(f"{path}: over {_MAX_KALLSYMS >> 20} MiB of symbols")
    return data


def header(run_dir: Path) -> tuple[bytes, int, DatSummary]:
    """Everything before the CPU offsets table: (bytes, page size, summary so far)."""
    path = run_dir / "control.log"
    if not path.is_file():
        raise TraceFormatError(f"{run_dir}: no control.log (not a tracedep run directory)")
    ctl = control.load(path)
    hp_text = ctl.header_page()
    he_text = ctl.file("header_event")
    if not hp_text or not he_text:
        raise TraceFormatError(f"{path}: the guest sent no ring-buffer header "
                               "(header_page/header_event)")
    try:
        hp = parse_header_page(hp_text)
    except ValueError as e:
        raise TraceFormatError(f"{path}: {e}") from None
    if hp.commit_size != 8:
        # v6 takes the kernel's long size from the commit field; ours is 64-bit
        raise TraceFormatError(f"{path}: a {hp.commit_size}-byte commit word (only 64-bit "
                               "kernels are written)")
    systems = _formats(ctl)
    ftrace = systems.pop("ftrace", [])
    syms = _kallsyms(run_dir)
    out = [MAGIC, VERSION, bytes([0, 8]), struct.pack("<I", hp.page_size),
           b"header_page\0", _sized(hp_text.encode(), 8),
           b"header_event\0", _sized(he_text.encode(), 8),
           struct.pack("<I", len(ftrace)), *(_sized(t, 8) for t in ftrace),
           struct.pack("<I", len(systems))]
    for system, texts in systems.items():
        out += [system.encode() + b"\0", struct.pack("<I", len(texts)),
                *(_sized(t, 8) for t in texts)]
    out += [_sized(syms, 4),
            _sized((ctl.file("/sys/kernel/tracing/printk_formats") or "").encode(), 4),
            _sized((ctl.file("/sys/kernel/tracing/saved_cmdlines") or "").encode(), 8)]
    summary = DatSummary(Path(), hp.page_size, 0, kallsyms=bool(syms),
                         events=sum(len(t) for t in systems.values()) + len(ftrace))
    return b"".join(out), hp.page_size, summary


def _copy_pages(src: Path, dst: BinaryIO, psize: int) -> tuple[int, int]:
    """Copy the whole pages of one CPU's file (``.gz`` decompressed) to ``dst``:
    (pages, bytes of a cut last page left out).  A damaged ``.gz`` gives what could be
    read before the damage, as the decoder does (tracer.retention.read_raw)."""
    whole = 0
    held = b""
    opener = gzip.open if src.name.endswith(GZ_SUFFIX) else open
    try:
        with opener(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                chunk = held + chunk
                cut = len(chunk) - len(chunk) % psize
                dst.write(chunk[:cut])
                whole += cut // psize
                held = chunk[cut:]
    except (OSError, EOFError, zlib.error):
        if opener is open:
            raise
        # a damaged .gz: the pages read so far are kept, the rest lost, as for the decoder
    return whole, len(held)


def write(run_dir: Path, out: Path) -> DatSummary:
    """Write ``out`` (trace.dat, version 6, flyrecord) from the run in ``run_dir``."""
    head, psize, summary = header(run_dir)
    files = raw_files(run_dir / "trace")
    if not files:
        raise TraceFormatError(f"{run_dir / 'trace'}: no cpuN.raw pages")
    if max(files) >= _MAX_CPU:
        raise TraceFormatError(f"{run_dir / 'trace'}: a file for CPU {max(files)}")
    ncpu = max(files) + 1  # trace-cmd numbers its CPU sections 0..n-1; absent ones are empty
    summary.path, summary.cpus = out, ncpu
    head += struct.pack("<I", ncpu) + b"flyrecord\0"
    table_at = len(head)
    spans: list[tuple[int, int]] = []
    with open(out, "wb") as f:
        f.write(head + bytes(16 * ncpu))  # the offsets table, filled in below
        for cpu in range(ncpu):
            start = -(-f.tell() // psize) * psize
            f.seek(start)
            pages = partial = 0
            if cpu in files:
                pages, partial = _copy_pages(files[cpu], f, psize)
                summary.pages[cpu] = pages
                if partial:
                    summary.partial_bytes[cpu] = partial
            spans.append((start, pages * psize))
        f.truncate(f.tell())
        f.seek(table_at)
        f.write(b"".join(struct.pack("<QQ", off, size) for off, size in spans))
    return summary
