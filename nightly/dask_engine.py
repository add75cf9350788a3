"""Nightly cells as Dask distributed tasks: ``tracedep nightly``'s default engine.

Without ``--scheduler``, an embedded ``LocalCluster`` (``--jobs`` worker processes,
one thread each) runs the cells on this machine; with ``--scheduler tcp://HOST:8786``
the workers of that scheduler do (each needs QEMU, this tracedep, its kernel cache
and the driver sets at the same paths).  A cell is one task (``run_cell``): the
cell's ``tracedep run`` as a subprocess of the worker into a fresh directory, which
comes back to the submitting host whole, as a tar.gz archive in the task's result
(or, with ``--shared-out``, left in ``OUT/<night>/.cells/`` and moved into place).
The history database, the site and the exports are written by the submitting host
only (``Night.record``), one cell at a time, as each result arrives.

A worker that dies mid-cell (its process killed, its machine gone) fails the task
with ``KilledWorker`` (the embedded scheduler allows no silent retries): the cell is
submitted again, once, and the run in the history says why (``runs.retried``, the
night's page and summary).  A second death records the cell as failed.  A
scheduler of one's own that reschedules by itself (``allowed-failures`` > 0) is
noticed by the cell's start events: a cell that started twice was retried too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracedep.errors import InputError
from tracedep.nightly.config import Cell
from tracedep.nightly.night import STOP_GRACE_S, Night, NightResult, Slot, _die_with, cell_command

log = logging.getLogger(__name__)

TOPIC = "tracedep-cell"  # the workers' start events
ALLOWED_FAILURES = 0  # embedded scheduler: a dead worker's cell comes back to us
NOT_STARTED_RESUBMITS = 3  # a cell lost with its worker before it started: not a retry


@dataclass
class CellResult:
    rc: int | None
    elapsed: float
    worker: str  # "tcp://10.0.0.2:40111 (hostname)"
    timed_out: bool
    archive: bytes | None  # the run directory and its log as tar.gz, or
    path: str | None  # the shared folder where they were left


# -- on the worker -----------------------------------------------------------------------


def whoami() -> str:
    try:
        from distributed import get_worker

        addr = str(get_worker().address)
    except ValueError:  # not in a worker (a test calling it directly)
        addr = f"pid {os.getpid()}"
    return f"{addr} ({socket.gethostname()})"


def cell_started(tag: str) -> None:
    """Tell the submitting host that the cell ``tag`` started here (``TOPIC`` event)."""
    with contextlib.suppress(ValueError):
        from distributed import get_worker

        get_worker().log_event(TOPIC, {"tag": tag, "worker": whoami(), "pid": os.getpid()})


def work_dir(scratch: str | None, night: str) -> Path:
    """A fresh folder for one execution of a cell (a retry never meets a dying attempt)."""
    base = Path(scratch) if scratch else Path(tempfile.gettempdir()) / "tracedep-cells" / night
    work = base / uuid.uuid4().hex[:12]
    work.mkdir(parents=True)
    return work


def pack(work: Path, ship: bool) -> tuple[bytes | None, str | None]:
    """The cell's folder for the submitting host: an archive (and the folder removed), or
    its path when the folder is shared."""
    if not ship:
        return None, str(work)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        for p in sorted(work.iterdir()):
            tf.add(p, arcname=p.name)
    shutil.rmtree(work, ignore_errors=True)
    return buf.getvalue(), None


def run_cell(cell: Cell, stem: str, scratch: str | None, night: str, ship: bool,
             cell_timeout: float, tag: str) -> CellResult:
    """A Dask task: the cell's ``tracedep run`` into ``<work>/<stem>``, log beside it."""
    cell_started(tag)
    t0 = time.monotonic()
    work = work_dir(scratch, night)
    cmd = cell_command(cell, work / stem)
    timed_out = False
    with open(work / f"{stem}.log", "wb") as log_file:
        log_file.write(f"$ {' '.join(cmd)}\n# on {whoami()}\n".encode())
        log_file.flush()
        # the task's thread forks: the run gets SIGINT (its guest shut down) if the worker
        # process dies, and the Dask worker's executor thread lives as long as the worker
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with(os.getpid()))
        try:
            rc: int | None = proc.wait(cell_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    archive, path = pack(work, ship)
    return CellResult(rc, time.monotonic() - t0, whoami(), timed_out, archive, path)


# -- on the submitting host -----------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(n: int) -> Iterator[Any]:
    """An embedded cluster of ``n`` worker processes of one thread each (a cell is a
    guest: one per worker), whose scheduler hands a dead worker's cell back to us."""
    import dask
    from distributed import LocalCluster

    # saturation 1: a worker holds only the cell it runs, so a dead worker takes no
    # queued cell down with it
    if not logging.getLogger().isEnabledFor(logging.INFO):  # not -v: the night's lines only
        logging.getLogger("distributed").setLevel(logging.ERROR)
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, scheduler_kwargs={"dashboard": False},
                               memory_limit=0, silence_logs=logging.ERROR)
        try:
            yield cluster
        finally:
            cluster.close()


CellFn = Callable[[Cell, str, "str | None", str, bool, float, str], CellResult]


class DaskEngine:
    """Runs a night's cells on a Dask client's workers (``Night(engine=…)``)."""

    def __init__(self, client: Any, shared_out: bool = False, scratch: Path | None = None,
                 cell_fn: CellFn = run_cell) -> None:
        self.client, self.shared_out, self.scratch, self.cell_fn = \
            client, shared_out, scratch, cell_fn
        self.lock = threading.Lock()
        self.tags: dict[str, Slot] = {}
        self.starts: dict[str, list[str]] = {}  # tag → the workers it started on
        self.submitted: dict[str, float] = {}
        self.lost: dict[int, int] = {}  # run id → resubmits of a cell lost before it started
        self.night: Night | None = None

    @classmethod
    @contextlib.contextmanager
    def connect(cls, scheduler: str | None, jobs: int, shared_out: bool) -> Iterator[DaskEngine]:
        from distributed import Client

        if scheduler is None:
            if shared_out:
                raise InputError("--shared-out needs --scheduler (the embedded cluster shares "
                                 "this machine's disk anyway)")
            with local_cluster(jobs) as cluster, Client(cluster) as client:
                yield cls(client)
            return
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {scheduler}: {e}") from None
        with client:
            yield cls(client, shared_out)

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        with self.lock:
            slot = self.tags.get(str(msg.get("tag")))
            if slot is None:
                return
            seen = self.starts.setdefault(str(msg["tag"]), [])
            seen.append(str(msg.get("worker")))
            if self.night is not None:
                again = " (again)" if len(seen) > 1 else ""
                self.night.say(f"[{slot.index}/{self.night.total}] start {slot.label} on "
                               f"{seen[-1]}{again}")

    def _submit(self, night: Night, slot: Slot) -> Any:
        tag = uuid.uuid4().hex[:12]
        scratch = str(night.dir / ".cells") if self.shared_out else \
            (str(self.scratch) if self.scratch else None)
        with self.lock:
            self.tags[tag] = slot
            self.submitted[tag] = time.monotonic()
        fut = self.client.submit(self.cell_fn, slot.cell, slot.stem, scratch, night.name,
                                 not self.shared_out, night.cfg.cell_timeout, tag,
                                 key=f"tracedep-{slot.stem}-{tag}", pure=False)
        fut.tracedep_tag = tag
        return fut

    def run(self, night: Night) -> NightResult:
        from distributed import as_completed

        self.night = night
        cfg = night.cfg
        where = self.client.scheduler.address
        night.say(f"night {night.name}: {len(cfg.cells)} cells × {cfg.repeat} on Dask "
                  f"({where}, {len(self.client.scheduler_info()['workers'])} workers); "
                  f"runs in {night.dir}")
        self.client.subscribe_topic(TOPIC, self._on_event)
        futures = {self._submit(night, s): s for s in
                   [night.begin(c, i) for i in range(1, cfg.repeat + 1) for c in cfg.cells]}
        done = as_completed(list(futures))
        try:
            for fut in done:
                slot = futures.pop(fut)
                again = self._finish(night, slot, fut)
                # the result is home: let the scheduler forget it, or the death of the
                # worker that holds it makes the scheduler run the cell again for us
                # (an orphan run whose folder nobody lands)
                fut.release()
                if again is not None:
                    futures[again] = slot
                    done.add(again)
        except KeyboardInterrupt:
            for fut, slot in futures.items():
                fut.cancel()
                night.record(slot, None, self._elapsed(fut), interrupted=True,
                             error="interrupted")
            night.res.interrupted = True
            night.h.finish_night(night.res.night_id, "interrupted")
            night.render()
            raise
        finally:
            self.client.unsubscribe_topic(TOPIC)
            self.night = None
        night.h.finish_night(night.res.night_id, "complete")
        night.render()
        return night.res

    def _elapsed(self, fut: Any) -> float:
        return time.monotonic() - self.submitted.get(fut.tracedep_tag, time.monotonic())

    def _finish(self, night: Night, slot: Slot, fut: Any) -> Any | None:
        """Record the cell of ``fut``, or submit it again (returned) if its worker died."""
        from distributed import KilledWorker

        tag = fut.tracedep_tag
        try:
            res: CellResult = fut.result()
        except KilledWorker as e:
            with self.lock:
                starts = list(self.starts.get(tag, []))
            last = getattr(getattr(e, "last_worker", None), "address", None)
            if not starts and self.lost.get(slot.run_id, 0) < NOT_STARTED_RESUBMITS:
                self.lost[slot.run_id] = self.lost.get(slot.run_id, 0) + 1
                night.say(f"[{slot.index}/{night.total}] {slot.label}: worker {last} died "
                          "before the cell started; submitted again")
                return self._submit(night, slot)
            why = f"worker {starts[-1] if starts else last or '?'} died mid-cell"
            if not slot.retried:
                night.retry(slot, why)
                return self._submit(night, slot)
            night.record(slot, None, self._elapsed(fut), error=f"{why}, after a retry")
            return None
        except Exception as e:  # the task itself failed (a worker without tracedep, …)
            night.record(slot, None, self._elapsed(fut), error=f"{type(e).__name__}: {e}")
            return None
        with self.lock:
            starts = list(self.starts.get(tag, []))
        for dead in starts[:-1]:  # the scheduler ran it again by itself
            night.retry(slot, f"worker {dead} died (the scheduler ran the cell again)")
        try:
            self._land(night, slot, res)
        except (OSError, tarfile.TarError) as e:
            night.record(slot, None, res.elapsed, worker=res.worker,
                         error=f"the run did not come back: {e}")
            return None
        night.record(slot, res.rc, res.elapsed, worker=res.worker,
                     error="cell_timeout reached" if res.timed_out else None)
        return None

    def _land(self, night: Night, slot: Slot, res: CellResult) -> None:
        """The cell's run directory and log into the night's folder, whole."""
        for p in (slot.run_dir, slot.log_path):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if res.archive is not None:
            with tarfile.open(fileobj=io.BytesIO(res.archive), mode="r:gz") as tf:
                tf.extractall(night.dir, filter="data")
        elif res.path is not None:
            work = Path(res.path)
            for p in work.iterdir():
                os.replace(p, night.dir / p.name)
            work.rmdir()
