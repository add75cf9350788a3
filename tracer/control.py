"""The guest's control channel: framed text blocks written by ``vm/guest/init.sh``.

Grammar (one block per tag occurrence)::

    @@TD <tag> [args]        opens a block; lines until the matching end are its body
    @@TD end <tag>           closes it
    @@TD done <what>         a one-line marker: the guest finished <what>

A guest that dies mid-block leaves that block open; it is kept with
``complete=False`` so nothing it sent is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Block:
    tag: str
    args: str
    lines: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + ("\n" if self.lines else "")


@dataclass
class ModuleInfo:
    name: str
    base: int
    size: int
    sections: dict[str, int]


@dataclass
class Control:
    blocks: list[Block]
    done: list[str]

    def first(self, tag: str, args: str | None = None) -> Block | None:
        for b in self.blocks:
            if b.tag == tag and (args is None or b.args == args):
                return b
        return None

    def all(self, tag: str) -> list[Block]:
        return [b for b in self.blocks if b.tag == tag]

    def keyvals(self, tag: str) -> dict[str, str]:
        b = self.first(tag)
        out: dict[str, str] = {}
        for line in b.lines if b else []:
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip()
        return out

    def file(self, name: str) -> str | None:
        b = self.first("file", name)
        return b.text if b else None

    def formats(self) -> dict[str, str]:
        return {b.args: b.text for b in self.all("format")}

    def header_page(self) -> str | None:
        b = self.first("formats")
        return b.text if b else None

    def module_loads(self) -> list[ModuleInfo]:
        """Every module report, in the order the guest sent them (one per load)."""
        out: list[ModuleInfo] = []
        for b in self.all("module"):
            base = size = 0
            sections: dict[str, int] = {}
            for line in b.lines:
                if line.startswith("section "):
                    _, name, addr = (line.split() + ["", "", ""])[:3]
                    a = _u64(addr, 16)
                    if a is not None:
                        sections[name] = a
                else:
                    # /proc/modules: name size refcount deps state address [taint]
                    parts = line.split()
                    if len(parts) >= 6 and parts[0] == b.args:
                        size = _u64(parts[1], 10) or 0
                        base = _u64(parts[5], 16) or 0
            if sections or base:
                out.append(ModuleInfo(b.args, base, size, sections))
        return out

    def modules(self) -> dict[str, ModuleInfo]:
        """The first load of each module."""
        mods: dict[str, ModuleInfo] = {}
        for m in self.module_loads():
            mods.setdefault(m.name, m)
        return mods

    def insmod_results(self) -> dict[str, list[int]]:
        """Each module's insmod exit codes, in load order (0: its init succeeded)."""
        out: dict[str, list[int]] = {}
        for b in self.all("insmod"):
            name, _, rc = b.args.partition(" ")
            if name and rc.strip().lstrip("-").isdigit() and len(rc.strip()) <= 10:
                out.setdefault(name, []).append(int(rc))
        return out

    def cpu_stats(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for b in self.all("stats"):
            st: dict[str, float] = {}
            for line in b.lines:
                m = re.match(r"^([a-z ]+):\s*([0-9]{1,19}(?:\.[0-9]{1,9})?)\s*$", line)
                if m:
                    st[m.group(1).strip().replace(" ", "_")] = float(m.group(2))
            out[b.args] = st
        return out

    def probe_failures(self) -> list[str]:
        b = self.first("probes")
        return [ln[5:] for ln in (b.lines if b else []) if ln.startswith("FAIL ")]

    def probe_failure_reasons(self) -> dict[str, str]:
        """Per refused definition, the kernel's reason from tracefs' ``error_log``
        (``trace_kprobe: error: Probe point is not found``): its message only,
        bounded, printable (it comes from the guest)."""
        b = self.first("probes")
        out: dict[str, str] = {}
        cur: str | None = None
        for ln in b.lines if b else []:
            if ln.startswith("FAIL "):
                cur = ln[5:]
            elif ln.startswith("WHY ") and cur is not None and cur not in out:
                _, sep, msg = ln[4:].partition("error: ")
                if sep:
                    out[cur] = "".join(c for c in msg.strip() if c.isprintable())[:160]
        return out

    def event_status(self) -> dict[str, list[str]]:
        b = self.first("events")
        out: dict[str, list[str]] = {"on": [], "missing": [], "no_trigger": []}
        for ln in b.lines if b else []:
            word, _, ev = ln.partition(" ")
            key = {"ON": "on", "MISSING": "missing", "NOTRIGGER": "no_trigger"}.get(word)
            if key:
                out[key].append(ev)
        return out

    def kaslr_text(self) -> tuple[int, str] | None:
        b = self.first("kaslr")
        for ln in b.lines if b else []:
            parts = ln.split()
            if len(parts) >= 3:
                a = _u64(parts[0], 16)
                if a is not None:
                    return a, parts[2]
        return None


def _u64(text: str, base: int) -> int | None:
    """A number the guest sent, if it is one that fits 64 bits (else None)."""
    if not text or len(text) > 24:
        return None
    try:
        v = int(text, base)
    except ValueError:
        return None
    return v if 0 <= v < 1 << 64 else None


def parse(text: str) -> Control:
    blocks: list[Block] = []
    done: list[str] = []
    open_block: Block | None = None
    for line in text.splitlines():
        if line.startswith("@@TD "):
            rest = line[5:]
            tag, _, args = rest.partition(" ")
            if tag == "end":
                if open_block is not None:
                    open_block.complete = True
                    open_block = None
                continue
            if tag == "done":
                done.append(args)
                continue
            open_block = Block(tag, args)
            blocks.append(open_block)
        elif open_block is not None:
            open_block.lines.append(line)
    return Control(blocks, done)


def load(path: Path) -> Control:
    return parse(path.read_bytes().decode("utf-8", errors="replace"))
