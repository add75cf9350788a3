"""A QEMU guest driven over QMP (``qemu.qmp``), as an async context manager.

QEMU starts paused (``-S``) and connects to our QMP server socket in a private
(0700) directory; the trace channels are then added over QMP before the guest
runs.  Leaving the context always cleans up: ``quit`` over QMP, then SIGTERM,
then SIGKILL.  A launch failure carries the command line and QEMU's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError

from tracedep.common.machines import Machine
from tracedep.errors import QemuError

log = logging.getLogger(__name__)

# How a run can end, as recorded in the manifest.
END_POWEROFF = "poweroff"
END_PANIC = "panic"
END_RESET = "reset"  # triple fault or a panic with no pvpanic: -no-reboot turns it into SHUTDOWN
END_TIMEOUT = "timeout"
END_QEMU_DIED = "qemu-died"


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a child of tracedep before exec (QEMU, a live analysis): SIGKILL when
    tracedep dies (a ``kill -9`` or the OOM killer leave no clean-up to run), so no
    guest outlives its run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def machine_args(m: Machine, accel: str, mem_mb: int, smp: int = 1) -> list[str]:
    """The start of every QEMU command line of tracedep (the traced boots and the KVM
    probe alike): the machine, its CPU, the accelerator, memory, and nothing by default
    (no devices, no display, no reboot)."""
    return [m.qemu, "-M", m.machine, "-cpu", m.cpu if accel == "tcg" else "host",
            "-accel", accel, "-smp", str(smp), "-m", str(mem_mb),
            "-nodefaults", "-display", "none", "-no-reboot"]


@dataclass(frozen=True)
class VmSpec:
    machine: Machine
    kernel: Path
    initrd: Path
    append: str
    log_dir: Path  # console.log and qemu.log go here
    smp: int = 2
    mem_mb: int = 1024
    accel: str = "tcg"
    extra_args: tuple[str, ...] = ()

    def command(self, qmp_path: Path) -> list[str]:
        m = self.machine
        return [
            *machine_args(m, "kvm" if self.accel == "kvm" else "tcg", self.mem_mb, self.smp),
            "-no-shutdown",
            "-S",
            "-kernel", str(self.kernel),
            "-initrd", str(self.initrd),
            "-append", self.append,
            "-chardev", f"file,id=con,path={self.log_dir / 'console.log'}",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=qmp,path={qmp_path}",
            "-mon", "chardev=qmp,mode=control",
            "-device", f"{m.virtio_serial_device},id=vser0",
            "-device", m.panic_device,
            "-action", "panic=shutdown",
            *self.extra_args,
        ]


# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included
UNIX_PATH_MAX = 107


def socket_error(path: Path, e: BaseException) -> str:
    """One line for a unix socket that could not be created at ``path``."""
    cause = getattr(e, "exc", None) or e  # qemu.qmp's ConnectError wraps the OSError
    why = getattr(cause, "strerror", None) or str(cause)
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        why += (f" ({len(os.fsencode(path))} bytes; a unix socket path may have at most "
                f"{UNIX_PATH_MAX}: point TMPDIR at a shorter directory)")
    return why


@dataclass
class Ending:
    how: str
    detail: str = ""
    at: float = field(default_factory=time.monotonic)


class Vm:
    """One QEMU process and its QMP session."""

    def __init__(self, spec: VmSpec) -> None:
        self.spec = spec
        self.private = Path(tempfile.mkdtemp(prefix="tracedep-"))
        os.chmod(self.private, 0o700)
        self.qmp_path = self.private / "qmp.sock"
        self.qmp = QMPClient("tracedep", readbuflen=64 * 1024 * 1024)
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.cmdline: list[str] = []
        self.started_at = 0.0
        self._listener = EventListener()
        self._event_task: asyncio.Task[None] | None = None
        self._ending: asyncio.Future[Ending] | None = None

    @property
    def qemu_log(self) -> Path:
        return self.spec.log_dir / "qemu.log"

    def _qemu_output(self) -> str:
        try:
            text = self.qemu_log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-3:])

    async def __aenter__(self) -> Vm:
        try:
            await self._launch()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cleanup()

    async def _launch(self) -> None:
        if shutil.which(self.spec.machine.qemu) is None:
            raise QemuError(f"{self.spec.machine.qemu} is not installed")
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.qmp.start_server(str(self.qmp_path))
        except (OSError, QMPError) as e:
            raise QemuError(f"cannot listen for QMP on {self.qmp_path}: "
                            f"{socket_error(self.qmp_path, e)}") from None
        self.cmdline = self.spec.command(self.qmp_path)
        log.info("launching: %s", shlex.join(self.cmdline))
        with open(self.qemu_log, "wb") as out:
            # its own session: a terminal's Ctrl-C (or hang-up) is tracedep's to handle
            # (tracer.early_stop), not a signal that kills QEMU under the guest; and
            # it dies with tracedep, whatever kills tracedep (die_with_parent)
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmdline, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=die_with_parent)
        self.started_at = time.monotonic()
        accept = asyncio.ensure_future(self.qmp.accept())
        died = asyncio.ensure_future(self.proc.wait())
        await asyncio.wait({accept, died}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not (accept.done() and accept.exception() is None):
            # No session.  If QEMU is dying, let the handshake fail on its own (EOF)
            # rather than cancel it in the middle of qemu.qmp's own clean-up, and
            # say what QEMU said.
            await asyncio.wait({accept, died}, timeout=2, return_when=asyncio.ALL_COMPLETED)
            if not accept.done():
                accept.cancel()
            with contextlib.suppress(BaseException):
                await accept
            if died.done():
                raise QemuError(
                    f"QEMU exited with {self.proc.returncode} before QMP connected: "
                    f"{self._qemu_output() or 'no output'} (command: {shlex.join(self.cmdline)})"
                )
            died.cancel()
            if accept.cancelled() or accept.exception() is None:
                raise QemuError(f"QEMU did not connect to QMP within 30 s: {self._qemu_output()}")
            raise QemuError(f"QMP handshake failed: {accept.exception()}")
        died.cancel()
        self.qmp.register_listener(self._listener)
        self._ending = asyncio.get_running_loop().create_future()
        self._event_task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        assert self.proc is not None and self._ending is not None
        ev_task = asyncio.ensure_future(self._watch_events())
        await self.proc.wait()
        if not self._ending.done():
            self._ending.set_result(
                Ending(END_QEMU_DIED, f"QEMU exited with {self.proc.returncode}: "
                       f"{self._qemu_output()}")
            )
        ev_task.cancel()

    async def _watch_events(self) -> None:
        assert self._ending is not None
        async for ev in self._listener:
            name = ev["event"]
            data: dict[str, Any] = dict(ev.get("data") or {})  # type: ignore[call-overload]
            self.events.append({"event": name, "data": data,
                                "t": round(time.monotonic() - self.started_at, 3)})
            if self._ending.done():
                continue
            if name == "GUEST_PANICKED":
                self._ending.set_result(Ending(END_PANIC, str(data.get("info", ""))))
            elif name == "SHUTDOWN":
                reason = data.get("reason", "")
                if reason == "guest-panic":
                    self._ending.set_result(Ending(END_PANIC, reason))
                elif reason in ("guest-reset", "host-qmp-system-reset"):
                    self._ending.set_result(Ending(END_RESET, reason))
                else:
                    self._ending.set_result(Ending(END_POWEROFF, reason))

    async def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
        try:
            return await self.qmp.execute(cmd, args)
        except QMPError as e:
            raise QemuError(f"QMP {cmd} failed: {e}") from None

    async def cont(self) -> None:
        await self.execute("cont")

    async def wait_end(self, timeout: float) -> Ending:
        assert self._ending is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._ending), timeout)
        except TimeoutError:
            return Ending(END_TIMEOUT, f"no power-off within {timeout:g} s")

    async def _cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.execute("quit"), 3)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 5)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        if self._event_task is not None:
            self._event_task.cancel()
            with contextlib.suppress(BaseException):
                await self._event_task
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        shutil.rmtree(self.private, ignore_errors=True)
