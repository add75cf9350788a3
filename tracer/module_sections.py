"""Where the kernel placed each module's sections, told by the kernel at every load.

The guest reports a module's section addresses from ``/sys/module/NAME/sections``
once its load returns.  A module whose init fails is freed before that, so its
frames were ``?? [??]`` and a finding in it was blamed on vmlinux.  The kernel
knows the addresses earlier: ``load_module()`` places the sections and makes
their sysfs attributes (``add_sect_attrs()`` in ``mod_sysfs_setup()``) before it
calls ``do_init_module(mod)``, which runs the init.  So entry probes on
``do_init_module`` fetch ``mod->name`` and, from ``mod->sect_attrs``, each
section's name and address (``struct module_sect_attrs { …; unsigned int
nsections; struct module_sect_attr attrs[]; }``, ``struct module_sect_attr {
struct bin_attribute battr; unsigned long address; }``, the name in
``battr.attr.name``; kernel/module/sysfs.c, 6.1 and 6.12; offsets from BTF).

A kprobe event holds at most 128 fetch-args, and tracefs takes a definition of
at most 4 KiB, so :data:`CHUNK` sections are fetched per probe, by
:data:`CHUNKS` probes on the same entry.  Each row also carries the name and
``nsections``; a fetch past ``nsections`` (read without fault: kprobe fetches
cannot oops) is ignored.  Names and addresses come from the guest: a name is
kept only if the module's ``.ko`` has an allocated section of that name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracedep.common.machines import Machine
from tracedep.common.run_manifest import Load
from tracedep.tracer.probes import GROUP, Discovery

log = logging.getLogger(__name__)

FUNC = "do_init_module"
PREFIX = "ms"  # event names ms<chunk>_do_init_module in GROUP
CHUNK = 16
CHUNKS = 6  # 96 sections: Debian's null_blk has 45, its largest modules fewer than 80


@dataclass(frozen=True)
class SectAttrsLayout:
    """Offsets the probes need, from the kernel's BTF."""

    name: int  # offsetof(struct module, name): a char array
    sect_attrs: int  # offsetof(struct module, sect_attrs): a pointer
    nsections: int  # offsetof(struct module_sect_attrs, nsections)
    attrs: int  # offsetof(struct module_sect_attrs, attrs)
    stride: int  # sizeof(struct module_sect_attr)
    address: int  # offsetof(struct module_sect_attr, address)
    attr_name: int  # offsetof(module_sect_attr, battr.attr.name): a pointer

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def layout(vmlinux: Path) -> SectAttrsLayout:
    from tracedep.kimage.btf import BtfError, read_btf

    btf = read_btf(vmlinux)
    battr = btf.member_offset("module_sect_attr", "battr")
    attr = btf.member_offset("bin_attribute", "attr")
    aname = btf.member_offset("attribute", "name")
    got = {"name": btf.member_offset("module", "name"),
           "sect_attrs": btf.member_offset("module", "sect_attrs"),
           "nsections": btf.member_offset("module_sect_attrs", "nsections"),
           "attrs": btf.member_offset("module_sect_attrs", "attrs"),
           "stride": btf.struct_size("module_sect_attr"),
           "address": btf.member_offset("module_sect_attr", "address"),
           "attr_name": None if None in (battr, attr, aname) else
           int(battr or 0) + int(attr or 0) + int(aname or 0)}
    missing = [k for k, v in got.items() if v is None]
    if missing:
        raise BtfError(f"{vmlinux}: BTF lacks the module section layout ({', '.join(missing)})")
    return SectAttrsLayout(**{k: int(v) for k, v in got.items() if v is not None})


def probes(machine: Machine, disc: Discovery, vmlinux: Path | None
           ) -> tuple[list[str], dict[str, Any]]:
    """kprobe_events lines, and the manifest's ``module_sections`` (what was placed, or
    why not)."""
    if FUNC not in disc.functions or FUNC in disc.blacklist:
        return [], {"probes": 0, "absent": f"the kernel has no probe-able {FUNC}"}
    if vmlinux is None:
        return [], {"probes": 0, "absent": "no debug vmlinux (BTF) for this kernel"}
    try:
        lay = layout(vmlinux)
    except Exception as e:  # no BTF, another layout: failed inits stay unsymbolized
        log.warning("module sections at load unavailable: %s", e)
        return [], {"probes": 0, "absent": str(e)}
    mod = machine.arg1
    sa = f"+{lay.sect_attrs}({mod})"
    out = []
    for k in range(CHUNKS):
        args = [f"name=+{lay.name}({mod}):string", f"n=+{lay.nsections}({sa}):u32"]
        for j in range(CHUNK):
            i = k * CHUNK + j
            at = lay.attrs + i * lay.stride
            args.append(f"a{j}=+{at + lay.address}({sa}):x64")
            args.append(f"s{j}=+0(+{at + lay.attr_name}({sa})):string")
        out.append(f"p:{GROUP}/{PREFIX}{k}_{FUNC} {FUNC} {' '.join(args)}")
    return out, {"probes": len(out), "sections_max": CHUNKS * CHUNK, "layout": lay.to_json()}


def parse_event(name: str) -> int | None:
    """``ms3_do_init_module`` → 3; None for any other event."""
    head, sep, fn = name.partition("_")
    if not sep or fn != FUNC or not head.startswith(PREFIX) or not head[len(PREFIX):].isdigit():
        return None
    k = int(head[len(PREFIX):])
    return k if k < CHUNKS else None


@dataclass
class KernelLoad:
    """One module load as do_init_module saw it: its sections' runtime addresses."""

    name: str
    ts_ns: int
    cpu: int
    nsections: int
    sections: dict[str, int] = field(default_factory=dict)
    chunks: int = 0  # how many of the CHUNKS rows were read

    @property
    def complete(self) -> bool:
        return self.chunks * CHUNK >= min(self.nsections, CHUNKS * CHUNK)


def assemble(rows: list[tuple[int, int, int, str, int, list[tuple[str, int]]]]
             ) -> list[KernelLoad]:
    """Loads from decoded rows ``(ts, cpu, chunk, module name, nsections, [(section,
    address)…])``.  One entry runs all the probes of the address in a row, on one
    CPU, newest probe first (so chunk order is not time order): consecutive rows of
    one CPU and one module name, each chunk at most once, are one load."""
    out: list[KernelLoad] = []
    ld: KernelLoad | None = None
    got: set[int] = set()
    for ts, cpu, chunk, name, n, secs in sorted(rows, key=lambda r: (r[1], r[0])):
        if ld is None or ld.cpu != cpu or ld.name != name or chunk in got \
                or ld.nsections != n:
            ld = KernelLoad(name, ts, cpu, n)
            out.append(ld)
            got = set()
        got.add(chunk)
        first = chunk * CHUNK
        for j, (sname, addr) in enumerate(secs):
            if first + j < ld.nsections and sname and addr:
                ld.sections.setdefault(sname, addr)
        ld.chunks += 1
    out.sort(key=lambda x: x.ts_ns)
    return out


BEFORE_TRACING = (-(1 << 62), 1 << 62)  # the span of a load no module_load event shows


def load_sections(reported: list[Load], times: list[tuple[int, int]],
                  told: list[KernelLoad]) -> list[tuple[int, int, Load]]:
    """Each load of one module, oldest first: ``(t0, t1, load)``.

    ``reported``: the guest's load records (manifest ``loads``), in order; ``times``:
    the (load, free) trace times of the loads the trace shows; ``told``: the kernel's
    account of them (:func:`assemble`).  Loads before tracing began have no load
    event and come first, with the whole trace as their span.  A traced load takes
    the kernel's account where there is one (a load whose init failed has no
    report); without any, the reports line up with the last load events."""
    if told and times:
        out = [(*BEFORE_TRACING, r) for r in reported[:max(len(reported) - len(times), 0)]]
        for t0, t1 in times:
            kl = next((k for k in told if t0 <= k.ts_ns <= t1), None)
            out.append((t0, t1, Load(sections=dict(kl.sections) if kl is not None else {})))
        return out
    offset = len(reported) - len(times)
    return [(*(times[k - offset] if 0 <= k - offset < len(times) else BEFORE_TRACING), r)
            for k, r in enumerate(reported)]
