"""``tracedep nightly CONFIG.toml``: a matrix of runs every night, with history.

One line in a cron job::

    0 2 * * *  cd /srv/ci && tracedep nightly nightly.toml

runs every cell of the matrix (kernels × archs × driver sets × workloads, each
``repeat`` times) as an ordinary ``tracedep run`` into ``OUT/<night>/<cell>/``,
records the results in the history database (``nightly/history.py``), classifies
every finding (new, still present, fixed, flaky) against the earlier nights of
the same cell, and writes the report site (``nightly/site.py``) and JUnit
XML (``OUT/<night>/junit.xml``, and ``junit.xml`` in each run directory);
with ``--kcidb FILE`` a KCIDB v5 document and with ``--sarif FILE`` a SARIF
2.1.0 log of the night's runs, rewritten as each cell ends (reports/kcidb.py,
reports/sarif.py).

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
    run_args = []                # more `tracedep run` arguments, e.g. ["--smp", "1"]: after the
                                 # cell's own (a value here overrides the cell's), checked
                                 # when the configuration is read
    out = "nightly"              # default --out
    db = "nightly/history.sqlite"  # default --db (default: OUT/history.sqlite)
    scheduler = "tcp://ci:8786"  # default --scheduler: the Dask cluster that runs the cells

    [driver_sets]                # required: name = "bundled" | "dir" | ["dir", …]
    bundled = "bundled"
    mine = ["drivers/foo", "drivers/bar"]
    debian = ["kernel:null_blk", "kernel:dummy"]  # the kernel package's own modules

Exit status: 0 no new findings; 1 new findings tonight; 2 bad configuration
(one line naming the key); 3 every cell failed to run.  Cells run as Dask tasks
(``nightly/dask_engine.py``: an embedded cluster of ``jobs`` workers, or a
scheduler's workers on other machines; a cell whose worker died is run again
elsewhere, once, and the night says so), or with ``--engine local`` as
subprocesses of the nightly.  Either way a cell's ``tracedep run`` is a
subprocess, so a cell that crashes is a failed cell and the night goes on; it is
told to stop (SIGINT, so its guest is shut down) if its parent dies.  Cell output
goes to ``OUT/<night>/<cell>.log``; the history and the site are written here only.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from tracedep.analysis.findings import Finding
from tracedep.errors import InputError
from tracedep.nightly.config import Cell, Config
from tracedep.nightly.history import CellKey, FindingRow, History, Verdict
from tracedep.reports.export_runs import ExportRun

log = logging.getLogger(__name__)

POLL_S = 0.2
STOP_GRACE_S = 60.0  # a cell told to stop shuts its guest down; give it that long


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
class Slot:
    """A run of a cell in the night, whichever engine runs it."""

    cell: Cell
    attempt: int
    stem: str  # the run directory's name in the night's folder
    run_dir: Path
    log_path: Path
    run_id: int
    index: int  # its place in the night, for the progress lines
    label: str
    retried: list[str] = field(default_factory=list)  # why it was started again


@dataclass
class Job:
    slot: Slot
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]
    t0: float
    stopping: float | None = None  # when it was told to stop


@dataclass
class NightResult:
    name: str
    night_id: int
    verdicts: list[tuple[CellKey, Verdict]] = field(default_factory=list)
    cells_ok: int = 0
    cells_failed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, why)
    retried: list[tuple[str, str]] = field(default_factory=list)  # (run, why)
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

    def __init__(self, cfg: Config, history: History, out: Path, jobs: int,
                 kcidb: Path | None = None, sarif: Path | None = None,
                 engine: Engine | None = None) -> None:
        self.cfg, self.h, self.out, self.jobs = cfg, history, out, jobs
        self.engine = engine  # None: cells as subprocesses here (--engine local)
        self.kcidb, self.sarif = kcidb, sarif  # the night's exports, rewritten per cell
        self.exported: list[ExportRun] = []
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

    def begin(self, cell: Cell, attempt: int) -> Slot:
        """Record a run of ``cell`` as running; the engine then runs it."""
        stem = cell.dirname + (f"-r{attempt}" if self.cfg.repeat > 1 else "")
        run_dir = self.dir / stem
        run_id = self.h.start_run(self.res.night_id, cell.key, attempt, str(run_dir))
        self.started += 1
        return Slot(cell, attempt, stem, run_dir, self.dir / f"{stem}.log", run_id, self.started,
                    self._label(cell, attempt))

    def start(self, cell: Cell, attempt: int) -> Job:
        slot = self.begin(cell, attempt)
        cmd = cell_command(cell, slot.run_dir)
        log_file = open(slot.log_path, "wb")  # closed when the job ends
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with(os.getpid()))
        self.say(f"[{slot.index}/{self.total}] start {slot.label}")
        return Job(slot, proc, log_file, time.monotonic())

    def retry(self, slot: Slot, why: str) -> None:
        """``slot`` is run again elsewhere (its worker died): the night says so."""
        slot.retried.append(why)
        self.res.retried.append((slot.label, why))
        self.h.note_retry(slot.run_id, why)
        self.say(f"[{slot.index}/{self.total}] retry {slot.label}: {why}")

    def finish(self, job: Job, rc: int, interrupted: bool = False) -> None:
        job.log_file.close()
        self.record(job.slot, rc, time.monotonic() - job.t0, interrupted)

    def record(self, job: Slot, rc: int | None, elapsed: float, interrupted: bool = False,
               worker: str | None = None, error: str | None = None) -> None:
        """A run ended (``rc`` None: it never ran to an exit; ``error`` says why)."""
        got = collect(job.run_dir)
        findings, drivers = got if got is not None else ([], [])
        if interrupted:
            status = "interrupted"
        elif rc in (0, 1) and got is not None and error is None:
            status = "ok"
        elif rc == 2:
            status = "error"  # the cell's input: a driver that does not build, a bad kernel
        else:
            status = "failed"
        if status != "ok" and error is None:
            error = _last_line(job.log_path) or f"exit {rc}"
        if error is not None:
            self.res.failed.append((job.label, error))
        self.remaining[job.cell.key] -= 1
        self.cell_ok[job.cell.key] |= status == "ok"
        last = self.remaining[job.cell.key] == 0 and not interrupted
        verdicts = self.h.finish_run(job.run_id, status, rc, elapsed, error,
                                     [FindingRow.of(f) for f in findings], drivers,
                                     classify_cell=last, window=self.cfg.flaky_window,
                                     worker=worker)
        self.res.verdicts += [(job.cell.key, v) for v in verdicts]
        if last:
            if self.cell_ok[job.cell.key]:
                self.res.cells_ok += 1
            else:
                self.res.cells_failed += 1
        label = job.label
        write_junit(job.run_dir, label, findings, drivers, error, elapsed)
        self._write_night_junit(label, findings, drivers, error, elapsed)
        self._export(job.run_dir, label, status, error)
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

    def _export(self, run_dir: Path, label: str, status: str, error: str | None) -> None:
        """``--kcidb``/``--sarif``: the night so far, with this cell (a cell that did not
        complete is an ERROR, one the night stopped a MISS)."""
        from tracedep.reports.export_runs import load_export_run
        from tracedep.reports.exports import write_exports

        if self.kcidb is None and self.sarif is None:
            return
        failure = None if status == "ok" else (error or status)
        try:
            run = load_export_run(run_dir, label, failure, stopped=status == "interrupted")
        except InputError:  # the cell left no run directory (its options were refused)
            run = ExportRun(run_dir, label, [], [], analysed=False, failure=failure,
                            stopped=status == "interrupted")
        self.exported.append(run)
        try:
            write_exports(self.exported, self.kcidb, self.sarif)
        except (OSError, InputError) as e:  # the night's records matter more
            log.warning("could not write the KCIDB/SARIF export: %s", e)

    def render(self) -> None:
        from tracedep.nightly.site import NightlySite

        try:
            NightlySite(self.h, self.out).render()
        except OSError as e:  # a full disk must not lose the night's records
            log.warning("could not write the report site: %s", e)

    def run(self) -> NightResult:
        if self.engine is not None:
            return self.engine.run(self)
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
            self.say(f"stopping {job.slot.label}: {why}")
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


def cell_command(cell: Cell, run_dir: Path) -> list[str]:
    """The `tracedep run` of ``cell`` into ``run_dir``."""
    # -P: the cwd must not shadow modules (a `random.py` where cron starts us)
    return [sys.executable, "-P", "-m", "tracedep.cli", "run",
            *dataclasses.replace(cell.options, out=run_dir).to_argv()]


class Engine(Protocol):
    """Runs a night's cells elsewhere (``nightly/dask_engine.py``), recording each through
    ``Night.begin``/``retry``/``record`` on this host."""

    def run(self, night: Night) -> NightResult: ...


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
    for run, why in res.retried:
        lines.append(f"  RETRIED  {run}: {why}")
    lines.append(f"tracedep: report in {out / 'index.html'}")
    return lines
