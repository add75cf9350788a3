"""Findings while the guest runs: a ``tracedep analyze --live`` of the trace so far,
in a child process, each time the trace has doubled since the last one began.

The child reads the part of the trace every CPU has sent whole (tracer.live_prefix),
streamed (analysis.stream_pipeline), and writes its report to ``RUN/live/`` with
``live.json`` (:class:`LiveResult`): how many findings, up to which guest time.  The
progress line carries the latest (tracer.progress).  Doubling keeps the work of all
of them under twice the final analysis's; the child runs at the lowest priority
(``_lowest_priority``), so on a busy host it falls behind the guest rather than
slowing it (the guest's pumps must keep up with its ring buffers).  The run's own
analysis, when the guest has stopped, supersedes them: a child still running then
is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tracedep.common.files import atomic_write
from tracedep.vm.qemu import die_with_parent

LIVE_DIR = "live"  # RUN/live: the latest live analysis's report
RESULT = "live.json"
RESULT_VERSION = 1


@dataclass(frozen=True)
class LiveResult:
    """``RUN/live/live.json``: what the latest live analysis found."""

    findings: int
    until_ns: int  # the guest time (trace clock) its events reach
    events: int

    def write(self, out: Path) -> None:
        atomic_write(out / RESULT, json.dumps(
            {"version": RESULT_VERSION, "findings": self.findings, "until_ns": self.until_ns,
             "events": self.events}, sort_keys=True) + "\n", fsync=False)

    @classmethod
    def read(cls, out: Path) -> LiveResult | None:
        """The latest result; None if there is none (or it is not one of ours)."""
        try:
            d = json.loads((out / RESULT).read_text())
            return cls(int(d["findings"]), int(d["until_ns"]), int(d["events"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None


class LiveAnalyses:
    """Starts the live analyses of ``run_dir`` (:meth:`tick`, from the progress loop)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.out = run_dir / LIVE_DIR
        self.proc: asyncio.subprocess.Process | None = None
        self.began_at_mb = 0.0  # the trace's size when the latest child began

    async def tick(self, trace_mb: float) -> None:
        """Start a child if none runs and the trace (``trace_mb``, as the progress
        meter measured it) has doubled since the last one began."""
        if self.proc is not None and self.proc.returncode is None:
            return
        if not trace_mb or trace_mb < 2 * self.began_at_mb:
            return
        self.out.mkdir(exist_ok=True)
        with (self.out / "analyze.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tracedep.cli", "analyze", str(self.run_dir), "--live",
                "--no-dwarf", stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_lowest_priority)
        self.began_at_mb = trace_mb

    def latest(self) -> LiveResult | None:
        return LiveResult.read(self.out)

    async def stop(self) -> None:
        """Stop a child still running: the run's own analysis comes next."""
        p = self.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.terminate()  # SIGTERM: tracedep ends as on Ctrl-C, its half-written files gone
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


def _lowest_priority() -> None:
    """In the child before exec: CPU time only when the guest and the run leave some.
    Its own session is its own autogroup (sched_autogroup_enabled), whose weight
    the child's nice does not change: that group's nice is set too, else the group
    takes a fair share against QEMU's (measured: the guest's event rate halved and
    the ring buffers overflowed while a live analysis ran)."""
    die_with_parent()
    os.nice(19)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text("19")
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
