"""One probe for one execution path of an inlined lock: where it can sit, and how it
fetches the lock's address there.

The probe goes at the instance's entry, or moves forward past instructions kprobes
cannot single-step (arm64: ``mrs xN, daif``, exclusive loads/stores, static branch
sites; x86_64: static call sites) for as long as the lock's location is still
known; the lock's address comes from the DWARF location of the lock argument
(:func:`_lock_arg`), or on arm64 from the base register of the lock's own
atomic access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from elftools.dwarf.die import DIE

from tracedep.tracer.insn_decode import (
    X86_CALLER_SAVED,
    a64_atomic,
    a64_flow,
    a64_writes,
    arm64_probe_ok,
)
from tracedep.tracer.ko_image import KoImage, location_at

# how far past an instance's entry a probe may move to find a steppable instruction
_MAX_SHIFT_INSNS = 12


@dataclass(frozen=True)
class LockArg:
    """Where the lock's address is at the probe.

    ``kind``: ``"reg"`` (value of ``fetch`` + ``addend``), ``"mem"`` (the value
    stored at ``fetch``'s address, i.e. ``fetch`` is ``+off(%reg)`` or, for a
    static pointer, ``@module:symbol+off``; plus ``addend``), or
    ``"static"`` (``section`` + ``sec_offset`` of the module: ``symbol`` +
    ``sym_offset`` where a symbol covers it).
    """

    kind: str
    fetch: str = ""
    addend: int = 0
    section: str = ""
    sec_offset: int = 0
    symbol: str = ""
    sym_offset: int = 0

    def word_fetch(self, module: str) -> str:
        """A fetch-arg reading the lock word (u32 at the lock's address)."""
        if self.kind == "reg":
            return f"+{self.addend}({self.fetch})" if self.addend >= 0 else \
                f"{self.addend}({self.fetch})"
        if self.kind == "mem":
            return f"+{self.addend}({self.fetch})"
        if self.symbol:
            off = f"+{self.sym_offset}" if self.sym_offset else ""
            return f"@{module}:{self.symbol}{off}"
        return ""


@dataclass(frozen=True)
class InlineSite:
    module: str
    func: str  # LOCK_FUNCS key of the inlined body, e.g. _raw_spin_lock_irqsave
    api: str  # the outermost lock API function inlined there, e.g. spin_lock
    function: str  # the module function (symbol) that holds the code
    offset: int  # probe address − function
    section: str
    sec_offset: int
    lock: LockArg
    arg_level: str  # the inlined function whose parameter gave the lock
    shifted: int = 0  # bytes the probe moved past the instance's entry
    call_file: str = ""
    call_line: int = 0

    @property
    def target(self) -> str:
        return f"{self.module}:{self.function}+{self.offset:#x}"


def _lock_arg(mod: KoImage, ops: list[Any]) -> LockArg | str:
    """A fetch for the lock address from a location expression, or why there is none."""
    names = [o.op_name for o in ops]
    if not ops:
        return "empty location"
    first = ops[0]
    rest = names[1:]
    if first.op_name.startswith("DW_OP_reg") and not rest:
        n = first.args[0] if first.op_name == "DW_OP_regx" else int(first.op_name[9:])
        reg = mod.regs.get(n)
        return LockArg("reg", reg) if reg else f"register {n}"
    if first.op_name.startswith("DW_OP_breg"):
        n = first.args[0] if first.op_name == "DW_OP_bregx" else int(first.op_name[10:])
        off = int(first.args[-1])
        reg = mod.regs.get(n)
        if not reg:
            return f"register {n}"
        if rest == ["DW_OP_stack_value"]:
            return LockArg("reg", reg, addend=off)
        if rest == ["DW_OP_plus_uconst", "DW_OP_stack_value"]:
            return LockArg("reg", reg, addend=off + int(ops[1].args[0]))
        mem = f"{'+' if off >= 0 else ''}{off}({reg})"
        if not rest:
            return LockArg("mem", mem)
        if rest == ["DW_OP_deref", "DW_OP_stack_value"]:
            return LockArg("mem", mem)
        if rest == ["DW_OP_deref", "DW_OP_plus_uconst", "DW_OP_stack_value"]:
            return LockArg("mem", mem, addend=int(ops[2].args[0]))
        return "expression " + " ".join(names)
    if first.op_name == "DW_OP_addr" and rest in (["DW_OP_stack_value"],
                                                  ["DW_OP_plus_uconst", "DW_OP_stack_value"]):
        addr = int(first.args[0]) + (int(ops[1].args[0]) if len(rest) == 2 else 0)
        placed = mod.place(addr)
        if placed is None:
            return "address outside the module"
        idx, off = placed
        sym = mod.symbol(mod.objects, idx, off)
        return LockArg("static", section=mod.elf.sections[idx].name, sec_offset=off,
                       symbol=sym[0] if sym else "", sym_offset=sym[1] if sym else 0)
    if first.op_name == "DW_OP_addr":
        return _static_pointer(mod, int(first.args[0]), ops[1:])
    return "expression " + " ".join(names)


def _static_pointer(mod: KoImage, addr: int, ops: list[Any]) -> LockArg | str:
    """The lock is in an object a static pointer of the module points to.

    ``DW_OP_addr X; DW_OP_deref; [DW_OP_plus_uconst N;] DW_OP_stack_value``: the
    lock is ``*(X) + N`` (``spin_lock(&dev->lock)`` with ``static struct foo *dev``);
    ``DW_OP_addr X; [DW_OP_plus_uconst N]`` (no stack value): the ``lock``
    argument itself is stored at ``X + N``, so the lock is ``*(X + N)``.  A kprobe
    reads memory at a symbol (``@module:symbol+off``, resolved when the module
    loads; Documentation/trace/kprobetrace.rst, 6.1 and 6.12): that is the pointer,
    and the decoder adds N (kind ``mem``, as for ``+off(%reg)``).
    """
    names = [o.op_name for o in ops]
    if names in (["DW_OP_deref", "DW_OP_stack_value"],
                 ["DW_OP_deref", "DW_OP_plus_uconst", "DW_OP_stack_value"]):
        at, addend = addr, int(ops[1].args[0]) if len(ops) == 3 else 0
    elif names in ([], ["DW_OP_plus_uconst"]):
        at, addend = addr + (int(ops[0].args[0]) if ops else 0), 0
    else:
        return "expression DW_OP_addr " + " ".join(names)
    placed = mod.place(at)
    if placed is None:
        return "static pointer outside the module"
    idx, off = placed
    sym = mod.symbol(mod.objects, idx, off)
    if sym is None:  # a fetch can name a symbol, not a section
        return "static pointer that no symbol covers"
    where = f"@{mod.name}:{sym[0]}" + (f"+{sym[1]}" if sym[1] else "")
    return LockArg("mem", where, addend=addend, section=mod.elf.sections[idx].name,
                   sec_offset=off, symbol=sym[0], sym_offset=sym[1])


def _lock_param(mod: KoImage, inst: DIE) -> DIE | None:
    params = [c for c in inst.iter_children() if c.tag == "DW_TAG_formal_parameter"]
    for p in params:
        if mod.name_of(p) == "lock":
            return p
    return params[0] if params else None


def _a64_in_atomic_context(mod: KoImage, idx: int, off: int) -> bool:
    """The kernel refuses a kprobe that may sit inside an LL/SC sequence: scanning
    back at most 30 instructions (not past the function's start), a load-exclusive
    class instruction met before a store-exclusive one rejects it
    (``is_probed_address_atomic()`` in arch/arm64/kernel/probes/decode-insn.c;
    CAS and load-acquire count as load-exclusive there)."""
    fn = mod.symbol(mod.funcs, idx, off)
    start = off - fn[1] if fn else max(off - 120, 0)
    o = off - 4
    while o >= max(start, off - 30 * 4):
        insn = mod.insn(idx, o)
        if insn is None:
            return False
        if (insn & 0x3F400000) == 0x08000000:
            return False
        if (insn & 0x3F400000) == 0x08400000:
            return True
        o -= 4
    return False


def _reg_num(mod: KoImage, fetch: str) -> int | None:
    """The DWARF register number a fetch-arg reads (``%x19``, ``+8(%di)``), if any."""
    m = re.search(r"%\w+", fetch)
    if m is None:
        return None
    for n, name in mod.regs.items():
        if name == m.group(0):
            return n
    return None


def site_at(mod: KoImage, module: str, func: str, api: str, levels: list[DIE],
             entry: int) -> InlineSite | str:
    """The probe for one execution path of an instance entered at ``entry``."""
    placed = mod.place(entry)
    if placed is None:
        return "entry outside every section"
    idx, off = placed
    params = [(lvl, p) for lvl in levels if (p := _lock_param(mod, lvl)) is not None]
    # where the lock is at the entry, per level (outermost first)
    at_entry: list[tuple[DIE, LockArg]] = []
    reason = "no location for the lock argument"
    for lvl, p in params:
        ops = location_at(mod, p, entry)
        if ops is None:
            continue
        arg = _lock_arg(mod, ops)
        if isinstance(arg, str):
            reason = f"lock argument: {arg}"
            continue
        at_entry.append((lvl, arg))
    core = False
    if not at_entry and mod.arm64:
        # no DWARF location for the lock (GCC omits it, e.g. for &static_ptr->lock or
        # a lock whose address lives in a callee-saved register): the lock's own
        # atomic access addresses the lock word, at offset 0 of every lock type
        # (qspinlock.val/locked, qrwlock.cnts/wlocked; little-endian)
        rn = _core_base(mod, idx, off, entry)
        if rn is not None and rn in mod.regs:
            at_entry = [(levels[-1], LockArg("reg", mod.regs[rn]))]
            core = True
    walk = _Walk(mod, module, func, api, levels, entry, idx, params, at_entry,
                 _MAX_SHIFT_INSNS if mod.arm64 else 3, core)
    return walk.run(entry, off, set(), reason)


def _core_base(mod: KoImage, idx: int, off: int, at: int, budget: int = 16) -> int | None:
    """The base register of the first atomic access on the straight path from ``at``,
    if nothing on the way there writes it (a call clobbers x0-x18): the lock's
    address, already in that register at ``at``."""
    written: set[int] = set()
    for _ in range(budget):
        insn = mod.insn(idx, off)
        if insn is None:
            return None
        if a64_atomic(insn):
            rn = (insn >> 5) & 31
            return None if rn in written or rn == 31 else rn
        if (insn & 0xFFC00000) != 0xF9800000:  # prfm (the LL/SC loop's) writes nothing
            written |= a64_writes(insn)
        if (insn & 0xFC000000) == 0x94000000 or (insn & 0xFFFFFC1F) == 0xD63F0000:
            written |= set(range(19))  # bl / blr: the callee may clobber them
        falls, tgt = a64_flow(insn, at)
        if falls and tgt is None:
            at, off = at + 4, off + 4
        elif not falls and tgt is not None and (mod.place(tgt) or (None,))[0] == idx:
            off += tgt - at
            at = tgt
        else:
            return None  # a conditional branch or a return: not one path any more
    return None


@dataclass
class _Walk:
    """Forward from an instance's entry to the first instruction a kprobe can sit on."""

    mod: KoImage
    module: str
    func: str
    api: str
    levels: list[DIE]
    entry: int
    idx: int
    params: list[tuple[DIE, DIE]]
    at_entry: list[tuple[DIE, LockArg]]
    budget: int
    core_reg: bool = False  # the lock is its atomic instruction's base register (_core_base)

    def run(self, at: int, o: int, written: set[int], reason: str) -> InlineSite | str:
        mod, idx = self.mod, self.idx
        while self.budget > 0:
            self.budget -= 1
            insn = mod.insn(idx, o) if mod.arm64 else None
            if mod.arm64:
                if insn is None:
                    return "entry past the end of its section"
                if (not arm64_probe_ok(insn) or (idx, o) in mod.jump_labels
                        or _a64_in_atomic_context(mod, idx, o)):
                    reason = "no probe-able instruction on the instance's path"
                    written |= a64_writes(insn)
                    # follow the path the CPU takes: through unconditional branches (the
                    # LSE/LL-SC alternative), never past a conditional one (kprobes
                    # simulate those, so one that cannot be probed is inside an LL/SC
                    # sequence)
                    falls, tgt = a64_flow(insn, at)
                    tplace = mod.place(tgt) if tgt is not None else None
                    if falls and tgt is None:
                        at, o = at + 4, o + 4
                    elif not falls and tgt is not None and tplace is not None \
                            and tplace[0] == idx:
                        o += tgt - at
                        at = tgt
                    else:
                        return reason
                    continue
            if not mod.arm64 and (idx, o) in mod.jump_labels:
                return "a static branch site (jump label) at the instance's entry"
            if not mod.arm64 and (idx, o) in mod.static_calls:
                # a 5-byte call (or the NOP it may become): the next instruction follows
                # it on every path; the call clobbers the caller-saved registers
                reason = "a static call site at the instance's entry"
                written |= X86_CALLER_SAVED
                at, o = at + 5, o + 5
                continue
            choice: tuple[DIE, LockArg] | None = None
            for lvl, p in self.params:  # outermost first; inner frames when optimized out
                ops = location_at(mod, p, at) if at != self.entry else None
                if ops is not None:
                    arg = _lock_arg(mod, ops)
                    if not isinstance(arg, str):
                        choice = (lvl, arg)
                        break
            if choice is None:
                for lvl, arg in self.at_entry:  # still valid past instructions that keep it
                    if arg.kind == "static" or _reg_num(mod, arg.fetch) not in written:
                        choice = (lvl, arg)
                        break
            if choice is None:
                return reason
            sym = mod.symbol(mod.funcs, idx, o)
            if sym is None:
                return "no function symbol covers the site"
            line = self.levels[0].attributes.get("DW_AT_call_line")
            level = "atomic instruction" if self.core_reg else mod.name_of(choice[0]) or ""
            return InlineSite(self.module, self.func, self.api, sym[0], sym[1],
                              mod.elf.sections[idx].name, o, choice[1], level, at - self.entry,
                              call_line=int(line.value) if line is not None else 0)
        return reason
