"""Waits on another context's work, and the other side: the probes behind wait edges.

A task that holds lock L and waits for a work item, a timer callback, a completion
or a kthread deadlocks when the other side needs L first.  lockdep sees the work
and timer cases through pseudo-locks (``(work_completion)``, ``(wq_completion)``,
the timer's lockdep_map) on a lockdep kernel only; the analysis
(``analysis.waits``) builds the same dependencies from these events on any kernel:

=========  ==================================================================
prefix     event
=========  ==================================================================
``wt``     entry of a wait on an object: ``obj`` the work item, workqueue,
           timer or completion (``flush_work``, ``timer_delete_sync`` …);
           a workqueue's ``name`` too, where the kernel's BTF gives its offset
``sg``     the object is signalled: ``complete(obj)``; or a kthread looks for
           its stop (``kthread_should_stop``: no object, the thread is the task)
``qw``     a work item queued (``__queue_work``): ``obj`` the work, ``wq`` the
           workqueue: with the queue_work tracepoint's name, a flushed
           workqueue's name where BTF gives no offset to read it at
=========  ==================================================================

The other side comes from tracepoints: ``workqueue_execute_start/end`` (a work
item's function runs), ``workqueue_queue_work`` (the workqueue it was queued on,
by name), ``timer_expire_entry/exit`` (a timer callback runs) and
``sched_kthread_stop`` (``kthread_stop()`` of a thread, by pid).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracedep.common.machines import Machine
from tracedep.tracer.probes import GROUP, Discovery, ProbeDef, event_name

log = logging.getLogger(__name__)

# the object kinds of wait events (schema column ``lock_type`` of wait rows)
WAIT_OBJECTS = ("work", "workqueue", "timer", "completion", "kthread")


@dataclass(frozen=True)
class WaitFunc:
    name: str
    obj: str  # one of WAIT_OBJECTS
    role: str  # "wt" (waits for the object), "sg" (signals it), "qw" (queues work on it)
    timed: bool = False  # gives up after a timeout: a stall, not a hang


def _table() -> dict[str, WaitFunc]:
    t: dict[str, WaitFunc] = {}

    def add(name: str, obj: str, role: str = "wt", timed: bool = False) -> None:
        t[name] = WaitFunc(name, obj, role, timed)

    # a delayed_work's work_struct is its first member: the pointer is the work's
    for f in ("flush_work", "cancel_work_sync", "flush_delayed_work",
              "cancel_delayed_work_sync"):
        add(f, "work")
    for f in ("__flush_workqueue", "drain_workqueue", "destroy_workqueue"):
        add(f, "workqueue")
    # del_timer_sync() is timer_delete_sync() since 6.2 (Debian's 6.1 has it too)
    for f in ("del_timer_sync", "timer_delete_sync", "timer_shutdown_sync"):
        add(f, "timer")
    for f in ("wait_for_completion", "wait_for_completion_interruptible",
              "wait_for_completion_killable", "wait_for_completion_io",
              "wait_for_completion_state"):
        add(f, "completion")
    for f in ("wait_for_completion_timeout", "wait_for_completion_interruptible_timeout",
              "wait_for_completion_killable_timeout", "wait_for_completion_io_timeout"):
        add(f, "completion", timed=True)
    for f in ("complete", "complete_all", "complete_on_current_cpu"):
        add(f, "completion", "sg")
    add("__queue_work", "workqueue", "qw")
    # its call site; the thread's pid comes from the sched_kthread_stop tracepoint
    add("kthread_stop", "kthread")
    for f in ("kthread_should_stop", "kthread_should_stop_or_park"):
        add(f, "kthread", "sg")
    return t


WAIT_FUNCS: dict[str, WaitFunc] = _table()

WAIT_TRACEPOINTS = (
    "workqueue/workqueue_queue_work",
    "workqueue/workqueue_execute_start",
    "workqueue/workqueue_execute_end",
    "sched/sched_kthread_stop",
)


def workqueue_name_offset(vmlinux: Path | None) -> tuple[int | None, str]:
    """offsetof(struct workqueue_struct, name) from the kernel's BTF, and what the
    manifest says of it: a flush_workqueue() is matched to the work items queued on
    that workqueue by its name (the queue_work tracepoint gives only the name)."""
    if vmlinux is None:
        return None, "absent: no debug vmlinux (BTF) for this kernel"
    from tracedep.errors import BtfError
    from tracedep.kimage.btf import read_btf

    try:
        off = read_btf(vmlinux).member_offset("workqueue_struct", "name")
    except (BtfError, OSError) as e:
        return None, f"absent: {e}"
    if off is None:
        return None, "absent: BTF has no workqueue_struct.name"
    return off, f"workqueue_struct.name at {off:#x}"


def wait_probe_definitions(machine: Machine, disc: Discovery, wq_name_off: int | None
                           ) -> list[ProbeDef]:
    """Entry probes on the wait and signal functions this kernel has."""
    irq = f" {machine.irq_state_fetch}" if machine.irq_state_fetch else ""
    defs = []
    for f, wf in WAIT_FUNCS.items():
        if f not in disc.functions or f not in disc.traceable or f in disc.blacklist:
            continue
        ev = event_name(wf.role, f)
        obj = "" if wf.role == "sg" and wf.obj == "kthread" else f" obj={machine.arg1}:x64"
        if wf.role == "qw":  # __queue_work(cpu, wq, work)
            obj = f" obj={machine.arg3}:x64 wq={machine.arg2}:x64"
        # the string last: ftrace text prints it unquoted-safe only at the end of a line
        name = (f" name=+{wq_name_off}({machine.arg1}):string"
                if wf.obj == "workqueue" and wq_name_off is not None else "")
        defs.append(ProbeDef(ev, f, wf.role,
                             f"p:{GROUP}/{ev} {f}{obj} ret={machine.retaddr}:x64{irq}{name}"))
    return defs
