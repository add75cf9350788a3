"""``tracedep nightly CONFIG.toml``: a matrix of runs every night, with history.

One line in a cron job::

    0 2 * * *  cd /srv/ci && tracedep nightly nightly.toml

runs every cell of the matrix (kernels × archs × driver sets × workloads, each
``repeat`` times) as an ordinary ``tracedep run`` into ``OUT/<night>/<cell>/``,
records the results in the history database (``nightly/history.py``), classifies
every finding (new, still present, fixed, flaky) against the earlier nights of
the same cell, and writes the report site (``nightly/site.py``) and JUnit
XML (``OUT/<night>/junit.xml``, and ``junit.xml`` in each run directory).

Configuration (TOML; relative paths are relative to the file)::

    kernels = ["default"]        # "default" (the newest kernel of the default series), a
                                 # Debian series ("6.1", "6.12": its newest kernel), an ABI
                                 # ("6.1.0-57", "6.12.118+deb12"),
                                 # or {name = "mine", image = "bzImage", modules = "lib/modules/X",
                                 #     build = "linux", vmlinux = "linux/vmlinux"}
    archs = ["x86_64"]           # x86_64, arm64
    workloads = ["default"]      # "default" (load, settle, unload), a script path, or
                                 # {name = "stress", script = "stress.sh"}
    repeat = 1                   # runs of each cell per night (for findings that come and go)
    flaky_window = 7             # nights looked back at to call a finding flaky
    timeout = 300                # guest timeout of each run, seconds
    cell_timeout = 3600          # wall-clock limit of a whole cell (build, boot, analysis)
    jobs = 1                     # cells run at a time (--jobs overrides)
    run_args = []                # more `tracedep run` arguments, e.g. ["--smp", "1"]
    out = "nightly"              # default --out
    db = "nightly/history.sqlite"  # default --db (default: OUT/history.sqlite)

    [driver_sets]                # required: name = "bundled" | "dir" | ["dir", …]
    bundled = "bundled"
    mine = ["drivers/foo", "drivers/bar"]
    debian = ["kernel:null_blk", "kernel:dummy"]  # the kernel package's own modules

Exit status: 0 no new findings; 1 new findings tonight; 2 bad configuration
(one line naming the key); 3 every cell failed to run.  Cells run as
subprocesses, so a cell that crashes is a failed cell and the night goes on;
each child is told to stop (SIGINT, so its guest is shut down) if the nightly
itself dies.  Cell output goes to ``OUT/<night>/<cell>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tracedep.analysis.findings import Finding
from tracedep.errors import ConfigError, InputError
from tracedep.nightly.history import CellKey, FindingRow, History, Verdict
from tracedep.vm.debian_kernels import SERIES

log = logging.getLogger(__name__)

KNOWN_KEYS = ("kernels", "archs", "workloads", "driver_sets", "repeat", "flaky_window",
              "timeout", "cell_timeout", "jobs", "run_args", "out", "db")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
DEFAULT = "default"
BUNDLED = "bundled"
KERNEL_MODULE = "kernel:"  # a driver-set entry naming a module of the kernel package
POLL_S = 0.2
STOP_GRACE_S = 60.0  # a cell told to stop shuts its guest down; give it that long


@dataclass(frozen=True)
class Kernel:
    name: str
    args: tuple[str, ...]  # `tracedep run` arguments selecting it


@dataclass(frozen=True)
class Workload:
    name: str
    script: Path | None


@dataclass(frozen=True)
class Cell:
    key: CellKey
    args: tuple[str, ...]  # `tracedep run` arguments of the cell, without --out

    @property
    def dirname(self) -> str:
        k = self.key
        return "--".join(re.sub(r"[^A-Za-z0-9._+-]", "-", p)
                        for p in (k.kernel, k.arch, k.driver_set, k.workload))


@dataclass
class Config:
    path: Path
    cells: list[Cell]
    repeat: int = 1
    flaky_window: int = 7
    jobs: int = 1
    cell_timeout: float = 3600.0
    out: Path | None = None
    db: Path | None = None


def _fail(path: Path, key: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: key '{key}': {what}")


def _int(path: Path, raw: dict[str, Any], key: str, default: int, low: int = 1) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _fail(path, key, f"must be an integer ≥ {low}, not {v!r}")
    return v


def _list(path: Path, raw: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    v = raw.get(key, default)
    if not isinstance(v, list) or not v:
        raise _fail(path, key, f"must be a non-empty list, not {v!r}")
    return v


def _name(path: Path, key: str, v: Any) -> str:
    if not isinstance(v, str) or not NAME.match(v):
        raise _fail(path, key, f"{v!r} is not a name (letters, digits, '.', '_', '+', '-')")
    return v


def _path(base: Path, path: Path, key: str, v: Any, want_dir: bool) -> Path:
    if not isinstance(v, str) or not v:
        raise _fail(path, key, f"must be a path, not {v!r}")
    p = (base / v).resolve()
    if want_dir and not p.is_dir():
        raise _fail(path, key, f"{p}: no such directory")
    if not want_dir and not p.is_file():
        raise _fail(path, key, f"{p}: no such file")
    return p


def _kernels(path: Path, raw: dict[str, Any]) -> list[Kernel]:
    base = path.parent
    out = []
    for i, k in enumerate(_list(path, raw, "kernels", [DEFAULT])):
        key = f"kernels[{i}]"
        if isinstance(k, str):
            name = _name(path, key, k)
            out.append(Kernel(name, () if name == DEFAULT else (
                ("--kernel-series", name) if name in SERIES else ("--abi", name))))
            continue
        if not isinstance(k, dict):
            raise _fail(path, key, "must be an ABI string or a table {name, image, …}")
        unknown = set(k) - {"name", "image", "modules", "build", "vmlinux"}
        if unknown:
            raise _fail(path, f"{key}.{sorted(unknown)[0]}",
                        "unknown (known: name, image, modules, build, vmlinux)")
        if "name" not in k or "image" not in k:
            raise _fail(path, key, "a kernel table needs 'name' and 'image'")
        args = ["--kernel", str(_path(base, path, f"{key}.image", k["image"], False))]
        for opt, flag, is_dir in (("modules", "--kernel-modules", True),
                                  ("build", "--kernel-build", True),
                                  ("vmlinux", "--vmlinux", False)):
            if opt in k:
                args += [flag, str(_path(base, path, f"{key}.{opt}", k[opt], is_dir))]
        out.append(Kernel(_name(path, f"{key}.name", k["name"]), tuple(args)))
    return out


def _workloads(path: Path, raw: dict[str, Any]) -> list[Workload]:
    out = []
    for i, w in enumerate(_list(path, raw, "workloads", [DEFAULT])):
        key = f"workloads[{i}]"
        if w == DEFAULT:
            out.append(Workload(DEFAULT, None))
        elif isinstance(w, str):
            script = _path(path.parent, path, key, w, False)
            out.append(Workload(_name(path, key, script.stem), script))
        elif isinstance(w, dict) and set(w) == {"name", "script"}:
            out.append(Workload(_name(path, f"{key}.name", w["name"]),
                                _path(path.parent, path, f"{key}.script", w["script"], False)))
        else:
            raise _fail(path, key, "must be \"default\", a script path or {name, script}")
    return out


def _driver_sets(path: Path, raw: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    sets = raw.get("driver_sets")
    if not isinstance(sets, dict) or not sets:
        raise _fail(path, "driver_sets", "required: a table of name = \"bundled\" | dirs")
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, v in sets.items():
        key = f"driver_sets.{name}"
        _name(path, key, name)
        if v == BUNDLED:
            out.append((name, ()))  # `tracedep run` without --module-src runs the bundled set
            continue
        dirs = [v] if isinstance(v, str) else v
        if not isinstance(dirs, list) or not dirs:
            raise _fail(path, key, "must be \"bundled\", a directory or a list of directories "
                                   "and kernel:NAME modules")
        args: list[str] = []
        for d in dirs:
            if isinstance(d, str) and d.startswith(KERNEL_MODULE):
                # the kernel package's own module (`tracedep run --kernel-module`)
                if not d[len(KERNEL_MODULE):]:
                    raise _fail(path, key, "kernel: needs a module name (kernel:null_blk)")
                args += ["--kernel-module", d[len(KERNEL_MODULE):]]
                continue
            args += ["--module-src", str(_path(path.parent, path, key, d, True))]
        out.append((name, tuple(args)))
    return out


def load_config(path: Path) -> Config:
    """Parse and check a nightly configuration; raise ``ConfigError`` naming the bad key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    path = path.resolve()
    for key in raw:
        if key not in KNOWN_KEYS:
            raise _fail(path, key, f"unknown (known: {', '.join(KNOWN_KEYS)})")
    from tracedep.common.machines import MACHINES

    archs = [_name(path, f"archs[{i}]", a) for i, a in
             enumerate(_list(path, raw, "archs", ["x86_64"]))]
    for i, a in enumerate(archs):
        if a not in MACHINES:
            raise _fail(path, f"archs[{i}]", f"unknown arch {a!r} (known: {', '.join(MACHINES)})")
    run_args = raw.get("run_args", [])
    if not isinstance(run_args, list) or not all(isinstance(a, str) for a in run_args):
        raise _fail(path, "run_args", "must be a list of strings")
    if any(a == "--out" or a.startswith("--out=") for a in run_args):
        raise _fail(path, "run_args", "--out is chosen by the nightly")
    timeout = raw.get("timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
            not math.isfinite(timeout) or timeout <= 0:
        raise _fail(path, "timeout", f"must be a number of seconds, not {timeout!r}")
    cell_timeout = raw.get("cell_timeout", 3600)
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int | float) \
            or not math.isfinite(cell_timeout) or cell_timeout <= 0:
        raise _fail(path, "cell_timeout", f"must be a number of seconds, not {cell_timeout!r}")
    kernels, workloads, sets = _kernels(path, raw), _workloads(path, raw), _driver_sets(path, raw)
    cells = []
    for k in kernels:
        for a in archs:
            for ds_name, ds_args in sets:
                for w in workloads:
                    args = ["--arch", a, "--timeout", f"{timeout:g}", *k.args, *ds_args]
                    if w.script is not None:
                        args += ["--workload", str(w.script)]
                    cells.append(Cell(CellKey(k.name, a, ds_name, w.name),
                                      (*args, *run_args)))
    names = [str(c.key) for c in cells]
    if len(set(names)) != len(names):
        raise _fail(path, "workloads", "two cells have the same name (duplicate entries?)")
    cfg = Config(path=path, cells=cells, repeat=_int(path, raw, "repeat", 1),
                 flaky_window=_int(path, raw, "flaky_window", 7, low=2),
                 jobs=_int(path, raw, "jobs", 1), cell_timeout=float(cell_timeout))
    for key in ("out", "db"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise _fail(path, key, "must be a path")
            setattr(cfg, key, (path.parent / raw[key]).resolve())
    return cfg


# -- running cells ------------------------------------------------------------------------


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGINT when ``parent`` dies, even by SIGKILL.

    On SIGINT, `tracedep run` shuts its guest down and exits, instead of running
    on as an orphan.  Linux only (PR_SET_PDEATHSIG); elsewhere, nothing is done.
    The nightly starts cells from its main thread only: the signal is tied to the
    thread that forked.
    """

    def preexec() -> None:  # pragma: no cover - runs in the child before exec
        # An ignored SIGINT survives exec (a nightly started with `&` or nohup has
        # one): the child would then ignore both this signal and the nightly's stop.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl: nobody wants this run
            os._exit(3)

    return preexec


@dataclass
class Job:
    cell: Cell
    attempt: int
    run_dir: Path
    log_path: Path
    run_id: int
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]
    t0: float
    index: int  # its place in the night, for the progress lines
    stopping: float | None = None  # when it was told to stop


@dataclass
class NightResult:
    name: str
    night_id: int
    verdicts: list[tuple[CellKey, Verdict]] = field(default_factory=list)
    cells_ok: int = 0
    cells_failed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, why)
    interrupted: bool = False

    @property
    def new(self) -> list[tuple[CellKey, Verdict]]:
        return [(c, v) for c, v in self.verdicts if v.cls == "new"]


def exit_code(res: NightResult) -> int:
    """3 every cell failed; 1 new findings; 0 otherwise."""
    if res.cells_ok == 0:
        return 3
    return 1 if res.new else 0


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None


def collect(run_dir: Path) -> tuple[list[Finding], list[str]] | None:
    """A run directory's findings and drivers, or None when it has no analysis."""
    from tracedep.reports.serialize import load_run_outputs

    try:
        a = load_run_outputs(run_dir)
    except InputError:
        return None
    drivers = [m.name for m in a.run.modules] + [f.driver for f in a.findings]
    return a.findings, sorted(set(drivers))


def write_junit(run_dir: Path, name: str, findings: Sequence[Finding], drivers: Sequence[str],
                error: str | None, elapsed: float) -> None:
    from tracedep.common.files import atomic_write
    from tracedep.nightly import junit

    if run_dir.is_dir():
        atomic_write(run_dir / "junit.xml",
                     junit.to_xml([junit.run_suite(name, drivers, findings, error, elapsed)]))


class Night:
    """One night of a configuration: runs its cells, records them, renders the site."""

    def __init__(self, cfg: Config, history: History, out: Path, jobs: int) -> None:
        self.cfg, self.h, self.out, self.jobs = cfg, history, out, jobs
        self.t_start = time.monotonic()
        name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        while (out / name).exists():  # another nightly on this folder, same second
            name += "x"
        night_id, self.name = history.start_night(name, str(cfg.path), str(out))
        self.res = NightResult(self.name, night_id)
        self.dir = out / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remaining = {c.key: cfg.repeat for c in cfg.cells}
        self.cell_ok: dict[CellKey, bool] = {c.key: False for c in cfg.cells}
        self.suites: dict[str, ET.Element] = {}  # the night's junit.xml, run by run
        self.total = len(cfg.cells) * cfg.repeat
        self.started = 0

    def say(self, msg: str) -> None:
        t = int(time.monotonic() - self.t_start)
        print(f"[{t // 3600}:{t // 60 % 60:02}:{t % 60:02}] {msg}", flush=True)

    def _label(self, job_cell: Cell, attempt: int) -> str:
        return str(job_cell.key) + (f" #{attempt}" if self.cfg.repeat > 1 else "")

    def start(self, cell: Cell, attempt: int) -> Job:
        stem = cell.dirname + (f"-r{attempt}" if self.cfg.repeat > 1 else "")
        run_dir = self.dir / stem
        log_path = self.dir / f"{stem}.log"
        # -P: the cwd must not shadow modules (a `random.py` where cron starts us)
        cmd = [sys.executable, "-P", "-m", "tracedep.cli", "run", *cell.args, "--out",
               str(run_dir)]
        run_id = self.h.start_run(self.res.night_id, cell.key, attempt, str(run_dir))
        log_file = open(log_path, "wb")  # closed when the job ends
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with(os.getpid()))
        self.started += 1
        self.say(f"[{self.started}/{self.total}] start {self._label(cell, attempt)}")
        return Job(cell, attempt, run_dir, log_path, run_id, proc, log_file, time.monotonic(),
                   self.started)

    def finish(self, job: Job, rc: int, interrupted: bool = False) -> None:
        job.log_file.close()
        elapsed = time.monotonic() - job.t0
        got = collect(job.run_dir)
        findings, drivers = got if got is not None else ([], [])
        if interrupted:
            status = "interrupted"
        elif rc in (0, 1) and got is not None:
            status = "ok"
        elif rc == 2:
            status = "error"  # the cell's input: a driver that does not build, a bad kernel
        else:
            status = "failed"
        error = None if status == "ok" else (_last_line(job.log_path) or f"exit {rc}")
        if error is not None:
            self.res.failed.append((self._label(job.cell, job.attempt), error))
        self.remaining[job.cell.key] -= 1
        self.cell_ok[job.cell.key] |= status == "ok"
        last = self.remaining[job.cell.key] == 0 and not interrupted
        verdicts = self.h.finish_run(job.run_id, status, rc, elapsed, error,
                                     [FindingRow.of(f) for f in findings], drivers,
                                     classify_cell=last, window=self.cfg.flaky_window)
        self.res.verdicts += [(job.cell.key, v) for v in verdicts]
        if last:
            if self.cell_ok[job.cell.key]:
                self.res.cells_ok += 1
            else:
                self.res.cells_failed += 1
        label = self._label(job.cell, job.attempt)
        write_junit(job.run_dir, label, findings, drivers, error, elapsed)
        self._write_night_junit(label, findings, drivers, error, elapsed)
        counts = {c: sum(1 for v in verdicts if v.cls == c) for c in ("new", "fixed", "flaky")}
        classes = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
        what = f"{len(findings)} findings" + (f" ({classes})" if classes else "") \
            if status == "ok" else f"{status}: {error}"
        self.say(f"[{job.index}/{self.total}] done  {label}: {what}  {elapsed:.1f}s")
        self.render()

    def _write_night_junit(self, label: str, findings: Sequence[Finding],
                           drivers: Sequence[str], error: str | None, elapsed: float) -> None:
        from tracedep.common.files import atomic_write
        from tracedep.nightly import junit

        self.suites[label] = junit.run_suite(label, drivers, findings, error, elapsed)
        atomic_write(self.dir / "junit.xml",
                     junit.to_xml(list(self.suites.values()), name=f"tracedep {self.name}"))

    def render(self) -> None:
        from tracedep.nightly.site import Site

        try:
            Site(self.h, self.out).render()
        except OSError as e:  # a full disk must not lose the night's records
            log.warning("could not write the report site: %s", e)

    def run(self) -> NightResult:
        pending = [(c, i) for i in range(1, self.cfg.repeat + 1) for c in self.cfg.cells]
        running: list[Job] = []
        self.say(f"night {self.name}: {len(self.cfg.cells)} cells × {self.cfg.repeat}, "
                 f"{self.jobs} at a time; runs in {self.dir}")
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    running.append(self.start(*pending.pop(0)))
                time.sleep(POLL_S)
                for job in list(running):
                    rc = job.proc.poll()
                    if rc is None and time.monotonic() - job.t0 > self.cfg.cell_timeout:
                        self._stop(job, "cell_timeout reached")
                        continue
                    if rc is not None:
                        running.remove(job)
                        self.finish(job, rc)
        except KeyboardInterrupt:
            for job in running:
                self._stop(job, "interrupted")
            for job in running:
                self.finish(job, self._reap(job), interrupted=True)
            self.res.interrupted = True
            self.h.finish_night(self.res.night_id, "interrupted")
            self.render()
            raise
        self.h.finish_night(self.res.night_id, "complete")
        self.render()
        return self.res

    def _stop(self, job: Job, why: str) -> None:
        if job.stopping is None:
            self.say(f"stopping {self._label(job.cell, job.attempt)}: {why}")
            job.stopping = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                job.proc.send_signal(signal.SIGINT)
        elif time.monotonic() - job.stopping > STOP_GRACE_S:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGKILL)

    def _reap(self, job: Job) -> int:
        try:
            return job.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGKILL)
            return job.proc.wait()


def summary(res: NightResult, out: Path) -> list[str]:
    counts: dict[str, int] = {}
    for _, v in res.verdicts:
        counts[v.cls] = counts.get(v.cls, 0) + 1
    lines = [f"tracedep: night {res.name}: {res.cells_ok} cells ran, {res.cells_failed} failed; "
             + ", ".join(f"{counts.get(c, 0)} {c}" for c in ("new", "fixed", "flaky",
                                                            "still present"))]
    for cell, v in res.new:
        lines.append(f"  NEW  {cell}  {v.driver}: {v.message}  [{v.signature}]")
    for run, why in res.failed:
        lines.append(f"  FAILED  {run}: {why}")
    lines.append(f"tracedep: report in {out / 'index.html'}")
    return lines


def cmd_nightly(a: argparse.Namespace) -> int:
    cfg = load_config(a.config)
    jobs = a.jobs if a.jobs is not None else cfg.jobs
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    out: Path = (a.out or cfg.out or Path("tracedep-nightly")).resolve()
    db: Path = (a.db or cfg.db or out / "history.sqlite").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: {e.strerror}") from None
    with History(db) as h:
        night = Night(cfg, h, out, jobs)
        res = night.run()
    for line in summary(res, out):
        print(line, flush=True)
    return exit_code(res)


def add_parser(sub: Any) -> None:
    """Register ``tracedep nightly`` on the CLI's subparsers."""
    p = sub.add_parser("nightly", help="run a matrix of runs, record history, classify findings "
                                       "(exit 1 when there are new findings)")
    p.add_argument("config", type=Path, help="the nightly configuration (TOML)")
    p.add_argument("--db", type=Path, default=None,
                   help="history database (default: the config's db, else OUT/history.sqlite)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the config's out, else ./tracedep-nightly)")
    p.add_argument("--jobs", type=int, default=None, help="cells run at a time")
    p.set_defaults(func=cmd_nightly)
