"""The records of a run that both its manifest and its analysis's run summary hold.

One class each, so a field added here is written by the tracer into ``manifest.json``
(``common.run_manifest``), carried into ``analysis.json``'s ``run`` (the analysis's
``RunSummary``) and shown by the reports, with nothing copied by hand on the way.
``from_manifest`` reads leniently (a manifest of any age); ``from_json`` strictly (the
run summary, which tracedep wrote itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tracedep.common.jsonvalue import (
    JSON,
    Fields,
    JSONObject,
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
class KernelRecord:
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
    def from_json(cls, f: Fields) -> KernelRecord:
        pk = f.opt_obj("packages")
        return cls(abi=f.opt_text("abi"), build_dir=f.opt_text("build_dir"),
                   flavour=f.opt_text("flavour"), image=f.opt_text("image"),
                   package_version=f.opt_text("package_version"),
                   packages=KernelPackages.from_json(pk.raw()) if pk else None,
                   release=f.opt_text("release"), vmlinux=f.opt_text("vmlinux"),
                   source_tree=f.opt_text("source_tree") if f.has("source_tree") else None)

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> KernelRecord:
        def s(k: str) -> str | None:
            return str_or_none(d.get(k))

        return cls(abi=s("abi"), build_dir=s("build_dir"), flavour=s("flavour"),
                   image=s("image"), package_version=s("package_version"),
                   packages=_packages(d.get("packages")), release=s("release"),
                   vmlinux=s("vmlinux"), source_tree=s("source_tree"))


@dataclass(frozen=True)
class TimingRecord:
    """The boot's timing (tracer.session ``_boot``)."""

    boot_to_first_event_s: float | None = None
    bytes: dict[str, int] = field(default_factory=dict)  # received per virtio-serial port
    wall_s: float | None = None

    def to_json(self) -> JSONObject:
        return {"boot_to_first_event_s": self.boot_to_first_event_s,
                "bytes": dict(self.bytes), "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, f: Fields) -> TimingRecord:
        return cls(f.opt_number("boot_to_first_event_s"), f.int_map("bytes"),
                   f.opt_number("wall_s"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> TimingRecord:
        sent = dict_or_empty(d.get("bytes"))
        return cls(float_or_none(d.get("boot_to_first_event_s")),
                   {k: n for k, v in sent.items() if (n := int_or_none(v)) is not None},
                   float_or_none(d.get("wall_s")))


@dataclass(frozen=True)
class WorkloadRecord:
    """The guest's workload: which script, its exit code, when it ran (guest uptime),
    and whether it was stopped before its end."""

    end_uptime_s: float | None = None
    rc: int | None = None
    script: str | None = None  # "default", or the --workload path
    start_uptime_s: float | None = None
    # the signal tracedep got (SIGINT, SIGTERM) when the guest says it stopped the
    # workload on the host's word (tracer.early_stop); None (and absent from the
    # JSON): it ran to its end
    stopped_by: str | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"end_uptime_s": self.end_uptime_s, "rc": self.rc,
                           "script": self.script, "start_uptime_s": self.start_uptime_s}
        if self.stopped_by is not None:  # only a workload that was stopped says so
            out["stopped_by"] = self.stopped_by
        return out

    @classmethod
    def from_json(cls, f: Fields) -> WorkloadRecord:
        return cls(f.opt_number("end_uptime_s"), f.opt_integer("rc"), f.opt_text("script"),
                   f.opt_number("start_uptime_s"),
                   # absent from analyses written before it was recorded
                   f.opt_text("stopped_by") if f.has("stopped_by") else None)

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> WorkloadRecord:
        return cls(float_or_none(d.get("end_uptime_s")), int_or_none(d.get("rc")),
                   str_or_none(d.get("script")), float_or_none(d.get("start_uptime_s")),
                   str_or_none(d.get("stopped_by")))


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
class QemuRecord:
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
    def from_json(cls, f: Fields) -> QemuRecord:
        return cls(f.opt_text("accel"), f.opt_text("append"), f.opt_text("command"),
                   [QmpEvent.from_json(e) for e in f.objs("events")], f.opt_integer("mem_mb"),
                   f.opt_integer("smp"))

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> QemuRecord:
        events = []
        for e in list_or_empty(d.get("events")):
            name = str_or_none(e.get("event")) if isinstance(e, dict) else None
            if isinstance(e, dict) and name is not None:
                events.append(QmpEvent(_object(e.get("data")), name,
                                       float_or_none(e.get("t")) or 0.0))
        return cls(str_or_none(d.get("accel")), str_or_none(d.get("append")),
                   str_or_none(d.get("command")), events, int_or_none(d.get("mem_mb")),
                   int_or_none(d.get("smp")))
