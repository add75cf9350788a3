"""Numbers and flag names as ftrace text prints them, back into the values the binary
records hold: GFP flags, sched_switch's ``prev_state``, decimal or hex integers and
``%p`` pointers."""

from __future__ import annotations

import re

MASK64 = (1 << 64) - 1
HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")

# GFP flag names as ``show_gfp_flags()`` prints them, with their values: taken from
# the print fmt of events/kmem/kmalloc/format of Debian's 6.1 kernel (a copy is in
# tests/data/text/kmem_kmalloc.format; :func:`gfp_names_from_format` reads one).
# Combined names come first, as __print_flags matches them in this order.
GFP_FLAG_NAMES: dict[str, int] = {
    "GFP_TRANSHUGE": 0x1C24CA,
    "GFP_TRANSHUGE_LIGHT": 0x1C20CA,
    "GFP_HIGHUSER_MOVABLE": 0x100CCA,
    "GFP_HIGHUSER": 0x100CC2,
    "GFP_USER": 0x100CC0,
    "GFP_KERNEL_ACCOUNT": 0x400CC0,
    "GFP_KERNEL": 0xCC0,
    "GFP_NOFS": 0xC40,
    "GFP_ATOMIC": 0xA20,
    "GFP_NOIO": 0xC00,
    "GFP_NOWAIT": 0x800,
    "GFP_DMA": 0x1,
    "__GFP_HIGHMEM": 0x2,
    "GFP_DMA32": 0x4,
    "__GFP_HIGH": 0x20,
    "__GFP_ATOMIC": 0x200,
    "__GFP_IO": 0x40,
    "__GFP_FS": 0x80,
    "__GFP_NOWARN": 0x2000,
    "__GFP_RETRY_MAYFAIL": 0x4000,
    "__GFP_NOFAIL": 0x8000,
    "__GFP_NORETRY": 0x10000,
    "__GFP_COMP": 0x40000,
    "__GFP_ZERO": 0x100,
    "__GFP_NOMEMALLOC": 0x80000,
    "__GFP_MEMALLOC": 0x20000,
    "__GFP_HARDWALL": 0x100000,
    "__GFP_THISNODE": 0x200000,
    "__GFP_RECLAIMABLE": 0x10,
    "__GFP_MOVABLE": 0x8,
    "__GFP_ACCOUNT": 0x400000,
    "__GFP_WRITE": 0x1000,
    "__GFP_RECLAIM": 0xC00,
    "__GFP_DIRECT_RECLAIM": 0x400,
    "__GFP_KSWAPD_RECLAIM": 0x800,
    "__GFP_ZEROTAGS": 0x800000,
}

# sched_switch prev_state letters (events/sched/sched_switch/format, 6.1); "R" is 0
# and a trailing "+" (preempted) is TASK_REPORT_MAX, twice the highest letter.
SCHED_STATE_LETTERS: dict[str, int] = {
    "S": 0x1, "D": 0x2, "T": 0x4, "t": 0x8, "X": 0x10, "Z": 0x20, "P": 0x40, "I": 0x80,
}
SCHED_STATE_PREEMPTED = 0x100


def _eval_c_int(expr: str) -> int:
    """Value of a constant C integer expression from a print fmt (casts, | & ~ + << only)."""
    e = re.sub(r"\(\s*(?:unsigned long|gfp_t|unsigned int|int)\s*\)", "", expr)
    e = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", e)
    if not re.fullmatch(r"[0-9a-fA-Fx|&~()+<> \t]*", e) or not e.strip():
        raise ValueError(f"not a constant expression: {expr!r}")
    return int(eval(e, {"__builtins__": {}}, {}))  # noqa: S307 - characters checked above


def gfp_names_from_format(fmt_text: str) -> dict[str, int]:
    """GFP flag names and values from the print fmt of a kmem event ``format`` file."""
    out: dict[str, int] = {}
    for m in re.finditer(r'\{\s*\(\s*unsigned long\s*\)(?P<expr>.*?),\s*"(?P<name>[\w]+)"\s*\}',
                         fmt_text):
        out[m.group("name")] = _eval_c_int(m.group("expr"))
    return out


def sched_states_from_format(fmt_text: str) -> dict[str, int]:
    """prev_state letters and values from the print fmt of sched_switch's ``format`` file."""
    return {m.group(2): int(m.group(1), 16)
            for m in re.finditer(r'\{\s*(0x[0-9a-fA-F]+),\s*"(\w)"\s*\}', fmt_text)}


def parse_gfp(text: str, unknown: set[str] | None = None) -> int:
    """``GFP_KERNEL|__GFP_ZERO`` → 0xdc0; ``none`` → 0; hex leftovers are kept."""
    v = 0
    if text in ("none", "0", ""):
        return 0
    for tok in text.split("|"):
        tok = tok.strip()
        if tok in GFP_FLAG_NAMES:
            v |= GFP_FLAG_NAMES[tok]
        elif HEX.match(tok):
            v |= int(tok, 16) if tok.lower().startswith("0x") else int(tok, 0)
        elif unknown is not None:
            unknown.add(tok)
    return v


def parse_sched_state(text: str) -> int:
    """``S`` → 1, ``R`` → 0, ``R+`` → TASK_REPORT_MAX, ``D|K`` → the or of the letters."""
    v = 0
    if text.endswith("+"):
        v |= SCHED_STATE_PREEMPTED
        text = text[:-1]
    for tok in text.split("|"):
        v |= SCHED_STATE_LETTERS.get(tok, 0)
    return v


def parse_int(v: str | None, base: int = 0) -> int:
    """A number from the text, as the 64-bit value a kernel could have printed: a
    decimal beyond 64 bits wraps like its hex would (the columns are 64-bit)."""
    if v is None or v == "":
        return 0
    v = v.strip()
    if base == 16 or (base == 0 and HEX.match(v) and not v.lstrip("-").isdigit()):
        return int(v, 16) & MASK64
    try:
        n = int(v, 10)
    except ValueError:
        return int(v, 16) & MASK64
    if -(1 << 63) <= n < 1 << 63:
        return n
    n &= MASK64
    return n - (1 << 64) if n >= 1 << 63 else n


def parse_ptr(v: str | None) -> int:
    """%p as the kernel prints it: hex without 0x (with no_hash_pointers), or 0x…, or (null)."""
    if not v or not HEX.match(v):
        return 0
    return int(v, 16) & MASK64
