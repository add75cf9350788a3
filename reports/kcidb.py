"""KCIDB (schema v5): runs as the checkouts, builds, tests, issues and incidents
KernelCI's database takes (``kcidb-submit``; checked with ``kcidb-io`` in the tests).

One document for any number of runs (a run, or a night's cells):

* **checkouts**: the source each module under test was built from: its git work
  tree's commit where it lies in one (``common.source_tree``), else its folder; and
  the kernel the run booted (Debian's package, or the user's kernel).
* **builds**: one per module build (its kbuild folder names its source and kernel,
  so the same driver built the same way is one build across nights), and one for
  the kernel (Debian's build: tracedep did not make it).
* **tests**: one per run (path ``tracedep``, on the kernel build) and one per
  driver and finding kind (``tracedep.<driver>.<kind>``, on the driver's build).
  Status, as KCIDB defines them: FAIL a finding of that kind; PASS the run
  completed without one; ERROR the run did not complete (the guest died, hung,
  panicked, the trace is incomplete), so what it did not see is unknown; MISS
  the driver never loaded, or the harness stopped the run.
* **issues**: one per finding signature, ``tracedep:<signature>``: the signature
  is stable across runs and nights, so the same bug is one issue however often it
  is found (``version`` :data:`ISSUE_VERSION`).
* **incidents**: one per finding of a run, linking its issue to its test.

Plain dicts: nothing at run time needs kcidb-io.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from tracedep.analysis.findings import FINDING_KINDS, Finding
from tracedep.common.jsonvalue import JSON, JSONObject
from tracedep.common.source_tree import git_tree
from tracedep.reports.export_runs import ExportRun, ModuleInfo, rfc3339

ORIGIN = "tracedep"
SCHEMA_MAJOR, SCHEMA_MINOR = 5, 3  # kcidb-io's latest v5 (kcidb_io.schema.LATEST)
ISSUE_VERSION = 1  # raise when tracedep describes its issues differently
RUN_PATH = "tracedep"
MAX_EXCERPT = 16384  # log_excerpt's maxLength
_PATH_PART = re.compile(r"[^A-Za-z0-9_-]")
_ORIGIN_ARCH = re.compile(r"[^a-z0-9_]")


def _h(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def _text(s: str) -> str:
    """A string KCIDB takes (no NUL: its patterns refuse them)."""
    return s.replace("\0", "\\0")


def path_part(name: str) -> str:
    """A test path component: letters, digits, ``_`` and ``-``."""
    return _PATH_PART.sub("_", name) or "_"


def issue_id(f: Finding) -> str:
    return f"{ORIGIN}:{f.signature}"


def _https(url: str | None) -> str | None:
    return url if url and url.startswith("https://") and "\0" not in url else None


class _Doc:
    def __init__(self) -> None:
        self.checkouts: dict[str, JSONObject] = {}
        self.builds: dict[str, JSONObject] = {}
        self.tests: list[JSONObject] = []
        self.issues: dict[str, JSONObject] = {}
        self.incidents: list[JSONObject] = []

    # -- checkouts and builds -------------------------------------------------------------

    def kernel_build(self, run: ExportRun) -> str:
        k = run.kernel
        release = (k.release if k else None) or "unknown"
        version = (k.package_version if k else None) or ""
        debian = k is not None and k.packages is not None
        co: JSONObject = {"origin": ORIGIN, "tree_name": "debian" if debian else "kernel",
                          "valid": True}
        tree = git_tree(k.build_dir) if k is not None and not debian else None
        if tree is not None:
            cid = f"{ORIGIN}:checkout:{tree.commit[:12]}-{_h(str(tree.root))}"
            co.update(git_commit_hash=tree.commit, misc={"path": _text(str(tree.root))})
            if tree.branch:
                co["git_repository_branch"] = _text(tree.branch)
            if _https(tree.url):
                co["git_repository_url"] = tree.url
        else:
            cid = f"{ORIGIN}:kernel:{_h(release, version)}"
            what = f"Debian's kernel package {version}" if debian else "a user's kernel"
            co.update(comment=_text(f"{what} ({release})"),
                      misc={"release": _text(release), "package_version": _text(version)})
        co["id"] = cid
        self.checkouts.setdefault(cid, co)
        arch = _ORIGIN_ARCH.sub("_", (run.arch or "").lower())
        bid = f"{ORIGIN}:build:kernel:{_h(release, version, arch)}"
        self.builds.setdefault(bid, {
            "id": bid, "origin": ORIGIN, "checkout_id": cid, "architecture": arch,
            "config_name": _text(release), "status": "PASS",
            "comment": _text(f"kernel {release}" + (" (Debian's build)" if debian else ""))})
        return bid

    def _module_checkout(self, run: ExportRun, m: ModuleInfo) -> str:
        tree = git_tree(m.src_dir)
        co: JSONObject = {"origin": ORIGIN, "valid": True}
        if tree is not None:
            cid = f"{ORIGIN}:checkout:{tree.commit[:12]}-{_h(str(tree.root))}"
            co.update(git_commit_hash=tree.commit, tree_name=_text(tree.root.name),
                      misc={"path": _text(str(tree.root))})
            if tree.branch:
                co["git_repository_branch"] = _text(tree.branch)
            if _https(tree.url):
                co["git_repository_url"] = tree.url
        else:  # not a git tree: this run's copy of the folder, nothing more is known
            src = m.src_dir or m.name
            cid = f"{ORIGIN}:checkout:{run.key}-{_h(src)}"
            co.update(comment=_text(f"{src} (not in a git work tree)"),
                      misc={"path": _text(src)})
        start = rfc3339(run.started)
        if start and cid not in self.checkouts:
            co["start_time"] = start
        co["id"] = cid
        self.checkouts.setdefault(cid, co)
        return cid

    def module_build(self, run: ExportRun, m: ModuleInfo, kernel_build: str) -> str:
        if m.origin == "kernel":  # the kernel package's own module: Debian built it
            return kernel_build
        cid = self._module_checkout(run, m)
        kb = self.builds[kernel_build]
        # the kbuild folder is named by the source's and the kernel's hash: the same
        # build across nights is the same folder; without one, this run's build
        bid = (f"{ORIGIN}:build:{_h(m.build_dir)}" if m.build_dir
               else f"{ORIGIN}:build:{run.key}:{path_part(m.name)}")
        status = "PASS" if m.ko or m.loaded else ("FAIL" if run.failure and m.name in
                                                  run.failure else "MISS")
        misc: JSONObject = {"module": _text(m.name)}
        for k, v in (("src_dir", m.src_dir), ("build_dir", m.build_dir), ("ko", m.ko)):
            if v:
                misc[k] = _text(v)
        build: JSONObject = {"id": bid, "origin": ORIGIN, "checkout_id": cid,
                             "architecture": kb["architecture"],
                             "config_name": kb["config_name"], "status": status,
                             "comment": _text(f"{m.name}: kbuild against {kb['config_name']}"),
                             "misc": misc}
        start = rfc3339(run.started)
        if start:
            build["start_time"] = start
        self.builds.setdefault(bid, build)
        return bid

    # -- tests, issues, incidents ----------------------------------------------------------

    def _test(self, run: ExportRun, tid: str, build: str, path: str, status: str,
              comment: str, misc: JSONObject) -> None:
        t: JSONObject = {"id": tid, "origin": ORIGIN, "build_id": build, "path": path,
                         "status": status, "comment": _text(comment), "misc": misc}
        start = rfc3339(run.started)
        if start:
            t["start_time"] = start
        if run.duration_s is not None:
            t["duration"] = run.duration_s
        if run.failure and status in ("ERROR", "MISS"):
            t["log_excerpt"] = _text(run.failure)[:MAX_EXCERPT]
        q = run.qemu
        if q is not None and q.accel:
            t["environment"] = {"comment": _text(
                f"QEMU ({q.accel}), {q.smp or '?'} CPUs, {q.mem_mb or '?'} MiB")}
        self.tests.append(t)

    def add_run(self, run: ExportRun) -> None:
        kb = self.kernel_build(run)
        run_misc: JSONObject = {"run": _text(run.label), "run_dir": _text(str(run.run_dir)),
                                "findings": len(run.findings), "lost_events": run.lost}
        if run.ending.how:
            run_misc["ending"] = _text(run.ending.how)
        status = ("MISS" if run.stopped else "ERROR" if run.failure
                  else "FAIL" if run.findings else "PASS")
        self._test(run, f"{ORIGIN}:{run.key}", kb, RUN_PATH, status,
                   f"tracedep run {run.label}", run_misc)
        by: dict[tuple[str, str], list[Finding]] = {}
        for f in run.findings:
            by.setdefault((f.driver, f.kind), []).append(f)
        for driver in run.drivers:
            m = run.module(driver)
            build = self.module_build(run, m, kb) if m is not None else kb
            for kind in FINDING_KINDS:
                found = by.get((driver, kind), [])
                if found:
                    st = "FAIL"
                elif run.stopped or (m is not None and m.never_loaded):
                    st = "MISS"
                else:
                    st = "ERROR" if run.failure else "PASS"
                tid = f"{ORIGIN}:{run.key}:{path_part(driver)}:{kind}"
                self._test(run, tid, build, f"{RUN_PATH}.{path_part(driver)}.{kind}", st,
                           f"{driver}: {kind} ({run.label})",
                           {"run": _text(run.label), "driver": _text(driver),
                            "findings": len(found)})
                for f in found:
                    self._incident(run, tid, f)

    def _incident(self, run: ExportRun, test_id: str, f: Finding) -> None:
        iid = issue_id(f)
        self.issues.setdefault(iid, {
            "id": iid, "version": ISSUE_VERSION, "origin": ORIGIN,
            "comment": _text(f.message),
            "culprit": {"code": True, "tool": False, "harness": False},
            "misc": {"kind": f.kind, "driver": _text(f.driver), "signature": f.signature,
                     "locks": [_text(x) for x in f.locks]}})
        misc: JSONObject = {"count": f.count, "first_ts_ns": f.first_ts_ns,
                            "run": _text(run.label)}
        self.incidents.append({
            "id": f"{test_id}:{f.signature.rpartition(':')[2]}", "origin": ORIGIN, "issue_id": iid,
            "issue_version": ISSUE_VERSION, "test_id": test_id, "present": True,
            "comment": _text(f"{f.count}× in {run.label}"), "misc": misc})

    def document(self) -> JSONObject:
        out: JSONObject = {"version": {"major": SCHEMA_MAJOR, "minor": SCHEMA_MINOR}}
        lists: list[tuple[str, list[JSONObject]]] = [
            ("checkouts", list(self.checkouts.values())), ("builds", list(self.builds.values())),
            ("tests", self.tests), ("issues", list(self.issues.values())),
            ("incidents", self.incidents)]
        for name, objs in lists:
            out[name] = list[JSON](objs)
        return out


def kcidb_document(runs: Sequence[ExportRun]) -> JSONObject:
    """The KCIDB v5 document of ``runs``."""
    doc = _Doc()
    for run in runs:
        doc.add_run(run)
    return doc.document()
