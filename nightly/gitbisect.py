"""Find the commit that brought a finding: ``git bisect run`` with tracedep.

(Named ``gitbisect``, not ``bisect``: a top-level ``bisect.py`` in the repository
root shadows the standard library's ``bisect`` for anything started there with
``python -m`` — pytest included.)

Two commands.

``tracedep bisect-run``, the test ``git bisect run`` calls at each commit::

    git bisect start BAD GOOD
    git bisect run tracedep bisect-run --module-src ./drivers/foo \\
        --match sleep-in-atomic:foo_fill [--repeat 3]
    git bisect reset

builds the module (or, with ``--kernel-build-cmd CMD --kernel-image PATH``, runs
CMD to build a kernel and boots that image), runs ``tracedep run`` and exits

    0    the finding is absent (good)
    1    the finding is present (bad)
    125  the build or the boot failed: git skips the commit
    2    bad arguments; to git that means "bad", so check the command once by
         hand first, or use ``tracedep bisect``, which checks it before starting
    130  interrupted: git aborts the bisection

``--match`` is a finding signature (``sleep-in-atomic:3e3bc24d6f0127ce``, as in
findings.json), a kind (``sleep-in-atomic``), or ``KIND:FUNCTION``, where the
function is compared with the finding's ``details["function"]``, with the first
frame of its first witness, and with every witness frame (inlined ones included).
``--repeat N`` runs up to N times before calling a commit good and stops at the
first run that shows the finding, for findings that do not show on every boot.
``--keep DIR`` keeps each commit's run directories in ``DIR/<commit>/`` and the
verdict in ``DIR/<commit>.json``.  Every other option is an option of ``tracedep
run`` (``common/run_options.py``), passed on; two are spelled as they always were
here: ``--kernel-image`` is run's ``--kernel`` and ``--kernel-tree`` run's
``--kernel-build`` (a build tree).  The build *command* is ``--kernel-build-cmd``;
its old spelling ``--kernel-build CMD`` still works, with a warning, until the
next release.

``tracedep bisect``, the whole bisection in one command::

    tracedep bisect [--repo DIR] [--keep DIR] GOOD BAD -- BISECT-RUN-ARGUMENTS

checks the arguments, runs ``git bisect start BAD GOOD``, ``git bisect run``
with ``tracedep bisect-run``, and ``git bisect reset`` (always), in the
repository of ``--repo`` (default: when bisecting a kernel, ``--kernel-repo`` or
the current directory; else the one holding the first ``--module-src``), then
prints the first bad commit, its finding and the run that showed it::

    tracedep bisect v1.0 main -- --module-src . --match sleep-in-atomic:foo_fill
    tracedep bisect --repo ~/linux v6.6 v6.7 -- --kernel-build-cmd 'make -j8 bzImage' \
        --kernel-image ~/linux/arch/x86/boot/bzImage --module-src ~/drv --match recursive-locking

Relative paths are taken from where ``tracedep bisect`` runs; the run
directories are kept (``--keep``, default a new temporary folder, printed).
Exit 0 when a first bad commit was found, 2 for bad arguments (not a git
repository, unknown revision, bisection already running), 3 when the bisection
could not name one commit (every candidate skipped: build or boot failures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tracedep.analysis.findings import FINDING_KINDS, Finding
from tracedep.common.run_options import BISECT_RUN, RunOptions, add_arguments
from tracedep.errors import InputError

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 130
SIGNATURE = re.compile(r"^[a-z-]+:[0-9a-f]{16}$")
FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)
PREFIX = "tracedep bisect-run:"


# -- matching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What ``--match`` asks for: a signature, a kind, or a kind in a function."""

    spec: str
    kind: str
    function: str | None

    @classmethod
    def parse(cls, spec: str) -> Match:
        kind, _, function = spec.partition(":")
        if kind not in FINDING_KINDS:
            raise InputError(f"--match {spec}: unknown finding kind {kind!r} "
                             f"(known: {', '.join(FINDING_KINDS)})")
        return cls(spec, kind, function or None)

    def matches(self, f: Finding) -> bool:
        if SIGNATURE.match(self.spec) and f.signature == self.spec:
            return True
        if f.kind != self.kind:
            return False
        return self.function is None or self.function in functions(f)


def functions(f: Finding) -> list[str]:
    """The finding's function names: its own, the first frame's, then every frame's."""
    out: list[str] = []
    fn = f.details.get("function")
    if isinstance(fn, str) and fn:
        out.append(fn)
    out.extend(fr.function for site in f.sites for fr in site.frames)
    return out


# -- one commit ------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def head_commit(repo: Path) -> str | None:
    p = _git(repo, "rev-parse", "HEAD")
    return p.stdout.strip() if p.returncode == 0 else None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def run_options(a: argparse.Namespace) -> RunOptions:
    """The ``tracedep run`` options of a bisect-run (no --out), paths made absolute."""
    return RunOptions.from_namespace(a).absolute()


def run_argv(a: argparse.Namespace) -> list[str]:
    """The ``tracedep run`` arguments of a bisect-run (all but --out), paths made absolute."""
    return run_options(a).to_argv()


def _word(flag: str, value: str) -> list[str]:
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


def bisect_run_argv(a: argparse.Namespace) -> list[str]:
    """``a`` (parsed bisect-run arguments) as bisect-run arguments again, paths absolute."""
    argv = [*_word("--match", a.match), "--repeat", str(a.repeat)]
    if a.kernel_build_cmd:
        argv += _word("--kernel-build-cmd", a.kernel_build_cmd)
    for opt, val in (("--kernel-repo", a.kernel_repo), ("--keep", a.keep)):
        if val is not None:
            argv += _word(opt, str(Path(val).absolute()))
    return argv + run_options(a).to_argv(BISECT_RUN)


def _fresh(path: Path) -> Path:
    cand, i = path, 1
    while cand.exists():
        i += 1
        cand = path.with_name(f"{path.name}-{i}")
    return cand


def _attempt(opts: RunOptions, run_dir: Path, match: Match) -> tuple[str, str, Finding | None]:
    """One ``tracedep run``: ("present" | "absent" | "nobuild" | "failed", detail, finding)."""
    from tracedep.reports.serialize import load_run_outputs

    proc = subprocess.run([sys.executable, "-P", "-m", "tracedep.cli", "run",
                           *dataclasses.replace(opts, out=run_dir).to_argv()],
                          capture_output=True, text=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.with_name(run_dir.name + ".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode == 2:
        return "nobuild", _last_line(proc.stderr or proc.stdout), None
    if proc.returncode not in (0, 1):
        return "failed", f"exit {proc.returncode}: {_last_line(proc.stderr or proc.stdout)}", \
            None
    try:
        findings = load_run_outputs(run_dir).findings
    except InputError as e:
        return "failed", str(e), None
    for f in findings:
        if match.matches(f):
            return "present", f"{f.kind} in {f.driver}: {f.message}", f
    return "absent", f"{len(findings)} other findings", None


def bisect_run(a: argparse.Namespace, keep: Path) -> int:
    match = Match.parse(a.match)
    repo = Path(a.kernel_repo or (a.module_src[0] if a.module_src else ".")).absolute()
    commit = head_commit(repo) or "worktree"
    short = commit[:12]
    if a.kernel_build_cmd:
        proc = subprocess.run(a.kernel_build_cmd, shell=True, cwd=a.kernel_repo or None,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{PREFIX} {short}: kernel build failed (exit {proc.returncode}): "
                  f"{_last_line(proc.stderr or proc.stdout)}: skip", flush=True)
            return SKIP
        if not Path(a.kernel).is_file():  # --kernel-image
            print(f"{PREFIX} {short}: no kernel image {a.kernel} after the build: skip",
                  flush=True)
            return SKIP
    opts = run_options(a)
    base = _fresh(keep / commit)
    attempts: list[dict[str, Any]] = []
    verdict, found = SKIP, None
    for i in range(1, a.repeat + 1):
        run_dir = base / f"attempt-{i}"
        outcome, detail, f = _attempt(opts, run_dir, match)
        attempts.append({"run_dir": str(run_dir), "outcome": outcome, "detail": detail})
        print(f"{PREFIX} {short}: attempt {i}/{a.repeat}: {outcome}: {detail}", flush=True)
        if outcome == "present":
            verdict, found = BAD, f
            break
        if outcome == "nobuild":  # the same sources will not build on a second try
            verdict = SKIP
            break
        if outcome == "absent":
            verdict = GOOD
    record = {"commit": commit, "match": a.match,
              "verdict": {GOOD: "good", BAD: "bad", SKIP: "skip"}[verdict],
              "attempts": attempts,
              "finding": None if found is None else {
                  "signature": found.signature, "kind": found.kind, "driver": found.driver,
                  "message": found.message, "run_dir": attempts[-1]["run_dir"]}}
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{commit}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{PREFIX} {short}: {record['verdict']}", flush=True)
    return verdict


def _check(a: argparse.Namespace) -> None:
    Match.parse(a.match)
    if a.repeat < 1:
        raise InputError("--repeat must be at least 1")
    if a.kernel_build_cmd and not a.kernel:
        raise InputError("--kernel-build-cmd needs --kernel-image (the image the build makes)")
    if not a.module_src and not a.kernel:
        raise InputError("give --module-src DIR (a driver to bisect) or "
                         "--kernel-build-cmd CMD --kernel-image PATH (a kernel to bisect)")


def cmd_bisect_run(a: argparse.Namespace) -> int:
    _check(a)
    try:
        if a.keep is not None:
            return bisect_run(a, a.keep.absolute())
        with tempfile.TemporaryDirectory(prefix="tracedep-bisect-") as tmp:
            return bisect_run(a, Path(tmp))
    except KeyboardInterrupt:
        # 130 > 127: git bisect run aborts instead of calling the commit bad
        print(f"{PREFIX} interrupted", file=sys.stderr)
        return ABORT


class _OldKernelBuild(argparse.Action):
    """``--kernel-build CMD``: --kernel-build-cmd's old spelling, until the next release.

    In ``tracedep run``, ``--kernel-build`` is a kernel build tree (here that is
    ``--kernel-tree``); bisect-run's build command has its own name now.  The old
    spelling still works, so a ``git bisect run`` line written for it does not
    call every commit bad (exit 2) halfway through a bisection.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{PREFIX} warning: --kernel-build CMD is now --kernel-build-cmd CMD (the old "
              "spelling goes away in the next release; in tracedep run, --kernel-build is a "
              "build tree, here --kernel-tree)", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, values)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--match", required=True,
                   help="finding SIGNATURE, KIND, or KIND:FUNCTION to look for")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs before calling a commit good (stops at the first bad run)")
    p.add_argument("--kernel-build-cmd", default=None, metavar="CMD",
                   help="shell command that builds the kernel at this commit")
    p.add_argument("--kernel-build", dest="kernel_build_cmd", action=_OldKernelBuild,
                   metavar="CMD", help=argparse.SUPPRESS)
    p.add_argument("--kernel-repo", type=Path, default=None,
                   help="where to run --kernel-build-cmd (default: the current directory)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep run directories in DIR/<commit>/, verdicts in DIR/<commit>.json")
    add_arguments(p.add_argument_group("tracedep run options"), spelling=BISECT_RUN)


# -- the whole bisection -----------------------------------------------------------------------


class _StrictParser(argparse.ArgumentParser):
    """Checks ``tracedep bisect``'s run arguments without printing usage or exiting."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"bisect-run arguments: {message}")


def _run_args(argv: list[str]) -> argparse.Namespace:
    p = _StrictParser(prog="tracedep bisect-run", add_help=False, allow_abbrev=False)
    add_run_args(p)
    a = p.parse_args(argv)
    _check(a)
    return a


def _repo_of(a: argparse.Namespace, run: argparse.Namespace) -> Path:
    if a.repo is not None:
        start = a.repo
    elif run.kernel_build_cmd:  # bisecting the kernel: its tree, or where we are
        start = run.kernel_repo or Path(".")
    else:
        start = run.module_src[0]
    if not Path(start).is_dir():
        raise InputError(f"{start}: no such directory")
    p = _git(Path(start), "rev-parse", "--show-toplevel")
    if p.returncode != 0:
        raise InputError(f"{Path(start).absolute()} is not in a git repository")
    return Path(p.stdout.strip())


def _commit(repo: Path, rev: str) -> str:
    p = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if p.returncode != 0:
        raise InputError(f"{rev}: no such commit in {repo}")
    return p.stdout.strip()


def cmd_bisect(a: argparse.Namespace) -> int:
    if shutil.which("git") is None:
        raise InputError("git is not installed")
    run = _run_args(list(a.run_args))
    repo = _repo_of(a, run)
    good, bad = _commit(repo, a.good), _commit(repo, a.bad)
    # relative to the repository, or absolute (worktrees); `/` keeps an absolute one
    state = repo / _git(repo, "rev-parse", "--git-path", "BISECT_START").stdout.strip()
    if state.exists():
        raise InputError(f"{repo}: a bisection is already running (git bisect reset ends it)")
    keep = (a.keep or Path(tempfile.mkdtemp(prefix="tracedep-bisect-"))).absolute()
    run.keep = keep
    if run.kernel_build_cmd and run.kernel_repo is None:
        run.kernel_repo = repo  # the build runs where git checks the commits out
    # -P: git runs the test in the repository, whose files must not shadow modules
    test = [sys.executable, "-P", "-m", "tracedep.cli", "bisect-run", *bisect_run_argv(run)]
    print(f"tracedep bisect: {repo}: {a.good} (good) .. {a.bad} (bad); runs kept in {keep}",
          flush=True)
    start = _git(repo, "bisect", "start", bad, good)
    if start.returncode != 0:
        _git(repo, "bisect", "reset")
        raise InputError(f"git bisect start: {_last_line(start.stderr or start.stdout)}")
    try:
        proc = subprocess.Popen(["git", "-C", str(repo), "bisect", "run", *test],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            print(line, end="", flush=True)
        proc.wait()
    finally:
        _git(repo, "bisect", "reset")
    m = FIRST_BAD.search("".join(output))
    if m is None:
        print("tracedep bisect: no single first bad commit (see above; skipped commits?)",
              file=sys.stderr)
        return 3
    sha = m.group(1)
    subject = _git(repo, "log", "-1", "--format=%h %s", sha).stdout.strip()
    print(f"tracedep bisect: first bad commit: {sha}  {subject}")
    verdict = keep / f"{sha}.json"
    if verdict.is_file():
        f = json.loads(verdict.read_text()).get("finding") or {}
        if f:
            print(f"tracedep bisect: finding: {f['kind']} in {f['driver']}: {f['message']} "
                  f"[{f['signature']}]")
            print(f"tracedep bisect: run: {Path(f['run_dir']) / 'index.html'}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``tracedep bisect-run`` and ``tracedep bisect`` on the CLI's subparsers."""
    r = sub.add_parser("bisect-run", help="test one commit for `git bisect run` "
                                          "(0 absent, 1 present, 125 skip)")
    add_run_args(r)
    r.set_defaults(func=cmd_bisect_run)
    b = sub.add_parser("bisect", help="bisect a finding between two commits and print the "
                                      "first bad one")
    b.add_argument("--repo", type=Path, default=None,
                   help="the git repository (default: the one of the first --module-src)")
    b.add_argument("--keep", type=Path, default=None,
                   help="where to keep each commit's runs (default: a new temporary folder)")
    b.add_argument("good", help="a commit without the finding")
    b.add_argument("bad", help="a commit with the finding")
    b.add_argument("run_args", nargs="*", metavar="-- BISECT-RUN-ARGS",
                   help="tracedep bisect-run arguments, after --")
    b.set_defaults(func=cmd_bisect)
