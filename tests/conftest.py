"""Shared fixtures: the tracedep command line, and ONE real run of the bundled drivers.

Guest tests (``@pytest.mark.guest``) boot Debian's kernel under QEMU; they are
part of CI and never skipped: a missing QEMU or kernel cache is a failure
(``make test`` installs both first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# test modules share the helpers below with ``from conftest import ...``
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DRIVERS = REPO / "vm" / "drivers"
TEST_DRIVERS = REPO / "tests" / "data" / "drivers"
# one boot of the bundled drivers is ~1 min under TCG; leave room for a loaded CI box
RUN_TIMEOUT_S = 900


@dataclass
class Result:
    """What one ``tracedep`` command did."""

    args: list[str]
    rc: int
    stdout: str
    stderr: str
    wall_s: float

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("tracedep: error:")]

    def explain(self) -> str:
        return (f"tracedep {' '.join(self.args)} -> exit {self.rc} in {self.wall_s:.0f} s\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}")


TINY_RUN = Path(__file__).parent / "data" / "traces" / "tiny"  # a real run, recorded small


def tiny_run_copy(tmp_path: Path) -> Path:
    """A copy of the recorded tiny run directory, for a test to change."""
    d = tmp_path / "run"
    shutil.copytree(TINY_RUN, d)
    return d


def run_tracedep(*args: str | Path, timeout: float = RUN_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> Result:
    """``tracedep ARGS`` in a child process, as a user runs it."""
    argv = [str(a) for a in args]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tracedep.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


@pytest.fixture(scope="session")
def tracedep_cli() -> Callable[..., Result]:
    return run_tracedep


def build_c_module(tmp: Path, name: str, source: str, arch: str) -> Path:
    """Build a one-file module ``name`` from ``source`` for ``arch`` against the default
    Debian kernel's headers (the unit tests' small drivers); returns its .ko."""
    from tracedep.common.machines import machine_for
    from tracedep.vm.kernel import fetch_debian_kernel
    from tracedep.vm.modules import build_module_dir

    src = tmp / f"{name}_{arch}"
    src.mkdir()
    (src / f"{name}.c").write_text(source)
    (src / "Kbuild").write_text(f"obj-m += {name}.o\n")
    machine = machine_for(arch)
    [mod] = build_module_dir(src, fetch_debian_kernel(machine), machine)
    return mod.ko


def expectations() -> dict[str, dict[str, Any]]:
    """``vm/drivers/*/expect.json`` by module name."""
    out = {}
    for p in sorted(DRIVERS.glob("*/expect.json")):
        e = json.loads(p.read_text())
        out[e["module"]] = e
    return out


def frame_functions(finding: dict[str, Any]) -> set[str]:
    names = {fr["function"] for s in finding["sites"] for fr in s["frames"]}
    fn = finding.get("details", {}).get("function")
    return names | ({fn} if fn else set())


# the suffixes of GCC's clones of a function (foo.constprop.0, foo.isra.0, foo.part.0,
# foo.cold): a frame names the clone's symbol, as the kernel prints it
_CLONE_SUFFIX = re.compile(r"(\.(constprop|isra|part|cold)(\.\d+)?)+$")


def matches(finding: dict[str, Any], want: dict[str, Any], module: str) -> bool:
    """Kind, driver and function (as itself, an inlined frame, the symbol it is inlined
    into, or a GCC clone of it) of an expect.json finding."""
    if finding["kind"] != want["kind"] or finding["driver"] != module:
        return False
    names = frame_functions(finding)
    names |= {_CLONE_SUFFIX.sub("", n) for n in names}
    fn = want["function"]
    return fn in names or want.get("symbols", {}).get(fn) in names


def check_expected(findings: list[dict[str, Any]], module: str, heap_names: bool = False
                   ) -> list[str]:
    """Problems with ``module``'s findings against its expect.json (empty: all good).

    ``heap_names``: the findings come from a run whose analysis had the modules'
    DWARF, so a heap lock must carry its ``struct type.member`` name
    (analysis.type_names), possibly followed by whose (`` [module]``) or which site."""
    e = expectations()[module]
    mine = [f for f in findings if f["driver"] == module]
    problems = []
    for want in e["findings"]:
        hits = [f for f in mine if matches(f, want, module)]
        if "wait" in want:  # several cycles through waits may meet in one function
            hits = [f for f in hits if any(want["wait"] in w for w in f.get(
                "details", {}).get("waits", []))] or hits
        if not hits:
            problems.append(f"missing {want['kind']} in {want['function']}(); "
                            f"got {[(f['kind'], sorted(frame_functions(f))) for f in mine]}")
            continue
        f = hits[0]
        for lock in want.get("lock_details", []):
            # a static lock is its symbol ("name [module]" when two modules have one)
            if lock["storage"] == "static" and not any(
                    n == lock["name"] or n.startswith(lock["name"] + " [") for n in f["locks"]):
                problems.append(f"{want['kind']}: static lock {lock['name']} not among "
                                f"{f['locks']}")
            # lockdep's own name, where the initializer gave one (&cs->cfg_rwsem), else
            # the type's (struct td_cfg_store.cfg_rwsem)
            bases = [n.split(" [")[0].split(" (")[0] for n in f["locks"]]
            if lock["storage"] == "heap" and heap_names and not any(
                    b == lock["name"] or (b.startswith("&") and b.endswith(f"->{lock['field']}"))
                    for b in bases):
                problems.append(f"{want['kind']}: heap lock {lock['name']} not named so "
                                f"among {f['locks']}")
        if "wait" in want and not any(want["wait"] in w for w in f.get("details", {}).get(
                "waits", [])):
            # a cycle through a wait must name the wait that closes it (analysis.waits)
            problems.append(f"{want['kind']}: no wait {want['wait']!r} among "
                            f"{f.get('details', {}).get('waits')}")
        if want["kind"] == "sleep-in-atomic":
            ctx = set(f.get("details", {}).get("context", []))
            if not set(want.get("context", [])) <= ctx:
                problems.append(f"sleep-in-atomic context {sorted(ctx)}, expected "
                                f"{want['context']}")
    allowed = {w["kind"] for w in e["findings"]} | {a["kind"] for a in e.get("also_acceptable",
                                                                                [])}
    for f in mine:
        if f["kind"] not in allowed:
            problems.append(f"unexpected {f['kind']}: {f['message']}")
    if not e["findings"] and mine:
        problems.append(f"clean twin has findings: {[f['message'] for f in mine]}")
    return problems


@dataclass
class BundledRun:
    run_dir: Path
    result: Result

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.run_dir / "manifest.json").read_text())
        return data

    @property
    def findings(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads((self.run_dir / "findings.json").read_text())
        return data


def mid_run(run: Path, dest: Path, shares: dict[int, float]) -> Path:
    """A copy of the finished run directory ``run`` as it stood while still being
    written (``tracedep analyze --live``): the manifest at ``state: running``, no page
    sums, and CPU n's file cut after ``shares[n]`` of its pages (half a page more, as
    a live stream leaves it)."""
    from tracedep.tracer import control
    from tracedep.tracer.ftrace_formats import parse_header_page

    page = parse_header_page(control.load(run / "control.log").header_page() or "").page_size
    (dest / "trace").mkdir(parents=True)
    # kallsyms.gz: a live run has it from its discovery boot, whose cache may be gone
    for f in ("control.log", "console.log", "kallsyms.gz"):
        shutil.copy(run / f, dest / f)
    m = json.loads((run / "manifest.json").read_text())
    m["state"] = "running"
    (dest / "manifest.json").write_text(json.dumps(m))
    for raw in sorted((run / "trace").glob("cpu*.raw")):
        data = raw.read_bytes()
        pages = len(data) // page
        keep = int(pages * shares[int(raw.stem[3:])])
        (dest / "trace" / raw.name).write_bytes(
            data[:keep * page + (page // 2 if keep < pages else 0)])
    return dest


@pytest.fixture(scope="session")
def bundled_run(tmp_path_factory: pytest.TempPathFactory) -> BundledRun:
    """``tracedep run`` of the bundled example drivers, once per test session."""
    out = tmp_path_factory.mktemp("bundled") / "run"
    res = run_tracedep("run", "--out", out)
    # exit 1: findings (the bug drivers have them); anything else is a broken run
    assert res.rc == 1, res.explain()
    return BundledRun(out, res)


@pytest.fixture(scope="session")
def bundled_trace(bundled_run: BundledRun) -> Any:
    """The bundled run's trace, decoded (``analysis.trace.Trace``)."""
    from tracedep.analysis.trace import load

    return load(bundled_run.run_dir)
