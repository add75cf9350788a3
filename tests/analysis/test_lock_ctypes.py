"""The C type of a spinning lock, read from real compiler output (analysis.lock_ctypes).

The bundled td_rt_wait_bug is built against the default Debian kernel's headers for
both architectures (as a run builds it), and its DWARF must say: the static
``td_rt_stats_lock`` and the heap ``struct td_rt_dev.hw_lock`` are ``raw_spinlock_t``,
``struct td_rt_dev.queue_lock`` is a ``spinlock_t``, and the ``spin_lock()`` call in
td_rt_account() is an inlined spinlock_t API; what is not there is unknown, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import DRIVERS
from elftools.elf.elffile import ELFFile

from tracedep.analysis.lock_ctypes import RAW, SPIN, LockTypes, ctype_of, inline_api
from tracedep.analysis.type_names import _name, _ref

MOD = "td_rt_wait_bug"


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def ko(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tracedep.common.machines import machine_for
    from tracedep.vm.kernel import fetch_debian_kernel
    from tracedep.vm.modules import build_module_dir

    machine = machine_for(str(request.param))
    src = tmp_path_factory.mktemp("rt") / MOD
    src.mkdir()
    for f in (DRIVERS / MOD).iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    [mod] = build_module_dir(src, fetch_debian_kernel(machine), machine)
    return mod.ko


def _function(ko: Path, name: str) -> tuple[Any, list[Any]]:
    """The subprogram DIE of ``name`` and the inlined subroutines inside it."""
    f = ko.open("rb")
    dwarf = ELFFile(f).get_dwarf_info()
    for cu in dwarf.iter_CUs():
        for d in cu.get_top_DIE().iter_children():
            if d.tag == "DW_TAG_subprogram" and _name(d) == name and "DW_AT_low_pc" in (
                    d.attributes):
                inl, todo = [], list(d.iter_children())
                while todo:
                    c = todo.pop()
                    if c.tag == "DW_TAG_inlined_subroutine":
                        inl.append(c)
                    todo += list(c.iter_children())
                return d, inl
    raise AssertionError(f"{name} not in {ko}")


def _types(sub: Any) -> LockTypes:
    return LockTypes(lambda module, ip, ts: [sub])


def test_static_and_heap_objects(ko: Path) -> None:
    sub, _ = _function(ko, "td_rt_account")
    t = _types(sub)
    assert t.of_object(f"static:{MOD}:td_rt_stats_lock", "td_rt_stats_lock", MOD, 1, 0) == RAW
    heap = f"heap:{MOD}:td_rt_wait_bug_init@td_rt_wait_bug.c:111:"
    assert t.of_object(heap + "0x0", "struct td_rt_dev.hw_lock", MOD, 1, 0) == RAW
    assert t.of_object(heap + "0x4", "struct td_rt_dev.queue_lock", MOD, 1, 0) == SPIN
    # the same name with another member's offset: another struct, nothing known
    assert t.of_object(heap + "0x0", "struct td_rt_dev.queue_lock", MOD, 1, 0) is None
    # a name suffixed for uniqueness reads the same
    assert t.of_object(heap + "0x4", f"struct td_rt_dev.queue_lock [{MOD}]", MOD, 1,
                       0) == SPIN
    # not in this unit, not a lock, a member inside a static struct: unknown
    assert t.of_object(f"static:{MOD}:no_such_lock", "no_such_lock", MOD, 1, 0) is None
    assert t.of_object(f"static:{MOD}:td_rt_submitted", "td_rt_submitted", MOD, 1, 0) is None
    assert t.of_object(f"static:{MOD}:td_rt_stats_lock+0x4", "td_rt_stats_lock+0x4", MOD,
                       1, 0) is None
    assert t.of_object(heap + "0x10", "struct td_rt_dev.nothing", MOD, 1, 0) is None
    assert LockTypes(lambda m, ip, ts: []).of_object(
        f"static:{MOD}:td_rt_stats_lock", "td_rt_stats_lock", MOD, 1, 0) is None


def test_inline_chain(ko: Path) -> None:
    sub, inlined = _function(ko, "td_rt_account")
    names = {_name(_ref(d, "DW_AT_abstract_origin")) for d in inlined}  # type: ignore[arg-type]
    assert "spin_lock" in names, names
    spin = next(d for d in inlined if _name(_ref(d, "DW_AT_abstract_origin")) == "spin_lock")  # type: ignore[arg-type]
    assert inline_api([sub, spin]) == SPIN
    # raw_spin_lock() is a macro: its call site's chain says nothing
    assert inline_api([sub]) is None
    assert LockTypes(lambda m, ip, ts: [sub, spin]).at_site(MOD, 1, 0) == SPIN


def test_ctype_of_needs_a_lock_type() -> None:
    assert ctype_of(None) is None
