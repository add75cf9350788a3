"""``manifest.json``: everything about a run that is not an event, as one typed record.

Written when the run starts (``state: running``) and rewritten atomically as it
progresses, so a run killed at any point leaves a readable manifest that says how far
it got.  :class:`RunManifest` names every field, its type and who writes it; the
tracer fills one in, and ``read`` gives one back to the analysis.  On disk it is JSON
with ``manifest_version``: a manifest of an older version is brought up to this one
by :func:`upgrade` before it is read, and one of a newer major version is refused.
Fields of the guest's own words are checked (:data:`SCHEMA`) before any is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeAlias

from tracedep.common.files import atomic_write
from tracedep.common.run_records import KernelRecord, QemuRecord, TimingRecord, WorkloadRecord
from tracedep.errors import InputError

MANIFEST_VERSION = "2.0"

# A JSON value: the descriptive sections (QEMU's command line, timings …) that only
# reach a report's "run" section, typed as what they are.
Json: TypeAlias = object
JsonObject: TypeAlias = dict[str, object]


@dataclass
class Load:
    """One load of a module, as the guest reported it (``/sys/module/X/sections``)."""

    base: int = 0
    size: int = 0
    sections: dict[str, int] = field(default_factory=dict)


@dataclass
class ModuleRecord:
    """A module under test (writer: tracer.session, before the boot and after it)."""

    name: str
    origin: str = "module-src"  # "module-src", "kernel" (its package's), "other"
    ko: str | None = None
    src_dir: str | None = None  # the user's source folder (module-src only)
    build_dir: str | None = None  # where it was built (a cache copy of src_dir)
    kernel_path: str | None = None  # under lib/modules/<release>/ (kernel only)
    loader: str | None = None
    loaded: bool = False
    loads: list[Load] = field(default_factory=list)  # every load, in order
    insmod_rc: list[int] = field(default_factory=list)  # finit_module's errno per load


@dataclass
class Kaslr:
    symbol: str | None = None
    runtime: int | None = None  # the symbol's runtime address in this boot


@dataclass
class Ending:
    how: str | None = None  # poweroff, panic, timeout, reset, died
    detail: str | None = None


@dataclass
class Lost:
    """What is missing from the trace, and why (writers: tracer.session, then the
    analysis's own decode, analysis.trace.completeness)."""

    total: int = 0  # events the ring buffer, the transport or the decoder lost
    truncated: bool = False  # the guest did not say the trace was complete
    kprobe_missed: int = 0  # probe hits kprobes itself missed (nested handlers)
    kprobe_missed_by_probe: dict[str, int] = field(default_factory=dict)
    ftrace_overrun: int = 0
    ftrace_commit_overrun: int = 0
    ftrace_dropped: int = 0
    ring_buffer_missed: int = 0
    per_cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # the guest's stats
    guest_stats_missing: bool = False
    read_events_guest: int | None = None  # records the guest's ring buffers handed out
    decoded_events: int | None = None  # events the run's own decode found
    decoded_per_cpu: dict[str, int] = field(default_factory=dict)
    decoder_torn_pages: int = 0
    decoder_backwards_pages: int = 0
    decoder_rejected_records: int = 0
    decoder_rejected: dict[str, int] = field(default_factory=dict)  # by reason
    decoder_damaged_pages: int = 0
    decoder_missing_pages: int = 0
    # changes of task on a CPU with no context switch traced (tracer.unseen_switches),
    # and the first: {"cpu", "ts_ns", "from_pid", "to_pid"}
    decoder_unseen_switches: int = 0
    decoder_unseen_switch: dict[str, int] = field(default_factory=dict)
    unreadable_events: int = 0
    undelivered_events: int = 0
    foreign_events: int = 0
    # ftrace text traces (analysis.ftrace_text): the "LOST n EVENTS" lines, events the
    # buffer says it overwrote, lines cut short
    lost_lines: list[JsonObject] = field(default_factory=list)
    reported: int = 0
    unknown_count_lines: int = 0
    overwritten: int = 0
    truncated_lines: int = 0


@dataclass
class Probes:
    """The kprobes of the run (writer: tracer.session)."""

    defined: int = 0
    definitions: list[str] = field(default_factory=list)
    notrace: list[str] = field(default_factory=list)  # functions kprobe events refuse
    failed: list[str] = field(default_factory=list)  # definitions the guest refused
    failed_reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class InlineLocks:
    """Probes on inlined locks (writer: tracer.extra_probes)."""

    sites: int = 0
    skipped: list[JsonObject] = field(default_factory=list)
    calls_out_of_line: int = 0


@dataclass
class RunManifest:
    """Every field of ``manifest.json``; the comment says which module writes it.

    ``extra`` keeps the fields this version does not know (a newer minor version's),
    so reading and writing a manifest loses nothing.
    """

    state: str = "preparing"  # session: preparing, running, complete, incomplete, failed
    tracedep_version: str | None = None  # session
    started: str | None = None  # session
    arch: str = "x86_64"  # session
    transport: str | None = None  # session
    timeout_s: float | None = None  # session
    error: str | None = None  # session, when the run failed
    kernel: KernelRecord = field(default_factory=KernelRecord)  # session
    bundled_drivers: bool = False  # session
    modules: list[ModuleRecord] = field(default_factory=list)  # session
    other_modules: dict[str, ModuleRecord] = field(default_factory=dict)  # session
    kernel_modules: JsonObject = field(default_factory=dict)  # session
    load_order: list[JsonObject] = field(default_factory=list)  # session
    discovery_dir: str | None = None  # session
    lock_classes: JsonObject = field(default_factory=dict)  # tracer.lock_init
    module_sections: JsonObject = field(default_factory=dict)  # tracer.module_sections
    workload: WorkloadRecord = field(default_factory=WorkloadRecord)  # session, run_record
    probes: Probes = field(default_factory=Probes)  # session
    inline_sites: dict[str, JsonObject] = field(default_factory=dict)  # extra_probes
    # extra_probes; None: no probes on inlined locks were placed (no calibrated point)
    inline_locks: InlineLocks | None = None
    calibration: JsonObject = field(default_factory=dict)  # extra_probes (calibration.summary)
    calibration_mid_offset: int | None = None  # extra_probes
    qemu: QemuRecord = field(default_factory=QemuRecord)  # session
    failed_attempts: list[JsonObject] = field(default_factory=list)  # session
    timing: TimingRecord = field(default_factory=TimingRecord)  # session
    ending: Ending = field(default_factory=Ending)  # session
    guest: JsonObject = field(default_factory=dict)  # session: what the guest said of itself
    untraced_pids: list[int] = field(default_factory=list)  # session: the trace pumps
    kaslr: Kaslr | None = None  # session
    events_enabled: JsonObject = field(default_factory=dict)  # session
    trace_complete: bool = False  # session
    # session: ``trace --untraced``: the guest armed nothing (no probe, event or pump;
    # ``probes`` lists what its initramfs held, unused) and there is no trace
    untraced: bool = False
    lost: Lost = field(default_factory=Lost)  # session, analysis.trace
    call_insn_size: int = 5  # session (common.machines)
    # kprobe handlers of this machine run with IRQs masked (arm64's BRK): a record's
    # irqs-off flag says nothing of the probed code (common.machines)
    machine_kprobe_irqs_masked: bool = False  # extra_probes
    # after calibration, some kprobe rows' IRQ state is still unknown: the analysis
    # must not judge IRQ state from them (extra_probes.record_calibration)
    kprobe_irqs_unknown: bool = False  # extra_probes
    event_counts: dict[str, int] = field(default_factory=dict)  # session
    lockdep_events: dict[str, int] = field(default_factory=dict)  # session
    decode_error: str | None = None  # session
    source: JsonObject | None = None  # a foreign text trace: where it came from, its format
    # tracer.retention (cli, after the run's reports): what --raw did to the raw pages
    # (mode, disk bytes before/after, pages kept, seconds); None: all kept as sent
    retention: JsonObject | None = None
    extra: JsonObject = field(default_factory=dict)

    @property
    def module_records(self) -> list[ModuleRecord]:
        """The modules under test and the other loaded modules, one list."""
        return self.modules + list(self.other_modules.values())

    def to_json(self) -> JsonObject:
        d: dict[str, Any] = {"manifest_version": MANIFEST_VERSION}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if isinstance(v, _SHARED):
                # a record nobody filled in is left out, as 1.x left it out
                d[f.name] = v.to_json() if v != type(v)() else None
                continue
            d[f.name] = _plain(v) if hasattr(v, "__dataclass_fields__") else (
                {k: asdict(m) for k, m in v.items()} if f.name == "other_modules" else
                [asdict(m) for m in v] if f.name == "modules" else v)
        d.update({k: v for k, v in self.extra.items() if k not in d})
        # a field not known yet (None, or a record with nothing in it) is left out, as
        # 1.x left it out: readers default it
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunManifest:
        """A manifest of this version (``read`` checks and upgrades before this)."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known and v is not None}
        kw["extra"] = {k: v for k, v in d.items() if k not in known
                       and k != "manifest_version"}
        kw["kernel"] = KernelRecord.from_manifest(_obj(d.get("kernel")))
        kw["timing"] = TimingRecord.from_manifest(_obj(d.get("timing")))
        kw["workload"] = WorkloadRecord.from_manifest(_obj(d.get("workload")))
        kw["qemu"] = QemuRecord.from_manifest(_obj(d.get("qemu")))
        kw["kaslr"] = _record(Kaslr, d["kaslr"]) if isinstance(d.get("kaslr"), dict) else None
        kw["ending"] = _record(Ending, d.get("ending"))
        kw["lost"] = _record(Lost, d.get("lost"))
        kw["probes"] = _record(Probes, d.get("probes"))
        kw["inline_locks"] = (_record(InlineLocks, d["inline_locks"])
                              if isinstance(d.get("inline_locks"), dict) else None)
        kw["modules"] = [_module(m) for m in d.get("modules") or []]
        kw["other_modules"] = {n: _module({"name": n, "origin": "other", **m})
                               for n, m in (d.get("other_modules") or {}).items()}
        return cls(**kw)


_SHARED = (KernelRecord, TimingRecord, WorkloadRecord, QemuRecord)


def _obj(v: object) -> dict[str, object]:
    return v if isinstance(v, dict) else {}


def _plain(record: Any) -> dict[str, Any]:
    """A record's JSON, its unknown (None) fields left out as 1.x left them out."""
    return {k: v for k, v in asdict(record).items() if v is not None}


def _record(cls: Any, d: Any) -> Any:
    """``cls`` from the fields of ``d`` it knows (missing ones default; nulls too)."""
    d = d if isinstance(d, dict) else {}
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known and v is not None})


def _module(d: dict[str, Any]) -> ModuleRecord:
    m: ModuleRecord = _record(ModuleRecord, d)
    m.loads = [_record(Load, ld) for ld in d.get("loads") or []]
    return m


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A manifest of an earlier version, as this version writes it.

    1.x stored one fact under two names whose meaning changed mid-run:
    ``machine_kprobe_reports_irqs_off`` (the machine's) and ``kprobe_reports_irqs_off``
    (the machine's until calibration, then "some rows' IRQ state is unknown").  2.0
    names each once.  A 1.x manifest without calibration had only the second, which
    then still meant the machine's.
    """
    major = str(d.get("manifest_version", "1.0")).split(".")[0]
    if major == "1":
        d = dict(d)
        machine = d.pop("machine_kprobe_reports_irqs_off", None)
        unknown = d.pop("kprobe_reports_irqs_off", None)
        d["machine_kprobe_irqs_masked"] = bool(unknown if machine is None else machine)
        d["kprobe_irqs_unknown"] = bool(unknown)
        d["manifest_version"] = MANIFEST_VERSION
    return d


def write(run_dir: Path, m: RunManifest) -> None:
    atomic_write(run_dir / "manifest.json",
                 json.dumps(m.to_json(), indent=2, sort_keys=True, default=str) + "\n",
                 fsync=False)


def read_json(run_dir: Path) -> dict[str, Any]:
    """The manifest's JSON, checked and upgraded to this version."""
    path = run_dir / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: not a tracedep run directory (no manifest.json)") from None
    except ValueError as e:
        raise InputError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a manifest (a JSON object is expected)")
    major = str(data.get("manifest_version", "0")).split(".")[0]
    if major not in ("1", MANIFEST_VERSION.split(".")[0]):
        raise InputError(f"{path}: manifest version {data.get('manifest_version')} "
                         f"is not supported (this tracedep reads {MANIFEST_VERSION})")
    data = upgrade(data)
    problem = check(data)
    if problem:
        raise InputError(f"{path}: {problem}")
    return data


def read(run_dir: Path) -> RunManifest:
    return RunManifest.from_json(read_json(run_dir))


# What a manifest's fields must be, where they are present (readers default what is
# missing).  The manifest is written from what the guest said, and a user may hand any
# file to ``tracedep analyze``: a wrong type is one clear error, not a crash deep in
# the analysis.  Specs: a Python type; "int" (a JSON integer of 64 bits, not a bool);
# "num" (a finite number); ("list", spec); ("map", spec) (an object, every value spec);
# ("obj", {key: spec}) (an object, the keys named checked); ("opt", spec) (null or spec);
# ("range", (lo, hi)) (an integer in it).
_Spec = Any
_STR_LIST: _Spec = ("list", str)
_LOAD: _Spec = ("obj", {"sections": ("map", "int"), "base": "int", "size": "int"})
_MODULE: _Spec = ("obj", {
    "name": str, "ko": ("opt", str), "src_dir": ("opt", str), "build_dir": ("opt", str),
    "loads": ("list", _LOAD), "insmod_rc": ("list", "int"), "loaded": bool, "origin": str,
    "loader": ("opt", str), "kernel_path": ("opt", str),
})
_LOCK_ARG: _Spec = ("obj", {"kind": str, "fetch": str, "addend": "int", "section": str,
                            "sec_offset": "int", "symbol": str, "sym_offset": "int"})
SCHEMA: dict[str, _Spec] = {
    "manifest_version": str, "arch": str, "state": str, "started": str,
    "tracedep_version": str, "transport": str, "discovery_dir": str,
    "call_insn_size": ("range", (1, 16)), "timeout_s": "num",
    "trace_complete": bool, "untraced": bool, "kprobe_irqs_unknown": bool,
    "machine_kprobe_irqs_masked": bool, "bundled_drivers": bool,
    "kaslr": ("opt", ("obj", {"runtime": ("opt", "int"), "symbol": ("opt", str)})),
    "ending": ("obj", {"how": ("opt", str), "detail": ("opt", str)}),
    "untraced_pids": ("list", "int"),
    "modules": ("list", _MODULE),
    "other_modules": ("map", _MODULE),
    "error": ("opt", str), "decode_error": ("opt", str),
    "retention": ("opt", ("obj", {"mode": str, "disk_bytes_before": "int",
                                  "disk_bytes_after": "int", "seconds": "num"})),
    "load_order": ("list", dict), "failed_attempts": ("list", dict),
    "lost": ("obj", {"total": "int", "kprobe_missed": "int", "truncated": bool,
                     "per_cpu": ("map", ("map", "num")), "kprobe_missed_by_probe":
                     ("map", "int"), "decoded_per_cpu": ("map", "int"),
                     "decoded_events": "int", "read_events_guest": "int",
                     "decoder_torn_pages": "int", "decoder_backwards_pages": "int",
                     "decoder_rejected_records": "int", "decoder_rejected": ("map", "int"),
                     "decoder_damaged_pages": "int", "decoder_missing_pages": "int",
                     "decoder_unseen_switches": "int",
                     "decoder_unseen_switch": ("obj", {"cpu": "int", "ts_ns": "int",
                                                       "from_pid": "int", "to_pid": "int"}),
                     "unreadable_events": "int", "undelivered_events": "int",
                     "foreign_events": "int", "ftrace_overrun": "int",
                     "ftrace_commit_overrun": "int", "ftrace_dropped": "int",
                     "ring_buffer_missed": "int", "guest_stats_missing": bool}),
    "probes": ("obj", {"defined": "int", "failed": _STR_LIST, "definitions": _STR_LIST,
                       "notrace": _STR_LIST, "failed_reasons": ("map", str)}),
    "inline_sites": ("map", ("obj", {"lock": _LOCK_ARG, "module": str, "func": str,
                                     "api": str, "target": str})),
    "inline_locks": ("obj", {"skipped": ("list", dict), "sites": "int",
                             "calls_out_of_line": "int"}),
    "event_counts": ("map", "int"),
    "calibration": dict, "calibration_mid_offset": ("range", (0, 4096)),
    "kernel": ("obj", {"release": ("opt", str), "abi": ("opt", str),
                       "source_tree": ("opt", str), "package_version": ("opt", str),
                       "image": ("opt", str), "build_dir": ("opt", str),
                       "vmlinux": ("opt", str), "flavour": ("opt", str),
                       "packages": ("opt", dict)}),
    "timing": dict, "workload": dict, "lock_classes": dict, "module_sections": dict,
    "kernel_modules": dict,
    "qemu": dict, "guest": dict, "lockdep_events": ("map", "int"), "events_enabled": dict,
}


def check(data: dict[str, Any]) -> str:
    """The first field of ``data`` that is not what :data:`SCHEMA` says, in words; ''."""
    for key, spec in SCHEMA.items():
        if key in data:
            why = _check(data[key], spec, key)
            if why:
                return why
    return ""


def _check(v: Any, spec: _Spec, where: str) -> str:
    if isinstance(spec, type):
        ok = isinstance(v, spec) and not (spec is int and isinstance(v, bool))
        return "" if ok else f"{where} must be {spec.__name__}, not {type(v).__name__}"
    if spec == "int":
        ok = isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < 1 << 64
        return "" if ok else f"{where} must be a 64-bit integer, not {v!r:.40}"
    if spec == "num":
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) \
            and abs(v) < 1 << 64
        return "" if ok else f"{where} must be a finite number, not {v!r:.40}"
    kind, inner = spec
    if kind == "range":
        lo, hi = inner
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return "" if ok else f"{where} must be an integer from {lo} to {hi}, not {v!r:.40}"
    if kind == "opt":
        return "" if v is None else _check(v, inner, where)
    if kind == "list":
        if not isinstance(v, list):
            return f"{where} must be a list, not {type(v).__name__}"
        for i, x in enumerate(v):
            why = _check(x, inner, f"{where}[{i}]")
            if why:
                return why
        return ""
    if not isinstance(v, dict):
        return f"{where} must be an object, not {type(v).__name__}"
    items = v.items() if kind == "map" else ((k, v[k]) for k in inner if k in v)
    for k, x in items:
        why = _check(x, inner if kind == "map" else inner[k], f"{where}.{k}")
        if why:
            return why
    return ""
