"""LEB128 numbers, as DWARF encodes them (DWARF 5 section 7.6)."""

from __future__ import annotations


def uleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the unsigned LEB128 at ``pos``."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def sleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the signed LEB128 at ``pos``."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos
