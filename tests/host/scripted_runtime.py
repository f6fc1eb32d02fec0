"""A scripted runtime on a loopback port, for the host's side of the runtime API: it answers
``POST /v1/turns`` with a ``text_delta`` and a ``result`` naming the request's text, keeps or
drops connections as a test says, and records what it was asked."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kit.protocol.runtime_api import RuntimeEvent, TurnRequest


@dataclass
class Runtime:
    """A scripted runtime on a loopback port: it answers ``POST /v1/turns`` with a
    ``text_delta`` naming the request's text and a ``result``, two chunks, and keeps the
    connection unless asked not to. ``drop`` names the requests (by number, from 1) it
    reads and then closes the connection on without a byte of answer."""

    drop: set[int] = field(default_factory=set)
    reset_after_head: set[int] = field(default_factory=set)
    """Requests the runtime takes (a turn: it runs) and begins to answer, part of the head,
    before the connection is reset."""
    close_after: set[int] = field(default_factory=set)
    """Requests answered with ``connection: close`` (and the connection closed)."""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    """Each request's head, in the order they came."""
    files: list[bytes] = field(default_factory=list)
    """The bytes of each file put."""
    turns: list[TurnRequest] = field(default_factory=list)
    """Each turn the runtime ran, as the host asked for it."""
    eof_seen: int = 0
    """Connections the client closed (EOF read while waiting for a request)."""
    eof_event: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at each EOF seen."""
    between: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a turn's first chunk is out; its second waits for ``go``."""
    go: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> list[str]:
        """The text of each turn the runtime ran."""
        return [turn.text for turn in self.turns]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(100):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.eof_seen += 1
                    self.eof_event.set()
                    return
                self.requests.append(head)
                number = len(self.requests)
                length = int(header(head, b"content-length") or b"0")
                body = await reader.readexactly(length)
                if number in self.drop:
                    return
                close = number in self.close_after or header(head, b"connection") == b"close"
                if head.startswith(b"PUT /v1/files"):  # 204, no length: its head ends it
                    self.files.append(body)
                    writer.write(
                        b"HTTP/1.1 204 No Content\r\n%s\r\n"
                        % (b"connection: close\r\n" if close else b"")
                    )
                    await writer.drain()
                elif head.startswith(b"POST /v1/turns "):
                    self.turns.append(TurnRequest.from_json(body))
                    if number in self.reset_after_head:
                        writer.write(b"HTTP/1.1 200 OK\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.05)  # the client reads the part sent
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        writer.transport.abort()  # closed with a reset, not a FIN
                        return
                    text = self.turns[-1].text
                    try:
                        await self._turn(writer, text, close)
                    except ConnectionResetError:
                        return  # the client left the turn midway
                else:
                    data = b'{"ok": true, "ready": true, "session_id": "s", "state": "ready"}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s"
                        % (len(data), b"connection: close\r\n" if close else b"", data)
                    )
                    await writer.drain()
                if close:
                    return
        finally:
            writer.close()

    async def _turn(self, writer: asyncio.StreamWriter, text: str, close: bool) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n%s\r\n" % (b"connection: close\r\n" if close else b"")
        )
        for event in (
            RuntimeEvent("text_delta", {"text": f"answer to {text}"}),
            RuntimeEvent("result", {"text": f"answer to {text}", "is_error": False}),
        ):
            line = event.to_line()
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await writer.drain()
            if event.kind == "text_delta" and text.startswith("slow"):
                self.between.set()
                await self.go.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().lower()
    return None


@contextlib.asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[str]:
    server = await asyncio.start_server(runtime.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
