"""The KASLR offset of a running kernel, and checking it against a vmlinux.

The core kernel is symbolized at its link-time address, runtime − ``kaslr_offset``.
The offset comes from one symbol the guest's kallsyms reports (``_text`` on x86_64,
``_stext`` on arm64) and is never trusted blindly: a wrong vmlinux or offset would
name every frame wrongly, so it is checked against a sample of kallsyms symbols.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tracedep.errors import SymbolizerError
from tracedep.kimage.elf_symbols import ElfFile, ElfFormatError, SymbolTable

log = logging.getLogger(__name__)

_KASLR_SAMPLE_NAMES = (
    "_text",
    "_stext",
    "startup_64",
    "_etext",
    "_sinittext",
    "schedule",
    "printk",
    "_printk",
    "mutex_lock",
    "kmalloc_trace",
    "__kmalloc",
)


def kaslr_samples(core_ks: Sequence[tuple[int, str, str]]) -> list[tuple[int, str]]:
    """A few well-known text symbols plus an even spread of others."""
    text = [(a, n) for a, t, n in core_ks if t in "tT" and a]
    chosen = [(a, n) for a, n in text if n in _KASLR_SAMPLE_NAMES]
    step = max(1, len(text) // 16)
    chosen += text[::step][:16]
    return chosen


def verify_offset(
    symbols: SymbolTable, kaslr_offset: int, samples: Sequence[tuple[int, str]], path: Path
) -> None:
    checked = 0
    bad: list[tuple[str, int, list[int]]] = []
    for runtime, name in samples:
        link = symbols.addresses_of(name)
        if not link:
            continue
        checked += 1
        if runtime - kaslr_offset not in link:
            bad.append((name, runtime, link))
    if not checked:
        raise SymbolizerError(
            f"cannot verify KASLR offset {kaslr_offset:#x}: none of {len(samples)} kallsyms "
            f"symbols is in {path} (wrong vmlinux?)"
        )
    if bad:
        name, runtime, link = bad[0]
        raise SymbolizerError(
            f"KASLR offset {kaslr_offset:#x} does not fit {path}: {name} is at {runtime:#x} in "
            f"the guest and {link[0]:#x} in vmlinux (offset {runtime - link[0]:#x}); "
            f"{len(bad)}/{checked} symbols disagree (wrong vmlinux or offset)"
        )


def _vmlinux_symbols(vmlinux: Path) -> SymbolTable | None:
    """vmlinux's symbol table (None: stripped); an unreadable file is one clear error."""
    try:
        elf = ElfFile(Path(vmlinux))
    except (OSError, ElfFormatError) as e:
        raise SymbolizerError(f"cannot read vmlinux {vmlinux}: {e}") from e
    try:
        return SymbolTable.from_elf(elf)
    finally:
        elf.close()


def verify_kaslr(vmlinux: Path, kaslr_offset: int, kallsyms_samples: list[tuple[int, str]]) -> None:
    """Check ``kaslr_offset`` against (runtime address, name) pairs from the guest's kallsyms.

    Raises :class:`SymbolizerError` (one line) when a symbol is elsewhere than
    the offset says, or when no sample can be found in vmlinux at all.  A
    vmlinux without a symbol table cannot be checked and is accepted.
    """
    symbols = _vmlinux_symbols(vmlinux)
    if symbols is None:
        log.warning("%s has no symbol table: KASLR offset not verified", vmlinux)
        return
    verify_offset(symbols, kaslr_offset, kallsyms_samples, Path(vmlinux))


def kaslr_offset_of(vmlinux: Path, symbol: str, runtime: int) -> int:
    """runtime − link-time address of ``symbol`` (``_text`` on x86_64, ``_stext`` on
    arm64, as the guest's kallsyms reports it): the ``kaslr_offset`` to pass on."""
    symbols = _vmlinux_symbols(vmlinux)
    link = symbols.addresses_of(symbol) if symbols is not None else []
    if len(link) != 1:
        raise SymbolizerError(
            f"{vmlinux}: {symbol} is " + ("ambiguous" if link else "not in the symbol table")
        )
    return runtime - link[0]
