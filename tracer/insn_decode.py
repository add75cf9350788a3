"""What probe planning needs to know of machine code, arm64 and x86_64.

A64: can a kprobe sit on an instruction (``aarch64_insn_is_steppable()``), where
control goes after it, whether it is an atomic access (what a lock or unlock is
made of), which registers it may write.  Both machines: how DWARF numbers their
registers, as kprobe fetch-args name them, and x86_64's caller-saved set.
"""

from __future__ import annotations

from tracedep.kimage.ko_layout import EM_AARCH64, EM_X86_64

# DWARF register number → kprobe fetch-arg register, per ELF machine
KPROBE_REGS: dict[int, dict[int, str]] = {
    EM_AARCH64: {**{n: f"%x{n}" for n in range(31)}, 31: "%sp"},
    EM_X86_64: dict(enumerate(("%ax", "%dx", "%cx", "%bx", "%si", "%di", "%bp", "%sp",
                               "%r8", "%r9", "%r10", "%r11", "%r12", "%r13", "%r14", "%r15"))),
}
# DWARF numbers of x86_64's caller-saved registers: rax rdx rcx rsi rdi r8-r11
X86_CALLER_SAVED = frozenset({0, 1, 2, 4, 5, 8, 9, 10, 11})


# -- arm64: what kprobes can single-step (arch/arm64/kernel/probes/decode-insn.c) --

_STEPPABLE_HINTS = {0x000, 0x0E0, 0x100, 0x140, 0x300, 0x320, 0x340, 0x360, 0x400, 0x440,
                    0x480, 0x4C0}


def arm64_probe_ok(insn: int) -> bool:
    """Can a kprobe sit on this A64 instruction?  Mirrors ``aarch64_insn_is_steppable()``
    (branches and literal loads are simulated, so they are fine)."""
    if (insn & 0x3F000000) == 0x08000000:  # load/store exclusive, acquire/release, CAS
        return False
    if (insn & 0xFFFFFFE0) == 0xD53B4220:  # mrs xN, daif
        return False
    if (insn & 0xFFF8F01F) == 0xD500401F:  # msr (immediate): daifset/daifclr, pan …
        return False
    if (insn & 0xFFF00000) == 0xD5100000:  # msr (register)
        return False
    if (insn & 0xFF000000) == 0xD4000000:  # exception generation: brk, svc, hvc …
        return False
    if insn in (0xD69F03E0, 0xD69F0BFF, 0xD69F0FFF):  # eret, eretaa, eretab
        return False
    if (insn & 0xFFFFF01F) == 0xD503201F:  # hint space
        return (insn & 0xFE0) in _STEPPABLE_HINTS
    return True


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v & (1 << (bits - 1)) else v


def a64_flow(insn: int, pc: int) -> tuple[bool, int | None]:
    """(falls through, branch target) of an A64 instruction; calls fall through."""
    if (insn & 0x7C000000) == 0x14000000:  # b / bl
        if insn & 0x80000000:
            return True, None
        return False, pc + 4 * _sext(insn & 0x3FFFFFF, 26)
    if (insn & 0xFF000010) == 0x54000000 or (insn & 0x7E000000) == 0x34000000:  # b.cond, cbz
        return True, pc + 4 * _sext((insn >> 5) & 0x7FFFF, 19)
    if (insn & 0x7E000000) == 0x36000000:  # tbz/tbnz
        return True, pc + 4 * _sext((insn >> 5) & 0x3FFF, 14)
    if (insn & 0xFE000000) == 0xD6000000:  # br, blr, ret, eret (+ pointer-auth forms)
        return ((insn >> 21) & 0xF) == 1, None  # only blr* comes back
    return True, None


def a64_atomic(insn: int) -> bool:
    """Exclusive, acquire/release or LSE atomic access: what a lock or unlock is made of."""
    return (insn & 0x3F000000) == 0x08000000 or (insn & 0x3F200C00) == 0x38200000


def a64_writes(insn: int) -> set[int]:
    """General registers an instruction may write (a superset: destination, second
    destination, base register of a load/store)."""
    rd, rn, rt2 = insn & 31, (insn >> 5) & 31, (insn >> 10) & 31
    if (insn & 0x3F000000) == 0x08000000:  # exclusive / ordered / CAS
        if (insn & 0x3FFF7C00) == 0x089F7C00:  # stlr/stllr: none
            return set()
        return {rd, (insn >> 16) & 31, rt2}
    if (insn & 0x1C000000) == 0x14000000:  # branches, exceptions, system
        if (insn & 0xFC000000) == 0x94000000 or (insn & 0xFFFFFC1F) == 0xD63F0000:
            return {30}  # bl, blr
        if (insn & 0xFFF00000) == 0xD5300000:  # mrs
            return {rd}
        return set()
    if (insn & 0x0A000000) == 0x08000000:  # loads and stores
        return {rd, rn, rt2}
    return {rd}  # data processing: Rd
