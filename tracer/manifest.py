"""``manifest.json``: everything about a run that is not an event.

Written when the run starts (``state: running``) and rewritten atomically as
it progresses, so a run killed at any point leaves a readable manifest that
says how far it got.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tracedep.common.files import atomic_write

MANIFEST_VERSION = "1.0"


def write(run_dir: Path, data: dict[str, Any]) -> None:
    data = {"manifest_version": MANIFEST_VERSION, **data}
    atomic_write(run_dir / "manifest.json",
                 json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", fsync=False)


def read(run_dir: Path) -> dict[str, Any]:
    from tracedep.errors import InputError

    path = run_dir / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: not a tracedep run directory (no manifest.json)") from None
    except ValueError as e:
        raise InputError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a manifest (a JSON object is expected)")
    problem = check(data)
    if problem:
        raise InputError(f"{path}: {problem}")
    major = str(data.get("manifest_version", "0")).split(".")[0]
    if major != MANIFEST_VERSION.split(".")[0]:
        raise InputError(f"{path}: manifest version {data.get('manifest_version')} "
                         f"is not supported (this tracedep reads {MANIFEST_VERSION})")
    return data


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
    "loader": str, "kernel_path": str,
})
_LOCK_ARG: _Spec = ("obj", {"kind": str, "fetch": str, "addend": "int", "section": str,
                            "sec_offset": "int", "symbol": str, "sym_offset": "int"})
SCHEMA: dict[str, _Spec] = {
    "manifest_version": str, "arch": str, "state": str, "started": str,
    "tracedep_version": str, "transport": str, "discovery_dir": str,
    "call_insn_size": ("range", (1, 16)), "timeout_s": "num",
    "trace_complete": bool, "kprobe_reports_irqs_off": bool,
    "machine_kprobe_reports_irqs_off": bool, "bundled_drivers": bool,
    "kaslr": ("opt", ("obj", {"runtime": ("opt", "int"), "symbol": ("opt", str)})),
    "ending": ("obj", {"how": ("opt", str), "detail": ("opt", str)}),
    "untraced_pids": ("list", "int"),
    "modules": ("list", _MODULE),
    "other_modules": ("map", ("obj", {"loads": ("list", _LOAD), "ko": ("opt", str)})),
    "load_order": ("list", dict), "failed_attempts": ("list", dict),
    "lost": ("obj", {"total": "int", "kprobe_missed": "int", "truncated": bool,
                     "per_cpu": ("map", ("map", "num")), "kprobe_missed_by_probe":
                     ("map", "int"), "decoded_per_cpu": ("map", "int"),
                     "decoded_events": "int", "read_events_guest": "int",
                     "decoder_torn_pages": "int", "decoder_backwards_pages": "int",
                     "decoder_rejected_records": "int", "decoder_rejected": ("map", "int"),
                     "decoder_damaged_pages": "int", "decoder_missing_pages": "int",
                     "unreadable_events": "int", "undelivered_events": "int",
                     "foreign_events": "int"}),
    "probes": ("obj", {"failed": _STR_LIST, "definitions": _STR_LIST, "notrace": _STR_LIST,
                       "failed_reasons": ("map", str)}),
    "inline_sites": ("map", ("obj", {"lock": _LOCK_ARG, "module": str, "func": str,
                                     "api": str, "target": str})),
    "inline_locks": ("obj", {"skipped": ("list", dict), "sites": "int"}),
    "event_counts": ("map", "int"),
    "calibration": dict, "calibration_mid_offset": ("range", (0, 4096)),
    "kernel": ("obj", {"release": ("opt", str), "abi": ("opt", str),
                       "source_tree": ("opt", str)}),
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
