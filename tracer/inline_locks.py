"""Inlined spinlocks: find every lock/unlock a driver's compiler inlined, from its DWARF.

On kernels built with ``CONFIG_INLINE_SPIN_LOCK=y`` and friends (Debian's arm64
kernels), ``spin_lock()`` is not a call to ``_raw_spin_lock``: the whole lock is
inlined into the driver, so there is no function to probe.  The driver's DWARF
still says where each lock is: a ``DW_TAG_inlined_subroutine`` of
``__raw_spin_lock`` (inside one of ``spin_lock``), with the location of its
``lock`` parameter at each address.  For every such instance this module gives:

* the probe address as ``module:function+offset`` (the entry of the outermost
  lock API instance, moved forward past instructions kprobes cannot single-step
  on arm64, such as ``mrs xN, daif`` or exclusive loads/stores);
* how to fetch the lock's address there: a register (plus a constant), memory
  at register + offset, or a static symbol of the module whose runtime address
  the decoder works out from the module's section addresses (kprobe fetch
  arguments cannot produce a symbol's address, only its contents).

Instances whose ``__raw_*`` body is not inlined (x86's Debian kernel calls
``_raw_spin_lock``) are skipped: the out-of-line probe sees them.

Some lock APIs are inline on every kernel: a percpu_rw_semaphore's readers
(``percpu_down_read()``/``percpu_up_read()`` are a per-CPU increment and
decrement, with an out-of-line slow path only while a writer is pending).  They
are found the same way, on every architecture: the whole instance is the lock,
its ``sem`` parameter the lock's address.  ``percpu_down_read_trylock()`` is
listed as skipped: its outcome is in no register the DWARF describes and the
lock word (a per-CPU counter) does not tell it either.

Probe events are named ``<role>_<lock function>__inl<N>``, e.g.
``lk__raw_spin_lock_irqsave__inl12``; :func:`tracedep.tracer.probes.parse_event_name`
strips the suffix, so lock type and flags come from ``LOCK_FUNCS`` as for the
out-of-line probes.  Their records have no ``ret`` field: the call site is the
probe address (``__probe_ip``).  An inlined trylock's outcome cannot be
observed after the fact (its result lives in an undescribed register), so its
probe also fetches the lock word (``val``) just before the attempt: a spinlock
or write lock is taken iff it was 0, a read lock iff no writer held it.

This module finds the instances and turns sites into probe definitions; one site's
placement and lock fetch are :mod:`.inline_sites`, the .ko they are read from
:mod:`.ko_image`, the instruction decoding both need :mod:`.insn_decode`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from elftools.dwarf.die import DIE

from tracedep.common.run_manifest import RunManifest
from tracedep.tracer.inline_sites import InlineSite, LockArg, site_at
from tracedep.tracer.ko_image import KoImage, die_ranges, entry_address
from tracedep.tracer.module_sections import KernelLoad, load_sections
from tracedep.tracer.probes import GROUP, INLINE_SUFFIX, LOCK_FUNCS

log = logging.getLogger(__name__)

CACHE_FORMAT = 6  # 3: static-pointer locks; 4: atomic base register, no hoisted double entries;
# 5: always-inline APIs (percpu rwsem readers), discovery mode in the key; 6: x86 static calls

# Inlined functions that are a lock API level above the __raw_* body (their
# ``lock`` parameter is the same lock: rlock is the first member of spinlock_t).
_API = re.compile(
    r"^(raw_)?(spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|_irqrestore)?$"
    r"|^__raw_(spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|_irqrestore)?$")
_BODY = re.compile(r"^__raw_((spin|read|write)_(lock|unlock|trylock)(_bh|_irq|_irqsave|"
                   r"_irqrestore)?)$")
# lock APIs that are inline functions on every kernel: the instance is the body and
# its name the LOCK_FUNCS key
_ALWAYS_INLINE = re.compile(r"^percpu_(down_read|up_read|down_read_trylock)$")
_UNOBSERVABLE = {"percpu_down_read_trylock": "an inlined percpu rwsem trylock: its outcome "
                 "cannot be read at any probe-able address"}


@dataclass
class Discovered:
    sites: list[InlineSite] = field(default_factory=list)
    # instances that cannot be probed, with the reason (reported in the manifest)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    out_of_line: int = 0  # API instances whose body is a call (seen by the normal probes)


def _is_body(nm: str | None, spin_bodies: bool) -> bool:
    return bool(nm) and (bool(spin_bodies and _BODY.match(nm or "")) or
                         bool(_ALWAYS_INLINE.match(nm or "")))


def _walk(die: DIE, chain: list[DIE], out: list[list[DIE]], mod: KoImage,
          spin_bodies: bool = True) -> None:
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            nm = mod.name_of(child)
            path = [*chain, child]
            if _is_body(nm, spin_bodies):
                out.append(path)
                continue  # nothing below a lock body is a lock of the driver's
            _walk(child, path, out, mod, spin_bodies)
        elif child.has_children:
            _walk(child, chain, out, mod, spin_bodies)


def discover_module(ko: Path, module: str, spin_bodies: bool = True) -> Discovered:
    """Every inlined lock/unlock of ``ko`` (module ``module``) that can be probed.

    ``spin_bodies``: the kernel inlines its spinlock bodies (``CONFIG_INLINE_SPIN_*``)
    and they are looked for; APIs that are inline everywhere always are."""
    mod = KoImage(ko, module)
    res = Discovered()
    seen: set[tuple[str, int, str, LockArg]] = set()
    for cu in mod.dwarf.iter_CUs():
        bodies: list[list[DIE]] = []
        _walk(cu.get_top_DIE(), [], bodies, mod, spin_bodies)
        # API instances with no inlined body below them call the out-of-line lock
        if spin_bodies:
            res.out_of_line += _count_out_of_line(cu.get_top_DIE(), mod)
        for path in bodies:
            body = path[-1]
            bname = mod.name_of(body) or ""
            m = _BODY.match(bname)
            func = f"_raw_{m.group(1)}" if m is not None else bname
            # the outermost contiguous run of lock API levels ending at the body
            k = len(path) - 1
            while k > 0 and _API.match(mod.name_of(path[k - 1]) or ""):
                k -= 1
            levels = path[k:]
            outer = levels[0]
            api = mod.name_of(outer) or bname
            where = {"module": module, "func": func, "api": api,
                     "call": _call_site(mod, outer)}
            if func in _UNOBSERVABLE:
                res.skipped.append({**where, "reason": _UNOBSERVABLE[func]})
                continue
            if func not in LOCK_FUNCS:
                res.skipped.append({**where, "reason": "no lock function of that name"})
                continue
            entry = entry_address(mod, outer)
            if entry is None:
                res.skipped.append({**where, "reason": "no address (optimized out)"})
                continue
            starts = [entry]
            if mod.arm64:
                starts = mod.entries(die_ranges(mod, outer) or [(entry, entry + 4)]) or [entry]
            for start in starts:
                site = site_at(mod, module, func, api, levels, start)
                if isinstance(site, str):
                    res.skipped.append({**where, "at": start, "reason": site})
                    continue
                # two sites may share a probe address (moved past the same store)
                key = (site.section, site.sec_offset, site.func, site.lock)
                if key in seen:
                    continue
                seen.add(key)
                res.sites.append(site)
    # kprobes sharing an address run newest first: at one address, define the site
    # whose code comes later first, so that events keep the program's order
    res.sites.sort(key=lambda s: (s.section, s.sec_offset, s.shifted))
    return res


def _count_out_of_line(die: DIE, mod: KoImage) -> int:
    n = 0
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            nm = mod.name_of(child) or ""
            if _API.match(nm) and not _BODY.match(nm):
                inner: list[list[DIE]] = []
                _walk(child, [], inner, mod)
                if not inner:
                    n += 1
                    continue
        if child.has_children:
            n += _count_out_of_line(child, mod)
    return n


def _call_site(mod: KoImage, inst: DIE) -> str:
    line = inst.attributes.get("DW_AT_call_line")
    return f"line {line.value}" if line is not None else ""


# -- cache and probe definitions ----------------------------------------------------


def discover_cached(ko: Path, module: str, cache: Path | None,
                    spin_bodies: bool = True) -> Discovered:
    """:func:`discover_module`, remembered per .ko content and mode."""
    key = hashlib.sha256(ko.read_bytes()).hexdigest()[:16]
    mode = "" if spin_bodies else "-always"
    path = cache / f"{module}-{key}{mode}-v{CACHE_FORMAT}.json" if cache else None
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            return Discovered([InlineSite(**{**s, "lock": LockArg(**s["lock"])})
                               for s in d["sites"]], d["skipped"], d["out_of_line"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s: %s", path, e)
    res = discover_module(ko, module, spin_bodies)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sites": [asdict(s) for s in res.sites],
                                   "skipped": res.skipped, "out_of_line": res.out_of_line}))
        tmp.replace(path)
    return res


@dataclass(frozen=True)
class InlineProbe:
    event: str
    site: InlineSite
    definition: str


def event_name(role: str, func: str, n: int) -> str:
    return f"{role}_{func}{INLINE_SUFFIX}{n}"


def inline_probes(sites: list[InlineSite], irq_state: str = "") -> list[InlineProbe]:
    """kprobe definitions for ``sites``; ``irq_state``: the machine's fetch of the
    interrupted context's IRQ mask (``pst=%pstate:x64`` on arm64), appended to each."""
    out: list[InlineProbe] = []
    for n, s in enumerate(sites):
        lf = LOCK_FUNCS[s.func]
        role = "ul" if lf.release else "lk"
        ev = event_name(role, s.func, n)
        args = []
        if s.lock.kind in ("reg", "mem"):
            args.append(f"lock={s.lock.fetch}:x64")
        if lf.success:
            word = s.lock.word_fetch(s.module)
            if not word:
                continue  # a trylock whose outcome cannot be told: better no event
            args.append(f"val={word}:u32")
        if irq_state:
            args.append(irq_state)
        out.append(InlineProbe(ev, s, f"p:{GROUP}/{ev} {s.target} {' '.join(args)}".rstrip()))
    return out


def site_table(probes: list[InlineProbe]) -> dict[str, dict[str, Any]]:
    """What the decoder needs per inline event (kept in the run's manifest)."""
    return {p.event: {"module": p.site.module, "func": p.site.func, "api": p.site.api,
                      "target": p.site.target, "lock": asdict(p.site.lock)}
            for p in probes}


# -- decoding: what the records cannot carry themselves ------------------------------


def trylock_taken(func: str, word: np.ndarray) -> np.ndarray:
    """Did an inlined trylock succeed, given the lock word just before it?"""
    if func.startswith("_raw_read"):
        return (word & 0x1FF) == 0  # queued rwlock: no writer (_QW_WMASK)
    return word == 0  # qspinlock / queued write lock: free


def static_lock_addresses(table: dict[str, dict[str, Any]], info: RunManifest,
                          ev_names: np.ndarray, ts: np.ndarray, load_ts: dict[str, list[int]],
                          kernel_loads: list[KernelLoad] | None = None) -> dict[int, int]:
    """Row index → runtime lock address for rows of inline events with static locks.

    The module load a row belongs to is the last one loaded before it (the
    module_load events' times, ``load_ts``); loads reported before tracing
    started have no event and come first.  A traced load's sections are the
    kernel's account (``kernel_loads``, tracer.module_sections) where there is
    one: a module whose init failed has no report of the guest's.
    """
    told: dict[str, list[KernelLoad]] = {}
    for kl in kernel_loads or []:
        told.setdefault(kl.name, []).append(kl)
    loads: dict[str, list[dict[str, int]]] = {}
    for m in info.modules:
        starts = load_ts.get(m.name, [])
        # each traced load lasts until the next (none traced yet: a window of the stream
        # that comes before the module_load event)
        spans = list(zip(starts, [*starts[1:], 1 << 62], strict=True)) if starts else []
        loads[m.name] = [ld.sections for _, _, ld in load_sections(
            m.loads, spans, told.get(m.name, []))]
    out: dict[int, int] = {}
    for ev, row in table.items():
        lk = row.get("lock") or {}
        if lk.get("kind") != "static":
            continue
        rows = np.nonzero(ev_names == f"{GROUP}/{ev}")[0]
        secs = loads.get(row["module"], [])
        if not len(rows) or not secs:
            continue
        times = np.asarray(load_ts.get(row["module"], []), dtype=np.int64)
        first = len(secs) - len(times)
        k = np.searchsorted(times, ts[rows], side="right") - 1 + first
        k = np.clip(k, 0, len(secs) - 1)
        for r, kk in zip(rows.tolist(), k.tolist(), strict=True):
            base = secs[kk].get(lk["section"])
            if base is not None:
                out[r] = int(base) + int(lk["sec_offset"])
    return out
