"""Stopping a run before its workload ends: a terminal's Ctrl-C, or SIGTERM (a CI
job's time limit, ``kill``), while the guest runs.

A long workload is ended the way a user expects of a recorder (``perf record``): the
trace so far is kept, analysed and reported.  The first signal asks the guest to end
its workload (``stop`` on the control port: vm/guest/init.sh kills the workload's
processes and then ends as after any workload: tracing off, every CPU's ring buffer
sent, the guest's counters, power-off), so the trace ends at one instant on every
CPU and nothing recorded is lost.  A second signal, or a guest that has not powered
off ``GRACE_S`` seconds after it was asked, ends the run at once, as a hang does
(``END_INTERRUPTED``: the trace is cut wherever each CPU's pages stood).

QEMU runs in its own session (vm.qemu), so the terminal's Ctrl-C reaches tracedep
alone; outside the guest's run the signals keep their usual meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from tracedep.vm.qemu import Ending

END_INTERRUPTED = "interrupted"
GRACE_S = 60.0  # for the guest to end its workload and send what its ring buffers hold
STOP_LINE = b"stop\n"  # what vm/guest/init.sh waits for on the control port
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EarlyStop:
    """Watches SIGINT and SIGTERM while the guest runs (a context manager)."""

    def __init__(self, ask_guest: Callable[[], Awaitable[bool]],
                 grace_s: float = GRACE_S) -> None:
        self.ask_guest = ask_guest  # sends STOP_LINE; False: it could not be sent
        self.grace_s = grace_s
        self.signal: str | None = None  # the first signal's name (SIGINT, SIGTERM)
        self._asked = asyncio.Event()
        self._now = asyncio.Event()
        self._why = ""
        self._installed: list[tuple[signal.Signals, object]] = []  # and its handler before

    def __enter__(self) -> EarlyStop:
        loop = asyncio.get_running_loop()
        for s in _SIGNALS:
            # only the main thread can take signals (a caller in another thread
            # keeps Python's own handling)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                before = signal.getsignal(s)
                loop.add_signal_handler(s, self._on_signal, s)
                self._installed.append((s, before))
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for s, before in self._installed:
            loop.remove_signal_handler(s)
            # asyncio leaves the default; the caller's own handler comes back (cli.main's)
            signal.signal(s, before)  # type: ignore[arg-type]
        self._installed.clear()

    def _on_signal(self, s: signal.Signals) -> None:
        if self.signal is None:
            self.signal = s.name
            self._asked.set()
            _say(f"{s.name}: asking the guest to end its workload; the trace so far "
                 f"will be analysed (again to stop the guest at once)")
        else:
            self._why = f"stopped at once by a second signal ({s.name})"
            self._now.set()

    async def wait_end(self, guest_end: Awaitable[Ending]) -> Ending:
        """The guest's own ending, unless a signal ends the run first."""
        end = asyncio.ensure_future(guest_end)
        asked = asyncio.ensure_future(self._asked.wait())
        now = asyncio.ensure_future(self._now.wait())
        try:
            await asyncio.wait({end, asked}, return_when=asyncio.FIRST_COMPLETED)
            if not end.done():
                if not await self.ask_guest():
                    self._why = f"{self.signal}: the guest could not be asked to stop"
                    self._now.set()
                await asyncio.wait({end, now}, timeout=self.grace_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            if end.done():
                return end.result()
            why = self._why or (f"{self.signal}: the guest did not end its workload "
                                f"within {self.grace_s:g} s of being asked")
            return Ending(END_INTERRUPTED, why)
        finally:
            for t in (end, asked, now):
                if not t.done():
                    t.cancel()


def _say(text: str) -> None:
    print(f"tracedep: {text}", file=sys.stderr, flush=True)
