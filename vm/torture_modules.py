"""locktorture as out-of-tree modules, built from Debian's own source of the exact kernel.

Debian's kernels are built with ``# CONFIG_LOCK_TORTURE_TEST is not set``, so
neither ``locktorture.ko`` nor the ``torture.ko`` it needs is in the package.
Both are plain modules in the kernel's source (``kernel/locking/locktorture.c``,
``kernel/torture.c``); this module makes a kbuild directory from Debian's
``linux-source-<series>`` of the kernel's version (``vm/kernel_source.py``),
which the ordinary ``--module-src`` build (``vm/modules.py``) then builds like
any driver, so its DWARF, inline-lock sites and sources are there as for one::

    <cache>/torture/<package version>/<hash of what is added>/locktorture/
        Kbuild           obj-m += torture.o locktorture.o
        torture.c        kernel/torture.c, plus the shim below appended
        locktorture.c    kernel/locking/locktorture.c, unchanged
        rcu/rcu.h        kernel/rcu/rcu.h (torture.c includes "rcu/rcu.h")

Two things differ from an in-tree ``CONFIG_LOCK_TORTURE_TEST=m`` build, and
neither touches what locktorture locks or counts:

* ``torture_sched_setaffinity()`` lives in ``kernel/rcu/update.c`` only when a
  torture test is configured, so this kernel lacks it; locktorture calls it for
  its ``bind_readers``/``bind_writers`` parameters.  An equivalent (the task by
  pid, then the exported ``set_cpus_allowed_ptr()``) is appended to
  ``torture.c``, after its last line, so every line number still matches
  Debian's source.
* ``-g`` comes from the module build (``KCFLAGS=-g``), as for every driver.

Nothing large is written into the repository: the directory is generated into
the cache (once per kernel version), and the build is the cache's as usual.

``python -m tracedep.vm.torture_modules [--arch A] [--kernel-series S]`` prints
the directory, for ``tracedep run --module-src $(...)``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_folder
from tracedep.common.machines import machine_for
from tracedep.errors import RunError
from tracedep.vm.debian_kernels import KernelPackages
from tracedep.vm.kernel import locked, resolve_kernel
from tracedep.vm.kernel_source import ensure_source_tree

# (file in the generated directory, file in the kernel's source tree)
_FILES = (
    ("torture.c", "kernel/torture.c"),
    ("locktorture.c", "kernel/locking/locktorture.c"),
    ("rcu/rcu.h", "kernel/rcu/rcu.h"),
)

KBUILD = "obj-m += torture.o locktorture.o\n"

# What kernel/rcu/update.c defines when CONFIG_LOCK_TORTURE_TEST is set (there it
# calls the unexported sched_setaffinity(); the result is the same for a kthread).
SETAFFINITY_SHIM = """
/* --- tracedep (vm/torture_modules.py): this kernel is built without any torture
 * test, so kernel/rcu/update.c does not provide torture_sched_setaffinity(). */
#include <linux/pid.h>
#include <linux/sched/task.h>
long torture_sched_setaffinity(pid_t pid, const struct cpumask *in_mask);
long torture_sched_setaffinity(pid_t pid, const struct cpumask *in_mask)
{
	struct task_struct *p = get_pid_task(find_vpid(pid), PIDTYPE_PID);
	int ret = p ? set_cpus_allowed_ptr(p, in_mask) : -ESRCH;

	if (p)
		put_task_struct(p);
	WARN_ONCE(ret, "%s: set_cpus_allowed_ptr(%d) returned %d\\n", __func__, pid, ret);
	return ret;
}
EXPORT_SYMBOL_GPL(torture_sched_setaffinity);
"""

# locktorture's torture_type values on a non-PREEMPT_RT kernel, with the static
# lock each one tortures (kernel/locking/locktorture.c).  raw_spin_lock* are
# new in 6.7 (6.12 has them, 6.1 not); on a non-RT kernel they torture another
# spinlock (torture_raw_spinlock) through the same functions.  lock_busted
# takes no lock at all (it tests the test).
LOCK_TYPES: dict[str, tuple[str, ...]] = {
    "spin_lock": ("torture_spinlock",),
    "spin_lock_irq": ("torture_spinlock",),
    "raw_spin_lock": ("torture_raw_spinlock",),
    "raw_spin_lock_irq": ("torture_raw_spinlock",),
    "rw_lock": ("torture_rwlock",),
    "rw_lock_irq": ("torture_rwlock",),
    "mutex_lock": ("torture_mutex",),
    "ww_mutex_lock": ("torture_ww_mutex_0", "torture_ww_mutex_1", "torture_ww_mutex_2"),
    "rtmutex_lock": ("torture_rtmutex",),
    "rwsem_lock": ("torture_rwsem",),
    "percpu_rwsem_lock": ("pcpu_rwsem",),
}


_NOT_A_LOCK = frozenset({"lock_busted"})
_OPS_NAME = re.compile(r'^\s*\.name\s*=\s*"(\w+)"', re.M)


def torture_types(src: Path) -> list[str]:
    """The lock types the ``locktorture.c`` of ``src`` (a :func:`locktorture_dir`) tortures,
    in its order.  Raises :class:`RunError` for one this module does not know, so
    that a new type is never silently left out."""
    names = [n for n in _OPS_NAME.findall((src / "locktorture.c").read_text())
             if n not in _NOT_A_LOCK]
    unknown = [n for n in names if n not in LOCK_TYPES]
    if unknown:
        raise RunError(f"{src}/locktorture.c tortures {', '.join(unknown)}, unknown to "
                       "tracedep.vm.torture_modules.LOCK_TYPES")
    return names


def locktorture_dir(pk: KernelPackages) -> Path:
    """The generated kbuild directory of torture.ko + locktorture.ko for kernel ``pk``.

    Downloads and extracts Debian's source package the first time (about 30 s).
    Raises :class:`RunError` when the source lacks one of the files.
    """
    # keyed by what this module adds, so that a change to it is a new directory
    key = hashlib.sha256((KBUILD + SETAFFINITY_SHIM).encode()).hexdigest()[:12]
    out = cache_root() / "torture" / pk.image.version / key / "locktorture"
    if (out / "Kbuild").is_file():
        return out
    tree = ensure_source_tree(pk)
    for _, rel in _FILES:
        if not (tree / rel).is_file():
            raise RunError(f"{tree} has no {rel}: cannot build locktorture")
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.with_name(out.name + ".lock")):
        if (out / "Kbuild").is_file():
            return out
        with atomic_folder(out) as tmp:
            for name, rel in _FILES:
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tree / rel, dest)
            with (tmp / "torture.c").open("a") as f:
                f.write(SETAFFINITY_SHIM)
            # written last: its presence means the directory is complete
            (tmp / "Kbuild").write_text(KBUILD)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracedep.vm.torture_modules",
                                description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--kernel-series", default=None, choices=("6.1", "6.12"))
    p.add_argument("--abi", default=None)
    a = p.parse_args(argv)
    pk = resolve_kernel(machine_for(a.arch), a.abi, a.kernel_series)
    print(locktorture_dir(pk))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
