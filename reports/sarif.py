"""SARIF 2.1.0: findings as the results code-review and code-scanning UIs annotate
source lines with (``github/codeql-action/upload-sarif``; checked against the
official schema in the tests).

One SARIF run per tracedep run (``automationDetails.id`` ``tracedep/<run>/``, so
a night's cells are told apart), one result per finding:

* ``locations``: the driver's witness line: the innermost frame of the finding's
  driver whose file lies in that driver's source (else in the driver's module, else
  any frame with a file and line);
* ``relatedLocations``: the other witnesses (the other side of a lock-order cycle,
  the lock held at a sleep), each at its own driver line, with its role;
* ``codeFlows``: each witness's stack as a thread flow, outermost call first;
* ``ruleId`` the finding's kind (``tool.driver.rules`` describes each kind);
* ``partialFingerprints`` ``tracedepSignature/v1``: the finding's signature, stable
  across runs, so a UI matches the same bug from one night to the next.

Paths: a file in a module's source lies under that source's root (its git work
tree's top where there is one, else the module's folder), written relative to it
with ``uriBaseId`` ``SRCROOT`` (``SRCROOT2`` … for further roots), as code-scanning
UIs expect repository-relative paths; ``originalUriBaseIds`` says where each root
was.  A relative path from the kernel's DWARF (``mm/slub.c``) is relative to the
kernel's source (``KERNELSRC``); any other absolute path is a ``file://`` URI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import quote

from tracedep.analysis.findings import FINDING_KINDS, Finding, Frame, Site
from tracedep.common.jsonvalue import JSON, JSONObject
from tracedep.common.source_tree import git_tree
from tracedep.reports.export_runs import ExportRun

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
FINGERPRINT = "tracedepSignature/v1"
KERNEL_BASE = "KERNELSRC"

# kind -> (name, short description, full description, level)
RULES: dict[str, tuple[str, str, str, str]] = {
    "sleep-in-atomic": (
        "SleepInAtomicContext", "A function that may sleep is called in atomic context",
        "A call that may sleep (a sleeping lock, a GFP_KERNEL allocation, might_sleep()) "
        "was made while a spinlock was held, interrupts or preemption were disabled, or in "
        "interrupt context: what CONFIG_DEBUG_ATOMIC_SLEEP reports as \"BUG: sleeping "
        "function called from invalid context\".", "error"),
    "lock-order-inversion": (
        "LockOrderInversion", "Locks are taken in orders that form a cycle (possible deadlock)",
        "Two or more lock classes were acquired in orders that form a cycle (A then B "
        "here, B then A elsewhere), possibly through a wait for a work item, timer, "
        "completion or kthread: lockdep's \"possible circular locking dependency\".",
        "error"),
    "irq-lock-inversion": (
        "IrqLockInversion", "A lock taken in interrupt context is also taken with that "
                            "interrupt enabled",
        "A lock class is taken in hard- or softirq context and elsewhere with that "
        "interrupt enabled (directly or through a dependency): lockdep's \"inconsistent "
        "lock state\" and \"possible irq lock inversion dependency\".", "error"),
    "recursive-locking": (
        "RecursiveLocking", "A lock is taken again while already held",
        "A task acquired a lock class it already held: lockdep's \"possible recursive "
        "locking detected\".", "error"),
    "same-class-nesting": (
        "SameClassNesting", "Two locks of one class are nested without a *_nested() "
                            "annotation",
        "Two instances of one lock class were held nested without a subclass annotation "
        "(spin_lock_nested() and the like).", "warning"),
    "invalid-wait-context": (
        "InvalidWaitContext", "A sleeping-on-PREEMPT_RT lock or an allocation under a "
                              "raw_spinlock_t",
        "A spinlock_t or rwlock_t taken, or memory allocated, while a raw_spinlock_t is "
        "held: on PREEMPT_RT kernels those sleep (lockdep's \"Invalid wait context\").",
        "warning"),
}


def _rules() -> list[JSON]:
    out: list[JSON] = []
    for kind in FINDING_KINDS:
        name, short, full, level = RULES[kind]
        out.append({"id": kind, "name": name, "shortDescription": {"text": short},
                    "fullDescription": {"text": full}, "help": {"text": full},
                    "defaultConfiguration": {"level": level},
                    "properties": {"tags": ["concurrency", "linux-kernel"],
                                   "problem.severity": level}})
    return out


class _Roots:
    """The source roots of one run's modules, and paths made relative to them."""

    def __init__(self, run: ExportRun) -> None:
        self.by_module: dict[str, PurePosixPath] = {}
        roots: set[PurePosixPath] = set()
        for m in run.modules:
            if not m.src_dir:
                continue
            tree = git_tree(m.src_dir)
            root = PurePosixPath(str(tree.root)) if tree is not None else PurePosixPath(
                m.src_dir)
            self.by_module[m.name] = root
            roots.add(root)
        self.ids = {r: "SRCROOT" if i == 0 else f"SRCROOT{i + 1}"
                    for i, r in enumerate(sorted(roots, key=str))}

    def bases(self) -> JSONObject:
        out: JSONObject = {r_id: {"uri": PurePosixPath(root).as_uri().rstrip("/") + "/",
                                  "description": {"text": "a tested module's source"}}
                           for root, r_id in self.ids.items()}
        out[KERNEL_BASE] = {"description": {"text": "the kernel's source tree (paths from its "
                                                    "debug information)"}}
        return out

    def artifact(self, path: str) -> JSONObject:
        p = PurePosixPath(path)
        if not p.is_absolute():
            return {"uri": quote(str(p)), "uriBaseId": KERNEL_BASE}
        for root, r_id in self.ids.items():
            if p.is_relative_to(root):
                return {"uri": quote(str(p.relative_to(root))), "uriBaseId": r_id}
        return {"uri": p.as_uri()}

    def in_driver(self, driver: str, fr: Frame) -> bool:
        root = self.by_module.get(driver)
        return (root is not None and fr.file is not None
                and PurePosixPath(fr.file).is_relative_to(root))


def _witness_frame(f: Finding, site: Site, roots: _Roots) -> Frame | None:
    frames = [fr for fr in site.frames if fr.file and fr.line]
    for test in (lambda fr: fr.module == f.driver and roots.in_driver(f.driver, fr),
                 lambda fr: fr.module == f.driver, lambda fr: True):
        hit = next((fr for fr in frames if test(fr)), None)
        if hit is not None:
            return hit
    return None


def _location(fr: Frame, roots: _Roots, message: str | None = None) -> JSONObject:
    loc: JSONObject = {"logicalLocations": [{"name": fr.function, "kind": "function"}]}
    if fr.file and fr.line:
        loc["physicalLocation"] = {"artifactLocation": roots.artifact(fr.file),
                                   "region": {"startLine": max(fr.line, 1)}}
    if message is not None:
        loc["message"] = {"text": message}
    return loc


def _who(site: Site) -> str:
    who = " ".join(x for x in (site.comm, f"pid {site.pid}" if site.pid is not None else None)
                   if x)
    return f"{site.role} ({who})" if who else site.role


def _result(f: Finding, roots: _Roots) -> JSONObject:
    r: JSONObject = {"ruleId": f.kind, "ruleIndex": FINDING_KINDS.index(f.kind),
                     "level": RULES[f.kind][3], "message": {"text": f.message},
                     "partialFingerprints": {FINGERPRINT: f.signature},
                     "occurrenceCount": max(f.count, 1),
                     "properties": {"driver": f.driver, "signature": f.signature,
                                    "locks": list[JSON](f.locks), "count": f.count}}
    witnesses = [(s, _witness_frame(f, s, roots)) for s in f.sites]
    placed = [(s, fr) for s, fr in witnesses if fr is not None]
    if placed:
        site, fr = placed[0]
        r["locations"] = [_location(fr, roots, site.role)]
        related: list[JSON] = []
        for i, (s, other) in enumerate(placed[1:], start=1):
            loc = _location(other, roots, _who(s))
            loc["id"] = i
            related.append(loc)
        if related:
            r["relatedLocations"] = related
    flows: list[JSON] = []
    for s in f.sites:
        if not s.frames:
            continue
        steps: list[JSON] = [{"location": _location(fr, roots, fr.short()),
                              "nestingLevel": depth}
                             for depth, fr in enumerate(reversed(s.frames))]
        flows.append({"message": {"text": _who(s)}, "locations": steps})
    if flows:
        r["codeFlows"] = [{"message": {"text": f.message}, "threadFlows": flows}]
    return r


def sarif_run(run: ExportRun) -> JSONObject:
    """The SARIF run of one tracedep run."""
    roots = _Roots(run)
    driver: JSONObject = {"name": "tracedep", "rules": _rules()}
    if run.tracedep_version:
        driver["version"] = run.tracedep_version
    invocation: JSONObject = {"executionSuccessful": run.failure is None and not run.stopped}
    if run.failure:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": run.failure}}]
    props: JSONObject = {"run_dir": str(run.run_dir)}
    if run.kernel is not None and run.kernel.release:
        props["kernel"] = run.kernel.release
    if run.arch:
        props["arch"] = run.arch
    return {"tool": {"driver": driver},
            "automationDetails": {"id": f"tracedep/{run.label}/"},
            "originalUriBaseIds": roots.bases(), "invocations": [invocation],
            "results": [_result(f, roots) for f in run.findings], "properties": props}


def sarif_document(runs: Sequence[ExportRun]) -> JSONObject:
    """The SARIF 2.1.0 log of ``runs``."""
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION,
            "runs": [sarif_run(r) for r in runs]}
