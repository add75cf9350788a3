"""Version 1 of ``analysis.json``/``findings.json``, turned into version 2.

Version 1 (tracedep up to commit 2095d7a) wrote ``health`` and ``run`` as open
records, and said a witness's context and role only in words: ``"preempt=1
irqs-off softirq"``, ``"B acquired while holding A"``.  Those words are read
here, once, into version 2's fields: nothing else in tracedep parses a context
or reads a role's words.  Version 1 wrote them in exactly these forms
(analysis.rules of that version); a role in other words is kept for display
with the kind ``other``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from tracedep.analysis.findings import WitnessKind
from tracedep.analysis.health import Ending, ForcedClass, ForcedReleases, Health
from tracedep.analysis.run_summary import RunSummary
from tracedep.common.jsonvalue import (
    JSON,
    JSONObject,
    dict_or_empty,
    float_or_none,
    int_or_none,
    list_or_empty,
)

VERSION = "2.0"  # what upgrade() writes: serialize.ANALYSIS_VERSION

_CONTEXT_FLAGS = {"irqs-off": "irqs_off", "bh-off": "bh_off", "hardirq": "in_hardirq",
                  "softirq": "in_softirq"}
_FRAME_DEFAULTS: JSONObject = {"offset": 0, "size": 0, "module": "vmlinux", "file": None,
                               "line": None, "inlined": False, "address": 0}
_DEPENDENCY = "acquired while holding "
_SAME_LOCK = {"acquired again": WitnessKind.ACQUIRE, "acquired earlier": WitnessKind.HELD,
              "already held": WitnessKind.HELD}
_TAKEN_IN = re.compile(r"taken in (hardirq|softirq) context(?: \(\1-safe\))?")
_TAKEN_ENABLED = re.compile(r"taken with (hardirq|softirq)s enabled(?: \(\1-unsafe\))?")


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A whole version 1 analysis (``analysis.json`` with ``findings.json``'s list as
    ``findings``) as version 2.  Raises ``ValueError``/``TypeError`` on what version
    1 did not write."""
    return {
        "analysis_version": VERSION,
        "findings": [_finding(f) for f in d.get("findings", [])],
        "classes": list(d.get("classes", [])),
        "edges": [_edge(e) for e in d.get("edges", [])],
        "health": health(dict_or_empty(d.get("health"))).to_json(),
        "run": run(dict_or_empty(d.get("run"))).to_json(),
    }


def context(text: str | None) -> JSONObject | None:
    """``"preempt=1 irqs-off softirq"`` as a version 2 context record."""
    if not text:
        return None
    out: JSONObject = {"preempt_depth": 0, "irqs_off": False, "bh_off": False,
                       "in_hardirq": False, "in_softirq": False}
    for word in text.split():
        name, eq, depth = word.partition("=")
        if name == "preempt" and eq:
            out["preempt_depth"] = int(depth)
        elif word in _CONTEXT_FLAGS:
            out[_CONTEXT_FLAGS[word]] = True
        else:
            raise ValueError(f"context {text!r}: version 1 did not write {word!r}")
    return out


def role(text: str, lock: str | None) -> tuple[WitnessKind, str | None]:
    """A version 1 role's kind, and for a dependency the lock held meanwhile."""
    if text == "sleep":
        return WitnessKind.SLEEP, None
    if text == "acquire":
        return WitnessKind.ACQUIRE, None
    if text == "held" or (lock and text == f"held {lock}"):
        return WitnessKind.HELD, None
    if not lock or not text.startswith(lock + " "):
        return WitnessKind.OTHER, None
    rest = text[len(lock) + 1:]
    if rest.startswith(_DEPENDENCY):
        return WitnessKind.ACQUIRE, rest[len(_DEPENDENCY):]
    if rest in _SAME_LOCK:
        return _SAME_LOCK[rest], None
    if m := _TAKEN_IN.fullmatch(rest):
        return WitnessKind.taken_in(m.group(1)), None
    if m := _TAKEN_ENABLED.fullmatch(rest):
        return WitnessKind.taken_enabled(m.group(1)), None
    return WitnessKind.OTHER, None


def _site(s: dict[str, Any]) -> JSONObject:
    kind, holding = role(str(s["role"]), s.get("lock"))
    return {**s, "kind": kind.value, "holding": holding, "context": context(s.get("context")),
            "frames": [{**_FRAME_DEFAULTS, **f} for f in s.get("frames", [])]}


def _finding(f: dict[str, Any]) -> JSONObject:
    return {"signature_parts": [], "details": {}, **f,
            "sites": [_site(s) for s in f.get("sites", [])]}


def _edge(e: dict[str, Any]) -> JSONObject:
    held = e.get("held_witness")
    return {"read_only": False, "trylock": False, **e, "witness": _site(e["witness"]),
            "held_witness": _site(held) if held is not None else None}


def _int(v: object) -> int:
    return int_or_none(v) or 0


def _strings(v: object) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else []


def health(h: dict[str, object]) -> Health:
    """Version 1's ``health``: the record version 1's analysis wrote, each field
    defaulted where an older one did not write it (``unseen`` stays unknown)."""
    fr = dict_or_empty(h.get("forced_releases"))
    classes = [c for c in list_or_empty(fr.get("classes")) if isinstance(c, dict)]
    return Health(
        events=_int(h.get("events")), lost=_int(h.get("lost")),
        kprobe_missed=_int(h.get("kprobe_missed")), truncated=bool(h.get("truncated")),
        ending=Ending.from_manifest(dict_or_empty(h.get("ending"))),
        unmatched_releases=_int(h.get("unmatched_releases")),
        warnings=_strings(h.get("warnings")),
        unseen=_strings(h.get("unseen")) if "unseen" in h else None,
        source=str(h.get("source") or ""), irq_locks_unreleased=_int(h.get("irq_locks_unreleased")),
        forced_releases=ForcedReleases(
            total=_int(fr.get("total")),
            by_reason={str(k): _int(v) for k, v in dict_or_empty(fr.get("by_reason")).items()},
            classes=[ForcedClass(str(c.get("lock_class")), _int(c.get("count")))
                     for c in classes],
            suspect_sources=_strings(fr.get("suspect_sources"))),
        analysis_s=float_or_none(h.get("analysis_s")) or 0.0)


def run(r: dict[str, Any]) -> RunSummary:
    """Version 1's ``run``: the manifest's records as the analysis copied them, and
    each module's coverage."""
    out = RunSummary.from_manifest(r)
    cov: dict[str, JSON] = {str(m["name"]): m for m in r.get("modules") or []
                            if isinstance(m, dict) and "name" in m}
    out.modules = [replace(m, lock_classes=int_or_none(_get(cov.get(m.name), "lock_classes")),
                           lock_events=int_or_none(_get(cov.get(m.name), "lock_events")))
                   for m in out.modules]
    return out


def _get(d: JSON, key: str) -> JSON:
    return d.get(key) if isinstance(d, dict) else None
