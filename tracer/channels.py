"""Host ends of the guest→host trace channels, set up over QMP.

Each channel is a virtio-serial port whose chardev is created with QMP
``chardev-add`` and plugged with ``device_add`` while the guest is still paused.

* ``socket`` (default): the chardev connects to a unix socket we listen on; a
  slow reader back-pressures the guest, so the transport itself never drops.
* ``ringbuf``: a QEMU ring buffer drained with QMP ``ringbuf-read``; no
  back-pressure, so bytes overwritten before we read them are lost (we cannot
  see how many: the trace decoder counts the torn pages instead).

Every chunk is written and flushed as it arrives so a dead guest still leaves
everything that reached the host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from pathlib import Path
from typing import Protocol

from tracedep.errors import QemuError
from tracedep.vm.qemu import Vm, socket_error

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str
    path: Path
    nbytes: int
    first_byte_at: float | None
    last_byte_at: float | None

    async def drain(self, idle: float, limit: float) -> None: ...

    async def send(self, data: bytes) -> bool: ...

    async def close(self) -> None: ...


class SocketSink:
    """A virtio-serial port backed by a socket chardev that connects to us."""

    def __init__(self, name: str, path: Path, sock_path: Path) -> None:
        self.name = name
        self.path = path
        self.sock_path = sock_path
        self.nbytes = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.eof = False
        self._server: asyncio.base_events.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._fh = open(path, "wb")  # noqa: SIM115 - lives as long as the sink

    async def start(self, vm: Vm) -> None:
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.sock_path))
        except OSError as e:
            raise QemuError(f"cannot listen for trace channel {self.name} on {self.sock_path}: "
                            f"{socket_error(self.sock_path, e)}") from None
        cid = f"td_{self.name.replace('.', '_')}"
        await vm.execute("chardev-add", {
            "id": cid,
            "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": str(self.sock_path)}},
                "server": False,
            }},
        })
        await vm.execute("device_add", {"driver": "virtserialport", "bus": "vser0.0",
                                        "chardev": cid, "name": self.name, "id": f"{cid}_p"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._task = asyncio.current_task()  # type: ignore[assignment]
        self._writer = writer
        try:
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                now = time.monotonic()
                if self.first_byte_at is None:
                    self.first_byte_at = now
                self.last_byte_at = now
                self.nbytes += len(chunk)
                self._fh.write(chunk)
                self._fh.flush()
        except asyncio.CancelledError:
            pass  # closed by us after the drain
        finally:
            self.eof = True
            writer.close()

    async def drain(self, idle: float, limit: float) -> None:
        """Wait until no byte arrived for ``idle`` s (or EOF), at most ``limit`` s."""
        end = time.monotonic() + limit
        while not self.eof and time.monotonic() < end:
            last = self.last_byte_at or 0.0
            if time.monotonic() - last >= idle:
                break
            await asyncio.sleep(idle / 4)

    async def send(self, data: bytes) -> bool:
        """Write ``data`` to the guest's end of the port (host to guest)."""
        if self._writer is None or self.eof:
            return False
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), 5)
        except (OSError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._fh.close()


class RingbufSink:
    """A virtio-serial port backed by a QEMU ``ringbuf`` chardev, read with ``ringbuf-read``."""

    def __init__(self, name: str, path: Path, size: int = 16 << 20, chunk: int = 4 << 20) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.chunk = chunk
        self.nbytes = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self._vm: Vm | None = None
        self._cid = f"td_{name.replace('.', '_')}"
        self._task: asyncio.Task[None] | None = None
        self._stop = False
        self._fh = open(path, "wb")  # noqa: SIM115

    async def start(self, vm: Vm) -> None:
        self._vm = vm
        await vm.execute("chardev-add", {"id": self._cid,
                                         "backend": {"type": "ringbuf",
                                                     "data": {"size": self.size}}})
        await vm.execute("device_add", {"driver": "virtserialport", "bus": "vser0.0",
                                        "chardev": self._cid, "name": self.name,
                                        "id": f"{self._cid}_p"})
        self._task = asyncio.ensure_future(self._poll())

    async def _read_once(self) -> int:
        assert self._vm is not None
        # Never cancel this await: QEMU has consumed the bytes once it answers.
        data = await self._vm.qmp.execute("ringbuf-read", {"device": self._cid,
                                                           "size": self.chunk,
                                                           "format": "base64"})
        raw = base64.b64decode(str(data))
        if raw:
            now = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = now
            self.last_byte_at = now
            self.nbytes += len(raw)
            self._fh.write(raw)
            self._fh.flush()
        return len(raw)

    async def _poll(self) -> None:
        while not self._stop:
            try:
                n = await self._read_once()
            except Exception:  # QEMU gone: keep what we have
                return
            if n < self.chunk:
                await asyncio.sleep(0.01)

    async def drain(self, idle: float, limit: float) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            last = self.last_byte_at or 0.0
            if time.monotonic() - last >= idle:
                break
            await asyncio.sleep(idle / 4)

    async def send(self, data: bytes) -> bool:
        if self._vm is None:
            return False
        try:
            await self._vm.execute("ringbuf-write", {"device": self._cid, "format": "base64",
                                                     "data": base64.b64encode(data).decode()})
        except QemuError:
            return False
        return True

    async def close(self) -> None:
        self._stop = True
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
        self._fh.close()


async def open_sink(vm: Vm, transport: str, name: str, path: Path) -> Sink:
    sink: SocketSink | RingbufSink
    if transport == "socket":
        sink = SocketSink(name, path, vm.private / f"{name}.sock")
    elif transport == "ringbuf":
        sink = RingbufSink(name, path)
    else:
        raise ValueError(transport)
    await sink.start(vm)
    return sink
