"""``/proc/kallsyms``: the one reader and writer of the kernel's runtime symbol list.

A line is ``ADDRESS TYPE NAME`` with an optional ``\\t[module]`` after the name.  The
text comes from the guest (or a user's machine), so every line is checked: a line
that is not three fields, a type that is not one letter, an address that is not
64-bit hex is skipped, never trusted.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path

from tracedep.common.files import atomic_write
from tracedep.errors import TraceFormatError

# (address, type letter, name as printed, ``[module]`` tag included)
Entry = tuple[int, str, str]
_MASK = (1 << 64) - 1


def parse(text: str) -> list[Entry]:
    """(address, type, name) of each well-formed line; others skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and len(parts[1]) == 1:
            try:
                a = int(parts[0], 16)
            except ValueError:
                continue
            if 0 <= a <= _MASK:
                out.append((a, parts[1], parts[2]))
    return out


def read_file(path: Path) -> list[Entry]:
    """A run's (or a user's) kallsyms, gzip'd or not; damage is one clear error."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise TraceFormatError(f"{path}: unreadable kallsyms ({e})") from None
    return parse(raw.decode("utf-8", "replace"))


def write_file(path: Path, entries: Iterable[Entry]) -> None:
    """Write ``entries`` gzip'd, in kallsyms' own format (``parse`` reads it back)."""
    text = "".join(f"{a:016x} {t} {n}\n" for a, t, n in entries)
    # whole or not at all: a run's live analysis may read it while it is written
    atomic_write(path, gzip.compress(text.encode(), compresslevel=6), fsync=False)


def text_functions(entries: Iterable[Entry]) -> list[tuple[int, str]]:
    """(address, name) of the code symbols (types t, T, w, W), sorted by address."""
    return sorted((a, n) for a, t, n in entries if t in "tTwW")


def slid(entries: Iterable[Entry], shift: int) -> list[Entry]:
    """The same symbols after a KASLR slide of ``shift`` bytes; absolute ones (a, A)
    do not move."""
    return [(a if t in "aA" else (a + shift) & _MASK, t, n) for a, t, n in entries]
