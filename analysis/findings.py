"""Findings: the contract between ``analysis`` and ``reports`` (``findings.json``).

A :class:`Finding` is one deduplicated bug of a run.  ``signature`` is stable
across runs, reboots and KASLR: it is built from the finding's kind, lock class
names and symbolized function names, never from raw addresses or timestamps.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

FINDING_KINDS = (
    "sleep-in-atomic",
    "lock-order-inversion",
    "irq-lock-inversion",
    "recursive-locking",
    "same-class-nesting",
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


@dataclass(frozen=True)
class Site:
    """A witness: what happened at one place, and the stack that led there (innermost first)."""

    role: str  # "sleep", "acquire A", "held B", "irq-context", …
    frames: tuple[Frame, ...]
    lock: str | None = None
    ts_ns: int | None = None
    pid: int | None = None
    comm: str | None = None
    context: str | None = None  # "preempt=1 irqs-off softirq", as the trace said


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
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        return make_signature(self.kind, self.key)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key")
        d["signature"] = self.signature
        d["signature_parts"] = list(self.key)
        return d


def make_signature(kind: str, parts: tuple[str, ...]) -> str:
    digest = hashlib.sha1("\x1f".join((kind, *parts)).encode()).hexdigest()[:16]
    return f"{kind}:{digest}"


def finding_from_json(d: dict[str, Any]) -> Finding:
    sites = [
        Site(**{**s, "frames": tuple(Frame(**f) for f in s["frames"])}) for s in d["sites"]
    ]
    return Finding(
        kind=d["kind"],
        driver=d["driver"],
        locks=list(d["locks"]),
        sites=sites,
        message=d["message"],
        first_ts_ns=int(d["first_ts_ns"]),
        count=int(d["count"]),
        key=tuple(d.get("signature_parts", ())),
        details=dict(d.get("details", {})),
    )


def dump(findings: list[Finding]) -> str:
    return json.dumps([f.to_json() for f in findings], indent=2, sort_keys=True)


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


@dataclass
class Analysis:
    """Everything ``analysis`` hands to ``reports`` (``findings.json`` + ``analysis.json``)."""

    findings: list[Finding]
    classes: list[ClassStats]
    edges: list[Edge]
    health: dict[str, Any]  # events, lost events, truncation, how the guest ended, warnings
    run: dict[str, Any]  # the manifest's summary: kernel, arch, modules, timing
