"""``*_nested()`` / ``*_nest_lock()`` annotations on a kernel built without lockdep.

Without ``CONFIG_DEBUG_LOCK_ALLOC``, ``mutex_lock_nested(l, 1)`` is a macro for
``mutex_lock(l)`` and ``down_write_nested()``, ``spin_lock_nested()`` are alike:
the annotation is gone from the code.  Two traces of it remain, and lockdep's
judgement of two same-class locks nested needs them:

* the DWARF inline chain at the call site: an inlined helper that takes the
  subclass, such as ``inode_lock_nested()`` or ``inode_lock_shared_nested()``,
  is a frame of its own (``fs/configfs`` takes directory locks that way);
* the source line of each frame of that chain: the macros are visible only in
  the text (the driver's own tree for ``--module-src``, Debian's
  ``linux-source`` package for the kernel and its modules, see
  :mod:`tracedep.vm.kernel_source`).

An annotated acquisition is one lockdep would key by (class, subclass).  The
subclass is usually a name (``I_MUTEX_PARENT``, ``SINGLE_DEPTH_NESTING``) or a
parameter of the caller, whose value the text does not give; so a nesting with
an annotation on either side is honoured, never reported.  That loses lockdep's
rare "same subclass twice" reports, and never invents one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracedep.analysis.findings import Frame

# a call of any lock API's nesting variant: mutex_lock_nested(, down_read_nested(,
# spin_lock_irqsave_nested(, inode_lock_nested(, _mutex_lock_nest_lock(, mutex_lock_nest_lock(…
_ANNOTATION = re.compile(r"\b([A-Za-z_]\w*_(?:nested|nest_lock))\s*\(")
_MAX_LINE = 400  # a source line longer than this is not C we need to read
_CONTINUATION_LINES = 4  # an annotation's arguments may wrap onto the next lines


@dataclass(frozen=True)
class Nesting:
    """What is known of one acquisition's call site."""

    annotated: bool
    how: str  # "inline inode_lock_nested()", "fs/configfs/dir.c:1300 down_write_nested(…)"
    subclass: str = ""  # the annotation's last argument, as written
    known: bool = True  # False: neither DWARF nor source could be read


UNKNOWN = Nesting(False, "no DWARF or source at this call site", known=False)


class SourceLines:
    """Source lines by the file names DWARF gives: absolute ones as they are, relative
    ones (the kernel's ``fs/configfs/dir.c``, ``include/linux/fs.h``) under ``roots``."""

    def __init__(self, roots: Sequence[Path] = ()) -> None:
        self.roots = [r.resolve() for r in roots if r.is_dir()]
        self._files: dict[str, list[str] | None] = {}

    def line(self, file: str, n: int, count: int = 1) -> str | None:
        lines = self._lines(file)
        if lines is None or not 0 < n <= len(lines):
            return None
        return " ".join(lines[n - 1:n - 1 + count])

    def _lines(self, file: str) -> list[str] | None:
        if file not in self._files:
            self._files[file] = self._read(file)
        return self._files[file]

    def _read(self, file: str) -> list[str] | None:
        cands = [Path(file)] if file.startswith("/") else [r / file for r in self.roots]
        for p in cands:
            try:
                real = p.resolve()
                if not file.startswith("/") and not any(real.is_relative_to(r)
                                                        for r in self.roots):
                    continue  # a "../" in a DWARF name never leaves the tree
                text = real.read_text(errors="replace")
            except OSError:
                continue
            return [ln[:_MAX_LINE] for ln in text.splitlines()]
        return None


def _last_argument(text: str, start: int) -> str | None:
    """The last argument of the call whose "(" is at ``start``, or None if unbalanced."""
    depth = 0
    args: list[str] = []
    cur: list[str] = []
    for ch in text[start:]:
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                return args[-1] if args else ""
        elif ch == "," and depth == 1:
            args.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    return None


class NestingJudge:
    """``at(frame, ts)``: the :class:`Nesting` of the acquisition whose call site is ``frame``.

    ``chain(frame, ts)`` gives the DWARF frames at that address, innermost first
    (inlined ones, then the function), or () when there is no DWARF for it.
    """

    def __init__(self, chain: Callable[[Frame, int | None], tuple[Frame, ...]],
                 sources: SourceLines) -> None:
        self.chain = chain
        self.sources = sources
        self._memo: dict[tuple[str, int, int | None], Nesting] = {}

    def at(self, frame: Frame, ts: int | None) -> Nesting:
        key = (frame.module, frame.address, ts)
        if key not in self._memo:
            self._memo[key] = self._judge(frame, ts)
        return self._memo[key]

    def _judge(self, frame: Frame, ts: int | None) -> Nesting:
        try:
            chain = self.chain(frame, ts)
        except Exception:  # a DWARF problem costs this judgement, never the run
            chain = ()
        if not chain:
            return UNKNOWN
        found: Nesting | None = None
        read_any = False
        # innermost outwards, and the outermost annotation wins: inside
        # inode_lock_nested() the subclass is only the helper's parameter
        for f in chain:
            text = self.sources.line(f.file, f.line) if f.file and f.line else None
            if text is not None and f.file and f.line:
                read_any = True
                m = _ANNOTATION.search(text)
                if m:
                    # the call starts on this line; its arguments may wrap
                    full = self.sources.line(f.file, f.line, _CONTINUATION_LINES) or text
                    sub = _last_argument(full, m.end() - 1) or ""
                    found = Nesting(True, f"{f.file}:{f.line} {m.group(1)}(…)", sub)
                    continue
            if f.inlined and _ANNOTATION.match(f.function + "("):
                found = Nesting(True, f"inline {f.function}()", found.subclass if found else "")
        if found is not None:
            return found
        if not read_any:
            # DWARF without source: a macro annotation would be invisible
            return Nesting(False, "DWARF but no source at this call site", known=False)
        return Nesting(False, "plain acquisition")
