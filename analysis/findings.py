"""Findings: the contract between ``analysis`` and ``reports`` (``findings.json``).

A :class:`Finding` is one deduplicated bug of a run.  ``signature`` is stable
across runs, reboots and KASLR: it is built from the finding's kind, lock class
names and symbolized function names, never from raw addresses or timestamps.

Every record here reads and writes its own JSON (``to_json``/``from_json``, the
current version of reports.serialize); a reader ignores fields it does not know,
so that a minor version may add some.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from tracedep.analysis.health import Health
from tracedep.analysis.run_summary import RunSummary
from tracedep.common.jsonvalue import JSON, Fields, JSONObject

FINDING_KINDS = (
    "sleep-in-atomic",
    "lock-order-inversion",
    "irq-lock-inversion",
    "recursive-locking",
    "same-class-nesting",
    "invalid-wait-context",
)


@dataclass(frozen=True)
class Frame:
    """One symbolized frame; inlined frames come before the function they were inlined into."""

    function: str
    offset: int = 0
    size: int = 0
    module: str = "vmlinux"
    file: str | None = None
    line: int | None = None
    inlined: bool = False
    address: int = 0  # runtime address, kept for the raw view only (never in a signature)

    def short(self) -> str:
        where = f" {self.file}:{self.line}" if self.file and self.line else ""
        mod = "" if self.module == "vmlinux" else f" [{self.module}]"
        if self.inlined:
            return f"{self.function} (inlined){mod}{where}"
        return f"{self.function}+{self.offset:#x}/{self.size:#x}{mod}{where}"

    def to_json(self) -> JSONObject:
        return {"function": self.function, "offset": self.offset, "size": self.size,
                "module": self.module, "file": self.file, "line": self.line,
                "inlined": self.inlined, "address": self.address}

    @classmethod
    def from_json(cls, f: Fields) -> Frame:
        return cls(f.text("function"), f.integer("offset"), f.integer("size"), f.text("module"),
                   f.opt_text("file"), f.opt_integer("line"), f.boolean("inlined"),
                   f.integer("address"))


_IRQS = ("hardirq", "softirq")


class WitnessKind(StrEnum):
    """What a witness shows.  The reports decide by this, never by the words of the
    role, so that rewording a message changes no page."""

    SLEEP = "sleep"  # the call that may sleep
    HELD = "held"  # where a lock held at the incident had been taken
    ACQUIRE = "acquire"  # a lock being taken (``Site.holding``: the lock held meanwhile)
    IN_HARDIRQ = "in-hardirq"  # a lock taken in hardirq context
    IN_SOFTIRQ = "in-softirq"
    HARDIRQS_ON = "hardirqs-on"  # a lock taken with hardirqs enabled
    SOFTIRQS_ON = "softirqs-on"
    OTHER = "other"  # not said (a hand-made site, or a role an older analysis invented)

    @classmethod
    def taken_in(cls, irq: str) -> WitnessKind:
        """``irq`` is ``"hardirq"`` or ``"softirq"``."""
        return (cls.IN_HARDIRQ, cls.IN_SOFTIRQ)[_IRQS.index(irq)]

    @classmethod
    def taken_enabled(cls, irq: str) -> WitnessKind:
        return (cls.HARDIRQS_ON, cls.SOFTIRQS_ON)[_IRQS.index(irq)]

    @property
    def irq(self) -> str | None:
        """The interrupt context this witness is about, for the four irq kinds."""
        for irq in _IRQS:
            if self in (WitnessKind.taken_in(irq), WitnessKind.taken_enabled(irq)):
                return irq
        return None

    @property
    def in_irq(self) -> bool:
        return self in (WitnessKind.IN_HARDIRQ, WitnessKind.IN_SOFTIRQ)

    @property
    def irqs_enabled(self) -> bool:
        return self in (WitnessKind.HARDIRQS_ON, WitnessKind.SOFTIRQS_ON)


@dataclass(frozen=True)
class SiteContext:
    """The CPU's state at a witness, as the trace recorded it (tracer.schema's columns)."""

    preempt_depth: int = 0
    irqs_off: bool = False
    bh_off: bool = False  # softirqs disabled (spin_lock_bh), not serving one
    in_hardirq: bool = False
    in_softirq: bool = False

    def to_json(self) -> JSONObject:
        return {"preempt_depth": self.preempt_depth, "irqs_off": self.irqs_off,
                "bh_off": self.bh_off, "in_hardirq": self.in_hardirq,
                "in_softirq": self.in_softirq}

    @classmethod
    def from_json(cls, f: Fields) -> SiteContext:
        return cls(f.integer("preempt_depth"), f.boolean("irqs_off"), f.boolean("bh_off"),
                   f.boolean("in_hardirq"), f.boolean("in_softirq"))


@dataclass(frozen=True)
class Site:
    """A witness: what happened at one place, and the stack that led there (innermost first)."""

    role: str  # in words, for display: "sleep", "held B", "B acquired while holding A", …
    frames: tuple[Frame, ...]
    lock: str | None = None
    ts_ns: int | None = None
    pid: int | None = None
    comm: str | None = None
    context: SiteContext | None = None  # None: not recorded
    kind: WitnessKind = WitnessKind.OTHER
    holding: str | None = None  # a dependency's ACQUIRE: the lock held meanwhile

    def to_json(self) -> JSONObject:
        return {"role": self.role, "kind": self.kind.value, "holding": self.holding,
                "frames": [f.to_json() for f in self.frames], "lock": self.lock,
                "ts_ns": self.ts_ns, "pid": self.pid, "comm": self.comm,
                "context": self.context.to_json() if self.context is not None else None}

    @classmethod
    def from_json(cls, f: Fields) -> Site:
        ctx = f.opt_obj("context")
        return cls(role=f.text("role"), frames=tuple(Frame.from_json(x) for x in f.objs("frames")),
                   lock=f.opt_text("lock"), ts_ns=f.opt_integer("ts_ns"), pid=f.opt_integer("pid"),
                   comm=f.opt_text("comm"),
                   context=SiteContext.from_json(ctx) if ctx is not None else None,
                   kind=WitnessKind(f.text("kind")), holding=f.opt_text("holding"))


@dataclass
class Finding:
    kind: str
    driver: str
    locks: list[str]
    sites: list[Site]
    message: str
    first_ts_ns: int
    count: int = 1
    key: tuple[str, ...] = ()  # the parts the signature is made of (kind is added)
    details: dict[str, JSON] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        return make_signature(self.kind, self.key)

    def to_json(self) -> JSONObject:
        return {"kind": self.kind, "driver": self.driver, "locks": list[JSON](self.locks),
                "sites": [s.to_json() for s in self.sites], "message": self.message,
                "first_ts_ns": self.first_ts_ns, "count": self.count,
                "details": copy.deepcopy(self.details), "signature": self.signature,
                "signature_parts": list(self.key)}

    @classmethod
    def from_json(cls, f: Fields) -> Finding:
        details = f.value("details")
        if not isinstance(details, dict):
            raise TypeError(f"{f.where}.details: expected an object")
        return cls(kind=f.text("kind"), driver=f.text("driver"), locks=f.texts("locks"),
                   sites=[Site.from_json(s) for s in f.objs("sites")], message=f.text("message"),
                   first_ts_ns=f.integer("first_ts_ns"), count=f.integer("count"),
                   key=tuple(f.texts("signature_parts")), details=details)


def make_signature(kind: str, parts: tuple[str, ...]) -> str:
    digest = hashlib.sha1("\x1f".join((kind, *parts)).encode()).hexdigest()[:16]
    return f"{kind}:{digest}"


@dataclass
class ClassStats:
    """Per lock class timing, from acquire/release pairs (``analysis.lockstats``)."""

    lock_class: str
    lock_type: str
    driver: str  # module that defines/allocates the lock; vmlinux for core kernel
    acquisitions: int
    hold_ns: dict[str, float]  # {"mean", "p50", "p99", "max"}
    hold_hist: dict[str, int]  # log2 buckets: {"<1us": n, "1-2us": n, …}, in order
    wait_ns: dict[str, float]  # sleeping locks only (entry→return of the lock call); {} else
    wait_hist: dict[str, int]
    contexts: list[str]  # "process", "softirq", "hardirq" where it was taken

    def to_json(self) -> JSONObject:
        return {"lock_class": self.lock_class, "lock_type": self.lock_type,
                "driver": self.driver, "acquisitions": self.acquisitions,
                "hold_ns": dict(self.hold_ns), "hold_hist": dict(self.hold_hist),
                "wait_ns": dict(self.wait_ns), "wait_hist": dict(self.wait_hist),
                "contexts": list(self.contexts)}

    @classmethod
    def from_json(cls, f: Fields) -> ClassStats:
        return cls(f.text("lock_class"), f.text("lock_type"), f.text("driver"),
                   f.integer("acquisitions"), f.number_map("hold_ns"), f.int_map("hold_hist"),
                   f.number_map("wait_ns"), f.int_map("wait_hist"), f.texts("contexts"))


@dataclass
class Edge:
    """A lock-order dependency: ``before`` was held when ``after`` was acquired."""

    before: str
    after: str
    count: int
    drivers: list[str]
    witness: Site  # the acquisition of ``after`` (first seen)
    held_witness: Site | None  # where ``before`` had been acquired
    read_only: bool = False  # both sides were read acquisitions of rwlocks
    trylock: bool = False  # ``after`` only ever taken by trylock

    def to_json(self) -> JSONObject:
        return {"before": self.before, "after": self.after, "count": self.count,
                "drivers": list(self.drivers), "witness": self.witness.to_json(),
                "held_witness": (self.held_witness.to_json()
                                 if self.held_witness is not None else None),
                "read_only": self.read_only, "trylock": self.trylock}

    @classmethod
    def from_json(cls, f: Fields) -> Edge:
        held = f.opt_obj("held_witness")
        return cls(f.text("before"), f.text("after"), f.integer("count"), f.texts("drivers"),
                   Site.from_json(f.obj("witness")),
                   Site.from_json(held) if held is not None else None,
                   f.boolean("read_only"), f.boolean("trylock"))


@dataclass
class Analysis:
    """Everything ``analysis`` hands to ``reports`` (``findings.json`` + ``analysis.json``)."""

    findings: list[Finding]
    classes: list[ClassStats]
    edges: list[Edge]
    health: Health  # events, lost events, truncation, how the guest ended, warnings
    run: RunSummary  # the manifest's summary: kernel, arch, modules, timing
