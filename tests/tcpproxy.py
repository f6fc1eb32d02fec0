"""A loopback TCP forwarder that a test can cut and restore, to take a backend away."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct


class Cut(enum.Enum):
    """How a cut proxy treats connections (live ones are reset either way)."""

    REFUSE = "refuse"
    """Nothing listens: a connect is refused (ECONNREFUSED)."""
    DROP = "drop"
    """Connections are accepted, then reset before a byte is read."""


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` and :meth:`restore` it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_mode: Cut | None = None
        self.connections = 0
        """Connections forwarded so far."""
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a refusing cut)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, mode: Cut) -> None:
        """Take the backend away: reset live connections, then refuse or drop new ones."""
        self.cut_mode = mode
        if mode is Cut.REFUSE and self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._live):
            _reset(writer)
        self._live.clear()

    async def restore(self) -> None:
        """Forward again."""
        if self._server is None:
            await self.start()
        self.cut_mode = None

    async def aclose(self) -> None:
        """Stop listening and end every connection."""
        await self.cut(Cut.REFUSE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_mode is not None:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self.connections += 1
        self._live.update((writer, up_writer))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                self._live.discard(w)
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or a reset (either side)."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed or unplugged server would look."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
