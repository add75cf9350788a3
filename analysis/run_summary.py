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

from dataclasses import asdict, dataclass, field
from typing import Any

from tracedep.common.jsonvalue import (
    JSON,
    Fields,
    JSONObject,
    bool_or_none,
    dict_or_empty,
    float_or_none,
    int_or_none,
    json_value,
    list_or_empty,
    str_or_none,
)
from tracedep.common.kernel_packages import KernelPackages


def _sorted(v: JSON) -> JSON:
    if isinstance(v, dict):
        return {k: _sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


def _object(v: object) -> JSONObject:
    data = json_value(v, "qemu.events.data") if isinstance(v, dict) else {}
    return data if isinstance(data, dict) else {}


def _packages_json(p: KernelPackages) -> JSON:
    return _sorted(json_value(asdict(p) | {"notes": list(p.notes)}, "kernel.packages"))


def _packages(v: object) -> KernelPackages | None:
    if not isinstance(v, dict):
        return None
    try:
        return KernelPackages.from_json(v)
    except (KeyError, TypeError, ValueError):
        return None  # not the record vm.debian_kernels writes: not known


@dataclass(frozen=True)
class Kernel:
    """The kernel booted (manifest ``kernel``, tracer.session)."""

    abi: str | None = None
    build_dir: str | None = None
    flavour: str | None = None
    image: str | None = None
    package_version: str | None = None
    packages: KernelPackages | None = None  # the Debian packages; None: a user's kernel
    release: str | None = None
    vmlinux: str | None = None
    source_tree: str | None = None  # only where the run fetched the kernel's source

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "abi": self.abi, "build_dir": self.build_dir, "flavour": self.flavour,
            "image": self.image, "package_version": self.package_version,
            "packages": _packages_json(self.packages) if self.packages else None,
            "release": self.release}
        if self.source_tree is not None:
            out["source_tree"] = self.source_tree
        out["vmlinux"] = self.vmlinux
        return out

    @classmethod
    def from_json(cls, f: Fields) -> Kernel:
        pk = f.opt_obj("packages")
        return cls(abi=f.opt_text("abi"), build_dir=f.opt_text("build_dir"),
                   flavour=f.opt_text("flavour"), image=f.opt_text("image"),
                   package_version=f.opt_text("package_version"),
                   packages=KernelPackages.from_json(pk.raw()) if pk else None,
                   release=f.opt_text("release"), vmlinux=f.opt_text("vmlinux"),
                   source_tree=f.opt_text("source_tree") if f.has("source_tree") else None)

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> Kernel:
        def s(k: str) -> str | None:
            return str_or_none(d.get(k))

        return cls(abi=s("abi"), build_dir=s("build_dir"), flavour=s("flavour"),
                   image=s("image"), package_version=s("package_version"),
                   packages=_packages(d.get("packages")), release=s("release"),
                   vmlinux=s("vmlinux"), source_tree=s("source_tree"))


@dataclass(frozen=True)
class Timing:
    """The boot's timing (tracer.session ``_boot``)."""

    boot_to_first_event_s: float | None = None
    bytes: dict[str, int] = field(default_factory=dict)  # received per virtio-serial port
    wall_s: float | None = None

    def to_json(self) -> JSONObject:
        return {"boot_to_first_event_s": self.boot_to_first_event_s,
                "bytes": dict(self.bytes), "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, f: Fields) -> Timing:
        return cls(f.opt_number("boot_to_first_event_s"), f.int_map("bytes"),
                   f.opt_number("wall_s"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> Timing:
        sent = dict_or_empty(d.get("bytes"))
        return cls(float_or_none(d.get("boot_to_first_event_s")),
                   {k: n for k, v in sent.items() if (n := int_or_none(v)) is not None},
                   float_or_none(d.get("wall_s")))


@dataclass(frozen=True)
class Workload:
    """The guest's workload: which script, its exit code, when it ran (guest uptime)."""

    end_uptime_s: float | None = None
    rc: int | None = None
    script: str | None = None  # "default", or the --workload path
    start_uptime_s: float | None = None

    def to_json(self) -> JSONObject:
        return {"end_uptime_s": self.end_uptime_s, "rc": self.rc, "script": self.script,
                "start_uptime_s": self.start_uptime_s}

    @classmethod
    def from_json(cls, f: Fields) -> Workload:
        return cls(f.opt_number("end_uptime_s"), f.opt_integer("rc"), f.opt_text("script"),
                   f.opt_number("start_uptime_s"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> Workload:
        return cls(float_or_none(d.get("end_uptime_s")), int_or_none(d.get("rc")),
                   str_or_none(d.get("script")), float_or_none(d.get("start_uptime_s")))


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event of the boot, ``t`` seconds after QEMU started."""

    data: JSONObject  # as QEMU sent it
    event: str
    t: float

    def to_json(self) -> JSONObject:
        return {"data": _sorted(self.data), "event": self.event, "t": self.t}

    @classmethod
    def from_json(cls, f: Fields) -> QmpEvent:
        data = f.value("data")
        if not isinstance(data, dict):
            raise TypeError(f"{f.where}.data: expected an object")
        return cls(data, f.text("event"), f.number("t"))


@dataclass(frozen=True)
class Qemu:
    """How QEMU ran the guest (tracer.session)."""

    accel: str | None = None
    append: str | None = None  # the kernel command line
    command: str | None = None  # the whole QEMU command line
    events: list[QmpEvent] = field(default_factory=list)
    mem_mb: int | None = None
    smp: int | None = None

    def to_json(self) -> JSONObject:
        return {"accel": self.accel, "append": self.append, "command": self.command,
                "events": [e.to_json() for e in self.events], "mem_mb": self.mem_mb,
                "smp": self.smp}

    @classmethod
    def from_json(cls, f: Fields) -> Qemu:
        return cls(f.opt_text("accel"), f.opt_text("append"), f.opt_text("command"),
                   [QmpEvent.from_json(e) for e in f.objs("events")], f.opt_integer("mem_mb"),
                   f.opt_integer("smp"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> Qemu:
        events = []
        for e in list_or_empty(d.get("events")):
            name = str_or_none(e.get("event")) if isinstance(e, dict) else None
            if isinstance(e, dict) and name is not None:
                events.append(QmpEvent(_object(e.get("data")), name,
                                       float_or_none(e.get("t")) or 0.0))
        return cls(str_or_none(d.get("accel")), str_or_none(d.get("append")),
                   str_or_none(d.get("command")), events, int_or_none(d.get("mem_mb")),
                   int_or_none(d.get("smp")))


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
    kernel: Kernel | None = None
    started: str | None = None  # local time the run started, ISO 8601
    tracedep_version: str | None = None
    timing: Timing | None = None
    workload: Workload | None = None
    qemu: Qemu | None = None
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
        return cls(arch=text("arch"), kernel=Kernel.from_json(kernel) if kernel else None,
                   started=text("started"), tracedep_version=text("tracedep_version"),
                   timing=Timing.from_json(timing) if timing else None,
                   workload=Workload.from_json(workload) if workload else None,
                   qemu=Qemu.from_json(qemu) if qemu else None, transport=text("transport"),
                   modules=[ModuleSummary.from_json(m) for m in f.objs("modules")])

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
            kernel=Kernel.from_manifest(kernel) if kernel is not None else None,
            started=str_or_none(info.get("started")),
            tracedep_version=str_or_none(info.get("tracedep_version")),
            timing=Timing.from_manifest(timing) if timing is not None else None,
            workload=Workload.from_manifest(workload) if workload is not None else None,
            qemu=Qemu.from_manifest(qemu) if qemu is not None else None,
            transport=str_or_none(info.get("transport")),
            modules=[ModuleSummary.from_manifest(m) for m in info.get("modules", [])
                     if isinstance(m, dict) and "name" in m])
