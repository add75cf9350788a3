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
``li``     entry of a lock initializer (``__mutex_init`` …: tracer.lock_init)
``lc``     a lock's re-keying by core code (inode i_rwsem by fs type: tracer.lock_init)
``wt``     entry of a wait on another context's work (tracer.wait_probes)
``sg``     a completion signalled, or a kthread looking for its stop (tracer.wait_probes)
``qw``     a work item queued on a workqueue (tracer.wait_probes)
=========  ==================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracedep.common.machines import Machine

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


# long: one table of every probed lock function, read best in one place
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

    # ww_mutex: an acquire context is lockdep's nest_lock (ww_mutex_lock() takes it as
    # mutex_acquire_nest()): same-class ww_mutexes nest under one ctx.  ``sub`` is then
    # the ctx pointer's low half, nonzero; NULL (no ctx) is a plain acquisition.
    # -EDEADLK/-EALREADY: not taken.
    add("ww_mutex_lock", "mutex", "nested", success="zero")
    add("ww_mutex_lock_interruptible", "mutex", "nested", "interruptible", success="zero")
    add("ww_mutex_trylock", "mutex", "trylock", success="nonzero")
    add("ww_mutex_unlock", "mutex", release=True)
    # rt_mutex on a non-RT kernel: its own functions (futexes' PI locks, i2c buses)
    add("rt_mutex_lock", "mutex")
    add("rt_mutex_lock_nested", "mutex", "nested")
    add("rt_mutex_lock_interruptible", "mutex", "interruptible", success="zero")
    add("rt_mutex_lock_killable", "mutex", "killable", success="zero")
    add("rt_mutex_trylock", "mutex", "trylock", success="nonzero")
    add("rt_mutex_unlock", "mutex", release=True)
    # percpu_rw_semaphore: writers call out of line; readers are inline (a per-CPU
    # increment): in modules their inlined instances are probed (tracer.inline_locks,
    # by these names), in the core kernel only the ones behind a function are seen:
    # cpus_read_lock() and friends, whose lock is always cpu_hotplug_lock
    # (FIXED_LOCKS).  Not __percpu_down_read: it is the readers' slow path, inside
    # those functions.
    add("percpu_down_write", "rwsem-w")
    add("percpu_up_write", "rwsem-w", release=True)
    add("percpu_down_read", "rwsem-r")
    add("percpu_up_read", "rwsem-r", release=True)
    add("cpus_read_lock", "rwsem-r")
    add("cpus_read_trylock", "rwsem-r", "trylock", success="nonzero")
    add("cpus_read_unlock", "rwsem-r", release=True)

    add("down", "semaphore")
    add("down_interruptible", "semaphore", "interruptible", success="zero")
    add("down_killable", "semaphore", "killable", success="zero")
    add("down_trylock", "semaphore", "trylock", success="zero")
    add("down_timeout", "semaphore", "interruptible", success="zero")
    add("up", "semaphore", release=True)
    return t


LOCK_FUNCS: dict[str, LockFunc] = _lock_table()

# Lock functions without a lock argument: the lock they take, a core-kernel
# symbol whose address the decoder fills in from the run's kallsyms.
FIXED_LOCKS: dict[str, str] = {
    "cpus_read_lock": "cpu_hotplug_lock",
    "cpus_read_trylock": "cpu_hotplug_lock",
    "cpus_read_unlock": "cpu_hotplug_lock",
}

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
    # Not timer_delete_sync()/del_timer_sync(): without PREEMPT_RT they spin until the
    # callback is done (del_timer_wait_running() is empty, kernel/time/timer.c) and
    # are legal with IRQs off (flush_delayed_work() calls them so); their hazard is
    # a lock the callback takes, a wait dependency, not a sleep.
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
    role: str  # one of ROLES
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


event_name = _event_name
ROLES = ("lk", "lr", "ul", "sl", "li", "lc", "wt", "sg", "qw")


# Symbols that are not functions one can probe: the -fpatchable-function-entry padding
# in front of each function (``__pfx_``, x86 since 6.2) and compiler clones.
_NOT_FUNCTIONS = re.compile(r"^(__pfx_|__cfi_)")
# Memory allocation profiling renamed the allocators' out-of-line entry points with a
# ``_noprof`` suffix (v6.10); the API names became macros.  The catalog names the API;
# the kernel is asked which spelling it has.
NOPROF = "_noprof"


def kernel_spelling(f: str, functions: frozenset[str]) -> str | None:
    """``f`` as this kernel names it (``vmalloc`` → ``vmalloc_noprof`` on 6.10+), or None."""
    for cand in (f, f + NOPROF):
        if cand in functions:
            return cand
    return None


def api_name(f: str) -> str:
    """The API a kernel function implements, whatever the release calls it."""
    return f.removesuffix(NOPROF)


def sleep_catalog(disc: Discovery) -> list[str]:
    """Functions that may sleep, derived from the kernel (``.sched.text``) plus a curated list."""
    names: list[str] = []
    for f in (*disc.sched_text, *CURATED_SLEEPERS):
        if f in LOCK_FUNCS or _NOT_SLEEPERS.match(f) or _NOT_FUNCTIONS.match(f):
            continue
        k = kernel_spelling(f, disc.functions)
        if k is not None and k not in names and k not in disc.blacklist:
            names.append(k)
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
            # only a conditional acquire has a result; a kernel with BTF (6.12) refuses
            # $retval on a void function such as mutex_lock (ENOENT)
            rv = " rv=$retval:s64" if lf.success else ""
            # 6.12's arm64 return probes run with IRQs masked as its entry probes do:
            # they need the interrupted context's IRQ state too (tracer.calibration)
            if machine.irq_state_fetch:
                rv += f" {machine.irq_state_fetch}"
            defs.append(ProbeDef(rev, f, "lr", f"r128:{GROUP}/{rev} {f}{rv}"))
        ev = _event_name(role, f)
        extra = f" sub={a2}:s32" if "nested" in lf.flags and not lf.release else ""
        if machine.irq_state_fetch:
            extra += f" {machine.irq_state_fetch}"
        # a fixed lock's address is filled in on the host (an immediate 0 here)
        lock = "\\0" if f in FIXED_LOCKS else a1
        defs.append(
            ProbeDef(ev, f, role, f"p:{GROUP}/{ev} {f} lock={lock}:x64 ret={ret}:x64{extra}")
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
    # the other side of a wait (tracer.wait_probes)
    "workqueue/workqueue_queue_work",
    "workqueue/workqueue_execute_start",
    "workqueue/workqueue_execute_end",
    "sched/sched_kthread_stop",
)

# ftrace record header: preempt depth is the low nibble of common_preempt_count;
# flags 0x01 irqs-off, 0x08 hardirq, 0x10 softirq, 0x80 bh-off.
ATOMIC_FILTER = "if common_preempt_count & 0xf || common_flags & 0x99"

# The interrupted context's IRQ state as a probe fetches it (Machine.irq_state_fetch):
# field -> (mask, whether a set bit means IRQs off).  arm64's PSTATE.I; x86's EFLAGS.IF.
IRQ_STATE_FIELDS = {"pst": (0x80, True), "efl": (0x200, False)}


def probe_atomic_filter(machine: Machine | None) -> str:
    """The stack trigger's condition on the might_sleep() catch-all probe.  Where kprobe
    handlers run with IRQs masked (arm64's BRK), every record says irqs-off: a trigger
    on that flag took a stack of every cond_resched() (4.9 M stacks, 2 M events lost in
    a minute of arm64 I/O); the fetched IRQ state of the interrupted context is used.
    The other may-sleep probes keep a stack always there: Debian's arm64 kernels have
    no PREEMPT_COUNT, so a spinlock held is invisible to any in-guest condition, and
    the stack is what ties a nested sleeper (__flush_work in flush_work) to its caller."""
    if machine is None or not machine.kprobe_reports_irqs_off or not machine.irq_state_fetch:
        return ATOMIC_FILTER
    field = machine.irq_state_fetch.split("=", 1)[0]
    mask, set_means_off = IRQ_STATE_FIELDS[field]
    off = f"{field} & {mask:#x}" if set_means_off else f"({field} & {mask:#x}) == 0"
    return f"if common_preempt_count & 0xf || common_flags & 0x98 || {off}"


def stack_triggers(defs: list[ProbeDef], tracepoints_with_stacks: tuple[str, ...] = (
        "kmem/kmalloc", "kmem/kmalloc_node", "kmem/kmem_cache_alloc",
        "kmem/kmem_cache_alloc_node", "kmem/mm_page_alloc"),
        machine: Machine | None = None) -> list[str]:
    """``event condition`` lines: take a kernel stack when a may-sleep event is atomic.

    Lock acquisitions get no stack (too hot); their call site is in the record.
    """
    hot = probe_atomic_filter(machine)
    lines = [f"{GROUP}/{d.event} {hot if d.func == MIGHT_SLEEP_FUNC else ATOMIC_FILTER}"
             for d in defs if d.role == "sl"]
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
    if role not in ROLES:
        return None
    return role, _INLINE_RE.sub("", func)
