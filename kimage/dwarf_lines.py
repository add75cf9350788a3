"""A compile unit's line program: address → (file, line, discriminator), and file names.

The rows follow binutils' ``addr2line`` (bfd's dwarf2.c): for duplicate line rows
the last one wins, and file names are joined as its ``concat_filename()`` joins
them.  Each file is also given in a shorter form relative to the source tree, as
``scripts/decode_stacktrace.sh`` prints it.
"""

from __future__ import annotations

import posixpath
import re
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from .leb128 import sleb128, uleb128

_HEADERS_TREE = re.compile(r".*/(?:linux-headers|linux-kbuild|linux)-[^/]+/(.+)$")


Row = tuple[int, int, int]  # file number, line, discriminator


@dataclass
class LineSequence:
    """One DW_LNE_end_sequence-terminated run: row i covers [addrs[i], addrs[i+1] or end)."""

    addrs: list[int]
    rows: list[Row]
    end: int


def _special_opcodes(hdr: Any) -> tuple[list[int], list[int]]:
    """(address advance, line advance) of each special opcode: they are most of a
    line program, so their effects are computed once per header."""
    min_inst = hdr["minimum_instruction_length"]
    line_base = hdr["line_base"]
    line_range = hdr["line_range"]
    opcode_base = hdr["opcode_base"]
    addr_step = [0] * 256
    line_step = [0] * 256
    for op in range(opcode_base, 256):
        adj = op - opcode_base
        addr_step[op] = min_inst * (adj // line_range)
        line_step[op] = line_base + adj % line_range
    return addr_step, line_step


# long: one interpreter loop over the opcodes; a call per opcode would slow cold lookups
def decode_line_rows(
    data: memoryview | bytes | bytearray, start: int, end: int, hdr: Any
) -> list[LineSequence]:
    """The sequences of one line program, one row per address (the last, as bfd keeps it).

    pyelftools' decoder copies a state object per row (0.7 s for kernel/sched/
    core.c); this is the same state machine (DWARF 5 section 6.2.5) on raw bytes.
    The header, with its file table, still comes from pyelftools.
    """
    min_inst = hdr["minimum_instruction_length"]
    opcode_base = hdr["opcode_base"]
    std_lengths = list(hdr["standard_opcode_lengths"])
    const_add = min_inst * ((255 - opcode_base) // hdr["line_range"])
    addr_step, line_step = _special_opcodes(hdr)
    buf = bytes(data[start:end])
    n = len(buf)
    seqs: list[LineSequence] = []
    addrs: list[int] = []
    rows: list[Row] = []
    # DWARF 5 keeps "file 1" as the initial file (table 6.4); binutils 2.40
    # uses file 0 there, which is a bug we do not copy.
    address, file, line, disc = 0, 1, 1, 0
    last = -1
    pos = 0
    while pos < n:
        op = buf[pos]
        pos += 1
        if op >= opcode_base:
            address += addr_step[op]
            line += line_step[op]
            if address == last:
                rows[-1] = (file, line, disc)
            else:
                addrs.append(address)
                rows.append((file, line, disc))
                last = address
            disc = 0
        elif op == 5:  # DW_LNS_set_column: GCC sets it before almost every row
            if buf[pos] < 0x80:
                pos += 1
            else:
                _, pos = uleb128(buf, pos)
        elif op == 3:  # DW_LNS_advance_line (signed LEB128)
            b = buf[pos]
            if b < 0x80:
                line += b - 0x80 if b & 0x40 else b
                pos += 1
            else:
                v, pos = sleb128(buf, pos)
                line += v
        elif op == 0:
            length, pos = uleb128(buf, pos)
            if length == 0:
                continue
            sub = buf[pos]
            nxt = pos + length
            if sub == 1:  # DW_LNE_end_sequence
                if addrs and addrs[-1] == address:
                    # Covers no bytes; left in, it would shadow the first row
                    # of whatever section is placed right after this one.
                    addrs.pop()
                    rows.pop()
                if addrs:
                    seqs.append(LineSequence(addrs, rows, address))
                addrs, rows = [], []
                address, file, line, disc = 0, 1, 1, 0
                last = -1
            elif sub == 2:  # DW_LNE_set_address
                address = int.from_bytes(buf[pos + 1 : nxt], "little")
            elif sub == 4:  # DW_LNE_set_discriminator
                disc, _ = uleb128(buf, pos + 1)
            pos = nxt
        elif op == 1:  # DW_LNS_copy
            if address == last:
                rows[-1] = (file, line, disc)
            else:
                addrs.append(address)
                rows.append((file, line, disc))
                last = address
            disc = 0
        elif op == 2:  # DW_LNS_advance_pc
            v, pos = uleb128(buf, pos)
            address += min_inst * v
        elif op == 4:  # DW_LNS_set_file
            file, pos = uleb128(buf, pos)
        elif op == 8:  # DW_LNS_const_add_pc
            address += const_add
        elif op == 9:  # DW_LNS_fixed_advance_pc
            address += buf[pos] | (buf[pos + 1] << 8)
            pos += 2
        elif op - 1 < len(std_lengths):
            # negate_stmt, basic_block, prologue_end, set_isa, …: nothing a
            # lookup needs; skip their LEB128 operands.
            for _ in range(std_lengths[op - 1]):
                _, pos = uleb128(buf, pos)
    return seqs


def merge_sequences(seqs: list[LineSequence]) -> tuple[list[int], list[Row | None]]:
    """One sorted (address → row or None for "no line") table for bisection."""
    for seq in seqs:
        if any(b < a for a, b in zip(seq.addrs, seq.addrs[1:], strict=False)):
            # Out-of-order rows (never seen from GCC): sort, last row wins.
            pairs = dict(sorted(zip(seq.addrs, range(len(seq.rows)), strict=True)))
            seq.addrs = list(pairs)
            seq.rows = [seq.rows[i] for i in pairs.values()]
    seqs = sorted(seqs, key=lambda q: q.addrs[0])
    keys: list[int] = []
    rows: list[Row | None] = []
    for seq in seqs:
        if keys and seq.addrs[0] < keys[-1]:
            return _merge_overlapping(seqs)
        if keys and keys[-1] == seq.addrs[0]:
            keys.pop()  # the previous end marker gives way to a real row
            rows.pop()
        keys.extend(seq.addrs)
        rows.extend(seq.rows)
        keys.append(seq.end)
        rows.append(None)
    return keys, rows


_NO_ROW = 0xFFFFFFFF


class LineTable:
    """A CU's merged line rows in flat arrays: ~20 bytes a row instead of ~130 as
    Python objects (a few hundred CUs hold millions of rows)."""

    __slots__ = ("keys", "files", "lines", "discs")

    def __init__(self, keys: list[int], rows: list[Row | None]) -> None:
        self.keys = array("Q", keys)
        self.files = array("I", (_NO_ROW if r is None else r[0] for r in rows))
        self.lines = array("I", (0 if r is None else r[1] for r in rows))
        self.discs = array("I", (0 if r is None else r[2] for r in rows))

    def lookup(self, addr: int) -> Row | None:
        i = bisect_right(self.keys, addr) - 1
        if i < 0 or self.files[i] == _NO_ROW:
            return None
        return self.files[i], self.lines[i], self.discs[i]


def _merge_overlapping(seqs: list[LineSequence]) -> tuple[list[int], list[Row | None]]:
    items: list[tuple[int, int, Row | None]] = []
    for seq in seqs:
        items.extend((a, 1, r) for a, r in zip(seq.addrs, seq.rows, strict=True))
        items.append((seq.end, 0, None))
    items.sort(key=lambda t: (t[0], t[1]))
    keys: list[int] = []
    rows: list[Row | None] = []
    for addr, _, row in items:
        if keys and keys[-1] == addr:
            if row is not None:
                rows[-1] = row
            continue
        keys.append(addr)
        rows.append(row)
    return keys, rows


# -- file names ----------------------------------------------------------------------


def concat_filename(comp_dir: str | None, subdir: str | None, name: str) -> str:
    """bfd dwarf2.c concat_filename(): what addr2line prints."""
    if name.startswith("/"):
        return name
    dir_name: str | None = None
    if subdir is None or not subdir.startswith("/"):
        dir_name = comp_dir
    if dir_name is None:
        dir_name, subdir = subdir, None
    if dir_name is None:
        return name
    if subdir is not None:
        return f"{dir_name}/{subdir}/{name}"
    return f"{dir_name}/{name}"


def source_path(comp_dir: str | None, subdir: str | None, name: str) -> str:
    """The path as decode_stacktrace.sh shows it: relative to the source tree.

    Kbuild compiles from the top of the tree, so relative directories are
    already tree-relative; absolute ones are cut at the compilation directory
    or at a linux-headers-*/linux-* tree.
    """
    path = name
    if not name.startswith("/") and subdir:
        path = f"{subdir}/{name}"
    path = posixpath.normpath(path)
    if path.startswith("/"):
        if comp_dir and comp_dir.startswith("/"):
            prefix = comp_dir.rstrip("/") + "/"
            if path.startswith(prefix):
                return path[len(prefix) :]
        m = _HEADERS_TREE.match(path)
        if m:
            return m.group(1)
    return path
