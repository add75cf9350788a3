"""The run's summary: ``run`` of ``analysis.json``, who ran what on which kernel.

Built from the run manifest (``from_manifest``: read leniently, as every stage
reads the manifest) plus the analysis's own coverage of each module under test.
The manifest's own records (kernel, timing, workload, QEMU) keep its key order
(it is written with sorted keys), which is the order the "Run record" shows.
A record only some runs have (a text trace has no kernel, timing, QEMU) and a
field only some runs know (``kernel.source_tree``) are left out while None; the
other fields of a record are written always, null when it has no value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from tracedep.common.jsonvalue import (
    JSON,
    Fields,
    JSONObject,
    bool_or_none,
    str_or_none,
)
from tracedep.common.run_manifest import RunManifest
from tracedep.common.run_records import KernelRecord, QemuRecord, TimingRecord, WorkloadRecord

_R = TypeVar("_R", KernelRecord, TimingRecord, WorkloadRecord, QemuRecord)


@dataclass(frozen=True)
class ModuleSummary:
    """A module under test: where it came from, how its load went, what it exercised."""

    name: str
    origin: str | None = None  # "module-src", "kernel" (the kernel package's own)
    src_dir: str | None = None
    loaded: bool | None = None
    insmod_rc: list[int] | None = None  # each load's exit code (tdinsmod: finit_module's errno)
    loader: str | None = None  # "tdinsmod"; busybox insmod in older runs
    lock_classes: int | None = None  # lock classes it owns (analysis.coverage); None: not counted
    lock_events: int | None = None  # lock operations at its code; None: not counted

    def to_json(self) -> JSONObject:
        return {"name": self.name, "origin": self.origin, "src_dir": self.src_dir,
                "loaded": self.loaded,
                "insmod_rc": list(self.insmod_rc) if self.insmod_rc is not None else None,
                "loader": self.loader, "lock_classes": self.lock_classes,
                "lock_events": self.lock_events}

    @classmethod
    def from_json(cls, f: Fields) -> ModuleSummary:
        return cls(f.text("name"), f.opt_text("origin"), f.opt_text("src_dir"),
                   f.opt_boolean("loaded"),
                   f.integers("insmod_rc") if f.raw().get("insmod_rc") is not None else None,
                   f.opt_text("loader"), f.opt_integer("lock_classes"),
                   f.opt_integer("lock_events"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> ModuleSummary:
        rcs = d.get("insmod_rc")
        return cls(str(d["name"]), str_or_none(d.get("origin")), str_or_none(d.get("src_dir")),
                   bool_or_none(d.get("loaded")),
                   [r for r in rcs if isinstance(r, int)] if isinstance(rcs, list) else None,
                   str_or_none(d.get("loader")), None, None)


def _opt(f: Fields, key: str) -> Fields | None:
    return f.obj(key) if f.has(key) else None


@dataclass
class RunSummary:
    """Who ran what, where: the manifest's summary and the modules under test."""

    arch: str | None = None
    kernel: KernelRecord | None = None
    started: str | None = None  # local time the run started, ISO 8601
    tracedep_version: str | None = None
    timing: TimingRecord | None = None
    workload: WorkloadRecord | None = None
    qemu: QemuRecord | None = None
    transport: str | None = None  # "socket" or "ringbuf"
    modules: list[ModuleSummary] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        return self.timing.wall_s if self.timing is not None else None

    def to_json(self) -> JSONObject:
        parts: list[tuple[str, JSON]] = [
            ("arch", self.arch), ("kernel", self.kernel.to_json() if self.kernel else None),
            ("started", self.started), ("tracedep_version", self.tracedep_version),
            ("timing", self.timing.to_json() if self.timing else None),
            ("workload", self.workload.to_json() if self.workload else None),
            ("qemu", self.qemu.to_json() if self.qemu else None),
            ("transport", self.transport)]
        out: JSONObject = {k: v for k, v in parts if v is not None}
        out["modules"] = [m.to_json() for m in self.modules]
        return out

    @classmethod
    def from_json(cls, f: Fields) -> RunSummary:
        def text(k: str) -> str | None:
            return f.text(k) if f.has(k) else None

        kernel, timing, workload, qemu = (_opt(f, k) for k in ("kernel", "timing", "workload",
                                                                "qemu"))
        return cls(arch=text("arch"), kernel=KernelRecord.from_json(kernel) if kernel else None,
                   started=text("started"), tracedep_version=text("tracedep_version"),
                   timing=TimingRecord.from_json(timing) if timing else None,
                   workload=WorkloadRecord.from_json(workload) if workload else None,
                   qemu=QemuRecord.from_json(qemu) if qemu else None, transport=text("transport"),
                   modules=[ModuleSummary.from_json(m) for m in f.objs("modules")])

    @classmethod
    def from_run(cls, info: RunManifest) -> RunSummary:
        """The summary of a run's manifest (or of a text trace's stand-in for one): its
        own records, shared (common.run_records), so a field added there is here too."""
        def given(rec: _R) -> _R | None:
            return rec if rec != type(rec)() else None  # a record the run never filled in

        return cls(arch=info.arch,
                   kernel=given(info.kernel), started=info.started,
                   tracedep_version=info.tracedep_version, timing=given(info.timing),
                   workload=given(info.workload), qemu=given(info.qemu),
                   transport=info.transport,
                   modules=[ModuleSummary(m.name, m.origin, m.src_dir, m.loaded,
                                          list(m.insmod_rc), m.loader, None, None)
                            for m in info.modules])

    @classmethod
    def from_manifest(cls, info: dict[str, Any]) -> RunSummary:
        """The summary of a run manifest (or of a text trace's stand-in for one)."""
        def rec(k: str) -> dict[str, object] | None:
            v = info.get(k)
            return v if isinstance(v, dict) else None

        kernel, timing, workload, qemu = (rec(k) for k in ("kernel", "timing", "workload",
                                                           "qemu"))
        return cls(
            arch=str_or_none(info.get("arch")),
            kernel=KernelRecord.from_manifest(kernel) if kernel is not None else None,
            started=str_or_none(info.get("started")),
            tracedep_version=str_or_none(info.get("tracedep_version")),
            timing=TimingRecord.from_manifest(timing) if timing is not None else None,
            workload=WorkloadRecord.from_manifest(workload) if workload is not None else None,
            qemu=QemuRecord.from_manifest(qemu) if qemu is not None else None,
            transport=str_or_none(info.get("transport")),
            modules=[ModuleSummary.from_manifest(m) for m in info.get("modules", [])
                     if isinstance(m, dict) and "name" in m])
