"""The trace's health: ``health`` of ``analysis.json``, what the reports say first.

Every field is one the analysis writes (analysis.pipeline).  The JSON keeps the
order the reports list it in ("Trace health, as recorded"); a field that only
some runs know (``unseen``) is left out while unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracedep.common.jsonvalue import Fields, JSONObject, str_or_none

# vm.qemu.END_POWEROFF, as the manifest records a guest that powered off: the one
# clean ending (vm is not imported here for a constant: it brings QEMU's client)
CLEAN_ENDING = "poweroff"


@dataclass(frozen=True)
class Ending:
    """How the guest ended (vm.qemu): ``how`` is ``poweroff``, ``panic``, ``timeout`` …

    Both are None for a trace without a guest (ftrace text captured elsewhere)."""

    how: str | None = None
    detail: str | None = None

    @property
    def clean(self) -> bool:
        return self.how == CLEAN_ENDING

    def to_json(self) -> JSONObject:
        # the manifest's order (written with sorted keys), which the record view shows
        out: JSONObject = {}
        if self.detail is not None:
            out["detail"] = self.detail
        if self.how is not None:
            out["how"] = self.how
        return out

    @classmethod
    def from_json(cls, f: Fields) -> Ending:
        return cls(how=f.opt_text("how") if f.has("how") else None,
                   detail=f.opt_text("detail") if f.has("detail") else None)

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> Ending:
        return cls(how=str_or_none(d.get("how")), detail=str_or_none(d.get("detail")))


@dataclass(frozen=True)
class ForcedClass:
    lock_class: str
    count: int


@dataclass
class ForcedReleases:
    """Held locks the replay ended without seeing their release (analysis.missing)."""

    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # heldlocks.FORCED_REASONS
    classes: list[ForcedClass] = field(default_factory=list)  # most often forced first
    suspect_sources: list[str] = field(default_factory=list)  # why releases may be unseen

    def to_json(self) -> JSONObject:
        return {"total": self.total, "by_reason": dict(self.by_reason),
                "classes": [{"lock_class": c.lock_class, "count": c.count}
                            for c in self.classes],
                "suspect_sources": list(self.suspect_sources)}

    @classmethod
    def from_json(cls, f: Fields) -> ForcedReleases:
        return cls(total=f.integer("total"), by_reason=f.int_map("by_reason"),
                   classes=[ForcedClass(c.text("lock_class"), c.integer("count"))
                            for c in f.objs("classes")],
                   suspect_sources=f.texts("suspect_sources"))


def lost_note(lost: int) -> str:
    return (f"{lost} events were lost (ring-buffer overruns or a torn transport): "
            f"findings may be missing")


TRUNCATED_NOTE = "the trace is truncated: the guest did not finish sending it"


def stopped_note(by: str, start_s: float | None, end_s: float | None) -> str:
    """The warning for a workload the user stopped (tracer.early_stop)."""
    ran = (f", {end_s - start_s:.1f} s after it started" if start_s is not None
           and end_s is not None else "")
    return (f"the workload was stopped before its end ({by}{ran}): the trace ends there, "
            f"and what it had still to run is untested")


def ending_note(ending: Ending) -> str | None:
    """The warning for a guest that did not power off (None: it did, or no guest)."""
    if ending.how is None or ending.clean:
        return None
    return f"the guest did not power off cleanly: {ending.how} {ending.detail or ''}".strip()


@dataclass
class Health:
    """Events, what was lost, how the guest ended, and every warning of the analysis."""

    events: int = 0  # events analysed
    lost: int = 0  # events the run lost (manifest ``lost.total``)
    kprobe_missed: int = 0  # probe hits kprobes missed (a handler inside another's)
    truncated: bool = False  # the guest did not finish sending the trace
    ending: Ending = field(default_factory=Ending)
    unmatched_releases: int = 0  # releases of locks the replay did not see taken
    warnings: list[str] = field(default_factory=list)  # in the order they arose
    # what no probe of this run could see, by design; None: analysed before it was said
    unseen: list[str] | None = None
    source: str = ""  # the run directory or trace file analysed
    irq_locks_unreleased: int = 0
    forced_releases: ForcedReleases = field(default_factory=ForcedReleases)
    analysis_s: float = 0.0

    def add_warning(self, warning: str) -> None:
        """Add a warning, once."""
        if warning not in self.warnings:
            self.warnings.append(warning)

    def problem_notes(self) -> set[str]:
        """The warnings that restate ``lost``, ``truncated`` and ``ending``: a report
        that says those first need not repeat them."""
        notes = {lost_note(self.lost)} if self.lost else set()
        if self.truncated:
            notes.add(TRUNCATED_NOTE)
        ended = ending_note(self.ending)
        return notes | ({ended} if ended else set())

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "events": self.events, "lost": self.lost, "kprobe_missed": self.kprobe_missed,
            "truncated": self.truncated, "ending": self.ending.to_json(),
            "unmatched_releases": self.unmatched_releases, "warnings": list(self.warnings)}
        if self.unseen is not None:
            out["unseen"] = list(self.unseen)
        out.update({"source": self.source, "irq_locks_unreleased": self.irq_locks_unreleased,
                    "forced_releases": self.forced_releases.to_json(),
                    "analysis_s": self.analysis_s})
        return out

    @classmethod
    def from_json(cls, f: Fields) -> Health:
        return cls(
            events=f.integer("events"), lost=f.integer("lost"),
            kprobe_missed=f.integer("kprobe_missed"), truncated=f.boolean("truncated"),
            ending=Ending.from_json(f.obj("ending")),
            unmatched_releases=f.integer("unmatched_releases"), warnings=f.texts("warnings"),
            unseen=f.texts("unseen") if f.has("unseen") else None, source=f.text("source"),
            irq_locks_unreleased=f.integer("irq_locks_unreleased"),
            forced_releases=ForcedReleases.from_json(f.obj("forced_releases")),
            analysis_s=f.number("analysis_s"))
