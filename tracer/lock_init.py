"""Probes that give locks lockdep's classes on a kernel without lockdep.

lockdep keys a lock by the ``struct lock_class_key`` its initializer was handed
and names it by the stringified argument: ``mutex_init(&q->sysfs_lock)`` expands
to ``static struct lock_class_key __key; __mutex_init(&q->sysfs_lock,
"&q->sysfs_lock", &__key)``.  The out-of-line init functions below take
``(lock, name, key)`` on every kernel, lockdep or not (include/linux/mutex.h,
rwsem.h, percpu-rwsem.h, rtmutex.h, wait.h, swait.h in 6.1 and 6.12), so one
entry probe on each gives the class's identity and name.  ``spin_lock_init()``
is inline without CONFIG_DEBUG_SPINLOCK (Debian's cloud kernels: not set), so
plain spinlocks keep their allocation-site class; a wait queue head's or an
swait head's spinlock is its first member and is seen through its init.

=========  ==================================================================
prefix     event
=========  ==================================================================
``li``     entry of a lock initializer: ``lock``, ``key``, ``ret`` and ``name``
``lc``     a re-keying of a lock core code does with ``lockdep_set_class()``:
           ``inode_init_always[_gfp]`` (fs/inode.c) keys every inode's
           ``i_rwsem`` by ``&sb->s_type->i_mutex_key``.  ``obj`` (the inode) +
           ``off`` (``offsetof(struct inode, i_rwsem)``, an immediate) is the
           lock, ``key`` the ``struct file_system_type``, ``name`` its name
=========  ==================================================================

The ``name`` strings come from guest memory: :func:`clean_name` bounds and
cleans them wherever a decoder reads one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracedep.common.machines import Machine
from tracedep.tracer.probes import GROUP, Discovery, ProbeDef, event_name

log = logging.getLogger(__name__)

NAME_MAX = 96  # longer names are cut: lockdep's own are C expressions, rarely past 60
OFFSET_MAX = 1 << 16  # an ``off`` past this is not a struct member: the row is dropped


@dataclass(frozen=True)
class LockInit:
    func: str
    # the lock types (schema.LOCK_TYPES) of the lock events at the initialized address
    # that take this init's class: a wait queue head's init names its spinlock, never
    # a mutex that later reuses the address
    lock_types: tuple[str, ...]


_RW = ("rwsem-r", "rwsem-w")
LOCK_INITS: dict[str, LockInit] = {i.func: i for i in (
    LockInit("__mutex_init", ("mutex",)),  # also ww_mutex_init(): its base mutex
    LockInit("__init_rwsem", _RW),
    # percpu_down_read/up are inline: no lock event has this address today; kept so
    # that a percpu-rwsem probe, when one exists, finds its class
    LockInit("__percpu_init_rwsem", ("rwsem-r", "rwsem-w")),
    LockInit("__rt_mutex_init", ("mutex",)),
    LockInit("__init_waitqueue_head", ("spinlock",)),
    LockInit("__init_swait_queue_head", ("spinlock",)),
    # CONFIG_DEBUG_SPINLOCK kernels only (not Debian's): spin_lock_init/rwlock_init
    LockInit("__raw_spin_lock_init", ("spinlock",)),
    LockInit("__rwlock_init", ("rwlock-r", "rwlock-w")),
)}

# re-keying functions: (function, lock types, lockdep's name of the key it sets)
INODE_REKEY = ("inode_init_always_gfp", "inode_init_always")  # 6.12, 6.1
INODE_KEY_NAME = "&sb->s_type->i_mutex_key"
INODE_DIR_KEY_NAME = "&sb->s_type->i_mutex_dir_key"
# lockdep_annotate_inode_mutex_key()'s out-of-line callers, and which argument is the inode
DIR_REKEY = {"unlock_new_inode": 1, "d_instantiate_new": 2}
REKEY_TYPES: dict[str, tuple[str, ...]] = {f: _RW for f in (*INODE_REKEY, *DIR_REKEY)}
S_IFMT, S_IFDIR = 0o170000, 0o040000


def clean_name(raw: str | bytes) -> str:
    """A name string from the guest, safe to show and to key on: printable ASCII,
    at most NAME_MAX characters; a failed fetch (``(fault)``) is no name."""
    s = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    s = s.split("\0", 1)[0]
    if s == "(fault)":
        return ""
    s = "".join(c if " " <= c <= "~" else "?" for c in s[:NAME_MAX + 1])
    return s[:NAME_MAX - 1] + "~" if len(s) > NAME_MAX else s


def _irq(machine: Machine) -> str:
    """The interrupted context's IRQ state, where the record's flags cannot tell it
    (arm64): like every probe of ours, else the decoder finds kprobe rows without it
    and takes every row's IRQ state as unknown (tracer.calibration)."""
    return f" {machine.irq_state_fetch}" if machine.irq_state_fetch else ""


def init_probe_definitions(machine: Machine, disc: Discovery) -> list[ProbeDef]:
    """Entry probes on the lock initializers this kernel has."""
    defs = []
    for f in LOCK_INITS:
        if f not in disc.functions or f in disc.blacklist:
            continue
        ev = event_name("li", f)
        # the string last: ftrace text prints it unquoted-safe only at the end of a line
        defs.append(ProbeDef(ev, f, "li",
                             f"p:{GROUP}/{ev} {f} lock={machine.arg1}:x64 key={machine.arg3}:x64 "
                             f"ret={machine.retaddr}:x64{_irq(machine)} "
                             f"name=+0({machine.arg2}):string"))
    return defs


@dataclass(frozen=True)
class InodeLayout:
    """Offsets the inode re-key probe needs, from the kernel's BTF."""

    i_rwsem: int  # offsetof(struct inode, i_rwsem)
    s_type: int  # offsetof(struct super_block, s_type)
    fs_name: int  # offsetof(struct file_system_type, name)
    i_mode: int  # offsetof(struct inode, i_mode)
    i_sb: int  # offsetof(struct inode, i_sb)

    def to_json(self) -> dict[str, int]:
        return {"i_rwsem": self.i_rwsem, "s_type": self.s_type, "fs_name": self.fs_name,
                "i_mode": self.i_mode, "i_sb": self.i_sb}


def inode_layout(vmlinux: Path) -> InodeLayout:
    from tracedep.kimage.btf import BtfError, read_btf

    btf = read_btf(vmlinux)
    got = {k: btf.member_offset(s, m) for k, s, m in (
        ("i_rwsem", "inode", "i_rwsem"), ("s_type", "super_block", "s_type"),
        ("fs_name", "file_system_type", "name"), ("i_mode", "inode", "i_mode"),
        ("i_sb", "inode", "i_sb"))}
    missing = [k for k, v in got.items() if v is None]
    if missing:
        raise BtfError(f"{vmlinux}: BTF lacks {', '.join(missing)}")
    return InodeLayout(**{k: int(v) for k, v in got.items() if v is not None})


def rekey_probe_definitions(machine: Machine, disc: Discovery, layout: InodeLayout
                            ) -> list[ProbeDef]:
    """The probe on inode_init_always[_gfp](sb, inode, …): the inode, its i_rwsem's
    offset, sb->s_type and sb->s_type->name."""
    defs = []
    for f in INODE_REKEY:
        if f in disc.functions and f not in disc.blacklist:
            ev = event_name("lc", f)
            sb, inode = machine.arg1, machine.arg2
            fstype = f"+{layout.s_type}({sb})"
            defs.append(ProbeDef(ev, f, "lc",
                                 f"p:{GROUP}/{ev} {f} obj={inode}:x64 "
                                 f"off=\\{layout.i_rwsem}:u32 key={fstype}:x64 "
                                 f"ret={machine.retaddr}:x64{_irq(machine)} "
                                 f"name=+0(+{layout.fs_name}({fstype})):string"))
            break
    args = (machine.arg1, machine.arg2)
    for f, n in DIR_REKEY.items():
        if f in disc.functions and f not in disc.blacklist:
            ev = event_name("lc", f)
            inode = args[n - 1]
            fstype = f"+{layout.s_type}(+{layout.i_sb}({inode}))"
            defs.append(ProbeDef(ev, f, "lc",
                                 f"p:{GROUP}/{ev} {f} obj={inode}:x64 "
                                 f"off=\\{layout.i_rwsem}:u32 "
                                 f"mode=+{layout.i_mode}({inode}):u16 key={fstype}:x64 "
                                 f"ret={machine.retaddr}:x64{_irq(machine)} "
                                 f"name=+0(+{layout.fs_name}({fstype})):string"))
    return defs


def class_probes(machine: Machine, disc: Discovery, vmlinux: Path | None
                 ) -> tuple[list[ProbeDef], dict[str, object]]:
    """All of this module's probes for a kernel, and what the manifest says of them
    (``lock_classes``: the inode layout used, or why the re-key probe is absent)."""
    defs = init_probe_definitions(machine, disc)
    info: dict[str, object] = {"init_probes": [d.func for d in defs]}
    layout = None
    if vmlinux is None:
        info["inode_rekey"] = "absent: no debug vmlinux (BTF) for this kernel"
    else:
        try:
            layout = inode_layout(vmlinux)
        except Exception as e:  # no BTF, an unknown layout: inode locks keep heap classes
            info["inode_rekey"] = f"absent: {e}"
            log.warning("inode lock classes by file system type unavailable: %s", e)
    if layout is not None:
        rk = rekey_probe_definitions(machine, disc, layout)
        defs += rk
        info["inode_layout"] = layout.to_json()
        info["inode_rekey"] = [d.func for d in rk] or "absent: no inode_init_always[_gfp]"
    return defs, info
