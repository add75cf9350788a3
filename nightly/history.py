"""The history database of nightly runs: one SQLite file, shared by every night.

Schema (``PRAGMA user_version`` = 1)::

    nights          one row per ``tracedep nightly`` invocation
      id            INTEGER PRIMARY KEY   (start order: a later night has a larger id)
      name          TEXT UNIQUE           "20261122-031500", also its folder under --out
      started       TEXT                  ISO 8601 UTC
      finished      TEXT NULL             NULL while running, or when it was killed
      status        TEXT                  running | complete | interrupted
      config        TEXT                  the configuration file
      out_dir       TEXT                  where its run directories are
      host, pid     TEXT, INTEGER         to tell a killed night from a running one

    runs            one row per ``tracedep run`` of a cell (``repeat`` rows per cell)
      id            INTEGER PRIMARY KEY
      night_id      → nights.id
      cell          TEXT                  "kernel/arch/driver_set/workload", the cell key
      kernel, arch, driver_set, workload  TEXT, the key's parts
      attempt       INTEGER               1 … repeat;  UNIQUE (night_id, cell, attempt)
      run_dir       TEXT                  the run directory (its index.html, findings.json)
      status        TEXT                  running | ok | error | failed | interrupted
                                          (ok: exit 0 or 1; error: exit 2, e.g. the
                                          driver does not build; failed: exit 3 or a crash)
      exit_code     INTEGER NULL
      started, finished TEXT; elapsed_s REAL; error TEXT NULL (last line of stderr)

    findings        one row per finding of a run (from its findings.json)
      run_id → runs.id, signature, kind, driver, function, message, count, first_ts_ns
      PRIMARY KEY (run_id, signature)

    run_drivers     the drivers a run loaded, so a driver without findings has history too
      run_id → runs.id, driver;  PRIMARY KEY (run_id, driver)

    verdicts        the classification of a cell's findings in a night
      night_id → nights.id, cell, signature, class, kind, driver, function, message
      PRIMARY KEY (night_id, cell, signature)
      class: new | still present | fixed | flaky

Verdicts are computed once, when the last attempt of a cell finishes, inside the
transaction that records it, and never recomputed: they are what that night said.

Classification of a cell key's findings in a night (``classify``):
  * new            never seen on this cell key in an earlier night (also: seen
                   before, but absent from every night of the flaky window and from
                   the previous night — a fixed bug that came back is a regression);
  * still present  seen in the previous night of this cell key that ran successfully;
  * fixed          seen in that previous night, absent tonight, and tonight's cell ran
                   successfully (a failed cell fixes nothing);
  * flaky          within the last ``window`` successful nights of the cell it has
                   disappeared and come back at least once, or tonight's repeats
                   disagree about it (seen in some attempts only).

Concurrency: WAL journal and a busy timeout, so two nightlies (or a nightly and
a reader) share the file; every write is one ``BEGIN IMMEDIATE`` transaction, so
a night killed at any point leaves every finished cell recorded and nothing half
written.  Migrations are a list of SQL scripts applied in order under the same
kind of transaction; ``user_version`` says how many have run.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracedep.analysis.findings import Finding
from tracedep.errors import InputError

log = logging.getLogger(__name__)

CLASSES = ("new", "still present", "fixed", "flaky")
RUN_STATUSES = ("running", "ok", "error", "failed", "interrupted")
BUSY_TIMEOUT_MS = 120_000  # a cell's transaction is milliseconds; this only guards contention

# Each entry is one schema version; never edit a released entry, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE nights (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            started TEXT NOT NULL,
            finished TEXT,
            status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'interrupted')),
            config TEXT NOT NULL,
            out_dir TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL)""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            night_id INTEGER NOT NULL REFERENCES nights(id) ON DELETE CASCADE,
            cell TEXT NOT NULL,
            kernel TEXT NOT NULL,
            arch TEXT NOT NULL,
            driver_set TEXT NOT NULL,
            workload TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            run_dir TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('running', 'ok', 'error', 'failed', 'interrupted')),
            exit_code INTEGER,
            started TEXT NOT NULL,
            finished TEXT,
            elapsed_s REAL,
            error TEXT,
            UNIQUE (night_id, cell, attempt))""",
        "CREATE INDEX runs_cell ON runs (cell, night_id)",
        """CREATE TABLE findings (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            signature TEXT NOT NULL,
            kind TEXT NOT NULL,
            driver TEXT NOT NULL,
            function TEXT,
            message TEXT NOT NULL,
            count INTEGER NOT NULL,
            first_ts_ns INTEGER,
            PRIMARY KEY (run_id, signature))""",
        "CREATE INDEX findings_driver ON findings (driver)",
        """CREATE TABLE run_drivers (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            driver TEXT NOT NULL,
            PRIMARY KEY (run_id, driver))""",
        "CREATE INDEX run_drivers_driver ON run_drivers (driver)",
        """CREATE TABLE verdicts (
            night_id INTEGER NOT NULL REFERENCES nights(id) ON DELETE CASCADE,
            cell TEXT NOT NULL,
            signature TEXT NOT NULL,
            class TEXT NOT NULL CHECK (class IN ('new', 'still present', 'fixed', 'flaky')),
            kind TEXT NOT NULL,
            driver TEXT NOT NULL,
            function TEXT,
            message TEXT NOT NULL,
            PRIMARY KEY (night_id, cell, signature))""",
    ),
    (  # 2: where a run ran (a Dask worker) and why it was run again (its worker died)
        "ALTER TABLE runs ADD COLUMN worker TEXT",
        "ALTER TABLE runs ADD COLUMN retried TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class CellKey:
    """What makes two nights' runs comparable: same kernel, arch, drivers and workload."""

    kernel: str
    arch: str
    driver_set: str
    workload: str

    def __str__(self) -> str:
        return f"{self.kernel}/{self.arch}/{self.driver_set}/{self.workload}"


@dataclass(frozen=True)
class FindingRow:
    """The part of a finding the history keeps (the run directory has the rest)."""

    signature: str
    kind: str
    driver: str
    function: str | None
    message: str
    count: int = 1
    first_ts_ns: int | None = None

    @classmethod
    def of(cls, f: Finding) -> FindingRow:
        return cls(f.signature, f.kind, f.driver, finding_function(f), f.message, f.count,
                   f.first_ts_ns)


def finding_function(f: Finding) -> str | None:
    """The function a finding is about: the rule's own, else the first witness frame."""
    fn = f.details.get("function")
    if isinstance(fn, str) and fn:
        return fn
    for site in f.sites:
        for frame in site.frames:
            return frame.function
    return None


@dataclass(frozen=True)
class Verdict:
    signature: str
    cls: str  # one of CLASSES
    kind: str
    driver: str
    function: str | None
    message: str


@dataclass(frozen=True)
class NightOfCell:
    """One earlier night of a cell key, as classification sees it."""

    ok: bool  # at least one attempt ran successfully
    sigs: frozenset[str]  # seen in any attempt
    partial: frozenset[str] = frozenset()  # seen in some successful attempts only


def classify(tonight_ok_runs: Sequence[frozenset[str]], tonight_failed: frozenset[str],
             earlier: Sequence[NightOfCell], window: int) -> dict[str, str]:
    """Signature → class for one cell key tonight (see the module docstring).

    ``tonight_ok_runs``: the signatures of each successful attempt tonight;
    ``tonight_failed``: signatures found by failed attempts (a crashed guest's
    partial trace); ``earlier``: the cell key's earlier nights, oldest first.
    """
    ok_now = bool(tonight_ok_runs)
    now_sigs = frozenset().union(*tonight_ok_runs) if ok_now else frozenset()
    partial_now = frozenset(s for s in now_sigs if not all(s in r for r in tonight_ok_runs))
    present = now_sigs | tonight_failed
    seen_before: set[str] = set().union(*(n.sigs for n in earlier)) if earlier else set()
    ok_hist = [n for n in earlier if n.ok]
    prev = ok_hist[-1] if ok_hist else None
    span = ok_hist[-(window - 1):] if window > 1 else []
    if ok_now:
        span = [*span, NightOfCell(True, now_sigs, partial_now)]

    def intermittent(sig: str) -> bool:
        if any(sig in n.partial for n in span):
            return True
        gone = False
        for a, b in zip(span, span[1:], strict=False):
            if sig in a.sigs and sig not in b.sigs:
                gone = True
            elif gone and sig not in a.sigs and sig in b.sigs:
                return True
        return False

    out: dict[str, str] = {}
    for s in present:
        if s not in seen_before:
            out[s] = "new"
        elif intermittent(s):
            out[s] = "flaky"
        elif prev is None or s in prev.sigs:
            # no successful earlier night: it was seen in a failed one, so not new
            out[s] = "still present"
        else:
            out[s] = "new"  # gone for the whole window, back again: a regression
    if ok_now and prev is not None:
        for s in prev.sigs - present:
            out[s] = "flaky" if intermittent(s) else "fixed"
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class History:
    """An open history database.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"--db {self.path}: not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # autocommit: every transaction below is an explicit BEGIN IMMEDIATE
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._wal()
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            # a damaged page surfaces only when a query reads it (mid-night, mid-page):
            # check every page now, before any cell runs
            bad = [str(r[0]) for r in self.db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as e:
            raise InputError(f"--db {self.path}: {e}") from None
        if bad != ["ok"]:
            self.db.close()
            raise InputError(f"--db {self.path}: damaged database ({'; '.join(bad[:3])}); "
                             f"restore it or move it aside")

    def _wal(self) -> None:
        """Switch to WAL.  The switch needs the database to itself and SQLite does not
        wait for that (no busy handler on a journal-mode change): two nightlies
        creating one database at once retry instead of failing."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so two writers queue instead of deadlocking."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise InputError(f"--db {self.path}: schema version {version} is newer than "
                                 f"this tracedep knows ({SCHEMA_VERSION})")
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    db.execute(stmt)
                log.info("history %s: migrated to schema version %d", self.path, v + 1)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def integrity(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- writing ---------------------------------------------------------------------

    def start_night(self, name: str, config: str, out_dir: str) -> tuple[int, str]:
        """Record a new night; ``name`` gets a suffix if another night took it."""
        self.mark_interrupted()
        for i in range(1, 1000):
            cand = name if i == 1 else f"{name}-{i}"
            try:
                with self.transaction() as db:
                    cur = db.execute(
                        "INSERT INTO nights (name, started, status, config, out_dir, host, pid)"
                        " VALUES (?, ?, 'running', ?, ?, ?, ?)",
                        (cand, _now(), config, out_dir, socket.gethostname(), os.getpid()))
                    return int(cur.lastrowid or 0), cand
            except sqlite3.IntegrityError:
                continue
        raise InputError(f"--db {self.path}: no free night name for {name}")

    def finish_night(self, night_id: int, status: str = "complete") -> None:
        with self.transaction() as db:
            db.execute("UPDATE nights SET finished = ?, status = ? WHERE id = ?",
                       (_now(), status, night_id))
            db.execute("UPDATE runs SET status = 'interrupted' WHERE night_id = ? "
                       "AND status = 'running'", (night_id,))

    def mark_interrupted(self) -> None:
        """Nights of this host whose process is gone were killed: say so."""
        host = socket.gethostname()
        rows = self.db.execute("SELECT id, pid FROM nights WHERE status = 'running' "
                               "AND host = ?", (host,)).fetchall()
        for r in rows:
            if r["pid"] != os.getpid() and not _pid_alive(int(r["pid"])):
                self.finish_night(int(r["id"]), "interrupted")

    def start_run(self, night_id: int, cell: CellKey, attempt: int, run_dir: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (night_id, cell, kernel, arch, driver_set, workload, attempt,"
                " run_dir, status, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (night_id, str(cell), cell.kernel, cell.arch, cell.driver_set, cell.workload,
                 attempt, run_dir, _now()))
            return int(cur.lastrowid or 0)

    def note_retry(self, run_id: int, why: str) -> None:
        """The run was started again elsewhere (its worker died): say why, kept with the run."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET retried = COALESCE(retried || '; ', '') || ? "
                       "WHERE id = ?", (why, run_id))

    def finish_run(self, run_id: int, status: str, exit_code: int | None, elapsed_s: float,
                   error: str | None, findings: Sequence[FindingRow], drivers: Sequence[str],
                   classify_cell: bool, window: int, worker: str | None = None) -> list[Verdict]:
        """Record a finished run; with ``classify_cell``, also the cell's verdicts.

        All of it is one transaction: a nightly killed now leaves either nothing
        of this run or all of it.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"bad run status {status!r}")
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, exit_code = ?, finished = ?, elapsed_s = ?,"
                       " error = ?, worker = ? WHERE id = ?",
                       (status, exit_code, _now(), elapsed_s, error, worker, run_id))
            db.executemany(
                "INSERT OR REPLACE INTO findings (run_id, signature, kind, driver, function,"
                " message, count, first_ts_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, f.signature, f.kind, f.driver, f.function, f.message, f.count,
                  f.first_ts_ns) for f in findings])
            db.executemany("INSERT OR IGNORE INTO run_drivers (run_id, driver) VALUES (?, ?)",
                           [(run_id, d) for d in sorted(set(drivers))])
            if not classify_cell:
                return []
            row = db.execute("SELECT night_id, cell FROM runs WHERE id = ?", (run_id,)).fetchone()
            return self._classify(int(row["night_id"]), str(row["cell"]), window)

    def _cell_nights(self, cell: str, before: int) -> list[NightOfCell]:
        """The cell key's finished nights before night id ``before``, oldest first."""
        runs = self.db.execute(
            "SELECT id, night_id, status FROM runs WHERE cell = ? AND night_id < ? AND status IN"
            " ('ok', 'failed') ORDER BY night_id, attempt", (cell, before)).fetchall()
        sigs_of = self._sigs_by_run([int(r["id"]) for r in runs])
        by_night: dict[int, list[tuple[str, frozenset[str]]]] = {}
        for r in runs:
            by_night.setdefault(int(r["night_id"]), []).append(
                (str(r["status"]), sigs_of.get(int(r["id"]), frozenset())))
        out = []
        for _, attempts in sorted(by_night.items()):
            ok_runs = [s for st, s in attempts if st == "ok"]
            every = frozenset().union(*(s for _, s in attempts))
            ok_sigs = frozenset().union(*ok_runs) if ok_runs else frozenset()
            partial = frozenset(s for s in ok_sigs if not all(s in r for r in ok_runs))
            out.append(NightOfCell(bool(ok_runs), every, partial))
        return out

    def _sigs_by_run(self, run_ids: list[int]) -> dict[int, frozenset[str]]:
        out: dict[int, set[str]] = {i: set() for i in run_ids}
        for chunk in range(0, len(run_ids), 500):
            ids = run_ids[chunk:chunk + 500]
            q = ",".join("?" * len(ids))
            for r in self.db.execute(f"SELECT run_id, signature FROM findings WHERE run_id IN "
                                     f"({q})", ids):
                out[int(r["run_id"])].add(str(r["signature"]))
        return {k: frozenset(v) for k, v in out.items()}

    def _classify(self, night_id: int, cell: str, window: int) -> list[Verdict]:
        runs = self.db.execute("SELECT id, status FROM runs WHERE night_id = ? AND cell = ?",
                               (night_id, cell)).fetchall()
        sigs_of = self._sigs_by_run([int(r["id"]) for r in runs])
        ok_runs = [sigs_of[int(r["id"])] for r in runs if r["status"] == "ok"]
        failed = frozenset().union(*(sigs_of[int(r["id"])] for r in runs
                                     if r["status"] == "failed"))
        classes = classify(ok_runs, failed, self._cell_nights(cell, night_id), window)
        # what each signature looked like: tonight's finding, else the latest earlier one
        info: dict[str, sqlite3.Row] = {}
        for r in self.db.execute(
                "SELECT f.* FROM findings f JOIN runs r ON r.id = f.run_id WHERE r.cell = ? AND"
                " r.night_id <= ? ORDER BY r.night_id, r.attempt", (cell, night_id)):
            info[str(r["signature"])] = r
        verdicts = []
        for sig, cls in sorted(classes.items()):
            f = info[sig]
            verdicts.append(Verdict(sig, cls, str(f["kind"]), str(f["driver"]), f["function"],
                                    str(f["message"])))
        self.db.executemany(
            "INSERT OR REPLACE INTO verdicts (night_id, cell, signature, class, kind, driver,"
            " function, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(night_id, cell, v.signature, v.cls, v.kind, v.driver, v.function, v.message)
             for v in verdicts])
        return verdicts

    # -- reading ---------------------------------------------------------------------

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def nights(self) -> list[sqlite3.Row]:
        """Every night, newest first, with its counts."""
        return self.query(
            "SELECT n.*,"
            " (SELECT COUNT(DISTINCT cell) FROM runs WHERE night_id = n.id) AS cells,"
            " (SELECT COUNT(*) FROM runs WHERE night_id = n.id AND status = 'ok') AS ok_runs,"
            " (SELECT COUNT(*) FROM runs WHERE night_id = n.id AND status NOT IN"
            "   ('ok', 'running')) AS bad_runs,"
            " (SELECT COUNT(*) FROM verdicts WHERE night_id = n.id AND class = 'new') AS new,"
            " (SELECT COUNT(*) FROM verdicts WHERE night_id = n.id AND class = 'fixed')"
            "   AS fixed,"
            " (SELECT COUNT(*) FROM verdicts WHERE night_id = n.id AND class = 'flaky')"
            "   AS flaky,"
            " (SELECT COUNT(*) FROM verdicts WHERE night_id = n.id AND class = 'still present')"
            "   AS still"
            " FROM nights n ORDER BY n.id DESC")

    def runs_of_night(self, night_id: int) -> list[sqlite3.Row]:
        return self.query(
            "SELECT r.*, (SELECT COUNT(*) FROM findings WHERE run_id = r.id) AS nfindings"
            " FROM runs r WHERE night_id = ? ORDER BY cell, attempt", (night_id,))

    def verdicts_of_night(self, night_id: int) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM verdicts WHERE night_id = ? ORDER BY cell, "
                          "CASE class WHEN 'new' THEN 0 WHEN 'fixed' THEN 1 WHEN 'flaky' THEN 2"
                          " ELSE 3 END, driver, signature", (night_id,))

    def drivers(self) -> list[str]:
        rows = self.query("SELECT driver FROM run_drivers UNION SELECT driver FROM findings "
                          "ORDER BY 1")
        return [str(r[0]) for r in rows]
