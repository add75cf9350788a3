"""What tracedep probes in the guest, and what each probe's events mean.

Probe events are named ``tracedep/<prefix>_<function>``; the prefix says what
the event is and the function says which lock type and flags it has, so a
trace captured elsewhere with the same probes (``tracedep probes`` prints the
definitions) is understood without our manifest.

=========  ==================================================================
prefix     event
=========  ==================================================================
``lk``     entry of a lock-acquiring function: ``lock`` and ``ret`` fetched
``lr``     return of a lock function whose result matters (trylock, killable…)
``ul``     entry of a lock-releasing function
``sl``     entry of a function that may sleep (the sleep catalog)
=========  ==================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracedep.vm.machines import Machine

GROUP = "tracedep"
# ``lk__raw_spin_lock__inl12``: a probe on one inlined lock site (tracer.inline_locks)
INLINE_SUFFIX = "__inl"
_INLINE_RE = re.compile(re.escape(INLINE_SUFFIX) + r"\d+$")


@dataclass(frozen=True)
class LockFunc:
    name: str
    lock_type: str  # schema.LOCK_TYPES
    flags: tuple[str, ...]
    release: bool = False
    # how to read the return value of a conditional acquire: "nonzero" (trylock
    # style: 1 = taken), "zero" (0 = taken: *_interruptible, down_trylock), "" = always
    success: str = ""


def _lock_table() -> dict[str, LockFunc]:
    t: dict[str, LockFunc] = {}

    def add(name: str, lt: str, *flags: str, release: bool = False, success: str = "") -> None:
        t[name] = LockFunc(name, lt, tuple(flags), release, success)

    for kind, lt_r, lt_w in (("spin", "spinlock", "spinlock"), ("read", "rwlock-r", ""),
                             ("write", "rwlock-w", "")):
        lt = lt_r or lt_w
        add(f"_raw_{kind}_lock", lt)
        add(f"_raw_{kind}_lock_bh", lt, "bh")
        add(f"_raw_{kind}_lock_irq", lt, "irq")
        add(f"_raw_{kind}_lock_irqsave", lt, "irqsave")
        add(f"_raw_{kind}_trylock", lt, "trylock", success="nonzero")
        add(f"_raw_{kind}_unlock", lt, release=True)
        add(f"_raw_{kind}_unlock_bh", lt, "bh", release=True)
        add(f"_raw_{kind}_unlock_irq", lt, "irq", release=True)
        add(f"_raw_{kind}_unlock_irqrestore", lt, "irqsave", release=True)
    add("_raw_spin_trylock_bh", "spinlock", "trylock", "bh", success="nonzero")
    add("_raw_spin_lock_nested", "spinlock", "nested")
    add("_raw_spin_lock_irqsave_nested", "spinlock", "irqsave", "nested")
    add("_raw_spin_lock_nest_lock", "spinlock", "nested")
    add("_raw_write_lock_nested", "rwlock-w", "nested")

    add("mutex_lock", "mutex")
    add("mutex_lock_io", "mutex")
    add("mutex_lock_interruptible", "mutex", "interruptible", success="zero")
    add("mutex_lock_killable", "mutex", "killable", success="zero")
    add("mutex_trylock", "mutex", "trylock", success="nonzero")
    add("mutex_lock_nested", "mutex", "nested")
    add("mutex_lock_io_nested", "mutex", "nested")
    add("_mutex_lock_nest_lock", "mutex", "nested")
    add("mutex_lock_interruptible_nested", "mutex", "interruptible", "nested", success="zero")
    add("mutex_lock_killable_nested", "mutex", "killable", "nested", success="zero")
    add("atomic_dec_and_mutex_lock", "mutex", "trylock", success="nonzero")
    add("mutex_unlock", "mutex", release=True)

    add("down_read", "rwsem-r")
    add("down_read_interruptible", "rwsem-r", "interruptible", success="zero")
    add("down_read_killable", "rwsem-r", "killable", success="zero")
    add("down_read_trylock", "rwsem-r", "trylock", success="nonzero")
    add("down_read_nested", "rwsem-r", "nested")
    add("down_write", "rwsem-w")
    add("down_write_killable", "rwsem-w", "killable", success="zero")
    add("down_write_trylock", "rwsem-w", "trylock", success="nonzero")
    add("down_write_nested", "rwsem-w", "nested")
    add("up_read", "rwsem-r", release=True)
    add("up_write", "rwsem-w", release=True)

    add("down", "semaphore")
    add("down_interruptible", "semaphore", "interruptible", success="zero")
    add("down_killable", "semaphore", "killable", success="zero")
    add("down_trylock", "semaphore", "trylock", success="zero")
    add("down_timeout", "semaphore", "interruptible", success="zero")
    add("up", "semaphore", release=True)
    return t


LOCK_FUNCS: dict[str, LockFunc] = _lock_table()

SLEEPING_LOCK_TYPES = frozenset({"mutex", "rwsem-r", "rwsem-w", "semaphore"})

# might_sleep() on a PREEMPT_DYNAMIC kernel in voluntary mode is a static call
# to __cond_resched (include/linux/kernel.h), so one probe here sees every
# might_sleep(), might_alloc() and cond_resched() of the kernel with its caller.
MIGHT_SLEEP_FUNC = "__cond_resched"

# Known to possibly sleep but not in .sched.text (the kernel-derived part of the
# catalog); kept if the kernel has them.
CURATED_SLEEPERS = (
    "msleep", "msleep_interruptible", "usleep_range_state", "ssleep",
    "synchronize_rcu", "synchronize_rcu_expedited", "synchronize_srcu",
    "synchronize_srcu_expedited", "synchronize_net", "rcu_barrier", "synchronize_irq",
    "flush_work", "__flush_work", "cancel_work_sync", "cancel_delayed_work_sync",
    "flush_delayed_work", "__flush_workqueue", "drain_workqueue", "destroy_workqueue",
    "flush_rcu_work", "kthread_stop", "kthread_flush_work", "kthread_flush_worker",
    "kthread_create_on_node", "kthread_park",
    "vmalloc", "vzalloc", "__vmalloc", "__vmalloc_node", "__vmalloc_node_range",
    "vmalloc_node", "vzalloc_node", "kvmalloc_node", "vmap", "vm_map_ram",
    "_copy_from_user", "_copy_to_user", "strncpy_from_user",
    "clear_user", "get_user_pages", "get_user_pages_fast", "pin_user_pages",
    "pin_user_pages_fast",
    "request_firmware", "request_threaded_irq", "free_irq", "disable_irq",
    "disable_hardirq", "devm_request_threaded_irq",
    "wait_for_completion", "wait_for_completion_timeout", "wait_for_completion_interruptible",
    "wait_for_completion_killable", "wait_for_completion_io",
    "schedule_timeout", "schedule_timeout_interruptible", "schedule_timeout_uninterruptible",
    "schedule_hrtimeout", "schedule_hrtimeout_range",
    "filp_open", "kern_path", "call_usermodehelper", "mempool_alloc", "dma_pool_alloc",
    "wait_on_page_bit", "folio_wait_bit", "__lock_page", "__folio_lock",
    "blk_execute_rq", "submit_bio_wait", "__alloc_pages_slowpath",
)

# In .sched.text but not a sleep of the caller's: the scheduler's own entry
# points (already seen as sched_switch), preemption points, and helpers that
# drop the lock they are called with.
_NOT_SLEEPERS = re.compile(
    r"^(__schedule|schedule_idle|preempt_schedule.*|__cond_resched.*|_cond_resched|"
    r"io_schedule_prepare|io_schedule_finish|__sched_text_.*|__.*_thunk|"
    r"__mutex_.*|__ww_mutex_.*|ww_mutex_.*|__rt_mutex.*|rt_mutex_.*|rwsem_down_.*|"
    r"__down.*|__up.*|.*_slowpath.*|mutex_spin_on_owner|__percpu_down_.*|"
    r"percpu_.*|__sched_.*|.*\..*|mark_wakeup_next_waiter|remove_waiter|"
    r"try_to_take_rt_mutex|task_blocks_on_rt_mutex.*|"
    # called with preemption disabled by design (it re-enables around schedule())
    r"schedule_preempt_disabled|console_conditional_schedule)$"
)


@dataclass(frozen=True)
class ProbeDef:
    event: str  # name inside GROUP
    func: str
    role: str  # "lk", "lr", "ul", "sl"
    definition: str  # the line for kprobe_events


@dataclass(frozen=True)
class Discovery:
    """What one discovery boot learned about a kernel (see ``tracer.discover``)."""

    functions: frozenset[str]  # text symbols of the core kernel
    traceable: frozenset[str]  # available_filter_functions
    blacklist: frozenset[str]  # kprobes blacklist
    sched_text: tuple[str, ...]  # functions inside .sched.text, in address order


def _event_name(prefix: str, func: str) -> str:
    # tracefs event names must be C identifiers; kallsyms names may hold dots
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', func)}"[:63]


def sleep_catalog(disc: Discovery) -> list[str]:
    """Functions that may sleep, derived from the kernel (``.sched.text``) plus a curated list."""
    names: list[str] = []
    for f in (*disc.sched_text, *CURATED_SLEEPERS):
        if f in LOCK_FUNCS or _NOT_SLEEPERS.match(f) or f in names:
            continue
        if f in disc.functions and f not in disc.blacklist:
            names.append(f)
    return names


def probe_definitions(machine: Machine, disc: Discovery) -> list[ProbeDef]:
    a1, a2, ret = machine.arg1, machine.arg2, machine.retaddr
    defs: list[ProbeDef] = []

    def usable(f: str) -> bool:
        return f in disc.functions and f not in disc.blacklist

    for f, lf in LOCK_FUNCS.items():
        if not usable(f):
            continue
        role = "ul" if lf.release else "lk"
        # the outcome of conditional acquires, and the wait of sleeping locks.  Defined
        # before the entry probe: kprobes on one address run newest first, and the
        # entry probe must read the return address before the kretprobe replaces it.
        if not lf.release and (lf.success or lf.lock_type in SLEEPING_LOCK_TYPES):
            rev = _event_name("lr", f)
            defs.append(ProbeDef(rev, f, "lr", f"r128:{GROUP}/{rev} {f} rv=$retval:s64"))
        ev = _event_name(role, f)
        extra = f" sub={a2}:s32" if "nested" in lf.flags and not lf.release else ""
        if machine.irq_state_fetch:
            extra += f" {machine.irq_state_fetch}"
        defs.append(
            ProbeDef(ev, f, role, f"p:{GROUP}/{ev} {f} lock={a1}:x64 ret={ret}:x64{extra}")
        )
    irq = f" {machine.irq_state_fetch}" if machine.irq_state_fetch else ""
    if usable(MIGHT_SLEEP_FUNC):
        ev = _event_name("sl", MIGHT_SLEEP_FUNC)
        defs.append(ProbeDef(ev, MIGHT_SLEEP_FUNC, "sl",
                             f"p:{GROUP}/{ev} {MIGHT_SLEEP_FUNC} ret={ret}:x64{irq}"))
    for f in sleep_catalog(disc):
        ev = _event_name("sl", f)
        defs.append(ProbeDef(ev, f, "sl", f"p:{GROUP}/{ev} {f} ret={ret}:x64{irq}"))
    return defs


TRACEPOINTS = (
    "kmem/kmalloc",
    "kmem/kmalloc_node",
    "kmem/kmem_cache_alloc",
    "kmem/kmem_cache_alloc_node",
    "kmem/kfree",
    "kmem/kmem_cache_free",
    "kmem/mm_page_alloc",
    "sched/sched_switch",
    "irq/irq_handler_entry",
    "irq/irq_handler_exit",
    "irq/softirq_entry",
    "irq/softirq_exit",
    "module/module_load",
    "module/module_free",
    "timer/timer_expire_entry",
    "timer/timer_expire_exit",
)

# ftrace record header: preempt depth is the low nibble of common_preempt_count;
# flags 0x01 irqs-off, 0x08 hardirq, 0x10 softirq, 0x80 bh-off.
ATOMIC_FILTER = "if common_preempt_count & 0xf || common_flags & 0x99"


def stack_triggers(defs: list[ProbeDef], tracepoints_with_stacks: tuple[str, ...] = (
        "kmem/kmalloc", "kmem/kmalloc_node", "kmem/kmem_cache_alloc",
        "kmem/kmem_cache_alloc_node", "kmem/mm_page_alloc")) -> list[str]:
    """``event condition`` lines: take a kernel stack when a may-sleep event is atomic.

    Lock acquisitions get no stack (too hot); their call site is in the record.
    """
    lines = [f"{GROUP}/{d.event} {ATOMIC_FILTER}" for d in defs if d.role == "sl"]
    for d in defs:
        if d.role == "lk" and LOCK_FUNCS[d.func].lock_type in SLEEPING_LOCK_TYPES:
            lines.append(f"{GROUP}/{d.event} {ATOMIC_FILTER}")
    # only allocations that may enter direct reclaim (__GFP_DIRECT_RECLAIM) can sleep
    atomic = ATOMIC_FILTER.removeprefix("if ")
    lines += [f"{tp} if gfp_flags & 0x400 && ({atomic})" for tp in tracepoints_with_stacks]
    return lines


def parse_event_name(name: str) -> tuple[str, str] | None:
    """``tracedep/lk__raw_spin_lock`` → ``("lk", "_raw_spin_lock")``; None if not ours."""
    group, _, ev = name.partition("/")
    if group != GROUP or "_" not in ev:
        return None
    role, _, func = ev.partition("_")
    if role not in ("lk", "lr", "ul", "sl"):
        return None
    return role, _INLINE_RE.sub("", func)
