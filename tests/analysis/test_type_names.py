"""Heap lock classes named ``struct type.member`` from the allocating code's DWARF.

A small driver is built at test time against Debian's headers (x86_64 and
arm64: member offsets differ, names must not).  The driver keeps the offsets
the compiler chose (``offsetof``) in a table of its own, so the expected
answers come from the compiler, not from the code under test.  The scope is
that of the allocating function (``analysis.type_names``); the guest tests show
the names in real runs (the bundled drivers' pages).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import build_c_module

from tracedep.analysis.type_names import fold_indices, name_in_scope
from tracedep.kimage.dwarf_index import DwarfIndex
from tracedep.kimage.elf_symbols import ElfFile, read_symtab
from tracedep.kimage.ko_layout import layout_sections

DRIVER_C = r"""
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/stddef.h>

struct td_inner { int x; spinlock_t lock; };
struct td_dev {
	int id;
	spinlock_t lock;
	struct mutex mtx;
	struct td_inner inner;
	spinlock_t ring[4];
	union { rwlock_t rw; long pad[2]; } u;
	struct rw_semaphore sem;
};
struct td_box { long tag; struct td_dev dev; };

/* what the compiler chose, for the test to compare with */
const unsigned long td_tn_offsets[] = {
	sizeof(struct td_box), sizeof(struct td_dev),
	offsetof(struct td_box, dev.lock), offsetof(struct td_box, dev.mtx),
	offsetof(struct td_box, dev.inner.lock), offsetof(struct td_box, dev.ring[2]),
	offsetof(struct td_box, dev.u.rw), offsetof(struct td_box, dev.sem),
	offsetof(struct td_dev, lock), offsetof(struct td_box, dev.id),
};
EXPORT_SYMBOL_GPL(td_tn_offsets);

static noinline struct td_dev *td_tn_alloc(void)
{
	struct td_box *b = kzalloc(sizeof(*b), GFP_KERNEL);
	int i;

	if (!b)
		return NULL;
	spin_lock_init(&b->dev.lock);
	mutex_init(&b->dev.mtx);
	spin_lock_init(&b->dev.inner.lock);
	for (i = 0; i < 4; i++)
		spin_lock_init(&b->dev.ring[i]);
	rwlock_init(&b->dev.u.rw);
	init_rwsem(&b->dev.sem);
	return &b->dev;
}

static struct td_dev *td_tn_dev;

static int __init td_tn_init(void)
{
	td_tn_dev = td_tn_alloc();
	return td_tn_dev ? 0 : -ENOMEM;
}

static void __exit td_tn_exit(void)
{
	kfree(container_of(td_tn_dev, struct td_box, dev));
}

module_init(td_tn_init);
module_exit(td_tn_exit);
MODULE_LICENSE("GPL");
"""

NAMES = ("box", "dev", "lock", "mtx", "inner_lock", "ring2", "rw", "sem", "dev_lock", "id")


def _build(tmp: Path, arch: str) -> Path:
    return build_c_module(tmp, "td_tn", DRIVER_C, arch)


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[list[Any], dict[str, int]]:
    ko = _build(tmp_path_factory.mktemp("tn"), str(request.param))
    elf = ElfFile(ko)
    bases = layout_sections(elf)
    tab = read_symtab(elf)
    assert tab is not None
    syms, strtab = tab
    found: dict[str, tuple[int, int, int]] = {}
    for s in syms:
        end = strtab.index(b"\0", int(s["name"]))
        found[strtab[int(s["name"]):end].decode()] = (int(s["shndx"]), int(s["value"]),
                                                      int(s["size"]))
    idx, value, _ = found["td_tn_offsets"]
    data = bytes(elf.data(elf.sections[idx]))[value:value + 8 * len(NAMES)]
    offsets = dict(zip(NAMES, struct.unpack(f"<{len(NAMES)}Q", data), strict=True))
    fidx, fvalue, fsize = next(v for k, v in found.items() if k.startswith("td_tn_alloc"))
    # the middle of the function: its own scope, or functions inlined into it there
    scope = DwarfIndex(elf, bases).scope_at(bases[fidx] + fvalue + fsize // 2)
    assert scope, "no DWARF scope in td_tn_alloc"
    return scope, offsets


@pytest.mark.parametrize(("field", "lock_type", "want"), [
    ("lock", "spinlock", "struct td_box.dev.lock"),
    ("mtx", "mutex", "struct td_box.dev.mtx"),
    ("inner_lock", "spinlock", "struct td_box.dev.inner.lock"),
    ("ring2", "spinlock", "struct td_box.dev.ring[2]"),
    ("rw", "rwlock-w", "struct td_box.dev.u.rw"),
    ("rw", "rwlock-r", "struct td_box.dev.u.rw"),
    ("sem", "rwsem-w", "struct td_box.dev.sem"),
])
def test_member_paths(built: tuple[list[Any], dict[str, int]], field: str, lock_type: str,
                      want: str) -> None:
    scope, off = built
    # the allocator rounds up: any size from the struct's own upward fits
    for size in (off["box"], off["box"] + 40):
        assert name_in_scope(scope, off[field], size, lock_type) == want


def test_no_name_for_another_kind_or_a_plain_member(built: tuple[list[Any], dict[str, int]]
                                                    ) -> None:
    scope, off = built
    assert name_in_scope(scope, off["lock"], off["box"], "mutex") is None
    assert name_in_scope(scope, off["id"], off["box"], "spinlock") is None
    assert name_in_scope(scope, off["lock"] + 1, off["box"], "spinlock") is None


def test_a_smaller_object_is_the_struct_that_fits(built: tuple[list[Any], dict[str, int]]
                                                  ) -> None:
    """An object too small for struct td_box is not one: the returned td_dev is."""
    scope, off = built
    assert off["dev"] < off["box"]
    got = name_in_scope(scope, off["dev_lock"], off["dev"], "spinlock")
    assert got == "struct td_dev.lock"
    assert name_in_scope(scope, off["lock"], off["dev"] - 1, "spinlock") is None


def test_an_array_of_structs_names_the_element(built: tuple[list[Any], dict[str, int]]
                                               ) -> None:
    """kcalloc(n, sizeof(struct td_box)): a lock in the second element is that element's
    member; its class folds the index as lockdep's one init site would."""
    scope, off = built
    box = off["box"]
    got = name_in_scope(scope, box + off["lock"], 3 * box, "spinlock")
    assert got == "struct td_box[1].dev.lock"
    assert fold_indices(got) == "struct td_box[].dev.lock"
    assert fold_indices("struct td_box.dev.ring[2]") == "struct td_box.dev.ring[]"
    # not an array: one element's worth of bytes past the end names nothing
    assert name_in_scope(scope, box + off["lock"], box + 40, "spinlock") is None
    # a plain member of an element is no lock
    assert name_in_scope(scope, box + off["id"], 3 * box, "spinlock") is None
